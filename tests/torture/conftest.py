"""Shared machinery of the torture suites.

* ``TORTURE`` (``SIDECAR_TORTURE=1``, set by ``make torture``) selects the long version:
  :func:`scale` picks a size, :func:`hyp` a hypothesis budget.
* :func:`figure` adds to the figures of a suite (cases run, lines written / delivered,
  faults injected, events lost ...). At the end of the session they are printed in the
  terminal summary and written as JSON to ``$SIDECAR_FIGURES`` (default
  ``/tmp/sidecar-torture-figures-{fast,torture}.json``); docs/reliability.md quotes them.
* :class:`SyncEngine` drives the real :class:`~sidecar.engine.Engine` (real backend, tailers,
  matcher, event log) from the test thread, so that a test decides exactly when the sidecar
  reads ("between two reads" is then a precise notion).
* :class:`Daemon` runs ``python -m sidecar.cli`` as a real process (stderr to a file, so a
  chatty daemon can never block on a full pipe).
* ``small_tmpfs``: a 512 KiB tmpfs (a real full disk; remount read-only for the read-only
  case). Needs root: skipped elsewhere, a failure under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import pytest
from hypothesis import HealthCheck, settings

from tests.conftest import wait_until

REPO = str(Path(__file__).resolve().parents[2])
TORTURE = os.environ.get("SIDECAR_TORTURE", "").strip() not in ("", "0", "false", "no")
MODE = "torture" if TORTURE else "fast"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: a tmpfs for files whose speed is not the subject (state files of flood tests ...)
SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def scale(fast: int, long: int) -> int:
    """A size for this run: ``fast`` in ``make test``, ``long`` in ``make torture``."""
    return long if TORTURE else fast


def hyp(fast: int, long: int, **kw: Any) -> Any:
    """Hypothesis settings with ``fast`` / ``long`` examples, no deadline (real I/O)."""
    kw.setdefault("deadline", None)
    kw.setdefault("suppress_health_check", list(HealthCheck))
    return settings(max_examples=scale(fast, long), **kw)


# ----------------------------------------------------------------------------- figures

FIGURES: Dict[str, Dict[str, float]] = {}


def figure(suite: str, **counts: float) -> None:
    """Add ``counts`` to the figures of ``suite`` (summed over tests and examples)."""
    f = FIGURES.setdefault(suite, {})
    for k, v in counts.items():
        f[k] = f.get(k, 0) + v


def figure_max(suite: str, **values: float) -> None:
    """Keep the largest value seen (latencies, memory)."""
    f = FIGURES.setdefault(suite, {})
    for k, v in values.items():
        f[k] = max(f.get(k, v), v)


def figures_path() -> str:
    return os.environ.get("SIDECAR_FIGURES") or f"/tmp/sidecar-torture-figures-{MODE}.json"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    tr = terminalreporter
    tr.section(f"sidecar torture figures ({MODE})")
    for suite in sorted(FIGURES):
        vals = ", ".join(
            f"{k}={int(v) if float(v).is_integer() else round(v, 4)}"
            for k, v in sorted(FIGURES[suite].items())
        )
        tr.write_line(f"{suite}: {vals}")
    path = figures_path()
    try:
        with open(path, "w") as fh:
            json.dump({"mode": MODE, "figures": FIGURES}, fh, indent=1, sort_keys=True)
        tr.write_line(f"(written to {path})")
    except OSError as exc:
        tr.write_line(f"(figures not written: {exc})")


# ----------------------------------------------------------------------------- processes


def pids_with(marker: str) -> List[int]:
    """Live (not zombie) processes whose command line contains ``marker``."""
    out = []
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as fh:
                cmd = fh.read()
            with open(f"/proc/{d}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmd and state != "Z":
            out.append(int(d))
    return out


def kill_marked(marker: str) -> int:
    """SIGKILL every process carrying ``marker`` (test clean-up); returns how many."""
    n = 0
    for pid in pids_with(marker):
        try:
            os.kill(pid, signal.SIGKILL)
            n += 1
        except OSError:
            pass
    return n


def rss_mb(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / 2**20


def records(path: Any) -> List[Dict[str, Any]]:
    """Every record of an event log (either format); torn JSONL lines make the test fail."""
    from sidecar.eventlog import ReadStats, read_records

    p = str(path)
    if not os.path.exists(p):
        return []
    stats = ReadStats()
    out = list(read_records(p, stats))
    assert stats.skipped == 0, f"{stats.skipped} torn/invalid line(s) in {p}"
    return out


class JsonlTail:
    """Follows a JSONL event log incrementally (cheap to poll in a wait loop)."""

    def __init__(self, path: Any) -> None:
        self.path = str(path)
        self.off = 0
        self.pending = b""
        self.all: List[Dict[str, Any]] = []

    def poll(self) -> List[Dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.off)
                data = fh.read()
        except FileNotFoundError:
            return []
        self.off += len(data)
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        new = [json.loads(x) for x in lines if x.strip()]
        self.all.extend(new)
        return new

    def count(self, kind: str, **match: Any) -> int:
        self.poll()
        return sum(
            1
            for r in self.all
            if r.get("kind") == kind and all(r.get(k) == v for k, v in match.items())
        )


def toml_str(s: str) -> str:
    """A TOML literal string for ``s`` (regexes, commands without a single quote)."""
    assert "'" not in s and "\n" not in s
    return f"'{s}'"


class Daemon:
    """``python -m sidecar.cli ARGS`` in ``cwd``, as a user runs it (no parent following)."""

    def __init__(
        self,
        cwd: Path,
        args: Sequence[str],
        *,
        stderr: Optional[Path] = None,
        env: Optional[Dict[str, str]] = None,
        ready: Optional[Callable[[], bool]] = None,
        ready_timeout: float = 30.0,
    ) -> None:
        self.cwd = Path(cwd)
        self.stderr_path = stderr or (self.cwd.parent / f"daemon-{time.monotonic_ns()}.stderr")
        e = dict(os.environ)
        for k in list(e):
            if k.startswith(("SLURM_", "SIDECAR_")):
                del e[k]
        e["PYTHONPATH"] = REPO
        e.update(env or {})
        self._err = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in wait()
        self.p = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", *args, "--no-follow", "--nice", "0"],
            cwd=str(self.cwd),
            env=e,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
        )
        self.pid = self.p.pid
        if ready is not None:
            wait_until(lambda: ready() or self.p.poll() is not None, timeout=ready_timeout)
            assert self.p.poll() is None, f"daemon exited at start: {self.stderr()}"

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.p.poll() is None

    def send(self, sig: int) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.p.wait(timeout)
        finally:
            if self.p.poll() is not None:
                self._err.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        self.send(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)
        self._err.close()


@pytest.fixture
def daemons() -> Iterator[List[Daemon]]:
    ds: List[Daemon] = []
    yield ds
    for d in ds:
        if d.alive():
            d.kill()


def state_ready(directory: Path) -> Callable[[], bool]:
    """The daemon has done its initial read: its state file exists in ``directory``/.sidecar."""
    sd = Path(directory) / ".sidecar"
    return lambda: sd.is_dir() and any(sd.glob("*.json"))


# ----------------------------------------------------------------------------- tmpfs


def _mount(args: List[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``tmpfs(size)`` mounts a tmpfs of that size (``"512k"``, ``"8m"``) under tmp_path;
    all are unmounted afterwards. Skipped without root, a failure under CI=true."""
    mounted: List[Path] = []

    def mount(size: str) -> Path:
        d = tmp_path / f"fs{len(mounted) or ''}"
        d.mkdir()
        r = _mount(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(d)])
        if r.returncode != 0:
            msg = f"cannot mount a tmpfs (needs root): {r.stderr.strip()}"
            if IN_CI:
                pytest.fail(msg)
            pytest.skip(msg)
        mounted.append(d)
        return d

    try:
        yield mount
    finally:
        for d in mounted:
            _mount(["umount", "-l", str(d)])


@pytest.fixture
def small_tmpfs(tmpfs: Callable[[str], Path]) -> Path:
    """A 512 KiB tmpfs at tmp_path/fs."""
    return tmpfs("512k")


def remount(path: Path, mode: str) -> None:
    r = _mount(["mount", "-o", f"remount,{mode}", str(path)])
    assert r.returncode == 0, r.stderr


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the file system of ``directory`` up to ``leave`` free bytes; returns the filler."""
    filler = directory / "filler.bin"
    with open(filler, "ab") as fh:
        block = b"\0" * 4096
        while True:
            st = os.statvfs(directory)
            free = st.f_bavail * st.f_frsize
            if free <= leave:
                break
            try:
                fh.write(block if free - leave >= 4096 else b"\0" * (free - leave))
                fh.flush()
            except OSError:
                break
    return filler


# ----------------------------------------------------------------------------- engine


class SyncEngine:
    """The real Engine, driven from the test thread: :meth:`pump` is one turn of the daemon's
    loop (read the backend's events, hand them to the engine, finish the reads the byte
    budget cut short) repeated until nothing is left; nothing is read between two pumps.
    :meth:`stop` runs the real shutdown (last read, partial lines flushed, stop record)."""

    def __init__(
        self,
        root: Path,
        watchers: Sequence[Any],
        backend: str,
        *,
        log_name: str = "events.jsonl",
        watch: str = "w",
        **settings: Any,
    ) -> None:
        from sidecar.engine import Engine
        from sidecar.model import Config, Settings

        self.root = Path(root)
        self.dir = self.root / watch
        self.dir.mkdir(exist_ok=True)
        self.log = self.root / log_name
        st = Settings(backend=backend, poll_interval=0.05, event_log=str(self.log), **settings)
        self.engine = Engine(
            Config(tuple(watchers), st),
            cwd=str(self.root),
            environ={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SLURM_JOB_ID": "77"},
            install_signals=False,
        )
        self.engine.start()
        self.stopped = False

    def pump(self) -> int:
        """Let the sidecar look at everything that happened; returns the events handled."""
        eng = self.engine
        n = 0
        for _ in range(10_000):
            evs = eng.backend.read()
            n += len(evs)
            if evs:
                eng.handle_events(evs)
            for _ in range(100_000):
                if not eng._pending_reads:
                    break
                eng._continue_reads()
            if not evs:
                break
        return n

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until the actions started so far (and the chains they continue) are done."""
        eng = self.engine
        deadline = time.monotonic() + timeout
        while True:
            eng._collect_results()
            self.pump()
            if not eng.chains:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"actions still running after {timeout} s")
            time.sleep(0.005)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.engine.request_stop("test")
            self.engine.run()


def regex_watcher(
    name: str,
    pattern: str,
    actions: Sequence[Any] = (),
    *,
    regex: str = r"\.log$",
    captures: Sequence[str] = (),
    **kw: Any,
) -> Any:
    """A regex watcher on the files of ``w/`` whose name matches ``regex``."""
    from sidecar.model import RegexTrigger, Source, Watcher

    return Watcher(
        name=name,
        source=Source(directory="w", filepath_regex=regex),
        trigger=RegexTrigger(pattern, captures=tuple(captures)),
        actions=tuple(actions),
        **kw,
    )
