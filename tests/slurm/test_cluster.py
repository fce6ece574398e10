"""The one-node test cluster really runs batch jobs the way the end-to-end tests rely on:
jobs start quickly, see the submitting environment, write their output file, end
COMPLETED/FAILED, and scancel delivers SIGTERM and ends them CANCELLED."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tests.slurm import cluster
from tests.slurm.cluster import (
    GONE,
    cancel,
    job_field,
    job_state,
    read_output,
    submit,
    wait_gone_or_done,
    wait_state,
    write_script,
)
from tests.slurm.conftest import Cluster


def test_trivial_job_completes_and_writes_its_output(slurm: Cluster, tmp_path: Path) -> None:
    script = write_script(tmp_path / "hello.sh", """
#SBATCH --job-name=hello
echo "hello from $SLURM_JOB_ID on $SLURMD_NODENAME args=$*"
echo "marker=$SIDECAR_TEST_MARKER"
echo "path=$PATH"
python3 -c 'import sys; print("py", sys.version_info[0])'
""")
    t0 = time.monotonic()
    job = submit(script, "a1", "a2", cwd=tmp_path, env={"SIDECAR_TEST_MARKER": "xyz"})
    assert wait_state(job, "COMPLETED", timeout=30) == "COMPLETED"
    elapsed = time.monotonic() - t0
    out = read_output(tmp_path / f"slurm-{job}.out")
    assert f"hello from {job} on {slurm.node} args=a1 a2" in out
    assert "marker=xyz" in out                       # sbatch exported our environment
    assert f"path={os.environ['PATH']}" in out      # so pip-installed commands are found
    assert "py 3" in out
    assert job_field(job, "ExitCode") == "0:0"
    assert job_field(job, "JobName") == "hello"
    assert job_field(job, "StdOut") == str(tmp_path / f"slurm-{job}.out")
    assert elapsed < 20, f"a trivial job took {elapsed:.1f}s"


def test_jobs_import_the_tree_under_test(slurm: Cluster, tmp_path: Path) -> None:
    """A job's python finds the ``sidecar`` package of this repository."""
    script = write_script(tmp_path / "imp.sh", f"""
{sys.executable} -c 'import sidecar, os; print("sidecar at", os.path.dirname(sidecar.__file__))'
""")
    job = submit(script, cwd=tmp_path)
    wait_state(job, "COMPLETED", timeout=30)
    out = read_output(tmp_path / f"slurm-{job}.out")
    assert f"sidecar at {cluster.REPO / 'sidecar'}" in out


def test_failing_job_ends_failed_with_its_exit_code(slurm: Cluster, tmp_path: Path) -> None:
    script = write_script(tmp_path / "fail.sh", "echo before; exit 3\n")
    job = submit(script, cwd=tmp_path)
    assert wait_gone_or_done(job, timeout=30) == "FAILED"
    assert job_field(job, "ExitCode") == "3:0"
    assert read_output(tmp_path / f"slurm-{job}.out") == "before\n"


def test_job_fields_reflect_sbatch_options(slurm: Cluster, tmp_path: Path) -> None:
    script = write_script(tmp_path / "mem.sh", "#SBATCH --mem=123M\n#SBATCH --time=5\ntrue\n")
    job = submit(script, cwd=tmp_path, sbatch_args=["--output", str(tmp_path / "o-%j.txt")])
    wait_state(job, "COMPLETED", timeout=30)
    assert job_field(job, "MinMemoryNode") == "123M"
    assert job_field(job, "TimeLimit") == "00:05:00"
    assert job_field(job, "Restarts") == "0"
    assert job_field(job, "SubmitTime")
    assert job_field(job, "StdOut") == str(tmp_path / f"o-{job}.txt")
    assert job_field(job, "NoSuchField") is None


def test_scancel_sends_sigterm_and_job_ends_cancelled(slurm: Cluster, tmp_path: Path) -> None:
    script = write_script(tmp_path / "long.sh", """
trap 'echo "got TERM"; exit 143' TERM
echo started
while :; do sleep 0.1; done
""")
    job = submit(script, cwd=tmp_path)
    wait_state(job, "RUNNING", timeout=30)
    out_path = tmp_path / f"slurm-{job}.out"
    # the script is running (its first line is out) before we cancel
    deadline = time.monotonic() + 10
    while "started" not in read_output(out_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    cancel(job)
    assert wait_state(job, "CANCELLED", timeout=slurm.kill_wait + 20) == "CANCELLED"
    # the trap ran: SIGTERM came first, well before KillWait's SIGKILL
    assert "got TERM" in read_output(out_path)
    assert time.monotonic() - t0 < slurm.kill_wait + 10
    # the node is free again for the next test
    wait_state(submit(write_script(tmp_path / "next.sh", "true\n"), cwd=tmp_path),
               "COMPLETED", timeout=30)


def test_unknown_job_is_gone(slurm: Cluster) -> None:
    assert job_state("999999999") == GONE
    assert job_field("999999999", "JobState") is None
