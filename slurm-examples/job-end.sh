#!/bin/bash
#SBATCH --job-name=job-end
#SBATCH --time=10
#
# Act when the job's work ends, with its exit status: here a failed run (exit status other
# than 0) writes a log record and runs a command (a real job would copy its logs away,
# notify, or resubmit). The exit status is only known to the work's parent, so the work
# runs UNDER the sidecar: `exec sidecar ... -- COMMAND` (see wrapper.sh). The job then
# ends with the command's own exit status (FAILED, ExitCode=3:0 here).
#
#   sbatch job-end.sh       the work exits 3: the watcher fires
#   sbatch job-end.sh 0     the work exits 0: the condition is false, nothing happens
#
# Submit from a directory holding this script and fake_train.py.
#
#WATCHER_BEGIN
# name: failed
# trigger: job_end
# condition: int(exit_code) != 0
# actions:
#   - log_event(message="job $JOB_ID: the work exited with status $EXIT_CODE", level="ERROR")
#   - run_command(command='echo "$EXIT_CODE" > job-end-$JOB_ID.status')
#WATCHER_END

export PYTHONUNBUFFERED=1
exec sidecar --from-script "$0" -- python3 fake_train.py exit --code "${1:-3}" --steps 3
