#!/bin/bash
#SBATCH --job-name=traceback
#SBATCH --time=10
#
# Multi-line records: a Python traceback is one record from its "Traceback (most recent
# call last):" line to its exception line, however many frames it has. The watcher hands
# the whole record to its actions ($MATCH, or $RECORD in a command's environment): the
# log record's message and crash-<jobid>.txt hold the full traceback. A chained exception
# ("The above exception was the direct cause of ...") prints two tracebacks: two records,
# two firings, the cause first.
#
# Submit from a directory holding this script and fake_train.py:  sbatch traceback.sh
#
#WATCHER_BEGIN
# name: crashed
# multiline: python_traceback
# output_type: both
# rate_limit: none
# actions:
#   - log_event(message="$MATCH", level="ERROR")
#   - run_command(command='printf "%s\n\n" "$RECORD" >> crash-$JOB_ID.txt')
#WATCHER_END

python3 fake_train.py crash --steps 3 --interval 0.1 &
WORK=$!
sidecar --from-script "$0" --pid "$WORK" 2>"sidecar-$SLURM_JOB_ID.log" &
SIDECAR=$!
trap 'wait "$SIDECAR"; exit 143' TERM   # scancel: let the sidecar write its last records
wait "$WORK"; rc=$?
wait "$SIDECAR"
exit "$rc"
