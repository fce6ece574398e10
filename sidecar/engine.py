"""The engine: the one module that knows every stage.

One thread, one loop: ``poll()`` on the backend's inotify fd, a wake pipe (signals and
finished actions) and, when following a process, its pidfd. The timeout is the next real
deadline (a stale timer, a timer-mode repeat, the end of a rate window, the poll period when
polling); with nothing due, the loop sleeps until the kernel has something to say.

backend -> FileEvent -> Tailer -> Chunk -> MultiMatcher -> LineMatch -> WatcherRuntime ->
Firing -> actions.prepare -> Runner -> ActionResult -> EventLog
"""

from __future__ import annotations

import errno
import os
import re
import select
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from sidecar import actions as act
from sidecar.log import get_logger
from sidecar.model import (
    Config,
    FileEventTrigger,
    RegexTrigger,
    StaleTrigger,
    Watcher,
)
from sidecar.triggers import (
    Firing,
    Skip,
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
)

DEFAULT_EVENT_LOG = "sidecar-events.jsonl"
_WRITE_KINDS = (FileEventKind.CREATE, FileEventKind.MODIFY)


@dataclass
class _SourceRule:
    watcher: Watcher
    directory: str  # absolute
    regex: Optional["re.Pattern[str]"]
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
        self._signal: Optional[int] = None
        self._wake_r = -1
        self._wake_w = -1
        self._pidfd: Optional[int] = None
        self._pid_poll_at: Optional[float] = None
        self.started = False
        self.ready = False
        self.counts: Dict[str, int] = {"lines": 0, "bytes": 0, "matches": 0, "firings": 0}
        self._matchers: Dict[Tuple[str, ...], Any] = {}
        self._on_ready: List[Callable[[], None]] = []
        self._build_runtimes()

    # ------------------------------------------------------------------ set-up
    def _build_runtimes(self) -> None:
        from sidecar.conditions import compile_condition

        for w in self.config.watchers:
            cond = None
            if isinstance(w.trigger, RegexTrigger) and w.trigger.condition:
                cond = compile_condition(w.trigger.condition)
            self.runtimes[w.name] = WatcherRuntime(w, cond)
            src = w.source
            d = src.directory
            d = d if os.path.isabs(d) else os.path.join(self.cwd, d)
            d = os.path.normpath(d)
            names: frozenset = frozenset()  # type: ignore[type-arg]
            regex = None
            if src.paths:
                rels = []
                for p in src.paths:
                    ap = p if os.path.isabs(p) else os.path.join(d, p)
                    rels.append(os.path.relpath(os.path.normpath(ap), d))
                names = frozenset(rels)
            elif src.filepath_regex is not None:
                regex = re.compile(src.filepath_regex)
            self.rules.append(_SourceRule(w, d, regex, names, src.recursive))

    def _record(self, kind: str, **fields: Any) -> None:
        rec = Record(kind=kind, job_id=self.ctx.job_id, host=self.ctx.host, pid=os.getpid(), **fields)
        self.eventlog.write(rec)

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
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.runner = Runner(
            max_concurrent=self.settings.max_concurrent,
            queue_length=self.settings.queue_length,
            output_cap=self.settings.output_cap,
            wake=self._wake,
        )
        if self._backend_arg is not None:
            self.backend = self._backend_arg
        else:
            self.backend = make_backend(
                self.settings.backend, self._poll_interval(), self.log
            )
        if self.install_signals:
            signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
            for s in (signal.SIGTERM, signal.SIGINT):
                signal.signal(s, self._on_signal)
            signal.signal(signal.SIGHUP, self._on_signal)
        if self.follow_pid:
            try:
                self._pidfd = os.pidfd_open(self.follow_pid)
            except (AttributeError, OSError):
                self._pidfd = None
                self._pid_poll_at = self.clock() + 2.0

    def _poll_interval(self) -> float:
        iv = [w.interval for w in self.config.watchers if w.interval]
        p = self.settings.poll_interval
        return min([p] + [float(x) for x in iv]) if iv and self.settings.backend == "poll" else p

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signal = signum

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

    def _discover(self, path: str, existing: bool) -> Optional[_FileState]:
        """Create the state for a file a watcher cares about (idempotent)."""
        st = self.files.get(path)
        if st is not None:
            return st
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
        if regex_w:
            from sidecar.tailer import Tailer

            start_at = "start"
            if existing:
                starts = {self.runtimes[n].watcher.source.start_at for n in regex_w}
                start_at = "start" if "start" in starts else "end"
            st.tailer = Tailer(
                path,
                start_at=start_at,
                chunk_size=self.settings.chunk_size,
                max_line=self.settings.max_line,
            )
            st.matcher = self._matcher_for(tuple(regex_w))
        now = self.clock()
        for n in stale_w:
            w = self.runtimes[n].watcher
            assert isinstance(w.trigger, StaleTrigger)
            last = now
            if existing:
                try:
                    age = max(0.0, self.wall() - os.stat(path).st_mtime)
                    last = now - age
                except OSError:
                    pass
            self.stale[(n, path)] = StaleTracker(n, path, w.trigger.timeout, last)
        self.files[path] = st
        return st

    def _matcher_for(self, names: Tuple[str, ...]) -> Any:
        m = self._matchers.get(names)
        if m is None:
            from sidecar.matcher import MultiMatcher

            rules = []
            for n in names:
                t = self.runtimes[n].watcher.trigger
                assert isinstance(t, RegexTrigger)
                rules.append((n, t))
            m = MultiMatcher(rules)
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
            },
        )
        self.started = True
        self._initial_scan()
        for path in list(self.files):
            self._read(path)
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
            if self._signal is not None:
                sig, self._signal = self._signal, None
                if sig == signal.SIGHUP:
                    self._record("warning", message="SIGHUP received: reload is not supported yet")
                else:
                    self.request_stop(f"signal {signal.Signals(sig).name}")
            if self._pidfd is not None and self._pidfd in fds:
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

    # ------------------------------------------------------------------ events
    def handle_events(self, events: Sequence[FileEvent]) -> None:
        now = self.clock()
        for ev in events:
            if ev.kind == FileEventKind.OVERFLOW:
                self._record("warning", message="event queue overflow: rescanning all files")
                self.rescan()
                continue
            path = ev.path
            st = self.files.get(path)
            if st is None and not ev.is_dir and ev.kind in (
                FileEventKind.CREATE,
                FileEventKind.MODIFY,
                FileEventKind.CLOSE,
                FileEventKind.ATTRIBUTE,
            ):
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
                        w = self.runtimes[n].watcher
                        assert isinstance(w.trigger, StaleTrigger)
                        self.stale[(n, path)] = StaleTracker(n, path, w.trigger.timeout, now)
            elif ev.kind == FileEventKind.REMOVE:
                for n in st.stale_watchers:
                    self.stale.pop((n, path), None)
            self._fire_file_event(st.event_watchers, ev, st.directory)

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
            chunks = st.tailer.read()
        except Exception as exc:  # a tailer must not take the daemon down
            self._record("error", file=path, message=f"reading failed: {exc!r}")
            return
        if getattr(st.tailer, "more", False):
            self._pending_reads.add(path)
        else:
            self._pending_reads.discard(path)
        for ch in chunks:
            self._scan(st, ch)

    def _continue_reads(self) -> None:
        for path in list(self._pending_reads):
            self._read(path)

    def _scan(self, st: _FileState, chunk: Chunk) -> None:
        self.counts["bytes"] += len(chunk.data)
        try:
            hits = st.matcher.scan(chunk)
        except Exception as exc:
            self._record("error", file=st.path, message=f"matching failed: {exc!r}")
            return
        for name, m in hits:
            self.counts["matches"] += 1
            self._on_match(name, m, st)

    def _on_match(self, name: str, m: LineMatch, st: _FileState) -> None:
        rt = self.runtimes[name]
        rt.matches += 1
        if rt.state != WatcherState.ACTIVE:
            rt.ignored += 1
            return
        captures, variables = match_variables(rt.watcher, m)
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
        self._fire(
            name,
            "regex",
            file=m.path,
            directory=st.directory,
            line=m.line,
            lineno=m.lineno,
            captures=captures,
            variables=variables,
        )

    # ------------------------------------------------------------------ firing
    def _fire(self, name: str, trigger: str, **kw: Any) -> Optional[Firing]:
        rt = self.runtimes[name]
        now = self.clock()
        skip = rt.admit(now)
        if skip is not None:
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
            extra={"timeout": firing.timeout} if firing.timeout is not None else None,
        )
        change = rt.fired(firing, now)
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

    def _start_chain(self, firing: Firing) -> None:
        specs = list(self.runtimes[firing.watcher].watcher.actions)
        # cancel_job ends the job (and this sidecar with it): it always runs last, so that a
        # resubmit or a notification in the same firing happens first.
        specs.sort(key=lambda s: 1 if s.type == "cancel_job" else 0)
        chain = _Chain(firing, specs)
        self.chains[firing.seq] = chain
        self._advance(chain)

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
                    message=f"action queue full ({self.settings.queue_length} pending): "
                    "not run",
                )
            break
        self.chains.pop(chain.firing.seq, None)

    def _collect_results(self) -> None:
        for tag, result in self.runner.results():
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
        k = extra.get("kind")
        if k in ("metric", "log"):
            rec_fields = {key: v for key, v in extra.items() if key != "kind"}
            self._record(str(k), watcher=chain.firing.watcher, firing=chain.firing.seq, **rec_fields)

    def _after_action(
        self, chain: _Chain, result: ActionResult, effect: Optional[Tuple[str, str]]
    ) -> None:
        rt = self.runtimes.get(chain.firing.watcher)
        if rt is not None:
            change = rt.action_done(result.ok)
            if change:
                self._state_record(change)
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

    # ------------------------------------------------------------------ deadlines
    def _deadline(self) -> Optional[float]:
        c: List[Optional[float]] = [t.deadline() for t in self.stale.values()]
        for rt in self.runtimes.values():
            c.append(rt.timer_next)
            c.append(rt.rate_window_end())
        c.append(self._pid_poll_at)
        return next_deadline(c)

    def _due(self, now: float) -> None:
        for tr in list(self.stale.values()):
            if tr.due(now):
                tr.fired = True
                st = self.files.get(tr.path)
                self._fire(
                    tr.watcher,
                    "stale",
                    file=tr.path,
                    directory=st.directory if st else None,
                    timeout=tr.timeout,
                )
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
        if self._pid_poll_at is not None and now >= self._pid_poll_at:
            self._pid_poll_at = now + 2.0
            if self.follow_pid and not _pid_alive(self.follow_pid):
                self.request_stop(f"followed process {self.follow_pid} exited")

    # ------------------------------------------------------------------ stopping
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
        deadline = self.clock() + self.settings.drain_grace
        while self.chains and self.clock() < deadline:
            self._collect_results()
            if not self.chains:
                break
            time.sleep(0.01)
        for tag, result in self.runner.shutdown(max(0.0, deadline - self.clock())):
            seq, index = tag
            chain = self.chains.pop(seq, None)
            if chain is not None:
                self._action_record(chain, result, {})
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True
