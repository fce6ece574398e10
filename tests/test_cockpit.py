"""The read side: sidecar.cockpit (query, filter, format, stats, metrics, Prometheus) and the
cockpit commands of sidecar.cli_cockpit (events, stats, metrics, test-pattern, schema, init).

Event logs are written with the real writer (sidecar.eventlog, JSONL and SQLite); --follow
runs real reader threads against files written while it runs (bounded waits); the broken
pipe case runs a real subprocess whose reader goes away."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar import cli_cockpit, cockpit
from sidecar.cockpit import (
    PrometheusExport,
    ReadProblems,
    RecordFilter,
    Table,
    clean_text,
    compute_stats,
    follow_path,
    format_stats,
    iter_records,
    last_n,
    metric_points,
    metric_summary,
    parse_since,
    parse_ts,
    prometheus_text,
    sanitize_metric_name,
    summary,
    text_width,
    to_number,
    truncate,
    write_prometheus_textfile,
)
from sidecar.eventlog import open_event_log
from sidecar.types import Record
from tests.conftest import wait_until

REPO = Path(__file__).resolve().parent.parent
T0 = 1714557600.0  # 2024-05-01T10:00:00Z


def iso(t: float) -> str:
    return (
        dt.datetime.fromtimestamp(t, dt.timezone.utc)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def write_log(path: Path, recs: List[Record]) -> Path:
    log = open_event_log(str(path))
    for r in recs:
        log.write(r)
    log.close()
    return path


def run_main(argv: List[str], capsys: Any) -> tuple[int, str, str]:
    rc = cli_cockpit.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def sample(host: str = "n1", job: str = "42", t0: float = T0) -> List[Record]:
    """A small realistic run: start, matches + metrics, a failing action, a state change,
    a skip, a warning, stop."""
    recs = [
        Record(kind="start", ts=iso(t0), job_id=job, host=host, pid=7,
               message="sidecar started with 2 watcher(s)", extra={"watchers": ["loss", "oom"]}),
    ]
    for i in range(5):
        t = t0 + 60 * (i + 1)
        recs.append(Record(kind="match", ts=iso(t), job_id=job, host=host, watcher="loss",
                           trigger="regex", file="/w/train.log", line=f"epoch {i} loss=0.{9 - i}",
                           lineno=i + 1, captures={"loss": f"0.{9 - i}"}, firing=i))
        recs.append(Record(kind="metric", ts=iso(t), job_id=job, host=host, watcher="loss",
                           metric="loss", value=float(f"0.{9 - i}"), firing=i))
    recs += [
        Record(kind="match", ts=iso(t0 + 400), job_id=job, host=host, watcher="oom",
               trigger="regex", file="/w/slurm-42.out", line="CUDA out of memory", lineno=9,
               firing=9),
        Record(kind="action", ts=iso(t0 + 401), job_id=job, host=host, watcher="oom",
               action="notify_email", ok=False, message="SMTP 554", duration_s=0.5, firing=9),
        Record(kind="action", ts=iso(t0 + 402), job_id=job, host=host, watcher="oom",
               action="run_command", ok=False, exit_code=124, reason="timeout", firing=9),
        Record(kind="state", ts=iso(t0 + 403), job_id=job, host=host, watcher="oom",
               state="DISABLED", previous_state="ACTIVE", reason="too many failures"),
        Record(kind="skipped", ts=iso(t0 + 404), job_id=job, host=host, watcher="loss",
               reason="rate_limit", message="4 firing(s) not acted on (rate_limit)",
               extra={"count": 4}),
        Record(kind="warning", ts=iso(t0 + 405), job_id=job, host=host,
               message="event queue overflow: rescanning all files"),
    ]
    return recs


# ---------------------------------------------------------------------------------------------
# time


def test_parse_ts_accepts_the_record_format_offsets_and_long_fractions() -> None:
    assert parse_ts("2024-05-01T10:00:00.000000Z") == T0
    assert parse_ts("2024-05-01T12:00:00+02:00") == T0
    assert parse_ts("2024-05-01T10:00:00") == T0  # naive record timestamps are UTC
    assert parse_ts("2024-05-01T10:00:00.123456789Z") == pytest.approx(T0 + 0.123456)
    assert parse_ts("2024-05-01T10:00:00.5Z") == pytest.approx(T0 + 0.5)
    for bad in (None, 12, "", "yesterday", "2024-13-01T00:00:00Z"):
        assert parse_ts(bad) is None


@given(st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2200, 1, 1)))
@settings(max_examples=300, deadline=None)
def test_parse_ts_fast_path_agrees_with_fromisoformat(d: dt.datetime) -> None:
    s = d.replace(tzinfo=dt.timezone.utc).isoformat(timespec="microseconds")
    ts = s.replace("+00:00", "Z")  # the format Record.ts has
    assert parse_ts(ts) == dt.datetime.fromisoformat(s).timestamp()


@pytest.mark.parametrize(
    "text, ago",
    [("10m", 600), ("2h", 7200), ("1d", 86400), ("30s", 30), ("1.5 hours", 5400),
     ("90", 90), ("2h ago", 7200), ("1w", 604800), ("10min", 600)],
)
def test_parse_since_relative_durations_count_back_from_now(text: str, ago: float) -> None:
    assert parse_since(text, now=T0) == pytest.approx(T0 - ago)


def test_parse_since_absolute_times_utc_offset_and_local() -> None:
    assert parse_since("2024-05-01T10:00:00Z", now=0) == T0
    assert parse_since("2024-05-01T12:00+02:00", now=0) == T0
    local = dt.datetime(2024, 5, 1, 10, 0).astimezone().timestamp()
    assert parse_since("2024-05-01T10:00", now=0) == local  # no zone: local time
    assert parse_since("2024-05-01 10:00:00", now=0) == local
    assert parse_since("2024-05-01", now=0) == dt.datetime(2024, 5, 1).astimezone().timestamp()
    today = dt.datetime.fromtimestamp(T0).replace(hour=14, minute=30, second=0, microsecond=0)
    assert parse_since("14:30", now=T0) == today.timestamp()


@pytest.mark.parametrize("bad", ["10 parsecs", "soon", "2024-05-32", "25:00", ""])
def test_parse_since_rejects_nonsense_with_a_helpful_message(bad: str) -> None:
    with pytest.raises(ValueError) as ei:
        parse_since(bad, now=T0)
    assert "10m" in str(ei.value) or "unit" in str(ei.value) or "clock" in str(ei.value)


# ---------------------------------------------------------------------------------------------
# text


def test_clean_text_strips_ansi_and_escapes_controls_and_surrogates() -> None:
    assert clean_text("\x1b[31mERROR\x1b[0m bad") == "ERROR bad"
    assert clean_text("a\tb") == "a b"
    assert clean_text("bell\x07 cr\r nul\x00") == "bell\\x07 cr\\x0d nul\\x00"
    assert clean_text("c1\x9b31m") == "c1\\x9b31m"
    assert clean_text("bad byte \udcff").encode("utf-8") == b"bad byte \\udcff"
    assert clean_text("plain ünïcödé") == "plain ünïcödé"


def test_truncate_counts_terminal_cells_for_wide_characters() -> None:
    assert truncate("abcdef", 4) == "abc…"
    assert truncate("abc", 4) == "abc"
    s = truncate("日本語のテキスト", 7)
    assert text_width(s) <= 7 and s.endswith("…")
    assert text_width("日本") == 4


# ---------------------------------------------------------------------------------------------
# reading and filtering


def test_iter_records_merges_a_directory_of_jsonl_and_sqlite_logs_by_time(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    write_log(d / "n1.jsonl", sample("n1", t0=T0))
    write_log(d / "n2.db", sample("n2", t0=T0 + 30))
    (d / "notes.txt").write_text("not a log\n")
    (d / "sub").mkdir()
    write_log(d / "sub" / "n3.jsonl", sample("n3"))  # subdirectories are not read
    recs = list(iter_records(str(d)))
    assert len(recs) == 2 * len(sample())
    ts = [parse_ts(r["ts"]) for r in recs]
    assert ts == sorted(ts)
    assert {r["host"] for r in recs} == {"n1", "n2"}


def test_iter_records_reports_an_unreadable_file_in_a_directory_and_reads_the_rest(
    tmp_path: Path,
) -> None:
    d = tmp_path / "logs"
    write_log(d / "n1.jsonl", sample("n1"))
    sqlite3.connect(str(d / "other.db")).execute("CREATE TABLE t (x)").connection.commit()
    with open(d / "n1.jsonl", "ab") as f:
        f.write(b'{"torn": \n')
    problems = ReadProblems()
    recs = list(iter_records(str(d), problems=problems))
    assert len(recs) == len(sample())
    assert len(problems.errors) == 1 and "other.db" in problems.errors[0]
    assert problems.skipped_lines == 1


def test_iter_records_raises_for_a_missing_single_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(iter_records(str(tmp_path / "nope.jsonl")))


def test_record_filter_by_job_watcher_kind_host_globs_and_time() -> None:
    recs = [r.to_dict() for r in sample("n1", "42") + sample("n2", "43")]
    assert {r["job_id"] for r in recs if RecordFilter(jobs=("43",))(r)} == {"43"}
    kept = [r for r in recs if RecordFilter(watchers=("lo*",), kinds=("match",))(r)]
    assert len(kept) == 10 and all(r["watcher"] == "loss" for r in kept)
    assert all(r["host"] == "n2" for r in recs if RecordFilter(hosts=("n2",))(r))
    since = [r for r in recs if RecordFilter(since=T0 + 400, until=T0 + 402)(r)]
    assert [r["kind"] for r in since] == ["match", "action", "action"] * 2
    assert not RecordFilter(since=0)({"kind": "log"})  # no ts: cannot be placed in time
    assert RecordFilter().empty and not RecordFilter(kinds=("x",)).empty


def test_last_n_keeps_the_last_records() -> None:
    assert last_n(iter([{"i": i} for i in range(10)]), 3) == [{"i": 7}, {"i": 8}, {"i": 9}]
    assert last_n(iter([{"i": 1}]), 0) == []
    assert len(last_n(iter([{"i": 1}] * 4), None)) == 4


# ---------------------------------------------------------------------------------------------
# one line per record, the table


@pytest.mark.parametrize(
    "rec, expected",
    [
        ({"kind": "match", "line": "loss=nan"}, "loss=nan"),
        ({"kind": "match", "trigger": "stale", "file": "/w/slurm-1.out",
          "extra": {"timeout": 1800.0}}, "stale: slurm-1.out (no write for 1800s)"),
        ({"kind": "match", "trigger": "file_event", "event": "close", "file": "/w/c.pt"},
         "close: c.pt"),
        ({"kind": "action", "action": "run_command", "ok": True, "exit_code": 0,
          "duration_s": 0.25}, "run_command ok exit 0 0.25s"),
        ({"kind": "action", "action": "notify_email", "ok": False, "message": "SMTP 554"},
         "notify_email FAILED: SMTP 554"),
        ({"kind": "action", "action": "run_command", "ok": False, "exit_code": 3,
          "output": "x\nlast words\n"}, "run_command FAILED exit 3: last words"),
        ({"kind": "action", "action": "run_command", "ok": False, "reason": "timeout"},
         "run_command FAILED (timed out)"),
        ({"kind": "state", "state": "PAUSED", "previous_state": "ACTIVE", "reason": "manual"},
         "ACTIVE -> PAUSED (manual)"),
        ({"kind": "metric", "metric": "loss", "value": 0.5}, "loss = 0.5"),
        ({"kind": "log", "level": "ERROR", "message": "boom"}, "[ERROR] boom"),
        ({"kind": "skipped", "reason": "rate_limit"}, "rate_limit"),
        ({"kind": "warning", "message": "overflow"}, "overflow"),
        ({"kind": "mystery"}, ""),
    ],
)
def test_summary_says_what_each_kind_of_record_means(rec: Dict[str, Any], expected: str) -> None:
    assert summary(rec) == expected


def test_table_rows_are_aligned_and_cut_to_the_width() -> None:
    recs = [r.to_dict() for r in sample()]
    recs[1]["line"] = "x" * 500 + "\x1b[31m"
    table = Table.fit(recs, 80)
    lines = [table.header()] + [table.row(r) for r in recs]
    assert all(text_width(ln) <= 80 for ln in lines)
    assert lines[0].split() == ["TIME", "JOB", "HOST", "WATCHER", "KIND", "WHAT"]
    kind_col = lines[0].index("KIND")
    assert all(ln[kind_col:].split()[0] in cockpit.KNOWN_KINDS for ln in lines[1:])
    assert "\x1b" not in "".join(lines)
    assert lines[2].endswith("…")
    untruncated = Table.fit(recs, None).row(recs[1])
    assert "x" * 500 in untruncated


def test_table_fit_hides_columns_that_are_empty_everywhere() -> None:
    recs = [{"ts": iso(T0), "kind": "log", "message": "hi", "watcher": "w"}]
    header = Table.fit(recs).header()
    assert "JOB" not in header and "HOST" not in header and "WATCHER" in header


def test_table_colours_only_when_asked() -> None:
    rec = {"ts": iso(T0), "kind": "error", "message": "x", "watcher": "w"}
    assert "\x1b[31m" in Table.fit([rec], color=True).row(rec)
    assert "\x1b" not in Table.fit([rec]).row(rec)


# ---------------------------------------------------------------------------------------------
# statistics


def test_stats_count_states_actions_skips_busiest_and_the_last_hour() -> None:
    recs = [r.to_dict() for r in sample()]
    recs.append(Record(kind="stop", ts=iso(T0 + 500), job_id="42", host="n1",
                       extra={"watchers": {"loss": {"state": "COMPLETED"}}}).to_dict())
    st = compute_stats(recs, now=T0 + 3600 + 250)  # the last hour starts at T0+250
    assert st["watchers_by_state"] == {"COMPLETED": 1, "DISABLED": 1}
    assert st["actions"] == {
        "notify_email": {"total": 1, "ok": 0, "failed": 1, "timed_out": 0},
        "run_command": {"total": 1, "ok": 0, "failed": 1, "timed_out": 1},
    }
    assert st["skipped"] == {"rate_limit": 4}
    assert st["last_hour"] == {"records": 9, "matches": 2, "actions": 2, "failed": 2}
    assert [(w["watcher"], w["matches"]) for w in st["busiest"]] == [("loss", 5), ("oom", 1)]
    assert st["records"] == len(recs) and st["jobs"] == ["42"] and st["hosts"] == ["n1"]
    assert st["warnings"] == 1 and st["metrics"] == {"loss": 5}
    text = format_stats(st, source="x.jsonl")
    for needle in ("COMPLETED", "DISABLED", "notify_email", "rate_limit 4", "Last hour: 9",
                   "Busiest watchers", "1 warning"):
        assert needle in text


def test_stats_keep_watchers_of_different_hosts_apart_and_limit_top() -> None:
    recs = [r.to_dict() for r in sample("n1") + sample("n2")]
    st = compute_stats(recs, now=T0, top=1)
    assert st["watchers_by_state"] == {"ACTIVE": 2, "DISABLED": 2}
    assert len(st["busiest"]) == 1
    assert "loss (n1)" in format_stats(st)


# ---------------------------------------------------------------------------------------------
# metrics and Prometheus


def test_to_number_reads_numbers_numeric_text_and_non_finite_values() -> None:
    assert to_number(3) == 3.0 and to_number("0.25") == 0.25 and to_number(" 1e-3 ") == 0.001
    assert math.isnan(to_number("nan") or 0) and to_number("-inf") == -math.inf
    assert to_number(True) == 1.0
    for bad in ("abc", "", None, [1], {"a": 1}, "1,5"):
        assert to_number(bad) is None


def test_metric_points_and_summary_per_series() -> None:
    recs = [r.to_dict() for r in sample("n1") + sample("n2")]
    recs.append({"ts": iso(T0 + 999), "kind": "metric", "host": "n1", "job_id": "42",
                 "watcher": "loss", "metric": "loss", "value": "nan"})
    recs.append({"ts": iso(T0 + 999), "kind": "metric", "metric": "phase", "value": "eval"})
    recs.append({"ts": iso(T0), "kind": "action", "metric": "loss", "value": 9.0})  # not metric
    pts = metric_points(recs)
    assert len(pts) == 12
    assert [p.metric for p in metric_points(recs, ["pha*"])] == ["phase"]
    rows = {(r["metric"], r["host"]): r for r in metric_summary(pts)}
    assert rows[("loss", "n1")]["points"] == 6 and rows[("loss", "n1")]["non_finite"] == 1
    assert rows[("loss", "n1")]["min"] == 0.5 and rows[("loss", "n1")]["max"] == 0.9
    assert rows[("phase", None)]["non_numeric"] == 1 and rows[("phase", None)]["min"] is None


_PROM_LINE = re.compile(
    r'^(?:# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*|# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* gauge|'
    r'[a-zA-Z_:][a-zA-Z0-9_:]*\{job_id="(?:[^"\\\n]|\\.)*",host="(?:[^"\\\n]|\\.)*",'
    r'watcher="(?:[^"\\\n]|\\.)*"\} (?:NaN|[+-]Inf|-?\d+(?:\.\d+)?(?:e[-+]?\d+)?))$'
)


def test_prometheus_text_is_valid_exposition_with_the_last_value_per_series() -> None:
    recs: List[Dict[str, Any]] = [
        {"ts": iso(T0 + 2), "kind": "metric", "job_id": "42", "host": "n1", "watcher": "w",
         "metric": "loss", "value": 0.5},
        {"ts": iso(T0 + 1), "kind": "metric", "job_id": "42", "host": "n1", "watcher": "w",
         "metric": "loss", "value": 9.0},  # older: does not replace the value at T0+2
        {"ts": iso(T0), "kind": "metric", "job_id": "42", "host": "n2", "watcher": "w",
         "metric": "loss", "value": "inf"},
        {"ts": iso(T0), "kind": "metric", "job_id": None, "host": 'we"ird\\host\n',
         "watcher": "w", "metric": "gpu-0.mem (MiB)", "value": "1024"},
        {"ts": iso(T0), "kind": "metric", "watcher": "w", "metric": "nanny", "value": "nan"},
        {"ts": iso(T0), "kind": "metric", "watcher": "w", "metric": "phase", "value": "eval"},
        {"ts": iso(T0), "kind": "log", "metric": "x", "value": 1},
    ]
    text = prometheus_text(recs)
    lines = text.splitlines()
    assert text.endswith("\n")
    assert all(_PROM_LINE.match(ln) for ln in lines), [ln for ln in lines if not _PROM_LINE.match(ln)]
    assert 'sidecar_loss{job_id="42",host="n1",watcher="w"} 0.5' in lines
    assert 'sidecar_loss{job_id="42",host="n2",watcher="w"} +Inf' in lines
    assert 'sidecar_gpu_0_mem__MiB_{job_id="",host="we\\"ird\\\\host\\n",watcher="w"} 1024' in lines
    assert 'sidecar_nanny{job_id="",host="",watcher="w"} NaN' in lines
    assert "phase" not in text  # not a number: no series
    assert lines.count("# TYPE sidecar_loss gauge") == 1
    assert prometheus_text([]) == ""


def test_sanitize_metric_name_always_gives_a_valid_name() -> None:
    for raw in ("loss", "1st", "a-b.c d", "ünï", "", ":x"):
        name = sanitize_metric_name(raw)
        assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name), name
        assert name.startswith("sidecar_")
    assert sanitize_metric_name("x", prefix="") == "x"
    assert sanitize_metric_name("9", prefix="") == "_9"


def test_prometheus_export_accepts_records_and_dicts_incrementally() -> None:
    exp = PrometheusExport()
    exp.add(Record(kind="metric", ts=iso(T0), metric="m", value=1, watcher="w"))
    exp.add({"kind": "metric", "metric": "m", "value": 2, "watcher": "w", "ts": iso(T0 + 1)})
    assert len(exp) == 1 and exp.text().endswith(" 2\n")
    exp.add({"kind": "metric", "metric": "m", "value": 3, "watcher": "w", "ts": iso(T0 - 5)})
    assert exp.text().endswith(" 2\n")  # an older point (another host's clock) does not win


def test_write_prometheus_textfile_is_atomic_world_readable_and_cleans_up(
    tmp_path: Path, monkeypatch: Any
) -> None:
    target = tmp_path / "sidecar.prom"
    target.write_text("old\n")
    seen: List[str] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append(os.path.basename(src))
        assert Path(src).read_text().startswith("# HELP")  # complete before it is renamed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    old_umask = os.umask(0o077)
    try:
        write_prometheus_textfile(str(target), [r.to_dict() for r in sample()])
    finally:
        os.umask(old_umask)
        monkeypatch.undo()
    assert seen and not seen[0].endswith(".prom")  # the collector never reads the temp file
    assert target.read_text().startswith("# HELP sidecar_loss")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sidecar.prom"]


def test_write_prometheus_textfile_raises_and_leaves_nothing_when_it_cannot_write(
    tmp_path: Path,
) -> None:
    with pytest.raises(OSError):
        write_prometheus_textfile(str(tmp_path / "missing-dir" / "x.prom"), [])
    (tmp_path / "isdir.prom").mkdir()
    with pytest.raises(OSError):
        write_prometheus_textfile(str(tmp_path / "isdir.prom"), PrometheusExport())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["isdir.prom"]


# ---------------------------------------------------------------------------------------------
# following


class Collector:
    """Runs follow_path in a thread; the test waits (bounded) on what it collected."""

    def __init__(self, path: Path, **kw: Any) -> None:
        self.records: List[Dict[str, Any]] = []
        self.stopped = threading.Event()
        self.caught_up = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(str(path), kw), daemon=True)
        self.thread.start()

    def _run(self, path: str, kw: Dict[str, Any]) -> None:
        for r in follow_path(path, stop=self.stopped.is_set, poll=0.05, rescan=0.1,
                             on_caught_up=self.caught_up.set, **kw):
            self.records.append(r)

    def messages(self) -> List[str]:
        return [str(r.get("message")) for r in self.records]

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


def _log(msg: str, t: float = T0, **kw: Any) -> Record:
    return Record(kind="log", ts=iso(t), message=msg, **kw)


@pytest.mark.parametrize("suffix", [".jsonl", ".db"])
def test_follow_shows_the_last_records_then_new_ones_as_they_are_written(
    tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"events{suffix}"
    log = open_event_log(str(path))
    for i in range(20):
        log.write(_log(f"old {i}", T0 + i))
    c = Collector(path, backlog=3)
    try:
        wait_until(lambda: len(c.records) >= 3, timeout=10)
        assert c.messages() == ["old 17", "old 18", "old 19"]
        log.write(_log("new 1", T0 + 100))
        wait_until(lambda: "new 1" in c.messages(), timeout=10)
        log.write(_log("new 2", T0 + 101))
        wait_until(lambda: "new 2" in c.messages(), timeout=10)
        assert c.messages()[3:] == ["new 1", "new 2"]
    finally:
        log.close()
        c.close()


def test_follow_waits_for_a_log_that_is_created_late_and_filters(tmp_path: Path) -> None:
    path = tmp_path / "late.jsonl"
    c = Collector(path, backlog=10, flt=RecordFilter(watchers=("keep",)))
    try:
        time.sleep(0.2)  # let it start waiting (not needed for correctness)
        log = open_event_log(str(path))
        log.write(_log("dropped", watcher="other"))
        log.write(_log("kept", watcher="keep"))
        wait_until(lambda: c.messages() == ["kept"], timeout=10)
        log.close()
    finally:
        c.close()


def test_follow_a_directory_merges_the_backlog_and_picks_up_new_logs(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    a = open_event_log(str(d / "a.jsonl"))
    b = open_event_log(str(d / "b.db"))
    for i in range(3):
        a.write(_log(f"a{i}", T0 + 2 * i))
        b.write(_log(f"b{i}", T0 + 2 * i + 1))
    c = Collector(d, backlog=4)
    try:
        wait_until(lambda: len(c.records) >= 4, timeout=10)
        assert c.messages() == ["a1", "b1", "a2", "b2"]
        late = open_event_log(str(d / "c.jsonl"))
        late.write(_log("c0", T0 + 50))
        a.write(_log("a3", T0 + 60))
        wait_until(lambda: {"c0", "a3"} <= set(c.messages()), timeout=10)
        late.close()
    finally:
        a.close()
        b.close()
        c.close()


def test_follow_with_backlog_none_shows_everything_and_zero_nothing(tmp_path: Path) -> None:
    path = write_log(tmp_path / "e.jsonl", [_log(f"m{i}", T0 + i) for i in range(15)])
    every = Collector(path, backlog=None)
    none = Collector(path, backlog=0)
    try:
        wait_until(lambda: len(every.records) == 15, timeout=10)
        wait_until(none.caught_up.is_set, timeout=10)  # what is written now is new
        assert none.records == []
        with open(path, "a") as f:
            f.write(json.dumps({"ts": iso(T0 + 99), "kind": "log", "message": "fresh"}) + "\n")
        wait_until(lambda: none.messages() == ["fresh"], timeout=10)
    finally:
        every.close()
        none.close()


# ---------------------------------------------------------------------------------------------
# the commands: events, stats, metrics


def test_events_command_table_json_limit_and_filters(tmp_path: Path, capsys: Any) -> None:
    path = write_log(tmp_path / "e.jsonl", sample())
    rc, out, _ = run_main(["events", str(path), "--width", "100"], capsys)
    lines = out.splitlines()
    assert rc == 0 and len(lines) == 1 + len(sample())
    assert all(len(ln) <= 100 for ln in lines)
    rc, out, _ = run_main(["events", str(path), "--json", "--kind", "action,state"], capsys)
    objs = [json.loads(ln) for ln in out.splitlines()]
    assert rc == 0 and [o["kind"] for o in objs] == ["action", "action", "state"]
    assert objs[0]["message"] == "SMTP 554"
    rc, out, _ = run_main(["events", str(path), "--json", "-n", "2"], capsys)
    assert [json.loads(ln)["kind"] for ln in out.splitlines()] == ["skipped", "warning"]
    rc, out, _ = run_main(
        ["events", str(path), "--json", "--watcher", "oom", "--until", "2024-05-01T10:06:41Z"],
        capsys,
    )
    assert [json.loads(ln)["kind"] for ln in out.splitlines()] == ["match", "action"]


def test_events_command_bad_arguments_and_missing_logs(tmp_path: Path, capsys: Any) -> None:
    path = write_log(tmp_path / "e.jsonl", sample())
    rc, _, err = run_main(["events", str(path), "--since", "yesterdayish"], capsys)
    assert rc == 2 and "--since" in err and "Traceback" not in err
    rc, _, err = run_main(["events", str(tmp_path / "none.jsonl")], capsys)
    assert rc == 2 and "no such file" in err
    (tmp_path / "junk.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    rc, _, err = run_main(["events", str(tmp_path / "junk.db")], capsys)
    assert rc == 1 and "cannot read" in err and "Traceback" not in err
    rc, _, err = run_main(["events", str(path), "--kind", "matchh"], capsys)
    assert rc == 0 and "not a record kind" in err


def test_stats_command_text_and_json(tmp_path: Path, capsys: Any) -> None:
    path = write_log(tmp_path / "e.db", sample())
    rc, out, _ = run_main(["stats", str(path)], capsys)
    assert rc == 0 and "Watchers by state" in out and "DISABLED" in out
    rc, out, _ = run_main(["stats", str(path), "--json"], capsys)
    st = json.loads(out)
    assert rc == 0 and st["actions"]["notify_email"]["failed"] == 1
    assert st["busiest"][0]["watcher"] == "loss" and st["read_problems"]["errors"] == []


def test_metrics_command_summary_points_csv_json_prometheus(tmp_path: Path, capsys: Any) -> None:
    path = write_log(tmp_path / "e.jsonl", sample())
    rc, out, _ = run_main(["metrics", str(path)], capsys)
    assert rc == 0 and out.splitlines()[0].split()[:2] == ["METRIC", "JOB"]
    assert "loss" in out.splitlines()[1] and " 5 " in out.splitlines()[1]
    rc, out, _ = run_main(["metrics", str(path), "loss"], capsys)
    assert rc == 0 and len(out.splitlines()) == 6
    rc, out, _ = run_main(["metrics", str(path), "--csv"], capsys)
    rows = out.splitlines()
    assert rows[0] == "ts,job_id,host,watcher,metric,value" and rows[1].endswith(",loss,loss,0.9")
    rc, out, _ = run_main(["metrics", str(path), "--json"], capsys)
    assert [json.loads(ln)["value"] for ln in out.splitlines()] == [0.9, 0.8, 0.7, 0.6, 0.5]
    rc, out, _ = run_main(["metrics", str(path), "--prometheus"], capsys)
    assert 'sidecar_loss{job_id="42",host="n1",watcher="loss"} 0.5' in out


# ---------------------------------------------------------------------------------------------
# test-pattern


LOG = (
    "epoch 1 step 10 loss=0.93\n"
    "epoch 2 step 20 loss=nan\r\n"
    "progress\r 40%\r"
    "epoch 3 step 30 loss=7.5\n"
    "done"
)


def test_test_pattern_shows_lines_and_captures_like_the_daemon(tmp_path: Path, capsys: Any) -> None:
    f = tmp_path / "train.log"
    f.write_text(LOG)
    rc, out, err = run_main(
        ["test-pattern", r"epoch (\d+) .*loss=(?P<loss>\S+)", str(f), "--captures", "epoch"],
        capsys,
    )
    assert rc == 0
    assert out.splitlines()[0] == "1: epoch 1 step 10 loss=0.93"
    assert '$1  "1"  (epoch)' in out and '$2  "0.93"  (loss)' in out
    assert "5: epoch 3 step 30 loss=7.5" in out  # \r\n and lone \r end lines, as in the tailer
    assert "3 matching lines of 6" in err


def test_test_pattern_json_condition_and_exit_codes(tmp_path: Path, capsys: Any) -> None:
    f = tmp_path / "train.log"
    f.write_text(LOG)
    args = ["test-pattern", r"loss=([\d.]+)", str(f), "-c", "loss", "--json"]
    rc, out, _ = run_main(args + ["--condition", "float(loss) > 5"], capsys)
    objs = [json.loads(ln) for ln in out.splitlines()]
    assert rc == 0 and [(o["lineno"], o["captures"]) for o in objs] == [(5, {"loss": "7.5"})]
    rc, out, _ = run_main(args + ["--condition", "float(loss) > 50"], capsys)
    assert rc == 1 and out == ""
    rc, _, _ = run_main(["test-pattern", "NEVER", str(f), "-q"], capsys)
    assert rc == 1
    rc, out, _ = run_main(["test-pattern", "EPOCH", str(f), "-i", "-m", "1", "-q"], capsys)
    assert rc == 0 and out == ""


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["test-pattern", "loss=(", "-"], "invalid regex"),
        (["test-pattern", "x", "-", "--captures", "1bad"], "not a valid name"),
        (["test-pattern", "(x)", "-", "--condition", "__import__('os')"], "invalid condition"),
    ],
)
def test_test_pattern_exits_2_with_the_reason_for_bad_input(
    argv: List[str], needle: str, capsys: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # noqa: SIM115
    rc, _, err = run_main(argv, capsys)
    assert rc == 2 and needle in err and "Traceback" not in err


def test_test_pattern_reads_standard_input(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "sidecar.cli_cockpit", "test-pattern", r"Killed", "-"],
        input=b"ok\n/var/spool/slurmd/job1/slurm_script: line 3: 77 Killed  python x.py\n",
        capture_output=True, cwd=REPO, timeout=60,
    )
    assert p.returncode == 0 and p.stdout.startswith(b"2: /var/spool")


# ---------------------------------------------------------------------------------------------
# schema and init


def test_schema_prints_the_config_json_schema(tmp_path: Path, capsys: Any) -> None:
    rc, out, _ = run_main(["schema"], capsys)
    schema = json.loads(out)
    assert rc == 0 and "regex_actions" in schema["properties"]
    rc, _, _ = run_main(["schema", "-o", str(tmp_path / "s.json")], capsys)
    assert rc == 0 and json.loads((tmp_path / "s.json").read_text()) == schema


def test_init_writes_a_loadable_config_and_refuses_to_overwrite(
    tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    from sidecar.config import load_config

    monkeypatch.chdir(tmp_path)
    rc, out, _ = run_main(["init"], capsys)
    assert rc == 0 and "wrote sidecar.toml" in out
    cfg = load_config("sidecar.toml")
    names = {w.name for w in cfg.watchers}
    assert {"oom", "nan_loss", "traceback", "hang", "progress_epoch"} <= names
    assert cfg.settings.start_at == "end"
    before = Path("sidecar.toml").read_text()
    rc, _, err = run_main(["init", "oom"], capsys)
    assert rc == 2 and "exists" in err and Path("sidecar.toml").read_text() == before
    rc, _, _ = run_main(["init", "oom", "loss_divergence", "oom", "--force"], capsys)
    assert rc == 0
    assert [w.name for w in load_config("sidecar.toml").watchers] == ["oom", "loss_divergence"]


def test_init_list_stdout_and_unknown_templates(tmp_path: Path, capsys: Any) -> None:
    rc, out, _ = run_main(["init", "--list"], capsys)
    assert rc == 0 and re.search(r"^\* oom +out of memory", out, re.M)
    assert re.search(r"^  loss_divergence ", out, re.M)  # not in the default set
    rc, out, _ = run_main(["init", "nccl", "-o", "-"], capsys)
    assert rc == 0 and "[[regex_actions]]" in out and 'name = "nccl"' in out
    rc, _, err = run_main(["init", "oomm", "-o", str(tmp_path / "x.toml")], capsys)
    assert rc == 2 and "did you mean 'oom'" in err and not (tmp_path / "x.toml").exists()


# ---------------------------------------------------------------------------------------------
# end to end, as a process


def test_output_cut_short_by_the_reader_ends_quietly_with_exit_0(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        for i in range(20000):
            f.write(json.dumps({"ts": iso(T0 + i), "kind": "log", "watcher": "w",
                                "message": f"line {i} " + "x" * 60}) + "\n")
    for extra in ([], ["--json"]):
        p = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli_cockpit", "events", str(path), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
        )
        assert p.stdout is not None and p.stderr is not None
        first = p.stdout.readline()
        p.stdout.close()  # like `| head -1`
        rc = p.wait(timeout=60)
        err = p.stderr.read().decode()
        p.stderr.close()
        assert first and rc == 0 and err == "", err


def test_follow_as_a_process_survives_late_creation_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    path = tmp_path / "late.jsonl"
    p = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli_cockpit", "events", str(path), "--follow", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    )
    assert p.stdout is not None and p.stderr is not None
    try:
        got: List[str] = []
        reader = threading.Thread(target=lambda: got.extend(iter(p.stdout.readline, b"")),  # type: ignore[union-attr]
                                  daemon=True)
        reader.start()
        log = open_event_log(str(path))
        log.write(_log("hello"))
        wait_until(lambda: any(b"hello" in ln for ln in got), timeout=15)  # type: ignore[operator]
        t_written = time.monotonic()
        log.write(_log("second"))
        wait_until(lambda: any(b"second" in ln for ln in got), timeout=15)  # type: ignore[operator]
        assert time.monotonic() - t_written < 1.0  # sub-second
        log.close()
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=15)
        err = p.stderr.read().decode()
        assert rc == 0 and "Traceback" not in err, err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()


def test_dispatch_turns_an_unexpected_error_into_one_line(capsys: Any) -> None:
    import argparse

    def boom(_args: argparse.Namespace) -> int:
        raise RuntimeError("kaboom")

    rc = cli_cockpit.dispatch(argparse.Namespace(command="events", _cockpit=boom))
    _, err = capsys.readouterr()
    assert rc == 1 and err.strip() == "sidecar: events: RuntimeError: kaboom"
    rc = cli_cockpit.dispatch(argparse.Namespace(command="run"))
    assert rc == 2


def test_importing_the_cli_module_stays_cheap() -> None:
    code = (
        "import sys; import sidecar.cli_cockpit; "
        "heavy = [m for m in ('pydantic', 'sqlite3', 'sidecar.cockpit', 'sidecar.config', "
        "'sidecar.matcher', 're2', 'json') if m in sys.modules]; print(heavy)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr



# ---------------------------------------------------------------------------------------------
# bad input never raises

_json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
_json_value = st.recursive(
    _json_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)
_field_names = st.sampled_from(
    ["ts", "kind", "job_id", "host", "watcher", "trigger", "file", "line", "lineno", "event",
     "action", "ok", "exit_code", "duration_s", "output", "message", "level", "reason",
     "state", "previous_state", "metric", "value", "extra", "captures"]
)
_kinds = st.sampled_from(list(cockpit.KNOWN_KINDS) + ["odd"])


@given(st.lists(
    st.fixed_dictionaries({"kind": _kinds}, optional={"ts": st.one_of(
        _json_value, st.just(iso(T0)))}).flatmap(
        lambda base: st.dictionaries(_field_names, _json_value, max_size=8).map(
            lambda d: {**d, **base})),
    max_size=12,
))
@settings(max_examples=60, deadline=None)
def test_odd_records_never_make_the_formatters_raise(recs: List[Dict[str, Any]]) -> None:
    from sidecar.htmlreport import render_report

    table = Table.fit(recs, 60, color=True)
    for r in recs:
        assert "\n" not in table.row(r)
        summary(r)
        RecordFilter(jobs=("x*",), since=0)(r)
    format_stats(compute_stats(recs, now=T0))
    metric_summary(metric_points(recs))
    text = prometheus_text(recs)
    assert all(_PROM_LINE.match(ln) for ln in text.splitlines())
    assert render_report(recs, now=T0).endswith("</html>\n")
