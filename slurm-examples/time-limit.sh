#!/bin/bash
#SBATCH --job-name=time-limit
#SBATCH --time=1
#SBATCH --signal=B:USR1@50
#
# Act before the time limit, so that the work can checkpoint (or the job resubmit) in time.
# The watcher fires once, on whichever comes first:
#
# - the clock: the sidecar asks SLURM for the job's end time when it starts and fires
#   `before` seconds before it (50 s before the end of this 1-minute job: ~10 s after the
#   start); it asks again from time to time (every 15 minutes at most, more often as the
#   deadline nears, at least a minute apart), in case the limit was changed meanwhile;
# - the signal that `#SBATCH --signal=B:USR1@50` makes SLURM send. SLURM sends it only
#   roughly on time: up to 60 s early, says its manual (measured here: between ~30 s early
#   and ~4 s late). "B:" makes SLURM signal the batch shell, and only the shell (not its
#   children); without "B:" no process of the batch script gets it at all (only srun
#   steps do). So the shell passes it on to the sidecar (the USR1 trap below).
#
# The watcher's command asks the work for a checkpoint (the file the work looks for); the
# work saves it and exits 0, so the job ends COMPLETED before its time limit. A real job
# says e.g. --time=24:00:00, --signal=B:USR1@900 and before=15m.
#
# Submit from a directory holding this script and fake_train.py:  sbatch time-limit.sh
#
#WATCHER name=checkpoint trigger=time_limit before=50 signal=USR1 actions=[log_event(message="$TIME_LEFT s left: asking job $JOB_ID for a checkpoint", level="WARNING"), run_command(command="touch checkpoint-$JOB_ID")]

python3 fake_train.py checkpoint --flag "checkpoint-$SLURM_JOB_ID" --interval 0.5 --after 300 &
WORK=$!
# SLURM may send the signal early, even before the sidecar is up: until it has set up its
# handler, a USR1 must not kill it (it inherits "ignore USR1" from here; the work does not)
trap '' USR1
sidecar --from-script "$0" --pid "$WORK" 2>"sidecar-$SLURM_JOB_ID.log" &
SIDECAR=$!
trap 'wait "$SIDECAR"; exit 143' TERM   # scancel: let the sidecar write its last records
trap 'kill -USR1 "$SIDECAR"' USR1       # SLURM's warning signal: pass it on to the sidecar
wait "$WORK"; rc=$?
# a trapped signal interrupts `wait`: wait again while the work still runs
while kill -0 "$WORK" 2>/dev/null; do wait "$WORK"; rc=$?; done
wait "$SIDECAR"
exit "$rc"
