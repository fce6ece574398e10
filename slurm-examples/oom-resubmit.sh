#!/bin/bash
#SBATCH --job-name=oom-resubmit
#SBATCH --mem=1G
#SBATCH --time=10
#
# A training that runs out of (GPU) memory. Its own sidecar sees the error line, resubmits
# this script with --mem=2G (a rewritten copy in .sidecar/resubmit-<jobid>-1.sh) and
# cancels this job. The resubmitted job runs with SIDECAR_RESUBMIT_COUNT=1 in its
# environment: fake_train.py then has "enough memory" and finishes, and sidecar would not
# resubmit more than 3 times anyway (resubmit_limit).
#
# Submit from a directory holding this script and fake_train.py:  sbatch oom-resubmit.sh
#
#WATCHER name=oom pattern="CUDA out of memory|OutOfMemoryError" max_triggers=1 action=resubmit(modifications={"mem": "2G"})

# the work runs in the background; the sidecar follows it (--pid) and stops once it has
# ended, after acting on its last lines
python3 fake_train.py oom --steps 5 --interval 0.2 &
WORK=$!
sidecar --from-script "$0" --pid "$WORK" 2>"sidecar-$SLURM_JOB_ID.log" &
SIDECAR=$!
trap 'wait "$SIDECAR"; exit 143' TERM   # scancel: let the sidecar write its last records
wait "$WORK"; rc=$?
wait "$SIDECAR"
exit "$rc"
