"""The daemon as a user runs it: `sidecar CONFIG` as a real process, real signals, real
inotify, the state file, live control, reload, and a restart after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from tests.conftest import wait_until

SEED_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "haskell-example.toml"


def recs(path: Path) -> List[Dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


class Daemon:
    def __init__(self, cwd: Path, args: List[str], env: Optional[Dict[str, str]] = None) -> None:
        self.cwd = cwd
        self.log = cwd / "sidecar-events.jsonl"
        e = dict(os.environ)
        e.pop("SLURM_JOB_ID", None)
        e.update(env or {})
        self.p = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", *args, "--no-follow", "--nice", "0"],
            cwd=cwd,
            env=e,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(lambda: self.ready() or self.p.poll() is not None, timeout=20)
        assert self.p.poll() is None, self.p.communicate()

    def ready(self) -> bool:
        # the state file is written once the initial read is done
        return (
            any((self.cwd / ".sidecar").glob("*.json"))
            if (self.cwd / ".sidecar").exists()
            else False
        )

    def recs(self, kind: Optional[str] = None) -> List[Dict[str, Any]]:
        return [r for r in recs(self.log) if kind is None or r["kind"] == kind]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            return self.p.wait(15)
        finally:
            self.p.communicate()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sidecar.cli", *args],
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=30,
        )


@pytest.fixture
def daemons() -> Iterator[List[Daemon]]:
    ds: List[Daemon] = []
    yield ds
    for d in ds:
        if d.p.poll() is None:
            d.p.kill()
            d.p.communicate()


def test_seed_example_config_end_to_end(tmp_path: Path, daemons: List[Daemon]) -> None:
    """The Haskell Sidecar's example config, verbatim: each table's command fires with the
    seed's variables, and SIGTERM ends the daemon with exit 0 and a stop record."""
    (tmp_path / "config.toml").write_text(SEED_CONFIG.read_text())
    d = Daemon(tmp_path, ["config.toml"])
    daemons.append(d)
    t0 = time.monotonic()
    with open(tmp_path / "job.log", "a") as fh:
        fh.write("starting\nERROR: rank 3 lost\nWARN: slow step\n")
    (tmp_path / "result.out").write_text("done\n")
    (tmp_path / "main.rs").write_text("fn main() {}\n")
    wait_until(lambda: (tmp_path / "matched.err").exists() and (tmp_path / "matched.warn").exists())
    elapsed = time.monotonic() - t0
    (tmp_path / "main.rs").unlink()
    wait_until(
        lambda: (
            (tmp_path / "rust_files").exists()
            and len((tmp_path / "rust_files").read_text().splitlines()) >= 2
        )
    )
    assert d.stop() == 0
    assert (tmp_path / "matched.err").read_text() == "ERROR: rank 3 lost\n"
    assert (tmp_path / "matched.warn").read_text() == "WARN: slow step\n"
    assert f"{tmp_path}/result.out" in (tmp_path / "new_files").read_text()
    assert (tmp_path / "rust_files").read_text().splitlines()[-1] == f"{tmp_path}/main.rs"
    kinds = [r["kind"] for r in d.recs()]
    assert kinds[0] == "start" and kinds[-1] == "stop"
    assert elapsed < 5


def test_own_event_log_and_state_are_never_watched(tmp_path: Path, daemons: List[Daemon]) -> None:
    """A watcher on every file of the directory does not feed on the sidecar's own event log
    or state files (no feedback loop)."""
    (tmp_path / "c.toml").write_text(
        '[[regex_actions]]\nfilepath_regex = ".*"\nline_regex = "."\nname = "all"\ncmd = "true"\n'
    )
    d = Daemon(tmp_path, ["c.toml"])
    daemons.append(d)
    (tmp_path / "x.txt").write_text("one line\n")
    wait_until(lambda: d.recs("action"))
    time.sleep(0.5)
    d.stop()
    files = {r["file"] for r in d.recs("match")}
    # the config itself is a file of the directory too; the event log and .sidecar/ are not
    assert files <= {str(tmp_path / "x.txt"), str(tmp_path / "c.toml")}
    assert len([r for r in d.recs("match") if r["file"].endswith("x.txt")]) == 1


def test_restart_after_sigkill_neither_repeats_nor_misses(
    tmp_path: Path, daemons: List[Daemon]
) -> None:
    """Killed with SIGKILL and started again, the sidecar does not run actions again for lines
    it handled, and handles the lines written while it was down."""
    (tmp_path / "c.toml").write_text(
        '[[regex_actions]]\nfilepath_regex = "job\\\\.log$"\nline_regex = "HIT (\\\\d+)"\n'
        'name = "hits"\ncmd = "echo $MATCH >> hits.txt"\n'
    )
    log = tmp_path / "job.log"
    d = Daemon(tmp_path, ["c.toml"])
    daemons.append(d)
    with open(log, "a") as fh:
        for i in range(50):
            fh.write(f"noise {i}\nHIT {i}\n")
    wait_until(
        lambda: (
            (tmp_path / "hits.txt").exists()
            and len((tmp_path / "hits.txt").read_text().splitlines()) == 50
        )
    )
    d.stop(signal.SIGKILL)
    with open(log, "a") as fh:
        for i in range(50, 60):
            fh.write(f"HIT {i}\n")
    d2 = Daemon(tmp_path, ["c.toml"])
    daemons.append(d2)
    wait_until(lambda: len((tmp_path / "hits.txt").read_text().splitlines()) >= 60)
    time.sleep(0.3)
    assert d2.stop() == 0
    got = (tmp_path / "hits.txt").read_text().splitlines()
    # actions run concurrently, so their order in the file may differ; each exactly once
    assert sorted(got, key=lambda x: int(x.split()[1])) == [f"HIT {i}" for i in range(60)]


def test_pause_resume_trigger_from_the_command_line(tmp_path: Path, daemons: List[Daemon]) -> None:
    """`sidecar pause/resume/trigger NAME` act on the running sidecar and show in status."""
    (tmp_path / "c.toml").write_text(
        '[[regex_actions]]\nfilepath_regex = "\\\\.log$"\nline_regex = "E (\\\\w+)"\nname = "e"\n'
        'captures = ["word"]\ncmd = "echo $word >> out.txt"\n'
    )
    d = Daemon(tmp_path, ["c.toml"])
    daemons.append(d)
    out = tmp_path / "out.txt"
    with open(tmp_path / "a.log", "a") as fh:
        fh.write("E one\n")
    wait_until(lambda: out.exists())
    r = d.cli("pause", "e")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "a.log", "a") as fh:
        fh.write("E two\n")
    st = d.cli("status", "--json")
    assert json.loads(st.stdout.splitlines()[0])["watchers"]["e"]["state"] == "PAUSED"
    assert d.cli("resume", "e").returncode == 0
    assert d.cli("trigger", "e").returncode == 0
    wait_until(lambda: out.read_text().splitlines() == ["one", "one"])
    with open(tmp_path / "a.log", "a") as fh:
        fh.write("E three\n")
    wait_until(lambda: out.read_text().splitlines() == ["one", "one", "three"])
    d.stop()
    states = [(r["state"], r["reason"]) for r in d.recs("state")]
    assert ("PAUSED", "sidecar pause") in states and ("ACTIVE", "sidecar resume") in states
    assert [m["trigger"] for m in d.recs("match")] == ["regex", "manual", "regex"]


def test_invalid_reload_keeps_the_old_config(tmp_path: Path, daemons: List[Daemon]) -> None:
    """A config edited into something invalid is refused and logged; the old watchers run on.
    A valid edit takes effect without a restart."""
    cfg = tmp_path / "c.toml"
    good = '[[regex_actions]]\nfilepath_regex = "\\\\.log$"\nline_regex = "A"\nname = "a"\ncmd = "echo a >> out.txt"\n'
    cfg.write_text(good)
    d = Daemon(tmp_path, ["c.toml"])
    daemons.append(d)
    cfg.write_text(good.replace('line_regex = "A"', 'line_regex = "(unclosed"'))
    wait_until(lambda: [r for r in d.recs("error") if r.get("reason") == "reload"])
    with open(tmp_path / "x.log", "a") as fh:
        fh.write("A\n")
    wait_until(lambda: (tmp_path / "out.txt").exists())
    cfg.write_text(good.replace('line_regex = "A"', 'line_regex = "B"'))
    wait_until(lambda: d.recs("reload"))
    with open(tmp_path / "x.log", "a") as fh:
        fh.write("A\nB\n")
    wait_until(lambda: len((tmp_path / "out.txt").read_text().splitlines()) == 2)
    d.stop()
    assert [m["line"] for m in d.recs("match")] == ["A", "B"]


def test_attach_adds_a_watcher_to_a_running_sidecar(tmp_path: Path, daemons: List[Daemon]) -> None:
    """`sidecar attach FILE.toml` adds watchers without a restart (the ssync attach case)."""
    (tmp_path / "c.toml").write_text(
        '[[regex_actions]]\nfilepath_regex = "\\\\.log$"\nline_regex = "A"\nname = "a"\ncmd = "true"\n'
    )
    d = Daemon(tmp_path, ["c.toml"])
    daemons.append(d)
    extra = tmp_path / "extra.toml"
    extra.write_text(
        '[[regex_actions]]\nfilepath_regex = "\\\\.log$"\nline_regex = "NEW"\nname = "late"\ncmd = "echo $MATCH >> late.txt"\n'
    )
    r = d.cli("attach", str(extra))
    assert r.returncode == 0, r.stderr
    wait_until(lambda: d.recs("reload"))
    with open(tmp_path / "x.log", "a") as fh:
        fh.write("NEW thing\n")
    wait_until(lambda: (tmp_path / "late.txt").exists())
    d.stop()
    assert (tmp_path / "late.txt").read_text() == "NEW thing\n"


def test_bad_config_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    """A bad config never gives a traceback: exit 2, file, line, watcher and a hint."""
    (tmp_path / "c.toml").write_text(
        '[[regex_actions]]\nfilepath_regex = "x"\nline_regexp = "A"\nname = "w"\ncmd = "true"\n'
    )
    for args in (["c.toml"], ["check", "c.toml"]):
        r = subprocess.run(
            [sys.executable, "-m", "sidecar.cli", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 2
        assert "Traceback" not in r.stderr
        assert "c.toml:3" in r.stderr and "line_regex" in r.stderr and "w" in r.stderr


def test_follows_its_parent_and_stops_with_it(tmp_path: Path) -> None:
    """Started from a shell that then exits, the sidecar notices (pidfd) and stops by itself."""
    (tmp_path / "c.toml").write_text(
        '[[regex_actions]]\nfilepath_regex = "\\\\.log$"\nline_regex = "A"\nname = "a"\ncmd = "true"\n'
    )
    script = tmp_path / "job.sh"
    script.write_text(
        f"#!/bin/sh\n{sys.executable} -m sidecar.cli c.toml --nice 0 &\necho $! > sc.pid\n"
        "sleep 1.5\necho 'A last words' >> job.log\n"
    )
    subprocess.run(["sh", str(script)], cwd=tmp_path, timeout=30)
    pid = int((tmp_path / "sc.pid").read_text())

    def gone() -> bool:
        try:
            os.kill(pid, 0)
            return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
        except ProcessLookupError:
            return True

    wait_until(gone, timeout=10)
    rs = recs(tmp_path / "sidecar-events.jsonl")
    assert rs[-1]["kind"] == "stop" and "exited" in rs[-1]["reason"]
    assert [r["line"] for r in rs if r["kind"] == "match"] == ["A last words"]


def test_wrapper_mode_runs_the_work_and_exits_with_its_status(tmp_path: Path) -> None:
    """`sidecar CONFIG -- CMD`: the work runs as a child once the sidecar watches; its last
    lines are acted on; the sidecar exits with the work's exit status, recorded in `stop`."""
    (tmp_path / "c.toml").write_text(
        '[[regex_actions]]\nfilepath_regex = "\\\\.log$"\nline_regex = "LAST"\nname = "a"\n'
        'cmd = "echo $MATCH >> seen.txt"\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "sidecar", "c.toml", "--nice", "0", "--",
         "sh", "-c", "echo 'LAST words' >> job.log; exit 3"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 3, r.stderr
    assert (tmp_path / "seen.txt").read_text() == "LAST words\n"
    stop = recs(tmp_path / "sidecar-events.jsonl")[-1]
    assert stop["kind"] == "stop" and stop["extra"]["followed_exit_code"] == 3


def test_sigterm_while_starting_still_gives_a_clean_stop(tmp_path: Path) -> None:
    """A SIGTERM that arrives during start-up (scancel right after the job starts) ends the
    sidecar with exit 0 and a stop record, not silently."""
    (tmp_path / "c.toml").write_text(
        '[[regex_actions]]\nfilepath_regex = "\\\\.log$"\nline_regex = "A"\nname = "a"\ncmd = "true"\n'
    )
    def catches_term(pid: int) -> bool:
        # the interpreter itself takes a few tens of ms to start; from the moment the
        # sidecar's handler is in place (SigCgt has SIGTERM), a SIGTERM must end it cleanly
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
        except OSError:
            pass
        return False

    for delay in (0.0, 0.05, 0.2):
        log = tmp_path / f"ev{delay}.jsonl"
        p = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "c.toml", "--no-follow", "--nice", "0",
             "--events", str(log)],
            cwd=tmp_path, stderr=subprocess.PIPE, text=True,
        )
        wait_until(lambda p=p: catches_term(p.pid), timeout=10, interval=0.001)  # type: ignore[misc]
        time.sleep(delay)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=20)
        assert p.returncode == 0, err
        rs = recs(log)
        assert rs and rs[-1]["kind"] == "stop" and rs[-1]["reason"] == "signal SIGTERM"


def test_following_a_process_that_is_already_gone_stops_at_once(tmp_path: Path) -> None:
    """--pid of a process that has already exited: the sidecar reads what is there and stops."""
    (tmp_path / "c.toml").write_text(
        '[[regex_actions]]\nfilepath_regex = "\\\\.log$"\nline_regex = "A"\nname = "a"\ncmd = "true"\n'
    )
    (tmp_path / "x.log").write_text("A\n")
    gone = subprocess.Popen(["true"])
    gone.wait()
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "sidecar", "c.toml", "--nice", "0", "--pid", str(gone.pid)],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 0 and time.monotonic() - t0 < 1.9
    rs = recs(tmp_path / "sidecar-events.jsonl")
    assert [x["kind"] for x in rs if x["kind"] in ("match", "stop")] == ["match", "stop"]


def test_time_limit_signal_during_start_up_is_not_lost(tmp_path: Path) -> None:
    """SLURM's warning signal (--signal=B:USR1@N) may come right as the job starts: a
    SIGUSR1 sent while the sidecar is still starting neither kills it nor is lost (its
    time_limit watcher fires once ready); a sidecar without such a watcher ignores it."""
    (tmp_path / "c.toml").write_text(
        '[[time_limit_actions]]\nname = "ckpt"\nbefore = 600\n'
        'cmd = "echo $SIGNAL >> fired.txt"\n'
    )
    (tmp_path / "plain.toml").write_text(
        '[[regex_actions]]\nfilepath_regex = "\\\\.log$"\nline_regex = "A"\ncmd = "true"\n'
    )

    def catches(pid: int, sig: int) -> bool:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
        except OSError:
            pass
        return False

    for cfg in ("c.toml", "plain.toml"):
        log = tmp_path / f"{cfg}.jsonl"
        p = subprocess.Popen(
            [sys.executable, "-m", "sidecar", cfg, "--no-follow", "--nice", "0",
             "--events", str(log)],
            cwd=tmp_path, stderr=subprocess.PIPE, text=True,
        )
        wait_until(lambda p=p: catches(p.pid, signal.SIGUSR1), timeout=10, interval=0.001)  # type: ignore[misc]
        p.send_signal(signal.SIGUSR1)  # most likely before the engine is up
        wait_until(lambda log=log: any(r["kind"] == "start" for r in recs(log)), timeout=20)  # type: ignore[misc]
        if cfg == "c.toml":
            wait_until(lambda: (tmp_path / "fired.txt").exists(), timeout=10)
        time.sleep(0.3)
        assert p.poll() is None, "SIGUSR1 must not kill the sidecar"
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=20)
        assert p.returncode == 0, err
    assert (tmp_path / "fired.txt").read_text().split() == ["SIGUSR1"]
