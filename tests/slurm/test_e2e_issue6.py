"""Issue 6 on the real cluster: the triggers that understand the job, each through its
example batch script in slurm-examples/ (hang-cpu.sh, job-end.sh, time-limit.sh,
memory.sh, threshold.sh, traceback.sh, probe.sh, requeue.sh).

Every job is submitted at once when the first test of this module runs (the node has two
CPUs: two jobs run at a time, the rest wait in the queue), into one shared directory with
one event log; each test then waits (bounded) for its own job and checks it from SLURM
(``scontrol``: state, exit code, restarts, times -- there is no ``sacct`` here, accounting
storage is disabled) and from the event log. A test that fails kills its job, so a stuck
job does not hold a CPU for the tests after it. Measured reaction times are printed with
``pytest -s`` (``[e2e timing]`` lines).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import pytest

from tests.slurm import cluster
from tests.slurm.cluster import job_field, read_output, wait_state
from tests.slurm.conftest import Cluster
from tests.slurm.test_e2e_support import (
    EVENTS,
    cancel_jobs_in,
    copy_examples,
    of_job,
    report,
    stamp,
    ts_epoch,
    wait_records,
)

# (key, script, script arguments, extra sbatch arguments), in the order the tests use them:
# the scheduler starts them in this order, the longest first
SUBMISSIONS: Sequence[Tuple[str, str, Tuple[str, ...], Tuple[str, ...]]] = (
    # the signal path: a 2-minute job whose USR1 SLURM sends ~85 s before its end (its
    # clock time, 50 s before the end, comes long after)
    ("tl_signal", "time-limit.sh", (), ("--time=2", "--signal=B:USR1@85")),
    # the clock path: no USR1 at all (URG, which nobody listens to, replaces it)
    ("tl_clock", "time-limit.sh", (), ("--signal=B:URG@1",)),
    ("hang", "hang-cpu.sh", (), ()),
    ("busy", "hang-cpu.sh", ("busy",), ()),
    ("busy_srun", "hang-cpu.sh", ("busy", "srun"), ()),
    ("exit3", "job-end.sh", (), ()),
    ("exit0", "job-end.sh", ("0",), ()),
    ("memory", "memory.sh", (), ()),
    ("threshold", "threshold.sh", (), ()),
    ("traceback", "traceback.sh", (), ()),
    ("probe", "probe.sh", (), ()),
    ("requeue_append", "requeue.sh", (), ()),
    ("requeue_truncate", "requeue.sh", (), ("--open-mode=truncate",)),
)

# how long a test waits for its job: the queue may be longer when other jobs share the node
JOB_TIMEOUT = 150.0


@dataclass
class Jobs:
    dir: Path
    ids: Dict[str, str]


@pytest.fixture(scope="module")
def jobs(slurm: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jobs]:
    """Every example of this module submitted at once, from one directory."""
    d = tmp_path_factory.mktemp("issue6")
    copy_examples(d)
    ids: Dict[str, str] = {}
    try:
        for key, script, args, sbatch_args in SUBMISSIONS:
            ids[key] = cluster.submit(d / script, *args, cwd=d, sbatch_args=sbatch_args)
        yield Jobs(d, ids)
    finally:
        for job in ids.values():
            _kill(job)
        cancel_jobs_in(d)


def _kill(job: str) -> None:
    state = cluster.job_state(job)
    if state not in cluster.TERMINAL_STATES and state != cluster.GONE:
        cluster.run(["scancel", "--signal=KILL", "--full", job], check=False)
        cluster.run(["scancel", job], check=False)


@pytest.fixture
def kill_on_failure() -> Iterator[List[str]]:
    """Jobs appended here are killed when the test ends, if still alive."""
    mine: List[str] = []
    yield mine
    for job in mine:
        _kill(job)


def _job(jobs: Jobs, key: str, mine: List[str]) -> str:
    job = jobs.ids[key]
    mine.append(job)
    return job


def _stop_records(jobs: Jobs, job: str, n: int = 1) -> List[Dict[str, Any]]:
    """The event log once the job's sidecar(s) wrote ``n`` stop records."""
    return wait_records(jobs.dir / EVENTS, lambda rs: len(of_job(rs, job, "stop")) >= n,
                        timeout=30, what=f"{n} stop record(s) of job {job}")


def _scontrol_time(value: str) -> float:
    """A scontrol time (local time, 2026-11-21T22:54:19) as a Unix time."""
    return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S"))


def _iso(value: str) -> float:
    assert value.endswith("Z"), value
    return dt.datetime.fromisoformat(value[:-1]).replace(tzinfo=dt.timezone.utc).timestamp()


# ------------------------------------------------------------------------ 2. time limit
def _time_limit_job(jobs: Jobs, key: str, mine: List[str],
                    limit: int) -> Tuple[str, str, List[Dict[str, Any]], Dict[str, Any], float]:
    """The checks both time-limit jobs share; (job, output, records, match, end time)."""
    job = _job(jobs, key, mine)
    wait_state(job, "COMPLETED", timeout=JOB_TIMEOUT)
    fields = cluster.show_job(job) or {}
    assert fields.get("TimeLimit") == f"00:0{limit}:00"
    start = _scontrol_time(fields["StartTime"])
    out = read_output(jobs.dir / f"slurm-{job}.out")
    assert "checkpoint saved" in out, out

    recs = _stop_records(jobs, job)
    (info,) = [r for r in of_job(recs, job, "info") if r.get("trigger") == "time_limit"]
    end = _iso(info["extra"]["end_time"])
    # the end time the sidecar found is SLURM's: the start + the time limit
    assert abs(end - (start + 60 * limit)) <= 1.0, (info, fields["StartTime"])
    (match,) = of_job(recs, job, "match", watcher="checkpoint")
    assert match["trigger"] == "time_limit"
    assert match["captures"]["end_time"] == info["extra"]["end_time"]
    left = match["extra"]["time_left_s"]
    assert match["captures"]["time_left"] == str(left)
    (log,) = of_job(recs, job, "log", watcher="checkpoint")
    assert log["message"] == f"{left} s left: asking job {job} for a checkpoint"
    acts = of_job(recs, job, "action", watcher="checkpoint")
    assert [(a["action"], a["ok"]) for a in acts] == [("log_event", True), ("run_command", True)]
    # the work saw the file the command made, after the command ran
    assert stamp(out, "checkpoint") >= ts_epoch(acts[1]) - 0.05
    assert not of_job(recs, job, "error")
    (stop,) = of_job(recs, job, "stop")
    assert stop["extra"]["watchers"]["checkpoint"]["triggers"] == 1
    return job, out, recs, match, end


def test_time_limit_fires_by_the_clock(jobs: Jobs, kill_on_failure: List[str]) -> None:
    """time-limit.sh (--time=1, before=50) with no USR1 sent: the sidecar takes the end
    time from SLURM and fires 50 s before it (~10 s after the start), with TIME_LEFT ~50
    and END_TIME; the work checkpoints and the job ends COMPLETED, not TIMEOUT."""
    job, out, recs, match, end = _time_limit_job(jobs, "tl_clock", kill_on_failure, 1)
    assert "signal" not in match["captures"] and "signal" not in match["extra"]
    assert 47 <= match["extra"]["time_left_s"] <= 50, match
    t = ts_epoch(match)
    assert end - 50 - 0.5 <= t <= end - 50 + 3.0, (t, end)
    report("time-limit (clock)", late=t - (end - 50),
           work_start_to_match=t - stamp(out, "start"),
           match_to_checkpoint=stamp(out, "checkpoint") - t)


def test_time_limit_fires_on_slurms_signal(jobs: Jobs, kill_on_failure: List[str]) -> None:
    """time-limit.sh submitted with --time=2 --signal=B:USR1@85: SLURM sends USR1 to the
    batch shell ~85 s before the end, the shell's trap passes it on, and the watcher fires
    on it (SIGNAL=SIGUSR1), long before its own clock time (50 s before the end); the work
    checkpoints and the job ends COMPLETED."""
    job, out, recs, match, end = _time_limit_job(jobs, "tl_signal", kill_on_failure, 2)
    assert match["extra"]["signal"] == "SIGUSR1" and match["captures"]["signal"] == "SIGUSR1"
    left = match["extra"]["time_left_s"]
    # SLURM sends its warning "up to 60 s early" (its manual); anything before the clock
    # time (50 s left) came from the signal
    assert 55 <= left <= 120, match
    report("time-limit (signal)", asked_s_before_end=85, signal_s_before_end=end - ts_epoch(match),
           work_start_to_match=ts_epoch(match) - stamp(out, "start"))


# ------------------------------------------------------------------------ 1. hang
def test_idle_silent_job_is_a_hang_and_is_cancelled(
        jobs: Jobs, kill_on_failure: List[str]) -> None:
    """hang-cpu.sh: the work stops writing and sleeps; 3 s after its last line the stale
    watcher (require_alive, max_cpu 20) finds its process alive at ~0 % CPU: it fires once,
    logs the CPU use and cancels the job (CANCELLED long before the work's 600 s)."""
    job = _job(jobs, "hang", kill_on_failure)
    wait_state(job, "CANCELLED", timeout=JOB_TIMEOUT)
    out = read_output(jobs.dir / f"slurm-{job}.out")
    last_write = stamp(out, "last_write")
    assert "woke up" not in out

    recs = _stop_records(jobs, job)
    (match,) = of_job(recs, job, "match", watcher="hung")
    assert match["trigger"] == "stale"
    assert match["file"] == str(jobs.dir / f"slurm-{job}.out")
    extra = match["extra"]
    assert extra["timeout"] == 3 and extra["processes"] >= 1
    assert 0 <= extra["cpu_percent"] <= 20
    assert not of_job(recs, job, "skipped", watcher="hung")
    (log,) = of_job(recs, job, "log", watcher="hung")
    assert log["level"] == "WARNING"
    assert re.fullmatch(rf"no output for 3 s and the job used \d+\.\d% CPU: job {job} looks hung",
                        log["message"]), log["message"]
    acts = of_job(recs, job, "action", watcher="hung")
    assert [(a["action"], a["ok"]) for a in acts] == [("log_event", True), ("cancel_job", True)]
    silent = ts_epoch(match) - last_write
    report("hang-cpu idle", last_write_to_match=silent,
           last_write_to_cancel_done=ts_epoch(acts[1]) - last_write)
    assert 3.0 - 0.05 <= silent < 4.5, silent


def test_busy_silent_job_is_not_a_hang(jobs: Jobs, kill_on_failure: List[str]) -> None:
    """hang-cpu.sh busy: the work stops writing but computes for 8 s: every 3 s of silence
    gives a `skipped` record (reason busy, with its CPU use above max_cpu) instead of a
    firing; the work then finishes and the job is COMPLETED with exit code 0."""
    job = _job(jobs, "busy", kill_on_failure)
    wait_state(job, "COMPLETED", timeout=JOB_TIMEOUT)
    assert job_field(job, "ExitCode") == "0:0"
    out = read_output(jobs.dir / f"slurm-{job}.out")
    last_write = stamp(out, "last_write")
    assert "woke up" in out

    recs = _stop_records(jobs, job)
    assert not of_job(recs, job, "match"), "a busy job was taken for a hung one"
    assert not of_job(recs, job, "action")
    skipped = of_job(recs, job, "skipped", watcher="hung", reason="busy")
    assert 1 <= len(skipped) <= 3, skipped
    for s in skipped:
        assert s["trigger"] == "stale" and s["extra"]["cpu_percent"] > 20, s
        assert "not a hang" in s["message"]
    (stop,) = of_job(recs, job, "stop")
    assert stop["extra"]["watchers"]["hung"]["triggers"] == 0
    first = ts_epoch(skipped[0]) - last_write
    report("hang-cpu busy", last_write_to_first_skipped=first,
           cpu_percent=[s["extra"]["cpu_percent"] for s in skipped][0])
    assert 3.0 - 0.05 <= first < 4.5, first


def test_busy_srun_step_is_not_a_hang(jobs: Jobs, kill_on_failure: List[str]) -> None:
    """hang-cpu.sh busy srun: the work runs as an `srun` step, so its task is a child of
    slurmstepd, not of the batch script (the sidecar follows the idle `srun` client). Its
    CPU still counts (found by SLURM_JOB_ID among the user's processes): `skipped` records
    with reason busy, no firing, the job COMPLETED."""
    job = _job(jobs, "busy_srun", kill_on_failure)
    wait_state(job, "COMPLETED", timeout=JOB_TIMEOUT)
    recs = _stop_records(jobs, job)
    assert not of_job(recs, job, "match"), "a busy srun step was taken for a hang"
    skipped = of_job(recs, job, "skipped", watcher="hung", reason="busy")
    assert skipped and all(s["extra"]["cpu_percent"] > 20 for s in skipped), skipped
    report("hang-cpu busy srun", cpu_percent=skipped[0]["extra"]["cpu_percent"])


# ------------------------------------------------------------------------ 2. job end
def test_job_end_fires_with_the_exit_status_of_the_wrapped_work(
        jobs: Jobs, kill_on_failure: List[str]) -> None:
    """job-end.sh (`exec sidecar ... -- python3 fake_train.py exit --code 3`): the job_end
    watcher's condition int(exit_code) != 0 holds, its log record and its command get
    EXIT_CODE=3, and the job ends FAILED with ExitCode 3:0 (the work's status)."""
    job = _job(jobs, "exit3", kill_on_failure)
    wait_state(job, "FAILED", timeout=JOB_TIMEOUT)
    assert job_field(job, "ExitCode") == "3:0"
    out = read_output(jobs.dir / f"slurm-{job}.out")
    exited = stamp(out, "exit")

    recs = _stop_records(jobs, job)
    (match,) = of_job(recs, job, "match", watcher="failed")
    assert match["trigger"] == "job_end"
    assert match["captures"] == {"exit_code": "3"} and match["extra"]["exit_code"] == 3
    (log,) = of_job(recs, job, "log", watcher="failed")
    assert log["level"] == "ERROR"
    assert log["message"] == f"job {job}: the work exited with status 3"
    acts = of_job(recs, job, "action", watcher="failed")
    assert [(a["action"], a["ok"]) for a in acts] == [("log_event", True), ("run_command", True)]
    assert (jobs.dir / f"job-end-{job}.status").read_text().strip() == "3"
    (stop,) = of_job(recs, job, "stop")
    assert stop["extra"]["followed_exit_code"] == 3
    report("job-end", exit_to_match=ts_epoch(match) - exited,
           exit_to_command_done=ts_epoch(acts[1]) - exited)
    assert ts_epoch(match) - exited < 3.0


def test_job_end_condition_false_for_a_clean_exit(
        jobs: Jobs, kill_on_failure: List[str]) -> None:
    """job-end.sh 0: the work exits 0, the condition is false: no firing, no command; the
    job is COMPLETED and the stop record still knows the exit status."""
    job = _job(jobs, "exit0", kill_on_failure)
    wait_state(job, "COMPLETED", timeout=JOB_TIMEOUT)
    assert job_field(job, "ExitCode") == "0:0"
    recs = _stop_records(jobs, job)
    assert not of_job(recs, job, "match") and not of_job(recs, job, "action")
    assert not of_job(recs, job, "skipped")
    (stop,) = of_job(recs, job, "stop")
    assert stop["extra"]["followed_exit_code"] == 0
    assert not (jobs.dir / f"job-end-{job}.status").exists()


# ------------------------------------------------------------------------ 2. memory
def test_memory_watcher_fires_at_half_the_jobs_limit(
        jobs: Jobs, kill_on_failure: List[str]) -> None:
    """memory.sh (--mem=300M) + memory.toml (fraction 0.5, sampled every second, no limit
    given): the limit is the job's own, SLURM_MEM_PER_NODE=300 (MB) = 314572800 bytes; the
    watcher fires once, within a sample period of the work's RSS passing 150 MiB, with
    RSS_BYTES/LIMIT_BYTES/FRACTION in its log record."""
    job = _job(jobs, "memory", kill_on_failure)
    wait_state(job, "COMPLETED", timeout=JOB_TIMEOUT)
    assert job_field(job, "MinMemoryNode") == "300M"
    out = read_output(jobs.dir / f"slurm-{job}.out")
    assert "[memory.sh] SLURM_MEM_PER_NODE=300" in out
    limit = 300 << 20

    recs = _stop_records(jobs, job)
    (match,) = of_job(recs, job, "match", watcher="memory_high")
    assert match["trigger"] == "memory"
    extra = match["extra"]
    assert extra["limit_bytes"] == limit
    assert limit // 2 <= extra["rss_bytes"] <= limit, extra
    assert extra["processes"] >= 1
    cap = match["captures"]
    assert cap["limit_bytes"] == str(limit) and cap["rss_bytes"] == str(extra["rss_bytes"])
    assert abs(float(cap["fraction"]) - extra["rss_bytes"] / limit) < 0.001
    (log,) = of_job(recs, job, "log", watcher="memory_high")
    assert log["message"] == (f"job {job} uses {extra['rss_bytes']} of {limit} bytes "
                              f"({cap['fraction']})")
    assert not of_job(recs, job, "warning")  # the limit was found
    # the first allocation that takes the work past 150 MiB on its own (the interpreter's
    # own memory may have got it there one chunk earlier)
    over = stamp(out, "allocated_160mb")
    reaction = ts_epoch(match) - over
    report("memory", passed_half_to_match=reaction, rss_at_match=extra["rss_bytes"])
    assert reaction < 2.5, reaction


# ------------------------------------------------------------------------ 3. thresholds
def test_threshold_per_rank_with_suppression(jobs: Jobs, kill_on_failure: List[str]) -> None:
    """threshold.sh + threshold.toml (threshold 3/30s, track_by rank, suppress 60 s): rank 0
    prints 9 NCCL warnings, rank 1 prints 6, interleaved. Each rank fires once, at its 3rd
    warning, with COUNT=3 and SUPPRESSED=0; its later candidates (rank 0's 6th and 9th,
    rank 1's 6th) are held back, and since the job ends within the 60 s, the held-back
    counts (2 for rank 0, 1 for rank 1) are reported in `skipped` records (reason
    suppressed) before the stop record."""
    job = _job(jobs, "threshold", kill_on_failure)
    wait_state(job, "COMPLETED", timeout=JOB_TIMEOUT)
    log_path = jobs.dir / f"run-{job}" / "train.log"
    lines = read_output(log_path).splitlines()
    assert sum("NCCL WARN" in x for x in lines) == 15

    recs = _stop_records(jobs, job)
    matches = of_job(recs, job, "match", watcher="nccl_timeouts")
    assert len(matches) == 2, matches
    by_rank = {m["captures"]["rank"]: m for m in matches}
    assert set(by_rank) == {"0", "1"}
    for rank, m in by_rank.items():
        # the rank's 3rd warning (ranks alternate: rank 0's 3rd is line 5, rank 1's line 6)
        assert m["lineno"] == {"0": 5, "1": 6}[rank]
        assert m["line"] == lines[m["lineno"] - 1]
        assert m["line"].startswith(f"rank {rank}: NCCL WARN Timeout")
        assert m["extra"]["throttle"] == {"key": rank, "count": 3, "suppressed": 0}
        assert m["file"] == str(log_path)
    logs = sorted(r["message"] for r in of_job(recs, job, "log", watcher="nccl_timeouts"))
    assert logs == [f"rank {r}: 3 NCCL timeouts within 30 s (0 held back before)"
                    for r in ("0", "1")]
    held = {s["extra"]["key"]: s["extra"]["count"]
            for s in of_job(recs, job, "skipped", watcher="nccl_timeouts", reason="suppressed")}
    assert held == {"0": 2, "1": 1}
    kinds = [r["kind"] for r in of_job(recs, job)]
    assert kinds[-1] == "stop"
    assert max(i for i, k in enumerate(kinds) if k == "skipped") < kinds.index("stop")
    (stop,) = of_job(recs, job, "stop")
    assert stop["extra"]["counts"]["matches"] == 15
    assert stop["extra"]["watchers"]["nccl_timeouts"]["triggers"] == 2


# ------------------------------------------------------------------------ 4. multi-line
def _tracebacks(text: str) -> List[List[str]]:
    """Each traceback in a job's output: its header to its first unindented line."""
    out: List[List[str]] = []
    cur: List[str] = []
    for line in text.splitlines():
        if line.startswith("Traceback (most recent call last):"):
            cur = [line]
        elif cur:
            cur.append(line)
            if line[:1].strip():
                out.append(cur)
                cur = []
    return out


def test_traceback_is_handed_over_whole(jobs: Jobs, kill_on_failure: List[str]) -> None:
    """traceback.sh (multiline=python_traceback): the work dies of a chained exception.
    Python prints two tracebacks (the KeyError, then the RuntimeError raised from it): two
    records, each holding every line of its traceback, from the header to the exception
    line, in the match record, the log record ($MATCH) and the command's file ($RECORD);
    the job ends FAILED with exit code 1."""
    job = _job(jobs, "traceback", kill_on_failure)
    wait_state(job, "FAILED", timeout=JOB_TIMEOUT)
    assert job_field(job, "ExitCode") == "1:0"
    out = read_output(jobs.dir / f"slurm-{job}.out")
    crashed = stamp(out, "crash")
    tbs = _tracebacks(out)
    assert len(tbs) == 2, out
    assert tbs[0][-1] == "KeyError: 'lr'"
    assert tbs[1][-1] == "RuntimeError: bad config: no learning rate"

    headers = [n for n, x in enumerate(out.splitlines(), 1) if x == tbs[0][0]]

    recs = _stop_records(jobs, job)
    matches = of_job(recs, job, "match", watcher="crashed")
    assert [m["line"] for m in matches] == ["\n".join(tb) for tb in tbs]
    for m, tb, lineno in zip(matches, tbs, headers):
        assert m["extra"]["record"]["lines"] == len(tb)
        assert m["extra"]["record"]["reason"] == "end"
        assert m["lineno"] == lineno
    logs = of_job(recs, job, "log", watcher="crashed")
    assert [x["message"] for x in logs] == ["\n".join(tb) for tb in tbs]
    assert all(x["level"] == "ERROR" for x in logs)
    acts = of_job(recs, job, "action", watcher="crashed", action="run_command")
    assert [a["ok"] for a in acts] == [True, True]
    saved = (jobs.dir / f"crash-{job}.txt").read_text()
    # the two firings' commands run in parallel (max_concurrent): each record is written
    # whole, in either order
    assert saved.endswith("\n\n")
    assert sorted(saved[:-2].split("\n\n")) == sorted("\n".join(tb) for tb in tbs)
    report("traceback", crash_to_first_record=ts_epoch(matches[0]) - crashed,
           crash_to_last_record=ts_epoch(matches[-1]) - crashed)
    assert ts_epoch(matches[-1]) - crashed < 5.0


# ------------------------------------------------------------------------ 5. probes
def test_probe_reports_an_idle_gpu_and_the_disk_use(
        jobs: Jobs, kill_on_failure: List[str]) -> None:
    """probe.sh: the fake nvidia-smi reports 87 %, 87 %, then 0 %; gpu_idle (condition
    int(util) == 0, threshold 3/5s) fires at the 3rd reading of 0, ~2 s after the first,
    with PROBE set to the command, and cancels the job. The df probe stores the disk use
    as a number, the one df shows."""
    job = _job(jobs, "probe", kill_on_failure)
    wait_state(job, "CANCELLED", timeout=JOB_TIMEOUT)
    bindir = jobs.dir / f"run-{job}" / "bin"
    idle_since = float((bindir / "idle-since").read_text())
    assert int((bindir / "calls").read_text()) >= 5

    recs = _stop_records(jobs, job)
    cmd = "nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits"
    (match,) = of_job(recs, job, "match", watcher="gpu_idle")
    assert match["trigger"] == "probe" and match["line"] == "0"
    assert match["captures"] == {"util": "0"}
    assert match["extra"]["probe"] == cmd
    assert match["extra"]["throttle"]["count"] == 3
    assert match.get("file") is None
    (log,) = of_job(recs, job, "log", watcher="gpu_idle")
    assert log["message"] == f"GPU idle: utilization 0 % (3 readings; probe: {cmd})"
    acts = of_job(recs, job, "action", watcher="gpu_idle")
    assert [(a["action"], a["ok"]) for a in acts] == [("log_event", True), ("cancel_job", True)]
    assert not of_job(recs, job, "error")  # every probe ran

    metrics = of_job(recs, job, "metric", watcher="disk", metric="disk_use_pct")
    assert metrics, "the df probe stored nothing"
    df = subprocess.run(["df", "-P", str(jobs.dir)], capture_output=True, text=True,
                        timeout=10).stdout.splitlines()[-1]
    use = int(re.search(r" (\d+)% ", df).group(1))  # type: ignore[union-attr]
    for m in metrics:
        assert isinstance(m["value"], int) and abs(m["value"] - use) <= 1, (m, df)
    reaction = ts_epoch(match) - idle_since
    report("probe", first_idle_reading_to_match=reaction, disk_metrics=len(metrics))
    assert 1.5 <= reaction < 5.0, reaction


# ------------------------------------------------------------------------ 6. requeue
def _requeue(job: str) -> float:
    """``scontrol requeue``, then let the job start again soon; returns when it was
    requeued. A requeued job is held for ~2 minutes (its BeginTime, set once the old run
    has finished completing): StartTime=now only sticks when given after that, so it is
    given while the job is pending for its BeginTime. Not at once, though: slurmd refuses
    to launch a job whose credential is not newer than its revocation at the requeue
    (whole seconds: "Job credential revoked", the job then FAILS), hence 2 s later."""
    t = time.time()
    cluster.run(["scontrol", "requeue", job])
    deadline = time.monotonic() + 60
    while True:
        fields = cluster.show_job(job) or {}
        state, reason = fields.get("JobState"), fields.get("Reason")
        if state == "RUNNING" or (state in cluster.TERMINAL_STATES and
                                  fields.get("Restarts") == "1" and state != "CANCELLED"):
            return t
        if state == "PENDING" and reason == "BeginTime" and time.time() >= t + 2.0:
            cluster.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False)
        if time.monotonic() > deadline:
            pytest.fail(f"job {job} not running again within 60 s of its requeue: {fields}")
        time.sleep(0.2)


def _check_requeued(jobs: Jobs, key: str, mine: List[str], append: bool) -> None:
    job = _job(jobs, key, mine)
    acted = jobs.dir / f"errors-{job}.txt"
    wait_state(job, "RUNNING", timeout=JOB_TIMEOUT)
    deadline = time.monotonic() + 30
    while not (acted.exists() and acted.read_text().split() == ["1"]):
        if time.monotonic() > deadline:
            pytest.fail(f"run 0 of job {job} did not act on ERROR 1")
        time.sleep(0.05)
    requeued_at = _requeue(job)
    wait_state(job, "COMPLETED", timeout=JOB_TIMEOUT)
    assert job_field(job, "Restarts") == "1"
    assert job_field(job, "Requeue") == "1"
    out = read_output(jobs.dir / f"slurm-{job}.out")
    assert "[fake_train] run 1 of job" in out
    # SLURM here truncates the output of a requeued job unless --open-mode=append
    assert ("[fake_train] run 0 of job" in out) is append, out
    assert ("DUE TO JOB REQUEUE" in out) is append

    # ERROR 1 acted on once (run 0), ERROR 2 by run 1, ERROR 3 not: max_triggers=2 counted
    # across the runs
    assert acted.read_text().split() == ["1", "2"]
    recs = _stop_records(jobs, job, 2)
    mine_recs = of_job(recs, job)
    starts = [i for i, r in enumerate(mine_recs) if r["kind"] == "start"]
    assert len(starts) == 2
    run0, run1 = mine_recs[starts[0]:starts[1]], mine_recs[starts[1]:]
    assert run0[0]["extra"]["restart_count"] == 0 and run1[0]["extra"]["restart_count"] == 1
    assert [m["line"] for m in run0 if m["kind"] == "match"] == ["ERROR 1: NaN in gradients"]
    assert [m["line"] for m in run1 if m["kind"] == "match"] == ["ERROR 2: NaN in gradients"]
    (resumed,) = [r for r in run1 if r["kind"] == "warning" and r.get("reason") == "resumed"]
    assert resumed["extra"]["restart_count"] == 1
    assert resumed["extra"]["previous_restart_count"] == 0
    states = [r for r in run1 if r["kind"] == "state" and r.get("watcher") == "errors"]
    assert states and states[0]["state"] == "TRIGGERED"
    assert [r["kind"] for r in run0].count("stop") == 1
    assert [r["kind"] for r in run1].count("stop") == 1
    assert run1[-1]["extra"]["watchers"]["errors"]["triggers"] == 2

    # one state file per run, next to the event log
    state_dir = jobs.dir / ".sidecar"
    (state0,) = state_dir.glob(f"{job}-*.json")
    assert len(list(state_dir.glob(f"{job}.r1-*.json"))) == 1
    if not append:
        # what makes the truncated case hard: run 1 writes more before its ERROR 2 than
        # run 0's sidecar had read, so the new file is past the old offset at once
        offset = json.loads(state0.read_text())["files"][str(jobs.dir / f"slurm-{job}.out")]
        before = out.encode()[:out.encode().index(b"[fake_train] error2_at")]
        assert len(before) > offset["offset"] > 0, (offset, len(before))

    error2 = stamp(out, "error2")
    m2 = [m for m in run1 if m["kind"] == "match"][0]
    report(f"requeue ({'append' if append else 'truncate'})",
           requeue_to_run1_start=ts_epoch(run1[0]) - requeued_at,
           error2_to_match=ts_epoch(m2) - error2)


def test_requeued_job_appending_its_output(jobs: Jobs, kill_on_failure: List[str]) -> None:
    """requeue.sh (--requeue, --open-mode=append), requeued by `scontrol requeue` after run
    0 acted on ERROR 1: run 1 (SLURM_RESTART_COUNT=1) finds the first run's lines in the
    same file and does not act on them again, acts on ERROR 2, and knows that max_triggers=2
    is reached then (ERROR 3 is not acted on); its state file is <job>.r1-..."""
    _check_requeued(jobs, "requeue_append", kill_on_failure, append=True)


def test_requeued_job_with_a_truncated_output(jobs: Jobs, kill_on_failure: List[str]) -> None:
    """requeue.sh submitted with --open-mode=truncate (SLURM's default): the requeued run's
    output starts empty and grows past where run 0's sidecar had read before run 1's
    sidecar starts; run 1 still reads it from its first byte (ERROR 2 is acted on) and
    keeps max_triggers (ERROR 3 is not)."""
    _check_requeued(jobs, "requeue_truncate", kill_on_failure, append=False)


# ------------------------------------------------------------------------ checks
NEW_SCRIPTS = ["hang-cpu.sh", "job-end.sh", "time-limit.sh", "traceback.sh", "probe.sh",
               "requeue.sh"]
NEW_CONFIGS = {"memory.toml": "memory >= 50% of limit", "threshold.toml": "threshold 3/30s"}


def _check(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar.cli", "check", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, env=cluster.job_env())


@pytest.mark.parametrize("script", NEW_SCRIPTS)
def test_new_example_script_passes_sidecar_check(slurm: Cluster, tmp_path: Path,
                                                 script: str) -> None:
    """The #WATCHER lines of each new example are valid: `sidecar check --from-script`
    exits 0 and names every watcher."""
    copy_examples(tmp_path)
    cp = _check(["--from-script", script], tmp_path)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "OK" in cp.stdout
    text = (tmp_path / script).read_text()
    names = re.findall(r"^#WATCHER .*?\bname=(\w+)|^# name: (\w+)", text, re.M)
    assert names
    for pair in names:
        assert "".join(pair) in cp.stdout


@pytest.mark.parametrize("config", sorted(NEW_CONFIGS))
def test_new_example_config_passes_sidecar_check(slurm: Cluster, tmp_path: Path,
                                                 config: str) -> None:
    copy_examples(tmp_path)
    cp = _check([config], tmp_path)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert NEW_CONFIGS[config] in cp.stdout


# ------------------------------------------------------------------------ 7. fs backend
def test_check_shows_the_backend_chosen_for_each_directory(slurm: Cluster,
                                                           tmp_path: Path) -> None:
    """`sidecar check` on a config watching directories on two filesystems (the test's
    directory, and one on the tmpfs /dev/shm) lists each directory with how the automatic
    backend follows it (sidecar.fstype.describe: "inotify (ext4)", "inotify (tmpfs)"; a network
    filesystem would say "polling (nfs: ...)")."""
    from sidecar.fstype import describe

    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm here")
    other = Path(subprocess.run(["mktemp", "-d", "-p", str(shm)], capture_output=True,
                                text=True, check=True).stdout.strip())
    try:
        cfg = tmp_path / "two-fs.toml"
        cfg.write_text(
            "[[regex_actions]]\n"
            f"name = \"here\"\ndirectory = \"{tmp_path}\"\nfilepath_regex = 'x\\.log$'\n"
            "line_regex = \"ERROR\"\ncmd = \"true\"\n\n"
            "[[regex_actions]]\n"
            f"name = \"there\"\ndirectory = \"{other}\"\nfilepath_regex = 'x\\.log$'\n"
            "line_regex = \"ERROR\"\ncmd = \"true\"\n"
        )
        here, there = describe(str(tmp_path)), describe(str(other))
        assert here != there, "the two directories should be on different filesystems"
        cp = _check([str(cfg)], tmp_path)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        # one line per directory, under "directories:"
        listed = cp.stdout.split("\ndirectories:\n", 1)[1].splitlines()
        for d, want in ((tmp_path, here), (other, there)):
            assert f"  {d}: {want}" in listed, (want, cp.stdout)
    finally:
        subprocess.run(["rm", "-rf", "--", str(other)], check=False)
    assert not os.path.exists(other)
