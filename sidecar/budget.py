"""A CPU-time limit for Python ``re`` searches, which can backtrack for ever.

Most patterns run on RE2 (linear time). The few that RE2 cannot say (lookaround,
backreferences, ...) run on Python ``re``, where a pattern like ``(a+)+$`` takes seconds, then
years, on a line of a few dozen characters, and would stall the whole daemon (every watcher,
every file) on one such line. :class:`SearchBudget` bounds each search instead.

How: while searches run, an interval timer on the process's CPU time (``ITIMER_VIRTUAL``,
signal ``SIGVTALRM``) ticks every quarter of the limit. The handler raises
:class:`BudgetExceeded` when the same search is still running at the fifth tick, i.e. after
at least the limit (and at most 1.25 x it) of CPU time. Python's regex engine checks for
signals while it backtracks, so the exception ends the search where it is. CPU time, not wall
time: at nice 19 on a node whose cores the job keeps busy, a cheap search can take long in
wall time without being the problem.

The timer is armed at the first search of a batch (:meth:`SearchBudget.search`) and
disarmed, with the previous handler put back, by :meth:`SearchBudget.done`; while it is off
no signal is sent. Signals are delivered to the main thread only: called from another thread
(or where no handler can be installed) the searches run without a limit.
"""

from __future__ import annotations

from typing import Any, Optional, Pattern

__all__ = ["BudgetExceeded", "SearchBudget"]

_TICKS = 4  # ticks per limit


class BudgetExceeded(Exception):
    """A search used up its CPU time."""


class SearchBudget:
    """Runs ``pattern.search(text)`` with at most ``limit`` seconds of CPU time per search
    (``limit`` <= 0: no limit). Call :meth:`done` after a batch of searches."""

    __slots__ = ("limit", "_armed", "_usable", "_busy", "_seq", "_seen", "_ticks", "_prev")

    def __init__(self, limit: float) -> None:
        self.limit = float(limit)
        self._armed = False
        self._usable = self.limit > 0
        self._busy = False  # a search is running: only then may a tick raise
        self._seq = 0  # searches started
        self._seen = -1  # the search the last tick saw
        self._ticks = 0  # ticks that saw it
        self._prev: Any = None

    def search(self, pattern: Pattern[str], text: str) -> Optional[Any]:
        """``pattern.search(text)``; raises :class:`BudgetExceeded` when it runs out of time."""
        if not self._armed and self._usable:
            self._arm()
        self._seq += 1
        try:
            self._busy = True
            return pattern.search(text)
        finally:
            self._busy = False

    def done(self) -> None:
        """Stop the timer (after a batch of searches); a no-op when it is not running."""
        if not self._armed:
            return
        import signal

        self._armed = False
        signal.setitimer(signal.ITIMER_VIRTUAL, 0.0)
        try:
            signal.signal(signal.SIGVTALRM, self._prev)
        except (ValueError, TypeError):  # pragma: no cover - a handler set from C
            signal.signal(signal.SIGVTALRM, signal.SIG_DFL)
        self._prev = None

    def _arm(self) -> None:
        import signal

        try:
            self._prev = signal.signal(signal.SIGVTALRM, self._tick)
        except (ValueError, OSError):  # not the main thread
            self._usable = False
            return
        tick = self.limit / _TICKS
        signal.setitimer(signal.ITIMER_VIRTUAL, tick, tick)
        self._armed = True
        self._ticks = 0
        self._seen = -1

    def _tick(self, signum: int, frame: Any) -> None:
        if not self._busy:
            return
        if self._seq != self._seen:  # a search that started since the last tick
            self._seen = self._seq
            self._ticks = 1
            return
        self._ticks += 1
        if self._ticks > _TICKS:  # _TICKS whole ticks since the first one saw this search
            self._ticks = 0
            self._seen = -1
            raise BudgetExceeded()
