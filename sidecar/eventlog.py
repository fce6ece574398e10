"""The event log: every Record the sidecar writes, as JSON lines or in an SQLite table.

``open_event_log(path)`` picks the format: an existing non-empty file that starts with the
SQLite header is SQLite; otherwise ``.db`` / ``.sqlite`` / ``.sqlite3`` mean SQLite and
anything else JSON lines. Layouts and guarantees: docs/events.md.

``write()`` never raises. A record that cannot be written (disk full, read-only directory,
database locked ...) is kept in a bounded backlog (``backlog_max`` records; beyond that the
oldest are dropped and counted) and written, in order, by a later ``write()``/``retry()``/
``close()``; if records were dropped, a ``warning`` record saying how many goes first. While
a problem lasts, a write is retried at most every ``retry_interval`` seconds (the others just
queue), and the problem is logged once, not once per record.
"""

from __future__ import annotations

import errno
import json
import math
import os
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple, Union

from sidecar.log import get_logger
from sidecar.types import RECORD_FIELDS, Record

_log = get_logger(__name__)

SQLITE_SUFFIXES: Tuple[str, ...] = (".db", ".sqlite", ".sqlite3")
_SQLITE_MAGIC = b"SQLite format 3\x00"

#: Record fields that get their own SQLite column (``data`` holds the whole record)
SQLITE_COLUMNS: Tuple[str, ...] = (
    "ts",
    "kind",
    "job_id",
    "host",
    "pid",
    "watcher",
    "trigger",
    "file",
    "action",
    "ok",
    "exit_code",
    "duration_s",
    "firing",
)
_COLUMN_TYPES: Dict[str, str] = {
    "pid": "INTEGER",
    "ok": "INTEGER",
    "exit_code": "INTEGER",
    "duration_s": "REAL",
    "firing": "INTEGER",
}
SCHEMA_VERSION = 1


def _q(name: str) -> str:
    return f'"{name}"'


_SQLITE_SCHEMA: Tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, "
    + ", ".join(f"{_q(c)} {_COLUMN_TYPES.get(c, 'TEXT')}" for c in SQLITE_COLUMNS)
    + ", data TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_job_ts ON events (job_id, ts)",
    "CREATE INDEX IF NOT EXISTS events_watcher ON events (watcher)",
    "CREATE INDEX IF NOT EXISTS events_kind ON events (kind)",
)
_SQLITE_INSERT = (
    "INSERT INTO events ("
    + ", ".join(_q(c) for c in SQLITE_COLUMNS)
    + ", data) VALUES ("
    + ", ".join("?" for _ in SQLITE_COLUMNS)
    + ", ?)"
)


# -- serialisation --------------------------------------------------------------------------


def _safe_str(v: Any) -> str:
    try:
        return str(v)
    except Exception:  # noqa: BLE001
        return f"<unprintable {type(v).__name__}>"


def _sanitise(v: Any, depth: int = 0) -> Any:
    """Make ``v`` JSON-safe: str keys, non-finite floats as strings, odd objects as str."""
    if depth > 50:
        return _safe_str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, dict):
        return {_safe_str(k): _sanitise(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_sanitise(x, depth + 1) for x in v]
    return _safe_str(v)


def _utf8_safe(s: str) -> str:
    """``s`` unchanged, or with lone surrogates (undecodable bytes of a file name) written
    as ``\\udcXX`` so that it encodes to UTF-8; inside JSON text that is the JSON escape."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def record_json(d: Dict[str, Any]) -> str:
    """Compact JSON of a record dict, encodable as UTF-8; never raises for odd values."""
    try:
        text = json.dumps(d, ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                          default=str)
    except Exception:  # noqa: BLE001 - NaN, odd keys, cycles, a __str__ that raises
        text = json.dumps(_sanitise(d), ensure_ascii=False, separators=(",", ":"))
    return _utf8_safe(text)


def _record_dict(rec: Record) -> Dict[str, Any]:
    try:
        return rec.to_dict()
    except Exception as exc:  # noqa: BLE001 - e.g. a Mapping field that is not one
        return {"ts": getattr(rec, "ts", None), "kind": "error",
                "message": f"unserialisable event record: {exc!r}"}


class _BadItem(Exception):
    """This one record can never be written (the others can): drop it."""


# -- the logs ----------------------------------------------------------------------------------


class EventLog:
    """Base: the backlog, retry and warn-once logic. Subclasses write items."""

    format = "?"

    def __init__(
        self,
        path: str,
        *,
        backlog_max: int = 10_000,
        retry_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.backlog_max = max(1, backlog_max)
        self.retry_interval = retry_interval
        self._clock = clock
        self._lock = threading.RLock()
        self._backlog: Deque[Any] = deque()
        self._lost = 0  # dropped from the backlog since the last successful write
        self._lost_total = 0
        self._problem: Optional[str] = None  # the current problem, already logged
        self._next_try = -math.inf

    # public API

    @property
    def problem(self) -> Optional[str]:
        """What currently stops records from being written (None when all is well)."""
        return self._problem

    def write(self, rec: Record) -> None:
        """Append one record. Never raises; see the module docstring."""
        try:
            d = _record_dict(rec)
            item = self._encode(d)
        except Exception as exc:  # noqa: BLE001
            _log.error("event log: cannot encode a record", error=repr(exc))
            return
        with self._lock:
            self._backlog.append(item)
            if len(self._backlog) > self.backlog_max:
                self._backlog.popleft()
                self._lost += 1
                self._lost_total += 1
            if self._problem is None or self._clock() >= self._next_try:
                self._flush()

    def retry(self) -> bool:
        """Try to write the backlog now. True when nothing is pending any more."""
        with self._lock:
            return self._flush()

    def retry_due_in(self) -> Optional[float]:
        """Seconds until the backlog is to be tried again (0: now); None when nothing waits.
        The daemon wakes up for it, so kept records reach the log once the disk has room
        again, even if nothing new happens."""
        with self._lock:
            if not self._backlog and not self._lost:
                return None
            return max(0.0, self._next_try - self._clock())

    def pending(self) -> int:
        """Records waiting in the backlog."""
        with self._lock:
            return len(self._backlog)

    @property
    def lost(self) -> int:
        """Records dropped from a full backlog since this log was opened."""
        return self._lost_total

    def close(self) -> None:
        """Try once more to write the backlog, then close. Never raises."""
        with self._lock:
            self._flush()
            if self._backlog or self._lost:
                _log.error("event log: records not written at close", path=self.path,
                           records=len(self._backlog) + self._lost, problem=self._problem)
            try:
                self._close()
            except Exception:  # noqa: BLE001
                pass

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # the machinery

    def _flush(self) -> bool:
        try:
            self._ensure_open()
            if self._lost:
                n = self._lost
                msg = (f"event log: {n} record{'s' if n != 1 else ''} lost while the log "
                       f"could not be written ({self._problem or 'backlog full'})")
                rec = Record(kind="warning", pid=os.getpid(), message=msg,
                             reason="event_log_lost", extra={"lost": n})
                self._write_item(self._encode(_record_dict(rec)))
                self._lost = 0
            while self._backlog:
                try:
                    self._write_item(self._backlog[0])
                except _BadItem as exc:
                    _log.error("event log: dropping a record that cannot be written",
                               path=self.path, error=str(exc.__cause__ or exc))
                self._backlog.popleft()
        except Exception as exc:  # noqa: BLE001 - OSError, sqlite3.Error, ...
            self._note_problem(exc)
            return False
        if self._problem is not None:
            _log.info("event log writable again", path=self.path, problem=self._problem)
            self._problem = None
            self._recovered()
        return True

    def _note_problem(self, exc: BaseException) -> None:
        text = _describe(exc)
        if text != self._problem:
            _log.warning("event log: cannot write, keeping records in memory",
                         path=self.path, error=text, pending=len(self._backlog),
                         backlog_max=self.backlog_max)
            self._problem = text
        self._next_try = self._clock() + self.retry_interval
        self._failed(exc)

    # for subclasses

    def _encode(self, d: Dict[str, Any]) -> Any:
        raise NotImplementedError

    def _ensure_open(self) -> None:
        raise NotImplementedError

    def _write_item(self, item: Any) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _failed(self, exc: BaseException) -> None:
        """A flush failed (the problem is already recorded)."""

    def _recovered(self) -> None:
        """Writing works again."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        what = os.strerror(exc.errno)
        where = f": {exc.filename}" if exc.filename else ""
        return f"{errno.errorcode.get(exc.errno, exc.errno)} ({what}){where}"
    return f"{type(exc).__name__}: {exc}"


class JsonlEventLog(EventLog):
    """One compact JSON object per line, appended with O_APPEND, one ``write(2)`` per record
    under an exclusive ``flock``: many processes can share one file (local filesystems).
    Nothing is buffered in user space, so ``tail -f`` sees each record as it is written."""

    format = "jsonl"
    #: how often (s) to check that the path still names the open file (rotation, deletion)
    check_interval = 1.0

    def __init__(self, path: str, **kw: Any) -> None:
        super().__init__(path, **kw)
        self._fd: Optional[int] = None
        self._ident: Tuple[int, int] = (0, 0)
        self._checked = -math.inf
        self._use_flock = True
        self._torn = False  # a partial line may be at the end of the file: end it first
        with self._lock:
            try:
                self._ensure_open()
            except Exception as exc:  # noqa: BLE001
                self._note_problem(exc)

    def _encode(self, d: Dict[str, Any]) -> bytes:
        return (record_json(d) + "\n").encode("utf-8")

    def _ensure_open(self) -> None:
        now = self._clock()
        if self._fd is not None and now - self._checked >= self.check_interval:
            self._checked = now
            try:
                st = os.stat(self.path)
                same = (st.st_dev, st.st_ino) == self._ident
            except OSError:
                same = False
            if not same:  # rotated or deleted under us: write to the file the path names
                self._close()
        if self._fd is None:
            parent = os.path.dirname(self.path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         0o644)
            st = os.fstat(fd)
            self._fd, self._ident, self._checked = fd, (st.st_dev, st.st_ino), now

    def _lock_file(self, fd: int, op: int) -> None:
        if not self._use_flock:
            return
        import fcntl

        try:
            fcntl.flock(fd, op)
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                # some network filesystems: O_APPEND alone must do
                _log.warning("event log: file locking not supported here; appending without it",
                             path=self.path, error=_describe(exc))
                self._use_flock = False
                return
            raise

    def _write_item(self, item: bytes) -> None:
        import fcntl

        fd = self._fd
        assert fd is not None
        data = b"\n" + item if self._torn else item
        self._lock_file(fd, fcntl.LOCK_EX)
        try:
            done = 0
            try:
                while done < len(data):
                    n = os.write(fd, data[done:] if done else data)
                    if n <= 0:
                        raise OSError(errno.EIO, "short write")
                    done += n
            except OSError:
                if done:  # take the partial record back out (we hold the lock)
                    try:
                        os.ftruncate(fd, os.fstat(fd).st_size - done)
                    except OSError:
                        self._torn = True
                raise
            self._torn = False
        finally:
            if self._use_flock:
                try:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                except OSError:
                    pass

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class SqliteEventLog(EventLog):
    """Table ``events``: a column per commonly queried field plus ``data`` (the whole record
    as JSON). WAL journal, ``busy_timeout`` 30 s, one INSERT per record in autocommit, so
    many processes can write one database (local filesystems only: WAL needs shared memory).
    """

    format = "sqlite"
    busy_timeout_ms = 30_000
    #: while the database is locked by someone else: wait this long per retry, not 30 s
    busy_retry_ms = 1_000

    def __init__(self, path: str, **kw: Any) -> None:
        super().__init__(path, **kw)
        self._conn: Any = None
        self._busy_ms = self.busy_timeout_ms
        with self._lock:
            try:
                self._ensure_open()
            except Exception as exc:  # noqa: BLE001
                self._note_problem(exc)

    def _encode(self, d: Dict[str, Any]) -> Tuple[Any, ...]:
        row: List[Any] = []
        for c in SQLITE_COLUMNS:
            v = d.get(c)
            if isinstance(v, bool):
                v = int(v)
            elif isinstance(v, str):
                v = _utf8_safe(v)
            elif isinstance(v, int) and not -(1 << 63) <= v < (1 << 63):
                v = str(v)  # too big for an SQLite INTEGER: kept as text
            elif v is not None and not isinstance(v, (int, float)):
                v = _utf8_safe(str(v))
            row.append(v)
        row.append(record_json(d))
        return tuple(row)

    def _ensure_open(self) -> None:
        if self._conn is not None:
            return
        import sqlite3

        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000.0,
                               isolation_level=None, check_same_thread=False)
        try:
            _sqlite_retry(lambda: conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}"))
            mode = _sqlite_retry(
                lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
            if not mode or str(mode[0]).lower() != "wal":
                _log.warning("event log: SQLite WAL mode not available; concurrent writers "
                             "will wait for each other", path=self.path, mode=mode)
            _sqlite_retry(lambda: conn.execute("PRAGMA synchronous = NORMAL"))
            for stmt in _SQLITE_SCHEMA:
                _sqlite_retry(lambda s=stmt: conn.execute(s))  # type: ignore[misc]
            version = _sqlite_retry(lambda: conn.execute("PRAGMA user_version").fetchone())
            if version and version[0] == 0:  # ours (a foreign database keeps its own)
                _sqlite_retry(lambda: conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}"))
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _write_item(self, item: Tuple[Any, ...]) -> None:
        import sqlite3

        try:
            self._conn.execute(_SQLITE_INSERT, item)
        except (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError,
                sqlite3.InterfaceError, OverflowError, ValueError, TypeError) as exc:
            raise _BadItem(str(exc)) from exc

    def _failed(self, exc: BaseException) -> None:
        msg = str(exc).lower()
        if self._conn is not None and ("locked" in msg or "busy" in msg):
            self._set_busy(self.busy_retry_ms)

    def _recovered(self) -> None:
        self._set_busy(self.busy_timeout_ms)

    def _set_busy(self, ms: int) -> None:
        if self._conn is None or ms == self._busy_ms:
            return
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {ms}")
            self._busy_ms = ms
        except Exception:  # noqa: BLE001
            pass

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _sqlite_retry(fn: Callable[[], Any], total: float = 30.0) -> Any:
    """Run ``fn``, retrying while the database is busy/locked (set-up statements that
    SQLite does not always route through the busy handler, e.g. ``journal_mode``)."""
    import sqlite3

    deadline = time.monotonic() + total
    delay = 0.001
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            msg = str(exc).lower()
            if ("locked" not in msg and "busy" not in msg) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


# -- choosing the format -------------------------------------------------------------------


def _sniff_sqlite(path: str) -> Optional[bool]:
    """True/False when ``path`` is a non-empty file that is / is not SQLite; None otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError:
        return None
    if not head:
        return None
    return head == _SQLITE_MAGIC


def is_sqlite_path(path: str) -> bool:
    """Would ``path`` be an SQLite event log? Content decides for a non-empty file, the
    suffix otherwise."""
    sniffed = _sniff_sqlite(path)
    if sniffed is not None:
        return sniffed
    return path.lower().endswith(SQLITE_SUFFIXES)


def open_event_log(path: str, **kw: Any) -> EventLog:
    """The event log at ``path`` (see the module docstring). Never raises for I/O problems:
    they are logged and the records kept until the log can be written (``.problem``)."""
    if is_sqlite_path(path):
        return SqliteEventLog(path, **kw)
    return JsonlEventLog(path, **kw)


# -- reading -------------------------------------------------------------------------------


class ReadStats:
    """Filled in by the readers: lines/rows that were not a valid record."""

    def __init__(self) -> None:
        self.skipped = 0


def _parse(raw: Union[bytes, str], stats: Optional[ReadStats]) -> Optional[Dict[str, Any]]:
    try:
        v = json.loads(raw)
    except ValueError:  # includes UnicodeDecodeError
        v = None
    if isinstance(v, dict):
        return v
    if stats is not None:
        stats.skipped += 1
    return None


def read_records(path: str, stats: Optional[ReadStats] = None) -> Iterator[Dict[str, Any]]:
    """Every record in the log at ``path`` (either format), oldest first, as dicts.
    Torn or invalid JSONL lines are skipped and counted in ``stats.skipped``. Raises
    OSError (or sqlite3.Error) if the log cannot be opened."""
    if is_sqlite_path(path):
        yield from _read_sqlite(path, stats)
        return
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            d = _parse(line, stats)
            if d is not None:
                yield d
    if stats is not None and stats.skipped:
        _log.debug("event log: invalid lines skipped", path=path, skipped=stats.skipped)


def _connect_ro(path: str) -> Any:
    import sqlite3
    import urllib.parse

    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30.0, check_same_thread=False)
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return conn
    except sqlite3.OperationalError:
        # read-only WAL needs the -shm file; a read-write connection only reads here
        return sqlite3.connect(path, timeout=30.0, check_same_thread=False)


def _read_sqlite(path: str, stats: Optional[ReadStats],
                 after: int = 0) -> Iterator[Dict[str, Any]]:
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    conn = _connect_ro(path)
    try:
        for (data,) in conn.execute("SELECT data FROM events WHERE id > ? ORDER BY id",
                                    (after,)):
            d = _parse(data, stats)
            if d is not None:
                yield d
    finally:
        conn.close()


def follow_records(
    path: str,
    stop: Callable[[], bool],
    poll: float = 0.2,
    *,
    from_start: bool = True,
    stats: Optional[ReadStats] = None,
) -> Iterator[Dict[str, Any]]:
    """Records of the log at ``path`` as they are written (``tail -f``), until ``stop()``
    is true; what is there when ``stop()`` turns true is still read. Waits for a log that
    does not exist yet; follows a JSONL file across rotation and truncation.
    ``from_start=False`` skips what is already there."""
    while not _followable(path):
        if stop():
            return
        time.sleep(poll)
    if is_sqlite_path(path):
        yield from _follow_sqlite(path, stop, poll, from_start, stats)
    else:
        yield from _follow_jsonl(path, stop, poll, from_start, stats)


def _followable(path: str) -> bool:
    """Exists, and (for an SQLite log) is more than an empty file being created."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return False
    return size > 0 or not is_sqlite_path(path)


def _follow_jsonl(path: str, stop: Callable[[], bool], poll: float, from_start: bool,
                  stats: Optional[ReadStats]) -> Iterator[Dict[str, Any]]:
    f = None
    ident: Tuple[int, int] = (0, 0)
    pending = b""
    first = True
    final = False
    try:
        while True:
            if f is None:
                try:
                    f = open(path, "rb")  # noqa: SIM115 - kept open across iterations
                    st = os.fstat(f.fileno())
                    ident = (st.st_dev, st.st_ino)
                    if first and not from_start:
                        f.seek(0, os.SEEK_END)
                    first = False
                    pending = b""
                except OSError:
                    f = None
            if f is not None:
                while True:
                    data = f.read(1 << 20)
                    if not data:
                        break
                    lines = (pending + data).split(b"\n")
                    pending = lines.pop()
                    for line in lines:
                        if line.strip():
                            d = _parse(line, stats)
                            if d is not None:
                                yield d
                # the old file is read to its end: has the path moved on?
                try:
                    st = os.stat(path)
                    moved = (st.st_dev, st.st_ino) != ident
                    truncated = not moved and st.st_size < f.tell()
                except OSError:
                    moved, truncated = False, False  # deleted: wait for a new one
                if moved or truncated:
                    if pending.strip():
                        _parse(pending, stats)  # an unfinished last line: count it
                    f.close()
                    f = None
                    continue
            if final:
                return
            if stop():
                final = True  # read once more: what was written until now is still yielded
                continue
            time.sleep(poll)
    finally:
        if f is not None:
            f.close()


def _follow_sqlite(path: str, stop: Callable[[], bool], poll: float, from_start: bool,
                   stats: Optional[ReadStats]) -> Iterator[Dict[str, Any]]:
    import sqlite3

    conn = None
    last: Optional[int] = 0 if from_start else None
    final = False
    try:
        while True:
            try:
                if conn is None:
                    conn = _connect_ro(path)
                if last is None:
                    row = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
                    last = int(row[0])
                while True:
                    rows = conn.execute(
                        "SELECT id, data FROM events WHERE id > ? ORDER BY id LIMIT 1000",
                        (last,)).fetchall()
                    for rid, data in rows:
                        last = int(rid)
                        d = _parse(data, stats)
                        if d is not None:
                            yield d
                    if len(rows) < 1000:
                        break
            except sqlite3.OperationalError:  # no table yet, locked: try again later
                pass
            if final:
                return
            if stop():
                final = True  # read once more: what was written until now is still yielded
                continue
            time.sleep(poll)
    finally:
        if conn is not None:
            conn.close()


__all__ = [
    "EventLog",
    "JsonlEventLog",
    "ReadStats",
    "RECORD_FIELDS",
    "SQLITE_COLUMNS",
    "SqliteEventLog",
    "follow_records",
    "is_sqlite_path",
    "open_event_log",
    "read_records",
    "record_json",
]
