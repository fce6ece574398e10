"""What every benchmark needs: processes that are always cleaned up, the installed ``sidecar``
daemon with its ``ready`` line, figures read from ``/proc``, a CPU load, percentiles.

Nothing here imports ``sidecar``: the daemon is measured as a separate process, the way a
job runs it.
"""

from __future__ import annotations

import datetime as _dt
import glob
import json
import os
import shlex
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from contextlib import contextmanager
from typing import IO, Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- processes


class Procs:
    """Every process a benchmark starts goes through here, so that :meth:`cleanup` (called
    from ``finally``, also on Ctrl-C and SIGTERM) can end them. Each runs in its own process
    group; only processes started here are ever signalled, by pid / their own group."""

    def __init__(self) -> None:
        self._procs: List[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()

    def start(
        self,
        args: Sequence[str],
        *,
        nice: int = 0,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        stdout: Any = subprocess.DEVNULL,
        stderr: Any = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        # Own process group (to be killed as one), but the same session as this benchmark:
        # with autogroup scheduling (sched_autogroup_enabled=1) niceness only counts between
        # processes of one session, and a sidecar started by a batch script shares the job's.
        kw: Dict[str, Any] = {}
        preexec: Optional[Callable[[], None]] = None
        if nice or sys.version_info < (3, 11):
            n = nice

            def preexec() -> None:
                os.setpgid(0, 0)
                if n:
                    os.nice(n)

        else:
            kw["process_group"] = 0
        p = subprocess.Popen(
            list(args),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            preexec_fn=preexec,
            **kw,
        )
        with self._lock:
            self._procs.append(p)
        return p

    @staticmethod
    def end(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 10.0) -> Optional[int]:
        """Send ``sig`` to the process; after ``grace`` s SIGKILL its process group."""
        if p.poll() is not None:
            return p.returncode
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return p.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            return p.wait(5)
        except subprocess.TimeoutExpired:
            return None

    def cleanup(self) -> None:
        with self._lock:
            procs, self._procs = self._procs, []
        for p in procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5.0
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            for f in (p.stdout, p.stderr):
                if f is not None:
                    try:
                        f.close()
                    except OSError:
                        pass


def install_signal_handlers() -> None:
    """SIGTERM / SIGHUP end the benchmark like Ctrl-C does (``finally`` blocks run)."""

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _raise)
    # Ctrl-C too, even when started in the background (where SIGINT is inherited ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)


@contextmanager
def cpu_load(procs: Procs, n: int) -> Iterator[List[subprocess.Popen[bytes]]]:
    """``n`` busy loops (``python3 -c 'while True: pass'``) at normal priority, killed on exit."""
    ps = [procs.start([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        # let them start spinning (an interpreter start is ~20 ms)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not all(_cpu_ns(p.pid) > 50_000_000 for p in ps):
            time.sleep(0.02)
        yield ps
    finally:
        for p in ps:
            Procs.end(p, signal.SIGKILL, grace=5.0)


# --------------------------------------------------------------------------- /proc


def _cpu_ns(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def cpu_ns(pid: int) -> int:
    """CPU time (ns, exact: the scheduler's sum_exec_runtime) of every live thread of ``pid``.
    Threads that already ended are not counted (see :func:`cpu_ticks_s`)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def cpu_ticks_s(pid: int) -> float:
    """utime+stime of ``pid`` from /proc/PID/stat (all threads, ended ones too; tick resolution)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return 0.0


def proc_status(pid: int) -> Dict[str, int]:
    """VmHWM / VmRSS (kB) of the process, and context switches summed over its threads."""
    out: Dict[str, int] = {"VmHWM": 0, "VmRSS": 0, "voluntary": 0, "nonvoluntary": 0, "threads": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS"):
                    out[k] = int(v.split()[0])
    except (OSError, ValueError):
        return out
    for path in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        out["voluntary"] += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        out["nonvoluntary"] += int(line.split()[1])
            out["threads"] += 1
        except (OSError, ValueError, IndexError):
            continue
    return out


class MachineBusy:
    """How many cores were busy on average between :meth:`start` and :meth:`cores`
    (``/proc/stat``; everything counts: the benchmark itself and whatever else runs on the
    machine - the figures of an "idle machine" are only as good as this says)."""

    def __init__(self) -> None:
        self._t0 = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return (0, 0)
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        total = sum(v[:8])
        return (total - idle, total)

    def start(self) -> MachineBusy:
        self._t0 = self._read()
        return self

    def cores(self) -> float:
        b1, t1 = self._read()
        b0, t0 = self._t0
        if t1 <= t0:
            return float("nan")
        return (b1 - b0) / (t1 - t0) * (os.cpu_count() or 1)


def wait_quiet(max_wait: float, threshold: float = 0.3, window: float = 1.0) -> float:
    """Wait (at most ``max_wait`` s) until less than ``threshold`` cores were busy over a
    ``window``; return the last measured value. On a shared machine other people's work
    distorts an "idle machine" figure: this is noted with the figures."""
    deadline = time.monotonic() + max_wait
    while True:
        b = MachineBusy()
        time.sleep(window)
        busy = b.cores()
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def niceness(pid: int) -> Optional[int]:
    try:
        return os.getpriority(os.PRIO_PROCESS, pid)
    except OSError:
        return None


# --------------------------------------------------------------------------- the daemon


def sidecar_command(override: Optional[str] = None) -> List[str]:
    """The installed ``sidecar`` console script of this interpreter (not a pyenv/asdf shim,
    which would add its own start-up), else ``python -m sidecar.cli``."""
    if override:
        return shlex.split(override)
    script = os.path.join(sysconfig.get_path("scripts"), "sidecar")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "sidecar.cli"]


def parse_ts(s: str) -> float:
    """``2025-03-01T12:00:00.123456Z`` (event log / structlog) -> seconds since the epoch."""
    s = s.rstrip("Z")
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in s else "%Y-%m-%dT%H:%M:%S"
    if "+" in s[10:]:
        s = s[: s.rindex("+")]
    return _dt.datetime.strptime(s, fmt).replace(tzinfo=_dt.timezone.utc).timestamp()


class Daemon:
    """One ``sidecar CONFIG --events PATH [args]`` process; its stderr is read by a thread
    that notes the ``ready`` line (its own timestamp, and when it arrived here)."""

    def __init__(
        self,
        procs: Procs,
        cmd: Sequence[str],
        config: str,
        events: str,
        *,
        cwd: str,
        args: Sequence[str] = ("--no-follow",),
        nice: int = 0,
        python_flags: Sequence[str] = (),
        keep_stderr: int = 400,
        env: Optional[Mapping[str, str]] = None,
    ) -> None:
        full = list(cmd)
        if python_flags:
            if full[0].endswith("sidecar"):
                full = [sys.executable, *python_flags, *full]
            else:
                full = [full[0], *python_flags, *full[1:]]
        self.argv = [*full, config, "--events", events, *args]
        self.events = events
        self.keep_stderr = keep_stderr
        self.stderr_lines: List[str] = []
        self.ready = threading.Event()
        self.ready_ts: Optional[float] = None  # the daemon's own timestamp of "ready"
        self.ready_seen: Optional[float] = None  # time.time() when it arrived here
        self.ready_cpu_ns: Optional[int] = None  # its CPU time when the line arrived here
        self.t_spawn = time.time()
        self.p = procs.start(self.argv, nice=nice, cwd=cwd, env=env, stderr=subprocess.PIPE)
        self.pid = self.p.pid
        self._reader = threading.Thread(target=self._read, args=(self.p.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: Optional[IO[bytes]]) -> None:
        if stream is None:
            return
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if len(self.stderr_lines) < self.keep_stderr:
                self.stderr_lines.append(line)
            if self.ready.is_set() or "ready" not in line:
                continue
            now = time.time()
            cpu = cpu_ns(self.pid)
            ts: Optional[float] = None
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if isinstance(rec, dict):
                if rec.get("event") != "ready":
                    continue
                try:
                    ts = parse_ts(str(rec.get("timestamp", "")))
                except ValueError:
                    ts = None
            self.ready_ts = ts if ts is not None else now
            self.ready_seen = now
            self.ready_cpu_ns = cpu
            self.ready.set()

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready.wait(0.05):
                return True
            if self.p.poll() is not None:
                self._reader.join(1.0)
                return self.ready.is_set()
        return self.ready.is_set()

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, grace: float = 30.0) -> Optional[int]:
        rc = Procs.end(self.p, signal.SIGTERM, grace=grace)
        self._reader.join(2.0)
        return rc

    def describe_failure(self) -> str:
        tail = "\n".join(self.stderr_lines[-15:])
        return f"sidecar ({' '.join(self.argv)}) exit={self.p.poll()}:\n{tail}"


def read_events(path: str) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
    except OSError:
        pass
    return out


class EventTail:
    """Reads the records appended to a JSON lines event log since the last call."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self._rest = b""

    def new(self) -> List[Dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self._rest + data
        cut = data.rfind(b"\n") + 1
        self._rest = data[cut:]
        out: List[Dict[str, Any]] = []
        for line in data[:cut].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# --------------------------------------------------------------------------- numbers


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); ``p`` in 0..100.
    ``inf`` values (never happened) sort last and propagate."""
    n = len(sorted_values)
    if n == 0:
        return float("nan")
    if n == 1:
        return float(sorted_values[0])
    x = (n - 1) * p / 100.0
    lo = int(x)
    hi = min(lo + 1, n - 1)
    a, b = sorted_values[lo], sorted_values[hi]
    if a == b:
        return float(a)
    if b == float("inf"):
        return float("inf") if x > lo else float(a)
    return float(a + (b - a) * (x - lo))


def summary(values: Sequence[float], ps: Sequence[float] = (50, 90, 99)) -> Dict[str, float]:
    s = sorted(values)
    out = {f"p{int(p) if float(p).is_integer() else p}": percentile(s, p) for p in ps}
    out["max"] = s[-1] if s else float("nan")
    out["min"] = s[0] if s else float("nan")
    out["n"] = float(len(s))
    return out


def median(values: Sequence[float]) -> float:
    return percentile(sorted(values), 50)


# --------------------------------------------------------------------------- machine


def machine() -> Dict[str, str]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                    break
    except (OSError, ValueError):
        pass
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count() or "?"),
        "cpu": model,
        "memory": mem,
        "kernel": f"{os.uname().sysname} {os.uname().release}",
        "python": sys.version.split()[0],
        "load_at_start": load,
    }


def git_revision(repo: str) -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", repo, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "--untracked-files=no", "--", "sidecar"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{rev}{' + uncommitted changes in sidecar/' if dirty else ''}" if rev else "?"
