"""Idle cost (wake-ups, CPU, RSS) and start-up cost (CPU and wall time to ``ready``).

Both use the same config: 10 watchers - 6 regex, 4 stale with a 1 h timeout - on a
directory holding two quiet files the watchers match (so the stale timers are armed, with
their deadline an hour away) and one they do not.

Idle: the daemon follows this benchmark's process (``--pid``: a pidfd, no polling). Once it
is ready and has settled, its threads' voluntary context switches (each one = the thread
went to sleep, i.e. one wake-up later) and CPU time (scheduler's exact sum) are read at t0
and after the idle period.

Start-up: time before ``Popen`` to the daemon's own timestamp on its ``ready`` line (wall),
and its CPU time when that line arrived (it is asleep in ``poll()`` by then). Repeated;
median and max. sidecar keeps validated configs in a cache (``$XDG_CACHE_HOME/sidecar``,
filled by ``sidecar check`` or any start): "warm" starts find the config there, "cold" ones
find an empty cache. Every daemon here gets a cache directory inside the work directory. Floor: ``python3 -c pass`` (wall and CPU from ``wait4``). Under load the
daemon starts at nice 19 (as ``nice -n 19 sidecar ...`` would) with every core busy.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from benchmarks.harness import (
    Daemon,
    MachineBusy,
    Procs,
    cpu_load,
    cpu_ns,
    cpu_ticks_s,
    median,
    proc_status,
    wait_for,
)


def idle_config(workdir: str) -> str:
    import tomli_w

    d = os.path.join(workdir, "idle")
    watched = os.path.join(d, "watched")
    os.makedirs(watched, exist_ok=True)
    with open(os.path.join(watched, "train.log"), "w") as f:
        f.write("".join(f"epoch 1 step {i} loss: 0.{i:04d}\n" for i in range(20)))
    with open(os.path.join(watched, "slurm-4242.out"), "w") as f:
        f.write("starting\n")
    with open(os.path.join(watched, "notes.txt"), "w") as f:
        f.write("not watched\n")
    regex = [
        ("oom", r"CUDA out of memory|OutOfMemoryError"),
        ("nan", r"loss: (nan|inf)"),
        ("traceback", r"^Traceback \(most recent call last\)"),
        ("nccl", r"NCCL (WARN|ERROR)|Watchdog caught collective operation timeout"),
        ("time_limit", r"DUE TO TIME LIMIT"),
        ("loss", r"epoch (\d+) step (\d+) loss: ([0-9.]+)"),
    ]
    watchers: List[Dict[str, Any]] = []
    for name, pat in regex:
        w: Dict[str, Any] = {
            "name": name,
            "directory": "watched",
            "filepath_regex": r"(^train\.log|\.out)$",
            "line_regex": pat,
            "cmd": f'echo "$MATCH" >> {name}.matched',
        }
        if name == "loss":
            w["captures"] = ["epoch", "step", "loss"]
            w["condition"] = "float(loss) > 100"
            w.pop("cmd")
            w["actions"] = [{"type": "store_metric", "name": "loss", "value": "$loss"}]
        watchers.append(w)
    stale = [
        {"name": f"stale{i}", "directory": "watched", "filepath_regex": pat, "timeout": 3600.0,
         "cmd": 'echo "$FILE" >> stale.txt'}
        for i, pat in enumerate([r"^train\.log$", r"\.out$", r"\.log$", r"^slurm-\d+\.out$"])
    ]
    path = os.path.join(d, "idle.toml")
    with open(path, "wb") as f:
        tomli_w.dump({"regex_actions": watchers, "stale_file_actions": stale}, f)
    return path


def run_idle(procs: Procs, cmd: List[str], config: str, seconds: float) -> Dict[str, Any]:
    d = os.path.dirname(config)
    events = os.path.join(d, "idle-events.jsonl")
    dm = Daemon(procs, cmd, config, events, cwd=d, args=("--pid", str(os.getpid())))
    try:
        if not dm.wait_ready(120):
            raise RuntimeError(dm.describe_failure())
        # settle: the start-up work is over once its CPU time stops moving
        last = [cpu_ns(dm.pid)]

        def settled() -> bool:
            time.sleep(0.25)
            now = cpu_ns(dm.pid)
            same = now == last[0]
            last[0] = now
            return same

        wait_for(settled, 20, 0)
        busy = MachineBusy()
        s0, c0, k0, t0 = proc_status(dm.pid), cpu_ns(dm.pid), cpu_ticks_s(dm.pid), time.monotonic()
        # nothing here touches the daemon: /proc reads do not wake it
        end = t0 + seconds
        while time.monotonic() < end:
            if not dm.alive():
                raise RuntimeError(dm.describe_failure())
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        s1, c1, k1, t1 = proc_status(dm.pid), cpu_ns(dm.pid), cpu_ticks_s(dm.pid), time.monotonic()
        wall = t1 - t0
        res: Dict[str, Any] = {
            "seconds": wall,
            "wakeups": s1["voluntary"] - s0["voluntary"],
            "preemptions": s1["nonvoluntary"] - s0["nonvoluntary"],
            "cpu_s": (c1 - c0) / 1e9,
            "cpu_ticks_s": k1 - k0,
            "cpu_pct": 100.0 * (c1 - c0) / 1e9 / wall,
            "threads": s1["threads"],
            "vmhwm_kb": s1["VmHWM"],
            "vmrss_kb": s1["VmRSS"],
            "files": None,
            "machine_busy_cores": busy.cores(),
        }
        for line in dm.stderr_lines:
            m = re.search(r'"files": (\d+)', line)
            if m:
                res["files"] = int(m.group(1))
        # the pidfd: the daemon stops on its own when the followed process ends - checked
        # separately below with a short-lived parent, not this benchmark
        return res
    finally:
        dm.stop()


def run_follow_check(procs: Procs, cmd: List[str], config: str) -> Dict[str, Any]:
    """The daemon notices the end of a followed process without polling: follow a ``sleep``,
    kill it, time until the daemon has exited."""
    d = os.path.dirname(config)
    sleeper = procs.start(["sleep", "600"])
    dm = Daemon(procs, cmd, config, os.path.join(d, "follow-events.jsonl"), cwd=d,
                args=("--pid", str(sleeper.pid)))
    try:
        if not dm.wait_ready(120):
            raise RuntimeError(dm.describe_failure())
        time.sleep(0.3)
        t0 = time.monotonic()
        Procs.end(sleeper, signal.SIGKILL, grace=5)
        exited = wait_for(lambda: not dm.alive(), 15, 0.002)
        return {"exited": exited, "stop_s": time.monotonic() - t0 if exited else None}
    finally:
        dm.stop()


def python_floor(
    procs: Procs, n: int, nice: int = 0, no_pth: bool = False
) -> Dict[str, float]:
    walls: List[float] = []
    cpus: List[float] = []
    argv = [sys.executable, "-c", "pass"]
    env = None
    if no_pth:
        argv, env = no_pth_command(argv[1:])
    for _ in range(n):
        t0 = time.perf_counter()
        p = procs.start(argv, nice=nice, env=env)
        _pid, _status, ru = os.wait4(p.pid, 0)
        walls.append(time.perf_counter() - t0)
        cpus.append(ru.ru_utime + ru.ru_stime)
        p.returncode = 0
    return {"wall_med": median(walls), "wall_max": max(walls), "cpu_med": median(cpus),
            "cpu_max": max(cpus)}


def site_pth_files() -> List[str]:
    """The ``*.pth`` files of this interpreter's site-packages: ``site`` executes their
    ``import`` lines at every interpreter start (the machine's, not sidecar's, cost)."""
    import site

    out: List[str] = []
    for d in site.getsitepackages():
        try:
            out.extend(sorted(f for f in os.listdir(d) if f.endswith(".pth")))
        except OSError:
            pass
    return out


def no_pth_command(args: List[str]) -> Tuple[List[str], Dict[str, str]]:
    """``python3 -S ARGS`` with site-packages on PYTHONPATH: the same imports, without the
    ``.pth`` hooks that ``site`` runs at every start (a directory on PYTHONPATH is not
    scanned for them)."""
    import site

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [p for p in (env.get("PYTHONPATH") or "").split(os.pathsep) if p]
        + site.getsitepackages()
    )
    return [sys.executable, "-S", *args], env


def _cache_env(
    workdir: str, name: str, base: Optional[Dict[str, str]] = None
) -> Dict[str, str]:
    """The environment with sidecar's config cache (``$XDG_CACHE_HOME/sidecar``) in a
    directory of its own: never the user's ~/.cache, and empty for a cold start."""
    d = os.path.join(workdir, "caches", name)
    os.makedirs(d, exist_ok=True)
    return {**(base or os.environ), "XDG_CACHE_HOME": d}


def prime_cache(
    procs: Procs, cmd: List[str], config: str, nice: int,
    base_env: Optional[Dict[str, str]] = None, tag: Optional[str] = None,
) -> None:
    """One unmeasured start that fills the cache the "warm" starts at ``nice`` use."""
    d = os.path.dirname(config)
    tag = tag or f"{nice}"
    dm = Daemon(procs, cmd, config, os.path.join(d, f"prime-{tag}.jsonl"), cwd=d,
                env=_cache_env(d, f"warm-{tag}", base_env))
    try:
        if not dm.wait_ready(120):
            raise RuntimeError(dm.describe_failure())
    finally:
        dm.stop()


def run_startups(
    procs: Procs, cmd: List[str], config: str, n: int, *, nice: int = 0, cache: str = "warm",
    timeout: float = 300.0, no_pth: bool = False,
) -> Dict[str, Any]:
    """``cache="warm"``: the validated config is in sidecar's config cache (``sidecar check``
    ran before, or an earlier start: one unmeasured start fills it); ``"cold"``: every start
    finds an empty cache and validates the TOML itself. ``no_pth``: started as
    ``python3 -S -m sidecar.cli`` with site-packages on PYTHONPATH (:func:`no_pth_command`)."""
    d = os.path.dirname(config)
    walls: List[float] = []
    cpus: List[float] = []
    base: Optional[Dict[str, str]] = None
    tag = f"{nice}"
    if no_pth:
        cmd, base = no_pth_command(["-m", "sidecar.cli"])
        tag += "-nopth"
    warm_env = _cache_env(d, f"warm-{tag}", base)
    if cache == "warm" and not os.listdir(os.path.join(warm_env["XDG_CACHE_HOME"])):
        prime_cache(procs, cmd, config, nice, base, tag)
    busy = MachineBusy()
    for i in range(n):
        events = os.path.join(d, f"start-{cache}-{tag}-{i}.jsonl")
        env = warm_env if cache == "warm" else _cache_env(d, f"cold-{tag}-{i}", base)
        dm = Daemon(procs, cmd, config, events, cwd=d, nice=nice, env=env)
        try:
            if not dm.wait_ready(timeout):
                raise RuntimeError(dm.describe_failure())
            assert dm.ready_ts is not None and dm.ready_cpu_ns is not None
            walls.append(dm.ready_ts - dm.t_spawn)
            cpus.append(dm.ready_cpu_ns / 1e9)
        finally:
            dm.stop()
    return {
        "n": n, "nice": nice, "cache": cache,
        "wall_med": median(walls), "wall_max": max(walls),
        "cpu_med": median(cpus), "cpu_max": max(cpus),
        "walls": walls, "cpus": cpus, "machine_busy_cores": busy.cores(),
    }


def run_startups_loaded(
    procs: Procs, cmd: List[str], config: str, n: int, n_cold: int, load: int, floor_n: int
) -> Dict[str, Any]:
    prime_cache(procs, cmd, config, 19)  # before the load: it is not measured
    with cpu_load(procs, load):
        res = {
            "warm": run_startups(procs, cmd, config, n, nice=19, cache="warm"),
            "cold": run_startups(procs, cmd, config, n_cold, nice=19, cache="cold"),
            "floor": python_floor(procs, floor_n, nice=19),
        }
    return res


# --------------------------------------------------------------------------- where it goes

_PHASES = r"""
import json, os, sys, time
pt, pc = time.process_time, time.perf_counter
marks = [("interpreter start (python3 + site)", pt(), pc())]
def mark(name):
    marks.append((name, pt(), pc()))
config, events = sys.argv[1], sys.argv[2]
import sidecar.cli as cli
mark("import sidecar.cli")
import sidecar.log
mark("import sidecar.log")
import sidecar.model
mark("import sidecar.model")
import sidecar.engine as eng
mark("import sidecar.engine (+ what it imports at module level)")
def wrap(obj, attr, before, after, once=False):
    orig = getattr(obj, attr, None)
    if orig is None:
        return
    state = {"n": 0}
    def w(*a, **k):
        state["n"] += 1
        if once and state["n"] > 1:
            return orig(*a, **k)
        mark(before)
        try:
            return orig(*a, **k)
        finally:
            mark(after)
    setattr(obj, attr, w)
wrap(cli, "_load", "argv parsing, log set-up",
     "config: load + validate (sidecar.config, pydantic, cache...)")
wrap(cli, "_lower_priority", "(between)", "nice/ionice (psutil)", once=True)
wrap(eng.Engine, "__init__", "(between)", "Engine()")
wrap(eng.Engine, "start", "(between)", "Engine.start (backend, event log, runner, initial read)")
def run(self):
    mark("after Engine.start until run(): hooks, the 'ready' log line (first log line)")
    return 0
eng.Engine.run = run
rc = cli.main([config, "--no-follow", "--events", events])
out = []
for (n0, c0, w0), (n1, c1, w1) in zip(marks, marks[1:]):
    if n1 == "(between)":
        out.append(("(other code in cmd_run)", c1 - c0, w1 - w0))
    else:
        out.append((n1, c1 - c0, w1 - w0))
out.insert(0, (marks[0][0], marks[0][1], None))
merged = {}
order = []
for n, c, w in out:
    if n not in merged:
        order.append(n)
        merged[n] = 0.0
    merged[n] += c
print("PHASES " + json.dumps({"rc": rc, "phases": [(n, merged[n], None) for n in order],
                               "total_cpu": pt()}), flush=True)
os._exit(0)
"""


def phase_profile(config: str, workdir: str, cache: str = "warm", n: int = 5) -> Dict[str, Any]:
    """Where start-up CPU goes, by phase: the CLI run in a process with timing wrappers
    around its steps (sidecar.cli._load / _lower_priority, Engine.__init__ / start; a step
    that no longer exists just disappears from the list). Median per phase over ``n`` runs."""
    import json

    script = os.path.join(workdir, "phases.py")
    with open(script, "w") as f:
        f.write(_PHASES)
    d = os.path.dirname(config)
    runs: List[Dict[str, Any]] = []
    for i in range(-1 if cache == "warm" else 0, n):
        env = _cache_env(d, "phases-warm" if cache == "warm" else f"phases-cold-{i}")
        r = subprocess.run(
            [sys.executable, script, config, os.path.join(workdir, f"phases-{cache}-{i}.jsonl")],
            cwd=d, env=env, capture_output=True, text=True, timeout=120, check=False,
        )
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("PHASES ")), None)
        if line is None:
            return {"error": (r.stderr or r.stdout)[-800:]}
        if i >= 0:
            runs.append(json.loads(line[7:]))
    names = [p[0] for p in runs[0]["phases"]]
    out = []
    for k, name in enumerate(names):
        cpu = median([run["phases"][k][1] for run in runs if len(run["phases"]) > k])
        out.append((name, cpu))
    return {"phases": out, "total_cpu": median([run["total_cpu"] for run in runs]),
            "cache": cache}


_IMPORT_LINE = re.compile(r"import time:\s*(\d+) \|\s*(\d+) \|( +)(\S.*)$")


def import_profile(procs: Procs, cmd: List[str], config: str, cache: str = "warm") -> Dict[str, Any]:
    """``python3 -X importtime`` of a real start (to ready): self time per top-level package
    and the heaviest imports by cumulative time."""
    d = os.path.dirname(config)
    env = _cache_env(d, f"importtime-{cache}")
    if cache == "warm":  # fill the cache first
        prime = Daemon(procs, cmd, config, os.path.join(d, "importtime-prime.jsonl"), cwd=d,
                       env=env)
        prime.wait_ready(120)
        prime.stop()
    dm = Daemon(procs, cmd, config, os.path.join(d, f"importtime-{cache}.jsonl"), cwd=d,
                python_flags=("-X", "importtime"), keep_stderr=100000, env=env)
    try:
        if not dm.wait_ready(120):
            raise RuntimeError(dm.describe_failure())
    finally:
        dm.stop()
    per_pkg: Dict[str, int] = {}
    top: List[Any] = []
    own: List[Any] = []
    total = 0
    for line in dm.stderr_lines:
        m = _IMPORT_LINE.match(line)
        if m is None:
            continue
        selfv, cumv, indent, mod = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
        depth = max(0, (len(indent) - 1) // 2)
        pkg = mod.split(".")[0]
        per_pkg[pkg] = per_pkg.get(pkg, 0) + selfv
        total += selfv
        if pkg == "sidecar":
            own.append((selfv, mod))
        top.append((cumv, depth, mod))
    pkgs = sorted(per_pkg.items(), key=lambda kv: -kv[1])
    heavy = sorted(top, reverse=True)[:15]
    return {"total_us": total, "packages": pkgs[:15], "heaviest": heavy, "cache": cache,
            "sidecar_modules": sorted(own, reverse=True)[:10]}
