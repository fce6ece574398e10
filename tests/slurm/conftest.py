"""End-to-end tests against the project's one-node SLURM cluster (.ci/slurm-up.sh).

Every test under tests/slurm/ gets the ``slurm`` marker (``-m "not slurm"`` leaves them
out) and the session fixture ``slurm``, which starts the cluster once if it is not up.
When it cannot start: under CI (CI=true) the tests fail -- never a silent skip in CI --
elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from tests.slurm import cluster

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    # Hooks in a sub-directory conftest see the whole session's items: mark ours only.
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.slurm)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Cluster:
    """What the tests may want to know about the running cluster."""

    node: str
    partition: str
    kill_wait: int          # seconds between SIGTERM and SIGKILL (scontrol show config)


def _config_value(name: str) -> Optional[str]:
    cp = cluster.run(["scontrol", "show", "config"], check=False)
    for line in cp.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == name:
            return value.strip()
    return None


@pytest.fixture(scope="session")
def slurm() -> Cluster:
    """The cluster is up (started by .ci/slurm-up.sh if needed); describes it."""
    problem = cluster.cluster_problem()
    if problem is not None:
        if os.geteuid() != 0 and not _in_ci():
            pytest.skip(f"SLURM cluster not running ({problem}) and starting it needs root")
        start_problem = cluster.start_cluster()
        problem = start_problem or cluster.cluster_problem()
    if problem is not None:
        msg = f"SLURM test cluster unavailable: {problem}"
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    node = cluster.run(["sinfo", "-h", "-o", "%n"]).stdout.split()[0]
    partition = cluster.run(["sinfo", "-h", "-o", "%P"]).stdout.split()[0].rstrip("*")
    kill_wait = (_config_value("KillWait") or "30").split()[0]
    return Cluster(node=node, partition=partition,
                   kill_wait=int(kill_wait) if kill_wait.isdigit() else 30)


@pytest.fixture(autouse=True)
def _slurm_job_hygiene(slurm: Cluster) -> Iterator[None]:
    """Requires the cluster for every test here, and cancels the jobs a test submitted
    (through cluster.submit) that are still queued or running when it ends, so one
    failing test does not hold the node for the next."""
    cluster._submitted.clear()
    yield
    leftovers = sorted(cluster._submitted)
    cluster._submitted.clear()
    for job_id in leftovers:
        state = cluster.job_state(job_id)
        if state not in cluster.TERMINAL_STATES and state != cluster.GONE:
            # SIGKILL every process now (no KillWait), then cancel (also when pending)
            for argv in (["scancel", "--signal=KILL", "--full", job_id], ["scancel", job_id]):
                try:
                    cluster.run(argv, check=False)
                except cluster.SlurmError:
                    pass
