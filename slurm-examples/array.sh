#!/bin/bash
#SBATCH --job-name=array-demo
#SBATCH --array=0-2
#SBATCH --output=%x-%A_%a.out
#SBATCH --time=10
#
# A job array: every task runs its own sidecar, which watches that task's own output file
# (%x-%A_%a.out, i.e. array-demo-<array job id>_<task id>.out). All of them append to one
# event log, sidecar-events.jsonl in the submit directory; each record carries the task's
# own job id (SLURM_JOB_ID), and the metric names carry the task id here.
#
# Submit from a directory holding this script and fake_train.py:  sbatch array.sh
#
#WATCHER name=loss pattern="step (\d+) loss=([0-9.]+)" captures=[step, loss] rate_limit=none action=store_metric(name="loss_task${SLURM_ARRAY_TASK_ID}", value="$loss")
#WATCHER name=finished pattern="training finished" action=log_event(message="task ${SLURM_ARRAY_TASK_ID} of array ${SLURM_ARRAY_JOB_ID} finished (job ${JOB_ID})")

# the work runs in the background; the sidecar follows it (--pid) and stops once it has
# ended, after acting on its last lines
python3 fake_train.py metrics --steps 3 --interval 0.1 &
WORK=$!
sidecar --from-script "$0" --pid "$WORK" 2>"sidecar-$SLURM_JOB_ID.log" &
SIDECAR=$!
trap 'wait "$SIDECAR"; exit 143' TERM   # scancel: let the sidecar write its last records
wait "$WORK"; rc=$?
wait "$SIDECAR"
exit "$rc"
