"""Scan rate: the daemon end to end, the matcher alone, and ``grep -cEf`` on the same file.

The log is the ML-training log of :mod:`benchmarks.scan` (its generator, its 10 rules),
with one marker line appended at the end that the ``time_limit`` rule matches. The daemon
runs a config with the 10 rules as 10 ``[[regex_actions]]`` watchers on an empty directory;
once it is ready, the (page-cached) log is renamed into that directory: the daemon sees it
appear and reads it from its first byte. The scan ends at the marker's ``match`` record,
whose timestamp the daemon takes itself: wall = that timestamp - the time of the rename.
CPU = the daemon's CPU time (scheduler's exact sum) after it went idle minus before the
rename. Then SIGTERM: the ``stop`` record's ``counts.bytes`` must equal the file size and
each watcher's ``matches`` the count of the same rule in the in-process matcher run.

Actions: each watcher logs its firings (``log_event``: no process); the ``loss`` watcher,
which matches ~5 % of the lines, has ``rate_limit = "1/1h"``, so its ~400 000 matches are
counted but act once - the figure is the scan, not 400 000 event-log records (once its window
is full the daemon only counts that watcher's lines, building no match).
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any, Dict, List, Optional, Tuple

from benchmarks.harness import (
    Daemon,
    EventTail,
    MachineBusy,
    Procs,
    cpu_ns,
    parse_ts,
    proc_status,
    read_events,
    wait_for,
)

MiB = 1 << 20
MARKER = (
    "slurmstepd: error: *** JOB 0 ON benchnode CANCELLED AT 2024-05-31T23:59:59 "
    "DUE TO TIME LIMIT *** sidecar-bench-end"
)


def make_log(path: str, size_mb: int) -> Dict[str, int]:
    """The log of ``benchmarks.scan.generate`` plus the marker line; returns sizes/lines."""
    from benchmarks import scan

    scan.generate(path, size_mb * MiB, seed=1, loss_rate=0.05, alert_rate=2e-5)
    with open(path, "ab") as f:
        f.write(MARKER.encode() + b"\n")
    return count_lines(path)


def count_lines(path: str) -> Dict[str, int]:
    """Also warms the page cache. Lines as sidecar counts them: ``\\n``, ``\\r\\n``, lone ``\\r``."""
    nl = cr = crlf = 0
    size = 0
    tail = b""
    with open(path, "rb") as f:
        while True:
            b = f.read(8 * MiB)
            if not b:
                break
            size += len(b)
            nl += b.count(b"\n")
            cr += b.count(b"\r")
            crlf += b.count(b"\r\n")
            if tail == b"\r" and b[:1] == b"\n":
                crlf += 1
            tail = b[-1:]
    return {"bytes": size, "lines": nl + cr - crlf, "nl_lines": nl}


def time_grep(path: str, patfile: str) -> Dict[str, float]:
    from benchmarks import scan

    env = {**os.environ, "LC_ALL": "C"}
    wall, cpu, out = scan.time_grep(["grep", "-cEf", patfile, path], env)
    return {"wall_s": wall, "cpu_s": cpu, "count": float(out or 0)}


def matcher_alone(path: str) -> Dict[str, Any]:
    """``benchmarks.scan``'s in-process run: the Tailer's chunks through ``MultiMatcher``."""
    from benchmarks import scan

    src_name, source = scan.chunk_source("auto")
    wall, cpu, counts, _last = scan.run_matcher(path, source)
    return {"wall_s": wall, "cpu_s": cpu, "counts": counts, "chunks_from": src_name}


def _config(workdir: str) -> str:
    import tomli_w

    from benchmarks import scan

    watchers: List[Dict[str, Any]] = []
    for name, pat, _g in scan.PATTERNS:
        w: Dict[str, Any] = {
            "name": name,
            "directory": "watched",
            "filepath_regex": r"^train\.log$",
            "line_regex": pat,
            "actions": [{"type": "log_event"}],
        }
        caps = scan.CAPTURES.get(name)
        if caps:
            w["captures"] = list(caps)
        if name == "loss":
            w["rate_limit"] = "1/1h"
        watchers.append(w)
    path = os.path.join(workdir, "scan.toml")
    with open(path, "wb") as f:
        tomli_w.dump({"regex_actions": watchers}, f)
    return path


def run_daemon_scan(
    procs: Procs, cmd: List[str], workdir: str, log_path: str, info: Dict[str, int],
    timeout: float = 600.0, profile: Optional[str] = None,
) -> Dict[str, Any]:
    d = os.path.join(workdir, "scan-e2e")
    watched = os.path.join(d, "watched")
    os.makedirs(watched, exist_ok=True)
    config = _config(d)
    events = os.path.join(d, "events.jsonl")
    res: Dict[str, Any] = {}
    flags = ("-m", "cProfile", "-o", profile) if profile else ()
    dm = Daemon(procs, cmd, config, events, cwd=d, python_flags=flags)
    if not dm.wait_ready(120):
        raise RuntimeError(dm.describe_failure())
    res["daemon_nice"] = os.getpriority(os.PRIO_PROCESS, dm.pid)
    tail = EventTail(events)
    tail.new()
    target = os.path.join(watched, "train.log")
    count_lines(log_path)  # page cache warm right before
    busy = MachineBusy()
    cpu0 = cpu_ns(dm.pid)
    t0 = time.time()
    os.rename(log_path, target)
    done_ts: List[float] = []

    def marker_seen() -> bool:
        for rec in tail.new():
            if rec.get("kind") == "match" and "sidecar-bench-end" in str(rec.get("line", "")):
                done_ts.append(parse_ts(rec["ts"]))
                return True
        return not dm.alive()

    try:
        ok = wait_for(marker_seen, timeout, 0.02)
        if not ok or not done_ts:
            raise RuntimeError(
                f"the daemon did not reach the end of the log within {timeout:.0f} s"
                if ok is False else dm.describe_failure()
            )
        res["wall_s"] = done_ts[0] - t0
        res["machine_busy_cores"] = busy.cores()
        # idle again = its CPU time stops moving (the last firings' records, then poll())
        last = [cpu_ns(dm.pid)]

        def settled() -> bool:
            time.sleep(0.2)
            now = cpu_ns(dm.pid)
            same = now - last[0] < 2_000_000
            last[0] = now
            return same

        wait_for(settled, 30, 0)
        res["cpu_s"] = (last[0] - cpu0) / 1e9
        st = proc_status(dm.pid)
        res["vmhwm_kb"] = st["VmHWM"]
        res["threads"] = st["threads"]
    finally:
        dm.stop()
        if os.path.exists(target):
            os.rename(target, log_path)  # give the file back for the other runs
    stop = next((r for r in reversed(read_events(events)) if r.get("kind") == "stop"), None)
    res["stop_bytes"] = None
    res["watcher_matches"] = {}
    if stop is not None:
        extra = stop.get("extra") or {}
        res["stop_bytes"] = (extra.get("counts") or {}).get("bytes")
        res["watcher_matches"] = {
            n: v.get("matches") for n, v in (extra.get("watchers") or {}).items()
            if isinstance(v, dict)
        }
    res["bytes_ok"] = res["stop_bytes"] == info["bytes"]
    return res


def check_counts(
    daemon: Dict[str, Optional[int]], matcher: Dict[str, int]
) -> Tuple[bool, List[str]]:
    diffs = [
        f"{n}: daemon {daemon.get(n)} / matcher {c}" for n, c in matcher.items()
        if daemon.get(n) != c
    ]
    return not diffs, diffs


def grep_per_pattern(path: str) -> Dict[str, int]:
    from benchmarks import scan

    env = {**os.environ, "LC_ALL": "C"}
    out: Dict[str, int] = {}
    for name, _p, g in scan.PATTERNS:
        r = subprocess.run(["grep", "-cE", g, path], env=env, capture_output=True, text=True,
                           check=False)
        out[name] = int(r.stdout.strip() or 0)
    return out
