"""sidecar.jobinfo against the real cluster: inside a batch job, job_end_time finds the
job's end (submit + time limit) and memory_limit its --mem; from outside, scontrol's
EndTime and squeue's %L agree; a job without time limit has no end time."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import pytest

from sidecar.jobinfo import JobInfoError, _run, job_end_time, memory_limit
from tests.slurm.cluster import (
    cancel,
    job_field,
    read_output,
    submit,
    wait_gone_or_done,
    wait_state,
    write_script,
)
from tests.slurm.conftest import Cluster

# prints what jobinfo finds, seen from inside the job, as one JSON line
PROBE = f"""
{sys.executable} -c '
import json, os, time
from sidecar.jobinfo import job_end_time, memory_limit
end, where = job_end_time(os.environ)
limit, lwhere = memory_limit(os.environ)
print("JOBINFO " + json.dumps({{"end": end, "where": where, "now": time.time(),
                                 "limit": limit, "lwhere": lwhere}}))
'
"""


def _local_epoch(stamp: Optional[str]) -> float:
    assert stamp, "no time stamp"
    return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))


# the cluster is shared with other tests: a job may wait for a free CPU
WAIT = 240.0


def _probe(out: str) -> dict:
    line = next((ln for ln in out.splitlines() if ln.startswith("JOBINFO ")), None)
    assert line is not None, f"no JOBINFO line in the job's output:\n{out}"
    return dict(json.loads(line[len("JOBINFO ") :]))


@pytest.mark.timeout(WAIT + 60)
def test_end_time_and_memory_limit_inside_a_job(slurm: Cluster, tmp_path: Path) -> None:
    script = write_script(tmp_path / "probe.sh", "#SBATCH --time=5\n#SBATCH --mem=100M\n" + PROBE)
    t_submit = time.time()
    job = submit(script, cwd=tmp_path)
    assert wait_gone_or_done(job, timeout=WAIT) == "COMPLETED"
    got = _probe(read_output(tmp_path / f"slurm-{job}.out"))
    assert got["end"] is not None, got
    start = _local_epoch(job_field(job, "StartTime"))
    assert abs(got["end"] - (start + 5 * 60)) <= 2, (got, start)  # start + the time limit
    if start - t_submit < 30:  # the job did not wait for a CPU
        assert abs(got["end"] - (t_submit + 5 * 60)) < 60, got
    # SLURM_JOB_END_TIME on SLURM >= 23.02, scontrol before
    assert got["where"] == "SLURM_JOB_END_TIME" or got["where"].startswith("scontrol"), got
    assert got["limit"] == 100 * 1024 * 1024 and "SLURM_MEM_PER_NODE" in got["lwhere"], got


@pytest.mark.timeout(WAIT + 60)
def test_job_without_time_limit_has_no_end_time(slurm: Cluster, tmp_path: Path) -> None:
    """The partition has MaxTime=INFINITE and the job asks for no limit."""
    script = write_script(tmp_path / "probe.sh", PROBE)
    job = submit(script, cwd=tmp_path)
    assert wait_gone_or_done(job, timeout=WAIT) == "COMPLETED"
    got = _probe(read_output(tmp_path / f"slurm-{job}.out"))
    assert got["end"] is None and "no time limit" in got["where"], got


@pytest.mark.timeout(WAIT + 60)
def test_scontrol_and_squeue_agree_from_outside(slurm: Cluster, tmp_path: Path) -> None:
    script = write_script(tmp_path / "sleep.sh", "#SBATCH --time=7\nsleep 120\n")
    job = submit(script, cwd=tmp_path)
    try:
        wait_state(job, "RUNNING", timeout=WAIT)
        env = {"SLURM_JOB_ID": job}
        end_s, where_s = job_end_time(env)
        assert end_s is not None and where_s.startswith("scontrol"), where_s

        def squeue_only(argv: Sequence[str]) -> str:
            if argv[0] == "scontrol":
                raise JobInfoError("scontrol: not asked in this test")
            return _run(argv)

        end_q, where_q = job_end_time(env, run=squeue_only)
        assert end_q is not None and where_q.startswith("squeue"), where_q
        assert abs(end_q - end_s) <= 3, (end_s, end_q)  # both whole seconds, asked apart
        assert 5 * 60 < end_s - time.time() <= 7 * 60
    finally:
        cancel(job)
        wait_gone_or_done(job, timeout=30)


def test_unknown_job_id_gives_no_end_time(slurm: Cluster) -> None:
    end, where = job_end_time({"SLURM_JOB_ID": "999999"})
    assert end is None and where.startswith("end time unknown"), where
    assert "scontrol" in where and "squeue" in where


def test_memory_limit_outside_slurm_env_is_the_cgroup_or_none() -> None:
    limit: Optional[int]
    limit, where = memory_limit({})
    assert limit is None or limit > 0, where
