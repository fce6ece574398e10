#!/bin/bash
#SBATCH --job-name=network-fs
#SBATCH --time=5
#
# Automatic backend choice per directory. network-fs.toml watches `remote/` (a directory
# on a network filesystem: NFS, Lustre, GPFS ...; inotify there does not see what other
# nodes write) and the run directory (local). The sidecar polls the first and follows the
# second with inotify; `sidecar check` prints the choice, with the reason, into the output.
# A line "ERROR N" written into remote/job.log -- from any node -- cancels the job.
#
#   sbatch network-fs.sh      (from a directory holding remote/, this script, the toml)
#
# The end-to-end test makes remote/ a FUSE mount (bindfs) and writes beside the mount, in
# the directory it mirrors, as another node would: inotify would never see that line.
sidecar check network-fs.toml | grep -A3 '^directories:'

# the work: progress lines in a local file
( for i in $(seq 1 240); do echo "step $i" >> "progress-$SLURM_JOB_ID.log"; sleep 0.5; done ) &
WORK=$!
sidecar network-fs.toml --pid "$WORK" 2>"sidecar-$SLURM_JOB_ID.log" &
SIDECAR=$!
trap 'wait "$SIDECAR"; exit 143' TERM   # scancel: let the sidecar write its last records
wait "$WORK"; rc=$?
wait "$SIDECAR"
exit "$rc"
