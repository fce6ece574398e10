"""Concurrency (docs/reliability.md, "Shared event logs"): many processes appending to one
JSON-lines log and one SQLite log at once while readers follow them. Every record present
exactly once, none torn, each writer's records in its order, the followers see them all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from sidecar.eventlog import ReadStats, follow_records, read_records
from tests.conftest import wait_until
from tests.torture.conftest import (
    REPO,
    Daemon,
    daemons,  # noqa: F401 - fixture
    figure,
    scale,
)

# record sizes from 200 bytes to 200 KB: over PIPE_BUF (4 KiB), over a pipe's 64 KiB, over
# many pages, so that a torn or interleaved write would show
_WRITER = r"""
import random, sys
from sidecar.eventlog import open_event_log
from sidecar.types import Record
w, n, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed)
logs = [open_event_log(p) for p in sys.argv[4:]]
for i in range(n):
    r = rnd.random()
    size = 200 if r < 0.8 else (5000 if r < 0.95 else (70000 if r < 0.99 else 200000))
    pad = chr(ord("a") + w % 26) * size
    rec = Record(kind="log", pid=w, lineno=i, message=f"{w}:{i}:{size}:{pad}")
    for log in logs:
        log.write(rec)
for log in logs:
    log.close()
    if log.pending() or log.problem:
        sys.exit(f"writer {w}: {log.pending()} pending: {log.problem}")
"""


def _follow(path: str) -> Tuple[List[Dict[str, Any]], threading.Event, threading.Thread, ReadStats]:
    out: List[Dict[str, Any]] = []
    stop = threading.Event()
    stats = ReadStats()

    def run() -> None:
        for r in follow_records(path, stop=stop.is_set, poll=0.05, stats=stats):
            out.append(r)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return out, stop, t, stats


def test_32_writers_big_records_one_jsonl_one_sqlite_followed(tmp_path: Path) -> None:
    """32 processes append records of 200 B to 200 KB to one JSONL file and one SQLite
    database at once, while a follower reads each: every record once, whole, in each
    writer's order, in the files and in what the followers saw."""
    writers, per = 32, scale(60, 1500)
    jl, db = str(tmp_path / "ev.jsonl"), str(tmp_path / "ev.db")
    followers = {p: _follow(p) for p in (jl, db)}
    env = dict(os.environ, PYTHONPATH=REPO)
    seed = int.from_bytes(os.urandom(4), "little")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(w), str(per), str(seed + w), jl, db],
            env=env,
            stderr=subprocess.PIPE,
        )
        for w in range(writers)
    ]
    try:
        for p in procs:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err.decode()
        # the followers see everything (stopping them at once is test_follow_stop_reads...)
        for out, _s, _t, _st in followers.values():
            wait_until(lambda o=out: len(o) >= writers * per, timeout=120, interval=0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for _, stop, _t, _s in followers.values():
            stop.set()
        for _, _, t, _s in followers.values():
            t.join(60)

    def check(recs: List[Dict[str, Any]], where: str) -> int:
        seen: Dict[int, List[int]] = {}
        nbytes = 0
        for d in recs:
            w, i, size, pad = d["message"].split(":")
            assert (int(w), int(i)) == (d["pid"], d["lineno"]), where
            assert pad == chr(ord("a") + int(w) % 26) * int(size), f"{where}: torn record"
            seen.setdefault(int(w), []).append(int(i))
            nbytes += int(size)
        for w in range(writers):
            assert seen.get(w) == list(range(per)), f"{where}: writer {w} lost/dup/reordered"
        return nbytes

    raw = Path(jl).read_bytes()
    assert raw.endswith(b"\n")
    nbytes = check([json.loads(line) for line in raw.split(b"\n")[:-1]], "jsonl file")
    check(list(read_records(db)), "sqlite")
    for path, (out, _, t, stats) in followers.items():
        assert not t.is_alive()
        assert stats.skipped == 0
        check(out, f"follower of {path}")
    figure(
        "concurrency_writers",
        cases=1,
        processes=writers,
        records=2 * writers * per,
        payload_mb=round(2 * nbytes / 2**20, 1),
        records_torn=0,
        records_lost=0,
        followers=2,
    )


def test_many_sidecar_daemons_share_one_jsonl_and_one_sqlite_log(
    tmp_path: Path, daemons: List[Daemon]  # noqa: F811
) -> None:
    """Real sidecars (half on a JSONL log, half on an SQLite log, as an array job's tasks
    would share one) each match their own job's lines at the same time, with a follower on
    each log: every match record of every sidecar present once, none torn."""
    n_daemons = scale(4, 32)
    lines = scale(100, 300)
    logs = {"jsonl": str(tmp_path / "shared.jsonl"), "db": str(tmp_path / "shared.db")}
    followers = {p: _follow(p) for p in logs.values()}
    started: List[Tuple[Daemon, str, Path]] = []
    try:
        for i in range(n_daemons):
            fmt = "jsonl" if i % 2 == 0 else "db"
            wdir = tmp_path / f"w{i}"
            wdir.mkdir()
            cfg = tmp_path / f"c{i}.toml"
            cfg.write_text(
                f'event_log = "{logs[fmt]}"\n[[regex_actions]]\nname = "task{i}"\n'
                f'directory = "w{i}"\nfilepath_regex = \'\\.log$\'\n'
                "line_regex = 'HIT (\\d+)'\n"
                'actions = [{type = "log_event", message = "$1"}]\n'
            )
            d = Daemon(tmp_path, [str(cfg)], env={"SLURM_JOB_ID": f"100_{i}"})
            daemons.append(d)
            started.append((d, fmt, wdir))

        def all_started() -> bool:
            n = 0
            for p in logs.values():
                if os.path.exists(p) and os.path.getsize(p):
                    try:
                        n += sum(1 for r in read_records(p) if r["kind"] == "start")
                    except Exception:  # an SQLite database still being created
                        return False
            return n == n_daemons

        wait_until(all_started, timeout=60, interval=0.1)
        fds = [os.open(w / "job.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND) for _, _, w in started]
        try:
            for k in range(lines):
                for fd in fds:
                    os.write(fd, b"HIT %d %s\n" % (k, b"y" * (k % 300)))
        finally:
            for fd in fds:
                os.close(fd)

        def done() -> bool:
            n = 0
            for p in logs.values():
                n += sum(1 for r in read_records(p) if r["kind"] == "log")
            return n >= n_daemons * lines

        wait_until(done, timeout=180, interval=0.2)
        for d, _, _ in started:
            assert d.stop() == 0, d.stderr()[-2000:]
        for out, _s, _t, _st in followers.values():  # log + stop records of its sidecars
            wait_until(lambda o=out: sum(r["kind"] == "stop" for r in o) == n_daemons // 2,
                       timeout=60, interval=0.05)
    finally:
        for _, stop, _t, _s in followers.values():
            stop.set()
        for _, _, t, _s in followers.values():
            t.join(60)

    def check(recs: List[Dict[str, Any]], fmt: str, where: str) -> int:
        by_job: Dict[str, List[int]] = {}
        stops = 0
        for r in recs:
            if r["kind"] == "log":
                by_job.setdefault(r["job_id"], []).append(int(r["message"]))
            stops += r["kind"] == "stop"
        mine = [i for i in range(n_daemons) if (i % 2 == 0) == (fmt == "jsonl")]
        for i in mine:
            assert by_job.get(f"100_{i}") == list(range(lines)), f"{where}: task {i}"
        assert stops == len(mine), where
        return sum(len(v) for v in by_job.values())

    total = 0
    for fmt, p in logs.items():
        stats = ReadStats()
        total += check(list(read_records(p, stats)), fmt, p)
        assert stats.skipped == 0
        out, _, t, fstats = followers[p]
        assert not t.is_alive() and fstats.skipped == 0
        check(out, fmt, f"follower of {p}")
    figure(
        "concurrency_daemons",
        cases=1,
        daemons=n_daemons,
        lines_matched=total,
        records_torn=0,
        records_lost=n_daemons * lines - total,
    )


@pytest.mark.parametrize("fmt", ["jsonl", "db"])
def test_follow_stop_reads_what_is_there_when_stop_turns_true(tmp_path: Path, fmt: str) -> None:
    """A record written just before stop() turns true is still yielded by the follower."""
    from sidecar.eventlog import open_event_log
    from sidecar.types import Record

    path = str(tmp_path / f"ev.{fmt}")
    log = open_event_log(path)
    log.write(Record(kind="log", message="first"))
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        if calls["n"] == 1:  # the follower has read "first": one more record, then stop
            log.write(Record(kind="log", message="last"))
            return True
        return True

    got = [r["message"] for r in follow_records(path, stop=stop, poll=0.01)]
    log.close()
    assert got == ["first", "last"]
