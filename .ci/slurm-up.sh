#!/usr/bin/env bash
# Install (if needed) and start a one-node SLURM cluster on this machine, for the
# end-to-end tests in tests/slurm/.  Debian/Ubuntu, run as root, no systemd or cgroups
# needed.  Idempotent: daemons already running are stopped (.ci/slurm-down.sh) and
# started again with a freshly written configuration.
#
# Environment knobs (all optional):
#   SLURM_KILLWAIT    seconds between SIGTERM and SIGKILL on cancel/timeout (default 5)
#   SLURM_MINJOBAGE   seconds a finished job stays visible to scontrol/squeue (default 600)
#   SLURM_UP_TIMEOUT  seconds to wait for the node to become idle (default 60)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
KILLWAIT="${SLURM_KILLWAIT:-5}"
MINJOBAGE="${SLURM_MINJOBAGE:-600}"
UP_TIMEOUT="${SLURM_UP_TIMEOUT:-60}"

CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
RUN_DIR=/run/slurm

log() { printf '[slurm-up] %s\n' "$*" >&2; }

dump_logs() {
    local f
    for f in "$LOG_DIR"/slurmctld.log "$LOG_DIR"/slurmd.log /var/log/munge/munged.log; do
        if [ -f "$f" ]; then
            printf '\n===== tail of %s =====\n' "$f" >&2
            tail -n 60 "$f" >&2 || true
        fi
    done
}

die() {
    log "ERROR: $*"
    dump_logs
    exit 1
}

if [ "$(id -u)" -ne 0 ]; then
    echo "slurm-up.sh must run as root" >&2
    exit 1
fi

# --- 1. packages ---------------------------------------------------------------------
PKGS=(munge slurmctld slurmd slurm-client)
have_all() {
    command -v munged >/dev/null && command -v slurmctld >/dev/null \
        && command -v slurmd >/dev/null && command -v sbatch >/dev/null
}
if ! have_all; then
    command -v apt-get >/dev/null || die "SLURM is not installed and apt-get is not available"
    export DEBIAN_FRONTEND=noninteractive
    log "installing ${PKGS[*]}"
    # Only refresh the package lists when the packages are not known yet (or the
    # install fails because the lists are stale).
    if ! apt-cache show slurmctld >/dev/null 2>&1; then
        apt-get update -q >/dev/null || die "apt-get update failed"
    fi
    if ! apt-get install -y -q --no-install-recommends "${PKGS[@]}" >/dev/null; then
        apt-get update -q >/dev/null || die "apt-get update failed"
        apt-get install -y -q --no-install-recommends "${PKGS[@]}" >/dev/null \
            || die "apt-get install ${PKGS[*]} failed"
    fi
    have_all || die "packages installed but the SLURM/munge binaries are missing"
fi

# --- 2. stop whatever runs -------------------------------------------------------------
bash "$HERE/slurm-down.sh" >/dev/null 2>&1 || true

# --- 3. configuration ------------------------------------------------------------------
NODE="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
# keep a margin for the OS (10 %, at least 256 MB), never below 256 MB
MARGIN=$(( MEM_MB / 10 > 256 ? MEM_MB / 10 : 256 ))
REAL_MEM=$(( MEM_MB - MARGIN > 256 ? MEM_MB - MARGIN : 256 ))

mkdir -p "$CONF_DIR" "$LOG_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL" "$RUN_DIR"
chmod 0755 "$LOG_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL" "$RUN_DIR"

cat >"$CONF_DIR/slurm.conf" <<EOF
# Written by .ci/slurm-up.sh -- a one-node test cluster; edits are overwritten.
ClusterName=sidecar-ci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none

# No systemd, no cgroups: processes are tracked by process group.
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=${LOG_DIR}/jobcomp.log
MailProg=/bin/true

SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2

# Tests need fast turnarounds and finished jobs that stay visible (no slurmdbd/sacct).
KillWait=${KILLWAIT}
MinJobAge=${MINJOBAGE}
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60

StateSaveLocation=${CTLD_SPOOL}
SlurmdSpoolDir=${SLURMD_SPOOL}
SlurmctldPidFile=${RUN_DIR}/slurmctld.pid
SlurmdPidFile=${RUN_DIR}/slurmd.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

NodeName=${NODE} NodeAddr=127.0.0.1 NodeHostname=${NODE} CPUs=${CPUS} RealMemory=${REAL_MEM} State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
EOF
chmod 0644 "$CONF_DIR/slurm.conf"

# --- 4. munge --------------------------------------------------------------------------
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    log "generating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key

log "starting munged"
runuser -u munge -- /usr/sbin/munged --force || die "munged did not start"
for _ in $(seq 1 100); do
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then break; fi
    sleep 0.1
done
munge -n | unmunge >/dev/null 2>&1 || die "munge credentials do not round-trip"

# --- 5. slurmctld, slurmd ---------------------------------------------------------------
log "starting slurmctld"
slurmctld || die "slurmctld did not start"
for _ in $(seq 1 100); do
    if scontrol ping 2>/dev/null | grep -q 'is UP'; then break; fi
    sleep 0.1
done
scontrol ping 2>/dev/null | grep -q 'is UP' || die "slurmctld does not answer scontrol ping"

log "starting slurmd"
slurmd || die "slurmd did not start"

deadline=$(( SECONDS + UP_TIMEOUT ))
resumed=0
while :; do
    state="$(sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n1 || true)"
    case "$state" in
        idle|mix|alloc) break ;;
        down*|drain*|drng*|fail*|inval*)
            # e.g. "Node unexpectedly rebooted" from an older state file
            if [ "$resumed" -eq 0 ] && [ $(( SECONDS + UP_TIMEOUT - deadline )) -ge 3 ]; then
                scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
                resumed=1
            fi
            ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        sinfo -N -l >&2 || true
        scontrol show node "$NODE" >&2 || true
        die "node ${NODE} not idle after ${UP_TIMEOUT}s (state: '${state}')"
    fi
    sleep 0.2
done

# The node may show "idle" from the saved state before slurmd has registered, and the
# scheduler's first pass comes a few seconds after a start: run one real job (as the
# calling user, root) so that the cluster is known to run jobs when this script returns.
smoke_out="$(mktemp /tmp/slurm-up-smoke.XXXXXX)"
smoke_id="$(sbatch --parsable --job-name=slurm-up-smoke --output="$smoke_out" \
    --wrap='echo smoke-ok' 2>&1)" || die "sbatch failed: $smoke_id"
smoke_id="${smoke_id%%;*}"
state=""
while :; do
    state="$(scontrol show job -o "$smoke_id" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')"
    case "$state" in
        COMPLETED) break ;;
        FAILED|CANCELLED|TIMEOUT|NODE_FAIL|BOOT_FAIL|OUT_OF_MEMORY|DEADLINE)
            scontrol show job "$smoke_id" >&2 || true
            die "smoke job $smoke_id ended $state" ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        scontrol show job "$smoke_id" >&2 || true
        die "smoke job $smoke_id not COMPLETED after ${UP_TIMEOUT}s (state: '${state}')"
    fi
    sleep 0.2
done
grep -q smoke-ok "$smoke_out" || die "smoke job $smoke_id wrote no output to $smoke_out"
rm -f "$smoke_out"

log "cluster up: node ${NODE}, ${CPUS} CPUs, RealMemory=${REAL_MEM} MB, KillWait=${KILLWAIT}s"
munged --version 2>&1 | head -n1 || true
sinfo --version
sinfo
