#!/usr/bin/env bash
# Stop the one-node test cluster started by .ci/slurm-up.sh: slurmd, slurmctld, munged.
# Jobs still queued or running are killed first (slurmstepd outlives slurmd, so they
# would otherwise linger); then only the daemons named in their pid files (or, without
# a pid file, the exact daemon binaries) are signalled.
set -uo pipefail

RUN_DIR=/run/slurm

# stop NAME PIDFILE: SIGTERM, wait up to 10 s, then SIGKILL
stop() {
    local name="$1" pidfile="$2" pids="" pid
    if [ -s "$pidfile" ]; then
        pid="$(cat "$pidfile" 2>/dev/null || true)"
        # only trust the pid file when it names the right program
        if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "$name" ]; then
            pids="$pid"
        fi
    fi
    if [ -z "$pids" ]; then
        pids="$(pidof "$name" 2>/dev/null || true)"
    fi
    [ -z "$pids" ] && return 0
    echo "[slurm-down] stopping $name ($pids)" >&2
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 100); do
        local alive=""
        for pid in $pids; do
            if kill -0 "$pid" 2>/dev/null; then alive="$alive $pid"; fi
        done
        [ -z "$alive" ] && { rm -f "$pidfile"; return 0; }
        sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    rm -f "$pidfile"
}

if command -v squeue >/dev/null && timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; then
    jobs="$(timeout 10 squeue -h -o %i 2>/dev/null || true)"
    if [ -n "$jobs" ]; then
        echo "[slurm-down] killing jobs:" $jobs >&2
        # shellcheck disable=SC2086
        timeout 10 scancel --signal=KILL --full $jobs 2>/dev/null || true
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        for _ in $(seq 1 100); do
            [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null || true)" ] && break
            sleep 0.1
        done
    fi
fi

stop slurmd "$RUN_DIR/slurmd.pid"
stop slurmctld "$RUN_DIR/slurmctld.pid"
stop munged /run/munge/munged.pid
exit 0
