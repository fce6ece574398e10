"""Shared helpers of the end-to-end tests of the example batch scripts (slurm-examples/),
and the check that every example is valid before any of them is submitted.

Each e2e test copies the examples into its own ``tmp_path`` (readable by slurmd, since
jobs run as root here), submits one with ``sbatch`` from there, and checks the outcome
twice: from SLURM (``scontrol``/``squeue``) and from the event log the job's sidecar
wrote (``sidecar-events.jsonl`` in the submit directory, shared by every job submitted
from it). Other jobs may share the cluster at the same time: tests find their jobs by id,
name or working directory, never by "the next job id".
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

from tests.slurm import cluster
from tests.slurm.conftest import Cluster

EXAMPLES = cluster.REPO / "slurm-examples"
EVENTS = "sidecar-events.jsonl"


def copy_examples(dst: Path) -> Path:
    """Copy every example script, config and helper program into ``dst``."""
    for p in EXAMPLES.iterdir():
        if p.is_file():
            shutil.copy2(p, dst / p.name)
    return dst


def records(path: Path) -> List[Dict[str, Any]]:
    """Every record of a JSON-lines event log; fails the test on a line that is not a
    JSON object (the log must never hold a torn or foreign line)."""
    if not path.exists():
        return []
    out: List[Dict[str, Any]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rec = json.loads(line)
        except ValueError:
            pytest.fail(f"{path}:{n} is not JSON: {line[:200]!r}")
        assert isinstance(rec, dict), f"{path}:{n} is not a JSON object"
        out.append(rec)
    return out


def of_job(recs: List[Dict[str, Any]], job_id: str, kind: Optional[str] = None,
           **fields: Any) -> List[Dict[str, Any]]:
    """The records of one job (``job_id``), of a ``kind``, with the given field values."""
    return [r for r in recs if r.get("job_id") == job_id
            and (kind is None or r.get("kind") == kind)
            and all(r.get(k) == v for k, v in fields.items())]


def wait_records(path: Path, pred: Callable[[List[Dict[str, Any]]], bool],
                 timeout: float = 20.0, what: str = "records") -> List[Dict[str, Any]]:
    """Poll the event log until ``pred(records)`` holds (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        recs = records(path)
        if pred(recs):
            return recs
        if time.monotonic() > deadline:
            kinds = [(r.get("job_id"), r.get("kind"), r.get("watcher"), r.get("action"))
                     for r in recs]
            pytest.fail(f"{what} not in {path} within {timeout}s; have: {kinds}")
        time.sleep(0.05)


def ts_epoch(rec: Dict[str, Any]) -> float:
    """A record's ``ts`` (ISO 8601 UTC with Z) as a Unix time."""
    ts = str(rec["ts"])
    assert ts.endswith("Z"), ts
    return dt.datetime.fromisoformat(ts[:-1]).replace(tzinfo=dt.timezone.utc).timestamp()


def stamp(text: str, event: str) -> float:
    """The Unix time fake_train.py printed before an event (``[fake_train] oom_at=...``)."""
    found = re.findall(rf"^\[fake_train\] {re.escape(event)}_at=([0-9.]+)$", text, re.M)
    assert found, f"no {event}_at stamp in:\n{text}"
    return float(found[-1])


def stamps(text: str, event: str) -> List[float]:
    return [float(x) for x in
            re.findall(rf"^\[fake_train\] {re.escape(event)}_at=([0-9.]+)$", text, re.M)]


def jobs_in(workdir: Path) -> List[str]:
    """Ids of the queued/running/completing jobs whose working directory is ``workdir``
    (the jobs a test submitted, and those its sidecars submitted)."""
    cp = cluster.run(["squeue", "-h", "-o", "%i|%Z"], check=False)
    out = []
    for line in cp.stdout.splitlines():
        job, _, wd = line.partition("|")
        if wd.strip() == str(workdir):
            out.append(job.strip())
    return out


def cancel_jobs_in(workdir: Path) -> None:
    """Kill every job still alive in ``workdir`` (cleanup for jobs the conftest does not
    know about: resubmissions made by a sidecar)."""
    for job in jobs_in(workdir):
        cluster.run(["scancel", "--signal=KILL", "--full", job], check=False)
        cluster.run(["scancel", job], check=False)


def report(name: str, **values: float) -> None:
    """Print measured times (seen with ``pytest -s``: lines starting ``[e2e timing]``)."""
    line = {"test": name, **{k: round(v, 4) for k, v in values.items()}}
    print(f"\n[e2e timing] {json.dumps(line)}")


# ------------------------------------------------------------------------------ tests
WATCHER_SCRIPTS = ["oom-resubmit.sh", "loss-diverge.sh", "metric.sh", "array.sh",
                   "two-task.sh", "wrapper.sh"]


@pytest.mark.parametrize("script", WATCHER_SCRIPTS)
def test_example_script_passes_sidecar_check(slurm: Cluster, tmp_path: Path,
                                             script: str) -> None:
    """Every example's #WATCHER lines are valid: ``sidecar check --from-script`` exits 0
    and lists the watchers with their actions."""
    copy_examples(tmp_path)
    cp = subprocess.run([sys.executable, "-m", "sidecar.cli", "check", "--from-script", script],
                        cwd=tmp_path, capture_output=True, text=True, timeout=60,
                        env=cluster.job_env())
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "OK" in cp.stdout
    text = (tmp_path / script).read_text()
    for name in re.findall(r"^#WATCHER .*?\bname=(\w+)", text, re.M):
        assert name in cp.stdout


def test_hang_config_passes_sidecar_check(slurm: Cluster, tmp_path: Path) -> None:
    """hang.toml (a stale-file watcher) is valid: ``sidecar check`` exits 0."""
    copy_examples(tmp_path)
    cp = subprocess.run([sys.executable, "-m", "sidecar.cli", "check", "hang.toml"],
                        cwd=tmp_path, capture_output=True, text=True, timeout=60,
                        env=cluster.job_env())
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "stale after 3s" in cp.stdout


def test_examples_use_the_sidecar_block(slurm: Cluster) -> None:
    """Every example either runs its work under the sidecar (`exec sidecar ... -- CMD`) or
    starts it in the background, has the sidecar follow it (--pid) and waits for the
    sidecar, also on scancel (the TERM trap): without one of these, SLURM kills the sidecar
    the moment the batch script ends, before it has written its last records (see
    docs/slurm-examples.md)."""
    for p in sorted(EXAMPLES.glob("*.sh")):
        text = p.read_text()
        if re.search(r'^exec sidecar .* -- ', text, re.M):
            continue
        assert re.search(r'^WORK=\$!$', text, re.M), p.name
        assert re.search(r'^sidecar .*--pid "\$WORK"', text, re.M | re.S), p.name
        assert "trap 'wait \"$SIDECAR\"; exit 143' TERM" in text, p.name
        assert re.search(r'^wait "\$SIDECAR"$', text, re.M), p.name
