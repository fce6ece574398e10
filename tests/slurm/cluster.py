"""Helpers for the end-to-end tests against the one-node SLURM cluster (.ci/slurm-up.sh).

All of them shell out to the SLURM client commands with bounded timeouts, so a hung
slurmctld fails a test instead of hanging the suite.  Job ids are strings (array jobs
are ``123_4``).  There is no sacct here (no slurmdbd): states come from
``scontrol show job``, which keeps finished jobs for MinJobAge (600 s) seconds.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set, Union

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM_UP = REPO / ".ci" / "slurm-up.sh"
CMD_TIMEOUT = 30.0

# What job_state() returns for a job id that scontrol does not know (never submitted,
# or purged after MinJobAge).
GONE = "GONE"

# Job states after which a job never runs again (squeue/scontrol long names).
TERMINAL_STATES = frozenset({
    "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
    "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT",
})

PathLike = Union[str, "os.PathLike[str]"]

# Jobs submitted through submit() during the current test; the autouse fixture in
# tests/slurm/conftest.py cancels those still alive when the test ends.
_submitted: Set[str] = set()


class SlurmError(RuntimeError):
    """A SLURM client command failed."""


def run(argv: Sequence[str], *, check: bool = True, timeout: float = CMD_TIMEOUT,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[PathLike] = None) -> subprocess.CompletedProcess[str]:
    """Run a SLURM client command; raise SlurmError (with its stderr) when it fails."""
    try:
        cp = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                            env=None if env is None else dict(env), cwd=cwd)
    except FileNotFoundError as e:
        raise SlurmError(f"{argv[0]}: not installed ({e})") from e
    except subprocess.TimeoutExpired as e:
        raise SlurmError(f"{shlex.join(argv)}: no answer within {timeout}s") from e
    if check and cp.returncode != 0:
        raise SlurmError(f"{shlex.join(argv)} exited {cp.returncode}: "
                         f"{(cp.stderr or cp.stdout).strip()}")
    return cp


def job_env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment sbatch exports to the job: ours (PATH, so a pip-installed
    ``sidecar`` is found), plus PYTHONUNBUFFERED=1 (Python output appears live), the
    repository on PYTHONPATH (``python3 -m sidecar`` runs the tree under test), and
    ``extra``."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    pp = env.get("PYTHONPATH", "")
    if str(REPO) not in pp.split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), pp) if p)
    # a job inherits nothing from a SLURM job that runs these tests
    for k in [k for k in env if k.startswith(("SLURM_", "SBATCH_"))]:
        del env[k]
    if extra:
        env.update(extra)
    return env


def write_script(path: PathLike, body: str, shebang: str = "#!/bin/bash") -> Path:
    """Write an executable batch script (``body`` may start with #SBATCH lines)."""
    p = Path(path)
    p.write_text(f"{shebang}\n{body.lstrip(chr(10))}")
    p.chmod(0o755)
    return p


def submit(script_path: PathLike, *args: str, cwd: PathLike,
           sbatch_args: Iterable[str] = (), env: Optional[Mapping[str, str]] = None) -> str:
    """``sbatch --parsable [sbatch_args] SCRIPT ARGS...`` from ``cwd``; returns the job
    id.  The job's output goes to ``cwd/slurm-<id>.out`` unless the script or
    ``sbatch_args`` say otherwise.  ``env`` is merged into ``job_env()``."""
    argv = ["sbatch", "--parsable", *sbatch_args, str(script_path), *args]
    cp = run(argv, cwd=cwd, env=job_env(env))
    job_id = cp.stdout.strip().split(";")[0]     # "<id>[;cluster]"
    if not re.fullmatch(r"\d+(_\d+)?", job_id):
        raise SlurmError(f"sbatch printed no job id: {cp.stdout!r} {cp.stderr!r}")
    _submitted.add(job_id)
    return job_id


def show_job(job_id: str) -> Optional[Dict[str, str]]:
    """``scontrol show job -o ID`` as a dict of fields; None when the job is unknown."""
    cp = run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
    if cp.returncode != 0:
        if "Invalid job id" in cp.stderr:
            return None
        raise SlurmError(f"scontrol show job {job_id}: {cp.stderr.strip()}")
    line = cp.stdout.splitlines()[0] if cp.stdout.strip() else ""
    return parse_fields(line) if line else None


# " Key=value" where Key looks like a scontrol field name (JobId, MinMemoryNode,
# Socks/Node, NtasksPerN:B:S:C ...); values may contain '=' (TRES=cpu=1,mem=1G) and,
# rarely, spaces (Command=/path with space/x.sh): a value runs to the next " Key=".
_FIELD = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:]*)=")


def parse_fields(line: str) -> Dict[str, str]:
    """Parse one line of ``scontrol show ... -o`` output."""
    out: Dict[str, str] = {}
    matches = list(_FIELD.finditer(line))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        out.setdefault(m.group(1), line[m.end():end].strip())
    return out


def job_field(job_id: str, name: str) -> Optional[str]:
    """One field of ``scontrol show job`` (e.g. MinMemoryNode, Restarts, SubmitTime,
    StdOut, ExitCode); None when the job or the field is unknown."""
    fields = show_job(job_id)
    return None if fields is None else fields.get(name)


def job_state(job_id: str) -> str:
    """The job's JobState (PENDING, RUNNING, COMPLETING, COMPLETED, CANCELLED ...), or
    GONE when scontrol does not know the job."""
    fields = show_job(job_id)
    if fields is None:
        return GONE
    return fields.get("JobState", GONE)


def _describe(job_id: str) -> str:
    cp = run(["scontrol", "show", "job", str(job_id)], check=False)
    return (cp.stdout or cp.stderr).strip()


def wait_state(job_id: str, states: Union[str, Iterable[str]], timeout: float = 30.0,
               interval: float = 0.1) -> str:
    """Poll until the job is in one of ``states``; returns that state.  Fails the test
    (with ``scontrol show job``) after ``timeout`` s, or at once when the job reaches
    another terminal state (it will never get there)."""
    wanted = {states} if isinstance(states, str) else set(states)
    deadline = time.monotonic() + timeout
    state = ""
    while True:
        state = job_state(job_id)
        if state in wanted:
            return state
        if state in TERMINAL_STATES or (state == GONE and GONE not in wanted):
            pytest.fail(f"job {job_id} is {state}, waited for {sorted(wanted)}:\n"
                        f"{_describe(job_id)}")
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} still {state} after {timeout}s, waited for "
                        f"{sorted(wanted)}:\n{_describe(job_id)}")
        time.sleep(interval)


def wait_gone_or_done(job_id: str, timeout: float = 30.0, interval: float = 0.1) -> str:
    """Poll until the job is finished (a terminal state) or unknown to scontrol;
    returns the state (GONE for unknown).  Fails the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        state = job_state(job_id)
        if state in TERMINAL_STATES or state == GONE:
            return state
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} still {state} after {timeout}s:\n{_describe(job_id)}")
        time.sleep(interval)


def cancel(job_id: str, signal: Optional[str] = None, batch_only: bool = False) -> None:
    """``scancel [--signal=SIG [--batch]] ID``.  Without ``signal`` the job is cancelled
    (SIGTERM to all its processes at once, SIGKILL KillWait seconds later)."""
    argv = ["scancel"]
    if signal is not None:
        argv.append(f"--signal={signal}")
        if batch_only:
            argv.append("--batch")
    argv.append(str(job_id))
    run(argv)


def squeue_ids(user: Optional[str] = None) -> List[str]:
    """Ids of the jobs squeue lists (pending/running/completing)."""
    argv = ["squeue", "-h", "-o", "%i"]
    if user:
        argv += ["-u", user]
    return run(argv).stdout.split()


def read_output(path: PathLike, timeout: float = 10.0) -> str:
    """The text of a job's output file, waiting (bounded) for it to exist."""
    p = Path(path)
    deadline = time.monotonic() + timeout
    while not p.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"{p} not created within {timeout}s")
        time.sleep(0.05)
    return p.read_text(errors="replace")


def cluster_problem() -> Optional[str]:
    """None when the cluster answers and its node can run jobs; else why not."""
    try:
        cp = run(["sinfo", "-h", "-o", "%t"], timeout=10)
    except SlurmError as e:
        return str(e)
    states = cp.stdout.split()
    if not any(s.rstrip("*~#!%$@^-") in ("idle", "mix", "alloc", "comp") for s in states):
        return f"no usable node (sinfo states: {states or 'none'})"
    if any(s.endswith("*") for s in states):
        return f"node not responding (sinfo states: {states})"
    return None


def start_cluster(timeout: float = 110.0) -> Optional[str]:
    """Run .ci/slurm-up.sh; None on success, else its output."""
    try:
        cp = subprocess.run(["bash", str(SLURM_UP)], capture_output=True, text=True,
                            timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"{SLURM_UP} did not finish within {timeout}s"
    except OSError as e:
        return f"{SLURM_UP}: {e}"
    if cp.returncode != 0:
        return f"{SLURM_UP} exited {cp.returncode}:\n{cp.stdout}\n{cp.stderr}"
    return None
