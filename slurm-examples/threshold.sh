#!/bin/bash
#SBATCH --job-name=threshold
#SBATCH --time=10
#
# Thresholds and suppression (the swatch idea): one NCCL timeout warning is noise, three
# within 30 s from the same rank are a problem. The watcher of threshold.toml counts the
# warnings per rank (track_by), fires at the 3rd within 30 s, and then holds back further
# firings of that rank for 60 s (suppress); how many it held back is reported with the
# rank's next firing, or in a `skipped` record (reason "suppressed") when the period ends
# or the sidecar stops first.
#
# Here rank 0 prints 9 warnings and rank 1 prints 6, quickly: one firing per rank, then
# 2 (rank 0) and 1 (rank 1) firings held back.
#
# Submit from a directory holding this script, threshold.toml and fake_train.py:
#   sbatch threshold.sh

# the job's own directory, so that the TOML's fixed file name (train.log) is this job's
RUN="$SLURM_SUBMIT_DIR/run-$SLURM_JOB_ID"
mkdir -p "$RUN" && cd "$RUN" || exit 1

python3 "$SLURM_SUBMIT_DIR/fake_train.py" nccl --ranks 0:9,1:6 --interval 0.02 --after 2 >train.log 2>&1 &
WORK=$!
sidecar "$SLURM_SUBMIT_DIR/threshold.toml" --events "$SLURM_SUBMIT_DIR/sidecar-events.jsonl" \
    --pid "$WORK" 2>"sidecar-$SLURM_JOB_ID.log" &
SIDECAR=$!
trap 'wait "$SIDECAR"; exit 143' TERM   # scancel: let the sidecar write its last records
wait "$WORK"; rc=$?
wait "$SIDECAR"
exit "$rc"
