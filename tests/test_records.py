"""sidecar.records: multi-line records and the line numbering they rely on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.matcher import MultiMatcher, _split_lines
from sidecar.model import MULTILINE_PRESETS, MultiLine, RegexTrigger
from sidecar.records import (
    CUT_MARKER,
    GatheredRecord,
    RecordGatherer,
    gather_chunk,
    iter_lines,
)
from sidecar.tailer import Tailer, _count_lines
from sidecar.types import Chunk, LineMatch

TB_START, TB_END = MULTILINE_PRESETS["python_traceback"]
TRACEBACK = MultiLine(end=TB_END, preset="python_traceback")

CHAINED = """
def f(x):
    return 1 / x
try:
    f(0)
except ZeroDivisionError:
    try:
        {}["k"]
    except KeyError as e:
        raise ValueError("bad value") from e
"""


def python_stderr(code: str) -> bytes:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert r.returncode == 1
    return r.stderr


def lm(lineno: int, line: str, path: str = "f") -> LineMatch:
    return LineMatch(path, lineno, line, line)


def matcher(pattern: str) -> MultiMatcher:
    return MultiMatcher([(0, RegexTrigger(pattern=pattern))])


def run_chunks(
    spec: MultiLine, start: str, chunks: Sequence[Chunk], now: float = 0.0
) -> List[GatheredRecord]:
    """What the engine does: scan each chunk for start lines, gather, flush at stop."""
    g = RecordGatherer(spec)
    m = matcher(start)
    out: List[GatheredRecord] = []
    for ch in chunks:
        out += gather_chunk(g, ch, [x for _k, x in m.scan(ch)], now)
    last = g.flush()
    if last is not None:
        out.append(last)
    return out


def tail_file(path: Path, pieces: Sequence[bytes], **kw: int) -> List[Chunk]:
    """Write ``pieces`` one by one, reading with a real Tailer after each; flush at the end."""
    path.write_bytes(b"")
    t = Tailer(str(path), **kw)  # type: ignore[arg-type]
    chunks: List[Chunk] = []
    with open(path, "ab") as f:
        for p in pieces:
            f.write(p)
            f.flush()
            chunks += t.read()
    last = t.flush()
    if last is not None:
        chunks.append(last)
    t.close()
    return chunks


# ------------------------------------------------------------------ real tracebacks


def test_a_real_chained_traceback_gives_one_record_per_exception(tmp_path: Path) -> None:
    err = python_stderr(CHAINED)
    recs = run_chunks(TRACEBACK, TB_START, tail_file(tmp_path / "err", [err]))
    assert [r.reason for r in recs] == ["end", "end", "end"]
    assert [r.lines[-1] for r in recs] == [
        "ZeroDivisionError: division by zero",
        "KeyError: 'k'",
        "ValueError: bad value",
    ]
    lines = err.decode().splitlines()
    for r in recs:
        assert r.lines[0] == "Traceback (most recent call last):"
        assert r.start.line == r.lines[0] and r.start.lineno == r.first_lineno
        assert list(r.lines) == lines[r.first_lineno - 1 : r.last_lineno]
        assert all(ln.startswith(" ") for ln in r.lines[1:-1])
        assert r.text == "\n".join(r.lines)
    assert not any("During handling" in ln for r in recs for ln in r.lines)


def test_a_traceback_split_over_reads_and_chunks_is_gathered_whole(tmp_path: Path) -> None:
    err = python_stderr(CHAINED)
    whole = run_chunks(TRACEBACK, TB_START, tail_file(tmp_path / "a", [err]))
    for cut in range(1, len(err), 7):
        chunks = tail_file(tmp_path / "b", [err[:cut], err[cut:]])
        got = run_chunks(TRACEBACK, TB_START, chunks)
        assert [(r.lines, r.reason, r.first_lineno) for r in got] == [
            (r.lines, r.reason, r.first_lineno) for r in whole
        ]


def test_crlf_file_gives_the_same_records_without_carriage_returns(tmp_path: Path) -> None:
    err = python_stderr(CHAINED)
    lf = run_chunks(TRACEBACK, TB_START, tail_file(tmp_path / "lf", [err]))
    crlf_bytes = err.replace(b"\n", b"\r\n")
    # the \r and the \n of a terminator in different reads
    half = crlf_bytes.index(b"\r\n", len(crlf_bytes) // 2) + 1
    crlf = run_chunks(
        TRACEBACK, TB_START, tail_file(tmp_path / "crlf", [crlf_bytes[:half], crlf_bytes[half:]])
    )
    assert [(r.lines, r.first_lineno, r.last_lineno) for r in crlf] == [
        (r.lines, r.first_lineno, r.last_lineno) for r in lf
    ]
    assert not any("\r" in ln for r in crlf for ln in r.lines)


def test_traceback_still_open_at_stop_is_flushed_with_reason_stop(tmp_path: Path) -> None:
    err = python_stderr(CHAINED)
    head = err[: err.index(b"ZeroDivisionError")]
    recs = run_chunks(TRACEBACK, TB_START, tail_file(tmp_path / "e", [head]))
    assert [r.reason for r in recs] == ["stop"]
    assert recs[0].lines[-1] == '  File "<string>", line 3, in f'


# ------------------------------------------------------------------ the gatherer


def test_block_between_start_and_end_patterns_with_end_groups() -> None:
    data = b"noise\nBEGIN config\n  a = 1\n  b = 2\nEND config (2 keys)\nafter\n"
    recs = run_chunks(
        MultiLine(end=r"^END \w+ \((\d+) keys\)"), r"^BEGIN", [Chunk("f", data, 0, 1)]
    )
    assert len(recs) == 1
    r = recs[0]
    assert r.lines == ("BEGIN config", "  a = 1", "  b = 2", "END config (2 keys)")
    assert (r.first_lineno, r.last_lineno, r.reason, r.end_groups) == (2, 5, "end", ("2",))


def test_start_line_is_not_tested_against_the_end_pattern() -> None:
    g = RecordGatherer(MultiLine(end=r"^\S"))
    assert g.start(lm(1, "Traceback (most recent call last):"), 0) is None
    assert g.is_open


def test_max_lines_closes_the_record_with_that_many_lines() -> None:
    g = RecordGatherer(MultiLine(end="^END", max_lines=3))
    g.start(lm(10, "START"), 0)
    assert g.feed(11, "a", 0) is None
    r = g.feed(12, "b", 0)
    assert r is not None and r.lines == ("START", "a", "b") and r.reason == "max_lines"
    assert not g.is_open and g.feed(13, "END", 0) is None and g.deadline() is None


def test_an_end_line_that_is_also_the_max_lines_th_line_counts_as_end() -> None:
    g = RecordGatherer(MultiLine(end="^END", max_lines=2))
    g.start(lm(1, "START"), 0)
    r = g.feed(2, "END", 0)
    assert r is not None and r.reason == "end"


def test_timeout_counts_from_the_last_line() -> None:
    g = RecordGatherer(MultiLine(end="^END", timeout=5))
    g.start(lm(1, "START"), 100.0)
    assert g.deadline() == 105.0
    g.feed(2, "more", 103.0)
    assert g.deadline() == 108.0
    assert g.expire(107.9) is None and g.is_open
    r = g.expire(108.0)
    assert r is not None and r.reason == "timeout" and r.lines == ("START", "more")
    assert g.deadline() is None and g.expire(200) is None


def test_a_new_start_closes_the_open_record_with_reason_next_start() -> None:
    g = RecordGatherer(MultiLine(end="^END"))
    g.start(lm(1, "START 1"), 0)
    g.feed(2, "x", 0)
    r = g.start(lm(3, "START 2"), 1)
    assert r is not None and r.reason == "next_start" and r.lines == ("START 1", "x")
    assert r.start.line == "START 1" and r.last_lineno == 2
    f = g.flush()
    assert f is not None and f.reason == "stop" and f.lines == ("START 2",)
    assert g.flush() is None


def test_lines_not_past_the_last_one_are_ignored() -> None:
    g = RecordGatherer(MultiLine(end="^END"))
    g.start(lm(5, "START"), 0)
    assert g.feed(5, "END", 0) is None and g.feed(3, "END", 0) is None
    assert g.feed(6, "x", 0) is None and g.feed(6, "END", 0) is None
    r = g.feed(8, "END", 0)
    assert r is not None and r.lines == ("START", "x", "END") and r.last_lineno == 8


def test_feed_without_an_open_record_does_nothing() -> None:
    g = RecordGatherer(MultiLine(end="x"))
    assert g.feed(1, "x", 0) is None and g.expire(1e9) is None and g.flush() is None


def test_max_lines_one_hands_the_start_line_over_at_once() -> None:
    g = RecordGatherer(MultiLine(end="^END", max_lines=1, timeout=60))
    g.start(lm(1, "START"), 7.0)
    assert g.deadline() == 7.0
    r = g.expire(7.0)
    assert r is not None and r.reason == "max_lines" and r.lines == ("START",)
    g.start(lm(2, "START"), 8.0)
    r = g.feed(3, "END", 8.0)
    assert r is not None and r.reason == "max_lines" and r.lines == ("START",)
    g.start(lm(4, "START"), 9.0)
    r = g.start(lm(5, "START"), 9.0)
    assert r is not None and r.reason == "max_lines" and r.first_lineno == 4


def test_long_lines_are_cut_with_a_marker_and_the_record_has_a_budget() -> None:
    g = RecordGatherer(MultiLine(end="END$", max_lines=50), line_cap=10, max_chars=35)
    g.start(lm(1, "S" * 30), 0)
    g.feed(2, "short", 0)
    g.feed(3, "y" * 30, 0)
    g.feed(4, "z" * 30, 0)
    r = g.feed(5, "x" * 20 + "END", 0)  # END is past the cap: not seen
    assert r is None
    r = g.flush()
    assert r is not None
    assert r.lines[0] == "S" * 10 + CUT_MARKER and r.lines[1] == "short"
    assert all(len(ln) <= 10 + len(CUT_MARKER) for ln in r.lines)
    assert r.lines[-1] == CUT_MARKER  # the budget ran out
    assert len(r.text) <= 35 + len(r.lines) * (len(CUT_MARKER) + 1)


def test_end_is_searched_in_the_cut_line() -> None:
    g = RecordGatherer(MultiLine(end="^Error"), line_cap=8)
    g.start(lm(1, "S"), 0)
    r = g.feed(2, "Error: " + "x" * 100, 0)
    assert r is not None and r.reason == "end" and r.lines[1] == "Error: x" + CUT_MARKER


def test_an_invalid_end_regex_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid end regex"):
        RecordGatherer(MultiLine(end="(unclosed"))


# ------------------------------------------------------------------ gather_chunk


def test_gather_chunk_continues_an_open_record_into_the_next_chunk() -> None:
    g = RecordGatherer(MultiLine(end="^END"))
    c1 = Chunk("f", b"x\nSTART\na\n", 0, 1)
    c2 = Chunk("f", b"b\nEND\nc\nSTART\nd\n", 10, 4)
    assert gather_chunk(g, c1, [lm(2, "START")], 0) == []
    recs = gather_chunk(g, c2, [lm(7, "START")], 1)
    assert [(r.lines, r.reason) for r in recs] == [(("START", "a", "b", "END"), "end")]
    assert g.is_open and g.last_lineno == 8


def test_gather_chunk_ignores_repeated_or_out_of_order_starts() -> None:
    g = RecordGatherer(MultiLine(end="^END"))
    c = Chunk("f", b"START\na\nEND\n", 0, 1)
    recs = gather_chunk(g, c, [lm(1, "START"), lm(1, "START")], 0)
    assert [r.lines for r in recs] == [("START", "a", "END")]


def naive_records(
    lines: Sequence[str], start: str, end: str, max_lines: int
) -> List[Tuple[Tuple[str, ...], int, str]]:
    out: List[Tuple[Tuple[str, ...], int, str]] = []
    cur: Optional[List[str]] = None
    first = 0
    for i, line in enumerate(lines, start=1):
        if re.search(start, line):
            if cur is not None:
                out.append((tuple(cur), first, "next_start"))
            cur, first = [line], i
            if max_lines <= 1:
                out.append((tuple(cur), first, "max_lines"))
                cur = None
            continue
        if cur is None:
            continue
        cur.append(line)
        if re.search(end, line):
            out.append((tuple(cur), first, "end"))
            cur = None
        elif len(cur) >= max_lines:
            out.append((tuple(cur), first, "max_lines"))
            cur = None
    if cur is not None:
        out.append((tuple(cur), first, "stop"))
    return out


TERMS = [b"\n", b"\r\n", b"\r"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["S", "E", "x", "", "S E", "\xe9", "yy"]), st.sampled_from(TERMS)
        ),
        max_size=60,
    ),
    st.lists(st.integers(0, 60), max_size=6),
    st.integers(1, 6),
)
def test_gather_chunk_over_any_chunking_agrees_with_a_naive_line_loop(
    body: List[Tuple[str, bytes]], cuts: List[int], max_lines: int
) -> None:
    raw = [t.encode() + term for t, term in body]
    lines = _split_lines(b"".join(raw))  # ("\r", "" + "\n") is one \r\n
    # never between the \r and the \n of a \r\n (the tailer never cuts there)
    ok = [
        c
        for c in cuts
        if 0 < c < len(raw) and not (raw[c - 1][-1:] == b"\r" and raw[c][:1] == b"\n")
    ]
    bounds = sorted({0, len(raw), *ok})
    chunks = []
    lineno = 1
    for a, b in zip(bounds, bounds[1:]):
        data = b"".join(raw[a:b])
        chunks.append(Chunk("f", data, 0, lineno))
        lineno += _count_lines(data)
    got = run_chunks(MultiLine(end="E", max_lines=max_lines), "^S", chunks)
    want = naive_records(lines, "^S", "E", max_lines)
    assert [(r.lines, r.first_lineno, r.reason) for r in got] == want
    for r in got:
        assert r.last_lineno == r.first_lineno + len(r.lines) - 1
        assert len(r.lines) <= max_lines


# ------------------------------------------------------------------ iter_lines


def reference_lines(chunk: Chunk) -> List[Tuple[int, str]]:
    return [(chunk.lineno + i, ln) for i, ln in enumerate(_split_lines(chunk.data))]


def unterminated(data: bytes) -> bool:
    return bool(data) and data[-1:] not in (b"\n", b"\r")


BYTES = st.lists(
    st.sampled_from(
        [b"a", b"\r", b"\n", b"\r\n", b"\xff", b"\xc3", b"\xa9", "\u20ac".encode(), b" "]
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(BYTES, st.integers(1, 1000), st.integers(-5, 60))
def test_iter_lines_agrees_with_the_matcher_and_the_tailers_count(
    data: bytes, first: int, after: int
) -> None:
    chunk = Chunk("f", data, 0, first)
    every = list(iter_lines(chunk))
    assert every == reference_lines(chunk)
    assert len(every) == _count_lines(data) + unterminated(data)
    # the matcher numbers and decodes each line the same way
    assert every == [(m.lineno, m.line) for _k, m in matcher("^").scan(chunk)]
    a = first + after
    assert list(iter_lines(chunk, a)) == [x for x in every if x[0] > a]


LONG = st.lists(
    st.tuples(
        st.sampled_from([b"", b"x", b"abc" * 20, b"\xe2\x82", b"\xe2\x82\xac" * 3]),
        st.sampled_from(TERMS),
    ),
    min_size=1,
    max_size=400,
).map(lambda parts: b"".join(a + b for a, b in parts))


@settings(max_examples=200, deadline=None)
@given(LONG, st.booleans(), st.data())
def test_iter_lines_skips_many_lines_correctly(data: bytes, tail: bool, d: st.DataObject) -> None:
    """Long chunks with many lines: the bisecting skip lands on the right line."""
    if tail:
        data += b"partial \xff"
    chunk = Chunk("f", data, 0, 3)
    every = reference_lines(chunk)
    a = d.draw(st.integers(0, len(every) + 5)) + 2
    assert list(iter_lines(chunk, a)) == [x for x in every if x[0] > a]


@pytest.mark.parametrize("width", [0, 1, 3, 93, 190])
@pytest.mark.parametrize("term", [b"\r\n", b"\r\r\n"])
def test_iter_lines_skip_never_counts_a_crlf_twice(width: int, term: bytes) -> None:
    """The skip counts ranges cut at byte positions: one that falls between the \r and
    the \n of a \r\n must not count that terminator twice."""
    data = b"".join(b"%05d" % i + b"x" * width + term for i in range(500))
    chunk = Chunk("f", data, 0, 1)
    every = reference_lines(chunk)
    for a in range(0, len(every) + 2):
        assert list(iter_lines(chunk, a))[:1] == [x for x in every if x[0] > a][:1]


def test_iter_lines_of_a_cut_or_partial_chunk_ends_with_its_unterminated_line() -> None:
    assert list(iter_lines(Chunk("f", b"a" * 10, 0, 7, cut=True))) == [(7, "a" * 10)]
    assert list(iter_lines(Chunk("f", b"x\r\ny", 0, 1, partial=True), 1)) == [(2, "y")]
    assert list(iter_lines(Chunk("f", b"", 0, 1))) == []


def test_iter_lines_near_the_end_of_a_big_chunk_is_lazy() -> None:
    """Taking 3 lines after a start line at the end of a 1 MiB chunk decodes only those:
    a chunk whose other lines would fail to decode strictly still gives exact lines."""
    body = b"\xff" * 40 + b"\n"
    data = body * 25_000 + b"START\r\nline 1\r\nline 2\r\nline 3\r\n"
    chunk = Chunk("f", data, 0, 1)
    got = list(iter_lines(chunk, 25_001))
    assert got == [(25_002, "line 1"), (25_003, "line 2"), (25_004, "line 3")]


@settings(max_examples=60, deadline=None)
@given(
    BYTES,
    st.lists(st.integers(0, 40), max_size=5),
    st.integers(2, 12),
    st.integers(1, 9),
)
def test_iter_lines_numbers_agree_with_a_real_tailers_chunks(
    data: bytes, cuts: List[int], max_line: int, chunk_size: int
) -> None:
    """Each chunk's first line number is the previous chunk's plus the lines iter_lines
    found in it; with no line cut the lines are the whole file's lines."""
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    pieces = [data[a:b] for a, b in zip(bounds, bounds[1:])]
    with tempfile.TemporaryDirectory() as td:
        path = Path(td) / "log"
        for ml in (max_line, 1 << 20):
            chunks = tail_file(path, pieces, max_line=ml, chunk_size=chunk_size)
            expect = 1
            lines: List[Tuple[int, str]] = []
            for ch in chunks:
                got = list(iter_lines(ch))
                assert ch.lineno == expect
                if ch.cut:
                    assert len(got) == 1
                expect += len(got)
                lines += got
            if ml == 1 << 20:
                assert lines == reference_lines(Chunk("f", data, 0, 1))
            os.unlink(path)
