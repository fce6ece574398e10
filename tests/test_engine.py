"""The engine end to end, in-process: real inotify (or polling) in tmp dirs, real shell
actions, a real JSONL event log. The engine runs in a thread; the test writes files."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, List

import pytest

from sidecar.engine import Engine
from sidecar.model import (
    ActionSpec,
    Config,
    FileEventTrigger,
    RateLimit,
    RegexTrigger,
    Settings,
    Source,
    StaleTrigger,
    Watcher,
)
from tests.conftest import Running, wait_until


@pytest.fixture(params=["inotify", "poll"])
def backend(request: Any) -> str:
    return str(request.param)


def start(
    tmp_path: Path, watchers: List[Watcher], backend: str = "inotify", **settings: Any
) -> Running:
    log = tmp_path / "events.jsonl"
    st = Settings(backend=backend, poll_interval=0.05, event_log=str(log), **settings)
    eng = Engine(
        Config(tuple(watchers), st),
        cwd=str(tmp_path),
        environ={"PATH": os.environ["PATH"], "SLURM_JOB_ID": "4242"},
        install_signals=False,
    )
    eng.start()
    t = threading.Thread(target=eng.run, daemon=True)
    t.start()
    return Running(eng, t, log)


def regex_watcher(name: str, pattern: str, cmd: str, **kw: Any) -> Watcher:
    return Watcher(
        name=name,
        source=Source(directory=".", filepath_regex=r"\.log$"),
        trigger=RegexTrigger(
            pattern, **{k: v for k, v in kw.items() if k in ("captures", "condition")}
        ),
        actions=(ActionSpec("run_command", {"command": cmd}),),
        **{k: v for k, v in kw.items() if k not in ("captures", "condition")},
    )


def test_regex_match_runs_command_with_haskell_env(
    tmp_path: Path, backend: str, running: List[Running]
) -> None:
    """A line matching line_regex runs the command once, with NAME, FILE, DIRECTORY, MATCH."""
    r = start(
        tmp_path,
        [regex_watcher("err", "ERROR", 'echo "$NAME|$FILE|$DIRECTORY|$MATCH" >> out.txt')],
        backend,
    )
    running.append(r)
    with open(tmp_path / "job.log", "a") as fh:
        fh.write("all fine\nERROR: disk on fire\n")
    out = tmp_path / "out.txt"
    wait_until(lambda: out.exists() and out.read_text().count("\n") >= 1)
    r.stop()
    assert out.read_text() == f"err|{tmp_path}/job.log|.|ERROR: disk on fire\n"
    kinds = [x["kind"] for x in r.recs()]
    assert kinds[0] == "start" and kinds[-1] == "stop"
    (match,) = r.recs("match")
    assert (
        match["line"] == "ERROR: disk on fire"
        and match["lineno"] == 2
        and match["job_id"] == "4242"
    )
    (action,) = r.recs("action")
    assert action["ok"] is True and action["exit_code"] == 0 and action["firing"] == match["firing"]


def test_partial_line_waits_for_its_newline(tmp_path: Path, running: List[Running]) -> None:
    """Half a line is not matched until the rest arrives; then it fires once, whole."""
    r = start(tmp_path, [regex_watcher("e", r"ERROR \d+ end", "true")])
    running.append(r)
    f = tmp_path / "a.log"
    with open(f, "a") as fh:
        fh.write("ERROR 12")
        fh.flush()
        wait_until(lambda: r.engine.counts["bytes"] >= 0 and f.stat().st_size == 8)
        fh.write("3 end\n")
    wait_until(lambda: r.recs("match"))
    r.stop()
    (m,) = r.recs("match")
    assert m["line"] == "ERROR 123 end"


def test_captured_text_never_runs_as_shell(tmp_path: Path, running: List[Running]) -> None:
    """Captures with ;, $( ), backticks and quotes reach the command as data only."""
    w = regex_watcher("inj", r"msg: (.*)", 'printf "%s\\n" "$1" >> got.txt', captures=("m",))
    r = start(tmp_path, [w])
    running.append(r)
    evil = "a; touch pwned1 $(touch pwned2) `touch pwned3` ' \" x"
    with open(tmp_path / "x.log", "a") as fh:
        fh.write(f"msg: {evil}\n")
    got = tmp_path / "got.txt"
    wait_until(lambda: got.exists() and got.read_text())
    r.stop()
    assert got.read_text() == evil + "\n"
    assert not any((tmp_path / f"pwned{i}").exists() for i in (1, 2, 3))


def test_condition_and_max_triggers(tmp_path: Path, running: List[Running]) -> None:
    """Only lines meeting the condition fire; after max_triggers the watcher is TRIGGERED."""
    w = regex_watcher(
        "loss",
        r"loss: ([\d.]+)",
        "true",
        captures=("loss",),
        condition="float(loss) > 5",
        max_triggers=2,
    )
    r = start(tmp_path, [w])
    running.append(r)
    with open(tmp_path / "t.log", "a") as fh:
        for v in ["1.0", "6.5", "2", "7", "8", "9"]:
            fh.write(f"loss: {v}\n")
    wait_until(lambda: [x for x in r.recs("state") if x.get("state") == "TRIGGERED"])
    r.stop()
    assert [m["captures"]["loss"] for m in r.recs("match")] == ["6.5", "7"]


def test_rate_limit_counts_what_it_skips(tmp_path: Path, running: List[Running]) -> None:
    """Beyond the rate limit, firings are not acted on, and the count is in the log."""
    w = regex_watcher("burst", "HIT", "true", rate_limit=RateLimit(3, 60.0))
    r = start(tmp_path, [w])
    running.append(r)
    with open(tmp_path / "b.log", "a") as fh:
        fh.write("HIT\n" * 10)
    wait_until(lambda: r.engine.counts["matches"] >= 10)
    r.stop()
    assert len(r.recs("match")) == 3
    skipped = [x for x in r.recs("skipped") if x.get("reason") == "rate_limit"]
    assert sum(x["extra"]["count"] for x in skipped) == 7


def test_refused_matches_are_counted_exactly_without_being_built(
    tmp_path: Path, running: List[Running]
) -> None:
    """Once a watcher's rate-limit window is full (or it is TRIGGERED), the matcher only
    counts its lines: the skipped / ignored counts are still exact, line by line, and a
    watcher with a condition is still judged per line."""
    limited = regex_watcher("limited", "HIT", "true", rate_limit=RateLimit(3, 3600.0))
    once = regex_watcher("once", "HIT", "true", max_triggers=1)
    cond = regex_watcher(
        "cond",
        r"HIT (\d+)",
        "true",
        captures=("n",),
        condition="int(n) == 4000",
        rate_limit=RateLimit(1, 3600.0),
    )
    r = start(tmp_path, [limited, once, cond])
    running.append(r)
    with open(tmp_path / "b.log", "a") as fh:
        fh.write("HIT 0\nHIT 1\nHIT 2\n")
    wait_until(lambda: r.engine.counts["matches"] >= 9)
    wait_until(lambda: len(r.recs("match")) == 4)
    eng = r.engine
    assert eng._counted_only(next(iter(eng.files.values()))) == ("limited", "once")
    body = "".join(f"HIT {i}\nquiet line {i}\n" for i in range(3, 20000))
    with open(tmp_path / "b.log", "a") as fh:
        fh.write(body)
    wait_until(lambda: eng.counts["matches"] >= 3 * 20000)
    r.stop()
    assert eng.runtimes["limited"].matches == 20000
    assert eng.runtimes["once"].matches == 20000
    assert eng.runtimes["once"].ignored == 19999
    skipped = [x for x in r.recs("skipped") if x.get("reason") == "rate_limit"]
    by = {
        w: sum(x["extra"]["count"] for x in skipped if x["watcher"] == w)
        for w in ("limited", "cond")
    }
    assert by["limited"] == 20000 - 3
    assert by["cond"] == 0  # its condition refused all but line 4000, which fired
    assert [m["lineno"] for m in r.recs("match", watcher="cond")] == [4 + 2 * (4000 - 3)]
    assert len(r.recs("match")) == 5


def test_stale_fires_once_per_spell_and_rearms(
    tmp_path: Path, backend: str, running: List[Running]
) -> None:
    """No write for `timeout` seconds fires once; a write re-arms it."""
    f = tmp_path / "train.log"
    f.write_text("start\n")
    w = Watcher(
        name="hang",
        source=Source(directory=".", filepath_regex=r"train\.log$"),
        trigger=StaleTrigger(0.3),
        actions=(ActionSpec("run_command", {"command": 'echo "$FILE $TIMEOUT" >> stale.txt'}),),
    )
    r = start(tmp_path, [w], backend)
    running.append(r)
    out = tmp_path / "stale.txt"
    wait_until(lambda: out.exists() and out.read_text().count("\n") == 1)
    with open(f, "a") as fh:
        fh.write("more\n")
    wait_until(lambda: out.read_text().count("\n") == 2)
    r.stop()
    assert out.read_text().splitlines() == [f"{f} 0.3"] * 2
    assert len(r.recs("match")) == 2


def test_file_events_set_kind(tmp_path: Path, backend: str, running: List[Running]) -> None:
    """create / remove events of matching files run the command with KIND."""
    w = Watcher(
        name="outs",
        source=Source(directory=".", filepath_regex=r"\.out$"),
        trigger=FileEventTrigger(frozenset({"create", "remove"})),
        actions=(ActionSpec("run_command", {"command": 'echo "$KIND $FILE" >> ev.txt'}),),
    )
    r = start(tmp_path, [w], backend)
    running.append(r)
    p = tmp_path / "result.out"
    p.write_text("x\n")
    ev = tmp_path / "ev.txt"
    wait_until(lambda: ev.exists() and "create" in ev.read_text())
    p.unlink()
    wait_until(lambda: "remove" in ev.read_text())
    r.stop()
    assert ev.read_text().splitlines() == [f"create {p}", f"remove {p}"]


def test_store_metric_and_log_event(tmp_path: Path, running: List[Running]) -> None:
    """store_metric writes a numeric metric record; log_event a log record."""
    w = Watcher(
        name="m",
        source=Source(directory=".", filepath_regex=r"\.log$"),
        trigger=RegexTrigger(r"epoch (\d+) loss: ([\d.]+)", captures=("epoch", "loss")),
        actions=(
            ActionSpec("store_metric", {"name": "loss", "value": "$loss"}),
            ActionSpec("log_event", {"message": "epoch ${epoch} loss $loss", "level": "warning"}),
        ),
    )
    r = start(tmp_path, [w])
    running.append(r)
    with open(tmp_path / "m.log", "a") as fh:
        fh.write("epoch 3 loss: 0.25\n")
    wait_until(lambda: r.recs("log"))
    r.stop()
    (metric,) = r.recs("metric")
    assert metric["metric"] == "loss" and metric["value"] == 0.25
    (lg,) = r.recs("log")
    assert lg["message"] == "epoch 3 loss 0.25" and lg["level"] == "WARNING"


def test_slow_command_does_not_block_other_watchers(tmp_path: Path, running: List[Running]) -> None:
    """A command that sleeps does not delay another watcher's action."""
    slow = regex_watcher("slow", "SLOW", "sleep 30")
    fast = regex_watcher("fast", "FAST", "echo ok >> fast.txt")
    r = start(tmp_path, [slow, fast], action_timeout=60)
    running.append(r)
    with open(tmp_path / "s.log", "a") as fh:
        fh.write("SLOW\nFAST\n")
    wait_until(lambda: (tmp_path / "fast.txt").exists(), timeout=5)
    r.stop()


def test_action_timeout_kills_process_group(tmp_path: Path, running: List[Running]) -> None:
    """A command past its timeout is killed with its children and recorded as timed out."""
    w = Watcher(
        name="hang",
        source=Source(directory=".", filepath_regex=r"\.log$"),
        trigger=RegexTrigger("GO"),
        actions=(
            ActionSpec(
                "run_command", {"command": "sleep 100 & echo $! > child.pid; wait"}, timeout=0.5
            ),
        ),
    )
    r = start(tmp_path, [w])
    running.append(r)
    with open(tmp_path / "g.log", "a") as fh:
        fh.write("GO\n")
    wait_until(lambda: r.recs("action"), timeout=10)
    (a,) = r.recs("action")
    assert a["ok"] is False and a.get("reason") == "timeout"
    pid = int((tmp_path / "child.pid").read_text())

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie waiting for its reaper counts as gone
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
        except OSError:
            return True

    wait_until(gone, timeout=5)
    r.stop()


def test_stop_reads_what_is_left_and_flushes_partial(
    tmp_path: Path, running: List[Running]
) -> None:
    """At stop, lines written just before and a last line without newline are still matched."""
    r = start(tmp_path, [regex_watcher("e", "END", "true")])
    running.append(r)
    with open(tmp_path / "z.log", "a") as fh:
        fh.write("END one\nEND two (no newline)")
    r.stop()
    lines = [m["line"] for m in r.recs("match")]
    assert lines == ["END one", "END two (no newline)"]
    assert r.recs()[-1]["kind"] == "stop"


def test_timer_mode_repeats_with_captured_values(tmp_path: Path, running: List[Running]) -> None:
    """After the first match, timer mode runs the actions every interval with the captures."""
    w = Watcher(
        name="tick",
        source=Source(directory=".", filepath_regex=r"\.log$"),
        trigger=RegexTrigger(r"started (\w+)", captures=("what",)),
        actions=(ActionSpec("run_command", {"command": 'echo "$what" >> tick.txt'}),),
        timer_interval=0.2,
        max_triggers=3,
    )
    r = start(tmp_path, [w])
    running.append(r)
    with open(tmp_path / "t.log", "a") as fh:
        fh.write("started training\n")
    out = tmp_path / "tick.txt"
    wait_until(lambda: out.exists() and out.read_text().count("\n") == 3, timeout=10)
    r.stop()
    assert out.read_text() == "training\n" * 3
    assert [m["trigger"] for m in r.recs("match")] == ["regex", "timer", "timer"]


def test_prometheus_textfile_follows_the_stored_metrics(
    tmp_path: Path, running: List[Running]
) -> None:
    """With prometheus_textfile set, the daemon keeps each metric's last value there in the
    Prometheus text format (written atomically, at most about once a second)."""
    w = Watcher(
        name="m",
        source=Source(directory=".", filepath_regex=r"\.log$"),
        trigger=RegexTrigger(r"loss: ([\d.]+)", captures=("loss",)),
        actions=(ActionSpec("store_metric", {"name": "train loss", "value": "$loss"}),),
    )
    prom = tmp_path / "metrics" / "sidecar.prom"
    prom.parent.mkdir()
    r = start(tmp_path, [w], prometheus_textfile=str(prom))
    running.append(r)
    with open(tmp_path / "m.log", "a") as fh:
        fh.write("loss: 0.9\nloss: 0.5\n")
    wait_until(lambda: prom.exists() and "0.5" in prom.read_text(), timeout=5)
    r.stop()
    text = prom.read_text()
    assert "# TYPE sidecar_train_loss gauge" in text
    (sample,) = [ln for ln in text.splitlines() if ln.startswith("sidecar_train_loss{")]
    assert sample.endswith(" 0.5") and 'watcher="m"' in sample and 'job_id="4242"' in sample


def test_deleted_files_are_forgotten_and_new_ones_read_whole(
    tmp_path: Path, backend: str, running: List[Running]
) -> None:
    """A job that writes and deletes many files does not grow the sidecar: a deleted file's
    state goes once it is read to its end; a file created again under that name is new."""
    r = start(tmp_path, [regex_watcher("e", "X", "true")], backend)
    running.append(r)
    for i in range(30):
        p = tmp_path / f"t{i}.log"
        p.write_text(f"X {i}\n")
        wait_until(lambda i=i: r.engine.counts["matches"] >= i + 1)  # type: ignore[misc]
        p.unlink()
    wait_until(lambda: len(r.engine.files) == 0)
    (tmp_path / "t0.log").write_text("X again\n")
    wait_until(lambda: r.engine.counts["matches"] >= 31)
    r.stop()
    assert sorted(m["line"] for m in r.recs("match"))[-1] == "X again"
    assert len(r.recs("match")) == 31
