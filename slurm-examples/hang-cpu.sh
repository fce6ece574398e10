#!/bin/bash
#SBATCH --job-name=hang-cpu
#SBATCH --time=10
#
# Hang detection that means it: no output for `timeout` is a hang only while the job's
# processes are alive (require_alive) AND nearly idle (max_cpu, in percent of one core,
# over the same quiet spell). A training stuck in a collective sits at ~0 % CPU: that is
# a hang, the job is cancelled. A training that computes for a while without printing
# (a long evaluation, a big checkpoint) is not: the sidecar writes a `skipped` record
# (reason "busy") and waits for the next quiet spell.
#
#   sbatch hang-cpu.sh        the work stops writing and sleeps:    a hang, cancelled
#   sbatch hang-cpu.sh busy   the work stops writing but computes:  no hang, ends by itself
#   sbatch hang-cpu.sh busy srun   the same, the work run as an `srun` step: its task runs
#                             under slurmstepd, not under this script, and still counts
#
# The timeout is 3 s so that the example is quick; a real job would say timeout=20m.
# Submit from a directory holding this script and fake_train.py.
#
#WATCHER_BEGIN
# name: hung
# trigger: stale
# timeout: 3s
# require_alive: true
# max_cpu: 20
# max_triggers: 1
# actions:
#   - log_event(message="no output for $TIMEOUT s and the job used $CPU_PERCENT% CPU: job $JOB_ID looks hung", level="WARNING")
#   - cancel_job(reason="hung: no output for $TIMEOUT s at $CPU_PERCENT% CPU")
#WATCHER_END

if [ "${1:-idle}" = busy ]; then
    HOW="--busy --after 8"       # computes for 8 s without a line, then finishes
else
    HOW="--after 600"            # sleeps: hung
fi

# the work runs in the background; the sidecar follows it (--pid), samples its CPU, and
# stops once it has ended, after acting on its last lines
LAUNCH=""
if [ "${2:-}" = srun ]; then
    LAUNCH="srun --ntasks=1"     # a job step: the sidecar finds its task by SLURM_JOB_ID
fi
$LAUNCH python3 fake_train.py hang --steps 3 --interval 0.1 $HOW &
WORK=$!
sidecar --from-script "$0" --pid "$WORK" 2>"sidecar-$SLURM_JOB_ID.log" &
SIDECAR=$!
trap 'wait "$SIDECAR"; exit 143' TERM   # scancel: let the sidecar write its last records
wait "$WORK"; rc=$?
wait "$SIDECAR"
exit "$rc"
