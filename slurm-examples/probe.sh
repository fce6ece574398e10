#!/bin/bash
#SBATCH --job-name=probe
#SBATCH --time=10
#
# Probes: a watcher can read the output of a command run every N seconds instead of a file,
# with the same pattern, captures, conditions, thresholds and actions.
#
# - gpu_idle: `nvidia-smi --query-gpu=utilization.gpu ...` every second; 3 readings of 0 %
#   within 5 s mean the GPU sits idle (a stuck data loader, a dead rank): the job is
#   cancelled instead of burning GPU hours. This node has no GPU: the script puts a fake
#   nvidia-smi first on PATH, which reports 87 % twice, then 0 %.
# - disk: `df -P .` every 2 s; the use of the filesystem is stored as a metric (a
#   condition such as int(use) > 95 would make it a warning instead).
#
# Submit from a directory holding this script and fake_train.py:  sbatch probe.sh
#
#WATCHER name=gpu_idle probe="nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits" interval=1 pattern="^\s*(\d+)\s*$" captures=[util] condition="int(util) == 0" threshold=3/5s max_triggers=1 actions=[log_event(message="GPU idle: utilization $util % ($COUNT readings; probe: $PROBE)", level="WARNING"), cancel_job(reason="GPU idle")]
#WATCHER name=disk probe="df -P ." interval=2 pattern=" (\d+)% " captures=[use] rate_limit=none action=store_metric(name="disk_use_pct", value="$use")

# the fake nvidia-smi, in the job's own directory
BIN="$SLURM_SUBMIT_DIR/run-$SLURM_JOB_ID/bin"
mkdir -p "$BIN"
cat >"$BIN/nvidia-smi" <<'FAKE'
#!/bin/sh
# 87 % on the first two calls, then 0 %; the first 0 is timed in idle-since
here="$(dirname "$0")"
n=$(( $(cat "$here/calls" 2>/dev/null || echo 0) + 1 ))
echo "$n" >"$here/calls"
if [ "$n" -le 2 ]; then echo 87; else
    [ -e "$here/idle-since" ] || date +%s.%N >"$here/idle-since"
    echo 0
fi
FAKE
chmod +x "$BIN/nvidia-smi"
export PATH="$BIN:$PATH"

python3 fake_train.py metrics --steps 120 --interval 0.25 &
WORK=$!
sidecar --from-script "$0" --pid "$WORK" 2>"sidecar-$SLURM_JOB_ID.log" &
SIDECAR=$!
trap 'wait "$SIDECAR"; exit 143' TERM   # scancel: let the sidecar write its last records
wait "$WORK"; rc=$?
wait "$SIDECAR"
exit "$rc"
