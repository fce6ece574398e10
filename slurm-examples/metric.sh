#!/bin/bash
#SBATCH --job-name=metric
#SBATCH --time=10
#
# Store the loss and the accuracy of every step in the event log (kind "metric"), e.g. to
# plot them afterwards:
#   jq -r 'select(.kind == "metric" and .metric == "loss") | [.ts, .value] | @csv' sidecar-events.jsonl
#
# Submit from a directory holding this script and fake_train.py:  sbatch metric.sh
#
#WATCHER name=progress pattern="step (\d+) loss=([0-9.]+) acc=(\d+)%" captures=[step, loss, acc] rate_limit=none actions=[store_metric(name="loss", value="$loss"), store_metric(name="accuracy", value="$acc")]

# the work runs in the background; the sidecar follows it (--pid) and stops once it has
# ended, after acting on its last lines
python3 fake_train.py metrics --steps 4 --interval 0.1 &
WORK=$!
sidecar --from-script "$0" --pid "$WORK" 2>"sidecar-$SLURM_JOB_ID.log" &
SIDECAR=$!
trap 'wait "$SIDECAR"; exit 143' TERM   # scancel: let the sidecar write its last records
wait "$WORK"; rc=$?
wait "$SIDECAR"
exit "$rc"
