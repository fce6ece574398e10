"""Event log: formats, reading/following, many writers, write failures and the backlog."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List

import pytest
from structlog.testing import capture_logs

from sidecar.eventlog import (
    JsonlEventLog,
    ReadStats,
    SqliteEventLog,
    follow_records,
    open_event_log,
    read_records,
)
from sidecar.types import Record
from tests.conftest import wait_until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def rec(i: int, **kw: Any) -> Record:
    kw.setdefault("kind", "log")
    return Record(message=f"m{i}", lineno=i, **kw)


def messages(path: str) -> List[str]:
    return [d.get("message", "") for d in read_records(path)]


@pytest.fixture(params=["jsonl", "db"])
def fmt(request: Any) -> str:
    return str(request.param)


# -- formats ---------------------------------------------------------------------------------


def test_jsonl_one_compact_object_per_line_in_created_dirs(tmp_path: Any) -> None:
    path = str(tmp_path / "a" / "b" / "ev.jsonl")
    log = open_event_log(path)
    assert isinstance(log, JsonlEventLog)
    log.write(Record(kind="start", ts="T1", job_id="42", message="héllo ✓"))
    log.write(Record(kind="action", ts="T2", ok=True, exit_code=0, duration_s=0.5,
                     captures={"a": "1", "b": None}))
    # flushed per record: visible before close
    raw = Path(path).read_bytes().decode("utf-8")
    log.close()
    assert raw.splitlines() == [
        '{"ts":"T1","kind":"start","job_id":"42","message":"héllo ✓"}',
        '{"ts":"T2","kind":"action","captures":{"a":"1","b":null},"ok":true,'
        '"exit_code":0,"duration_s":0.5}',
    ]
    assert list(read_records(path))[1]["captures"] == {"a": "1", "b": None}


def test_sqlite_layout_columns_indexes_wal(tmp_path: Any) -> None:
    path = str(tmp_path / "sub" / "ev.sqlite3")
    log = open_event_log(path)
    assert isinstance(log, SqliteEventLog)
    r = Record(kind="action", ts="T", job_id="7", host="n1", pid=9, watcher="w",
               trigger="regex", file="/f", action="run_command", ok=False, exit_code=2,
               duration_s=1.5, firing=3, output="out", extra={"k": [1]})
    log.write(r)
    conn = sqlite3.connect(path)
    row = conn.execute(
        'SELECT ts, kind, job_id, host, pid, watcher, "trigger", file, action, ok, '
        "exit_code, duration_s, firing, data FROM events").fetchone()
    assert row[:13] == ("T", "action", "7", "n1", 9, "w", "regex", "/f", "run_command", 0,
                        2, 1.5, 3)
    assert json.loads(row[13]) == r.to_dict()
    indexes = {n for (n,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='events'")}
    assert {"events_job_ts", "events_watcher", "events_kind"} <= indexes
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert log._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    conn.close()
    log.close()
    assert list(read_records(path)) == [r.to_dict()]


@pytest.mark.parametrize("name,kind", [("e.jsonl", "jsonl"), ("e.log", "jsonl"), ("e", "jsonl"),
                                       ("e.db", "sqlite"), ("e.SQLITE", "sqlite"),
                                       ("e.sqlite3", "sqlite")])
def test_format_follows_the_suffix(tmp_path: Any, name: str, kind: str) -> None:
    log = open_event_log(str(tmp_path / name))
    assert log.format == kind
    log.close()


def test_an_existing_file_content_wins_over_the_suffix(tmp_path: Any) -> None:
    """Never append JSON lines to a database (or the reverse) because of its name."""
    db = str(tmp_path / "really-sqlite.jsonl")
    sqlite3.connect(db).execute("CREATE TABLE x (y)").connection.close()
    assert open_event_log(db).format == "sqlite"
    jl = tmp_path / "really-jsonl.db"
    jl.write_text('{"kind":"start"}\n')
    log = open_event_log(str(jl))
    assert log.format == "jsonl"
    log.write(rec(1))
    log.close()
    assert [d["kind"] for d in read_records(str(jl))] == ["start", "log"]


def test_odd_values_still_give_valid_utf8_json(tmp_path: Any, fmt: str) -> None:
    path = str(tmp_path / f"ev.{fmt}")
    log = open_event_log(path)
    log.write(Record(kind="metric", metric="loss", value=float("nan"),
                     file="/data/\udcff.log", extra={"s": {3}, (1, 2): object, "inf": 1e999},
                     exit_code=1 << 70))
    log.write(Record(kind="log", captures=[("a", "b")]))  # type: ignore[arg-type]
    log.close()
    if fmt == "jsonl":
        for line in Path(path).read_bytes().splitlines():
            json.loads(line.decode("utf-8", "strict"), parse_constant=pytest.fail)
    got = list(read_records(path))
    assert got[0]["value"] == "nan" and got[0]["extra"]["inf"] == "inf"
    assert got[0]["file"] == "/data/\udcff.log"  # the JSON escape round-trips
    assert got[0]["exit_code"] == 1 << 70
    assert got[1]["kind"] in ("log", "error")
    assert log.pending() == 0


# -- reading ---------------------------------------------------------------------------------


def test_read_records_skips_and_counts_torn_lines(tmp_path: Any) -> None:
    p = tmp_path / "ev.jsonl"
    p.write_bytes(b'{"kind":"start"}\n{"kind":"ac\n\n[1,2]\n\xff\xfe\n{"kind":"stop"}\n{"kin')
    stats = ReadStats()
    assert [d["kind"] for d in read_records(str(p), stats)] == ["start", "stop"]
    assert stats.skipped == 4


def test_read_records_of_a_missing_log_raises_oserror(tmp_path: Any) -> None:
    with pytest.raises(OSError):
        list(read_records(str(tmp_path / "nope.jsonl")))
    with pytest.raises(OSError):
        list(read_records(str(tmp_path / "nope.db")))


def _follow_in_thread(path: str, **kw: Any) -> Any:
    out: List[Dict[str, Any]] = []
    stop = threading.Event()
    t = threading.Thread(target=lambda: out.extend(
        follow_records(path, stop.is_set, poll=0.01, **kw)))
    t.start()
    return out, stop, t


def test_follow_waits_for_a_late_log_and_sees_new_records(tmp_path: Any, fmt: str) -> None:
    path = str(tmp_path / "late" / f"ev.{fmt}")
    out, stop, t = _follow_in_thread(path)
    try:
        assert not out
        log = open_event_log(path)
        log.write(rec(1))
        wait_until(lambda: len(out) == 1, 5)
        log.write(rec(2))
        log.write(rec(3))
        wait_until(lambda: len(out) == 3, 5)
        log.close()
    finally:
        stop.set()
        t.join(5)
    assert not t.is_alive()
    assert [d["message"] for d in out] == ["m1", "m2", "m3"]


def test_follow_from_end_skips_existing_records(tmp_path: Any, fmt: str) -> None:
    path = str(tmp_path / f"ev.{fmt}")
    log = open_event_log(path)
    log.write(rec(1))
    out, stop, t = _follow_in_thread(path, from_start=False)
    try:
        wait_until(lambda: t.is_alive(), 5)
        import time

        time.sleep(0.1)  # let the follower reach the end (real thread, real file)
        log.write(rec(2))
        wait_until(lambda: len(out) >= 1, 5)
    finally:
        stop.set()
        t.join(5)
        log.close()
    assert [d["message"] for d in out] == ["m2"]


def test_follow_jsonl_across_rotation_and_truncation(tmp_path: Any) -> None:
    path = str(tmp_path / "ev.jsonl")
    with open(path, "w") as f:
        f.write('{"message":"a"}\n')
    out, stop, t = _follow_in_thread(path)
    try:
        wait_until(lambda: len(out) == 1, 5)
        with open(path, "a") as f:
            f.write('{"message":"b"}\n')
        os.rename(path, path + ".1")
        with open(path, "w") as f:
            f.write('{"message":"c"}\n')
        wait_until(lambda: len(out) == 3, 5)
        with open(path, "w") as f:  # truncated, then written again
            f.write("")
        wait_until(lambda: os.path.getsize(path) == 0)
        import time

        time.sleep(0.05)  # the follower must see the truncation before the new line
        with open(path, "w") as f:
            f.write('{"message":"d"}\n')
        wait_until(lambda: len(out) == 4, 5)
    finally:
        stop.set()
        t.join(5)
    assert [d["message"] for d in out] == ["a", "b", "c", "d"]


# -- many writers ----------------------------------------------------------------------------

_WRITER = r"""
import sys
from sidecar.eventlog import open_event_log
from sidecar.types import Record
w, n = int(sys.argv[1]), int(sys.argv[2])
logs = [open_event_log(p) for p in sys.argv[3:]]
pad = "x" * (100 + 37 * w)  # records of many sizes, some over 1 kB
for i in range(n):
    r = Record(kind="log", pid=w, lineno=i, message=f"{w}:{i}:{pad}")
    for log in logs:
        log.write(r)
for log in logs:
    log.close()
    if log.pending() or log.problem:
        sys.exit(f"writer {w}: {log.pending()} pending: {log.problem}")
"""


def test_32_processes_append_to_one_jsonl_and_one_sqlite_while_followed(tmp_path: Any) -> None:
    """Every record present exactly once, none torn, in both formats, and a follower
    running at the same time sees them all too."""
    writers, per = 32, 500
    jl, db = str(tmp_path / "ev.jsonl"), str(tmp_path / "ev.db")
    followers = {p: _follow_in_thread(p) for p in (jl, db)}
    env = dict(os.environ, PYTHONPATH=REPO)
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(w), str(per), jl, db],
                              env=env, stderr=subprocess.PIPE) for w in range(writers)]
    try:
        for p in procs:
            _, err = p.communicate(timeout=90)
            assert p.returncode == 0, err.decode()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for _, stop, _t in followers.values():
            stop.set()
        for _, _, t in followers.values():
            t.join(30)
    expected = {(w, i) for w in range(writers) for i in range(per)}

    def check(records: List[Dict[str, Any]]) -> None:
        keys = [(d["pid"], d["lineno"]) for d in records]
        assert len(keys) == len(expected) and set(keys) == expected
        for d in records:
            w, i, pad = d["message"].split(":")
            assert (int(w), int(i)) == (d["pid"], d["lineno"])
            assert pad == "x" * (100 + 37 * int(w))

    raw = Path(jl).read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    check([json.loads(line) for line in lines])  # every single line parses: nothing torn
    check(list(read_records(db)))
    for path, (out, _, t) in followers.items():
        assert not t.is_alive()
        check(out)
        # each writer's own records keep their order
        for w in (0, writers - 1):
            mine = [d["lineno"] for d in out if d["pid"] == w]
            assert mine == sorted(mine), path


# -- failures and the backlog ----------------------------------------------------------------


def _failing_write(fail: Dict[str, Any]) -> Any:
    real = os.write

    def write(fd: int, data: Any) -> int:
        if fail["on"]:
            fail["calls"] += 1
            if fail.get("partial") and len(data) > 10:
                return real(fd, bytes(data[:10]))  # a short write; the next one fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    return write


def test_retry_due_in_says_when_a_kept_backlog_is_to_be_tried_again(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """None while all is written; after a failure, the retry interval, counting down to 0;
    retry() then writes the backlog and it is None again (the daemon sleeps until then)."""
    path = str(tmp_path / "ev.jsonl")
    clock = Clock()
    log = open_event_log(path, clock=clock)
    log.write(rec(0))
    assert log.retry_due_in() is None
    fail = {"on": True, "calls": 0}
    monkeypatch.setattr(os, "write", _failing_write(fail))
    log.write(rec(1))
    assert log.retry_due_in() == 1.0
    clock.t += 0.25
    assert log.retry_due_in() == 0.75
    clock.t += 1.0
    assert log.retry_due_in() == 0.0
    fail["on"] = False
    assert log.retry() is True
    assert log.retry_due_in() is None
    log.close()
    assert messages(path) == ["m0", "m1"]


def test_disk_full_keeps_records_and_writes_them_later_in_order(
    tmp_path: Any, monkeypatch: Any
) -> None:
    path = str(tmp_path / "ev.jsonl")
    clock = Clock()
    log = open_event_log(path, clock=clock)
    log.write(rec(0))
    fail = {"on": True, "calls": 0}
    monkeypatch.setattr(os, "write", _failing_write(fail))
    with capture_logs() as logs:
        for i in range(1, 51):
            log.write(rec(i))  # never raises
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1 and "ENOSPC" in warnings[0]["error"]  # once, not 50 times
    assert log.pending() == 50 and log.problem and "ENOSPC" in log.problem
    assert fail["calls"] == 1  # retried at most every retry_interval, not per record
    clock.t += 1.0
    log.write(rec(51))
    assert fail["calls"] == 2 and log.pending() == 51
    fail["on"] = False
    assert messages(path) == ["m0"]
    with capture_logs() as logs:
        clock.t += 1.0
        log.write(rec(52))
    assert log.pending() == 0 and log.problem is None
    assert any(e["event"] == "event log writable again" for e in logs)
    log.close()
    assert messages(path) == [f"m{i}" for i in range(53)]


def test_short_write_on_disk_full_leaves_no_torn_line(tmp_path: Any, monkeypatch: Any) -> None:
    path = str(tmp_path / "ev.jsonl")
    log = open_event_log(path)
    log.write(rec(0))
    fail = {"on": True, "calls": 0, "partial": True}
    monkeypatch.setattr(os, "write", _failing_write(fail))
    log.write(rec(1))
    fail["on"] = False
    assert Path(path).read_bytes().count(b"\n") == 1  # the 10 bytes were taken back
    assert log.retry() and log.pending() == 0
    log.close()
    stats = ReadStats()
    assert [d["message"] for d in read_records(path, stats)] == ["m0", "m1"]
    assert stats.skipped == 0


def test_full_backlog_drops_oldest_and_says_how_many_were_lost(
    tmp_path: Any, monkeypatch: Any
) -> None:
    path = str(tmp_path / "ev.jsonl")
    log = open_event_log(path, backlog_max=5)
    fail = {"on": True, "calls": 0}
    monkeypatch.setattr(os, "write", _failing_write(fail))
    for i in range(8):
        log.write(rec(i))
    assert log.pending() == 5 and log.lost == 3
    fail["on"] = False
    assert log.retry()
    log.close()
    got = list(read_records(path))
    assert got[0]["kind"] == "warning" and got[0]["extra"] == {"lost": 3}
    assert "3 records lost" in got[0]["message"]
    assert [d["message"] for d in got[1:]] == ["m3", "m4", "m5", "m6", "m7"]


def test_unwritable_location_never_raises_and_close_reports(tmp_path: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = str(blocker / "sub" / "ev.jsonl")  # parent is a regular file
    with capture_logs() as logs:
        log = open_event_log(path)
        log.write(rec(1))
        log.write(rec(2))
        assert log.problem is not None and log.pending() == 2
        assert not log.retry()
        log.close()
    assert [e["log_level"] for e in logs] == ["warning", "error"]


def test_log_created_when_the_directory_appears_later(tmp_path: Any) -> None:
    blocker = tmp_path / "d"
    blocker.write_text("")
    path = str(blocker / "ev.jsonl")
    log = open_event_log(path)
    log.write(rec(1))
    assert log.pending() == 1
    blocker.unlink()
    assert log.retry()
    log.close()
    assert messages(path) == ["m1"]


def test_sqlite_disk_full_backlog_then_written(tmp_path: Any, monkeypatch: Any) -> None:
    path = str(tmp_path / "ev.db")
    log = open_event_log(path, clock=Clock())
    real = SqliteEventLog._write_item
    broken = {"on": True}

    def write_item(self: SqliteEventLog, item: Any) -> None:
        if broken["on"]:
            raise sqlite3.OperationalError("database or disk is full")
        real(self, item)

    monkeypatch.setattr(SqliteEventLog, "_write_item", write_item)
    for i in range(20):
        log.write(rec(i))
    assert log.pending() == 20 and "disk is full" in (log.problem or "")
    broken["on"] = False
    log.close()  # tries once more
    assert log.pending() == 0
    assert messages(path) == [f"m{i}" for i in range(20)]


def test_sqlite_locked_by_another_writer_is_retried(tmp_path: Any) -> None:
    path = str(tmp_path / "ev.db")
    log = open_event_log(path, clock=Clock())
    assert isinstance(log, SqliteEventLog)
    log._set_busy(50)  # do not wait the real 30 s
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock
    log.write(rec(1))
    assert log.pending() == 1 and "locked" in (log.problem or "")
    other.execute("ROLLBACK")
    other.close()
    assert log.retry()
    assert log._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000  # restored
    log.close()
    assert messages(path) == ["m1"]


def test_jsonl_writer_follows_the_path_after_rotation(tmp_path: Any) -> None:
    path = str(tmp_path / "ev.jsonl")
    clock = Clock()
    log = open_event_log(path, clock=clock)
    log.write(rec(1))
    os.rename(path, path + ".old")
    log.write(rec(2))  # within check_interval: still the old file
    clock.t += 1.0
    log.write(rec(3))
    log.close()
    assert messages(path + ".old") == ["m1", "m2"]
    assert messages(path) == ["m3"]


def test_write_of_a_broken_record_never_raises(tmp_path: Any, fmt: str) -> None:
    path = str(tmp_path / f"ev.{fmt}")
    log = open_event_log(path)

    class Weird:
        def __str__(self) -> str:
            raise RuntimeError("no str")

    log.write(Record(kind="log", value=Weird()))
    log.write(Record(kind="log", extra={"a": Weird()}))
    log.write(rec(1))
    log.close()
    assert messages(path)[-1] == "m1"
