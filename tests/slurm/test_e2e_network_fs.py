"""Issue 6, item 7 on the real cluster: the backend chosen per directory.

network-fs.sh watches ``remote/`` and the run directory. Here ``remote/`` is a FUSE mount
(bindfs) of another directory: like NFS seen from a node, inotify on it does not see the
writes made beside it (in the mirrored directory, as another node writes). The test writes
"ERROR 7" there while the job runs: the sidecar, which polls ``remote/`` because statfs
says FUSE (not a known local FUSE filesystem), acts on it and cancels the job; the local
directory is followed with inotify. Needs bindfs (``.ci/run`` installs it)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.slurm import cluster
from tests.slurm.cluster import read_output, wait_state
from tests.slurm.conftest import Cluster
from tests.slurm.test_e2e_support import (
    EVENTS,
    cancel_jobs_in,
    copy_examples,
    of_job,
    report,
    ts_epoch,
    wait_records,
)


@pytest.fixture
def workdir(slurm: Cluster, tmp_path: Path) -> Iterator[Path]:
    if shutil.which("bindfs") is None:
        pytest.fail("bindfs is missing (.ci/run installs it)")
    copy_examples(tmp_path)
    (tmp_path / "remote-src").mkdir()
    (tmp_path / "remote").mkdir()
    subprocess.run(["bindfs", str(tmp_path / "remote-src"), str(tmp_path / "remote")],
                   check=True, capture_output=True)
    try:
        yield tmp_path
    finally:
        cancel_jobs_in(tmp_path)
        for cmd in ("fusermount3", "fusermount", "umount"):
            if shutil.which(cmd):
                args = ["-l"] if cmd == "umount" else ["-u"]
                done = subprocess.run([cmd, *args, str(tmp_path / "remote")],
                                      capture_output=True)
                if done.returncode == 0:
                    break


def test_a_line_written_beside_a_network_mount_is_seen(workdir: Path) -> None:
    """The job's output shows `remote` polled (with the reason) and `.` on inotify; a line
    written into the mirrored directory while the job runs is acted on (log_event, then
    cancel_job): the job ends CANCELLED."""
    job = cluster.submit(workdir / "network-fs.sh", cwd=workdir)
    try:
        wait_state(job, "RUNNING", timeout=120)
        wait_records(workdir / EVENTS, lambda rs: bool(of_job(rs, job, "start")), timeout=60,
                     what=f"the start record of job {job}")
        written = time.time()
        with open(workdir / "remote-src" / "job.log", "a") as fh:
            fh.write("ERROR 7\n")
        recs = wait_records(workdir / EVENTS, lambda rs: bool(of_job(rs, job, "stop")),
                            timeout=60, what=f"the stop record of job {job}")
        wait_state(job, "CANCELLED", timeout=60)
    finally:
        if cluster.job_state(job) not in cluster.TERMINAL_STATES:
            cluster.run(["scancel", job], check=False)
    (m,) = of_job(recs, job, "match", watcher="remote_error")
    assert m["line"] == "ERROR 7"
    start = of_job(recs, job, "start")[0]
    assert start["extra"]["backend"] == "inotify+poll"
    out = read_output(workdir / f"slurm-{job}.out")
    remote = str(workdir / "remote")
    assert f"  {remote}: polling (fuse" in out, out
    assert f"  {workdir}: inotify (" in out, out
    report("network-fs", written_to_match=ts_epoch(m) - written)
    assert ts_epoch(m) - written < 5.0  # a poll every second
