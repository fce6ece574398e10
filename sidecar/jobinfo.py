"""What the job is doing and what it may do: its process tree (alive? CPU? memory?), its
memory limit and its end time.

- :class:`ProcessTree` samples the job's process tree (psutil, imported on first use):
  whether the root process still lives, the tree's cumulative CPU seconds, its resident
  memory and its size. :func:`cpu_percent` turns two samples into a CPU use.
- :func:`memory_limit`: the job's memory limit (SLURM environment, else the cgroup's).
- :func:`job_end_time`: when SLURM will end the job (``SLURM_JOB_END_TIME``, else
  ``scontrol show job``, else ``squeue -o %L``).

Nothing here raises for a vanished process, an unreadable file or a failing command: the
answer is then "unknown" (None) with a description of why.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
)

from sidecar.log import get_logger

__all__ = [
    "JobInfoError",
    "ProcessTree",
    "TreeSample",
    "cpu_percent",
    "job_end_time",
    "memory_limit",
    "parse_scontrol_end_time",
    "parse_squeue_time_left",
]

_log = get_logger(__name__)


class JobInfoError(Exception):
    """A SLURM client command could not give an answer (not installed, failed, timed out).
    ``timed_out``: it did not answer in time (the controller is likely unreachable)."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


# ---------------------------------------------------------------------------- process tree


@dataclass(frozen=True)
class TreeSample:
    """One look at the job's process tree.

    ``cpu_seconds`` is the tree's cumulative user+system CPU, the CPU of children already
    reaped by tree members included (so it does not drop when a member reaps a child), and
    the last seen CPU of members that left the tree in another way (reaped by a process
    outside the tree, reparented away, the root gone): it does not go down between the
    samples of one :class:`ProcessTree`. ``rss_bytes`` sums the RSS of the live members
    (pages shared between them are counted once per process). ``nprocs`` counts the
    members found, the root included (0 when the root is gone).
    """

    at: float
    alive: bool
    cpu_seconds: float
    rss_bytes: int
    nprocs: int


def cpu_percent(a: TreeSample, b: TreeSample) -> Optional[float]:
    """The tree's CPU use between two samples in percent of one core (100 = one core
    busy, 400 = four); None when ``b`` is not later than ``a``. Never negative."""
    dt = b.at - a.at
    if dt <= 0:
        return None
    return max(0.0, (b.cpu_seconds - a.cpu_seconds) / dt * 100.0)


# what one sample remembers of a member: pid -> (create_time, ppid, own CPU + reaped
# children's CPU, reaped children's CPU)
_Seen = Dict[int, Tuple[float, int, float, float]]


def _lost_cpu(prev: _Seen, curr: _Seen) -> float:
    """CPU seconds of the members of ``prev`` that are not in ``curr`` and did not show up
    in the reaped-children CPU of a member that is still there.

    A member that exits and is reaped by its parent moves its CPU into the parent's
    children CPU: nothing is lost. A gone member whose parent is gone too is charged to the
    nearest ancestor still present (the dead parent reaped it, then was reaped itself); a
    gone member with no ancestor left in the tree (the root gone, reparented to init and
    reaped there, escaped by a double fork) is lost. Children born and reaped between two
    samples also raise a survivor's children CPU, so this can underestimate, never
    overestimate, what was lost.
    """
    expected: Dict[int, float] = {}
    lost = 0.0
    for pid, (ctime, _ppid, total, _reaped) in prev.items():
        now = curr.get(pid)
        if now is not None and now[0] == ctime:
            continue
        # walk up to the nearest ancestor still present (bounded: no cycles)
        anc = prev[pid][1]
        hops = 0
        while hops < 1000:
            hops += 1
            if anc in curr and anc in prev and curr[anc][0] == prev[anc][0]:
                break
            up = prev.get(anc)
            if up is None:
                anc = -1
                break
            anc = up[1]
        if anc > 0 and hops < 1000:
            expected[anc] = expected.get(anc, 0.0) + total
        else:
            lost += total
    for pid, want in expected.items():
        got = curr[pid][3] - prev[pid][3]
        if got < want:
            lost += want - got
    return lost


def _proc_info(psutil: Any, p: Any) -> Tuple[Any, float, int, float, float, bool]:
    """(process, create time, ppid, CPU incl. reaped children, reaped children's CPU,
    zombie) from one /proc/PID/stat read. Raises psutil's "gone" errors."""
    with p.oneshot():
        ppid = int(p.ppid())
        ct = p.cpu_times()
        ctime = float(p.create_time())
        zombie = p.status() == psutil.STATUS_ZOMBIE
    reaped = float(ct.children_user + ct.children_system)
    return p, ctime, ppid, float(ct.user + ct.system) + reaped, reaped, zombie


class ProcessTree:
    """Samples the process tree under ``root_pid``.

    ``exclude``: pids whose whole subtree is left out (the sidecar itself when it is a
    child of the job's script: neither its CPU nor that of its actions is the job's).
    The tree is found again at every :meth:`sample` (one ``children(recursive=True)``,
    which reads the parent of every process on the node, then one ``/proc/PID/stat`` and
    one ``/proc/PID/statm`` read per member); processes that vanish meanwhile are skipped.
    Processes that leave the tree while alive (a double fork to daemonize, a ``setsid``
    child whose parent exits) are no longer followed.
    """

    def __init__(
        self,
        root_pid: int,
        *,
        exclude: Iterable[int] = (),
        clock: Callable[[], float] = time.monotonic,
        job_id: Optional[str] = None,
    ) -> None:
        self.root_pid = int(root_pid)
        # in a SLURM job: also the processes of its steps (``srun`` tasks run under
        # slurmstepd, not under the batch script), found by SLURM_JOB_ID in their
        # environment among this user's processes
        self.job_id = job_id or None
        self.exclude: Set[int] = {int(p) for p in exclude}
        self._clock = clock
        self._root: Any = None  # psutil.Process once found; None = not yet / never
        self._root_gone = False
        self._prev: _Seen = {}
        self._lost = 0.0  # CPU seconds of members gone from view (kept in cpu_seconds)
        self._floor = 0.0  # the last cpu_seconds returned (monotonic guard)

    def sample(self) -> TreeSample:
        """Look at the tree now. Never raises."""
        at = self._clock()
        try:
            alive, curr, rss = self._walk()
        except Exception as exc:  # psutil missing or broken, /proc unreadable...
            _log.debug("process tree sample failed", pid=self.root_pid, problem=str(exc))
            alive, curr, rss = False, {}, 0
        self._lost += _lost_cpu(self._prev, curr)
        self._prev = curr
        cpu = sum(v[2] for v in curr.values()) + self._lost
        # float sums in another order, or a member's CPU read a little low once: never
        # let the total go back
        cpu = max(cpu, self._floor)
        self._floor = cpu
        return TreeSample(at=at, alive=alive, cpu_seconds=cpu, rss_bytes=rss, nprocs=len(curr))

    def _walk(self) -> Tuple[bool, _Seen, int]:
        import psutil

        gone_errors = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)
        if self._root_gone:
            return False, {}, 0
        if self._root is None:
            try:
                self._root = psutil.Process(self.root_pid)
            except gone_errors:
                self._root_gone = True
                return False, {}, 0
        root = self._root
        try:
            if not root.is_running():  # gone, or its pid reused by another process
                self._root_gone = True
                return False, {}, 0
            kids: List[Any] = root.children(recursive=True)
        except gone_errors:
            self._root_gone = True
            return False, {}, 0
        info: Dict[int, Tuple[Any, float, int, float, float, bool]] = {}
        alive = True
        for p in [root, *kids]:
            try:
                info[p.pid] = _proc_info(psutil, p)
            except gone_errors:
                if p is root:
                    alive = False
        root_info = info.get(self.root_pid)
        if root_info is None:
            return False, {}, 0
        if root_info[5]:
            alive = False
        extra_roots: List[int] = []
        if self.job_id:
            extra_roots = self._job_steps(psutil, info, gone_errors)
        # members: the root and its descendants, minus the excluded subtrees
        children_of: Dict[int, List[int]] = {}
        for pid, v in info.items():
            if pid != self.root_pid:
                children_of.setdefault(v[2], []).append(pid)
        curr: _Seen = {}
        rss = 0
        stack = [self.root_pid] if self.root_pid not in self.exclude else []
        stack.extend(extra_roots)
        while stack:
            pid = stack.pop()
            if pid in curr:
                continue
            p, ctime, ppid, total, reaped, zombie = info[pid]
            curr[pid] = (ctime, ppid, total, reaped)
            if not zombie:
                try:
                    rss += int(p.memory_info().rss)
                except gone_errors:
                    pass
            for c in children_of.get(pid, ()):
                if c not in self.exclude:
                    stack.append(c)
        return alive, curr, rss

    def _job_steps(
        self,
        psutil: Any,
        info: Dict[int, Tuple[Any, float, int, float, float, bool]],
        gone_errors: Any,
    ) -> List[int]:
        """Processes of the job outside the root's tree (its ``srun`` steps): this user's
        processes whose environment says SLURM_JOB_ID = the job, with their descendants,
        added to ``info``. The excluded subtrees (the sidecar, its actions) stay out."""
        uid = os.getuid()
        procs: Dict[int, Any] = {}
        parent: Dict[int, int] = {}
        for p in psutil.process_iter(["ppid", "uids"]):
            try:
                pinfo = p.info
                parent[p.pid] = int(pinfo["ppid"] or 0)
                uids = pinfo["uids"]
                if uids is not None and uids.real == uid:
                    procs[p.pid] = p
            except gone_errors:
                continue

        def excluded(pid: int) -> bool:
            hops = 0
            while pid > 1 and hops < 1000:
                if pid in self.exclude:
                    return True
                pid = parent.get(pid, 0)
                hops += 1
            return False

        roots: List[int] = []
        for pid, p in procs.items():
            if pid in info or excluded(pid):
                continue
            try:
                env = p.environ()
            except gone_errors:
                continue
            except OSError:
                continue
            if env.get("SLURM_JOB_ID") != self.job_id and env.get("SLURM_JOBID") != self.job_id:
                continue
            try:
                members = [p, *p.children(recursive=True)]
            except gone_errors:
                continue
            for q in members:
                if q.pid in info or excluded(q.pid):
                    continue
                try:
                    info[q.pid] = _proc_info(psutil, q)
                except gone_errors:
                    continue
            roots.append(pid)
        return roots


# ---------------------------------------------------------------------------- memory limit

# cgroup v1 reports "no limit" as a huge number (PAGE_COUNTER_MAX pages, ~2**63)
_V1_UNLIMITED = 1 << 60

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTkmgt]?)[Bb]?\s*$")
_UNIT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _mb(value: str) -> Optional[int]:
    """A SLURM memory size (megabytes unless a K/M/G/T suffix says otherwise) in bytes."""
    m = _SIZE.match(value)
    if m is None:
        return None
    unit = _UNIT[m.group(2).upper()] if m.group(2) else 1 << 20
    return int(float(m.group(1)) * unit)


def _count(value: Optional[str]) -> Optional[int]:
    """The first number of a SLURM count like ``4``, ``4(x2)``, ``4,2``, ``72(x2),36``."""
    if not value:
        return None
    m = re.match(r"\s*(\d+)", value)
    return int(m.group(1)) if m else None


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def _join(root: str, *parts: str) -> str:
    return os.path.join(root, *(p.strip("/") for p in parts if p.strip("/")))


def _ancestors(cg_path: str) -> List[str]:
    """``/a/b/c`` -> ``[/a/b/c, /a/b, /a, /]``."""
    parts = [p for p in cg_path.split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(len(parts), -1, -1)]


def _smallest(
    root: str, mount: str, cg_path: str, name: str, unlimited: int
) -> Tuple[Optional[Tuple[int, str]], bool]:
    """The smallest limit in file ``name`` of the cgroup ``cg_path`` and its ancestors
    under ``<root>/<mount>`` (values that are not numbers or are >= ``unlimited`` do not
    count), with its path; and whether any such file was found at all."""
    best: Optional[Tuple[int, str]] = None
    found_any = False
    for cg in _ancestors(cg_path):
        value = _read(_join(root, mount, cg, name))
        if value is None:
            continue
        found_any = True
        if value.isdigit() and int(value) < unlimited and (best is None or int(value) < best[0]):
            best = (int(value), "/" + _join(mount, cg, name))
    return best, found_any


def _cgroup_limit(root: str) -> Tuple[Optional[int], str]:
    text = _read(_join(root, "proc/self/cgroup"))
    if text is None:
        return None, "no limit found (/proc/self/cgroup unreadable)"
    v2: Optional[str] = None
    v1: Optional[str] = None
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            v2 = path or "/"
        elif "memory" in controllers.split(","):
            v1 = path or "/"
    tried: List[str] = []
    if v2 is not None:
        best, found = _smallest(root, "sys/fs/cgroup", v2, "memory.max", 1 << 64)
        if best is not None:
            return best[0], f"cgroup v2 {best[1]}"
        tried.append("cgroup v2: memory.max is max" if found else "cgroup v2: no memory.max")
    if v1 is not None:
        best, found = _smallest(
            root, "sys/fs/cgroup/memory", v1, "memory.limit_in_bytes", _V1_UNLIMITED
        )
        if best is not None:
            return best[0], f"cgroup v1 {best[1]}"
        tried.append("cgroup v1: unlimited" if found else "cgroup v1: no memory.limit_in_bytes")
    if not tried:
        tried.append("no memory cgroup")
    return None, "no limit found (no SLURM memory limit; " + "; ".join(tried) + ")"


def memory_limit(environ: Mapping[str, str], *, root: str = "/") -> Tuple[Optional[int], str]:
    """The job's memory limit on this node in bytes, and where it came from.

    In order: ``SLURM_MEM_PER_NODE`` (MB; 0 means "all the node's memory" and is skipped);
    ``SLURM_MEM_PER_CPU`` (MB) times this node's CPUs (``SLURM_CPUS_ON_NODE``, else the
    first count of ``SLURM_JOB_CPUS_PER_NODE``); ``SLURM_MEM_PER_GPU`` times
    ``SLURM_GPUS_ON_NODE``; else the cgroup's limit: v2 ``memory.max``, v1
    ``memory.limit_in_bytes`` (the smallest along the cgroup and its ancestors; v1's
    "unlimited" values of 2**60 and more are ignored). ``root`` prefixes every path
    (tests). ``(None, "no limit found ...")`` otherwise. Never raises.
    """
    per_node = environ.get("SLURM_MEM_PER_NODE")
    if per_node:
        b = _mb(per_node)
        if b:
            return b, f"SLURM_MEM_PER_NODE={per_node.strip()} (MB)"
    per_cpu = environ.get("SLURM_MEM_PER_CPU")
    if per_cpu:
        b = _mb(per_cpu)
        name = "SLURM_CPUS_ON_NODE"
        cpus = _count(environ.get(name))
        if cpus is None:
            name = "SLURM_JOB_CPUS_PER_NODE"
            cpus = _count(environ.get(name))
        if b and cpus:
            return b * cpus, f"SLURM_MEM_PER_CPU={per_cpu.strip()} (MB) x {name}={cpus}"
    per_gpu = environ.get("SLURM_MEM_PER_GPU")
    if per_gpu:
        b = _mb(per_gpu)
        gpus = _count(environ.get("SLURM_GPUS_ON_NODE"))
        if b and gpus:
            return b * gpus, f"SLURM_MEM_PER_GPU={per_gpu.strip()} (MB) x SLURM_GPUS_ON_NODE={gpus}"
    return _cgroup_limit(root)


# ---------------------------------------------------------------------------- end time

_RUN_TIMEOUT = 10.0


def _run(argv: Sequence[str]) -> str:
    """Run a SLURM client command (10 s at most); its standard output. Raises only
    JobInfoError. Times are asked for in the standard format (SLURM_TIME_FORMAT)."""
    import subprocess

    env = dict(os.environ)
    env["SLURM_TIME_FORMAT"] = "standard"
    try:
        cp = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_RUN_TIMEOUT,
            env=env,
        )
    except FileNotFoundError:
        raise JobInfoError(f"{argv[0]}: not found") from None
    except subprocess.TimeoutExpired:
        raise JobInfoError(f"{argv[0]}: no answer within {_RUN_TIMEOUT:g}s", True) from None
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        raise JobInfoError(f"{argv[0]}: {exc}") from None
    if cp.returncode != 0:
        err = (cp.stderr or cp.stdout or "").strip().splitlines()
        raise JobInfoError(
            f"{argv[0]} exited {cp.returncode}" + (f": {err[0][:200]}" if err else "")
        )
    return cp.stdout


_NO_VALUE = ("unknown", "none", "n/a", "")


def _field(text: str, name: str) -> Optional[str]:
    m = re.search(r"(?:^|\s)" + re.escape(name) + r"=(\S*)", text)
    return m.group(1) if m else None


def _scontrol(text: str) -> Tuple[Optional[float], str]:
    """(end time, what was found): "ok", "unlimited", "unknown" or "missing"."""
    limit = _field(text, "TimeLimit")
    if limit is not None and limit.upper() in ("UNLIMITED", "INFINITE"):
        return None, "unlimited"
    end = _field(text, "EndTime")
    if end is None:
        return None, "missing"
    if end.lower() in _NO_VALUE:
        return None, "unknown"
    try:
        t = time.strptime(end, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None, "missing"
    try:
        return float(time.mktime(t)), "ok"
    except (OverflowError, ValueError):
        return None, "missing"


def parse_scontrol_end_time(text: str) -> Optional[float]:
    """The EndTime of ``scontrol show job -o ID`` output as epoch seconds (it is the local
    time of the machine that ran scontrol); None for Unknown/None, for a job without time
    limit (TimeLimit=UNLIMITED: its EndTime is not an end), or when there is none."""
    return _scontrol(text)[0]


_LEFT = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_squeue_time_left(text: str) -> Optional[float]:
    """``squeue -h -j ID -o %L`` output ([days-]hours:minutes:seconds, shortened to
    minutes:seconds below an hour: ``1-02:03:04``, ``2:03:04``, ``5:00``, ``0:30``) in
    seconds; None for UNLIMITED, NOT_SET, INVALID or anything else."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    m = _LEFT.match(line)
    if m is None:
        return None
    days, a, b, c = m.groups()
    nums = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:
        # days-hours[:minutes[:seconds]]
        h, mi, s = (nums + [0, 0])[:3]
        return float(int(days) * 86400 + h * 3600 + mi * 60 + s)
    if len(nums) == 3:
        h, mi, s = nums
    elif len(nums) == 2:
        h, (mi, s) = 0, nums
    else:  # a bare number: minutes, as in SLURM's time format
        h, mi, s = 0, nums[0], 0
    return float(h * 3600 + mi * 60 + s)


# the time SLURM gives a job without a limit: start + 365 days (as SLURM_JOB_END_TIME)
_YEAR = 365 * 86400.0


def job_end_time(
    environ: Mapping[str, str],
    *,
    run: Callable[[Sequence[str]], str] = _run,
    now: Callable[[], float] = time.time,
    use_env: bool = True,
) -> Tuple[Optional[float], str]:
    """When SLURM ends the job (epoch seconds), and where that came from.

    In order: ``SLURM_JOB_END_TIME`` (set by newer SLURM versions; fixed when the job
    starts, so ``use_env=False`` asks the controller instead, e.g. to see a time limit
    changed by ``scontrol update``), ``scontrol show job -o $SLURM_JOB_ID`` (EndTime),
    ``squeue -h -j $SLURM_JOB_ID -o %L`` (now + the time left; not tried when scontrol
    timed out: it asks the same controller). ``(None, why)`` outside a job, for a job
    without time limit, or when nothing answers. Never raises; blocks at most about 10 s
    (20 s when scontrol fails fast and squeue hangs) with the default ``run``.
    """
    job = (environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID") or "").strip()
    if not job:
        return None, "not in a SLURM job"
    if use_env:
        raw = (environ.get("SLURM_JOB_END_TIME") or "").strip()
        if raw:
            try:
                end = float(raw)
            except ValueError:
                end = 0.0
            if end > 0:
                try:
                    start = float(environ.get("SLURM_JOB_START_TIME") or "0")
                except ValueError:
                    start = 0.0
                if start > 0 and end - start >= _YEAR - 60:
                    return None, "no time limit (SLURM_JOB_END_TIME is a year after the start)"
                return end, "SLURM_JOB_END_TIME"
    problems: List[str] = []
    unreachable = False
    try:
        text = run(["scontrol", "show", "job", "-o", job])
        end_s, what = _scontrol(text)
        if end_s is not None:
            return end_s, f"scontrol show job {job} (EndTime)"
        if what == "unlimited":
            return None, f"no time limit (scontrol show job {job}: TimeLimit=UNLIMITED)"
        problems.append(f"scontrol: EndTime {what}")
    except Exception as exc:  # JobInfoError from _run; anything from an injected run
        problems.append(f"scontrol: {exc}")
        # squeue asks the same controller: do not wait for it twice
        unreachable = bool(getattr(exc, "timed_out", False))
    if unreachable:
        return None, "end time unknown (" + "; ".join(problems) + ")"
    try:
        text = run(["squeue", "-h", "-j", job, "-o", "%L"])
        left = parse_squeue_time_left(text)
        if left is not None:
            return now() + left, f"squeue -j {job} -o %L (time left {text.strip()})"
        word = text.strip() or "nothing"
        if word.upper() == "UNLIMITED":
            return None, f"no time limit (squeue -j {job}: UNLIMITED)"
        problems.append(f"squeue: {word[:40]}")
    except Exception as exc:
        problems.append(f"squeue: {exc}")
    return None, "end time unknown (" + "; ".join(problems) + ")"
