"""Jobs that their sidecar cancels: slurm-examples/loss-diverge.sh (a #WATCHER block with
captures and a condition) and slurm-examples/hang.sh (a stale-file watcher from a TOML
config). Checked from SLURM (the job ends CANCELLED, early) and from the event log."""

from __future__ import annotations

import time
from pathlib import Path

from tests.slurm.cluster import job_field, read_output, submit, wait_state
from tests.slurm.conftest import Cluster
from tests.slurm.test_e2e_support import (
    EVENTS,
    cancel_jobs_in,
    copy_examples,
    of_job,
    report,
    stamp,
    stamps,
    ts_epoch,
    wait_records,
)


def test_loss_above_5_cancels_the_job(slurm: Cluster, tmp_path: Path) -> None:
    """loss-diverge.sh: only the line whose loss is above 5 fires (the three before it
    match the regex but not the condition); the watcher logs a warning with the captures,
    cancels the job (CANCELLED long before the program's 300 s), and the event log holds
    match, action(log_event), log, action(cancel_job ok) and stop, tied by one firing."""
    copy_examples(tmp_path)
    try:
        job = submit(tmp_path / "loss-diverge.sh", cwd=tmp_path)
        wait_state(job, "CANCELLED", timeout=60, interval=0.05)
        t_cancelled = time.time()
        out = read_output(tmp_path / f"slurm-{job}.out")
        assert "epoch 4 step 400 loss: 6.84" in out
        assert "training finished" not in out
        assert f"JOB {job} ON {slurm.node} CANCELLED" in out

        recs = wait_records(tmp_path / EVENTS, lambda rs: bool(of_job(rs, job, "stop")),
                            what=f"the stop record of job {job}")
        (match,) = of_job(recs, job, "match")
        assert match["watcher"] == "loss_diverged" and match["trigger"] == "regex"
        assert match["line"] == "epoch 4 step 400 loss: 6.84" and match["lineno"] == 8
        assert match["captures"] == {"epoch": "4", "step": "400", "loss": "6.84"}
        assert match["file"] == str(tmp_path / f"slurm-{job}.out")
        firing = match["firing"]

        actions = of_job(recs, job, "action")
        assert [(a["action"], a["ok"]) for a in actions] == [("log_event", True),
                                                            ("cancel_job", True)]
        assert all(a["firing"] == firing for a in actions)
        cancel = actions[1]
        assert cancel["exit_code"] == 0
        (log,) = of_job(recs, job, "log")
        assert log["level"] == "WARNING" and log["firing"] == firing
        assert log["message"] == f"loss 6.84 at epoch 4 (step 400): cancelling job {job}"
        (stop,) = of_job(recs, job, "stop")
        # scancel also sends SIGTERM to the sidecar (it is one of the job's processes);
        # which of the two the sidecar notices first is a race
        assert stop["reason"] in ("cancel_job: loss 6.84 > 5 at epoch 4", "signal SIGTERM")
        assert stop["extra"]["counts"]["firings"] == 1
        # in the order they happened
        seq = [r["kind"] for r in of_job(recs, job)
               if r["kind"] in ("start", "match", "action", "stop")]
        assert seq == ["start", "match", "action", "action", "stop"]

        loss_at = stamps(out, "loss")[3]        # the stamp before the 4th loss line
        report("loss-diverge",
               line_to_match=ts_epoch(match) - loss_at,
               line_to_cancel_done=ts_epoch(cancel) - loss_at,
               line_to_cancelled_seen=t_cancelled - loss_at)
        assert ts_epoch(cancel) - loss_at < 5.0
    finally:
        cancel_jobs_in(tmp_path)


def test_silent_log_is_reported_as_stale_and_the_job_cancelled(
        slurm: Cluster, tmp_path: Path) -> None:
    """hang.sh + hang.toml: 3 s after the program's last write to train.log the stale
    watcher fires once: a WARNING log record naming the file, a command that leaves a
    file behind, then cancel_job; the job ends CANCELLED (not after the program's 600 s)."""
    copy_examples(tmp_path)
    try:
        job = submit(tmp_path / "hang.sh", cwd=tmp_path)
        wait_state(job, "CANCELLED", timeout=60, interval=0.05)
        run = tmp_path / f"run-{job}"
        log_text = read_output(run / "train.log")
        last_write = stamp(log_text, "last_write")
        assert "woke up" not in log_text
        assert job_field(job, "JobName") == "hang"

        recs = wait_records(tmp_path / EVENTS, lambda rs: bool(of_job(rs, job, "stop")),
                            what=f"the stop record of job {job}")
        (start,) = of_job(recs, job, "start")
        assert start["extra"]["config"].endswith("hang.toml")
        assert start["extra"]["cwd"] == str(run)
        (match,) = of_job(recs, job, "match")
        assert match["watcher"] == "hung" and match["trigger"] == "stale"
        assert match["file"] == str(run / "train.log")
        assert match["extra"]["timeout"] == 3
        actions = of_job(recs, job, "action")
        assert [(a["action"], a["ok"]) for a in actions] == [
            ("log_event", True), ("run_command", True), ("cancel_job", True)]
        assert all(a["firing"] == match["firing"] for a in actions)
        assert actions[1]["exit_code"] == 0
        (log,) = of_job(recs, job, "log")
        assert log["level"] == "WARNING"
        assert log["message"] == f"{run / 'train.log'} silent for 3 s: job {job} looks hung"
        (stop,) = of_job(recs, job, "stop")
        assert stop["reason"] in ("cancel_job: no output for 3 s", "signal SIGTERM")

        # the command really ran, after the deadline
        detected = float((run / "hang-detected").read_text().strip())
        assert detected >= ts_epoch(match)

        silent = ts_epoch(match) - last_write
        report("hang", last_write_to_stale_match=silent,
               last_write_to_command_done=ts_epoch(actions[1]) - last_write)
        # never early (the file's mtime may be a few ms coarser than our stamp), and
        # within a second of the 3 s
        assert 3.0 - 0.05 <= silent < 4.0, silent
    finally:
        cancel_jobs_in(tmp_path)
