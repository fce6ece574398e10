"""Multi-line records (``model.MultiLine``): a start line and the lines that follow it.

Pure logic: no I/O, no clock (the engine passes ``now``, monotonic seconds).

A :class:`RecordGatherer` (one per watcher and file) is opened by a line the trigger's
pattern matched (:meth:`RecordGatherer.start`) and takes the lines after it
(:meth:`RecordGatherer.feed`, in file order) until one of:

* ``end``: a following line that the ``end`` regex matches (Python ``re``, searched); that
  line is the record's last. The start line itself is never tested against ``end`` (the
  ``python_traceback`` preset's end, ``^\\S``, matches its header too).
* ``max_lines``: the record holds ``max_lines`` lines, the start line included.
* ``timeout``: no line came for ``timeout`` seconds (:meth:`RecordGatherer.deadline`, then
  :meth:`RecordGatherer.expire`).
* ``next_start``: another start line came first; it opens the next record.
* ``stop``: :meth:`RecordGatherer.flush` (at shutdown, or when the file is truncated or
  replaced: line numbers start again at 1 and lines numbered at or below the record's last
  one are ignored).

Bounded: a record holds at most ``max_lines`` lines; each line is cut to ``line_cap``
characters and the whole record to ``max_chars`` characters (what is cut ends with
:data:`CUT_MARKER`); the ``end`` regex is searched in the line as cut to ``line_cap``.

:func:`iter_lines` and :func:`gather_chunk` turn the tailer's chunks into numbered lines
exactly as the tailer counts them and the matcher numbers and decodes them (``\\n``,
``\\r\\n`` and a lone ``\\r`` end a line; UTF-8 with invalid bytes replaced), without
decoding more of a chunk than the lines they hand out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, List, Optional, Pattern, Sequence, Tuple

from sidecar.budget import BudgetExceeded, SearchBudget
from sidecar.model import MultiLine
from sidecar.types import Chunk, LineMatch

__all__ = [
    "CUT_MARKER",
    "LINE_CAP",
    "MAX_CHARS",
    "GatheredRecord",
    "RecordGatherer",
    "gather_chunk",
    "iter_lines",
]

#: characters of one line kept in a record
LINE_CAP = 64 << 10
#: characters of a whole record (the lines joined by newlines, roughly)
MAX_CHARS = 256 << 10
#: appended to a line that was cut
CUT_MARKER = " [...cut]"

REASONS = ("end", "max_lines", "timeout", "next_start", "stop")

_TERM = re.compile(rb"[\r\n]")
_LF = 0x0A
_CR = 0x0D


@dataclass(frozen=True)
class GatheredRecord:
    """A finished record. ``lines``: the start line first (the end line last when
    ``reason`` is "end"), decoded, without terminators, cut as the module docstring says.
    ``end_groups``: the end regex's groups on the end line (reason "end" only)."""

    start: LineMatch
    lines: Tuple[str, ...]
    first_lineno: int
    last_lineno: int
    reason: str
    end_groups: Tuple[Optional[str], ...] = ()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class RecordGatherer:
    """Gathers the records of one watcher in one file; see the module docstring.

    Raises ValueError when ``spec.end`` is not a valid Python regex. ``max_lines`` below 1 is
    taken as 1: a record of only its start line, full at once, handed over with reason
    "max_lines" by whatever comes next (a line, a start, :meth:`expire` at
    :meth:`deadline`, which is then its start time, or :meth:`flush`).
    """

    def __init__(
        self,
        spec: MultiLine,
        *,
        line_cap: int = LINE_CAP,
        max_chars: int = MAX_CHARS,
        budget: Optional[SearchBudget] = None,
    ) -> None:
        try:
            self._end: Pattern[str] = re.compile(spec.end)
        except (re.error, RecursionError, OverflowError, ValueError, TypeError) as e:
            raise ValueError(f"invalid end regex {spec.end!r}: {e}") from None
        self.spec = spec
        self._max_lines = max(1, int(spec.max_lines))
        self._timeout = max(0.0, float(spec.timeout))
        self._line_cap = max(1, int(line_cap))
        self._max_chars = max(1, int(max_chars))
        self._start: Optional[LineMatch] = None
        self._lines: List[str] = []
        self._first = 0
        self._last = 0
        self._chars = 0
        self._last_time = 0.0
        #: the end regex's CPU-time limit per line (the caller calls its ``done()``)
        self._budget = budget if budget is not None else SearchBudget(0)
        #: numbers of the lines the end regex gave up on (taken as not ending the record)
        self.timed_out: List[int] = []

    def take_timed_out(self) -> List[int]:
        """The lines the end regex gave up on since the last call (and forget them)."""
        out, self.timed_out = self.timed_out, []
        return out

    # ------------------------------------------------------------------ state
    @property
    def is_open(self) -> bool:
        return self._start is not None

    @property
    def last_lineno(self) -> int:
        """The number of the open record's last line (0 when none is open)."""
        return self._last if self._start is not None else 0

    def _full(self) -> bool:
        return len(self._lines) >= self._max_lines

    def deadline(self) -> Optional[float]:
        """When the open record times out (its last line's time + timeout; at once when it
        is already full), or None."""
        if self._start is None:
            return None
        if self._full():
            return self._last_time
        return self._last_time + self._timeout

    # ------------------------------------------------------------------ lines
    def _keep(self, line: str) -> str:
        """``line`` (already cut to the line cap) cut to what is left of the record's
        budget; counted in it."""
        room = self._max_chars - self._chars
        if len(line) > room:
            line = line[: max(0, room)] + CUT_MARKER
        self._chars += len(line) + 1
        return line

    def _close(self, reason: str, end_groups: Tuple[Optional[str], ...] = ()) -> GatheredRecord:
        assert self._start is not None
        if reason != "end" and self._full():
            reason = "max_lines"
        rec = GatheredRecord(
            self._start, tuple(self._lines), self._first, self._last, reason, end_groups
        )
        self._start = None
        self._lines = []
        self._chars = 0
        return rec

    def start(self, m: LineMatch, now: float) -> Optional[GatheredRecord]:
        """Open a record at the start line ``m``. Returns the record that was open (reason
        "next_start"), if any."""
        prev = self._close("next_start") if self._start is not None else None
        self._start = m
        line = m.line
        if len(line) > self._line_cap:
            line = line[: self._line_cap] + CUT_MARKER
        self._lines = [self._keep(line)]
        self._first = self._last = m.lineno
        self._last_time = now
        return prev

    def feed(self, lineno: int, line: str, now: float) -> Optional[GatheredRecord]:
        """The line numbered ``lineno`` of the file, after the open record's last line.
        Returns the record when this line closes it (reason "end": the line is its last;
        "max_lines"). Ignored when no record is open or ``lineno`` is not past the record's
        last line."""
        if self._start is None or lineno <= self._last:
            return None
        if self._full():  # max_lines == 1: the record was complete at its start line
            return self._close("max_lines")
        probe = line
        if len(line) > self._line_cap:
            probe = line[: self._line_cap]
            line = probe + CUT_MARKER
        self._lines.append(self._keep(line))
        self._last = lineno
        self._last_time = now
        try:
            m = self._budget.search(self._end, probe)
        except BudgetExceeded:
            self.timed_out.append(lineno)
            m = None
        if m is not None:
            return self._close("end", m.groups())
        if self._full():
            return self._close("max_lines")
        return None

    def expire(self, now: float) -> Optional[GatheredRecord]:
        """The open record, closed with reason "timeout", when its deadline has come."""
        d = self.deadline()
        if d is None or now < d:
            return None
        return self._close("timeout")

    def flush(self) -> Optional[GatheredRecord]:
        """The open record, closed with reason "stop" (shutdown, file truncated/replaced)."""
        return self._close("stop") if self._start is not None else None


# ---------------------------------------------------------------------------------------------
# lines of a chunk

#: below this many lines to skip (or bytes to search), terminators are found one by one
_FEW_LINES = 16
_FEW_BYTES = 512


def _ends(data: bytes, a: int, b: int, cr: bool) -> int:
    """Line ends in data[a:b] (neither a nor b splits a \\r\\n)."""
    n = data.count(b"\n", a, b)
    if cr:
        n += data.count(b"\r", a, b) - data.count(b"\r\n", a, b)
    return n


def _next_end(data: bytes, pos: int) -> Tuple[int, int]:
    """(where the line starting at ``pos`` ends, where the next one starts); (-1, len) if
    it has no terminator."""
    m = _TERM.search(data, pos)
    if m is None:
        return -1, len(data)
    e = m.start()
    nxt = e + 1
    if data[e] == _CR and nxt < len(data) and data[nxt] == _LF:
        nxt += 1
    return e, nxt


def _skip_lines(data: bytes, pos: int, k: int, cr: bool) -> int:
    """Where the line ``k`` lines after the one starting at ``pos`` starts (len(data) when
    there are fewer). Counted at C speed (``bytes.count``): ranges of doubling size from
    ``pos`` until one holds the k-th line end, then bisection of that range, so the work is
    proportional to the bytes skipped, not to the chunk; only the last few terminators are
    found one by one."""
    n = len(data)
    lo, hi = pos, n
    step = max(_FEW_BYTES, 64 * k)
    while k > _FEW_LINES:
        end = lo + step
        if end >= n:
            break
        if cr and data[end - 1] == _CR and data[end] == _LF:
            end += 1
        c = _ends(data, lo, end, cr)
        if c >= k:
            hi = end
            break
        k -= c
        lo = end
        step *= 2
    # the k-th line end after lo, if there is one, lies in [lo, hi)
    while k > _FEW_LINES and hi - lo > _FEW_BYTES:
        mid = (lo + hi) // 2
        if cr and data[mid - 1] == _CR and data[mid] == _LF:
            mid += 1
        c = _ends(data, lo, mid, cr)
        if c >= k:
            hi = mid
        else:
            k -= c
            lo = mid
    p = lo
    for _ in range(k):
        e, p = _next_end(data, p)
        if e < 0:
            return n
    return p


class _Cursor:
    """Forward-only reader of a chunk's numbered lines."""

    __slots__ = ("cr", "data", "lineno", "pos")

    def __init__(self, chunk: Chunk) -> None:
        self.data = chunk.data
        self.pos = 0
        self.lineno = chunk.lineno  # the number of the line starting at pos
        self.cr = b"\r" in self.data

    def seek(self, lineno: int) -> None:
        """Move forward to the line numbered ``lineno`` (never backwards)."""
        k = lineno - self.lineno
        if k > 0:
            self.pos = _skip_lines(self.data, self.pos, k, self.cr)
            self.lineno = lineno

    def next(self) -> Optional[Tuple[int, str]]:
        data, pos = self.data, self.pos
        if pos >= len(data):
            return None
        e, self.pos = _next_end(data, pos)
        raw = data[pos:] if e < 0 else data[pos:e]
        lineno = self.lineno
        self.lineno += 1
        return lineno, raw.decode("utf-8", "replace")


def iter_lines(chunk: Chunk, after_lineno: int = 0) -> Iterator[Tuple[int, str]]:
    """(line number, line) for the chunk's lines numbered above ``after_lineno``, in order.

    ``chunk.lineno`` is its first line's number. Lines end at ``\\n``, ``\\r\\n`` or a lone
    ``\\r`` (the tailer's lines; a chunk's data ends at a line end except a cut line or a
    flushed partial line, which is the chunk's last line); they are decoded as UTF-8 with
    invalid bytes replaced and handed out without their terminators, as the matcher's
    ``LineMatch.line``. The lines skipped are counted, not decoded (by bisection with
    ``bytes.count``), and each line is decoded only when it is reached."""
    cur = _Cursor(chunk)
    cur.seek(after_lineno + 1)
    while True:
        item = cur.next()
        if item is None:
            return
        yield item


def gather_chunk(
    gatherer: RecordGatherer, chunk: Chunk, starts: Sequence[LineMatch], now: float
) -> List[GatheredRecord]:
    """Run one chunk through ``gatherer``: ``starts`` are the chunk's start-line matches
    (from the matcher, in line order). A record open before the chunk takes the chunk's
    first lines; each start opens a record that takes the lines after it, until it closes or
    the next start. Returns the records closed in this chunk, in order (a record still open
    at the chunk's end stays open). Lines that no open record takes are skipped without
    being decoded; the chunk is scanned about once whatever the number of starts."""
    out: List[GatheredRecord] = []
    cur = _Cursor(chunk)

    def take(limit: Optional[int]) -> None:
        """Feed the lines before the one numbered ``limit`` while a record is open."""
        while gatherer.is_open and (limit is None or cur.lineno < limit):
            if cur.lineno <= gatherer.last_lineno:
                cur.seek(gatherer.last_lineno + 1)
                continue
            item = cur.next()
            if item is None:
                return
            rec = gatherer.feed(item[0], item[1], now)
            if rec is not None:
                out.append(rec)

    # the starts in this chunk, each past the one before (a repeated one is no new start)
    valid: List[LineMatch] = []
    for m in starts:
        if m.lineno >= (valid[-1].lineno + 1 if valid else chunk.lineno):
            valid.append(m)
    take(valid[0].lineno if valid else None)
    for i, m in enumerate(valid):
        if m.lineno < cur.lineno:  # already taken by the open record (lines fed twice)
            continue
        rec = gatherer.start(m, now)
        if rec is not None:
            out.append(rec)
        cur.seek(m.lineno + 1)
        take(valid[i + 1].lineno if i + 1 < len(valid) else None)
    return out
