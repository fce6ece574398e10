"""Restart without duplicates (docs/reliability.md, "Restarts").

The sidecar saves, per file, the file's identity (device, inode), a position and
``fired_through`` (the last line whose firing was saved before its actions started). Killed
with SIGKILL in the middle of a burst and started again, it must not act twice on a line,
and must act on the lines written while it was down. What a SIGKILL can cost is bounded: the
one firing being handled at that instant (its state saved, its action not yet begun).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

import pytest

from tests.conftest import wait_until
from tests.torture.conftest import (
    Daemon,
    SyncEngine,
    daemons,  # noqa: F401 - fixture
    figure,
    pids_with,
    records,
    regex_watcher,
    scale,
)


def _config(d: Path, actions: str, extra: str = "") -> Path:
    cfg = d / "c.toml"
    cfg.write_text(
        "queue_length = 100000\nmax_concurrent = 4\n" + extra + "[[regex_actions]]\n"
        'name = "hits"\ndirectory = "w"\nfilepath_regex = \'\\.log$\'\n'
        "line_regex = 'HIT (\\d+) '\n"
        f"actions = [{actions}]\n"
    )
    return cfg


def _starts(log: Path) -> List[Dict[str, Any]]:
    return [r for r in records(log) if r["kind"] == "start"]


def _start(tmp: Path, cfg: Path, n_before: int) -> Daemon:
    """Start a daemon and wait until it has written its start record."""
    d = Daemon(tmp, [str(cfg)])
    log = tmp / "sidecar-events.jsonl"
    wait_until(lambda: len(_starts(log)) > n_before or not d.alive(), timeout=30)
    assert d.alive(), d.stderr()
    return d


class Writer(threading.Thread):
    """Appends ``HIT <n> <padding>`` lines to w/job.log at about ``rate`` lines/s, in small
    writes that often end in the middle of a line."""

    def __init__(self, path: Path, rate: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.rate = rate
        self.rnd = random.Random(seed)
        self.n = 0
        self.halt = threading.Event()
        self.burst = (scale(100, 300), scale(400, 1500))

    def run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        pending = b""
        try:
            while not self.halt.is_set():
                # mostly a trickle, now and then a burst that keeps the sidecar busy
                batch = self.rnd.randint(*self.burst) if self.rnd.random() < 0.05 else (
                    self.rnd.randint(1, 20))
                data = pending + b"".join(
                    b"HIT %d %s\n" % (self.n + i, b"p" * self.rnd.randint(0, 60))
                    for i in range(batch)
                )
                self.n += batch
                cut = self.rnd.randint(len(data) // 2, len(data))  # split a line now and then
                os.write(fd, data[:cut])
                pending = data[cut:]
                # after a burst a pause of up to a second: a restart may then find nothing
                # new and be killed again (test_restart_with_nothing_new_keeps_the_positions)
                time.sleep(min(batch / self.rate, 1.0))
            if pending:
                os.write(fd, pending)
        finally:
            os.close(fd)


@pytest.mark.parametrize("action", ["log_event", "run_command"])
def test_sigkill_mid_burst_neither_repeats_nor_misses(
    tmp_path: Path, action: str, daemons: List[Daemon]  # noqa: F811
) -> None:
    """SIGKILL at random moments while lines stream in (lines cut across writes), restart
    each time while the writer goes on: no line is acted on twice, and each kill costs at
    most the one firing in progress at that instant (state saved, action not begun)."""
    (tmp_path / "w").mkdir()
    if action == "log_event":
        cfg = _config(tmp_path, '{type = "log_event", message = "$1"}')
    else:
        cfg = _config(tmp_path, '{type = "run_command", command = "echo $1 >> fired.txt"}')
    log = tmp_path / "sidecar-events.jsonl"
    kills = scale(2, 10)
    rnd = random.Random(int.from_bytes(os.urandom(4), "little"))
    w = Writer(tmp_path / "w" / "job.log", rate=scale(250, 300), seed=rnd.randint(0, 1 << 30))
    d = _start(tmp_path, cfg, 0)
    daemons.append(d)
    w.start()
    try:
        for k in range(kills):
            time.sleep(rnd.uniform(0.15, 0.5) if kills < 5 else rnd.uniform(0.2, 0.8))
            d.send(signal.SIGKILL)
            d.wait(10)
            time.sleep(rnd.uniform(0.0, 0.3))  # lines keep coming while it is down
            d = _start(tmp_path, cfg, k + 1)
            daemons.append(d)
        time.sleep(0.3)
    finally:
        w.halt.set()
        w.join(10)
    n = w.n

    def acted() -> Counter[int]:
        if action == "log_event":
            return Counter(int(r["message"]) for r in records(log) if r["kind"] == "log")
        out = tmp_path / "fired.txt"
        return Counter(int(x) for x in out.read_text().split()) if out.exists() else Counter()

    # log_event acts at once: a kill costs at most the firing in progress. A command that
    # had started when the kill came is not run again (at most once) and may have been
    # killed with the sidecar: up to max_concurrent (4) of those per kill.
    bound = kills if action == "log_event" else 5 * kills
    # everything written gets handled by the last daemon (bounded wait, ended early once
    # nothing more comes)
    deadline = time.monotonic() + 90
    last, still = -1, time.monotonic()
    while time.monotonic() < deadline and len(acted()) < n:
        now_n = len(acted())
        if now_n != last:
            last, still = now_n, time.monotonic()
        elif now_n >= n - bound and time.monotonic() - still > 3:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    assert d.stop(timeout=120) == 0, d.stderr()
    wait_until(lambda: not pids_with("fired.txt"), timeout=10)
    got = acted()
    dups = {i: c for i, c in got.items() if c > 1}
    missing = sorted(set(range(n)) - set(got))
    matches = Counter(int(r["captures"]["1"]) for r in records(log) if r["kind"] == "match")
    figure(
        f"restart_sigkill[{action}]",
        cases=1,
        kills=kills,
        lines_written=n,
        actions_run=sum(got.values()),
        duplicate_actions=sum(c - 1 for c in dups.values()),
        actions_lost=len(missing),
        duplicate_match_records=sum(c - 1 for c in matches.values() if c > 1),
    )
    assert not dups, f"acted on twice: {dict(list(dups.items())[:10])}"
    assert len(missing) <= bound, f"{len(missing)} never acted on ({kills} kills): {missing[:20]}"


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_restart_with_nothing_new_keeps_the_positions(tmp_path: Path, how: str) -> None:
    """Three runs of the same sidecar (stopped cleanly, or 'killed' after its start), with
    no new line in between: the lines of the first run are acted on once, not again in the
    third run."""
    w = regex_watcher("hits", r"HIT (\d+)", [])
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "job.log").write_bytes(b"HIT 1\nHIT 2\n")
    fired: List[int] = []
    for run in range(3):
        se = SyncEngine(tmp_path, [w], "inotify", log_name=f"events{run}.jsonl")
        se.pump()
        if how == "stop" or run == 0:
            se.stop()
        else:  # SIGKILL: nothing after start() (which saved the state) happens
            se.engine.eventlog.close()
            se.engine.backend.close()
        fired += [int(r["captures"]["1"]) for r in records(se.log) if r["kind"] == "match"]
    figure("restart_nothing_new", cases=1, duplicate_actions=len(fired) - len(set(fired)))
    assert sorted(fired) == [1, 2]


def test_sigkill_with_queued_actions_loses_none(
    tmp_path: Path, daemons: List[Daemon]  # noqa: F811
) -> None:
    """A burst of 200 firings of a command (1 slot): SIGKILL while most still wait for the
    slot, restart: every waiting command runs in the successor; none runs twice. The one
    command running at the kill is not started again (at most once): it may be lost."""
    (tmp_path / "w").mkdir()
    cfg = _config(
        tmp_path,
        '{type = "run_command", command = "sleep 0.005; echo $1 >> fired.txt"}',
        extra="",
    )
    cfg.write_text(cfg.read_text().replace("max_concurrent = 4", "max_concurrent = 1"))
    log = tmp_path / "sidecar-events.jsonl"
    d = _start(tmp_path, cfg, 0)
    daemons.append(d)
    with open(tmp_path / "w" / "job.log", "ab") as fh:
        fh.write(b"".join(b"HIT %d x\n" % i for i in range(200)))
    wait_until(lambda: len([r for r in records(log) if r["kind"] == "match"]) >= 200, timeout=30)
    d.send(signal.SIGKILL)
    d.wait(10)
    d = _start(tmp_path, cfg, 1)
    daemons.append(d)
    out = tmp_path / "fired.txt"
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and (
        not out.exists() or len(out.read_text().split()) < 200
    ):
        time.sleep(0.1)
    d.stop()
    got = Counter(int(x) for x in out.read_text().split()) if out.exists() else Counter()
    figure("restart_queued_actions", cases=1, queued_lost=200 - len(got))
    assert max(got.values()) == 1
    assert len(set(range(200)) - set(got)) <= 1  # the slot's one, running at the kill


def test_partial_line_at_sigkill_fires_once_when_completed(
    tmp_path: Path, daemons: List[Daemon]  # noqa: F811
) -> None:
    """A line half written when the sidecar is killed, finished while it is down: the
    restarted sidecar acts on it once, whole."""
    (tmp_path / "w").mkdir()
    cfg = _config(tmp_path, '{type = "log_event", message = "$MATCH"}')
    log = tmp_path / "sidecar-events.jsonl"
    job = tmp_path / "w" / "job.log"
    d = _start(tmp_path, cfg, 0)
    daemons.append(d)
    with open(job, "ab") as fh:
        fh.write(b"HIT 1 done\nHIT 2 half")
    wait_until(lambda: [r for r in records(log) if r["kind"] == "log"])
    time.sleep(1.2)  # the periodic state save has happened too
    d.send(signal.SIGKILL)
    d.wait(10)
    with open(job, "ab") as fh:
        fh.write(b" and the rest\nHIT 3 x\n")
    d = _start(tmp_path, cfg, 1)
    daemons.append(d)
    wait_until(lambda: len([r for r in records(log) if r["kind"] == "log"]) >= 3)
    time.sleep(0.3)
    assert d.stop() == 0
    msgs = [r["message"] for r in records(log) if r["kind"] == "log"]
    figure("restart_partial_line", cases=2, lines_written=3, actions_run=len(msgs))
    assert msgs == ["HIT 1 done", "HIT 2 half and the rest", "HIT 3 x"]


def test_partial_line_at_clean_stop_is_not_repeated_after_restart(
    tmp_path: Path, daemons: List[Daemon]  # noqa: F811
) -> None:
    """At SIGTERM an unfinished last line is matched as it is; its end, written later, does
    not make it fire a second time after a restart."""
    (tmp_path / "w").mkdir()
    cfg = _config(tmp_path, '{type = "log_event", message = "$MATCH"}')
    log = tmp_path / "sidecar-events.jsonl"
    job = tmp_path / "w" / "job.log"
    d = _start(tmp_path, cfg, 0)
    daemons.append(d)
    with open(job, "ab") as fh:
        fh.write(b"HIT 1 half")
    time.sleep(0.3)
    assert d.stop() == 0
    with open(job, "ab") as fh:
        fh.write(b" rest\nHIT 2 x\n")
    d = _start(tmp_path, cfg, 1)
    daemons.append(d)
    wait_until(lambda: len([r for r in records(log) if r["kind"] == "log"]) >= 2)
    time.sleep(0.3)
    assert d.stop() == 0
    msgs = [r["message"] for r in records(log) if r["kind"] == "log"]
    assert msgs == ["HIT 1 half", "HIT 2 x"]


def test_rotation_while_down_loses_no_line(
    tmp_path: Path, daemons: List[Daemon]  # noqa: F811
) -> None:
    """Killed; the job writes more lines, then its log is rotated and a new one started;
    restarted: the lines written to the old file while it was down are acted on too."""
    (tmp_path / "w").mkdir()
    cfg = _config(tmp_path, '{type = "log_event", message = "$1"}')
    log = tmp_path / "sidecar-events.jsonl"
    job = tmp_path / "w" / "job.log"
    d = _start(tmp_path, cfg, 0)
    daemons.append(d)
    with open(job, "ab") as fh:
        fh.write(b"HIT 1 x\n")
    wait_until(lambda: [r for r in records(log) if r["kind"] == "log"])
    d.send(signal.SIGKILL)
    d.wait(10)
    with open(job, "ab") as fh:
        fh.write(b"HIT 2 written while down\n")
    os.rename(job, tmp_path / "w" / "job.log.1")
    with open(job, "ab") as fh:
        fh.write(b"HIT 3 new file\n")
    d = _start(tmp_path, cfg, 1)
    daemons.append(d)
    wait_until(lambda: len([r for r in records(log) if r["kind"] == "log"]) >= 2)
    time.sleep(0.5)
    d.stop()
    msgs = sorted(r["message"] for r in records(log) if r["kind"] == "log")
    assert msgs == ["1", "2", "3"]


def test_state_saved_during_rotation_names_the_right_file(tmp_path: Path) -> None:
    """Deterministic: the old file's last line fires while the new file is already open;
    the state file written at that firing must not pair the new inode with the old offset."""
    w = regex_watcher("hits", r"HIT (\d+) ", [])
    se = SyncEngine(tmp_path, [w], "inotify")
    job = se.dir / "job.log"
    job.write_bytes(b"".join(b"noise line %d\n" % i for i in range(40)))
    se.pump()
    with open(job, "ab") as fh:
        fh.write(b"HIT 1 in the old file\n")  # not read yet when the file is rotated
    os.rename(job, se.dir / "job.log.1")
    job.write_bytes(b"new\n")  # the new file: short, nothing to fire on
    se.pump()  # fires on HIT 1 (old file) and saves the state: then "SIGKILL"
    from sidecar.state import read_state

    state = read_state(se.engine.state_path or "")  # the state file and its journal
    assert state is not None
    saved = state["files"][str(job)]
    st = os.stat(job)
    se.engine.eventlog.close()
    # the job goes on while the sidecar is down
    with open(job, "ab") as fh:
        fh.write(b"".join(b"HIT %d in the new file\n" % i for i in range(2, 40)))
    se2 = SyncEngine(tmp_path, [w], "inotify", log_name="events2.jsonl")
    try:
        se2.pump()
    finally:
        se2.stop()
    got = sorted(int(r["captures"]["1"]) for r in records(se2.log) if r["kind"] == "match")
    figure("restart_rotation_state", cases=1, lines_lost=len(set(range(2, 40)) - set(got)))
    assert got == list(range(2, 40)), f"saved {saved} for inode {st.st_ino}; got {got}"


def test_state_file_next_to_the_watched_files_does_not_hide_them(tmp_path: Path) -> None:
    """state_file in the directory that also holds the watched directory: lines still fire."""
    w = regex_watcher("hits", r"HIT (\d+)", [])
    se = SyncEngine(tmp_path, [w], "inotify", state_file=str(tmp_path / "state.json"))
    try:
        (se.dir / "job.log").write_bytes(b"HIT 1\n")
        se.pump()
    finally:
        se.stop()
    assert [r["line"] for r in records(se.log) if r["kind"] == "match"] == ["HIT 1"]
