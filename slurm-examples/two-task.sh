#!/bin/bash
#SBATCH --job-name=two-task
#SBATCH --ntasks=2
#SBATCH --time=10
#
# Two tasks started by srun. One sidecar, in the batch script, is enough: srun forwards
# the output of every task (on every node) to the batch script's own output file, on the
# node where the sidecar runs. --label puts the task number in front of each line
# ("0: ...", "1: ..."): the watchers capture it, so each task gets its own records.
#
# Submit from a directory holding this script and fake_train.py:  sbatch two-task.sh
#
#WATCHER name=progress pattern="^ *(\d+): rank \d+ step (\d+) loss=([0-9.]+)" captures=[task, step, loss] rate_limit=none action=store_metric(name="loss_task$task", value="$loss")
#WATCHER name=task_done pattern="^ *(\d+): rank \d+ done" captures=[task] action=log_event(message="task $task of job $JOB_ID done")

# the work runs in the background; the sidecar follows it (--pid) and stops once it has
# ended, after acting on its last lines
srun --label python3 fake_train.py task --steps 3 --interval 0.1 &
WORK=$!
sidecar --from-script "$0" --pid "$WORK" 2>"sidecar-$SLURM_JOB_ID.log" &
SIDECAR=$!
trap 'wait "$SIDECAR"; exit 143' TERM   # scancel: let the sidecar write its last records
wait "$WORK"; rc=$?
wait "$SIDECAR"
exit "$rc"
