"""Per-watcher runtime state: state machine, limits, conditions, stale timers, timer mode.

Nothing here does I/O or reads a clock: the engine passes ``now`` (monotonic seconds) in.
A trigger turns an observation (a LineMatch, a file event, a deadline) into a ``Firing`` or
into a ``Skip`` (with the reason) that the engine writes to the event log.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Mapping, Optional, Tuple, Union

from sidecar.model import RegexTrigger, StaleTrigger, Watcher
from sidecar.types import LineMatch, WatcherState


@dataclass(frozen=True)
class Firing:
    """A trigger fired: run the watcher's actions with these variables."""

    watcher: str
    trigger: str  # regex | stale | file_event | timer | manual
    seq: int
    file: Optional[str] = None
    directory: Optional[str] = None
    line: Optional[str] = None
    lineno: Optional[int] = None
    event: Optional[str] = None
    timeout: Optional[float] = None
    captures: Mapping[str, Optional[str]] = field(default_factory=dict)
    variables: Mapping[str, str] = field(default_factory=dict)
    extra: Optional[Mapping[str, Any]] = None  # more for the match record (threshold, record)
    through_lineno: Optional[int] = None  # the last line this firing consumed (multi-line)


@dataclass(frozen=True)
class Skip:
    watcher: str
    reason: str  # rate_limit | max_triggers | paused | disabled | condition_error | completed
    message: Optional[str] = None


@dataclass(frozen=True)
class StateChange:
    watcher: str
    state: WatcherState
    previous: WatcherState
    reason: str


Outcome = Union[Firing, Skip, None]


def match_variables(
    watcher: Watcher, m: LineMatch
) -> Tuple[Dict[str, Optional[str]], Dict[str, str]]:
    """Captures (for the record and conditions) and substitution variables from a match.

    ``$0`` is the matched text, ``$1..$N`` the positional groups, then the names given by
    ``captures`` (in order, for the positional groups) and the regex's own named groups.
    MATCH (as in the Haskell Sidecar) is the whole line.
    """
    trig = watcher.trigger
    names: Tuple[str, ...] = trig.captures if isinstance(trig, RegexTrigger) else ()
    captures: Dict[str, Optional[str]] = {}
    for i, g in enumerate(m.groups):
        if i < len(names):
            captures[names[i]] = g
    for k, v in m.named.items():
        captures.setdefault(k, v)
    if not captures:
        for i, g in enumerate(m.groups, start=1):
            captures[str(i)] = g
    variables: Dict[str, str] = {"0": m.text, "MATCH": m.line}
    for i, g in enumerate(m.groups, start=1):
        variables[str(i)] = "" if g is None else g
    for k, v in captures.items():
        variables[k] = "" if v is None else v
    return captures, variables


class WatcherRuntime:
    """The live state of one watcher."""

    def __init__(self, watcher: Watcher, condition: Any = None) -> None:
        self.watcher = watcher
        self.condition = condition  # compiled sidecar.conditions.Condition or None
        self.state = WatcherState.ACTIVE
        self.trigger_count = 0
        self.consecutive_failures = 0
        self.recent: Deque[float] = collections.deque()
        self.skipped: Dict[str, int] = {}  # reason -> count not yet reported
        self.ignored = 0  # matches seen while PAUSED / TRIGGERED / DISABLED
        self.last_firing: Optional[Firing] = None
        self.timer_next: Optional[float] = None
        self.matches = 0
        self.held = 0  # matches held back by a threshold or suppression

    @property
    def name(self) -> str:
        return self.watcher.name

    # -- state -------------------------------------------------------------------------
    def set_state(self, new: WatcherState, reason: str) -> Optional[StateChange]:
        if new == self.state:
            return None
        old, self.state = self.state, new
        if new != WatcherState.ACTIVE:
            self.timer_next = None
        return StateChange(self.name, new, old, reason)

    def pause(self, reason: str = "pause") -> Optional[StateChange]:
        if self.state == WatcherState.ACTIVE:
            return self.set_state(WatcherState.PAUSED, reason)
        return None

    def resume(self, reason: str = "resume") -> Optional[StateChange]:
        if self.state == WatcherState.PAUSED:
            return self.set_state(WatcherState.ACTIVE, reason)
        return None

    # -- firing ------------------------------------------------------------------------
    def refuses_until(self, now: float, margin: float) -> bool:
        """Will :meth:`admit` refuse every call from ``now`` to ``now + margin``, whatever
        the match? (The watcher is not ACTIVE, or its rate-limit window is full and stays
        full that long.) Such matches need only be counted (:meth:`refused`)."""
        if self.state != WatcherState.ACTIVE:
            return True
        rl = self.watcher.rate_limit
        if rl is None or rl.count < 1 or len(self.recent) < rl.count:
            return False
        # the window frees a place when its oldest firing is per_s old
        return self.recent[-rl.count] + rl.per_s > now + margin

    def refused(self, n: int) -> None:
        """Book ``n`` matches that :meth:`admit` would have refused (see refuses_until)."""
        self.matches += n
        if self.state != WatcherState.ACTIVE:
            self.ignored += n
        else:
            self.skipped["rate_limit"] = self.skipped.get("rate_limit", 0) + n

    def admit(self, now: float) -> Optional[Skip]:
        """May the watcher fire now? None = yes (and the firing is counted)."""
        if self.state != WatcherState.ACTIVE:
            self.ignored += 1
            return Skip(self.name, self.state.value.lower())
        rl = self.watcher.rate_limit
        if rl is not None:
            while self.recent and self.recent[0] <= now - rl.per_s:
                self.recent.popleft()
            if len(self.recent) >= rl.count:
                self.skipped["rate_limit"] = self.skipped.get("rate_limit", 0) + 1
                return Skip(self.name, "rate_limit")
            self.recent.append(now)
        return None

    def fired(self, firing: Firing, now: float) -> Optional[StateChange]:
        """Book a firing that was admitted. Returns a state change when max_triggers is hit."""
        self.trigger_count += 1
        self.last_firing = firing
        if self.watcher.timer_interval and firing.trigger != "manual":
            self.timer_next = now + self.watcher.timer_interval
        mt = self.watcher.max_triggers
        if mt is not None and self.trigger_count >= mt:
            return self.set_state(WatcherState.TRIGGERED, f"max_triggers={mt} reached")
        return None

    def condition_ok(self, captures: Mapping[str, Optional[str]]) -> Tuple[bool, Optional[str]]:
        if self.condition is None:
            return True, None
        try:
            return bool(self.condition.evaluate(captures)), None
        except Exception as exc:  # ConditionError and anything a bad value provokes
            return False, str(exc)

    def action_done(self, ok: bool) -> Optional[StateChange]:
        if ok:
            self.consecutive_failures = 0
            return None
        self.consecutive_failures += 1
        mf = self.watcher.max_failures
        if mf and self.consecutive_failures >= mf:
            return self.set_state(
                WatcherState.DISABLED, f"{self.consecutive_failures} consecutive failed actions"
            )
        return None

    def take_skipped(self) -> Dict[str, int]:
        out, self.skipped = self.skipped, {}
        return out

    def rate_window_end(self) -> Optional[float]:
        """When pending skip counts should be reported (end of the current rate window)."""
        rl = self.watcher.rate_limit
        if rl is None or not self.skipped or not self.recent:
            return None
        return self.recent[0] + rl.per_s


@dataclass
class StaleTracker:
    """One (stale watcher, file) pair. ``last_write`` is monotonic time of the last write.

    With a CPU condition (``wants_cpu``) the job's CPU time is sampled once early in each
    quiet spell (``mark_delay`` after the last write, so a file written every few seconds
    costs no sample at all) and again at the deadline: the average between the two says
    whether the job computes (not a hang: the check starts again, ``window_start`` moves)
    or sits idle. ``path`` is empty for the grace check of a file that never appeared.
    """

    watcher: str
    path: str
    timeout: float
    last_write: float
    fired: bool = False
    wants_cpu: bool = False
    cpu_mark: Any = None  # a jobinfo.TreeSample taken early in the quiet spell
    window_start: Optional[float] = None  # set when a busy check restarted the window

    @property
    def mark_delay(self) -> float:
        return min(60.0, max(0.05, self.timeout * 0.05))

    def deadline(self) -> Optional[float]:
        if self.fired:
            return None
        start = self.last_write if self.window_start is None else self.window_start
        d = start + self.timeout
        if self.wants_cpu and self.cpu_mark is None:
            return min(d, self.last_write + self.mark_delay)
        return d

    def stale_at(self) -> Optional[float]:
        if self.fired:
            return None
        start = self.last_write if self.window_start is None else self.window_start
        return start + self.timeout

    def mark_due(self, now: float) -> bool:
        return (
            self.wants_cpu
            and not self.fired
            and self.cpu_mark is None
            and now >= self.last_write + self.mark_delay
        )

    def wrote(self, now: float) -> None:
        self.last_write = now
        self.fired = False
        self.cpu_mark = None
        self.window_start = None

    def due(self, now: float) -> bool:
        d = self.stale_at()
        return d is not None and now >= d

    def restart_window(self, now: float, mark: Any) -> None:
        """The job was busy (or its state unknown): judge again one timeout from now."""
        self.window_start = now
        self.cpu_mark = mark


@dataclass
class LevelWatch:
    """A sampled level against a limit (memory): fires once per crossing, re-arms below."""

    watcher: str
    interval: float
    next_at: float
    limit: int = 0  # what the level is compared with (memory: bytes)
    above: bool = False

    def crossed(self, value: float, limit: float) -> bool:
        """True when ``value`` rises to ``limit`` or more (once until it falls back)."""
        if value >= limit:
            if not self.above:
                self.above = True
                return True
            return False
        self.above = False
        return False


def stale_timeout(w: Watcher) -> Optional[float]:
    return w.trigger.timeout if isinstance(w.trigger, StaleTrigger) else None


def next_deadline(candidates: List[Optional[float]]) -> Optional[float]:
    vals = [c for c in candidates if c is not None]
    return min(vals) if vals else None
