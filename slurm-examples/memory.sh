#!/bin/bash
#SBATCH --job-name=memory
#SBATCH --mem=300M
#SBATCH --time=10
#
# Act before the OOM killer does: the memory watcher of memory.toml samples the resident
# memory of the job's processes every second and fires when it passes half of the job's
# limit. The limit is the job's own: SLURM_MEM_PER_NODE (300 MB here, from --mem), else
# SLURM_MEM_PER_CPU x the CPUs, else the cgroup's memory.max. The work allocates 200 MiB,
# 20 MiB every 0.3 s.
#
# Submit from a directory holding this script, memory.toml and fake_train.py:
#   sbatch memory.sh

# what SLURM made of --mem (in MB); the sidecar takes the limit from here
echo "[memory.sh] SLURM_MEM_PER_NODE=${SLURM_MEM_PER_NODE:-unset}"

python3 fake_train.py memory --mb 200 --chunk-mb 20 --interval 0.3 --hold 3 &
WORK=$!
sidecar memory.toml --pid "$WORK" 2>"sidecar-$SLURM_JOB_ID.log" &
SIDECAR=$!
trap 'wait "$SIDECAR"; exit 143' TERM   # scancel: let the sidecar write its last records
wait "$WORK"; rc=$?
wait "$SIDECAR"
exit "$rc"
