"""sidecar.throttle: thresholds, per-key counts, suppression, bounded memory."""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Optional, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.model import RateLimit, Throttle
from sidecar.throttle import BELOW_THRESHOLD, SUPPRESSED, Decision, ThrottleState


def fires(state: ThrottleState, times: List[float], key: str = "") -> List[float]:
    return [t for t in times if state.offer(key, t).fire]


# ------------------------------------------------------------------ plain behaviour


def test_without_threshold_or_suppress_every_match_fires_and_no_state_is_kept() -> None:
    s = ThrottleState(Throttle())
    for i in range(100):
        assert s.offer(f"k{i}", float(i)) == Decision(True, None, f"k{i}", 1, 0)
    assert len(s) == 0 and s.deadline() is None and s.take_all() == []


def test_threshold_fires_at_every_count_th_match_of_a_fast_burst() -> None:
    s = ThrottleState(Throttle(threshold=RateLimit(5, 60)))
    ds = [s.offer("", float(i)) for i in range(12)]
    assert [i + 1 for i, d in enumerate(ds) if d.fire] == [5, 10]
    assert ds[4].count == 5 and ds[9].count == 5
    assert ds[0] == Decision(False, BELOW_THRESHOLD, "", 1, 0)
    assert [d.count for d in ds[5:9]] == [1, 2, 3, 4]  # the count started again


def test_threshold_window_slides_and_a_match_exactly_per_s_older_does_not_count() -> None:
    s = ThrottleState(Throttle(threshold=RateLimit(3, 10)))
    # 0 and 10 are exactly 10 s apart: at 10 the window holds (10); 3 matches within 10 s
    # only at 10, 15, 19.5
    assert fires(s, [0.0, 5.0, 10.0, 15.0, 19.5]) == [19.5]
    s2 = ThrottleState(Throttle(threshold=RateLimit(2, 10)))
    assert fires(s2, [0.0, 10.0, 20.0, 30.0]) == []
    assert fires(s2, [39.999]) == [39.999]


def test_track_by_keys_are_counted_separately() -> None:
    s = ThrottleState(Throttle(threshold=RateLimit(2, 60)))
    assert not s.offer("node1", 0).fire
    assert not s.offer("node2", 1).fire
    d = s.offer("node1", 2)
    assert d.fire and d.key == "node1" and d.count == 2
    assert s.offer("node2", 3).fire


def test_suppress_holds_back_repeats_and_reports_the_count_with_the_next_firing() -> None:
    s = ThrottleState(Throttle(suppress=10))
    assert s.offer("a", 0).fire
    held = [s.offer("a", t) for t in (1, 5, 9.99)]
    assert all(d == Decision(False, SUPPRESSED, "a", 1, 0) for d in held)
    assert s.offer("b", 5).fire  # another key is not suppressed
    d = s.offer("a", 10.0)  # the period is [0, 10): at 10 it fires again
    assert d.fire and d.suppressed == 3
    assert not s.offer("a", 19).fire
    assert s.offer("a", 20).suppressed == 1


def test_threshold_is_evaluated_before_suppression() -> None:
    """Below-threshold matches during a suppression period are not 'suppressed'; a
    threshold-satisfying candidate is, and it empties the window like a firing."""
    s = ThrottleState(Throttle(threshold=RateLimit(2, 100), suppress=50))
    out = [s.offer("", float(t)) for t in (0, 1, 2, 3, 4, 60, 61)]
    assert [(d.fire, d.reason, d.count) for d in out] == [
        (False, BELOW_THRESHOLD, 1),
        (True, None, 2),
        (False, BELOW_THRESHOLD, 1),
        (False, SUPPRESSED, 2),
        (False, BELOW_THRESHOLD, 1),  # the suppressed candidate emptied the window
        (True, None, 2),  # 4 and 60 are within 100 s
        (False, BELOW_THRESHOLD, 1),
    ]
    assert out[5].suppressed == 1


def test_deadline_and_take_expired_report_a_held_count_once() -> None:
    s = ThrottleState(Throttle(suppress=30))
    s.offer("x", 100)
    assert s.deadline() is None  # nothing held back yet
    s.offer("x", 110)
    s.offer("x", 120)
    assert s.deadline() == 130
    assert s.take_expired(129.9) == []
    assert s.take_expired(130) == [("x", 2)]
    assert s.deadline() is None and s.take_expired(1000) == []
    d = s.offer("x", 131)  # the period ended: fires, and the count was reported already
    assert d.fire and d.suppressed == 0


def test_a_firing_after_the_period_reports_the_count_and_clears_the_deadline() -> None:
    s = ThrottleState(Throttle(suppress=30))
    s.offer("x", 0)
    s.offer("x", 1)
    assert s.offer("x", 40).suppressed == 1
    assert s.deadline() is None and s.take_expired(100) == []


def test_take_all_returns_every_unreported_count_at_stop() -> None:
    s = ThrottleState(Throttle(suppress=30))
    for k in ("a", "b", "c"):
        s.offer(k, 0)
    s.offer("a", 1)
    s.offer("a", 2)
    s.offer("c", 3)
    assert sorted(s.take_all()) == [("a", 2), ("c", 1)]
    assert s.take_all() == [] and s.deadline() is None


def test_lru_eviction_keeps_recent_keys_and_reports_an_evicted_held_count() -> None:
    s = ThrottleState(Throttle(suppress=100), max_keys=2)
    s.offer("a", 0)
    s.offer("a", 1)  # held 1
    s.offer("b", 2)
    s.offer("a", 3)  # held 2; "a" is now the most recent
    s.offer("c", 4)  # evicts "b" (nothing held)
    s.offer("c", 4.5)  # held 1, due at 104
    assert s.evicted == 1 and len(s) == 2
    assert s.deadline() == 100
    s.offer("a", 4.7)  # held 3; "c" is now the least recent
    s.offer("d", 5)  # evicts "c" with its held-back firing
    assert s.evicted == 2
    assert s.deadline() == 5  # reported at once, before a's period ends
    assert s.take_expired(5) == [("c", 1)]
    assert s.deadline() == 100
    assert s.offer("c", 6).fire  # it starts afresh


def test_keys_holding_nothing_are_forgotten_before_live_keys_are_evicted() -> None:
    s = ThrottleState(Throttle(threshold=RateLimit(3, 10)), max_keys=2)
    s.offer("old", 0)  # its window ages out at 10
    s.offer("live", 15)
    s.offer("live", 16)
    s.offer("new", 17)  # "old" holds nothing any more: forgotten, not an eviction
    assert s.evicted == 0
    assert s.offer("live", 18).fire


def test_take_expired_forgets_keys_whose_state_ended() -> None:
    s = ThrottleState(Throttle(suppress=5))
    for i in range(50):
        s.offer(f"k{i}", float(i) / 10)
    assert len(s) == 50
    s.take_expired(100)
    assert len(s) == 0


def test_keys_whose_held_count_was_reported_are_forgotten() -> None:
    s = ThrottleState(Throttle(suppress=5))
    for i in range(200):
        s.offer(f"k{i}", 0)
    for i in reversed(range(200)):  # the least recently offered key stays alive longest
        s.offer(f"k{i}", 1 + (199 - i) * 0.01)
    s.offer("k0", 10)  # fires: k0 holds a running period, the others held counts
    assert len(s.take_expired(10)) == 199
    assert len(s) == 1


# ------------------------------------------------------------------ reference model


class Ref:
    """The semantics written as plainly as possible: lists of times, no bounds."""

    def __init__(self, th: Optional[RateLimit], sup: Optional[float]) -> None:
        self.th, self.sup = th, sup
        self.times: Dict[str, List[float]] = defaultdict(list)
        self.fired: Dict[str, float] = {}
        self.held: Dict[str, int] = defaultdict(int)

    def offer(self, key: str, now: float) -> Tuple[bool, Optional[str], int, int]:
        c = 1
        if self.th is not None:
            w = [t for t in self.times[key] if t > now - self.th.per_s] + [now]
            if len(w) < self.th.count:
                self.times[key] = w
                return (False, BELOW_THRESHOLD, len(w), 0)
            self.times[key] = []
            c = len(w)
        if self.sup and key in self.fired and now < self.fired[key] + self.sup:
            self.held[key] += 1
            return (False, SUPPRESSED, c, 0)
        h = self.held.pop(key, 0)
        self.fired[key] = now
        return (True, None, c, h)

    def deadline(self) -> Optional[float]:
        ds = [self.fired[k] + (self.sup or 0) for k, h in self.held.items() if h]
        return min(ds) if ds else None

    def take_expired(self, now: float) -> List[Tuple[str, int]]:
        out = []
        for k, h in list(self.held.items()):
            if h and now >= self.fired[k] + (self.sup or 0):
                out.append((k, h))
                del self.held[k]
        return sorted(out)

    def take_all(self) -> List[Tuple[str, int]]:
        out = sorted((k, h) for k, h in self.held.items() if h)
        self.held.clear()
        return out


throttles = st.builds(
    Throttle,
    threshold=st.one_of(
        st.none(), st.builds(RateLimit, st.integers(1, 4), st.sampled_from([0.5, 1.0, 3.0, 10.0]))
    ),
    suppress=st.one_of(st.none(), st.sampled_from([0.5, 1.0, 2.5, 5.0])),
)
ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("offer"),
            st.sampled_from(["", "a", "b", "c"]),
            st.sampled_from([0, 0.25, 0.5, 1, 3]),
        ),
        st.tuples(st.just("expire"), st.just(""), st.sampled_from([0, 0.5, 2])),
        st.tuples(st.just("deadline"), st.just(""), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(throttles, ops)
def test_matches_the_reference_model(th: Throttle, seq: List[Tuple[str, str, float]]) -> None:
    s = ThrottleState(th)
    ref = Ref(th.threshold, th.suppress)
    now = 0.0
    for op, key, dt in seq:
        now += dt
        if op == "offer":
            d = s.offer(key, now)
            assert (d.fire, d.reason, d.count, d.suppressed) == ref.offer(key, now)
            assert d.key == key
        elif op == "expire":
            assert sorted(s.take_expired(now)) == ref.take_expired(now)
        else:
            assert s.deadline() == ref.deadline()
    assert sorted(s.take_all()) == ref.take_all()


@settings(max_examples=200, deadline=None)
@given(throttles, ops)
def test_take_expired_does_not_change_which_matches_fire(
    th: Throttle, seq: List[Tuple[str, str, float]]
) -> None:
    a, b = ThrottleState(th), ThrottleState(th)
    now = 0.0
    for op, key, dt in seq:
        now += dt
        if op == "offer":
            da, db = a.offer(key, now), b.offer(key, now)
            assert (da.fire, da.reason, da.count) == (db.fire, db.reason, db.count)
        else:
            a.take_expired(now)


@settings(max_examples=300, deadline=None)
@given(
    throttles,
    st.integers(1, 3),
    st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from([0, 0.25, 1, 4])), max_size=100),
    st.lists(st.booleans(), min_size=100, max_size=100),
)
def test_bounded_memory_and_every_held_count_reported_once(
    th: Throttle, max_keys: int, seq: List[Tuple[str, float]], expire_after: List[bool]
) -> None:
    s = ThrottleState(th, max_keys=max_keys)
    limit = th.threshold.count if th.threshold is not None else 1
    now = 0.0
    held = reported = 0
    for (key, dt), exp in zip(seq, expire_after):
        now += dt
        d = s.offer(key, now)
        held += d.reason == SUPPRESSED
        reported += d.suppressed
        assert len(s) <= max_keys
        assert all(len(k.times) <= limit for k in s._keys.values())
        dl = s.deadline()
        if exp and dl is not None and dl <= now:
            got = s.take_expired(now)
            assert got and all(n > 0 for _k, n in got)
            reported += sum(n for _k, n in got)
    reported += sum(n for _k, n in s.take_all())
    assert held == reported + s.lost


def test_engine_mode_carries_held_counts_to_the_next_firing() -> None:
    """report_at_period_end=False: the period's end reports nothing; the key's next firing
    carries every firing held back before it (SUPPRESSED), however late it comes; the stop
    reports what no firing carried."""
    from sidecar.model import Throttle

    ts = ThrottleState(Throttle(suppress=10.0), report_at_period_end=False)
    assert ts.offer("a", 0.0).fire
    assert not ts.offer("a", 1.0).fire and not ts.offer("a", 2.0).fire
    assert ts.deadline() is None and ts.take_expired(50.0) == []
    d = ts.offer("a", 100.0)
    assert d.fire and d.suppressed == 2
    assert not ts.offer("a", 101.0).fire
    assert ts.take_all() == [("a", 1)]
