"""Write-to-action-start latency of the real daemon.

A writer process appends ``LAT <id> <CLOCK_REALTIME ns>\\n`` to a watched file every
``interval`` s, taking the time just before its ``write(2)``. One regex watcher captures the
id and the time; its command is a probe whose first act is to read CLOCK_REALTIME and print
it. The daemon runs commands as ``/bin/sh -c CMD`` (dash here), and dash execs a lone
simple command in place, so the probe's clock reading is the first instruction of the
user's command after the shell started it. Its stdout lands in the ``action`` record's
``output``; the ``match`` record with the same ``firing`` has the writer's captures. So

    latency = probe clock - writer clock     (both CLOCK_REALTIME, same machine)

covers: inotify wake-up, read, match, ``match`` record, fork+exec of ``/bin/sh``, dash
start-up, exec of the probe. The probe is a 6-line C program compiled here (static when
possible: its own start-up is ~0.1 ms); without a C compiler ``date +%s%N`` is used, which
adds its own exec (~1 ms) to every figure. The floor - the same ``/bin/sh -c PROBE`` started
by a bare ``subprocess.Popen`` - is measured too, to separate process start from detection.
The ``match`` record's own timestamp gives write-to-match (detection alone).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from benchmarks.harness import (
    Daemon,
    MachineBusy,
    Procs,
    cpu_load,
    cpu_ticks_s,
    parse_ts,
    proc_status,
    read_events,
    summary,
    wait_for,
)

PROBE_C = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    printf("%lld%09ld\n", (long long)t.tv_sec, (long)t.tv_nsec);
    return 0;
}
"""

WRITER = r"""
import os, sys, time
path, n, iv = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
nxt = time.monotonic()
for i in range(n):
    nxt += iv
    d = nxt - time.monotonic()
    if d > 0:
        time.sleep(d)
    os.write(fd, b"%s step %d LAT %d %d\n" % (b"x" * 40, i, i, time.time_ns()))
os.close(fd)
"""


def build_probe(workdir: str) -> Tuple[str, str]:
    """(command, description) of the clock probe."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc:
        src = os.path.join(workdir, "probe.c")
        exe = os.path.join(workdir, "probe")
        with open(src, "w") as f:
            f.write(PROBE_C)
        for flags, what in ((["-static"], "static"), ([], "dynamic")):
            r = subprocess.run(
                [cc, "-O2", *flags, "-o", exe, src], capture_output=True, timeout=60, check=False
            )
            if r.returncode == 0:
                return exe, f"C probe ({what}, {os.path.basename(cc)})"
    return "date +%s%N", "date +%s%N (no C compiler: adds an exec of date to every figure)"


def spawn_floor(probe: str, n: int) -> Dict[str, float]:
    """ms from just before ``Popen(['/bin/sh', '-c', probe])`` to the probe's clock."""
    out: List[float] = []
    for _ in range(n):
        t0 = time.time_ns()
        r = subprocess.run(["/bin/sh", "-c", probe], capture_output=True, check=False)
        try:
            out.append((int(r.stdout.split()[0]) - t0) / 1e6)
        except (ValueError, IndexError):
            continue
    return summary(out)


def _config(workdir: str, probe: str, backend: str, nice: Optional[int] = None) -> str:
    import tomli_w

    cfg: Dict[str, Any] = {
        "queue_length": 100000,
        "backend": backend,
        "regex_actions": [
            {
                "name": "lat",
                "directory": "watched",
                "filepath_regex": r"^lat\.log$",
                "line_regex": r"LAT (\d+) (\d+)$",
                "captures": ["id", "t"],
                "cmd": probe,
            }
        ],
    }
    if nice is not None:
        cfg["nice"] = nice
    path = os.path.join(workdir, f"latency-{backend}.toml")
    with open(path, "wb") as f:
        tomli_w.dump(cfg, f)
    return path


def run_latency(
    procs: Procs,
    cmd: List[str],
    workdir: str,
    probe: str,
    *,
    label: str,
    lines: int,
    interval: float,
    backend: str = "inotify",
    nice: int = 0,
    load: int = 0,
    catch_up: float = 60.0,
    profile: Optional[str] = None,
    config_nice: Optional[int] = None,
) -> Dict[str, Any]:
    """One scenario. ``nice``: the daemon starts at this niceness (it then adds its own
    ``nice`` setting, default 10, capped at 19; ``config_nice`` sets it); ``load``: busy
    loops at normal priority."""
    d = os.path.join(workdir, f"lat-{label}")
    os.makedirs(os.path.join(d, "watched"), exist_ok=True)
    target = os.path.join(d, "watched", "lat.log")
    open(target, "wb").close()
    config = _config(d, probe, backend, config_nice)
    events = os.path.join(d, "events.jsonl")
    res: Dict[str, Any] = {"label": label, "lines": lines, "interval_ms": interval * 1000,
                           "backend": backend, "start_nice": nice, "load": load}

    def body() -> None:
        flags = ("-m", "cProfile", "-o", profile) if profile else ()
        dm = Daemon(procs, cmd, config, events, cwd=d, nice=nice, python_flags=flags)
        if not dm.wait_ready(300):
            raise RuntimeError(dm.describe_failure())
        res["daemon_nice"] = _nice(dm.pid)
        busy = MachineBusy()
        cpu0 = cpu_ticks_s(dm.pid)
        t_start = time.monotonic()
        writer = procs.start([sys.executable, "-c", WRITER, target, str(lines), str(interval)])
        writer.wait()
        res["writer_s"] = time.monotonic() - t_start

        def done() -> bool:
            try:
                with open(events, "rb") as f:
                    return f.read().count(b'"kind":"action"') >= lines
            except OSError:
                return False

        res["caught_up"] = wait_for(done, catch_up, 0.1)
        res["run_s"] = time.monotonic() - t_start
        # CPU of the daemon (all its threads, ended ones too) while it handled the lines, and
        # how many it had matched by then (it matches the rest while stopping)
        res["daemon_cpu_s"] = cpu_ticks_s(dm.pid) - cpu0
        try:
            with open(events, "rb") as f:
                res["matched_in_run"] = f.read().count(b'"kind":"match"')
        except OSError:
            res["matched_in_run"] = 0
        res["machine_busy_cores"] = busy.cores()
        res["vmhwm_kb"] = proc_status(dm.pid)["VmHWM"]
        dm.stop()

    if load:
        with cpu_load(procs, load):
            body()
    else:
        body()
    res.update(_analyse(events, lines))
    if res["matched_in_run"]:
        res["daemon_cpu_per_line_ms"] = res["daemon_cpu_s"] * 1000 / res["matched_in_run"]
    res["daemon_cpu_share"] = res["daemon_cpu_s"] / res["run_s"] if res["run_s"] else None
    return res


def _nice(pid: int) -> Optional[int]:
    try:
        return os.getpriority(os.PRIO_PROCESS, pid)
    except OSError:
        return None


def _analyse(events: str, lines: int) -> Dict[str, Any]:
    written: Dict[int, Tuple[int, float]] = {}  # firing -> (writer ns, match ts)
    stamps: Dict[int, int] = {}
    failed = 0
    for rec in read_events(events):
        kind = rec.get("kind")
        if kind == "match" and rec.get("watcher") == "lat":
            cap = rec.get("captures") or {}
            try:
                written[int(rec["firing"])] = (int(cap["t"]), parse_ts(rec["ts"]))
            except (KeyError, ValueError, TypeError):
                continue
        elif kind == "action" and rec.get("watcher") == "lat":
            try:
                stamps[int(rec["firing"])] = int(str(rec.get("output", "")).split()[0])
            except (KeyError, ValueError, TypeError, IndexError):
                failed += 1
    act: List[float] = []
    det: List[float] = []
    for firing, (t_w, ts_match) in written.items():
        det.append((ts_match * 1e9 - t_w) / 1e6)
        s = stamps.get(firing)
        act.append((s - t_w) / 1e6 if s is not None else float("inf"))
    missing = lines - len(written)
    act.extend([float("inf")] * max(0, missing))  # never acted on: counted as infinitely late
    return {
        "action_ms": summary(act),
        "match_ms": summary(det),
        "matched": len(written),
        "acted": len(stamps),
        "failed_actions": failed,
    }
