"""The engine: the one module that knows every stage.

One thread, one loop: ``poll()`` on the backend's inotify fd, a wake pipe (signals and
finished actions) and, when following a process, its pidfd. The timeout is the next real
deadline (a stale timer, a timer-mode repeat, the end of a rate window, the poll period when
polling); with nothing due, the loop sleeps until the kernel has something to say.

backend -> FileEvent -> Tailer -> Chunk -> MultiMatcher -> LineMatch -> WatcherRuntime ->
Firing -> actions.prepare -> Runner -> ActionResult -> EventLog
"""

from __future__ import annotations

import os
import re
import select
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from sidecar import actions as act
from sidecar import state as stmod
from sidecar.log import get_logger
from sidecar.model import (
    JOB_TRIGGERS,
    Config,
    FileEventTrigger,
    JobEndTrigger,
    MemoryTrigger,
    RegexTrigger,
    StaleTrigger,
    TimeLimitTrigger,
    Watcher,
)
from sidecar.triggers import (
    Firing,
    LevelWatch,
    StaleTracker,
    StateChange,
    WatcherRuntime,
    match_variables,
    next_deadline,
)
from sidecar.types import (
    ActionResult,
    Chunk,
    FileEvent,
    FileEventKind,
    LineMatch,
    Record,
    WatcherState,
    utc_now_iso,
)

DEFAULT_EVENT_LOG = "sidecar-events.jsonl"
_PROBE_OUTPUT_CAP = 1 << 20  # bytes of a probe's output matched
_WRITE_KINDS = (FileEventKind.CREATE, FileEventKind.MODIFY)


@dataclass
class _SourceRule:
    watcher: Watcher
    directory: str  # absolute
    regex: Optional[re.Pattern[str]]
    names: frozenset  # type: ignore[type-arg]
    recursive: bool

    def matches(self, path: str) -> bool:
        d = self.directory
        if not path.startswith(d.rstrip(os.sep) + os.sep):
            return False
        rel = path[len(d.rstrip(os.sep)) + 1 :]
        if not self.recursive and os.sep in rel:
            return False
        if self.names:
            return rel in self.names
        if self.regex is None:
            return True
        return self.regex.search(rel) is not None


@dataclass
class _FileState:
    path: str
    regex_watchers: Tuple[str, ...] = ()
    stale_watchers: Tuple[str, ...] = ()
    event_watchers: Tuple[str, ...] = ()
    tailer: Any = None
    matcher: Any = None
    directory: str = ""
    saved: Optional[stmod.FileResume] = None  # what the state file says for this file
    saved_pos_id: Optional[Tuple[int, int]] = None  # the file the tailer is on now
    suppress: Tuple[int, int] = (0, 0)  # after a resume: these line numbers fired already


@dataclass
class _Chain:
    """The actions of one firing, run one after the other."""

    firing: Firing
    specs: List[Any]
    index: int = 0
    pending_effect: Optional[Tuple[str, str]] = None  # of the action now running


class Engine:
    def __init__(
        self,
        config: Config,
        *,
        cwd: Optional[str] = None,
        environ: Optional[Mapping[str, str]] = None,
        event_log: Any = None,
        backend: Any = None,
        follow_pid: Optional[int] = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        install_signals: bool = True,
    ) -> None:
        self.config = config
        self.settings = config.settings
        self.cwd = os.path.abspath(cwd or os.getcwd())
        self.environ: Mapping[str, str] = dict(os.environ if environ is None else environ)
        self.clock = clock
        self.wall = wall
        self.log = get_logger("sidecar.engine")
        self.ctx = act.JobContext.from_environ(self.environ, self.cwd, config.script)
        self._event_log_arg = event_log
        self._backend_arg = backend
        self.follow_pid = follow_pid
        self.install_signals = install_signals

        self.runtimes: Dict[str, WatcherRuntime] = {}
        self.rules: List[_SourceRule] = []
        self.files: Dict[str, _FileState] = {}
        self.stale: Dict[Tuple[str, str], StaleTracker] = {}
        self.chains: Dict[int, _Chain] = {}
        self._seq = 0
        self._pending_reads: Set[str] = set()
        self._stop_reason: Optional[str] = None
        self._signals: List[int] = []
        self._wake_r = -1
        self._wake_w = -1
        self._pidfd: Optional[int] = None
        self._pid_poll_at: Optional[float] = None
        self._followed_status: Optional[Callable[[], Optional[int]]] = None
        self._poller: Any = None
        self.started = False
        self.ready = False
        self.counts: Dict[str, int] = {"bytes": 0, "matches": 0, "firings": 0}
        self._matchers: Dict[Tuple[str, ...], Any] = {}
        self._on_ready: List[Callable[[], None]] = []
        self.reloader: Optional[Callable[[], Config]] = None  # set by the CLI: how to reload
        self.watch_config: Tuple[str, ...] = ()  # files whose change means reload
        self.dropin_dir: Optional[str] = None
        self.state_path: Optional[str] = None
        self._journal: Optional[stmod.Journal] = None
        self.control_dir: Optional[str] = None
        self._resume: Dict[str, stmod.FileResume] = {}
        self._state_dirty_at: Optional[float] = None
        self._last_save = 0.0
        self._started_iso = ""
        self._last_event: Dict[str, str] = {}
        self._excluded: Set[str] = set()
        self._excluded_dirs: Tuple[str, ...] = ()
        self._dropin_default = False
        self._read_to: Dict[Tuple[int, int], Tuple[int, int, bytes]] = {}  # dev, ino -> end
        # bytes read from one file before others get their turn; two chunks keep the memory
        # of a big backlog small (a 1 GB file is read 512 KiB at a time, in a loop of reads)
        self._read_budget = 2 * max(1, self.settings.chunk_size)
        self._prom: Any = None
        self._prom_dirty = False
        self._config_paths: Set[str] = set()
        self._dropin_abs = ""
        self._reload_pending = False
        # issue 6: triggers that understand the job
        self.restart_count = _int(self.environ.get("SLURM_RESTART_COUNT"))
        self.resubmits = 0  # resubmissions done by this job (all its runs)
        self._job_tree: Any = None  # jobinfo.ProcessTree of the followed process
        self._job_tree_root: Optional[int] = None
        self._job_end_fired = False
        self._grace: Dict[str, float] = {}  # stale watcher -> when a missing file is stale
        self._grace_mark: Dict[str, Any] = {}  # stale watcher -> CPU sample at start
        self._mem: Dict[str, LevelWatch] = {}
        self._tl_due: Dict[str, float] = {}  # time_limit watcher -> monotonic deadline
        self._tl_fired: Set[str] = set()
        self._tl_query_at: Optional[float] = None
        self._tl_end: Optional[float] = None  # epoch seconds of the job's end
        self._tl_thread: Any = None  # asking SLURM for it
        self._tl_answer: Optional[Tuple[Optional[float], str]] = None
        self._tl_asked = False
        self._tl_signals: Dict[int, List[str]] = {}
        self._probe_next: Dict[str, float] = {}
        self._probe_running: Set[str] = set()
        self._probe_failing: Dict[str, bool] = {}
        self.throttles: Dict[str, Any] = {}  # watcher -> throttle.ThrottleState
        self.gatherers: Dict[Tuple[str, str], Any] = {}  # (watcher, file) -> RecordGatherer
        self._armed: Set[str] = set()  # watchers whose job triggers were set up once
        self._end_search_budget: Any = None  # _end_budget()
        # firings whose actions must survive a crash (see _persist_firing)
        self._run_id = f"{os.getpid()}.{int(time.time() * 1000)}"
        self._payloads: Dict[int, Dict[str, Any]] = {}  # firing seq -> its fields
        self._started: Dict[int, int] = {}  # firing seq -> index of the last action started
        self._resume_pending: Dict[str, Any] = {}
        self._build_runtimes()

    # ------------------------------------------------------------------ set-up
    def _build_runtimes(self, previous: Optional[Dict[str, WatcherRuntime]] = None) -> None:
        from sidecar.conditions import compile_condition

        self.runtimes = {}
        self.rules = []
        self._matchers = {}
        old_throttles, self.throttles = self.throttles, {}
        self._multiline: Dict[str, Any] = {}
        for w in self.config.watchers:
            old = (previous or {}).get(w.name)
            if old is not None and old.watcher == w:
                self.runtimes[w.name] = old
                if w.name in old_throttles:
                    self.throttles[w.name] = old_throttles[w.name]
            else:
                cond = None
                t = w.trigger
                if isinstance(t, (RegexTrigger, JobEndTrigger)) and t.condition:
                    cond = compile_condition(t.condition)
                self.runtimes[w.name] = WatcherRuntime(w, cond)
            if w.throttle is not None and w.name not in self.throttles:
                from sidecar.throttle import ThrottleState

                # held-back counts ride on the key's next firing (SUPPRESSED), as swatch does
                self.throttles[w.name] = ThrottleState(w.throttle, report_at_period_end=False)
            if isinstance(w.trigger, RegexTrigger) and w.trigger.multiline is not None:
                self._multiline[w.name] = w.trigger.multiline
            src = w.source
            if src.is_probe or w.trigger.kind in JOB_TRIGGERS:
                continue  # no files
            d = src.directory
            d = os.path.normpath(d if os.path.isabs(d) else os.path.join(self.cwd, d))
            if src.paths:
                # exact files, possibly in several directories (stdout and stderr apart)
                by_dir: Dict[str, Set[str]] = {}
                for p in src.paths:
                    ap = os.path.normpath(p if os.path.isabs(p) else os.path.join(d, p))
                    by_dir.setdefault(os.path.dirname(ap), set()).add(os.path.basename(ap))
                for pd, names in by_dir.items():
                    self.rules.append(_SourceRule(w, pd, None, frozenset(names), False))
                continue
            regex = re.compile(src.filepath_regex) if src.filepath_regex is not None else None
            self.rules.append(_SourceRule(w, d, regex, frozenset(), src.recursive))

    def _record(self, kind: str, **fields: Any) -> None:
        rec = Record(
            kind=kind, job_id=self.ctx.job_id, host=self.ctx.host, pid=os.getpid(), **fields
        )
        self.eventlog.write(rec)
        if kind == "metric" and self.settings.prometheus_textfile:
            if self._prom is None:
                from sidecar.cockpit import PrometheusExport

                self._prom = PrometheusExport()
            self._prom.add(rec.to_dict())
            self._prom_dirty = True
            self._mark_dirty()

    def _open(self) -> None:
        from sidecar.backends import make_backend
        from sidecar.eventlog import open_event_log
        from sidecar.runner import Runner

        ev = self._event_log_arg
        if ev is None or isinstance(ev, str):
            path = ev or self.settings.event_log or DEFAULT_EVENT_LOG
            path = path if os.path.isabs(path) else os.path.join(self.cwd, path)
            self.event_log_path: Optional[str] = path
            self.eventlog = open_event_log(path)
        else:
            self.event_log_path = getattr(ev, "path", None)
            self.eventlog = ev
        self._setup_state()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.runner = Runner(
            max_concurrent=self.settings.max_concurrent,
            queue_length=self.settings.queue_length,
            output_cap=self.settings.output_cap,
            wake=self._wake,
            on_start=self._action_starting,
        )
        if self._backend_arg is not None:
            self.backend = self._backend_arg
        else:
            self.backend = make_backend(self.settings.backend, self._poll_interval(), self.log)
        self.install_handlers()
        if self.follow_pid:
            self.follow(self.follow_pid)

    def install_handlers(self) -> None:
        """SIGTERM / SIGINT stop the sidecar cleanly, SIGHUP reloads; the loop is woken
        through the wake pipe."""
        if not self.install_signals:
            return
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, *self._tl_signals):
            signal.signal(s, self._on_signal)

    def follow(self, pid: int, exit_status: Optional[Callable[[], Optional[int]]] = None) -> None:
        """Stop when process ``pid`` ends (learned from a pidfd, without polling).
        ``exit_status``: how to get its exit status (for a child), for the stop record."""
        self.follow_pid = pid
        self._followed_status = exit_status
        if self._pidfd is not None:
            try:
                os.close(self._pidfd)
            except OSError:
                pass
            self._pidfd = None
        try:
            self._pidfd = os.pidfd_open(pid)
            if self._poller is not None:
                self._poller.register(self._pidfd, select.POLLIN)
        except ProcessLookupError:
            self.request_stop(f"followed process {pid} exited")
        except (AttributeError, OSError):
            # no pidfd (old kernel or Python < 3.9): check every 2 s
            self._pidfd = None
            self._pid_poll_at = self.clock() + 2.0
            if not stmod.pid_alive(pid):
                self.request_stop(f"followed process {pid} exited")

    # ------------------------------------------------------------------ state file
    def _config_id(self) -> str:
        src = self.config.source_file or self.config.script or ""
        return os.path.abspath(src) if src else "|".join(sorted(self.runtimes))

    def _setup_state(self) -> None:
        """Find the state file; take positions and counters from a predecessor that is gone."""
        path = self.settings.state_file or stmod.default_state_path(
            self.event_log_path, self.cwd, self.ctx.job_id, self._config_id(), self.restart_count
        )
        if not os.path.isabs(path):
            path = os.path.join(self.cwd, path)
        self._set_state_path(path)
        prev = stmod.read_state(path)
        requeued_from: Optional[str] = None
        if prev is None and self.restart_count > 0 and not self.settings.state_file:
            # a requeued job (scontrol requeue, preemption): same job id, the next run, maybe
            # on another node. Its previous run's positions, counters and limits carry over.
            found = stmod.find_previous_run(
                os.path.dirname(path), self.ctx.job_id, self._config_id(), self.restart_count
            )
            if found is not None:
                requeued_from, prev = found
        elif (
            prev is not None
            and self.settings.state_file
            and self.restart_count > 0
            and _int(prev.get("restart_count")) < self.restart_count
        ):
            requeued_from = path
        if prev is None:
            return
        if requeued_from is None and self._journal is not None:
            self._journal.seq = _int(prev.get("journal_seq"))  # go on numbering
        self.resubmits = _int(prev.get("resubmits"))
        pending = prev.get("pending")
        pid = int(prev.get("pid") or 0)
        if (
            pid
            and pid != os.getpid()
            and stmod.pid_alive(pid)
            and prev.get("host") == self.ctx.host
        ):
            self.log.warning(
                "another sidecar keeps this state file; not resuming", pid=pid, state=path
            )
            self._set_state_path(_stem(path) + f"-{os.getpid()}.json", keep_dropin=True)
            return
        self._resume = stmod.resume_positions(prev)
        if isinstance(pending, dict):
            self._resume_pending = pending
        for name, w in (prev.get("watchers") or {}).items():
            rt = self.runtimes.get(name)
            if rt is None or not isinstance(w, dict):
                continue
            rt.trigger_count = int(w.get("triggers", 0) or 0)
            rt.matches = int(w.get("matches", 0) or 0)
            st = w.get("state")
            if st in (
                WatcherState.PAUSED.value,
                WatcherState.TRIGGERED.value,
                WatcherState.DISABLED.value,
            ):
                rt.state = WatcherState(st)
        self._resumed_from = {
            "pid": pid,
            "updated": prev.get("updated"),
            "files": len(self._resume),
        }
        if requeued_from is not None:
            self._resumed_from["requeued_from"] = requeued_from
            self._resumed_from["previous_restart_count"] = _int(prev.get("restart_count"))
            self._resumed_from["restart_count"] = self.restart_count

    def _set_state_path(self, path: str, keep_dropin: bool = False) -> None:
        self.state_path = path
        if self._journal is not None:
            self._journal.close()
        self._journal = stmod.Journal(stmod.journal_path(path))
        self.control_dir = stmod.control_dir(path)
        if self.dropin_dir is None or not keep_dropin and self._dropin_default:
            self.dropin_dir = _stem(path) + ".d"
            self._dropin_default = True
        self._excluded = {p for p in (self.event_log_path, path) if p}
        own = [self.control_dir, self.dropin_dir]
        if os.path.basename(os.path.dirname(path)) == stmod.STATE_DIR:
            own.append(os.path.dirname(path))
        self._excluded_dirs = tuple(d.rstrip(os.sep) + os.sep for d in own if d)

    def _is_excluded(self, path: str) -> bool:
        """The sidecar's own files: the event log, the state file (and its temporary
        files), the control and drop-in directories, and the default ``.sidecar`` dir."""
        if path in self._excluded:
            return True
        if self.state_path and path.startswith(self.state_path + "."):
            return True
        return path.startswith(self._excluded_dirs) if self._excluded_dirs else False

    def _mark_dirty(self) -> None:
        if self._state_dirty_at is None:
            self._state_dirty_at = self.clock()

    def save_state(self) -> None:
        """Write the state file now (atomically). Problems are logged, never raised."""
        if not self.state_path:
            return
        if self._journal is None:
            self._save_state()
            return
        with self._journal.lock:  # no action-start mark between the snapshot and the clear
            self._save_state()

    def _pending_firings(self) -> Dict[str, Any]:
        """Firings whose actions have not all started, with the first one not started."""
        out: Dict[str, Any] = {}
        for seq, chain in self.chains.items():
            payload = self._payloads.get(seq)
            if payload is None:
                continue
            started = self._started.get(seq)
            nxt = chain.index if started is None else max(chain.index, started + 1)
            if nxt < len(chain.specs):
                out[f"{self._run_id}:{seq}"] = {"firing": payload, "next": nxt}
        return out

    def _save_state(self) -> None:
        if not self.state_path:
            return
        from sidecar.types import utc_now_iso

        files: Dict[str, Any] = {}
        for path, st in self.files.items():
            if st.saved is not None:
                f = st.saved
                files[path] = {
                    "dev": f.dev,
                    "inode": f.inode,
                    "offset": f.offset,
                    "lineno": f.lineno,
                    "fired_through": f.fired_through,
                    "head": _head_hex(st, f),
                }
        data = {
            "version": stmod.VERSION,
            "pid": os.getpid(),
            "host": self.ctx.host,
            "job_id": self.ctx.job_id,
            "restart_count": self.restart_count,
            "resubmits": self.resubmits,
            "journal_seq": self._journal.seq if self._journal is not None else 0,
            "started": self._started_iso,
            "updated": utc_now_iso(),
            "running": self._stop_reason is None,
            "stop_reason": self._stop_reason,
            "config": self.config.source_file or self.config.script,
            "cwd": self.cwd,
            "event_log": self.event_log_path,
            "control": self.control_dir,
            "dropin": self.dropin_dir,
            "backend": getattr(getattr(self, "backend", None), "name", None),
            "counts": dict(self.counts),
            "watchers": {
                n: {
                    "state": rt.state.value,
                    "trigger": rt.watcher.trigger.kind,
                    "triggers": rt.trigger_count,
                    "matches": rt.matches,
                    "ignored": rt.ignored,
                    "last_event": self._last_event.get(n),
                }
                for n, rt in self.runtimes.items()
            },
            "files": files,
            "pending": self._pending_firings(),
        }
        try:
            stmod.write_atomic(self.state_path, data)
            if self._journal is not None:
                self._journal.clear()
        except OSError as exc:
            self.log.warning("cannot write the state file", state=self.state_path, error=str(exc))
        if self._prom_dirty and self.settings.prometheus_textfile:
            from sidecar.cockpit import write_prometheus_textfile

            path = self.settings.prometheus_textfile
            if not os.path.isabs(path):
                path = os.path.join(self.cwd, path)
            try:
                write_prometheus_textfile(path, self._prom)
                self._prom_dirty = False
            except OSError as exc:
                self.log.warning("cannot write the Prometheus textfile", path=path, error=str(exc))
        self._state_dirty_at = None
        self._last_save = self.clock()

    def _poll_interval(self) -> float:
        iv = [w.interval for w in self.config.watchers if w.interval]
        p = self.settings.poll_interval
        return min([p] + [float(x) for x in iv]) if iv and self.settings.backend == "poll" else p

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def deliver_signal(self, signum: int) -> None:
        """A signal noted before the engine's handlers were in (the CLI's early handler):
        acted on if a time_limit watcher listens for it, else ignored."""
        if signum in self._tl_signals:
            self._signals.append(signum)
            self._wake()
        else:
            self.log.info("signal ignored: no watcher listens for it", signal=signum)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass

    def _watch_dirs(self) -> None:
        seen: Dict[str, bool] = {}
        for r in self.rules:
            seen[r.directory] = seen.get(r.directory, False) or r.recursive
        for d, rec in seen.items():
            if not os.path.isdir(d):
                self._record("warning", message=f"directory {d} does not exist (yet): not watched")
                self.log.warning("directory missing", directory=d)
                continue
            self.backend.watch_dir(d, rec)

    def _initial_scan(self) -> None:
        for path in self._list_files():
            self._discover(path, existing=True)

    def _list_files(self) -> Iterable[str]:
        done: Set[str] = set()
        for r in self.rules:
            if r.names:
                for n in r.names:
                    p = os.path.join(r.directory, n)
                    if p not in done and os.path.isfile(p):
                        done.add(p)
                        yield p
                continue
            key = r.directory + ("/**" if r.recursive else "")
            if key in done:
                continue
            done.add(key)
            stack = [r.directory]
            while stack:
                d = stack.pop()
                try:
                    with os.scandir(d) as it:
                        for e in it:
                            try:
                                if e.is_dir(follow_symlinks=False):
                                    if r.recursive:
                                        stack.append(e.path)
                                elif e.path not in done:
                                    done.add(e.path)
                                    yield e.path
                            except OSError:
                                continue
                except OSError:
                    continue

    def _discover(
        self, path: str, existing: bool, keep: Optional[_FileState] = None
    ) -> Optional[_FileState]:
        """Create the state for a file a watcher cares about (idempotent). ``keep``: the
        state the file had before a reload (its tailer goes on where it was)."""
        st = self.files.get(path)
        if st is not None:
            return st
        if self._is_excluded(path):
            return None
        regex_w: List[str] = []
        stale_w: List[str] = []
        event_w: List[str] = []
        directory = ""
        for r in self.rules:
            if not r.matches(path):
                continue
            directory = directory or r.watcher.source.directory
            t = r.watcher.trigger
            if isinstance(t, RegexTrigger):
                regex_w.append(r.watcher.name)
            elif isinstance(t, StaleTrigger):
                stale_w.append(r.watcher.name)
            elif isinstance(t, FileEventTrigger):
                event_w.append(r.watcher.name)
        if not (regex_w or stale_w or event_w):
            return None
        st = _FileState(path, tuple(regex_w), tuple(stale_w), tuple(event_w), directory=directory)
        if keep is not None and keep.tailer is not None:
            if regex_w:
                st.tailer, st.saved = keep.tailer, keep.saved
                st.matcher = self._matcher_for(tuple(regex_w))
                regex_w = []  # the tailer is taken over, not created
            else:
                keep.tailer.close()
        if regex_w:
            from sidecar.tailer import Tailer

            start_at = "start"
            if existing:
                starts = {self.runtimes[n].watcher.source.start_at for n in regex_w}
                start_at = "start" if "start" in starts else "end"
            from sidecar.tailer import TailPosition

            res = self._resume.pop(path, None)
            position = None
            rotated: Optional[str] = None
            if res is not None:
                res = _same_file_elsewhere(path, res)
                rotated = _rotated_away(path, res)
                try:
                    head = bytes.fromhex(res.head)
                except ValueError:
                    head = b""
                position = TailPosition(res.dev, res.inode, res.offset, res.lineno, head)
                st.suppress = (res.lineno, res.fired_through)
            elif not existing:
                position = self._renamed_position(path)
            st.tailer = Tailer(
                path,
                start_at=start_at,
                chunk_size=self.settings.chunk_size,
                max_line=self.settings.max_line,
                position=position,
            )
            if position is not None and st.tailer.position() != position:
                st.suppress = (0, 0)  # the file is not the one saved: read it whole
            pos = st.tailer.position()
            if pos.dev or pos.inode:
                # known from the start, so a state saved before anything new is read still
                # has this file's position (and the lines that fired already)
                st.saved = stmod.FileResume(
                    pos.dev, pos.inode, pos.offset, pos.lineno, st.suppress[1]
                )
            st.matcher = self._matcher_for(tuple(regex_w))
            if rotated is not None and position is not None and res is not None:
                self._drain_rotated(st, rotated, position, res)
        now = self.clock()
        for n in stale_w:
            self.stale.pop((n, ""), None)  # its file is here: no grace check any more
            if (n, path) in self.stale:
                continue
            # the clock starts at the later of the last write and the sidecar's start: a
            # directory of old files does not fire for all of them the moment it starts
            self._new_tracker(n, path, now)
        self.files[path] = st
        return st

    def _drain_rotated(self, st: _FileState, rotated: str, position: Any, res: Any) -> None:
        """The file a predecessor was reading was rotated while no sidecar ran (``job.log``
        renamed ``job.log.1``, a new ``job.log`` started): read the rest of the old file,
        from the saved position, before the new one -- as a running sidecar does."""
        from sidecar.tailer import Tailer

        old = Tailer(
            rotated,
            chunk_size=self.settings.chunk_size,
            max_line=self.settings.max_line,
            position=position,
        )
        try:
            if old.position() != position:
                return  # not the same file any more (or rewritten): nothing to continue
            keep_suppress, keep_saved = st.suppress, st.saved
            st.suppress = (res.lineno, res.fired_through)
            n = 0
            for _ in range(100_000):
                chunks = old.read(self._read_budget)
                for ch in chunks:
                    n += len(ch.data)
                    self._scan(st, ch)
                if not old.more:
                    break
            last = old.flush()  # the rotated file is finished: its last line is whole
            if last is not None:
                n += len(last.data)
                self._scan(st, last)
            st.suppress, st.saved = keep_suppress, keep_saved
            self._record(
                "warning",
                file=rotated,
                reason="rotated_while_down",
                message=f"{os.path.basename(st.path)} was rotated to "
                f"{os.path.basename(rotated)} while no "
                f"sidecar ran: read its last {n} byte(s) there, then the new file",
                extra={"bytes": n, "offset": position.offset},
            )
        except Exception as exc:
            self._record("error", file=rotated, message=f"reading a rotated file: {exc!r}")
        finally:
            old.close()

    def _renamed_position(self, path: str) -> Any:
        """A file that appears under a watched name but was already read under another
        (``job.log`` renamed to ``job.log.1`` with both names watched) goes on from where
        it was read to, instead of being read again from its start."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        seen = self._read_to.get((st.st_dev, st.st_ino))
        if seen is None:
            return None
        end, lineno, tail = seen
        if st.st_size < end or not tail:
            return None
        try:
            with open(path, "rb") as fh:
                fh.seek(end - len(tail))
                if fh.read(len(tail)) != tail:
                    return None  # another file that got the same inode number
        except OSError:
            return None
        from sidecar.tailer import TailPosition

        return TailPosition(st.st_dev, st.st_ino, end, lineno)

    def _matcher_for(self, names: Tuple[str, ...]) -> Any:
        m = self._matchers.get(names)
        if m is None:
            from sidecar.matcher import MultiMatcher

            rules = []
            for n in names:
                t = self.runtimes[n].watcher.trigger
                assert isinstance(t, RegexTrigger)
                rules.append((n, t))
            m = MultiMatcher(rules, time_limit=self.settings.regex_time_limit)
            self._matchers[names] = m
        return m

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        """Open everything, write the start record and read what is already there."""
        self._open()
        self._watch_dirs()
        self._record(
            "start",
            message=f"sidecar started with {len(self.runtimes)} watcher(s)",
            extra={
                "watchers": [w.name for w in self.config.watchers],
                "backend": getattr(self.backend, "name", "?"),
                "config": self.config.source_file or self.config.script,
                "cwd": self.cwd,
                "follow_pid": self.follow_pid,
                "restart_count": self.restart_count,
            },
        )
        from sidecar.types import utc_now_iso

        self._started_iso = utc_now_iso()
        resumed = getattr(self, "_resumed_from", None)
        if resumed:
            self._record(
                "warning",
                reason="resumed",
                message="resuming where a previous sidecar "
                f"stopped ({resumed['files']} file position(s))",
                extra=resumed,
            )
        self.started = True
        if self.resubmits:
            import dataclasses

            self.ctx = dataclasses.replace(self.ctx, resubmits_done=self.resubmits)
        self._setup_job_triggers()
        self._resume_firings()
        self._initial_scan()
        for path in list(self.files):
            self._read(path)
        self._watch_control()
        if self.reloader is not None and self.dropin_dir and _has_toml(self.dropin_dir):
            self.reload("drop-in watchers found at start")
        self.save_state()
        self.ready = True
        for cb in self._on_ready:
            cb()

    def run(self) -> int:
        """Run until stopped (signal, followed process gone, cancel_job). Returns 0."""
        if not self.started:
            self.start()
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        bfd = self.backend.fileno()
        if bfd is not None:
            poller.register(bfd, select.POLLIN)
        if self._pidfd is not None:
            poller.register(self._pidfd, select.POLLIN)
        self._poller = poller
        poll_iv = self.backend.poll_interval()
        next_poll = self.clock() + poll_iv if poll_iv else None
        while self._stop_reason is None:
            now = self.clock()
            dl = next_deadline([self._deadline(), next_poll])
            if self._pending_reads:
                timeout_ms: Optional[int] = 0
            elif dl is None:
                timeout_ms = None
            else:
                timeout_ms = max(0, int((dl - now) * 1000 + 0.999))
            try:
                ready = poller.poll(timeout_ms)
            except InterruptedError:
                ready = []
            fds = {fd for fd, _ in ready}
            if self._wake_r in fds:
                self._drain_wake()
            while self._signals:
                sig = self._signals.pop(0)
                if sig == signal.SIGHUP:
                    self.reload("SIGHUP")
                elif sig in self._tl_signals:
                    self._time_limit_signal(sig)
                else:
                    self.request_stop(f"signal {signal.Signals(sig).name}")
            if self._pidfd is not None and self._pidfd in fds:
                self._job_ended()
                self.request_stop(f"followed process {self.follow_pid} exited")
            now = self.clock()
            if next_poll is not None and now >= next_poll:
                next_poll = now + (poll_iv or 1.0)
                self.handle_events(self.backend.read())
            elif bfd is not None and bfd in fds:
                self.handle_events(self.backend.read())
            self._continue_reads()
            self._collect_results()
            self._due(self.clock())
        self._shutdown()
        return 0

    def request_stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
            self.log.info("stopping", reason=reason)
            if self._wake_w >= 0:
                self._wake()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        except OSError:
            pass

    # ------------------------------------------------------------------ control, reload
    def start_hooks(
        self, reloader: Optional[Callable[[], Config]] = None, watch_config: Tuple[str, ...] = ()
    ) -> None:
        """How to load the config again (SIGHUP, a changed config file, ``sidecar reload``,
        drop-in watchers) and which files to watch for changes."""
        self.reloader = reloader
        self.watch_config = watch_config

    def _watch_control(self) -> None:
        """Watch the control directory (pause/resume/trigger/reload commands), the config
        files (reload when they change) and the drop-in directory (watchers added later)."""
        self._config_paths = {os.path.abspath(f) for f in self.watch_config}
        self._dropin_abs = os.path.abspath(self.dropin_dir) + os.sep if self.dropin_dir else ""
        dirs: List[str] = []
        if self.control_dir:
            try:
                os.makedirs(self.control_dir, exist_ok=True)
                dirs.append(self.control_dir)
            except OSError as exc:
                self.log.warning("no control directory", error=str(exc))
        for f in self.watch_config:
            dirs.append(os.path.dirname(os.path.abspath(f)))
        if self.dropin_dir:
            try:
                os.makedirs(self.dropin_dir, exist_ok=True)
                dirs.append(os.path.abspath(self.dropin_dir))
            except OSError as exc:
                self.log.warning("no drop-in directory", error=str(exc))
        watched = {r.directory for r in self.rules}
        for d in dict.fromkeys(dirs):
            if d in watched:
                continue
            try:
                self.backend.watch_dir(d, False)
            except Exception as exc:
                self.log.warning("cannot watch", directory=d, error=str(exc))
        for name in self._list_control():
            self._control(name)

    def _list_control(self) -> List[str]:
        if not self.control_dir:
            return []
        try:
            return sorted(
                os.path.join(self.control_dir, n)
                for n in os.listdir(self.control_dir)
                if n.endswith(".json") and not n.startswith(".")
            )
        except OSError:
            return []

    def _control(self, path: str) -> None:
        import json

        try:
            with open(path, encoding="utf-8") as fh:
                cmd = json.load(fh)
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            return  # not complete yet (commands are renamed into place) or not ours
        try:
            os.unlink(path)
        except OSError:
            pass
        if not isinstance(cmd, dict):
            return
        what = str(cmd.get("cmd", ""))
        name = cmd.get("watcher")
        self.log.info("control", cmd=what, watcher=name)
        if what == "reload":
            self.reload("control command")
            return
        rt = self.runtimes.get(str(name)) if name is not None else None
        if rt is None:
            self._record("warning", reason="control", message=f"{what}: no watcher named {name!r}")
            return
        if what == "pause":
            ch = rt.pause("sidecar pause")
        elif what == "resume":
            ch = rt.resume("sidecar resume")
            if ch is None and rt.state in (WatcherState.TRIGGERED, WatcherState.DISABLED):
                ch = rt.set_state(WatcherState.ACTIVE, "sidecar resume")
                rt.consecutive_failures = 0
        elif what == "trigger":
            if self.trigger_manually(rt.name) is None:
                self._record(
                    "skipped",
                    watcher=rt.name,
                    trigger="manual",
                    reason=rt.state.value.lower(),
                    message="manual trigger not run: watcher is " + rt.state.value,
                )
            ch = None
        else:
            self._record("warning", reason="control", message=f"unknown control command {what!r}")
            return
        if ch:
            self._state_record(ch)
        self.save_state()  # `sidecar status` shows the change at once

    def reload(self, reason: str) -> bool:
        """Load the config again; an invalid one is refused and the old one keeps running."""
        from sidecar.model import ConfigError

        if self.reloader is None:
            self._record("warning", reason="reload", message="reload not possible: no config file")
            return False
        try:
            cfg = self.reloader()
            if isinstance(cfg, Config):
                from sidecar.conditions import compile_condition

                for w in cfg.watchers:
                    if isinstance(w.trigger, RegexTrigger) and w.trigger.condition:
                        compile_condition(w.trigger.condition)
        except ConfigError as exc:
            self._record(
                "error",
                reason="reload",
                message="new config refused, the old one keeps running: "
                + "; ".join(str(p) for p in exc.problems),
            )
            return False
        except Exception as exc:
            self._record("error", reason="reload", message=f"new config refused: {exc!r}")
            return False
        self.apply_config(cfg, reason)
        return True

    def apply_config(self, cfg: Config, reason: str) -> None:
        """Swap in new watchers. Unchanged watchers keep their state and counters; files
        already followed go on from where they are (a watcher added now sees new lines of
        them); files that only the new watchers care about are read per their start_at."""
        import dataclasses

        before = set(self.runtimes)
        self.config = dataclasses.replace(cfg, settings=self.settings)
        self._build_runtimes(self.runtimes)
        after = set(self.runtimes)
        for key in [k for k in self.stale if k[0] not in after]:
            del self.stale[key]
        for gkey in [k for k in self.gatherers if k[0] not in after]:
            del self.gatherers[gkey]
        self._setup_job_triggers()
        watched: Dict[str, bool] = {}
        for r in self.rules:
            watched[r.directory] = watched.get(r.directory, False) or r.recursive
        for d, rec in watched.items():
            if os.path.isdir(d):
                try:
                    self.backend.watch_dir(d, rec)
                except Exception as exc:
                    self._record("warning", message=f"cannot watch {d}: {exc}")
        old_files, self.files = self.files, {}
        for path, st in old_files.items():
            self._discover(path, existing=True, keep=st)
        self._initial_scan()
        for path in list(self.files):
            self._read(path)
        self._record(
            "reload",
            reason=reason,
            message=f"config reloaded: {len(after)} watcher(s)",
            extra={"added": sorted(after - before), "removed": sorted(before - after)},
        )
        self._mark_dirty()

    # ------------------------------------------------------------------ events
    def handle_events(self, events: Sequence[FileEvent]) -> None:
        now = self.clock()
        self._reload_pending = False
        gone: List[Tuple[int, int]] = []
        for ev in events:
            if ev.kind == FileEventKind.OVERFLOW:
                self._record("warning", message="event queue overflow: rescanning all files")
                self.rescan()
                continue
            path = ev.path
            if self.control_dir and path.startswith(self.control_dir + os.sep):
                # commands are written to a hidden temporary file, then renamed into place
                base = os.path.basename(path)
                if ev.kind == FileEventKind.CREATE and base.endswith(".json") and base[0] != ".":
                    self._control(path)
                continue
            if ev.kind != FileEventKind.ATTRIBUTE and (
                path in self._config_paths
                or (
                    self.dropin_dir and path.startswith(self._dropin_abs) and path.endswith(".toml")
                )
            ):
                self._reload_pending = True
            st = self.files.get(path)
            if (
                st is None
                and not ev.is_dir
                and ev.kind
                in (
                    FileEventKind.CREATE,
                    FileEventKind.MODIFY,
                    FileEventKind.CLOSE,
                    FileEventKind.ATTRIBUTE,
                )
            ):
                if not os.path.lexists(path):
                    # an event that reached us after the file was deleted (and forgotten):
                    # nothing to read; file-event watchers still hear of it
                    self._file_event_only(ev)
                    continue
                st = self._discover(path, existing=False)
            if st is None:
                if ev.is_dir or ev.kind in (FileEventKind.REMOVE, FileEventKind.DELETE_DIRECTORY):
                    self._file_event_only(ev)
                continue
            if st.tailer is not None and ev.kind != FileEventKind.ATTRIBUTE:
                self._read(path)
            if ev.kind in _WRITE_KINDS:
                for n in st.stale_watchers:
                    tr = self.stale.get((n, path))
                    if tr is not None:
                        tr.wrote(now)
                    else:
                        self._new_tracker(n, path, now)
            elif ev.kind == FileEventKind.REMOVE:
                for n in st.stale_watchers:
                    self.stale.pop((n, path), None)
                if st.saved is not None:
                    # a rename shows up in the same batch as a create of the new name; after
                    # the batch, a freed inode number must not pass for a renamed file
                    gone.append((st.saved.dev, st.saved.inode))
            self._fire_file_event(st.event_watchers, ev, st.directory)
            # forget a deleted file once it is read to its end (a job that writes many
            # short-lived files must not grow the sidecar); created again, it is new
            if (
                ev.kind == FileEventKind.REMOVE
                and not os.path.exists(path)
                and (st.tailer is None or not (st.tailer.more or st.tailer.is_open))
            ):
                self.files.pop(path, None)
                self._pending_reads.discard(path)
                if st.tailer is not None:
                    st.tailer.close()
        for key in gone:
            self._read_to.pop(key, None)
        if self._reload_pending:
            self._reload_pending = False
            self.reload("config file changed")

    def _file_event_only(self, ev: FileEvent) -> None:
        names = [
            r.watcher.name
            for r in self.rules
            if isinstance(r.watcher.trigger, FileEventTrigger) and r.matches(ev.path)
        ]
        d = ""
        for r in self.rules:
            if r.watcher.name in names:
                d = r.watcher.source.directory
                break
        self._fire_file_event(tuple(names), ev, d)

    def _fire_file_event(self, names: Tuple[str, ...], ev: FileEvent, directory: str) -> None:
        for n in names:
            t = self.runtimes[n].watcher.trigger
            assert isinstance(t, FileEventTrigger)
            if ev.kind.value in t.event_types:
                self._fire(
                    n,
                    "file_event",
                    file=ev.path,
                    directory=directory,
                    event=ev.kind.value,
                )

    def rescan(self) -> None:
        for path in self._list_files():
            if path not in self.files:
                self._discover(path, existing=False)
        for path in list(self.files):
            self._read(path)

    def _read(self, path: str) -> None:
        st = self.files.get(path)
        if st is None or st.tailer is None:
            return
        try:
            chunks = st.tailer.read(self._read_budget)
        except Exception as exc:  # a tailer must not take the daemon down
            self._record("error", file=path, message=f"reading failed: {exc!r}")
            return
        if getattr(st.tailer, "more", False):
            self._pending_reads.add(path)
        else:
            self._pending_reads.discard(path)
        if not chunks:
            return
        pos = st.tailer.position()
        st.saved_pos_id = (pos.dev, pos.inode)
        for ch in chunks:
            self._scan(st, ch)
        st.saved = stmod.FileResume(pos.dev, pos.inode, pos.offset, pos.lineno, 0)
        last = [c for c in chunks if (c.dev, c.inode) == (pos.dev, pos.inode) and not c.partial]
        if last:
            self._remember_read_to(pos.dev, pos.inode, pos.offset, pos.lineno, last[-1].data[-64:])
        self._mark_dirty()

    def _remember_read_to(self, dev: int, ino: int, end: int, lineno: int, tail: bytes) -> None:
        """Where a file (by identity) was read to, and its last bytes there: a rename of it
        into another watched name continues from that point instead of reading it again.
        The bytes tell a renamed file from a new file that reuses a freed inode number."""
        self._read_to.pop((dev, ino), None)
        self._read_to[(dev, ino)] = (end, lineno, tail)
        if len(self._read_to) > 1024:
            del self._read_to[next(iter(self._read_to))]

    def _continue_reads(self) -> None:
        for path in list(self._pending_reads):
            self._read(path)

    def _scan(self, st: _FileState, chunk: Chunk) -> None:
        self.counts["bytes"] += len(chunk.data)
        if chunk.dev or chunk.inode:
            dev, ino = chunk.dev, chunk.inode
        else:
            pos = st.tailer.position()
            dev, ino = pos.dev, pos.inode
        st.saved = stmod.FileResume(dev, ino, chunk.offset, chunk.lineno, 0)
        if not chunk.partial and st.saved_pos_id is not None and (dev, ino) != st.saved_pos_id:
            # the last lines of a file rotated away: remember where it was read to
            from sidecar.tailer import _count_lines

            self._remember_read_to(
                dev,
                ino,
                chunk.offset + len(chunk.data),
                chunk.lineno + _count_lines(chunk.data),
                chunk.data[-64:],
            )
        mute = self._counted_only(st)
        counted: Dict[Any, int] = {}
        try:
            hits = st.matcher.scan(chunk, mute, counted) if mute else st.matcher.scan(chunk)
        except Exception as exc:
            self._record("error", file=st.path, message=f"matching failed: {exc!r}")
            return
        if st.matcher.timed_out:
            self._regex_timed_out(st.matcher.take_timed_out(), "line_regex")
        for name, n in counted.items():
            self.counts["matches"] += n
            self.runtimes[name].refused(n)
        starts: Dict[str, Dict[int, LineMatch]] = {}
        for name, m in hits:
            self.counts["matches"] += 1
            lo, hi = st.suppress
            if lo <= m.lineno <= hi:
                continue  # acted on before a restart
            if name in self._multiline:
                starts.setdefault(name, {})[m.lineno] = m
                continue
            self._on_match(name, m, st)
        for name in st.regex_watchers:
            if name in self._multiline:
                self._gather(name, st, chunk, starts.get(name, {}))
        if st.suppress[1] and chunk.lineno > st.suppress[1]:
            st.suppress = (0, 0)

    def _counted_only(self, st: _FileState) -> Tuple[str, ...]:
        """The file's regex watchers whose matches in the next chunk would all be refused
        before anything of them is looked at (paused, triggered, disabled, or rate-limited
        for at least a second more, with no condition, throttle or multi-line record to
        judge first): the matcher only counts their lines, the same counts as _on_match's.
        A busy log matched by a rate-limited watcher costs no LineMatch per line."""
        if st.suppress[1]:
            return ()  # lines acted on before a restart are told apart by line number
        now = self.clock()
        out: Tuple[str, ...] = ()
        for name in st.regex_watchers:
            rt = self.runtimes[name]
            if name in self._multiline or not rt.refuses_until(now, 1.0):
                continue
            if rt.state == WatcherState.ACTIVE and (
                rt.condition is not None or name in self.throttles
            ):
                continue
            out += (name,)
        return out

    def _on_match(
        self,
        name: str,
        m: LineMatch,
        st: Optional[_FileState],
        *,
        record: Any = None,
    ) -> None:
        """A line (or, with ``record``, a gathered multi-line record) matched."""
        rt = self.runtimes[name]
        rt.matches += 1
        if rt.state != WatcherState.ACTIVE:
            rt.ignored += 1
            return
        admitted = False
        if rt.condition is None and record is None and name not in self.throttles:
            # nothing to judge before the rate limit: ask it first, so that a rate-limited
            # watcher on a busy log does not build the variables of every skipped match
            if rt.admit(self.clock()) is not None:
                return
            admitted = True
        captures, variables = match_variables(rt.watcher, m)
        extra: Dict[str, Any] = {}
        line = m.line
        through: Optional[int] = None
        if record is not None:
            line = record.text
            through = record.last_lineno
            variables["MATCH"] = variables["RECORD"] = line
            variables["RECORD_LINES"] = str(len(record.lines))
            for i, g in enumerate(record.end_groups, start=1):
                variables.setdefault(f"end{i}", "" if g is None else g)
            extra["record"] = {
                "lines": len(record.lines),
                "last_lineno": record.last_lineno,
                "reason": record.reason,
            }
        if rt.watcher.source.is_probe:
            variables["PROBE"] = rt.watcher.source.probe or ""
            extra["probe"] = rt.watcher.source.probe
        ok, err = rt.condition_ok(captures)
        if err is not None:
            n = rt.skipped.get("condition_error", 0)
            rt.skipped["condition_error"] = n + 1
            if n < 3:
                self._record(
                    "skipped",
                    watcher=name,
                    trigger="regex",
                    file=m.path,
                    line=m.line,
                    lineno=m.lineno,
                    captures=captures,
                    reason="condition_error",
                    message=f"condition failed, counted as false: {err}",
                )
            return
        if not ok:
            return
        ts = self.throttles.get(name)
        if ts is not None:
            thr = rt.watcher.throttle
            key = ""
            if thr is not None and thr.track_by:
                from sidecar.substitute import substitute

                key = substitute(thr.track_by, variables)
            d = ts.offer(key, self.clock())
            if not d.fire:
                rt.held += 1
                return
            variables["COUNT"] = str(d.count)
            variables["SUPPRESSED"] = str(d.suppressed)
            variables["KEY"] = key
            extra["throttle"] = {"key": key, "count": d.count, "suppressed": d.suppressed}
        probe = rt.watcher.source.is_probe
        self._fire(
            name,
            "probe" if probe else "regex",
            file=None if probe else m.path,
            directory=None if st is None else st.directory,
            line=line,
            lineno=None if probe else m.lineno,
            captures=captures,
            variables=variables,
            extra=extra or None,
            through_lineno=through,
            _admitted=admitted,
        )

    # ------------------------------------------------------------------ firing
    def _fire(
        self, name: str, trigger: str, _admitted: bool = False, **kw: Any
    ) -> Optional[Firing]:
        rt = self.runtimes[name]
        now = self.clock()
        if not _admitted and rt.admit(now) is not None:
            return None
        self._seq += 1
        firing = Firing(watcher=name, trigger=trigger, seq=self._seq, **kw)
        self._flush_skipped(rt)
        self.counts["firings"] += 1
        self._record(
            "match",
            watcher=name,
            trigger=trigger,
            file=firing.file,
            line=firing.line,
            lineno=firing.lineno,
            event=firing.event,
            captures=dict(firing.captures) or None,
            firing=firing.seq,
            extra=_match_extra(firing),
        )
        change = rt.fired(firing, now)
        self._last_event[name] = utc_now_iso()
        saved: Optional[stmod.FileResume] = None
        if trigger == "regex" and firing.file is not None:
            st = self.files.get(firing.file)
            if st is not None and st.saved is not None and firing.lineno is not None:
                through = firing.through_lineno or firing.lineno
                saved = st.saved = stmod.FileResume(
                    st.saved.dev, st.saved.inode, st.saved.offset, st.saved.lineno, through
                )
        if self._journal is not None:
            # before the actions start: a restart will not repeat them, nor forget the count
            try:
                head = ""
                if saved is not None and firing.file is not None:
                    head = _head_hex(self.files[firing.file], saved)
                self._journal.append(
                    firing.file if saved is not None else None,
                    saved,
                    name,
                    rt.trigger_count,
                    head,
                    self._persist_firing(firing),
                )
            except OSError as exc:
                self.log.warning("cannot write the state journal", error=str(exc))
                self.save_state()
        self._mark_dirty()
        self._start_chain(firing)
        if change:
            self._state_record(change)
        return firing

    def trigger_manually(self, name: str) -> Optional[Firing]:
        """Run a watcher's actions now with its last captures (``sidecar trigger``)."""
        rt = self.runtimes[name]
        last = rt.last_firing
        kw: Dict[str, Any] = {}
        if last is not None:
            kw = dict(
                file=last.file,
                directory=last.directory,
                line=last.line,
                lineno=last.lineno,
                event=last.event,
                captures=last.captures,
                variables=last.variables,
            )
        return self._fire(name, "manual", **kw)

    def _flush_skipped(self, rt: WatcherRuntime) -> None:
        for reason, n in rt.take_skipped().items():
            if reason == "condition_error":
                continue
            self._record(
                "skipped",
                watcher=rt.name,
                reason=reason,
                message=f"{n} firing(s) not acted on ({reason})",
                extra={"count": n},
            )

    def _state_record(self, ch: StateChange) -> None:
        self._record(
            "state",
            watcher=ch.watcher,
            state=ch.state.value,
            previous_state=ch.previous.value,
            reason=ch.reason,
        )

    def _specs(self, name: str) -> List[Any]:
        specs = list(self.runtimes[name].watcher.actions)
        # cancel_job ends the job (and this sidecar with it): it always runs last, so that a
        # resubmit or a notification in the same firing happens first.
        specs.sort(key=lambda s: 1 if s.type == "cancel_job" else 0)
        return specs

    def _start_chain(self, firing: Firing, index: int = 0) -> None:
        chain = _Chain(firing, self._specs(firing.watcher), index)
        self.chains[firing.seq] = chain
        self._advance(chain)

    # -- actions that survive a crash ----------------------------------------------------
    # A firing is saved as done before its actions start (a restart never repeats it). So
    # that a SIGKILL does not lose the actions still waiting for a slot either, a firing
    # with process actions is written to the journal with its fields; the runner marks
    # each action as it starts it, and the chain's end is marked too. A successor runs the
    # actions of such a firing that had not started (never one that had: at most once).
    _IMMEDIATE = ("log_event", "store_metric", "pause_watcher")
    _PAYLOAD_CAP = 256 * 1024  # a bigger firing (a 1 MiB line) is not kept: at most once

    def _persist_firing(self, firing: Firing) -> Optional[Tuple[str, Dict[str, Any]]]:
        rt = self.runtimes.get(firing.watcher)
        if rt is None or all(a.type in self._IMMEDIATE for a in rt.watcher.actions):
            return None
        payload: Dict[str, Any] = {
            "watcher": firing.watcher,
            "trigger": firing.trigger,
            "file": firing.file,
            "directory": firing.directory,
            "line": firing.line,
            "lineno": firing.lineno,
            "event": firing.event,
            "timeout": firing.timeout,
            "captures": dict(firing.captures),
            "variables": dict(firing.variables),
        }
        size = len(firing.line or "") + sum(len(v) for v in firing.variables.values())
        if size > self._PAYLOAD_CAP:
            return None
        self._payloads[firing.seq] = payload
        return f"{self._run_id}:{firing.seq}", payload

    def _action_starting(self, tag: Any) -> None:
        """Runner callback (any thread), just before an action's process starts."""
        if not isinstance(tag, tuple) or tag[0] == "probe":
            return
        seq, index = tag
        j = self._journal
        if j is None or seq not in self._payloads:
            return
        with j.lock:
            self._started[seq] = index
            try:
                j.mark("S", f"{self._run_id}:{seq}", int(index))
            except OSError:
                pass

    def _chain_done(self, seq: int) -> None:
        if self._payloads.pop(seq, None) is None:
            return
        self._started.pop(seq, None)
        if self._journal is not None:
            try:
                self._journal.mark("D", f"{self._run_id}:{seq}")
            except OSError:
                pass

    def _resume_firings(self) -> None:
        """Run the actions a killed predecessor had not started (see _persist_firing)."""
        pending, self._resume_pending = self._resume_pending, {}
        for key, ent in pending.items():
            try:
                p = dict(ent["firing"])
                nxt = int(ent.get("next") or 0)
                name = str(p["watcher"])
            except (KeyError, TypeError, ValueError):
                continue
            if name not in self.runtimes:
                self._record(
                    "warning",
                    watcher=name,
                    reason="resumed_actions",
                    message="actions of a firing left by a killed sidecar not run: the "
                    "watcher is no longer in the config",
                    extra={"previous_firing": key},
                )
                continue
            specs = self._specs(name)
            if nxt >= len(specs):
                continue
            self._seq += 1
            firing = Firing(
                watcher=name,
                trigger=str(p.get("trigger") or "regex"),
                seq=self._seq,
                file=p.get("file"),
                directory=p.get("directory"),
                line=p.get("line"),
                lineno=p.get("lineno"),
                event=p.get("event"),
                timeout=p.get("timeout"),
                captures=dict(p.get("captures") or {}),
                variables={str(k): str(v) for k, v in (p.get("variables") or {}).items()},
                extra={"previous_firing": key},
            )
            self._record(
                "warning",
                watcher=name,
                trigger=firing.trigger,
                file=firing.file,
                line=firing.line,
                firing=firing.seq,
                reason="resumed_actions",
                message=f"{len(specs) - nxt} action(s) of a firing that had not started when "
                "the previous sidecar was killed: run now",
                extra={"previous_firing": key, "from_action": nxt},
            )
            if self._journal is not None:
                persisted = self._persist_firing(firing)
                rt = self.runtimes[name]
                try:
                    self._journal.append(
                        None, None, name, rt.trigger_count, "", persisted, replaces=key,
                        start=nxt,
                    )
                    if persisted is None:  # not journaled again (too big): taken over all
                        # the same, so that a successor of this sidecar does not run it too
                        self._journal.mark("D", key)
                except OSError:
                    pass
            self._start_chain(firing, nxt)

    def _advance(self, chain: _Chain) -> None:
        while chain.index < len(chain.specs):
            spec = chain.specs[chain.index]
            try:
                prepared = act.prepare(spec, chain.firing, self.ctx, self.settings)
            except Exception as exc:
                prepared = act.Immediate(ActionResult(spec.type, False, error=f"{exc!r}"))
            if isinstance(prepared, act.Immediate):
                self._action_record(chain, prepared.result, prepared.record)
                self._after_action(chain, prepared.result, prepared.effect)
                chain.index += 1
                continue
            from sidecar.runner import ShellJob

            job = ShellJob(
                tag=(chain.firing.seq, chain.index),
                command=prepared.command,
                env=prepared.env,
                cwd=prepared.cwd,
                timeout=prepared.timeout,
                action=spec.type,
            )
            if self.runner.submit(job):
                chain.pending_effect = prepared.effect_on_success
                return
            for s in chain.specs[chain.index :]:
                self._record(
                    "skipped",
                    watcher=chain.firing.watcher,
                    action=s.type,
                    firing=chain.firing.seq,
                    reason="queue_full",
                    message=f"action queue full ({self.settings.queue_length} pending): not run",
                )
            break
        self.chains.pop(chain.firing.seq, None)
        self._chain_done(chain.firing.seq)

    def _held_back(self, name: str, held: Sequence[Tuple[str, int]]) -> None:
        """Suppressed firings whose suppression period ended with no later firing to carry
        their count: reported on their own, so none is lost."""
        for key, n in held:
            if n <= 0:
                continue
            self._record(
                "skipped",
                watcher=name,
                reason="suppressed",
                message=f"{n} firing(s) held back by suppress"
                + (f" for key {key!r}" if key else ""),
                extra={"count": n, "key": key or None},
            )

    def _collect_results(self) -> None:
        for tag, result in self.runner.results():
            if tag[0] == "probe":
                self._probe_done(tag[1], result)
                continue
            seq, index = tag
            chain = self.chains.get(seq)
            if chain is None:
                continue
            effect, chain.pending_effect = chain.pending_effect, None
            self._action_record(chain, result, {})
            self._after_action(chain, result, effect)
            chain.index = index + 1
            self._advance(chain)

    def _action_record(self, chain: _Chain, result: ActionResult, extra: Mapping[str, Any]) -> None:
        fields: Dict[str, Any] = dict(
            watcher=chain.firing.watcher,
            trigger=chain.firing.trigger,
            file=chain.firing.file,
            action=result.action,
            ok=result.ok,
            exit_code=result.exit_code,
            duration_s=round(result.duration_s, 6) if result.duration_s else None,
            output=result.output or None,
            firing=chain.firing.seq,
        )
        detail = dict(result.detail)
        if result.error:
            fields["message"] = result.error
        elif not result.ok:
            last = (result.output or "").strip().splitlines()[-1:] or [""]
            why = "timed out" if result.timed_out else f"exit code {result.exit_code}"
            fields["message"] = f"{why}: {last[0]}" if last[0] else why
        if result.timed_out:
            fields["reason"] = "timeout"
        kind = "action"
        for k, v in extra.items():
            if k == "kind":
                continue
            fields[k] = v
        if detail:
            fields["extra"] = detail
        self._record(kind, **fields)
        sub_kind = extra.get("kind")
        if sub_kind in ("metric", "log"):
            rec_fields = {key: v for key, v in extra.items() if key != "kind"}
            self._record(
                str(sub_kind), watcher=chain.firing.watcher, firing=chain.firing.seq, **rec_fields
            )

    def _after_action(
        self, chain: _Chain, result: ActionResult, effect: Optional[Tuple[str, str]]
    ) -> None:
        rt = self.runtimes.get(chain.firing.watcher)
        if rt is not None:
            change = rt.action_done(result.ok)
            if change:
                self._state_record(change)
        if result.ok and result.action == "resubmit":
            import dataclasses

            self.resubmits += 1
            self.ctx = dataclasses.replace(self.ctx, resubmits_done=self.resubmits)
            self.save_state()
        if effect is None or not result.ok:
            return
        what, arg = effect
        if what == "pause":
            target = self.runtimes.get(arg)
            if target is not None:
                ch = target.pause("pause_watcher action")
                if ch:
                    self._state_record(ch)
        elif what == "stop":
            self.request_stop(arg)

    # ------------------------------------------------------------------ job triggers
    def _setup_job_triggers(self) -> None:
        """Arm the triggers that watch the job rather than its files (at start and after a
        reload; watchers kept by a reload keep their state)."""
        now = self.clock()
        names = set(self.runtimes)
        for d in (self._mem, self._tl_due, self._probe_next):
            for k in [k for k in d if k not in names]:
                del d[k]  # type: ignore[attr-defined]
        self._tl_signals = {}
        want_end_time = False
        for w in self.config.watchers:
            t = w.trigger
            if isinstance(t, StaleTrigger) and t.grace and not self.started_once(w.name):
                # a file that has not appeared after the grace period counts as stale
                if not any(k[0] == w.name for k in self.stale):
                    tr = self._new_tracker(w.name, "", now)
                    tr.timeout = t.grace
            elif isinstance(t, MemoryTrigger) and w.name not in self._mem:
                limit, where = (t.limit, "given in the config") if t.limit else (None, "")
                if limit is None:
                    from sidecar.jobinfo import memory_limit

                    limit, where = memory_limit(self.environ)
                if limit is None:
                    self._record(
                        "warning",
                        watcher=w.name,
                        trigger="memory",
                        message=f"no memory limit found ({where}): this watcher will not "
                        "fire; give its limit in the config (limit = \"8G\")",
                    )
                    continue
                self._mem[w.name] = LevelWatch(w.name, t.interval, now, limit)
                self._record(
                    "info",
                    watcher=w.name,
                    trigger="memory",
                    message=f"memory limit {limit / (1 << 20):.0f} MiB ({where}); fires at "
                    f"{t.fraction:.0%} of it, sampled every {t.interval:g}s",
                    extra={"limit_bytes": limit, "source": where},
                )
            elif isinstance(t, TimeLimitTrigger):
                want_end_time = want_end_time or w.name not in self._tl_fired
                if t.signal:
                    sig = getattr(signal, "SIG" + t.signal.upper().replace("SIG", "", 1), None)
                    if isinstance(sig, int):
                        self._tl_signals.setdefault(int(sig), []).append(w.name)
            if w.source.is_probe and w.name not in self._probe_next:
                self._probe_next[w.name] = now  # the first run right away
        self._armed.update(names)
        if want_end_time and self._tl_end is None and self._tl_query_at is None:
            self._tl_query_at = now
        if self._tl_signals and self.install_signals and self._wake_w >= 0:
            for sig in self._tl_signals:
                signal.signal(sig, self._on_signal)

    def started_once(self, name: str) -> bool:
        """Was this watcher armed before (a reload keeps its grace check done)?"""
        return name in self._armed

    def _new_tracker(self, name: str, path: str, now: float) -> StaleTracker:
        w = self.runtimes[name].watcher
        assert isinstance(w.trigger, StaleTrigger)
        tr = StaleTracker(
            name, path, w.trigger.timeout, now, wants_cpu=w.trigger.max_cpu is not None
        )
        self.stale[(name, path)] = tr
        return tr

    def _tree_sample(self) -> Any:
        """CPU, memory and liveness of the job's processes: the followed process (--pid,
        the wrapped command, else the sidecar's parent) and its descendants, and in a SLURM
        job the processes of its steps (srun tasks), the sidecar and its actions left out.
        Liveness is the followed process's. None when it cannot be known."""
        root = self.follow_pid or os.getppid()
        try:
            if self._job_tree is None or self._job_tree_root != root:
                from sidecar.jobinfo import ProcessTree

                self._job_tree = ProcessTree(
                    root, exclude=(os.getpid(),), clock=self.clock, job_id=self.ctx.job_id
                )
                self._job_tree_root = root
            return self._job_tree.sample()
        except Exception as exc:
            self._record("error", message=f"cannot sample the job's processes: {exc!r}")
            return None

    def _stale_due(self, tr: StaleTracker, now: float) -> None:
        """A quiet spell reached its timeout: a hang, or not (the job computes or is gone)."""
        rt = self.runtimes.get(tr.watcher)
        if rt is None:
            return
        t = rt.watcher.trigger
        assert isinstance(t, StaleTrigger)
        extra: Dict[str, Any] = {}
        variables: Dict[str, str] = {}
        if t.require_alive or t.max_cpu is not None:
            sample = self._tree_sample()
            if sample is None or not sample.alive:
                tr.fired = True  # quiet until the next write
                self._record(
                    "skipped",
                    watcher=tr.watcher,
                    trigger="stale",
                    file=tr.path or None,
                    reason="job_not_running",
                    message=f"no write for {t.timeout:g}s, but the job's processes are gone: "
                    "not a hang",
                )
                return
            extra["processes"] = sample.nprocs
            if t.max_cpu is not None:
                from sidecar.jobinfo import cpu_percent

                mark = tr.cpu_mark
                pct = cpu_percent(mark, sample) if mark is not None else None
                if pct is None or pct > t.max_cpu:
                    tr.restart_window(now, sample)
                    if pct is not None:
                        self._record(
                            "skipped",
                            watcher=tr.watcher,
                            trigger="stale",
                            file=tr.path or None,
                            reason="busy",
                            message=f"no write for {t.timeout:g}s, but the job used "
                            f"{pct:.1f}% CPU (max_cpu {t.max_cpu:g}): not a hang",
                            extra={"cpu_percent": round(pct, 2)},
                        )
                    return
                extra["cpu_percent"] = round(pct, 2)
                variables["CPU_PERCENT"] = f"{pct:.1f}"
        tr.fired = True
        st = self.files.get(tr.path) if tr.path else None
        w = rt.watcher
        file = tr.path or None
        directory = st.directory if st else None
        if not tr.path:
            extra["never_appeared"] = True
            directory = os.path.normpath(os.path.join(self.cwd, w.source.directory))
            if w.source.paths:
                p0 = w.source.paths[0]
                file = p0 if os.path.isabs(p0) else os.path.join(self.cwd, w.source.directory, p0)
                file = os.path.normpath(file)
        self._fire(
            tr.watcher,
            "stale",
            file=file,
            directory=directory,
            timeout=tr.timeout,
            variables=variables,
            extra=extra or None,
        )

    def _job_ended(self) -> None:
        """The followed process exited: the job_end watchers fire with its exit status."""
        if self._job_end_fired:
            return
        self._job_end_fired = True
        code = self._followed_exit()
        for rt in list(self.runtimes.values()):
            if not isinstance(rt.watcher.trigger, JobEndTrigger):
                continue
            value = None if code is None else str(code)
            captures: Dict[str, Optional[str]] = {"exit_code": value}
            if value is None and rt.condition is not None:
                self._record(
                    "skipped",
                    watcher=rt.name,
                    trigger="job_end",
                    reason="exit_status_unknown",
                    message="the job's process ended but its exit status is unknown, so the "
                    "condition cannot be judged: the status is known when the sidecar runs "
                    "the work itself (sidecar CONFIG -- COMMAND)",
                    extra={"pid": self.follow_pid},
                )
                continue
            ok, err = rt.condition_ok(captures)
            if err is not None:
                self._record(
                    "skipped",
                    watcher=rt.name,
                    trigger="job_end",
                    captures=captures,
                    reason="condition_error",
                    message=f"condition failed, counted as false: {err}",
                )
                continue
            if not ok:
                continue
            self._fire(
                rt.name,
                "job_end",
                captures=captures,
                variables={"EXIT_CODE": value or "", "exit_code": value or ""},
                extra={"exit_code": code, "pid": self.follow_pid},
            )

    def _query_end_time(self, now: float) -> None:
        """Ask SLURM for the job's end time, in a thread (scontrol may take seconds when the
        controller is busy; the loop goes on). The answer arrives through the wake pipe."""
        self._tl_query_at = None
        if self._tl_thread is not None:
            return
        import threading

        environ = dict(self.environ)
        use_env = self._tl_end is None  # SLURM_JOB_END_TIME is fixed at the job's start

        def work() -> None:
            from sidecar.jobinfo import job_end_time

            try:
                answer = job_end_time(environ, use_env=use_env)
            except Exception as exc:  # never: job_end_time does not raise
                answer = (None, repr(exc))
            self._tl_answer = answer
            self._wake()

        self._tl_thread = threading.Thread(target=work, name="sidecar-end-time", daemon=True)
        self._tl_thread.start()

    def _end_time_answer(self, now: float) -> None:
        answer, self._tl_answer = self._tl_answer, None
        self._tl_thread = None
        if answer is None:
            return
        end, where = answer
        first = not self._tl_asked
        self._tl_asked = True
        names = [
            w.name
            for w in self.config.watchers
            if isinstance(w.trigger, TimeLimitTrigger) and w.name not in self._tl_fired
        ]
        if end is None:
            if first:
                self._record(
                    "warning",
                    trigger="time_limit",
                    message=f"the job's end time is unknown ({where}): time_limit watchers "
                    f"{', '.join(names)} fire only on their signal",
                )
            if self._tl_end is None:
                return
            end = self._tl_end  # a later query failed: keep what we knew
        self._tl_end = end
        left = end - self.wall()
        for n in names:
            t = self.runtimes[n].watcher.trigger
            assert isinstance(t, TimeLimitTrigger)
            self._tl_due[n] = now + max(0.0, left - t.before)
        if self._tl_due:
            # the limit may change (scontrol update): ask again, more often as the first
            # deadline comes closer (every 15 minutes at most, every minute at least)
            gap = min(self._tl_due.values()) - now
            self._tl_query_at = now + min(900.0, max(60.0, gap / 2))
        if first:
            self._record(
                "info",
                trigger="time_limit",
                message=f"the job ends in {left:.0f}s (from {where})",
                extra={"end_time": _iso(end), "source": where},
            )

    def _time_limit_due(self, now: float) -> None:
        for n in [n for n, at in self._tl_due.items() if now >= at]:
            self._fire_time_limit(n, None)

    def _time_limit_signal(self, sig: int) -> None:
        for n in self._tl_signals.get(sig, []):
            self._fire_time_limit(n, signal.Signals(sig).name)

    def _fire_time_limit(self, name: str, signame: Optional[str]) -> None:
        if name in self._tl_fired or name not in self.runtimes:
            return
        self._tl_fired.add(name)
        self._tl_due.pop(name, None)
        variables: Dict[str, str] = {}
        captures: Dict[str, Optional[str]] = {}
        extra: Dict[str, Any] = {}
        if self._tl_end is not None:
            left = max(0, int(self._tl_end - self.wall()))
            variables["TIME_LEFT"] = captures["time_left"] = str(left)
            variables["END_TIME"] = captures["end_time"] = _iso(self._tl_end)
            extra["time_left_s"] = left
        if signame:
            variables["SIGNAL"] = captures["signal"] = signame
            extra["signal"] = signame
        variables.update((k, v or "") for k, v in captures.items())  # $time_left too
        self._fire(name, "time_limit", captures=captures, variables=variables, extra=extra)

    def _memory_due(self, now: float) -> None:
        sample: Any = None
        for name, lw in self._mem.items():
            if now < lw.next_at:
                continue
            lw.next_at = now + lw.interval
            if sample is None:
                sample = self._tree_sample()
                if sample is None:
                    return
            limit = lw.limit
            rt = self.runtimes.get(name)
            if not limit or rt is None:
                continue
            t = rt.watcher.trigger
            assert isinstance(t, MemoryTrigger)
            rss = sample.rss_bytes
            if lw.crossed(rss, t.fraction * limit):
                frac = f"{rss / limit:.3f}"
                values = {"rss_bytes": str(rss), "limit_bytes": str(limit), "fraction": frac}
                self._fire(
                    name,
                    "memory",
                    captures=dict(values),
                    variables={
                        **values,
                        "RSS_BYTES": str(rss),
                        "LIMIT_BYTES": str(limit),
                        "FRACTION": frac,
                    },
                    extra={"rss_bytes": rss, "limit_bytes": limit, "processes": sample.nprocs},
                )

    def _probe_due(self, now: float) -> None:
        for name, at in list(self._probe_next.items()):
            if now < at or name in self._probe_running:
                continue
            rt = self.runtimes.get(name)
            if rt is None:
                continue
            src = rt.watcher.source
            self._probe_next[name] = now + src.probe_interval
            if rt.state != WatcherState.ACTIVE:
                continue  # a paused probe costs nothing
            from sidecar.runner import ShellJob

            env = dict(self.ctx.environ)
            env["NAME"] = name
            job = ShellJob(
                tag=("probe", name),
                command=src.probe or "",
                env=env,
                cwd=self.cwd,
                timeout=src.probe_timeout,
                action="probe",
                output_cap=_PROBE_OUTPUT_CAP,
                stderr=False,
            )
            if self.runner.submit(job):
                self._probe_running.add(name)
            else:
                self._record(
                    "skipped",
                    watcher=name,
                    trigger="probe",
                    reason="queue_full",
                    message="action queue full: probe not run this time",
                )

    def _probe_done(self, name: str, result: ActionResult) -> None:
        self._probe_running.discard(name)
        rt = self.runtimes.get(name)
        if rt is None:
            return
        failing = not result.ok
        if failing != self._probe_failing.get(name, False):
            self._probe_failing[name] = failing
            if failing:
                why = "timed out" if result.timed_out else (
                    result.error or f"exit code {result.exit_code}"
                )
                self._record(
                    "error",
                    watcher=name,
                    trigger="probe",
                    action="probe",
                    ok=False,
                    exit_code=result.exit_code,
                    output=(result.output or "")[:4096] or None,
                    message=f"probe failed ({why}): {rt.watcher.source.probe}",
                )
            else:
                self._record("info", watcher=name, trigger="probe", message="probe works again")
        text = result.output or ""
        if not text:
            return
        data = text.encode("utf-8", "surrogateescape")
        if not data.endswith((b"\n", b"\r")):
            data += b"\n"
        chunk = Chunk(path=f"probe:{name}", data=data, offset=0, lineno=1)
        matcher = self._matcher_for((name,))
        try:
            hits = matcher.scan(chunk)
        except Exception as exc:
            self._record("error", watcher=name, message=f"matching failed: {exc!r}")
            return
        if matcher.timed_out:
            self._regex_timed_out(matcher.take_timed_out(), "line_regex")
        for n, m in hits:
            self.counts["matches"] += 1
            self._on_match(n, m, None)

    def _gather(
        self, name: str, st: _FileState, chunk: Chunk, starts: Mapping[int, LineMatch]
    ) -> None:
        """Multi-line records: a start line opens one, the following lines fill it."""
        key = (name, st.path)
        g = self.gatherers.get(key)
        if g is None:
            if not starts:
                return
            from sidecar.records import RecordGatherer

            g = self.gatherers[key] = RecordGatherer(
                self._multiline[name], budget=self._end_budget()
            )
        if g.is_open and chunk.lineno <= g.last_lineno:
            # the file was truncated or replaced (its lines are numbered from 1 again): the
            # record gathered so far is handed over as it is
            rec = g.flush()
            if rec is not None:
                self._on_match(name, rec.start, st, record=rec)
        if not g.is_open and not starts:
            return
        from sidecar.records import gather_chunk

        ordered = [starts[k] for k in sorted(starts)]
        try:
            recs = list(gather_chunk(g, chunk, ordered, self.clock()))
        finally:
            self._end_budget().done()
        if g.timed_out:
            self._regex_timed_out(
                [(name, st.path, n) for n in g.take_timed_out()], "multiline end"
            )
        for rec in recs:
            self._on_match(name, rec.start, st, record=rec)

    def _end_budget(self) -> Any:
        """The CPU-time limit of the multi-line records' end regexes (one for all)."""
        if self._end_search_budget is None:
            from sidecar.budget import SearchBudget

            self._end_search_budget = SearchBudget(self.settings.regex_time_limit)
        return self._end_search_budget

    def _regex_timed_out(self, found: Sequence[Tuple[Any, str, int]], what: str) -> None:
        """Report the lines a Python re search gave up on: one warning each."""
        limit = self.settings.regex_time_limit
        for name, path, lineno in found:
            probe = path.startswith("probe:")
            self._record(
                "warning",
                reason="regex_time_limit",
                watcher=name,
                trigger="probe" if probe else "regex",
                file=None if probe else path,
                lineno=lineno,
                message=(
                    f"{what} of watcher {name!r} gave up on line {lineno}"
                    f"{'' if probe else ' of ' + path} after {limit:g} s of CPU in Python re, "
                    "and took the line as not matching: the pattern can backtrack "
                    "catastrophically (`sidecar check` says why); rewrite it, or raise "
                    "regex_time_limit"
                ),
            )

    def _gathered(self, rec: Any, key: Tuple[str, str]) -> None:
        st = self.files.get(key[1])
        self._on_match(key[0], rec.start, st, record=rec)


    # ------------------------------------------------------------------ deadlines
    def _deadline(self) -> Optional[float]:
        c: List[Optional[float]] = [t.deadline() for t in self.stale.values()]
        for rt in self.runtimes.values():
            c.append(rt.timer_next)
            c.append(rt.rate_window_end())
        c.append(self._pid_poll_at)
        c.extend(lw.next_at for lw in self._mem.values())
        c.extend(self._tl_due.values())
        c.append(self._tl_query_at)
        c.extend(at for n, at in self._probe_next.items() if n not in self._probe_running)
        c.extend(ts.deadline() for ts in self.throttles.values())
        c.extend(g.deadline() for g in self.gatherers.values())
        if self._state_dirty_at is not None:
            c.append(max(self._state_dirty_at, self._last_save + 1.0))
        r = self._log_retry_in()
        c.append(None if r is None else self.clock() + r)
        return next_deadline(c)

    def _log_retry_in(self) -> Optional[float]:
        """Seconds until the event log's backlog (records kept while it could not be
        written) is to be tried again (0: now); None when nothing waits."""
        due_in = getattr(self.eventlog, "retry_due_in", None)
        return due_in() if due_in is not None else None

    def _due(self, now: float) -> None:
        for tr in list(self.stale.values()):
            if tr.mark_due(now):
                tr.cpu_mark = self._tree_sample()
                if tr.cpu_mark is None:
                    tr.wants_cpu = False  # cannot be known: judged without CPU
            if tr.due(now):
                self._stale_due(tr, now)
        if self._mem:
            self._memory_due(now)
        if self._tl_answer is not None:
            self._end_time_answer(now)
        if self._tl_query_at is not None and now >= self._tl_query_at:
            self._query_end_time(now)
        if self._tl_due:
            self._time_limit_due(now)
        if self._probe_next:
            self._probe_due(now)
        for name, ts in self.throttles.items():
            d = ts.deadline()
            if d is not None and now >= d:
                self._held_back(name, ts.take_expired(now))
        for key, g in list(self.gatherers.items()):
            d = g.deadline()
            if d is not None and now >= d:
                rec = g.expire(now)
                if rec is not None:
                    self._gathered(rec, key)
        for rt in self.runtimes.values():
            if rt.timer_next is not None and now >= rt.timer_next:
                last = rt.last_firing
                rt.timer_next = None
                if last is not None and rt.state == WatcherState.ACTIVE:
                    self._fire(
                        rt.name,
                        "timer",
                        file=last.file,
                        directory=last.directory,
                        line=last.line,
                        lineno=last.lineno,
                        captures=last.captures,
                        variables=last.variables,
                    )
                    if rt.timer_next is None and rt.state == WatcherState.ACTIVE:
                        # rate-limited: try again at the next interval
                        rt.timer_next = now + (rt.watcher.timer_interval or 1.0)
            end = rt.rate_window_end()
            if end is not None and now >= end:
                self._flush_skipped(rt)
        if self._state_dirty_at is not None and now >= max(
            self._state_dirty_at, self._last_save + 1.0
        ):
            self.save_state()
        if self._log_retry_in() == 0.0:  # (on the event log's own clock)
            self.eventlog.retry()
        if self._pid_poll_at is not None and now >= self._pid_poll_at:
            self._pid_poll_at = now + 2.0
            if self.follow_pid and not stmod.pid_alive(self.follow_pid):
                self._job_ended()
                self.request_stop(f"followed process {self.follow_pid} exited")

    # ------------------------------------------------------------------ stopping
    def _followed_exit(self) -> Optional[int]:
        if self._followed_status is None:
            return None
        try:
            return _exit_code(self._followed_status())
        except Exception:
            return None

    def _shutdown(self) -> None:
        reason = self._stop_reason or "stopped"
        # what the job wrote last is read and acted on before the sidecar goes
        try:
            self.handle_events(self.backend.read())
        except Exception:
            pass
        for _ in range(1000):
            self._continue_reads()
            if not self._pending_reads:
                break
        for path in list(self.files):
            self._read(path)
            st = self.files[path]
            if st.tailer is not None:
                try:
                    ch = st.tailer.flush()
                except Exception:
                    ch = None
                if ch is not None:
                    self._scan(st, ch)
        for key, g in list(self.gatherers.items()):
            rec = g.flush()
            if rec is not None:
                self._gathered(rec, key)
        for name, ts in self.throttles.items():
            self._held_back(name, ts.take_all())
        if (
            not self._job_end_fired
            and self.follow_pid
            and not stmod.pid_alive(self.follow_pid)
        ):
            self._job_ended()  # it ended while we were told to stop
        now = self.clock()
        deadline = now + self.settings.drain_grace
        for pending in self.chains.values():
            if pending.firing.trigger in ("job_end", "time_limit"):
                # what the job asked for at its end gets its actions' own time limits
                left = sum(
                    (sp.timeout or self.settings.action_timeout)
                    for sp in pending.specs[pending.index :]
                )
                deadline = max(deadline, now + min(left, 600.0))
        while self.chains and self.clock() < deadline:
            self._collect_results()
            if not self.chains:
                break
            time.sleep(0.01)
        for tag, result in self.runner.shutdown(max(0.0, deadline - self.clock())):
            if tag[0] == "probe":
                continue
            left_chain = self.chains.pop(int(tag[0]), None)
            if left_chain is not None:
                self._action_record(left_chain, result, {})
        for rt in self.runtimes.values():
            self._flush_skipped(rt)
            if rt.state == WatcherState.ACTIVE:
                ch = rt.set_state(WatcherState.COMPLETED, reason)
                if ch:
                    self._state_record(ch)
        self._record(
            "stop",
            reason=reason,
            message=f"sidecar stopped: {reason}",
            extra={
                "followed_pid": self.follow_pid,
                "followed_exit_code": self._followed_exit(),
                "counts": dict(self.counts),
                "watchers": {
                    n: {
                        "state": rt.state.value,
                        "matches": rt.matches,
                        "triggers": rt.trigger_count,
                        "ignored": rt.ignored,
                    }
                    for n, rt in self.runtimes.items()
                },
                "restart_count": self.restart_count,
            },
        )
        for st in self.files.values():
            if st.tailer is not None:
                try:
                    st.tailer.close()
                except Exception:
                    pass
        try:
            self.backend.close()
        except Exception:
            pass
        self.save_state()
        if self._journal is not None:
            self._journal.close()
        self.eventlog.close()
        if self.install_signals:
            try:
                signal.set_wakeup_fd(-1)
            except ValueError:
                pass
        for fd in (self._wake_r, self._wake_w, self._pidfd):
            if fd is not None and fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass


def _iso(epoch: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(
        timespec="seconds"
    ).replace("+00:00", "Z")


def _match_extra(firing: Firing) -> Optional[Dict[str, Any]]:
    extra: Dict[str, Any] = dict(firing.extra or {})
    if firing.timeout is not None:
        extra["timeout"] = firing.timeout
    return extra or None


def _int(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0


def _exit_code(status: Optional[int]) -> Optional[int]:
    if status is None:
        return None
    return status if status >= 0 else 128 - status


def _same_file_elsewhere(path: str, res: stmod.FileResume) -> stmod.FileResume:
    """A saved position whose file has the same inode but another device number: the same
    file on a network filesystem seen from another node (a requeued job runs elsewhere).
    Its position holds if the file is at least as long as the saved offset."""
    try:
        st = os.stat(path)
    except OSError:
        return res
    if st.st_ino == res.inode and st.st_dev != res.dev and st.st_size >= res.offset:
        return stmod.FileResume(
            st.st_dev, st.st_ino, res.offset, res.lineno, res.fired_through, res.head
        )
    return res


def _head_hex(st: _FileState, saved: stmod.FileResume) -> str:
    """The first bytes of the file a saved position belongs to (if the tailer is on it)."""
    if st.tailer is None:
        return ""
    try:
        return bytes(st.tailer.head_of(saved.dev, saved.inode)).hex()
    except Exception:
        return ""


def _rotated_away(path: str, res: stmod.FileResume) -> Optional[str]:
    """Where the file a saved position belongs to is now, if ``path`` names another file and
    it sits in the same directory under another name (rotated by rename)."""
    try:
        cur = os.stat(path)
        if (cur.st_dev, cur.st_ino) == (res.dev, res.inode):
            return None
    except OSError:
        pass
    if not (res.dev or res.inode):
        return None
    try:
        with os.scandir(os.path.dirname(path) or ".") as it:
            for e in it:
                if e.path == path:
                    continue
                try:
                    s = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if (s.st_dev, s.st_ino) == (res.dev, res.inode) and s.st_size >= res.offset:
                    return e.path
    except OSError:
        return None
    return None


def _stem(path: str) -> str:
    return path[: -len(".json")] if path.endswith(".json") else path


def _has_toml(directory: str) -> bool:
    try:
        return any(n.endswith(".toml") and not n.startswith(".") for n in os.listdir(directory))
    except OSError:
        return False
