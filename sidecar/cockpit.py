"""The read side of sidecar: query, filter and format event-log records; statistics; metric
series; the Prometheus textfile export.

Everything here works on record dicts as ``sidecar.eventlog.read_records`` yields them (the
schema is ``sidecar.types.Record``; docs/events.md). ``PATH`` may be one event log (JSONL or
SQLite) or a directory of them (every ``*.jsonl``, ``*.db``, ``*.sqlite``, ``*.sqlite3`` in
it, e.g. one per host), merged by timestamp.

No printing here: the CLI (``sidecar.cli_cockpit``) prints what these functions return.
Cheap to import (standard library only); the event-log reader is imported when used.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import heapq
import math
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

__all__ = [
    "KNOWN_KINDS",
    "LOG_SUFFIXES",
    "MetricPoint",
    "PrometheusExport",
    "ReadProblems",
    "RecordFilter",
    "SeriesKey",
    "StatsAccumulator",
    "Table",
    "clean_text",
    "compute_stats",
    "follow_path",
    "format_stats",
    "format_time",
    "iter_records",
    "log_files",
    "metric_points",
    "metric_series",
    "metric_summary",
    "parse_since",
    "parse_ts",
    "prometheus_text",
    "sanitize_metric_name",
    "summary",
    "to_number",
    "truncate",
    "write_prometheus_textfile",
]

#: the record kinds sidecar writes (sidecar.types.Record)
KNOWN_KINDS: Tuple[str, ...] = (
    "start",
    "stop",
    "match",
    "action",
    "skipped",
    "state",
    "metric",
    "log",
    "warning",
    "error",
)

#: files of a directory that are read as event logs
LOG_SUFFIXES: Tuple[str, ...] = (".jsonl", ".db", ".sqlite", ".sqlite3")

RecordLike = Union[Mapping[str, Any], Any]  # a dict, or a sidecar.types.Record

# ---------------------------------------------------------------------------------------------
# time


_DAYS: Dict[str, Optional[int]] = {}  # "YYYY-MM-DD" -> epoch of its midnight (UTC)


def _utc_day(day: str) -> Optional[int]:
    v = _DAYS.get(day, -1)
    if v != -1:
        return v
    try:
        r: Optional[int] = (
            _dt.date(int(day[0:4]), int(day[5:7]), int(day[8:10])).toordinal() - 719163
        ) * 86400
    except ValueError:
        r = None
    if len(_DAYS) > 1000:
        _DAYS.clear()
    _DAYS[day] = r
    return r


def parse_ts(ts: Any) -> Optional[float]:
    """A record's ``ts`` (ISO 8601, ``Z`` or an offset; naive = UTC) as epoch seconds, or None
    when it is missing or not a timestamp."""
    if not isinstance(ts, str) or len(ts) < 10:
        return None
    if len(ts) == 27 and ts[26] == "Z" and ts[10] == "T" and ts[19] == "." and ts[13] == ":":
        # the format sidecar writes (types.utc_now_iso): a cached day + the time of day
        day = _utc_day(ts[:10])
        try:
            h, m, sec, us = int(ts[11:13]), int(ts[14:16]), int(ts[17:19]), int(ts[20:26])
        except ValueError:
            day = None
        if day is not None and h < 24 and m < 60 and sec < 60 and ts[16] == ":":
            return day + h * 3600 + m * 60 + sec + us / 1e6
    s = ts.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        d = _dt.datetime.fromisoformat(s)
    except ValueError:
        # Python < 3.11 takes only 3 or 6 fraction digits: cut or pad the fraction
        mo = re.match(r"^(.*?[T ]\d\d:\d\d:\d\d)\.(\d+)(.*)$", s)
        if not mo:
            return None
        frac = (mo.group(2) + "000000")[:6]
        try:
            d = _dt.datetime.fromisoformat(f"{mo.group(1)}.{frac}{mo.group(3)}")
        except ValueError:
            return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    try:
        return d.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


_REL_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*(?:ago)?\s*$")
_REL_UNITS: Mapping[str, float] = {
    "": 1.0, "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}  # fmt: skip
_CLOCK_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*$")


def parse_since(text: str, now: Optional[float] = None) -> float:
    """``--since`` / ``--until`` -> epoch seconds.

    Relative: ``30s``, ``10m``, ``2h``, ``1d``, ``1w`` (also ``10min``, ``1.5 hours``,
    ``2h ago``): that long before ``now``. Absolute: ISO 8601 (``2024-05-01``,
    ``2024-05-01T10:00``, ``2024-05-01 10:00:00Z``, ``...+02:00``; without a zone it is local
    time) or a clock time ``HH:MM[:SS]`` (today, local time). Raises ValueError with a
    message that says what is accepted."""
    now = time.time() if now is None else now
    s = text.strip()
    mo = _REL_RE.match(s)
    if mo:
        unit = mo.group(2).lower()
        if unit not in _REL_UNITS:
            raise ValueError(
                f"{text!r}: unknown unit {mo.group(2)!r} (use s, m, h, d or w, e.g. 10m, 2h, 1d)"
            )
        return now - float(mo.group(1)) * _REL_UNITS[unit]
    mo = _CLOCK_RE.match(s)
    if mo:
        h, mi, se = int(mo.group(1)), int(mo.group(2)), int(mo.group(3) or 0)
        if h > 23 or mi > 59 or se > 59:
            raise ValueError(f"{text!r}: not a clock time")
        today = _dt.datetime.fromtimestamp(now)
        return today.replace(hour=h, minute=mi, second=se, microsecond=0).timestamp()
    iso = s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s
    try:
        d = _dt.datetime.fromisoformat(iso)
    except ValueError:
        t = parse_ts(s)  # long fractions on Python < 3.11
        if t is None or not re.search(r"[zZ]|[+-]\d\d:?\d\d$", s):
            raise ValueError(
                f"{text!r} is neither a duration (10m, 2h, 1d) nor a date/time "
                "(2024-05-01, 2024-05-01T10:00, 2024-05-01T10:00:00Z, 14:30)"
            ) from None
        return t
    if d.tzinfo is None:
        d = d.astimezone()  # naive = local time
    return d.timestamp()


def format_time(ts: Any, utc: bool = False) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in local time (or UTC); an unparsable ts is shown as it is."""
    t = parse_ts(ts)
    if t is None:
        return clean_text(str(ts))[:19] if ts is not None else "?"
    try:
        tm = time.gmtime(t) if utc else time.localtime(t)
    except (OverflowError, OSError, ValueError):
        return clean_text(str(ts))[:19]
    return time.strftime("%Y-%m-%d %H:%M:%S", tm)


# ---------------------------------------------------------------------------------------------
# text


_ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_CTRL_TABLE = {i: f"\\x{i:02x}" for i in list(range(0x20)) + [0x7F] + list(range(0x80, 0xA0))}
_CTRL_TABLE[0x09] = " "
_CTRL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean_text(s: str) -> str:
    """``s`` safe to show on a terminal: ANSI escape sequences removed, tabs as spaces, other
    control characters as ``\\xNN``; lone surrogates (undecodable bytes) as ``\\udcNN``."""
    if _CTRL_RE.search(s):
        if "\x1b" in s:
            s = _ANSI_RE.sub("", s)
        s = s.translate(_CTRL_TABLE)
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    return s


def _char_width(c: str) -> int:
    import unicodedata

    if unicodedata.combining(c):
        return 0
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


def text_width(s: str) -> int:
    """Terminal cells ``s`` takes (wide East Asian characters count 2, combining marks 0)."""
    if s.isascii():
        return len(s)
    return sum(_char_width(c) for c in s)


def truncate(s: str, width: int) -> str:
    """``s`` cut to at most ``width`` terminal cells, ending in ``…`` when cut."""
    if width <= 0:
        return ""
    if s.isascii():
        return s if len(s) <= width else s[: width - 1] + "…"
    if text_width(s) <= width:
        return s
    out: List[str] = []
    used = 0
    for c in s:
        w = _char_width(c)
        if used + w > width - 1:
            break
        out.append(c)
        used += w
    return "".join(out) + "…"


def pad(s: str, width: int) -> str:
    """``s`` truncated/padded to exactly ``width`` cells."""
    s = truncate(s, width)
    return s + " " * (width - text_width(s))


# ---------------------------------------------------------------------------------------------
# records: finding, reading, filtering


def _as_dict(rec: RecordLike) -> Mapping[str, Any]:
    if type(rec) is dict:
        return rec
    if isinstance(rec, Mapping):
        return rec
    to_dict = getattr(rec, "to_dict", None)
    if callable(to_dict):
        d = to_dict()
        if isinstance(d, Mapping):
            return d
    return {}


def _s(v: Any) -> str:
    """A field as text ('' for None)."""
    if v is None:
        return ""
    return v if isinstance(v, str) else str(v)


def log_files(path: str) -> List[str]:
    """The event logs at ``path``: ``[path]`` for a file, the logs in a directory (not its
    subdirectories), sorted. Raises FileNotFoundError when ``path`` does not exist."""
    if os.path.isdir(path):
        out = []
        with os.scandir(path) as it:
            for e in it:
                if e.name.lower().endswith(LOG_SUFFIXES) and not e.name.startswith("."):
                    try:
                        if e.is_file():
                            out.append(e.path)
                    except OSError:
                        continue
        return sorted(out)
    if not os.path.exists(path):
        import errno

        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    return [path]


def _match_any(value: Any, patterns: Sequence[str]) -> bool:
    v = _s(value)
    for p in patterns:
        if p == v:
            return True
        if any(c in p for c in "*?[") and fnmatch.fnmatchcase(v, p):
            return True
    return False


@dataclass(frozen=True)
class RecordFilter:
    """Which records to keep. Each list holds exact values or shell globs (``train*``); an
    empty list keeps everything. ``since``/``until`` are epoch seconds (inclusive); a record
    without a parsable ``ts`` is dropped when either is set."""

    jobs: Tuple[str, ...] = ()
    watchers: Tuple[str, ...] = ()
    kinds: Tuple[str, ...] = ()
    hosts: Tuple[str, ...] = ()
    since: Optional[float] = None
    until: Optional[float] = None

    def __call__(self, rec: Mapping[str, Any]) -> bool:
        if self.kinds and not _match_any(rec.get("kind"), self.kinds):
            return False
        if self.jobs and not _match_any(rec.get("job_id"), self.jobs):
            return False
        if self.watchers and not _match_any(rec.get("watcher"), self.watchers):
            return False
        if self.hosts and not _match_any(rec.get("host"), self.hosts):
            return False
        if self.since is not None or self.until is not None:
            t = parse_ts(rec.get("ts"))
            if t is None:
                return False
            if self.since is not None and t < self.since:
                return False
            if self.until is not None and t > self.until:
                return False
        return True

    @property
    def empty(self) -> bool:
        return not (self.jobs or self.watchers or self.kinds or self.hosts) and (
            self.since is None and self.until is None
        )


@dataclass
class ReadProblems:
    """What went wrong while reading: files that could not be read (the rest still are),
    and invalid lines/rows that were skipped."""

    errors: List[str] = field(default_factory=list)
    skipped_lines: int = 0

    def add(self, path: str, exc: BaseException) -> None:
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        self.errors.append(f"{path}: {what or type(exc).__name__}")


def _sort_key(rec: Mapping[str, Any]) -> float:
    t = parse_ts(rec.get("ts"))
    return -math.inf if t is None else t


def _read_one(
    path: str, problems: Optional[ReadProblems], *, raise_errors: bool
) -> Iterator[Dict[str, Any]]:
    from sidecar.eventlog import ReadStats, read_records

    stats = ReadStats()
    try:
        yield from read_records(path, stats)
    except Exception as exc:  # OSError, sqlite3.Error (not an event log, corrupt ...)
        if raise_errors:
            raise
        if problems is not None:
            problems.add(path, exc)
    finally:
        if problems is not None:
            problems.skipped_lines += stats.skipped


#: above this many files a directory is read file by file and sorted in memory (the
#: streaming merge keeps every file open at once)
MAX_MERGE_FILES = 256


def iter_records(
    path: str,
    flt: Optional[Callable[[Mapping[str, Any]], bool]] = None,
    problems: Optional[ReadProblems] = None,
) -> Iterator[Dict[str, Any]]:
    """The records of ``path`` (a log, or a directory of logs merged by ``ts``), oldest
    first, those ``flt`` keeps. For one file, errors (missing file, not a database ...) are
    raised (OSError / sqlite3.Error); in a directory a file that cannot be read is noted in
    ``problems`` and the others are read."""
    files = log_files(path)
    single = not os.path.isdir(path)
    its = [_read_one(f, problems, raise_errors=single) for f in files]
    if len(its) == 1:
        merged: Iterable[Dict[str, Any]] = its[0]
    elif len(its) <= MAX_MERGE_FILES:
        merged = heapq.merge(*its, key=_sort_key)
    else:
        allrecs: List[Dict[str, Any]] = []
        for it in its:
            allrecs.extend(r for r in it if flt is None or flt(r))
        allrecs.sort(key=_sort_key)
        yield from allrecs
        return
    if flt is None:
        yield from merged
    else:
        for r in merged:
            if flt(r):
                yield r


def last_n(records: Iterable[Dict[str, Any]], n: Optional[int]) -> List[Dict[str, Any]]:
    """The last ``n`` records (all when n is None)."""
    if n is None:
        return list(records)
    if n <= 0:
        for _ in records:
            pass
        return []
    return list(deque(records, maxlen=n))


# ---------------------------------------------------------------------------------------------
# following (tail -f)


class _Signal:
    def __init__(self, what: str, detail: str = "") -> None:
        self.what = what
        self.detail = detail


def _pump(
    path: str,
    idx: int,
    q: Any,
    stop_evt: threading.Event,
    poll: float,
    flt: Callable[[Mapping[str, Any]], bool],
    problems: Optional[ReadProblems],
) -> None:
    """Thread body: follow one log, put (idx, record) on ``q``; (idx, caught_up) once what
    was there at the start is read; (idx, done) at the end."""
    from sidecar.eventlog import ReadStats, follow_records

    caught_up = False

    def stop() -> bool:
        # follow_records calls stop() each time it has read everything there is
        nonlocal caught_up
        if not caught_up:
            caught_up = True
            q.put((idx, _Signal("caught_up")))
        return stop_evt.is_set()

    stats = ReadStats()
    try:
        for rec in follow_records(path, stop, poll, stats=stats):
            if flt(rec):
                q.put((idx, rec))
    except Exception as exc:  # noqa: BLE001 - e.g. a file that is not an event log
        q.put((idx, _Signal("error", f"{path}: {exc}")))
    finally:
        if problems is not None:
            problems.skipped_lines += stats.skipped
        q.put((idx, _Signal("done")))


def follow_path(
    path: str,
    *,
    flt: Optional[Callable[[Mapping[str, Any]], bool]] = None,
    backlog: Optional[int] = 10,
    stop: Callable[[], bool] = lambda: False,
    poll: float = 0.2,
    rescan: float = 1.0,
    problems: Optional[ReadProblems] = None,
    on_idle: Optional[Callable[[], None]] = None,
    on_caught_up: Optional[Callable[[], None]] = None,
) -> Iterator[Dict[str, Any]]:
    """``tail -f`` for a log or a directory of logs: first the last ``backlog`` records
    already there (merged by ts; None = all of them, 0 = none), then every new record as it
    is written (in arrival order), until ``stop()`` is true.

    Waits for a path that does not exist yet (a name ending in a log suffix is a log file,
    anything else may turn out to be a directory); a directory is rescanned every ``rescan``
    seconds for new logs, whose records all count as new. Each log is read by its own
    thread (``eventlog.follow_records``: JSONL across rotation/truncation, SQLite by row id).
    ``on_idle`` is called whenever no record is waiting (the CLI flushes its output there);
    ``on_caught_up`` once the backlog has been yielded (from then on, everything is new).
    """
    import queue

    keep = flt or (lambda _r: True)
    q: queue.Queue[Tuple[int, Any]] = queue.Queue()
    stop_evt = threading.Event()
    started: Dict[str, int] = {}
    pending: Dict[int, Any] = {}  # idx -> backlog buffer of a log not caught up yet
    caught: List[List[Dict[str, Any]]] = []  # backlogs of the logs that are caught up
    is_dir: Optional[bool] = None

    def start(p: str, initial: bool) -> None:
        idx = len(started)
        started[p] = idx
        if initial:
            pending[idx] = deque(maxlen=backlog) if backlog is not None else []
        threading.Thread(
            target=_pump,
            args=(p, idx, q, stop_evt, poll, keep, problems),
            name=f"sidecar-follow-{idx}",
            daemon=True,
        ).start()

    def scan(initial: bool) -> None:
        nonlocal is_dir
        if is_dir is None:
            if not os.path.exists(path):
                if path.endswith(os.sep) or not path.lower().endswith(LOG_SUFFIXES):
                    return  # may become a directory: wait to see what appears
                is_dir = False
            else:
                is_dir = os.path.isdir(path)
        if not is_dir:
            if path not in started:
                start(path, initial)
            return
        try:
            files = log_files(path)
        except OSError:
            return
        for f in files:
            if f not in started:
                start(f, initial)

    def backlog_done() -> List[Dict[str, Any]]:
        merged = list(heapq.merge(*caught, key=_sort_key)) if len(caught) > 1 else (
            caught[0] if caught else []
        )
        caught.clear()
        if backlog is not None:
            merged = merged[-backlog:] if backlog > 0 else []
        return merged

    try:
        while True:  # wait until the path exists (or is known to be a log file)
            scan(initial=True)
            if is_dir is not None:
                break
            if stop():
                return
            time.sleep(poll)
        next_scan = time.monotonic() + rescan
        if not pending and on_caught_up is not None:
            on_caught_up()  # an empty directory: no backlog at all
        while True:
            if is_dir and not pending and time.monotonic() >= next_scan:
                scan(initial=False)  # (not before the backlog is out: new logs come after)
                next_scan = time.monotonic() + rescan
            try:
                idx, item = q.get(timeout=poll)
            except queue.Empty:
                if on_idle is not None:
                    on_idle()
                if stop():
                    return
                continue
            if isinstance(item, _Signal):
                if item.what == "error" and problems is not None:
                    problems.errors.append(item.detail)
                if item.what in ("caught_up", "done") and idx in pending:
                    caught.append(list(pending.pop(idx)))
                    if not pending:
                        yield from backlog_done()
                        if on_caught_up is not None:
                            on_caught_up()
            elif idx in pending:
                pending[idx].append(item)
            else:
                yield item
                if stop():
                    return
    finally:
        stop_evt.set()


# ---------------------------------------------------------------------------------------------
# one line per record


def _num_text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}" if math.isfinite(v) else str(v)
    return _s(v)


def summary(rec: Mapping[str, Any]) -> str:
    """What a record says, in one line: the matched line, the action and its outcome, the
    state change, the metric ... (the ``what`` column of ``sidecar events``)."""
    kind = rec.get("kind")
    msg = _s(rec.get("message"))
    if kind == "match":
        trig = rec.get("trigger")
        line = rec.get("line")
        if line is not None:
            return _s(line)
        f = os.path.basename(_s(rec.get("file"))) or _s(rec.get("file"))
        if trig == "stale":
            extra = rec.get("extra")
            tmo = extra.get("timeout") if isinstance(extra, Mapping) else None
            return f"stale: {f}" + (f" (no write for {_num_text(tmo)}s)" if tmo else "")
        if trig == "file_event":
            return f"{_s(rec.get('event')) or 'event'}: {f}"
        return " ".join(x for x in (_s(trig), f) if x) or msg
    if kind == "action":
        name = _s(rec.get("action")) or "action"
        ok = rec.get("ok")
        parts = [name, "ok" if ok else ("FAILED" if ok is False else "?")]
        if rec.get("exit_code") is not None:
            parts.append(f"exit {rec.get('exit_code')}")
        if rec.get("reason") == "timeout":
            parts.append("(timed out)")
        d = rec.get("duration_s")
        if isinstance(d, (int, float)) and not isinstance(d, bool):
            parts.append(f"{d:.2f}s")
        text = " ".join(parts)
        if msg:
            text += f": {msg}"
        elif rec.get("metric") is not None:
            text += f": {_s(rec.get('metric'))} = {_num_text(rec.get('value'))}"
        elif not ok:
            out_lines = _s(rec.get("output")).strip().splitlines()
            if out_lines:
                text += f": {out_lines[-1]}"
        return text
    if kind == "state":
        prev = _s(rec.get("previous_state"))
        text = f"{prev} -> {_s(rec.get('state'))}" if prev else _s(rec.get("state"))
        reason = _s(rec.get("reason"))
        return f"{text} ({reason})" if reason else text
    if kind == "metric":
        return f"{_s(rec.get('metric'))} = {_num_text(rec.get('value'))}"
    if kind == "log":
        level = _s(rec.get("level"))
        return f"[{level}] {msg}" if level else msg
    if kind == "skipped":
        return msg or _s(rec.get("reason"))
    if msg:
        return msg
    for k in ("reason", "line", "file"):
        if rec.get(k) is not None:
            return _s(rec.get(k))
    return ""


# ---------------------------------------------------------------------------------------------
# the table


_FIELD = {"job": "job_id", "host": "host", "watcher": "watcher", "kind": "kind"}
_CAPS = {"job": 14, "host": 18, "watcher": 24, "kind": 7}
#: column widths when they cannot be fitted to the data (--follow)
FOLLOW_WIDTHS: Mapping[str, int] = {"job": 10, "host": 12, "watcher": 16, "kind": 7}
_COLORS = {
    "error": "31",  # red
    "warning": "33",  # yellow
    "failed": "31",
    "match": "36",  # cyan
    "state": "35",  # magenta
    "metric": "32",  # green
    "skipped": "2",  # dim
}


class Table:
    """Formats records as aligned rows: time, job, host, watcher, kind, what.

    ``width``: the line width to fit (None = no truncation of the last column).
    ``widths``: widths of the job/host/watcher/kind columns (a width of 0 hides a column);
    ``Table.fit`` computes them from the records to show."""

    def __init__(
        self,
        width: Optional[int] = None,
        widths: Optional[Mapping[str, int]] = None,
        *,
        utc: bool = False,
        color: bool = False,
    ) -> None:
        self.width = width
        self.widths = dict(FOLLOW_WIDTHS if widths is None else widths)
        self.utc = utc
        self.color = color
        self._shown = [c for c in ("job", "host", "watcher", "kind") if self.widths.get(c, 0)]
        # the columns before WHAT: time (19), the shown ones, two spaces after each
        self._fixed = 19 + sum(self.widths[c] for c in self._shown) + 2 * (len(self._shown) + 1)
        self._cells: Dict[Tuple[str, Optional[str]], str] = {}
        self._last_sec: Optional[int] = None
        self._last_text = ""

    @classmethod
    def fit(
        cls,
        records: Sequence[Mapping[str, Any]],
        width: Optional[int] = None,
        *,
        utc: bool = False,
        color: bool = False,
    ) -> Table:
        widths: Dict[str, int] = {}
        for col in ("job", "host", "watcher", "kind"):
            key = _FIELD[col]
            w = max((text_width(clean_text(_s(r.get(key)))) for r in records), default=0)
            widths[col] = 0 if w == 0 else max(len(col), min(w, _CAPS[col]))
        return cls(width, widths, utc=utc, color=color)

    def header(self) -> str:
        parts = ["TIME".ljust(19)]
        for c in ("job", "host", "watcher", "kind"):
            w = self.widths.get(c, 0)
            if w:
                parts.append(pad(c.upper(), w))
        parts.append("WHAT")
        line = "  ".join(parts)
        return truncate(line, self.width) if self.width else line

    def _cell(self, col: str, value: Any) -> str:
        key = (col, value if isinstance(value, str) or value is None else str(value))
        c = self._cells.get(key)
        if c is None:
            c = pad(clean_text(_s(value)), self.widths[col])
            if len(self._cells) > 10000:
                self._cells.clear()
            self._cells[key] = c
        return c

    def _time(self, ts: Any) -> str:
        t = parse_ts(ts)
        if t is None:
            return format_time(ts, self.utc).ljust(19)
        sec = int(t // 1)
        if sec != self._last_sec:
            self._last_sec = sec
            tm = time.gmtime(sec) if self.utc else time.localtime(sec)
            self._last_text = time.strftime("%Y-%m-%d %H:%M:%S", tm)
        return self._last_text

    def row(self, rec: Mapping[str, Any]) -> str:
        """One record as one line (cut to ``width``; control characters escaped)."""
        parts = [self._time(rec.get("ts"))]
        kind_at = -1
        for c in self._shown:
            if c == "kind":
                kind_at = len(parts)
            parts.append(self._cell(c, rec.get(_FIELD[c])))
        what = clean_text(summary(rec))
        if self.width:
            what = truncate(what, max(self.width - self._fixed, 8))
        parts.append(what)
        if self.color:
            code = self._color_for(rec)
            if code and kind_at >= 0:
                parts[kind_at] = f"\x1b[{code}m{parts[kind_at]}\x1b[0m"
            elif code:
                parts[-1] = f"\x1b[{code}m{parts[-1]}\x1b[0m"
        line = "  ".join(parts).rstrip()
        if self.width and not self.color and self._fixed + 8 > self.width:
            line = truncate(line, self.width)  # a terminal too narrow even for the columns
        return line

    @staticmethod
    def _color_for(rec: Mapping[str, Any]) -> Optional[str]:
        kind = _s(rec.get("kind"))
        if kind == "action":
            return _COLORS["failed"] if rec.get("ok") is False else None
        if kind == "log" and _s(rec.get("level")).upper() in ("ERROR", "CRITICAL"):
            return _COLORS["error"]
        return _COLORS.get(kind)


# ---------------------------------------------------------------------------------------------
# statistics


class _WatcherStats:
    __slots__ = ("job_id", "host", "watcher", "state", "matches", "actions", "failed",
                 "last_match", "skipped")

    def __init__(self, job_id: str, host: str, watcher: str) -> None:
        self.job_id = job_id
        self.host = host
        self.watcher = watcher
        self.state = "ACTIVE"
        self.matches = 0
        self.actions = 0
        self.failed = 0
        self.last_match: Optional[str] = None
        self.skipped = 0


class StatsAccumulator:
    """Statistics over records fed one at a time (oldest first): ``add(rec)``, ``result()``.
    Memory is O(watchers + action types), whatever the number of records."""

    def __init__(self, now: Optional[float] = None) -> None:
        self.now = time.time() if now is None else now
        self.records = 0
        self.first: Optional[str] = None
        self.last: Optional[str] = None
        self._first_t: Optional[float] = None
        self._last_t: Optional[float] = None
        self.by_kind: Dict[str, int] = {}
        self.jobs: Dict[str, int] = {}
        self.hosts: Dict[str, int] = {}
        self.watchers: Dict[Tuple[str, str, str], _WatcherStats] = {}
        self.actions: Dict[str, Dict[str, int]] = {}
        self.skipped: Dict[str, int] = {}
        self.hour = {"records": 0, "matches": 0, "actions": 0, "failed": 0}
        self.metrics: Dict[str, int] = {}

    def _w(self, job: str, host: str, name: str) -> _WatcherStats:
        key = (job, host, name)
        w = self.watchers.get(key)
        if w is None:
            w = self.watchers[key] = _WatcherStats(job, host, name)
        return w

    def add(self, rec: RecordLike, t: Optional[float] = None) -> None:
        """Count one record; ``t`` is its parsed ``ts`` when the caller has it already."""
        r = _as_dict(rec)
        self.records += 1
        kind = _s(r.get("kind")) or "?"
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        ts = r.get("ts")
        if t is None:
            t = parse_ts(ts)
        if t is not None:
            if self._first_t is None or t < self._first_t:
                self._first_t, self.first = t, _s(ts)
            if self._last_t is None or t >= self._last_t:
                self._last_t, self.last = t, _s(ts)
        job, host = _s(r.get("job_id")), _s(r.get("host"))
        if job:
            self.jobs[job] = self.jobs.get(job, 0) + 1
        if host:
            self.hosts[host] = self.hosts.get(host, 0) + 1
        recent = t is not None and self.now - 3600.0 <= t <= self.now + 60.0
        if recent:
            self.hour["records"] += 1
        name = _s(r.get("watcher"))
        extra = r.get("extra")
        if type(extra) is not dict:
            extra = extra if isinstance(extra, Mapping) else {}
        if kind == "start":
            names = extra.get("watchers") if isinstance(extra, Mapping) else None
            if isinstance(names, list):
                for n in names:
                    if isinstance(n, str):
                        self._w(job, host, n).state = "ACTIVE"
        elif kind == "stop":
            ws = extra.get("watchers") if isinstance(extra, Mapping) else None
            if isinstance(ws, Mapping):
                for n, info in ws.items():
                    if isinstance(info, Mapping) and isinstance(info.get("state"), str):
                        self._w(job, host, str(n)).state = info["state"]
        elif kind == "match" and name:
            w = self._w(job, host, name)
            w.matches += 1
            w.last_match = _s(ts)
            if recent:
                self.hour["matches"] += 1
        elif kind == "action":
            a = _s(r.get("action")) or "?"
            c = self.actions.get(a)
            if c is None:
                c = self.actions[a] = {"total": 0, "ok": 0, "failed": 0, "timed_out": 0}
            c["total"] += 1
            ok = r.get("ok") is True
            c["ok" if ok else "failed"] += 1
            if r.get("reason") == "timeout":
                c["timed_out"] += 1
            if name:
                w = self._w(job, host, name)
                w.actions += 1
                if not ok:
                    w.failed += 1
            if recent:
                self.hour["actions"] += 1
                if not ok:
                    self.hour["failed"] += 1
        elif kind == "state" and name:
            st = r.get("state")
            if isinstance(st, str):
                self._w(job, host, name).state = st
        elif kind == "skipped":
            reason = _s(r.get("reason")) or "?"
            n = extra.get("count") if isinstance(extra, Mapping) else None
            k = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
            self.skipped[reason] = self.skipped.get(reason, 0) + k
            if name:
                self._w(job, host, name).skipped += k
        elif kind == "metric":
            m = _s(r.get("metric"))
            self.metrics[m] = self.metrics.get(m, 0) + 1

    def result(self, top: int = 10) -> Dict[str, Any]:
        by_state: Dict[str, int] = {}
        for w in self.watchers.values():
            by_state[w.state] = by_state.get(w.state, 0) + 1
        ws = sorted(self.watchers.values(), key=lambda w: (w.job_id, w.host, w.watcher))
        busiest = sorted(
            (w for w in ws if w.matches), key=lambda w: (-w.matches, w.watcher, w.job_id)
        )[:top]

        def wd(w: _WatcherStats) -> Dict[str, Any]:
            return {
                "job_id": w.job_id or None,
                "host": w.host or None,
                "watcher": w.watcher,
                "state": w.state,
                "matches": w.matches,
                "actions": w.actions,
                "failed": w.failed,
                "skipped": w.skipped,
                "last_match": w.last_match,
            }

        return {
            "records": self.records,
            "first": self.first,
            "last": self.last,
            "now": _dt.datetime.fromtimestamp(self.now, _dt.timezone.utc)
            .isoformat(timespec="seconds")
            .replace("+00:00", "Z"),
            "jobs": sorted(self.jobs),
            "hosts": sorted(self.hosts),
            "by_kind": dict(sorted(self.by_kind.items())),
            "watchers_by_state": dict(sorted(by_state.items())),
            "watchers": [wd(w) for w in ws],
            "actions": dict(sorted(self.actions.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "last_hour": dict(self.hour),
            "busiest": [wd(w) for w in busiest],
            "metrics": dict(sorted(self.metrics.items())),
            "warnings": self.by_kind.get("warning", 0),
            "errors": self.by_kind.get("error", 0),
        }


def compute_stats(
    records: Iterable[RecordLike], now: Optional[float] = None, top: int = 10
) -> Dict[str, Any]:
    """Statistics of ``records`` (oldest first): watchers by their last state, actions with
    ok/failed counts, skips by reason, the last hour, the busiest watchers (by matches).
    ``now`` (epoch seconds, default the current time) defines "the last hour"."""
    acc = StatsAccumulator(now)
    for r in records:
        acc.add(r)
    return acc.result(top)


def _who(w: Mapping[str, Any], show_job: bool, show_host: bool) -> str:
    parts = [_s(w.get("watcher"))]
    extra = []
    if show_job and w.get("job_id"):
        extra.append(f"job {w['job_id']}")
    if show_host and w.get("host"):
        extra.append(_s(w["host"]))
    return clean_text(parts[0] + (f" ({', '.join(extra)})" if extra else ""))


def format_stats(st: Mapping[str, Any], *, source: str = "", utc: bool = False) -> str:
    """``compute_stats`` as text for a terminal."""
    out: List[str] = []
    span = ""
    if st.get("first"):
        span = f", {format_time(st['first'], utc)} .. {format_time(st['last'], utc)}"
    head = f"{source}: " if source else ""
    out.append(f"{head}{st['records']} records{span}")
    for label, key in (("jobs:  ", "jobs"), ("hosts: ", "hosts")):
        vals = st.get(key) or []
        if vals:
            more = " ..." if len(vals) > 20 else ""
            out.append(label + ", ".join(clean_text(v) for v in vals[:20]) + more)
    show_job = len(st.get("jobs") or ()) > 1
    show_host = len(st.get("hosts") or ()) > 1

    out.append("")
    out.append("Watchers by state")
    if st["watchers_by_state"]:
        for s_, n in st["watchers_by_state"].items():
            out.append(f"  {s_:<12} {n:>6}")
    else:
        out.append("  (no watchers seen)")

    out.append("")
    if st["actions"]:
        w = max(12, max(len(a) for a in st["actions"]))
        out.append(f"{'Actions':<{w + 2}} {'total':>7} {'ok':>7} {'failed':>7}")
        for a, c in st["actions"].items():
            to = f"  ({c['timed_out']} timed out)" if c.get("timed_out") else ""
            out.append(f"  {a:<{w}} {c['total']:>7} {c['ok']:>7} {c['failed']:>7}{to}")
    else:
        out.append("Actions: none run")
    if st["skipped"]:
        out.append("Skipped firings: " + ", ".join(f"{k} {v}" for k, v in st["skipped"].items()))

    h = st["last_hour"]
    out.append("")
    failed = f" ({h['failed']} failed)" if h["failed"] else ""
    out.append(
        f"Last hour: {h['records']} records, {h['matches']} matches, "
        f"{h['actions']} actions{failed}"
    )

    out.append("")
    if st["busiest"]:
        rows = [(_who(w, show_job, show_host), w) for w in st["busiest"]]
        nw = max(16, max(text_width(n) for n, _ in rows))
        out.append(
            f"{'Busiest watchers':<{nw + 2}} {'matches':>8} {'actions':>8} {'failed':>7}  "
            "last match"
        )
        for n, w in rows:
            last = format_time(w["last_match"], utc) if w.get("last_match") else "-"
            out.append(
                f"  {pad(n, nw)} {w['matches']:>8} {w['actions']:>8} {w['failed']:>7}  {last}"
            )
    else:
        out.append("Busiest watchers: no matches yet")

    if st.get("metrics"):
        out.append("")
        names = ", ".join(f"{clean_text(k)} ({v})" for k, v in st["metrics"].items())
        out.append(f"Metrics: {names}")
    if st["warnings"] or st["errors"]:
        out.append("")
        out.append(
            f"Problems: {st['warnings']} warning(s), {st['errors']} error(s) "
            "(sidecar events PATH --kind warning,error)"
        )
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# metrics


class SeriesKey(NamedTuple):
    metric: str
    job_id: str
    host: str
    watcher: str


@dataclass(frozen=True)
class MetricPoint:
    """One ``metric`` record. ``value`` as recorded; ``num`` the value as a float (NaN/inf
    included), None when it is not a number."""

    ts: str
    t: Optional[float]
    job_id: str
    host: str
    watcher: str
    metric: str
    value: Any
    num: Optional[float]

    @property
    def key(self) -> SeriesKey:
        return SeriesKey(self.metric, self.job_id, self.host, self.watcher)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "ts": self.ts,
            "job_id": self.job_id or None,
            "host": self.host or None,
            "watcher": self.watcher or None,
            "metric": self.metric,
            "value": self.value,
        }


def to_number(v: Any) -> Optional[float]:
    """A metric value as a float: numbers, booleans (1/0) and numeric text (``"0.43"``,
    ``"1e-5"``, ``"nan"``, ``"inf"``); None for anything else."""
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, (int, float)):
        try:
            return float(v)
        except OverflowError:
            return math.inf if v > 0 else -math.inf
    if isinstance(v, str):
        s = v.strip()
        if not s or len(s) > 64:
            return None
        try:
            return float(s)
        except ValueError:
            return None
    return None


def metric_point(rec: RecordLike, t: Optional[float] = None) -> Optional[MetricPoint]:
    """The MetricPoint of a ``metric`` record, None for any other record (``t``: its parsed
    ``ts``, when the caller has it)."""
    r = _as_dict(rec)
    if r.get("kind") != "metric":
        return None
    ts = _s(r.get("ts"))
    value = r.get("value")
    return MetricPoint(
        ts=ts,
        t=parse_ts(ts) if t is None else t,
        job_id=_s(r.get("job_id")),
        host=_s(r.get("host")),
        watcher=_s(r.get("watcher")),
        metric=_s(r.get("metric")),
        value=value,
        num=to_number(value),
    )


def metric_points(
    records: Iterable[RecordLike], names: Sequence[str] = ()
) -> List[MetricPoint]:
    """The metric records, in record order; ``names`` (exact or globs) keeps only those."""
    out: List[MetricPoint] = []
    for rec in records:
        p = metric_point(rec)
        if p is not None and (not names or _match_any(p.metric, names)):
            out.append(p)
    return out


def metric_series(points: Iterable[MetricPoint]) -> Dict[SeriesKey, List[MetricPoint]]:
    """Points grouped by series (metric, job, host, watcher), sorted by key."""
    out: Dict[SeriesKey, List[MetricPoint]] = {}
    for p in points:
        out.setdefault(p.key, []).append(p)
    return dict(sorted(out.items()))


def metric_summary(points: Iterable[MetricPoint]) -> List[Dict[str, Any]]:
    """One row per series: points, last value and time, min, max (finite values)."""
    rows = []
    for key, pts in metric_series(points).items():
        finite = [p.num for p in pts if p.num is not None and math.isfinite(p.num)]
        rows.append(
            {
                "metric": key.metric,
                "job_id": key.job_id or None,
                "host": key.host or None,
                "watcher": key.watcher or None,
                "points": len(pts),
                "last": pts[-1].value,
                "last_ts": pts[-1].ts,
                "min": min(finite) if finite else None,
                "max": max(finite) if finite else None,
                "non_finite": sum(
                    1 for p in pts if p.num is not None and not math.isfinite(p.num)
                ),
                "non_numeric": sum(1 for p in pts if p.num is None),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# Prometheus textfile


_PROM_BAD = re.compile(r"[^a-zA-Z0-9_:]")
PROM_PREFIX = "sidecar_"


def sanitize_metric_name(name: str, prefix: str = PROM_PREFIX) -> str:
    """``prefix`` + ``name`` with every character outside ``[a-zA-Z0-9_:]`` replaced by ``_``
    (so the result matches ``[a-zA-Z_:][a-zA-Z0-9_:]*``)."""
    out = prefix + _PROM_BAD.sub("_", name)
    if not out or not (out[0].isascii() and (out[0].isalpha() or out[0] in "_:")):
        out = "_" + out
    return out


def _label_value(v: str) -> str:
    v = v.encode("utf-8", "replace").decode("utf-8")
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _help_text(v: str) -> str:
    v = v.encode("utf-8", "replace").decode("utf-8")
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _prom_value(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


class PrometheusExport:
    """The last value of each metric series, rendered in the Prometheus text format that
    node_exporter's textfile collector reads. Feed records with ``add`` (cheap; only
    ``metric`` records with a numeric value count); ``text()`` renders. Memory is O(series).

    Each series is ``sidecar_<metric>{job_id="..",host="..",watcher=".."} VALUE``, a gauge;
    no timestamps (the textfile collector refuses them)."""

    def __init__(self, prefix: str = PROM_PREFIX) -> None:
        self.prefix = prefix
        # (family, job, host, watcher) -> (t, value)
        self._last: Dict[Tuple[str, str, str, str], Tuple[float, float]] = {}
        self._help: Dict[str, str] = {}  # family -> the first raw metric name seen

    def add(self, rec: RecordLike) -> None:
        p = metric_point(rec)
        if p is None or p.num is None or not p.metric:
            return
        fam = sanitize_metric_name(p.metric, self.prefix)
        self._help.setdefault(fam, p.metric)
        key = (fam, p.job_id, p.host, p.watcher)
        t = p.t if p.t is not None else -math.inf
        old = self._last.get(key)
        if old is None or t >= old[0] or old[0] == -math.inf:
            self._last[key] = (t, p.num)

    def extend(self, records: Iterable[RecordLike]) -> PrometheusExport:
        for r in records:
            self.add(r)
        return self

    def __len__(self) -> int:
        return len(self._last)

    def text(self) -> str:
        by_fam: Dict[str, List[Tuple[Tuple[str, str, str], float]]] = {}
        for (fam, job, host, watcher), (_t, v) in self._last.items():
            by_fam.setdefault(fam, []).append(((job, host, watcher), v))
        lines: List[str] = []
        for fam in sorted(by_fam):
            raw = self._help[fam]
            lines.append(f"# HELP {fam} {_help_text(f'sidecar store_metric {raw!r}')}")
            lines.append(f"# TYPE {fam} gauge")
            for (job, host, watcher), v in sorted(by_fam[fam]):
                labels = (
                    f'job_id="{_label_value(job)}",host="{_label_value(host)}",'
                    f'watcher="{_label_value(watcher)}"'
                )
                lines.append(f"{fam}{{{labels}}} {_prom_value(v)}")
        return "\n".join(lines) + "\n" if lines else ""


def prometheus_text(records: Iterable[RecordLike]) -> str:
    """The node_exporter textfile (``*.prom``) content for ``records``: one gauge family per
    metric name (``sidecar_`` + the sanitised name), labels job_id, host, watcher, the last
    numeric value of each series. Empty text when there is no numeric metric."""
    return PrometheusExport().extend(records).text()


def write_text_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` atomically: a temporary file in the same directory (named
    ``.NAME.PID.tmp``, so a ``*.prom`` glob never sees it), then ``rename``. The file gets
    ``mode`` whatever the umask (node_exporter often runs as another user). Raises OSError;
    the temporary file is removed on failure."""
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            data = text.encode("utf-8", "replace")
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_prometheus_textfile(
    path: str, records: Union[Iterable[RecordLike], PrometheusExport]
) -> None:
    """Write ``prometheus_text(records)`` to ``path`` atomically (temporary file + rename, as
    node_exporter's textfile collector requires). ``records`` may also be a
    ``PrometheusExport`` the caller keeps up to date (the daemon: ``add`` each record, write
    now and then). Raises OSError (the caller logs it; nothing is left behind)."""
    exp = records if isinstance(records, PrometheusExport) else PrometheusExport().extend(records)
    write_text_atomic(path, exp.text())
