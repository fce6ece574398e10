"""slurm-examples/oom-resubmit.sh end to end: the job prints a CUDA out-of-memory error, its
own sidecar (from the script's #WATCHER line, read from SLURM's spooled copy "$0")
resubmits it with --mem=2G and cancels it; the resubmitted job runs with
SIDECAR_RESUBMIT_COUNT=1, succeeds and does not resubmit again."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional

from tests.slurm import cluster
from tests.slurm.cluster import job_field, read_output, submit, wait_gone_or_done
from tests.slurm.conftest import Cluster
from tests.slurm.test_e2e_support import (
    EVENTS,
    cancel_jobs_in,
    copy_examples,
    jobs_in,
    of_job,
    records,
    report,
    stamp,
    ts_epoch,
    wait_records,
)


def _squeue_commands() -> Dict[str, str]:
    """job id -> command (script path) of every job squeue lists."""
    cp = cluster.run(["squeue", "-h", "-o", "%i|%o"], check=False)
    out = {}
    for line in cp.stdout.splitlines():
        job, _, command = line.partition("|")
        out[job.strip()] = command.strip()
    return out


def test_oom_line_resubmits_with_more_memory_and_cancels_the_job(
        slurm: Cluster, tmp_path: Path) -> None:
    """oom-resubmit.sh: within seconds of the OOM line a new job (the rewritten script,
    --mem=2G, same name and directory) is queued and the old one is CANCELLED; the new
    job completes with SIDECAR_RESUBMIT_COUNT=1 and resubmits nothing; the shared event
    log has match + action(resubmit ok, the new id) + stop for the old job and a quiet
    start + stop for the new one."""
    copy_examples(tmp_path)
    original = (tmp_path / "oom-resubmit.sh").read_text()
    try:
        job = submit(tmp_path / "oom-resubmit.sh", cwd=tmp_path)
        new_script = tmp_path / ".sidecar" / f"resubmit-{job}-1.sh"

        # Watch SLURM as closely as we can: when does the new job appear in squeue,
        # when is the old one CANCELLED?
        new_job: Optional[str] = None
        t_new_seen: Optional[float] = None
        t_cancelled: Optional[float] = None
        deadline = time.monotonic() + 90
        while (t_new_seen is None or t_cancelled is None) and time.monotonic() < deadline:
            if t_new_seen is None:
                for jid, command in _squeue_commands().items():
                    if command == str(new_script):
                        new_job, t_new_seen = jid, time.time()
            if t_cancelled is None:
                state = cluster.job_state(job)
                if state == "CANCELLED":
                    t_cancelled = time.time()
                elif state in cluster.TERMINAL_STATES:
                    break
            time.sleep(0.02)
        assert cluster.job_state(job) == "CANCELLED", cluster._describe(job)
        assert new_job is not None and t_new_seen is not None and t_cancelled is not None, (
            f"new job seen: {new_job}; old job: {cluster._describe(job)}")

        # --- SLURM's view of the resubmission
        assert job_field(job, "MinMemoryNode") == "1G"
        assert job_field(new_job, "MinMemoryNode") == "2G"
        assert job_field(new_job, "JobName") == "oom-resubmit"
        assert job_field(new_job, "Command") == str(new_script)
        assert job_field(new_job, "WorkDir") == str(tmp_path)
        assert wait_gone_or_done(new_job, timeout=60) == "COMPLETED"
        assert job_field(new_job, "ExitCode") == "0:0"

        # the rewritten script: --mem changed in place, everything else byte for byte
        assert new_script.read_text() == original.replace(
            "#SBATCH --mem=1G\n", "#SBATCH --mem=2G\n")

        # the original job ran out of memory; the resubmitted one knew it was a resubmission
        out1 = read_output(tmp_path / f"slurm-{job}.out")
        assert "CUDA out of memory" in out1 and "resubmit_count=unset" in out1
        assert f"JOB {job} ON {slurm.node} CANCELLED" in out1
        out2 = read_output(tmp_path / f"slurm-{new_job}.out")
        assert "resubmit_count=1" in out2 and "mem=2048M" in out2
        assert "training finished" in out2 and "CUDA out of memory" not in out2

        # --- the event log both jobs share
        ev = tmp_path / EVENTS
        recs = wait_records(ev, lambda rs: bool(of_job(rs, new_job, "stop")),
                            what=f"the stop record of job {new_job}")
        (start1,) = of_job(recs, job, "start")
        # the sidecar read the #WATCHER lines from SLURM's copy of the script ("$0")
        assert start1["extra"]["config"].endswith("/slurm_script")
        (match,) = of_job(recs, job, "match", watcher="oom")
        assert "CUDA out of memory" in match["line"]
        assert match["file"] == str(tmp_path / f"slurm-{job}.out")
        (action,) = of_job(recs, job, "action", watcher="oom")
        assert action["action"] == "resubmit" and action["ok"] is True, action
        assert action["exit_code"] == 0 and action["firing"] == match["firing"]
        assert action["output"].strip() == new_job          # sbatch --parsable printed it
        (stop1,) = of_job(recs, job, "stop")
        assert ts_epoch(stop1) >= ts_epoch(action)
        # the resubmitted job: watched, but nothing matched, nothing resubmitted
        assert len(of_job(recs, new_job, "start")) == 1
        assert of_job(recs, new_job, "match") == [] and of_job(recs, new_job, "action") == []
        (stop2,) = of_job(recs, new_job, "stop")
        assert stop2["extra"]["counts"]["firings"] == 0
        # no loop: no second rewritten script, no job of one in the queue
        assert sorted(p.name for p in (tmp_path / ".sidecar").glob("resubmit-*.sh")) == [
            new_script.name]
        assert [j for j, c in _squeue_commands().items()
                if c.startswith(str(tmp_path / ".sidecar" / "resubmit-")) and j != new_job] == []
        assert {r["job_id"] for r in records(ev)} == {job, new_job}

        # --- how fast
        oom_at = stamp(out1, "oom")
        report("oom-resubmit",
               line_to_match=ts_epoch(match) - oom_at,
               line_to_resubmit_done=ts_epoch(action) - oom_at,
               line_to_new_job_in_squeue=t_new_seen - oom_at,
               line_to_old_job_cancelled=t_cancelled - oom_at)
        assert ts_epoch(action) - oom_at < 5.0
        assert t_new_seen - oom_at < 5.0 and t_cancelled - oom_at < 5.0
    finally:
        cancel_jobs_in(tmp_path)


def test_resubmission_stops_at_the_limit(slurm: Cluster, tmp_path: Path) -> None:
    """A job that was already resubmitted 3 times (SIDECAR_RESUBMIT_COUNT=3, the default
    limit) and runs out of memory again is not resubmitted: the resubmit action is
    recorded as failed with the reason, no script is written, nothing is submitted, and
    the job ends by itself (its program fails: FAILED)."""
    copy_examples(tmp_path)
    try:
        job = submit(tmp_path / "oom-resubmit.sh", cwd=tmp_path,
                     env={"SIDECAR_RESUBMIT_COUNT": "3", "FAKE_TRAIN_OOM": "always"})
        assert wait_gone_or_done(job, timeout=60) == "FAILED"
        assert job_field(job, "ExitCode") == "1:0"
        recs = wait_records(tmp_path / EVENTS, lambda rs: bool(of_job(rs, job, "stop")),
                            what=f"the stop record of job {job}")
        (match,) = of_job(recs, job, "match", watcher="oom")
        (action,) = of_job(recs, job, "action", watcher="oom")
        assert action["action"] == "resubmit" and action["ok"] is False
        assert "limit" in action["message"] and "3" in action["message"], action
        assert not (tmp_path / ".sidecar").exists() or not list(
            (tmp_path / ".sidecar").glob("resubmit-*.sh"))
        assert [j for j in jobs_in(tmp_path) if j != job] == []     # nothing submitted
        assert {r["job_id"] for r in recs} == {job}
    finally:
        cancel_jobs_in(tmp_path)
