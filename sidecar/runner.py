"""Runs action commands (``/bin/sh -c CMD``) without blocking the engine.

One job = one shell in its own session / process group, stdin from ``/dev/null``, stdout and
stderr merged into one pipe. At most ``max_concurrent`` run at once; up to ``queue_length``
more wait in a FIFO; beyond that ``submit`` says no (the engine logs a 'skipped' record).

Starting: when a slot is free, ``submit`` starts the process itself - ``Popen`` returns once
the child has exec'd (~0.2 ms here; CPython >= 3.10 uses vfork since no ``preexec_fn`` is
given and ``start_new_session`` is done in C) - and hands it to a worker thread that only
waits and reads. Workers are created on demand (at most ``max_concurrent``) and leave after
``idle_timeout`` s without work; handing a process to an idle worker is a queue put, while a
new thread costs the caller ~1 ms (``Thread.start()`` waits for it and it then holds the GIL).
A queued job is started by the worker whose slot frees up.

Output: the first ``output_cap`` bytes are kept (UTF-8, invalid bytes replaced); the rest is
read and thrown away so a chatty command never blocks on a full pipe nor grows memory; the
result then says ``detail["output_truncated_bytes"]``.

Ending. The shell is detected as exited without being reaped (pidfd, or ``waitid`` with
``WNOWAIT``), so its pid - which is also the process-group id - cannot be reused while the
worker may still signal the group; it is reaped last.

- timeout (counted from the start of the process, not from ``submit``): SIGTERM to the whole
  group, SIGKILL ``kill_after`` (2 s) later if the shell is still there or something still
  holds the output pipe; ``timed_out=True, ok=False``.
- the shell exited but something it started in the background still holds the output pipe
  (``cmd &`` without redirection): output is collected for ``linger`` (0.5 s) more, then what
  is left of the group gets SIGTERM, SIGKILL 2 s later. The action's result is the shell's
  (``ok = exit_code == 0``) with ``detail["killed_leftovers"] = True``. The worker never hangs
  on such a grandchild.
- background processes that do not hold the pipe (``cmd >/dev/null 2>&1 &``) are left alone
  when the shell exits normally.
- a process that left the group (``setsid``, ``setpgid``) cannot be reached by ``killpg``; it
  escapes the timeout and shutdown (SLURM's cgroup clean-up at the end of the job gets it).
  If it still holds the pipe after the SIGKILL, the worker stops reading 1 s later and closes
  its end.

``exit_code`` follows ``subprocess``: negative = killed by that signal. SIGTERM to a group is
followed by SIGCONT so that stopped members act on it.

Nobody else in the sidecar may reap children with ``waitpid(-1)`` (it would steal these).
"""

from __future__ import annotations

import codecs
import math
import os
import queue
import select
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Set, Tuple, Union

from sidecar.log import get_logger
from sidecar.types import ActionResult

_log = get_logger(__name__)

#: how much to read from the pipe at once
_READ_SIZE = 1 << 16
#: without a pidfd (kernel < 5.3), how often a worker checks whether the shell has exited
#: while the pipe is open / once it is closed (the shell is about to exit) (s)
_EXIT_CHECK = 0.05
_EXIT_CHECK_EOF = 0.002
#: after the SIGKILL: how long to wait for the shell to die and the pipe to close (s)
_GIVE_UP_AFTER_KILL = 1.0

# supervision phases
_RUN, _LINGER, _TERM, _KILL = range(4)

NOT_STARTED_STOPPING = "not started: sidecar stopping"
KILLED_STOPPING = "killed: sidecar stopping"


@dataclass(frozen=True)
class ShellJob:
    """One command for the runner.

    ``tag`` is opaque to the runner and comes back with the result. ``env`` is the FULL
    environment of the command (not added to the sidecar's). ``timeout`` <= 0 or infinite
    means no timeout. ``action`` is the action type the result is reported under.
    """

    tag: Any
    command: str
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Optional[str] = None
    timeout: float = 120.0
    action: str = "run_command"
    output_cap: Optional[int] = None  # bytes of output kept; None = the runner's cap
    stderr: bool = True  # False: standard error is discarded (probes match stdout only)


class _Output:
    """First ``cap`` bytes of the output; counts the rest."""

    __slots__ = ("cap", "kept", "dropped")

    def __init__(self, cap: int) -> None:
        self.cap = max(0, cap)
        self.kept = bytearray()
        self.dropped = 0

    def add(self, data: Union[bytes, memoryview]) -> None:
        room = self.cap - len(self.kept)
        if room >= len(data):
            self.kept += data
            return
        if room > 0:
            self.kept += data[:room]
        self.dropped += len(data) - max(room, 0)

    def text(self) -> str:
        dec = codecs.getincrementaldecoder("utf-8")("replace")
        # when cut, a multi-byte character split by the cap is dropped, not replaced
        return str(dec.decode(bytes(self.kept), final=self.dropped == 0))


class _Run:
    """A started job."""

    __slots__ = ("job", "proc", "pid", "pidfd", "started", "queued_s", "lock", "reaped", "stop")

    def __init__(self, job: ShellJob, proc: subprocess.Popen[bytes], started: float,
                 queued_s: float) -> None:
        self.job = job
        self.proc = proc
        self.pid: int = proc.pid
        self.pidfd: Optional[int] = _pidfd_open(proc.pid)
        self.started = started
        self.queued_s = queued_s
        self.lock = threading.Lock()
        self.reaped = False  # once True, pid/pgid may be reused: never signal again
        self.stop: Optional[str] = None  # set by shutdown(): why the group was signalled

    def signal_group(self, sig: int) -> None:
        with self.lock:
            if self.reaped:
                return
            try:
                os.killpg(self.pid, sig)
                if sig == signal.SIGTERM:  # a stopped process acts on TERM only once resumed
                    os.killpg(self.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            except OSError as exc:  # EPERM: a member changed uid; nothing more we can do
                _log.warning("cannot signal action process group", pgid=self.pid,
                             signal=sig, error=str(exc))


def _pidfd_open(pid: int) -> Optional[int]:
    fn = getattr(os, "pidfd_open", None)
    if fn is None:
        return None
    try:
        return int(fn(pid))
    except OSError:  # ENOSYS (kernel < 5.3), or EMFILE
        return None


def _exited(pid: int) -> bool:
    """Has the child exited? Leaves it a zombie (WNOWAIT) so its pid stays reserved."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # somebody else reaped it
        return True


def _timeout_of(job: ShellJob) -> float:
    t = job.timeout
    if t is None or not t > 0 or math.isinf(t) or math.isnan(t):
        return math.inf
    return float(t)


class Runner:
    """Runs ShellJobs on at most ``max_concurrent`` worker threads; see the module docstring.

    ``wake`` is called (from a worker thread) each time a result is ready; it must be quick
    and thread-safe (the engine writes a byte to its self-pipe).
    """

    def __init__(
        self,
        max_concurrent: int,
        queue_length: int,
        output_cap: int,
        wake: Callable[[], None],
        *,
        kill_after: float = 2.0,
        linger: float = 0.5,
        shell: str = "/bin/sh",
        idle_timeout: float = 60.0,
        on_start: Optional[Callable[[Any], None]] = None,
    ) -> None:
        # called with a job's tag just before its process is started (in whichever thread
        # starts it): the engine records that the action began (at most once after a crash)
        self.on_start = on_start
        self.max_concurrent = max(1, int(max_concurrent))
        self.queue_length = max(0, int(queue_length))
        self.output_cap = max(0, int(output_cap))
        self._wake = wake
        self.kill_after = kill_after
        self.linger = linger
        self.shell = shell
        self._lock = threading.Lock()
        self._queue: Deque[Tuple[ShellJob, float]] = deque()
        self._results: List[Tuple[Any, ActionResult]] = []
        self._runs: Set[_Run] = set()
        self._handoff: queue.SimpleQueue[Optional[_Run]] = queue.SimpleQueue()
        self._done = threading.Condition(self._lock)  # notified when a run or slot ends
        self._workers = 0  # worker threads alive
        self._idle = 0  # of which waiting for work, not yet promised any
        self.idle_timeout = idle_timeout
        self._slots = 0  # slots in use (a starting or running job each)
        self._closed = False

    # -- public API ------------------------------------------------------------------------

    def submit(self, job: ShellJob) -> bool:
        """Start ``job`` now if a slot is free, else queue it. False = queue full (or the
        runner is shut down): the job was not taken. Never raises for a bad job: a job that
        cannot start gives an ``ok=False`` result like any other."""
        now = time.monotonic()
        with self._lock:
            if self._closed:
                return False
            if self._slots >= self.max_concurrent:
                if len(self._queue) >= self.queue_length:
                    return False
                self._queue.append((job, now))
                return True
            self._slots += 1
        try:
            self._launch(job)
        except Exception as exc:  # noqa: BLE001 - the engine must never see one
            # a bug: report it as the job's result rather than raise into the engine
            _log.error("runner: internal error starting a job", error=repr(exc))
            self._post(job.tag, ActionResult(job.action, False, error=f"runner error: {exc!r}"))
        return True

    def run_sync(self, job: ShellJob) -> ActionResult:
        """Run ``job`` in the calling thread and return its result (CLI ``trigger``, tests).
        Does not use a slot; ``shutdown`` still kills it."""
        with self._lock:
            if self._closed:
                return ActionResult(job.action, False, error=NOT_STARTED_STOPPING)
        run, failure = self._start(job, 0.0)
        if run is None:
            assert failure is not None
            return failure
        return self._supervise(run)

    def results(self) -> List[Tuple[Any, ActionResult]]:
        """Finished jobs since the last call, as (tag, result), in the order they finished."""
        with self._lock:
            out, self._results = self._results, []
        return out

    def running(self) -> int:
        """Processes started and not yet finished."""
        with self._lock:
            return len(self._runs)

    def queued(self) -> int:
        """Jobs waiting for a slot."""
        with self._lock:
            return len(self._queue)

    def shutdown(self, grace: float) -> List[Tuple[Any, ActionResult]]:
        """Stop: refuse new jobs; queued jobs end as 'not started'; running ones get ``grace``
        seconds, then their groups get SIGTERM and, ``kill_after`` later, SIGKILL. Returns
        every result not collected by ``results()`` yet. Safe to call twice."""
        with self._lock:
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._handoff.put(None)  # idle workers exit
        for job, _ in dropped:
            self._post(job.tag, ActionResult(job.action, False, error=NOT_STARTED_STOPPING),
                       wake=False)
        self._join(time.monotonic() + max(0.0, grace))
        for sig, wait in ((signal.SIGTERM, self.kill_after), (signal.SIGKILL, 3.0)):
            with self._lock:
                runs = list(self._runs)
            if not runs:
                break
            for run in runs:
                if run.stop is None:
                    run.stop = KILLED_STOPPING
                run.signal_group(sig)
            self._join(time.monotonic() + wait)
        with self._lock:
            left = len(self._runs)
        if left:
            _log.error("runner: action processes still running after SIGKILL", count=left)
        return self.results()

    # -- slots and threads -------------------------------------------------------------------

    def _launch(self, job: ShellJob) -> None:
        """In the caller's thread, start ``job`` in a slot already counted and hand it to a
        worker. A job that cannot start frees the slot for the next queued one."""
        queued_s = 0.0
        while True:
            run, failure = self._start(job, queued_s)
            if run is not None:
                failure = self._dispatch(run)
                if failure is None:
                    return
            assert failure is not None
            self._post(job.tag, failure)
            nxt = self._next_job()
            if nxt is None:
                return
            job, queued_s = nxt

    def _dispatch(self, run: _Run) -> Optional[ActionResult]:
        """Give a started process to an idle worker, or to a new one. Handing over to an idle
        worker is a queue put (~20 us); ``Thread.start()`` waits for the new thread, which
        then holds the GIL while it runs, so creating one costs the caller ~1 ms: workers are
        kept (``idle_timeout``) for the next job."""
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                self._handoff.put(run)
                return None
            self._workers += 1
        t = threading.Thread(target=self._worker_main, args=(run,),
                             name="sidecar-action", daemon=True)
        try:
            t.start()
        except RuntimeError as exc:  # cannot create a thread: do not leave the process behind
            with self._lock:
                self._workers -= 1
            run.signal_group(signal.SIGKILL)
            self._supervise(run)
            return ActionResult(run.job.action, False, error=f"runner error: {exc}")
        return None

    def _next_job(self) -> Optional[Tuple[ShellJob, float]]:
        """The slot just became free: take the next queued job for it, or release it."""
        with self._lock:
            if self._queue and not self._closed:
                job, t = self._queue.popleft()
                return job, time.monotonic() - t
            self._slots -= 1
            self._done.notify_all()
            return None

    def _worker_main(self, first: _Run) -> None:
        run: Optional[_Run] = first
        try:
            while run is not None:
                self._slot_loop(run)
                run = self._wait_for_work()
        finally:
            with self._lock:
                self._workers -= 1

    def _wait_for_work(self) -> Optional[_Run]:
        """Idle: wait for a handed-over process; None = exit (idle too long, or shutdown)."""
        with self._lock:
            if self._closed:
                return None
            self._idle += 1
        while True:
            try:
                return self._handoff.get(timeout=self.idle_timeout)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # nothing promised to the idle workers: leave
                        self._idle -= 1
                        return None
                # a process was promised (and is being put): wait for it

    def _slot_loop(self, run: _Run) -> None:
        """Supervise ``run``, then the queued jobs this slot takes over, until none is left."""
        while True:
            try:
                result = self._supervise(run)
            except Exception as exc:  # noqa: BLE001 - a worker must never die silently
                _log.error("runner: internal error supervising a job", error=repr(exc))
                result = ActionResult(run.job.action, False, error=f"runner error: {exc!r}")
            self._post(run.job.tag, result)
            while True:
                nxt = self._next_job()
                if nxt is None:
                    return
                job, queued_s = nxt
                new, failure = self._start(job, queued_s)
                if new is not None:
                    run = new
                    break
                assert failure is not None
                self._post(job.tag, failure)

    def _join(self, deadline: float) -> None:
        """Wait until no process is running (or the deadline)."""
        with self._lock:
            while self._runs or self._slots:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._done.wait(left)

    def _post(self, tag: Any, result: ActionResult, *, wake: bool = True) -> None:
        with self._lock:
            self._results.append((tag, result))
        if wake:
            try:
                self._wake()
            except Exception as exc:  # noqa: BLE001
                _log.warning("runner: wake callback failed", error=repr(exc))

    def _forget(self, run: _Run) -> None:
        with self._lock:
            self._runs.discard(run)
            self._done.notify_all()

    # -- one process -------------------------------------------------------------------------

    def _start(
        self, job: ShellJob, queued_s: float
    ) -> Tuple[Optional[_Run], Optional[ActionResult]]:
        if self.on_start is not None:
            try:
                self.on_start(job.tag)
            except Exception as exc:  # noqa: BLE001 - never let bookkeeping stop a job
                _log.warning("runner: on_start failed", error=repr(exc))
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                [self.shell, "-c", job.command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if job.stderr else subprocess.DEVNULL,
                env=dict(job.env),
                cwd=job.cwd,
                close_fds=True,
                start_new_session=True,
            )
        except Exception as exc:  # noqa: BLE001 - OSError, ValueError (NUL in env) ...
            detail: Dict[str, Any] = {"queued_s": round(queued_s, 6)} if queued_s else {}
            return None, ActionResult(
                job.action, False, duration_s=time.monotonic() - started,
                error=f"cannot start: {exc}", detail=detail,
            )
        run = _Run(job, proc, started, queued_s)
        with self._lock:
            self._runs.add(run)
        return run, None

    def _supervise(self, run: _Run) -> ActionResult:
        """Read the output, enforce the timeout, reap. Runs in a worker (or run_sync)."""
        try:
            return self._supervise_inner(run)
        except BaseException:
            run.signal_group(signal.SIGKILL)
            raise
        finally:
            with run.lock:
                if not run.reaped:
                    try:
                        run.proc.wait(timeout=5.0)
                    except subprocess.TimeoutExpired:  # unkillable (D state): leave to GC
                        _log.error("runner: action process does not die", pid=run.pid)
                    except Exception:  # noqa: BLE001
                        pass
                    run.reaped = True
            for f in (run.proc.stdout,):
                try:
                    if f is not None:
                        f.close()
                except OSError:
                    pass
            if run.pidfd is not None:
                try:
                    os.close(run.pidfd)
                except OSError:
                    pass
                run.pidfd = None
            self._forget(run)

    def _supervise_inner(self, run: _Run) -> ActionResult:
        job = run.job
        proc = run.proc
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        out = _Output(self.output_cap if job.output_cap is None else job.output_cap)
        buf = bytearray(_READ_SIZE)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        pidfd = run.pidfd
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)

        eof = False
        exited = False
        timed_out = False
        leftovers = False
        phase = _RUN
        exit_seen = math.inf
        # the end of the current phase: RUN -> SIGTERM at the timeout; LINGER -> SIGTERM to
        # the leftovers; TERM -> SIGKILL; KILL -> give up waiting
        phase_end = run.started + _timeout_of(job)

        while True:
            now = time.monotonic()
            if not exited and pidfd is None and _exited(run.pid):
                exited, exit_seen = True, now
            if exited and eof:
                break
            if phase == _RUN and exited:
                phase, phase_end = _LINGER, exit_seen + self.linger
            if now >= phase_end:
                if phase == _KILL:
                    break
                if phase == _TERM:
                    run.signal_group(signal.SIGKILL)
                    phase, phase_end = _KILL, now + _GIVE_UP_AFTER_KILL
                else:
                    if phase == _RUN:
                        timed_out = True
                    else:
                        leftovers = True
                    run.signal_group(signal.SIGTERM)
                    phase, phase_end = _TERM, now + self.kill_after
            wait_until = phase_end
            if pidfd is None and not exited:
                wait_until = min(wait_until, now + (_EXIT_CHECK_EOF if eof else _EXIT_CHECK))
            timeout_ms: Optional[int] = None
            if wait_until != math.inf:
                timeout_ms = max(0, int(math.ceil((wait_until - now) * 1000)))
            for efd, _ev in poller.poll(timeout_ms):
                if efd == fd:
                    n = os.readv(fd, [buf])
                    if n == 0:
                        eof = True
                        poller.unregister(fd)
                    else:
                        out.add(memoryview(buf)[:n])
                elif efd == pidfd and not exited:
                    exited, exit_seen = True, time.monotonic()
                    poller.unregister(pidfd)

        ended = time.monotonic()
        if not eof:
            # something outside our reach (setsid) still holds the pipe: stop reading
            _log.warning("runner: action output still open after the group was killed; "
                         "a process left the group (setsid?)", pid=run.pid)
        code: Optional[int] = None
        with run.lock:
            if exited:
                try:
                    code = proc.wait(timeout=5.0)
                except subprocess.TimeoutExpired:
                    code = None
                run.reaped = True
        detail: Dict[str, Any] = {}
        if out.dropped:
            detail["output_truncated_bytes"] = out.dropped
        if run.queued_s:
            detail["queued_s"] = round(run.queued_s, 6)
        if leftovers:
            detail["killed_leftovers"] = True
        error: Optional[str] = None
        if timed_out:
            error = f"timed out after {job.timeout:g} s"
        elif run.stop is not None:
            error = run.stop
        elif code is None:
            error = "action process could not be killed"
        elif code < 0:
            error = f"killed by signal {-code}"
        ok = code == 0 and not timed_out and run.stop is None
        return ActionResult(
            action=job.action,
            ok=ok,
            exit_code=code,
            duration_s=ended - run.started,
            output=out.text(),
            error=error,
            timed_out=timed_out,
            detail=detail,
        )
