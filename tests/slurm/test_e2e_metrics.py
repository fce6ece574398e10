"""Jobs that run to the end while their sidecar records what they print:
slurm-examples/metric.sh (store_metric of captured values), array.sh (a job array: one
sidecar per task, each on its own %A_%a output file) and two-task.sh (two srun tasks,
one sidecar telling them apart by srun's --label)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from tests.slurm.cluster import job_field, read_output, submit, wait_gone_or_done
from tests.slurm.conftest import Cluster
from tests.slurm.test_e2e_support import (
    EVENTS,
    cancel_jobs_in,
    copy_examples,
    of_job,
    records,
    wait_records,
)


def _metrics(recs: List[Dict[str, Any]], job: str, name: str) -> List[Any]:
    return [r["value"] for r in of_job(recs, job, "metric", metric=name)]


def test_store_metric_records_the_captured_numbers(slurm: Cluster, tmp_path: Path) -> None:
    """metric.sh: every "step S loss=X acc=Y%" line gives two metric records whose values
    are JSON numbers (a float for the loss, an int for the accuracy), each tied to its
    match by the firing number; the job completes and its sidecar stops by itself."""
    copy_examples(tmp_path)
    try:
        job = submit(tmp_path / "metric.sh", cwd=tmp_path)
        assert wait_gone_or_done(job, timeout=60) == "COMPLETED"
        assert job_field(job, "ExitCode") == "0:0"
        recs = wait_records(tmp_path / EVENTS, lambda rs: bool(of_job(rs, job, "stop")),
                            what=f"the stop record of job {job}")

        loss = _metrics(recs, job, "loss")
        acc = _metrics(recs, job, "accuracy")
        assert loss == [1.0, 0.6667, 0.5, 0.4]
        assert all(type(v) is float for v in loss)
        assert acc == [60, 70, 80, 90]
        assert all(type(v) is int for v in acc)

        matches = of_job(recs, job, "match", watcher="progress")
        assert [m["captures"]["step"] for m in matches] == ["1", "2", "3", "4"]
        for m in matches:
            tied = [r for r in of_job(recs, job, "metric") if r["firing"] == m["firing"]]
            assert [(r["metric"], str(r["value"])) for r in tied] == [
                ("loss", str(float(m["captures"]["loss"]))),
                ("accuracy", m["captures"]["acc"])]
        acts = of_job(recs, job, "action")
        assert len(acts) == 8 and all(a["ok"] is True for a in acts)
        assert all(a["action"] == "store_metric" for a in acts)
        (stop,) = of_job(recs, job, "stop")
        assert stop["reason"].startswith("followed process")
        assert stop["extra"]["counts"]["firings"] == 4
    finally:
        cancel_jobs_in(tmp_path)


def test_array_tasks_each_watch_their_own_output(slurm: Cluster, tmp_path: Path) -> None:
    """array.sh (--array=0-2, --output=%x-%A_%a.out): each task's sidecar watches exactly
    its own file (array-demo-<A>_<a>.out, as SLURM names it), and its records carry the
    task's own job id; the three sidecars share one event log."""
    copy_examples(tmp_path)
    try:
        array = submit(tmp_path / "array.sh", cwd=tmp_path)
        tasks = {a: f"{array}_{a}" for a in range(3)}
        for t in tasks.values():
            assert wait_gone_or_done(t, timeout=90) == "COMPLETED"
        job_ids = {a: job_field(t, "JobId") for a, t in tasks.items()}
        assert len(set(job_ids.values())) == 3 and all(job_ids.values())

        ev = tmp_path / EVENTS
        wait_records(ev, lambda rs: all(of_job(rs, str(j), "stop") for j in job_ids.values()),
                     what="a stop record of every task")
        recs = records(ev)
        for a, jid in job_ids.items():
            assert jid is not None
            out = tmp_path / f"array-demo-{array}_{a}.out"
            assert job_field(tasks[a], "StdOut") == str(out)       # SLURM's name for it
            assert "training finished" in read_output(out)
            assert len(of_job(recs, jid, "start")) == 1
            assert len(of_job(recs, jid, "stop")) == 1
            files = {r["file"] for r in of_job(recs, jid) if "file" in r}
            assert files == {str(out)}, files
            assert _metrics(recs, jid, f"loss_task{a}") == [1.0, 0.6667, 0.5]
            assert [r["message"] for r in of_job(recs, jid, "log")] == [
                f"task {a} of array {array} finished (job {jid})"]
        # nothing else in the log: every record belongs to one of the three tasks
        assert {r["job_id"] for r in recs} == set(job_ids.values())
    finally:
        cancel_jobs_in(tmp_path)


def test_two_srun_tasks_get_their_own_records(slurm: Cluster, tmp_path: Path) -> None:
    """two-task.sh (--ntasks=2, srun --label): one sidecar in the batch script sees both
    tasks' lines in the job's output and keeps them apart: per-task metrics and a
    "done" log record for each task."""
    copy_examples(tmp_path)
    try:
        job = submit(tmp_path / "two-task.sh", cwd=tmp_path)
        assert wait_gone_or_done(job, timeout=90) == "COMPLETED"
        assert job_field(job, "NumTasks") == "2"
        out = read_output(tmp_path / f"slurm-{job}.out")
        assert "0: rank 0 done" in out and "1: rank 1 done" in out

        recs = wait_records(tmp_path / EVENTS, lambda rs: bool(of_job(rs, job, "stop")),
                            what=f"the stop record of job {job}")
        assert len(of_job(recs, job, "start")) == 1             # one sidecar for the job
        assert _metrics(recs, job, "loss_task0") == [1.0, 0.5, 0.3333]
        assert _metrics(recs, job, "loss_task1") == [2.0, 1.0, 0.6667]
        for m in of_job(recs, job, "match", watcher="progress"):
            assert m["line"].startswith(f"{m['captures']['task']}: rank {m['captures']['task']} ")
        done = sorted(r["message"] for r in of_job(recs, job, "log", watcher="task_done"))
        assert done == [f"task 0 of job {job} done", f"task 1 of job {job} done"]
        assert all(a["ok"] is True for a in of_job(recs, job, "action"))
    finally:
        cancel_jobs_in(tmp_path)
