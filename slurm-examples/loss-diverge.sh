#!/bin/bash
#SBATCH --job-name=loss-diverge
#SBATCH --time=10
#
# A training whose loss blows up. A block watcher captures the epoch, step and loss of
# every "epoch E step S loss: X" line; when the loss is above 5 it logs a warning and
# cancels the job, instead of letting it burn the rest of its allocation.
#
# Submit from a directory holding this script and fake_train.py:  sbatch loss-diverge.sh
#
#WATCHER_BEGIN
# name: loss_diverged
# pattern: "epoch (\d+) step (\d+) loss: ([0-9.]+)"
# captures: [epoch, step, loss]
# condition: float(loss) > 5
# max_triggers: 1
# actions:
#   - log_event(message="loss $loss at epoch $epoch (step $step): cancelling job $JOB_ID", level="WARNING")
#   - cancel_job(reason="loss $loss > 5 at epoch $epoch")
#WATCHER_END

# the work runs in the background; the sidecar follows it (--pid) and stops once it has
# ended, after acting on its last lines
python3 fake_train.py loss --losses 2.31,1.72,1.25,6.84,9.10 --interval 0.2 --after 300 &
WORK=$!
sidecar --from-script "$0" --pid "$WORK" 2>"sidecar-$SLURM_JOB_ID.log" &
SIDECAR=$!
trap 'wait "$SIDECAR"; exit 143' TERM   # scancel: let the sidecar write its last records
wait "$WORK"; rc=$?
wait "$SIDECAR"
exit "$rc"
