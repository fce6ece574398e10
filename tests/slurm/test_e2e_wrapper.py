"""slurm-examples/wrapper.sh: `exec sidecar --from-script "$0" -- COMMAND`, the README's
recommended form. The job's exit status is the command's; the last lines are acted on and
the stop record is written both when the work ends and when the sidecar cancels the job."""

from __future__ import annotations

from pathlib import Path

from tests.slurm.cluster import job_field, submit, wait_state
from tests.slurm.conftest import Cluster
from tests.slurm.test_e2e_support import EVENTS, copy_examples, of_job, wait_records


def test_wrapper_job_ends_with_the_commands_status_and_a_stop_record(
    slurm: Cluster, tmp_path: Path
) -> None:
    copy_examples(tmp_path)
    job = submit(tmp_path / "wrapper.sh", cwd=tmp_path, env={"EXIT_CODE": "3"})
    wait_state(job, "FAILED", timeout=60)
    assert job_field(job, "ExitCode") == "3:0"
    recs = wait_records(tmp_path / EVENTS, lambda rs: bool(of_job(rs, job, "stop")),
                        what="the stop record")
    metrics = [r["value"] for r in of_job(recs, job, "metric")]
    assert metrics == [1, 2, 3]
    (stop,) = of_job(recs, job, "stop")
    assert stop["extra"]["followed_exit_code"] == 3


def test_wrapper_job_cancelled_by_its_sidecar_still_records_its_stop(
    slurm: Cluster, tmp_path: Path
) -> None:
    copy_examples(tmp_path)
    job = submit(tmp_path / "wrapper.sh", cwd=tmp_path, env={"DIVERGE": "1"})
    wait_state(job, "CANCELLED", timeout=60)
    recs = wait_records(tmp_path / EVENTS, lambda rs: bool(of_job(rs, job, "stop")),
                        what="the stop record")
    (match,) = [r for r in of_job(recs, job, "match") if r["watcher"] == "diverged"]
    assert match["captures"] == {"loss": "9.5"}
    cancel = [a for a in of_job(recs, job, "action") if a["action"] == "cancel_job"]
    assert [a["ok"] for a in cancel] == [True]
