"""The CPU-time limit of Python re searches (sidecar.budget), the matcher's and the multi-line
records' use of it. Real signals, real CPU time: each slow case is cut after ~0.05 s."""

from __future__ import annotations

import re
import resource
import signal
import threading
from typing import Any, List

import pytest

from sidecar.budget import BudgetExceeded, SearchBudget
from sidecar.matcher import MultiMatcher
from sidecar.model import MultiLine, RegexTrigger
from sidecar.records import RecordGatherer, gather_chunk
from sidecar.types import Chunk, LineMatch

EVIL = re.compile(r"(a|a?)+$")  # exponential on "aaa...a!" (RE2 cannot take it: empty repeat)
EVIL_LINE = "a" * 40 + "!"


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def test_a_runaway_search_is_cut_after_its_cpu_limit() -> None:
    b = SearchBudget(0.05)
    t0 = _cpu()
    with pytest.raises(BudgetExceeded):
        b.search(EVIL, EVIL_LINE)
    used = _cpu() - t0
    b.done()
    assert 0.05 <= used < 1.0, used  # at least the limit; far from the search's years


def test_done_stops_the_timer_and_puts_the_previous_handler_back() -> None:
    seen: List[int] = []

    def mine(signum: int, frame: Any) -> None:
        seen.append(signum)

    old = signal.signal(signal.SIGVTALRM, mine)
    try:
        b = SearchBudget(0.05)
        assert b.search(re.compile("b"), "abc") is not None
        assert signal.getitimer(signal.ITIMER_VIRTUAL)[0] > 0  # armed by the search
        b.done()
        assert signal.getitimer(signal.ITIMER_VIRTUAL) == (0.0, 0.0)
        assert signal.getsignal(signal.SIGVTALRM) is mine
        b.done()  # a second done is a no-op
    finally:
        signal.signal(signal.SIGVTALRM, old)


def test_many_quick_searches_are_not_cut_however_long_they_take_together() -> None:
    """The limit is per search: a batch that uses many times the limit in all, in quick
    searches, runs to its end."""
    b = SearchBudget(0.02)
    pat = re.compile(r"(\w+)@(\w+)\.com")
    line = "x" * 200 + " user@example.com"
    t0 = _cpu()
    n = 0
    try:
        while _cpu() - t0 < 0.2:  # ten limits' worth of CPU, in searches of well under one
            for _ in range(50):
                assert b.search(pat, line) is not None
                n += 1
    finally:
        b.done()
    assert _cpu() - t0 >= 0.2 and n >= 50


def test_no_limit_when_it_is_zero_or_off_the_main_thread() -> None:
    """limit 0 arms nothing; in another thread no handler can be set: searches run whole."""
    b = SearchBudget(0)
    assert b.search(re.compile(r"(a+)+$"), "a" * 18 + "!") is None
    assert signal.getitimer(signal.ITIMER_VIRTUAL) == (0.0, 0.0)
    b.done()

    out: List[Any] = []
    b2 = SearchBudget(0.001)

    def work() -> None:
        out.append(b2.search(re.compile(r"(a+)+$"), "a" * 20 + "!"))  # ~0.1 s, not cut
        b2.done()

    t = threading.Thread(target=work)
    t.start()
    t.join(30)
    assert out == [None]
    assert signal.getitimer(signal.ITIMER_VIRTUAL) == (0.0, 0.0)


def _chunk(lines: List[str], path: str = "/x/job.log") -> Chunk:
    return Chunk(path=path, data="".join(s + "\n" for s in lines).encode(), offset=0, lineno=1)


def test_matcher_skips_the_line_it_gave_up_on_and_says_which() -> None:
    """The evil rule gives up on line 2 only: it still matches lines 1 and 3, the other rule
    matches all its lines, and timed_out names (rule, file, line)."""
    mm = MultiMatcher(
        [("evil", RegexTrigger(pattern=EVIL.pattern)), ("plain", RegexTrigger(pattern="a"))],
        time_limit=0.05,
    )
    hits = mm.scan(_chunk(["a", EVIL_LINE, "aa"]))
    assert [(k, m.lineno) for k, m in hits] == [
        ("evil", 1), ("plain", 1), ("plain", 2), ("evil", 3), ("plain", 3)
    ]
    assert mm.timed_out == [("evil", "/x/job.log", 2)]
    assert signal.getitimer(signal.ITIMER_VIRTUAL) == (0.0, 0.0)  # disarmed after the scan


def test_matcher_line_by_line_fallback_has_the_limit_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path taken when the fast scan fails (or re2 is missing) is limited as well."""
    mm = MultiMatcher([("evil", RegexTrigger(pattern=EVIL.pattern))], time_limit=0.05)

    def broken(*a: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(mm, "_scan", broken)
    hits = mm.scan(_chunk([EVIL_LINE, "a"]))
    assert [m.lineno for _k, m in hits] == [2]
    assert mm.timed_out == [("evil", "/x/job.log", 1)]


def test_multiline_end_regex_that_gives_up_does_not_end_the_record() -> None:
    b = SearchBudget(0.05)
    g = RecordGatherer(MultiLine(end=r"^(a+)+$", max_lines=5, timeout=5.0), budget=b)
    start = LineMatch("/x/job.log", 1, "BEGIN", "BEGIN", (), {})
    try:
        recs = list(gather_chunk(g, _chunk(["BEGIN", EVIL_LINE, "a"]), [start], 0.0))
    finally:
        b.done()
    assert [(r.reason, r.last_lineno) for r in recs] == [("end", 3)]
    assert g.timed_out == [2]
