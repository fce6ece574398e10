"""Triggers that understand the job (issue 6), through the real engine: real processes
(followed, sampled for CPU and memory, probes run through /bin/sh), real files, real signals,
a real JSONL event log. Each test states what a user relies on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from sidecar import state as stmod
from sidecar.engine import Engine
from sidecar.model import (
    ActionSpec,
    Config,
    JobEndTrigger,
    MemoryTrigger,
    RegexTrigger,
    Settings,
    Source,
    StaleTrigger,
    TimeLimitTrigger,
    Watcher,
)
from tests.conftest import Running, wait_until


@pytest.fixture
def children() -> Iterator[List[subprocess.Popen[bytes]]]:
    procs: List[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def start(
    tmp_path: Path,
    watchers: List[Watcher],
    running: List[Running],
    *,
    env: Optional[Dict[str, str]] = None,
    follow: Optional[subprocess.Popen[bytes]] = None,
    install_signals: bool = False,
    **settings: Any,
) -> Running:
    log = tmp_path / "events.jsonl"
    st = Settings(backend="inotify", event_log=str(log), **settings)
    environ = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "4242"}
    environ.update(env or {})
    eng = Engine(
        Config(tuple(watchers), st),
        cwd=str(tmp_path),
        environ=environ,
        install_signals=install_signals,
    )
    eng.start()
    if follow is not None:
        eng.follow(follow.pid, exit_status=follow.poll)
    t = threading.Thread(target=eng.run, daemon=True)
    t.start()
    r = Running(eng, t, log)
    running.append(r)
    return r


def run(cmd: str, **kw: Any) -> ActionSpec:
    return ActionSpec("run_command", {"command": cmd}, **kw)


def spawn(children: List[subprocess.Popen[bytes]], code: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-c", code])
    children.append(p)
    return p


BUSY = "import time\nt=time.time()\nwhile time.time()-t<60: pass"
IDLE = "import time; time.sleep(60)"


# ---------------------------------------------------------------------------- job end


def test_job_end_fires_with_the_exit_status_then_the_sidecar_stops(
    tmp_path: Path, running: List[Running], children: List[Any]
) -> None:
    """The followed process exits 3: the job_end watcher runs with EXIT_CODE=3 (its
    condition on exit_code holds) before the sidecar stops; a watcher whose condition asks
    for success does not fire."""
    out = tmp_path / "code.txt"
    p = spawn(children, "import time, sys; time.sleep(0.5); sys.exit(3)")
    r = start(
        tmp_path,
        [
            Watcher(
                "failed",
                Source(),
                JobEndTrigger(condition="int(exit_code) != 0"),
                (run(f'sleep 0.3; echo "$EXIT_CODE ${{exit_code}}" > {out}'),),
            ),
            Watcher(
                "succeeded",
                Source(),
                JobEndTrigger(condition="int(exit_code) == 0"),
                (run("true"),),
            ),
        ],
        running,
        follow=p,
    )
    r.thread.join(15)
    assert not r.thread.is_alive(), "the sidecar stops when the job's process is gone"
    assert out.read_text().split() == ["3", "3"]
    m = r.recs("match", trigger="job_end")
    assert [x["watcher"] for x in m] == ["failed"]
    assert m[0]["captures"] == {"exit_code": "3"}
    acts = r.recs("action", watcher="failed")
    assert acts and acts[0]["ok"] is True
    stop = r.recs("stop")[0]
    assert stop["extra"]["followed_exit_code"] == 3


# ---------------------------------------------------------------------------- time limit


def test_time_limit_fires_before_the_end_time(
    tmp_path: Path, running: List[Running]
) -> None:
    """With the job's end 3 s away and before = 2 s, the watcher fires about a second after
    start with TIME_LEFT close to 2, and only once."""
    out = tmp_path / "left.txt"
    end = time.time() + 3.0
    t0 = time.monotonic()
    r = start(
        tmp_path,
        [
            Watcher(
                "checkpoint",
                Source(),
                TimeLimitTrigger(before=2.0, signal=None),
                (run(f'echo "$TIME_LEFT" >> {out}'),),
            )
        ],
        running,
        env={"SLURM_JOB_END_TIME": str(int(end))},
    )
    wait_until(lambda: out.exists() and out.read_text().strip(), timeout=10)
    fired_after = time.monotonic() - t0
    assert 0.0 <= fired_after < 3.0
    left = int(out.read_text().split()[0])
    assert 0 <= left <= 2
    time.sleep(1.5)
    assert len(out.read_text().split()) == 1, "fires once"
    assert len(r.recs("match", trigger="time_limit")) == 1
    info = [x for x in r.recs("info") if x.get("trigger") == "time_limit"]
    assert info and "SLURM_JOB_END_TIME" in info[0]["extra"]["source"]


def test_time_limit_fires_on_its_signal(tmp_path: Path, running: List[Running]) -> None:
    """sbatch --signal=B:USR1@N, forwarded to the sidecar: SIGUSR1 fires the watcher at once
    (SIGNAL=SIGUSR1), even when the end time is unknown; a second signal does nothing."""
    out = tmp_path / "sig.txt"
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                              signal.SIGUSR1)}
    try:
        r = start(
            tmp_path,
            [
                Watcher(
                    "ckpt",
                    Source(),
                    TimeLimitTrigger(before=600.0, signal="USR1"),
                    (run(f'echo "$SIGNAL" >> {out}'),),
                )
            ],
            running,
            env={"SLURM_JOB_ID": ""},
            install_signals=True,
        )
        wait_until(lambda: r.engine.ready)
        os.kill(os.getpid(), signal.SIGUSR1)
        wait_until(lambda: out.exists() and out.read_text().strip(), timeout=10)
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.5)
        assert out.read_text().split() == ["SIGUSR1"]
        warn = [x for x in r.recs("warning") if x.get("trigger") == "time_limit"]
        assert warn and "only on their signal" in warn[0]["message"]
        r.stop()
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        # the engine ran in a worker thread, which cannot unset the main thread's wake-up
        # fd (the daemon runs it in its main thread): do it here, before that fd is reused
        signal.set_wakeup_fd(-1)


# ---------------------------------------------------------------------------- memory


def test_memory_fires_once_when_the_job_passes_its_fraction(
    tmp_path: Path, running: List[Running], children: List[Any]
) -> None:
    """A job process holding ~150 MB against a 200 MB limit at fraction 0.5 fires the memory
    watcher once, with RSS_BYTES and LIMIT_BYTES; a 0.95 watcher stays quiet."""
    out = tmp_path / "mem.txt"
    p = spawn(children, "import time; b = bytearray(150 << 20); time.sleep(60)")
    limit = 200 << 20
    r = start(
        tmp_path,
        [
            Watcher(
                "half",
                Source(),
                MemoryTrigger(fraction=0.5, limit=limit, interval=0.1),
                (run(f'echo "$RSS_BYTES $LIMIT_BYTES $FRACTION" >> {out}'),),
            ),
            Watcher(
                "almost_full",
                Source(),
                MemoryTrigger(fraction=0.95, limit=limit, interval=0.1),
                (run("true"),),
            ),
        ],
        running,
        follow=p,
    )
    wait_until(lambda: out.exists() and out.read_text().strip(), timeout=15)
    time.sleep(0.6)  # several more samples above the line: still one firing
    lines = out.read_text().splitlines()
    assert len(lines) == 1
    rss, lim, frac = lines[0].split()
    assert int(rss) >= limit // 2 and int(lim) == limit and 0.5 <= float(frac) < 0.95
    assert not r.recs("match", watcher="almost_full")
    info = [x for x in r.recs("info") if x.get("watcher") == "half"]
    assert info and info[0]["extra"] == {"limit_bytes": limit, "source": "given in the config"}


def test_memory_without_a_limit_says_so(tmp_path: Path, running: List[Running]) -> None:
    """No limit given, none in the environment or the cgroup: a warning record says the
    watcher cannot fire and how to fix it (unless this machine's cgroup has a limit)."""
    from sidecar.jobinfo import memory_limit

    if memory_limit({})[0] is not None:
        pytest.skip("this machine's cgroup has a memory limit")
    r = start(
        tmp_path,
        [Watcher("mem", Source(), MemoryTrigger(fraction=0.9, interval=0.1), (run("true"),))],
        running,
        env={"SLURM_JOB_ID": ""},
    )
    w = wait_until(lambda: [x for x in r.recs("warning") if x.get("watcher") == "mem"])
    assert "limit" in w[0]["message"]


# ---------------------------------------------------------------------------- hangs


def _stale(name: str, **kw: Any) -> Watcher:
    return Watcher(name, Source(filepath_regex=r"^train\.log$"), StaleTrigger(**kw), (run("true"),))


def test_quiet_file_with_an_idle_job_is_a_hang(
    tmp_path: Path, running: List[Running], children: List[Any]
) -> None:
    """No write for the timeout while the job's process sleeps at 0 % CPU: the stale watcher
    with max_cpu fires once, with the measured CPU_PERCENT."""
    (tmp_path / "train.log").write_text("epoch 1\n")
    p = spawn(children, IDLE)
    r = start(tmp_path, [_stale("hang", timeout=1.0, max_cpu=10.0)], running, follow=p)
    m = wait_until(lambda: r.recs("match", watcher="hang"), timeout=10)
    assert m[0]["extra"]["cpu_percent"] <= 10.0
    assert m[0]["extra"]["processes"] >= 1
    time.sleep(1.5)
    assert len(r.recs("match", watcher="hang")) == 1, "once per stall"


def test_quiet_file_with_a_busy_job_is_not_a_hang(
    tmp_path: Path, running: List[Running], children: List[Any]
) -> None:
    """No write for the timeout while the job computes at ~100 % CPU: no firing, a
    `skipped` record with reason busy and the CPU it measured."""
    (tmp_path / "train.log").write_text("epoch 1\n")
    p = spawn(children, BUSY)
    r = start(tmp_path, [_stale("hang", timeout=1.0, max_cpu=10.0)], running, follow=p)
    busy = wait_until(lambda: r.recs("skipped", watcher="hang", reason="busy"), timeout=10)
    assert busy[0]["extra"]["cpu_percent"] > 10.0
    assert not r.recs("match", watcher="hang")


def test_a_write_rearms_the_hang_check(
    tmp_path: Path, running: List[Running], children: List[Any]
) -> None:
    """After a hang fired, a new write re-arms it: the next stall fires again."""
    log = tmp_path / "train.log"
    log.write_text("epoch 1\n")
    p = spawn(children, IDLE)
    r = start(tmp_path, [_stale("hang", timeout=0.6, require_alive=True)], running, follow=p)
    wait_until(lambda: r.recs("match", watcher="hang"), timeout=10)
    with log.open("a") as fh:
        fh.write("epoch 2\n")
    wait_until(lambda: len(r.recs("match", watcher="hang")) == 2, timeout=10)


def test_quiet_file_when_the_job_is_gone_is_not_a_hang(
    tmp_path: Path, running: List[Running]
) -> None:
    """require_alive: with the job's processes gone, silence is not a hang (skipped record,
    reason job_not_running)."""
    (tmp_path / "train.log").write_text("epoch 1\n")
    dead = subprocess.Popen(["true"])
    dead.wait()
    r = start(tmp_path, [_stale("hang", timeout=0.5, require_alive=True)], running)
    r.engine.follow_pid = dead.pid  # what the tree sampler looks at (no pidfd: no stop)
    wait_until(lambda: r.recs("skipped", watcher="hang", reason="job_not_running"), timeout=10)
    assert not r.recs("match", watcher="hang")


def test_a_file_that_never_appears_is_stale_after_the_grace_period(
    tmp_path: Path, running: List[Running]
) -> None:
    """grace: the watched file has not appeared 0.5 s after start: the watcher fires once,
    marked never_appeared; a watcher whose file exists does not use the grace check."""
    (tmp_path / "other.log").write_text("x\n")
    r = start(
        tmp_path,
        [
            Watcher(
                "no_log",
                Source(paths=("train.log",)),
                StaleTrigger(timeout=30.0, grace=0.5),
                (run("true"),),
            ),
            Watcher(
                "has_log",
                Source(paths=("other.log",)),
                StaleTrigger(timeout=30.0, grace=0.5),
                (run("true"),),
            ),
        ],
        running,
    )
    m = wait_until(lambda: r.recs("match", watcher="no_log"), timeout=10)
    assert m[0]["extra"]["never_appeared"] is True
    assert m[0]["file"] == str(tmp_path / "train.log")
    time.sleep(1.0)
    assert len(r.recs("match", watcher="no_log")) == 1
    assert not r.recs("match", watcher="has_log")


# ---------------------------------------------------------------------------- probes


def test_probe_output_is_matched_like_new_lines(tmp_path: Path, running: List[Running]) -> None:
    """A probe command's stdout lines go through the regex, captures and condition: only the
    line above the threshold fires, with PROBE set; stderr is not matched."""
    out = tmp_path / "probe.txt"
    r = start(
        tmp_path,
        [
            Watcher(
                "gpu_idle",
                Source(probe="echo 'util 95'; echo 'util 3'; echo 'util 99' >&2",
                       probe_interval=30.0),
                RegexTrigger(r"util (\d+)", captures=("util",), condition="int(util) < 10"),
                (run(f'echo "$util|$PROBE" >> {out}'),),
                rate_limit=None,
            )
        ],
        running,
    )
    wait_until(lambda: out.exists() and out.read_text().strip(), timeout=10)
    time.sleep(0.3)
    lines = out.read_text().splitlines()
    assert lines == ["3|echo 'util 95'; echo 'util 3'; echo 'util 99' >&2"]
    m = r.recs("match", watcher="gpu_idle")
    assert m[0]["trigger"] == "probe" and m[0]["line"] == "util 3"


def test_probe_runs_every_interval_and_failures_are_reported_once(
    tmp_path: Path, running: List[Running]
) -> None:
    """The probe runs again every interval; a failing probe gives one error record per
    failure spell, not one per run."""
    count = tmp_path / "n"
    r = start(
        tmp_path,
        [
            Watcher(
                "quota",
                Source(probe=f"echo run >> {count}; echo 'used 10%'; exit 3",
                       probe_interval=0.2),
                RegexTrigger(r"used (\d+)%"),
                (run("true"),),
            )
        ],
        running,
    )
    wait_until(lambda: count.exists() and len(count.read_text().split()) >= 4, timeout=10)
    errs = [x for x in r.recs("error") if x.get("watcher") == "quota"]
    assert len(errs) == 1 and "exit code 3" in errs[0]["message"]


# ---------------------------------------------------------------------------- requeue


def _regex_job(tmp_path: Path, restart: int, running: List[Running], **kw: Any) -> Running:
    return start(
        tmp_path,
        [
            Watcher(
                "err",
                Source(filepath_regex=r"^job\.out$"),
                RegexTrigger(r"ERROR (\d+)"),
                (run(f'echo "$1" >> {tmp_path / "acted.txt"}'),),
                **kw,
            )
        ],
        running,
        env={"SLURM_RESTART_COUNT": str(restart)},
    )


def test_requeued_job_neither_replays_old_lines_nor_forgets_its_limits(
    tmp_path: Path, running: List[Running]
) -> None:
    """Run 0 acts on ERROR 1; the job is requeued (SLURM_RESTART_COUNT=1, same job id, output
    appended): run 1 does not act on ERROR 1 again, acts on ERROR 2, and its max_triggers=2
    counts run 0's firing, so ERROR 3 is not acted on."""
    out = tmp_path / "job.out"
    acted = tmp_path / "acted.txt"
    out.write_text("ERROR 1\n")
    r0 = _regex_job(tmp_path, 0, running, max_triggers=2)
    wait_until(lambda: acted.exists() and acted.read_text().split() == ["1"])
    r0.stop()
    with out.open("a") as fh:
        fh.write("requeued\nERROR 2\nERROR 3\n")
    r1 = _regex_job(tmp_path, 1, running, max_triggers=2)
    wait_until(lambda: acted.read_text().split() == ["1", "2"])
    time.sleep(0.5)
    assert acted.read_text().split() == ["1", "2"]
    assert r1.engine.state_path and ".r1-" in os.path.basename(r1.engine.state_path)
    warn = [x for x in r1.recs("warning") if x.get("reason") == "resumed"]
    assert warn and warn[-1]["extra"]["restart_count"] == 1
    assert warn[-1]["extra"]["previous_restart_count"] == 0
    states = [x for x in r1.recs("state") if x.get("watcher") == "err"]
    assert states and states[-1]["state"] == "TRIGGERED"


def test_requeue_carries_the_resubmit_count(tmp_path: Path) -> None:
    """Resubmissions done by an earlier run of a job count against max_resubmits in the
    next run (the counter in the environment alone would forget them)."""
    d = tmp_path / ".sidecar"
    cfg_id = "|".join(["err"])
    prev = stmod.default_state_path(str(tmp_path / "events.jsonl"), str(tmp_path), "4242", cfg_id)
    stmod.write_atomic(prev, {"version": stmod.VERSION, "pid": 1, "host": "elsewhere",
                              "resubmits": 2, "restart_count": 0, "files": {}, "watchers": {}})
    assert os.path.dirname(prev) == str(d)
    eng = Engine(
        Config((Watcher("err", Source(), RegexTrigger("x"), (run("true"),)),),
               Settings(event_log=str(tmp_path / "events.jsonl"))),
        cwd=str(tmp_path),
        environ={"PATH": os.environ["PATH"], "SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "1"},
        install_signals=False,
    )
    eng.start()
    try:
        assert eng.resubmits == 2 and eng.ctx.resubmits_done == 2
    finally:
        eng.request_stop("test")
        eng.run()


def test_same_file_seen_from_another_node_keeps_its_position(tmp_path: Path) -> None:
    """A saved position whose file has the same inode but another device number (the
    network filesystem seen from the node a requeued job runs on) still holds."""
    from sidecar.engine import _same_file_elsewhere

    f = tmp_path / "job.out"
    f.write_text("a\nb\n")
    st = os.stat(f)
    res = stmod.FileResume(st.st_dev + 1, st.st_ino, 2, 2, 1)
    got = _same_file_elsewhere(str(f), res)
    assert (got.dev, got.inode, got.offset, got.lineno) == (st.st_dev, st.st_ino, 2, 2)
    shorter = stmod.FileResume(st.st_dev + 1, st.st_ino, 99, 9, 0)
    assert _same_file_elsewhere(str(f), shorter) == shorter, "a shorter file is not trusted"


# ---------------------------------------------------------------------------- thresholds


def test_threshold_per_key_and_suppression_report_what_they_held_back(
    tmp_path: Path, running: List[Running]
) -> None:
    """threshold 3 in 60 s per rank: rank 0's third warning fires, rank 1 (two warnings)
    never does; with suppress, rank 0's next threshold-crossings within the period are held
    back and counted, and the count is reported at stop (no later firing carried it)."""
    from sidecar.model import RateLimit, Throttle

    log = tmp_path / "job.out"
    log.write_text("")
    out = tmp_path / "fired.txt"
    r = start(
        tmp_path,
        [
            Watcher(
                "nccl",
                Source(filepath_regex=r"^job\.out$"),
                RegexTrigger(r"rank (\d+): NCCL WARN", captures=("rank",)),
                (run(f'echo "$KEY $COUNT $SUPPRESSED" >> {out}'),),
                throttle=Throttle(RateLimit(3, 60.0), track_by="$rank", suppress=600.0),
            )
        ],
        running,
    )
    with log.open("a") as fh:
        fh.write("rank 0: NCCL WARN a\nrank 1: NCCL WARN a\nrank 0: NCCL WARN b\n")
        fh.write("rank 1: NCCL WARN b\nrank 0: NCCL WARN c\n")
    wait_until(lambda: out.exists() and out.read_text().strip(), timeout=10)
    with log.open("a") as fh:
        fh.write("rank 0: NCCL WARN d\n" * 6)  # two more crossings of 3: held back
    wait_until(lambda: r.engine.runtimes["nccl"].held >= 6, timeout=10)
    r.stop()
    assert out.read_text().split() == ["0", "3", "0"]
    m = r.recs("match", watcher="nccl")
    assert len(m) == 1 and m[0]["extra"]["throttle"] == {"key": "0", "count": 3, "suppressed": 0}
    held = r.recs("skipped", watcher="nccl", reason="suppressed")
    assert held and held[0]["extra"] == {"count": 2, "key": "0"}


# ---------------------------------------------------------------------------- records


TRACEBACK = """epoch 3 loss 0.5
Traceback (most recent call last):
  File "train.py", line 10, in <module>
    step()
  File "train.py", line 5, in step
    raise ValueError("bad batch")
ValueError: bad batch
epoch 4 loss 0.4
"""


def test_python_traceback_is_handed_over_whole(tmp_path: Path, running: List[Running]) -> None:
    """A multi-line watcher gathers a Python traceback from its header to the exception
    line and gives the actions the whole record (RECORD, MATCH), once; lines after it are
    not part of it."""
    from sidecar.model import MULTILINE_PRESETS, MultiLine

    start_re, end_re = MULTILINE_PRESETS["python_traceback"]
    log = tmp_path / "job.out"
    log.write_text("")
    out = tmp_path / "record.txt"
    r = start(
        tmp_path,
        [
            Watcher(
                "tb",
                Source(filepath_regex=r"^job\.out$"),
                RegexTrigger(start_re, multiline=MultiLine(end_re, preset="python_traceback")),
                (run(f'printf "%s" "$RECORD" > {out}; echo "/$RECORD_LINES" >> {out}'),),
            )
        ],
        running,
    )
    with log.open("a") as fh:
        fh.write(TRACEBACK[:60])  # the record arrives in pieces
        fh.flush()
        time.sleep(0.2)
        fh.write(TRACEBACK[60:])
    wait_until(lambda: out.exists() and "/" in out.read_text(), timeout=10)
    body = out.read_text()
    lines = TRACEBACK.splitlines()
    assert body == "\n".join(lines[1:7]) + "/6\n"
    m = r.recs("match", watcher="tb")
    assert len(m) == 1 and m[0]["lineno"] == 2
    assert m[0]["extra"]["record"] == {"lines": 6, "last_lineno": 7, "reason": "end"}


def test_unfinished_record_is_handed_over_after_its_timeout(
    tmp_path: Path, running: List[Running]
) -> None:
    """A block whose end never comes is handed over `timeout` seconds after its last line,
    with reason timeout."""
    from sidecar.model import MultiLine

    log = tmp_path / "job.out"
    log.write_text("")
    r = start(
        tmp_path,
        [
            Watcher(
                "block",
                Source(filepath_regex=r"^job\.out$"),
                RegexTrigger(r"^BEGIN REPORT", multiline=MultiLine(r"^END REPORT", timeout=0.5)),
                (run("true"),),
            )
        ],
        running,
    )
    with log.open("a") as fh:
        fh.write("BEGIN REPORT\nline a\nline b\n")
    m = wait_until(lambda: r.recs("match", watcher="block"), timeout=10)
    assert m[0]["line"] == "BEGIN REPORT\nline a\nline b"
    assert m[0]["extra"]["record"]["reason"] == "timeout"


def test_a_huge_record_still_runs_its_command(tmp_path: Path, running: List[Running]) -> None:
    """A matched line of 600 KB (over the kernel's 128 KiB limit for one environment
    string) still runs the command: MATCH and the capture are cut and marked, not E2BIG."""
    log = tmp_path / "job.out"
    log.write_text("")
    out = tmp_path / "len.txt"
    r = start(
        tmp_path,
        [
            Watcher(
                "big",
                Source(filepath_regex=r"^job\.out$"),
                RegexTrigger(r"^BIG (x+)$"),
                (run(f'printf "%s" "$MATCH" | wc -c > {out}; printf "%s" "$1" | tail -c 9 >> {out}'),),
            )
        ],
        running,
    )
    with log.open("a") as fh:
        fh.write("BIG " + "x" * 600_000 + "\n")
    wait_until(lambda: out.exists() and "cut" in out.read_text(), timeout=10)
    n = int(out.read_text().split()[0])
    assert 100_000 <= n <= 100_100
    acts = wait_until(lambda: r.recs("action", watcher="big"), timeout=10)
    assert acts[0]["ok"] is True


def test_the_next_firing_carries_the_suppressed_count(
    tmp_path: Path, running: List[Running]
) -> None:
    """suppress 0.5 s: a repeat within the period is held back; the first one after it
    fires with SUPPRESSED = the number held back, even when it comes long after."""
    from sidecar.model import Throttle

    log = tmp_path / "job.out"
    log.write_text("")
    out = tmp_path / "fired.txt"
    r = start(
        tmp_path,
        [
            Watcher(
                "oom",
                Source(filepath_regex=r"^job\.out$"),
                RegexTrigger(r"out of memory"),
                (run(f'echo "$SUPPRESSED" >> {out}'),),
                throttle=Throttle(suppress=0.5),
            )
        ],
        running,
    )
    with log.open("a") as fh:
        fh.write("out of memory 1\nout of memory 2\nout of memory 3\n")
    wait_until(lambda: out.exists() and out.read_text().split() == ["0"], timeout=10)
    time.sleep(1.2)  # the period ends with nothing reported
    assert not r.recs("skipped", watcher="oom", reason="suppressed")
    with log.open("a") as fh:
        fh.write("out of memory 4\n")
    wait_until(lambda: out.read_text().split() == ["0", "2"], timeout=10)


def test_job_end_of_a_process_that_is_not_our_child(
    tmp_path: Path, running: List[Running], children: List[Any]
) -> None:
    """Following a process that is not the sidecar's child (--pid), its exit status cannot
    be known: a watcher without condition fires with EXIT_CODE empty; one with a condition
    does not fire and a `skipped` record (reason exit_status_unknown) says how to get it."""
    out = tmp_path / "code.txt"
    p = spawn(children, "import time, sys; time.sleep(0.4); sys.exit(3)")
    log = tmp_path / "events.jsonl"
    eng = Engine(
        Config(
            (
                Watcher("any", Source(), JobEndTrigger(), (run(f'echo "[$EXIT_CODE]" > {out}'),)),
                Watcher("failed", Source(), JobEndTrigger(condition="int(exit_code) != 0"),
                        (run("true"),)),
            ),
            Settings(event_log=str(log)),
        ),
        cwd=str(tmp_path),
        environ={"PATH": os.environ["PATH"]},
        install_signals=False,
    )
    eng.start()
    eng.follow(p.pid)  # no exit status callable: as with --pid
    t = threading.Thread(target=eng.run, daemon=True)
    t.start()
    r = Running(eng, t, log)
    running.append(r)
    t.join(15)
    assert not t.is_alive()
    assert out.read_text().strip() == "[]"
    sk = r.recs("skipped", watcher="failed", reason="exit_status_unknown")
    assert sk and "sidecar CONFIG -- COMMAND" in sk[0]["message"]
    assert not r.recs("match", watcher="failed")


def test_a_file_rewritten_while_no_sidecar_ran_is_read_from_its_start(
    tmp_path: Path, running: List[Running]
) -> None:
    """A requeued job whose output was truncated and written again past the old read
    position before the new sidecar started (same inode, longer file): the saved position
    is not taken up (the file no longer starts with the bytes it had), every new line is
    read."""
    out = tmp_path / "job.out"
    acted = tmp_path / "acted.txt"
    out.write_text("run 0 starts\nERROR 1\n")
    r0 = _regex_job(tmp_path, 0, running)
    wait_until(lambda: acted.exists() and acted.read_text().split() == ["1"])
    r0.stop()
    with out.open("w") as fh:  # O_TRUNC: same inode
        fh.write("ERROR 2\nERROR 3\nERROR 4, on a line past the old position\n")
    r1 = _regex_job(tmp_path, 1, running)
    wait_until(lambda: acted.read_text().split() == ["1", "2", "3", "4"])
    assert r1.engine.restart_count == 1
