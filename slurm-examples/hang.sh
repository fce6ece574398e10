#!/bin/bash
#SBATCH --job-name=hang
#SBATCH --time=10
#
# A training that stops writing its log (a stuck collective, a dead data loader ...).
# The stale-file watcher of hang.toml notices 3 s after the last write: it logs a warning,
# runs a command (here it only writes the time into run-<jobid>/hang-detected) and cancels
# the job.
#
# Each job runs in its own directory run-<jobid>: a stale watcher fires at once for a
# matching file that is already older than its timeout, so a train.log left behind by an
# earlier job must not be in the watched directory.
#
# Submit from a directory holding this script, hang.toml and fake_train.py:  sbatch hang.sh

RUN="$SLURM_SUBMIT_DIR/run-$SLURM_JOB_ID"
mkdir -p "$RUN" && cd "$RUN" || exit 1

# the work runs in the background; the sidecar follows it (--pid) and stops once it has
# ended, after acting on its last lines (all jobs share one event log here)
python3 "$SLURM_SUBMIT_DIR/fake_train.py" hang --log train.log --after 600 &
WORK=$!
sidecar "$SLURM_SUBMIT_DIR/hang.toml" --events "$SLURM_SUBMIT_DIR/sidecar-events.jsonl" \
    --pid "$WORK" 2>"sidecar-$SLURM_JOB_ID.log" &
SIDECAR=$!
trap 'wait "$SIDECAR"; exit 143' TERM   # scancel: let the sidecar write its last records
wait "$WORK"; rc=$?
wait "$SIDECAR"
exit "$rc"
