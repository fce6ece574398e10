"""swatch-style thresholds and suppression for one watcher (``model.Throttle``).

Pure logic: no I/O, no clock. The engine passes ``now`` (monotonic seconds) and the key
(``track_by`` resolved against the match's variables; the empty string when the watcher has
no ``track_by``, so that all its matches share one key). Every key is counted on its own.

For each match the engine calls :meth:`ThrottleState.offer`, which says whether the watcher
fires for it (:class:`Decision`). The rules, in the order they are applied:

1. **threshold** ``count``/``per_s``: the match's time is added to its key's window of match
   times, from which times at or before ``now - per_s`` are dropped first (a sliding window:
   the match at ``now`` counts, one exactly ``per_s`` seconds older does not). The match is a
   *candidate* when the window then holds ``count`` times; the window is emptied at once, so
   the count starts again (5 per 60 s fires at the 5th, 10th, 15th ... match while they keep
   coming fast). A match that is not a candidate is not acted on (``below_threshold``).
   Without a threshold every match is a candidate.
2. **suppress** ``S``: after a key *fired* at time ``F``, its candidates with ``now < F + S``
   are held back (``suppressed``) and counted. The first candidate at ``now >= F + S`` fires
   and carries that count (``Decision.suppressed``), and a new period starts at its time.
   The threshold is evaluated first: only a candidate can be suppressed, and a suppressed
   candidate empties the window just as a firing one does (matches below the threshold are
   never counted as suppressed, whether or not a suppression period runs).

Held-back counts are reported exactly once: with the key's next firing, or, when its
suppression period ends without one, by :meth:`ThrottleState.take_expired` (called at
:meth:`ThrottleState.deadline`), or at stop by :meth:`ThrottleState.take_all`. Calling
``take_expired`` does not change which matches fire; it only moves the report of a held-back
count from the next firing to the end of the period. The engine builds its states with
``report_at_period_end=False``: a held-back count always waits for the key's next firing
(``SUPPRESSED``), or the stop; ``take_expired`` then gives only evicted keys' counts.

Memory stays bounded: at most ``max_keys`` keys are kept. When a new key would exceed it,
keys that hold nothing any more are forgotten first, else the least recently offered key is
dropped and counted in ``evicted``: it starts afresh if it comes back, and a held-back count
it had is reported by the next ``take_expired`` (the deadline becomes the time of the
eviction). Each window holds at most ``count`` times. A key that holds no window times, no
held-back count and no running suppression period is not kept at all, so a watcher with
neither threshold nor suppress keeps no state.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Optional, Tuple

from sidecar.model import Throttle

__all__ = ["BELOW_THRESHOLD", "SUPPRESSED", "Decision", "ThrottleState"]

BELOW_THRESHOLD = "below_threshold"
SUPPRESSED = "suppressed"


@dataclass(frozen=True)
class Decision:
    """What to do with one match. When ``fire`` is False, ``reason`` says why
    (``below_threshold`` or ``suppressed``). ``count``: the matches of ``key`` in its
    threshold window, this one included (1 without a threshold). ``suppressed`` (firings
    only): how many candidates of this key were held back since its previous firing and not
    reported yet."""

    fire: bool
    reason: Optional[str] = None
    key: str = ""
    count: int = 0
    suppressed: int = 0


class _Key:
    __slots__ = ("fired_at", "held", "times")

    def __init__(self) -> None:
        self.times: List[float] = []  # match times in the threshold window, oldest first
        self.fired_at: Optional[float] = None  # start of the running suppression period
        self.held = 0  # candidates held back in it, not reported yet


class ThrottleState:
    """The threshold/suppression state of one watcher. See the module docstring."""

    def __init__(
        self, throttle: Throttle, *, max_keys: int = 10_000, report_at_period_end: bool = True
    ) -> None:
        # False (the engine's choice): a held-back count waits for its key's next firing
        # (or the stop); only evicted keys' counts come from take_expired
        self._report_at_end = report_at_period_end
        th = throttle.threshold
        self._count = max(1, int(th.count)) if th is not None else 1
        self._per = float(th.per_s) if th is not None else 0.0
        self._windowed = self._count > 1
        sup = throttle.suppress
        self._suppress = float(sup) if sup is not None and sup > 0 else 0.0
        self._max_keys = max(1, int(max_keys))
        self._keys: OrderedDict[str, _Key] = OrderedDict()
        # (period end, key) for keys whose held count went from 0 to 1; stale entries are
        # dropped when they reach the top (the key fired again, was evicted or reported)
        self._due: List[Tuple[float, str]] = []
        # (key, held count, eviction time) of evicted keys, reported by the next
        # take_expired (at most max_keys of them)
        self._orphans: List[Tuple[str, int, float]] = []
        self.evicted = 0
        self.lost = 0  # held counts dropped because too many evicted keys had one

    def __len__(self) -> int:
        """How many keys are kept now."""
        return len(self._keys)

    # ------------------------------------------------------------------ matches
    def offer(self, key: str, now: float) -> Decision:
        """Decide on one match of ``key`` at ``now``."""
        if not self._windowed and not self._suppress:
            return Decision(True, None, key, 1, 0)
        k = self._keys.get(key)
        if k is None:
            k = self._add(key, now)
        else:
            self._keys.move_to_end(key)
        count = 1
        if self._windowed:
            times = k.times
            if times:
                cut = bisect_right(times, now - self._per)
                if cut:
                    del times[:cut]
            times.append(now)
            count = len(times)
            if count < self._count:
                return Decision(False, BELOW_THRESHOLD, key, count, 0)
            times.clear()
        if self._suppress:
            if k.fired_at is not None and now < k.fired_at + self._suppress:
                k.held += 1
                if k.held == 1 and self._report_at_end:
                    heapq.heappush(self._due, (k.fired_at + self._suppress, key))
                return Decision(False, SUPPRESSED, key, count, 0)
            held, k.held, k.fired_at = k.held, 0, now
        else:
            held = 0
            del self._keys[key]  # nothing left to remember (the window was just emptied)
        return Decision(True, None, key, count, held)

    def _add(self, key: str, now: float) -> _Key:
        keys = self._keys
        if len(keys) >= self._max_keys:
            self._prune(now)
        if len(keys) >= self._max_keys:
            old, k = keys.popitem(last=False)
            self.evicted += 1
            if k.held:
                if len(self._orphans) < self._max_keys:
                    self._orphans.append((old, k.held, now))
                else:
                    self.lost += k.held
        if len(self._due) > 4 * self._max_keys + 64:  # stale entries of evicted keys
            self._due = [e for e in self._due if self._live(*e)]
            heapq.heapify(self._due)
        k = keys[key] = _Key()
        return k

    # ------------------------------------------------------------------ deadlines
    def _live(self, due: float, key: str) -> bool:
        k = self._keys.get(key)
        return (
            k is not None
            and k.held > 0
            and k.fired_at is not None
            and k.fired_at + self._suppress == due
        )

    def deadline(self) -> Optional[float]:
        """The earliest end of a suppression period that holds back unreported counts (the
        engine calls :meth:`take_expired` then; for an evicted key's count: the time it was
        evicted); None when there is nothing to report."""
        first = self._orphans[0][2] if self._orphans else None
        due = self._due
        while due:
            d, key = due[0]
            if self._live(d, key):
                return d if first is None else min(d, first)
            heapq.heappop(due)
        return first

    def take_expired(self, now: float) -> List[Tuple[str, int]]:
        """(key, held-back count) for each key whose suppression period ended by ``now``
        with a count that no firing reported (and those of evicted keys). Each count is
        reported once; a key left with nothing to remember is forgotten."""
        out = [(key, n) for key, n, _t in self._orphans]
        self._orphans = []
        due = self._due
        while due and due[0][0] <= now:
            d, key = heapq.heappop(due)
            if not self._live(d, key):
                continue
            k = self._keys[key]
            out.append((key, k.held))
            k.held = 0
            if not k.times:
                del self._keys[key]
        self._prune(now)
        return out

    def take_all(self) -> List[Tuple[str, int]]:
        """At stop: (key, held-back count) for every key with an unreported count."""
        out = [(key, n) for key, n, _t in self._orphans]
        self._orphans = []
        for key, k in self._keys.items():
            if k.held:
                out.append((key, k.held))
                k.held = 0
        self._due = []
        return out

    def _prune(self, now: float) -> None:
        """Forget the oldest keys that hold nothing any more (bounded work per call)."""
        keys = self._keys
        per, sup = self._per, self._suppress
        for _ in range(min(len(keys), 64)):
            key, k = next(iter(keys.items()))
            if k.held or (k.fired_at is not None and now < k.fired_at + sup):
                return
            if k.times and k.times[-1] > now - per:
                return
            del keys[key]
