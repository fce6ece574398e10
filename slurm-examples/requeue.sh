#!/bin/bash
#SBATCH --job-name=requeue
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --time=10
#
# A job that SLURM requeues (`scontrol requeue`, preemption, a node failure) runs its batch
# script again under the same job id, with SLURM_RESTART_COUNT=1, 2 ... Its sidecar keeps
# its state per job and per run (.sidecar/<job>-<host>-<hash>.json, then
# <job>.r1-<host>-<hash>.json next to the event log) and starts the new run from the last
# one's: lines the first run already read are not acted on again, and max_triggers counts
# the firings of every run.
#
# --open-mode=append keeps the first run's lines in the output (SLURM's default here,
# truncate, empties the file when the job starts again; the sidecar handles both).
#
# The first run prints "ERROR 1" and waits to be requeued; a requeued run prints "ERROR 2"
# and "ERROR 3" and finishes. With max_triggers=2 the sidecar acts on ERROR 1 (run 0) and
# ERROR 2 (run 1), never twice on ERROR 1 and not on ERROR 3.
#
# Submit from a directory holding this script and fake_train.py, then requeue it:
#   sbatch requeue.sh;  scontrol requeue <jobid>
# (a requeued job waits ~2 minutes before it may start again; `scontrol update
# JobId=<jobid> StartTime=now` lets it start at once)
#
#WATCHER name=errors pattern="ERROR (\d+)" captures=[n] max_triggers=2 action=run_command(command='echo "$n" >> errors-$JOB_ID.txt')

python3 fake_train.py requeue --after 120 &
WORK=$!
sidecar --from-script "$0" --pid "$WORK" 2>>"sidecar-$SLURM_JOB_ID.log" &
SIDECAR=$!
trap 'wait "$SIDECAR"; exit 143' TERM   # scancel / requeue: let the sidecar write its last records
wait "$WORK"; rc=$?
wait "$SIDECAR"
exit "$rc"
