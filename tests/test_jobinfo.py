"""sidecar.jobinfo: process tree samples (real processes), memory limit, job end time."""

from __future__ import annotations

import calendar
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import psutil
import pytest

from sidecar import jobinfo
from sidecar.jobinfo import (
    JobInfoError,
    ProcessTree,
    TreeSample,
    _lost_cpu,
    cpu_percent,
    job_end_time,
    memory_limit,
    parse_scontrol_end_time,
    parse_squeue_time_left,
)
from tests.conftest import wait_until

# ---------------------------------------------------------------------------- cpu_percent


def s(at: float, cpu: float) -> TreeSample:
    return TreeSample(at=at, alive=True, cpu_seconds=cpu, rss_bytes=0, nprocs=1)


def test_cpu_percent_is_cpu_seconds_per_second_in_percent() -> None:
    assert cpu_percent(s(10, 1.0), s(12, 3.0)) == pytest.approx(100.0)
    assert cpu_percent(s(10, 1.0), s(20, 1.5)) == pytest.approx(5.0)
    assert cpu_percent(s(0, 0), s(1, 4.0)) == pytest.approx(400.0)  # four cores


def test_cpu_percent_none_when_no_time_passed() -> None:
    assert cpu_percent(s(10, 1.0), s(10, 2.0)) is None
    assert cpu_percent(s(10, 1.0), s(9, 2.0)) is None


def test_cpu_percent_never_negative() -> None:
    assert cpu_percent(s(10, 5.0), s(11, 2.0)) == 0.0


# ---------------------------------------------------------------------------- _lost_cpu
# entries: pid -> (create_time, ppid, own + reaped CPU, reaped CPU)


def test_lost_cpu_child_reaped_by_its_member_parent_is_not_lost() -> None:
    prev = {1: (1.0, 0, 1.0, 0.0), 2: (2.0, 1, 5.0, 0.0)}
    curr = {1: (1.0, 0, 6.5, 5.5)}  # the child's final CPU moved into the parent's
    assert _lost_cpu(prev, curr) == 0.0


def test_lost_cpu_child_gone_elsewhere_is_lost() -> None:
    """Reaped by a process outside the tree (reparented, then reaped by init)."""
    prev = {1: (1.0, 0, 1.0, 0.0), 2: (2.0, 1, 5.0, 0.0)}
    curr = {1: (1.0, 0, 1.2, 0.0)}
    assert _lost_cpu(prev, curr) == pytest.approx(5.0)


def test_lost_cpu_gone_chain_is_charged_to_the_nearest_survivor() -> None:
    prev = {1: (1.0, 0, 1.0, 0.0), 2: (2.0, 1, 2.0, 0.0), 3: (3.0, 2, 3.0, 0.0)}
    # 2 reaped 3, then 1 reaped 2: 1's reaped CPU rose by all of it
    assert _lost_cpu(prev, {1: (1.0, 0, 6.0, 5.0)}) == 0.0
    # 3 escaped before 2 died: only 2's part reached 1
    assert _lost_cpu(prev, {1: (1.0, 0, 3.0, 2.0)}) == pytest.approx(3.0)


def test_lost_cpu_root_gone_loses_everything() -> None:
    prev = {1: (1.0, 0, 1.0, 0.0), 2: (2.0, 1, 5.0, 0.0)}
    assert _lost_cpu(prev, {}) == pytest.approx(6.0)


def test_lost_cpu_reused_pid_is_another_process() -> None:
    prev = {1: (1.0, 0, 1.0, 0.0), 2: (2.0, 1, 5.0, 0.0)}
    curr = {1: (1.0, 0, 1.0, 0.0), 2: (9.0, 1, 0.0, 0.0)}  # same pid, new create time
    assert _lost_cpu(prev, curr) == pytest.approx(5.0)


def test_lost_cpu_nothing_gone() -> None:
    prev = {1: (1.0, 0, 1.0, 0.0)}
    assert _lost_cpu(prev, {1: (1.0, 0, 2.0, 0.0)}) == 0.0
    assert _lost_cpu({}, {1: (1.0, 0, 2.0, 0.0)}) == 0.0


# ---------------------------------------------------------------------------- real trees

PY = sys.executable

# a process that runs its children (python snippets given as arguments), reaps them when
# they end, and sleeps; it exits when its stdin closes
PARENT = r"""
import subprocess, sys
kids = [subprocess.Popen([sys.executable, "-c", code]) for code in sys.argv[1:]]
sys.stdin.read()
for k in kids:
    k.kill()
    k.wait()
"""

SLEEPER = "import time; time.sleep(300)"
BUSY = "while True: pass"


class Tree:
    def __init__(self, *kids: str) -> None:
        self.proc = subprocess.Popen([PY, "-c", PARENT, *kids], stdin=subprocess.PIPE)
        self.pid = self.proc.pid

    def kids(self) -> List[psutil.Process]:
        return psutil.Process(self.pid).children(recursive=True)

    def close(self) -> None:
        try:
            for k in self.kids():
                k.kill()
        except psutil.Error:
            pass
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def trees() -> Iterator[Callable[..., Tree]]:
    made: List[Tree] = []

    def make(*kids: str) -> Tree:
        t = Tree(*kids)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def _cpu(p: psutil.Process) -> float:
    ct = p.cpu_times()
    return float(ct.user + ct.system)


def test_idle_tree_is_alive_counted_and_near_zero_cpu(trees: Callable[..., Tree]) -> None:
    t = trees(SLEEPER, SLEEPER, SLEEPER)
    wait_until(lambda: len(t.kids()) == 3)
    clock = [100.0]
    tree = ProcessTree(t.pid, clock=lambda: clock[0])
    a = tree.sample()
    assert a.alive and a.nprocs == 4 and a.at == 100.0
    assert a.rss_bytes > 4 * 1_000_000  # four python interpreters
    clock[0] = 110.0
    b = tree.sample()
    pct = cpu_percent(a, b)
    assert pct is not None and pct < 1.0


def test_busy_child_shows_in_cpu_percent(trees: Callable[..., Tree]) -> None:
    t = trees(BUSY)
    wait_until(lambda: len(t.kids()) == 1)
    tree = ProcessTree(t.pid)
    a = tree.sample()
    b = wait_until(
        lambda: (lambda x: x if x.cpu_seconds - a.cpu_seconds > 0.3 else None)(tree.sample())
    )
    pct = cpu_percent(a, b)
    assert pct is not None and pct > 30.0  # about 100 on an idle machine


def test_excluded_subtree_is_left_out(trees: Callable[..., Tree]) -> None:
    """The sidecar (and its actions, its children) burn CPU: not the job's."""
    busy_with_child = (
        "import subprocess, sys; "
        f"subprocess.Popen([sys.executable, '-c', {SLEEPER!r}]); "
        + BUSY.replace("while True: pass", "exec('while True: pass')")
    )
    t = trees(SLEEPER, busy_with_child)
    wait_until(lambda: len(t.kids()) == 3)
    busy = next(p for p in psutil.Process(t.pid).children() if "Popen" in " ".join(p.cmdline()))
    tree = ProcessTree(t.pid, exclude=[busy.pid])
    a = tree.sample()
    assert a.nprocs == 2  # the parent and its sleeping child; not busy nor busy's child
    burned = _cpu(busy)
    wait_until(lambda: _cpu(busy) - burned > 0.3)
    b = tree.sample()
    assert b.cpu_seconds - a.cpu_seconds < 0.1
    assert ProcessTree(t.pid).sample().nprocs == 4  # without the exclusion


def test_exited_child_not_yet_reaped_keeps_its_cpu(trees: Callable[..., Tree]) -> None:
    """A child that exited is a zombie until its parent reaps it: still counted."""
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n"
    t = trees(burn)
    tree = ProcessTree(t.pid)
    samples = [tree.sample()]
    wait_until(lambda: t.kids() and t.kids()[0].status() == psutil.STATUS_ZOMBIE)
    for _ in range(3):
        samples.append(tree.sample())
    cpus = [x.cpu_seconds for x in samples]
    assert cpus == sorted(cpus)
    assert cpus[-1] >= 0.4 and samples[-1].nprocs == 2


REAPER = r"""
import os, sys, time
pid = os.fork()
if pid == 0:
    t = time.process_time()
    while time.process_time() - t < 0.4: pass
    sys.exit(0)
os.waitpid(pid, 0)          # the member reaps its child: the CPU moves to its children CPU
open(sys.argv[1], "w").close()
time.sleep(300)
"""


def test_cpu_moves_into_the_reaping_member(tmp_path: Path, trees: Callable[..., Tree]) -> None:
    marker = tmp_path / "reaped"
    code = REAPER.replace("sys.argv[1]", repr(str(marker)))
    t = trees(code)
    tree = ProcessTree(t.pid)
    seen = [tree.sample()]
    wait_until(lambda: seen.append(tree.sample()) or marker.exists())
    after = tree.sample()
    assert after.nprocs == 2
    reaper = t.kids()[0]
    assert float(reaper.cpu_times().children_user + reaper.cpu_times().children_system) > 0.3
    assert after.cpu_seconds >= 0.4
    assert all(x.cpu_seconds <= after.cpu_seconds for x in seen)


ESCAPER = r"""
import os, sys, time
marker, go = sys.argv[1], sys.argv[2]
pid = os.fork()
if pid == 0:                 # the grandchild: burn, say so, then idle
    t = time.process_time()
    while time.process_time() - t < 0.4: pass
    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(marker + ".tmp", marker)
    time.sleep(300)
    os._exit(0)
while not os.path.exists(go):  # the intermediate: exit when told, orphaning the grandchild
    time.sleep(0.01)
os._exit(0)
"""


def test_member_leaving_the_tree_does_not_lower_cpu(
    tmp_path: Path, trees: Callable[..., Tree]
) -> None:
    """A grandchild reparented away (its parent exits; init adopts it) leaves the tree with
    its CPU: cpu_seconds stays where it was instead of dropping by it."""
    marker, go = tmp_path / "burned", tmp_path / "go"
    code = ESCAPER.replace("sys.argv[1], sys.argv[2]", f"{str(marker)!r}, {str(go)!r}")
    t = trees(code)
    wait_until(marker.exists)
    grandchild = int(marker.read_text())
    try:
        tree = ProcessTree(t.pid)
        before = tree.sample()
        assert before.nprocs == 3 and before.cpu_seconds >= 0.4
        go.touch()
        # the intermediate is now a zombie child of the parent (still ours), the grandchild
        # belongs to init
        after = wait_until(lambda: (lambda x: x if x.nprocs == 2 else None)(tree.sample()))
        assert grandchild not in [p.pid for p in t.kids()]
        assert after.cpu_seconds >= before.cpu_seconds
        assert psutil.pid_exists(grandchild)  # still running, just not ours any more
    finally:
        try:
            psutil.Process(grandchild).kill()
        except psutil.Error:
            pass


def test_zombie_root_is_not_alive_and_gone_root_never_raises() -> None:
    p = subprocess.Popen([PY, "-c", "pass"])
    wait_until(lambda: psutil.Process(p.pid).status() == psutil.STATUS_ZOMBIE)
    tree = ProcessTree(p.pid)
    z = tree.sample()
    assert not z.alive
    p.wait()
    g = tree.sample()
    assert not g.alive and g.nprocs == 0
    assert g.cpu_seconds >= z.cpu_seconds  # its CPU does not vanish from the total


def test_root_that_never_existed() -> None:
    p = subprocess.Popen([PY, "-c", "pass"])
    p.wait()
    tree = ProcessTree(p.pid)
    x = tree.sample()
    assert (x.alive, x.nprocs, x.cpu_seconds, x.rss_bytes) == (False, 0, 0.0, 0)


def test_sample_never_raises_when_psutil_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    tree = ProcessTree(os.getpid())

    def boom() -> None:
        raise RuntimeError("psutil broke")

    monkeypatch.setattr(tree, "_walk", boom)
    x = tree.sample()
    assert not x.alive and x.nprocs == 0


def test_own_process_tree_is_alive() -> None:
    x = ProcessTree(os.getpid()).sample()
    assert x.alive and x.nprocs >= 1 and x.rss_bytes > 0 and x.cpu_seconds > 0


def test_psutil_is_not_imported_by_the_module() -> None:
    code = "import sys, sidecar.jobinfo; print('psutil' in sys.modules)"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "False", out.stderr


# ---------------------------------------------------------------------------- memory_limit


def cgroup_tree(root: Path, cgroup: str, files: Dict[str, str]) -> str:
    (root / "proc/self").mkdir(parents=True, exist_ok=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n")
    return str(root)


MiB = 1 << 20


def test_memory_limit_slurm_mem_per_node(tmp_path: Path) -> None:
    got = memory_limit({"SLURM_MEM_PER_NODE": "4096"}, root=str(tmp_path))
    assert got[0] == 4096 * MiB and "SLURM_MEM_PER_NODE" in got[1]
    assert memory_limit({"SLURM_MEM_PER_NODE": "2G"}, root=str(tmp_path))[0] == 2048 * MiB


@pytest.mark.parametrize(
    "env,want",
    [
        ({"SLURM_MEM_PER_CPU": "1000", "SLURM_CPUS_ON_NODE": "4"}, 4000),
        ({"SLURM_MEM_PER_CPU": "1000", "SLURM_JOB_CPUS_PER_NODE": "4(x2)"}, 4000),
        ({"SLURM_MEM_PER_CPU": "1000", "SLURM_JOB_CPUS_PER_NODE": "3,2"}, 3000),
        ({"SLURM_MEM_PER_CPU": "1000", "SLURM_JOB_CPUS_PER_NODE": "72(x2),36"}, 72000),
        # SLURM_CPUS_ON_NODE (this node) wins over the job's first node
        (
            {
                "SLURM_MEM_PER_CPU": "500",
                "SLURM_CPUS_ON_NODE": "2",
                "SLURM_JOB_CPUS_PER_NODE": "8",
            },
            1000,
        ),
        ({"SLURM_MEM_PER_GPU": "8000", "SLURM_GPUS_ON_NODE": "2"}, 16000),
    ],
)
def test_memory_limit_per_cpu_and_per_gpu(tmp_path: Path, env: Dict[str, str], want: int) -> None:
    got = memory_limit(env, root=str(tmp_path))
    assert got[0] == want * MiB, got


def test_memory_limit_zero_per_node_means_no_slurm_limit_and_asks_the_cgroup(
    tmp_path: Path,
) -> None:
    root = cgroup_tree(
        tmp_path, "0::/slurm/job_5\n", {"sys/fs/cgroup/slurm/job_5/memory.max": "1073741824"}
    )
    got = memory_limit({"SLURM_MEM_PER_NODE": "0"}, root=root)
    assert got == (1 << 30, "cgroup v2 /sys/fs/cgroup/slurm/job_5/memory.max")


def test_memory_limit_per_cpu_without_cpu_count_falls_through(tmp_path: Path) -> None:
    got = memory_limit({"SLURM_MEM_PER_CPU": "1000"}, root=str(tmp_path))
    assert got[0] is None and got[1].startswith("no limit found")


def test_memory_limit_cgroup_v2_walks_up_to_the_job(tmp_path: Path) -> None:
    """SLURM sets the limit on the job's cgroup; the sidecar runs in a step's task cgroup
    whose memory.max is "max"."""
    cg = "/system.slice/slurmstepd.scope/job_7/step_batch/user/task_0"
    base = "sys/fs/cgroup/system.slice/slurmstepd.scope/job_7"
    root = cgroup_tree(
        tmp_path,
        f"0::{cg}\n",
        {
            f"{base}/step_batch/user/task_0/memory.max": "max",
            f"{base}/step_batch/user/memory.max": "max",
            f"{base}/step_batch/memory.max": "max",
            f"{base}/memory.max": "2147483648",
            "sys/fs/cgroup/system.slice/memory.max": "max",
        },
    )
    got = memory_limit({}, root=root)
    assert got == (2 << 30, f"cgroup v2 /{base}/memory.max")


def test_memory_limit_cgroup_smallest_along_the_chain(tmp_path: Path) -> None:
    root = cgroup_tree(
        tmp_path,
        "0::/a/b\n",
        {"sys/fs/cgroup/a/b/memory.max": "5000000", "sys/fs/cgroup/a/memory.max": "3000000"},
    )
    assert memory_limit({}, root=root)[0] == 3000000


def test_memory_limit_cgroup_v2_all_max_is_none(tmp_path: Path) -> None:
    root = cgroup_tree(tmp_path, "0::/a\n", {"sys/fs/cgroup/a/memory.max": "max"})
    got = memory_limit({}, root=root)
    assert got[0] is None and "memory.max is max" in got[1]


def test_memory_limit_cgroup_v1_and_its_unlimited_value(tmp_path: Path) -> None:
    text = "12:pids:/\n4:memory:/slurm/uid_0/job_9/step_batch\n0::/\n"
    base = "sys/fs/cgroup/memory/slurm/uid_0/job_9"
    root = cgroup_tree(
        tmp_path,
        text,
        {
            f"{base}/step_batch/memory.limit_in_bytes": "9223372036854771712",
            f"{base}/memory.limit_in_bytes": "536870912",
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712",
        },
    )
    got = memory_limit({}, root=root)
    assert got == (512 * MiB, f"cgroup v1 /{base}/memory.limit_in_bytes")
    # only the "unlimited" value: no limit
    (tmp_path / base / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    got = memory_limit({}, root=root)
    assert got[0] is None and "cgroup v1: unlimited" in got[1]


def test_memory_limit_nothing_readable(tmp_path: Path) -> None:
    got = memory_limit({}, root=str(tmp_path))
    assert got == (None, "no limit found (/proc/self/cgroup unreadable)")
    root = cgroup_tree(tmp_path, "garbage\n\n", {})
    got = memory_limit({"SLURM_MEM_PER_NODE": "lots"}, root=root)
    assert got[0] is None and "no memory cgroup" in got[1]


def test_memory_limit_on_this_machine_does_not_fail() -> None:
    limit, where = memory_limit({})
    assert (limit is None and where.startswith("no limit found")) or (
        isinstance(limit, int) and limit > 0 and where.startswith("cgroup")
    )


# ---------------------------------------------------------------------------- end time


@pytest.mark.parametrize(
    "text,want",
    [
        ("1-02:03:04", 86400 + 2 * 3600 + 3 * 60 + 4),
        ("2:03:04", 2 * 3600 + 3 * 60 + 4),
        ("5:00", 300),
        ("4:58\n", 298),
        ("0:30", 30),
        ("0:00", 0),
        ("3-00:00:00", 3 * 86400),
        ("1-02", 86400 + 7200),
        ("UNLIMITED", None),
        ("NOT_SET", None),
        ("INVALID", None),
        ("", None),
        ("soon", None),
        ("-1:00", None),
    ],
)
def test_parse_squeue_time_left(text: str, want: Optional[int]) -> None:
    got = parse_squeue_time_left(text)
    assert got == (None if want is None else float(want))


# a real line of `scontrol show job -o` (SLURM 22.05, the project's cluster)
SCONTROL = (
    "JobId=279 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901663 "
    "Nice=0 Account=(null) QOS=(null) JobState=RUNNING Reason=None Dependency=(null) Requeue=1 "
    "Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:02 TimeLimit=00:05:00 "
    "TimeMin=N/A SubmitTime=2026-11-21T22:43:16 EligibleTime=2026-11-21T22:43:16 "
    "AccrueTime=2026-11-21T22:43:16 StartTime=2026-11-21T22:43:17 EndTime=2026-11-21T22:48:17 "
    "Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-21T22:43:17 "
    "Scheduler=Main Partition=debug NodeList=vm BatchHost=vm NumNodes=1 NumCPUs=1 "
    "MinMemoryNode=0 Command=(null) WorkDir=/tmp StdOut=/tmp/slurm-279.out Power= \n"
)


@pytest.fixture
def tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    def set_tz(value: str) -> None:
        monkeypatch.setenv("TZ", value)
        time.tzset()

    yield set_tz
    monkeypatch.undo()
    time.tzset()


def test_parse_scontrol_end_time_is_local_time(tz: Callable[[str], None]) -> None:
    utc = calendar.timegm((2026, 11, 21, 22, 48, 17, 0, 0, 0))
    tz("UTC0")
    assert parse_scontrol_end_time(SCONTROL) == utc
    tz("CET-1")  # one hour east of UTC: the same wall clock is an hour earlier
    assert parse_scontrol_end_time(SCONTROL) == utc - 3600


@pytest.mark.parametrize(
    "text",
    [
        SCONTROL.replace("EndTime=2026-11-21T22:48:17", "EndTime=Unknown"),
        SCONTROL.replace("EndTime=2026-11-21T22:48:17", "EndTime=None"),
        SCONTROL.replace("EndTime=2026-11-21T22:48:17", "EndTime=garbage"),
        SCONTROL.replace("EndTime=2026-11-21T22:48:17 ", ""),
        SCONTROL.replace("TimeLimit=00:05:00", "TimeLimit=UNLIMITED"),
        "",
        "slurm_load_jobs error: Invalid job id specified",
    ],
)
def test_parse_scontrol_end_time_none(text: str) -> None:
    assert parse_scontrol_end_time(text) is None


def test_parse_scontrol_does_not_take_another_fields_suffix() -> None:
    """``EndTime`` must be a field of its own (not the tail of e.g. ``XEndTime=``)."""
    text = "JobId=1 XEndTime=2026-01-01T00:00:00 TimeLimit=00:05:00"
    assert parse_scontrol_end_time(text) is None


class FakeRun:
    def __init__(self, answers: Dict[str, object]) -> None:
        self.answers = answers
        self.calls: List[List[str]] = []

    def __call__(self, argv: Sequence[str]) -> str:
        self.calls.append(list(argv))
        a = self.answers.get(argv[0], JobInfoError(f"{argv[0]}: not found"))
        if isinstance(a, BaseException):
            raise a
        return str(a)


def test_job_end_time_outside_a_job() -> None:
    run = FakeRun({})
    assert job_end_time({}, run=run) == (None, "not in a SLURM job")
    assert run.calls == []


def test_job_end_time_from_the_environment_first() -> None:
    run = FakeRun({"scontrol": SCONTROL})
    env = {"SLURM_JOB_ID": "279", "SLURM_JOB_END_TIME": "1795301297"}
    assert job_end_time(env, run=run) == (1795301297.0, "SLURM_JOB_END_TIME")
    assert run.calls == []
    end, where = job_end_time(env, run=run, use_env=False)  # the controller's view
    assert where.startswith("scontrol") and run.calls[0][:3] == ["scontrol", "show", "job"]


def test_job_end_time_environment_of_an_unlimited_job() -> None:
    """SLURM gives a job without a time limit an end a year after its start."""
    env = {
        "SLURM_JOB_ID": "1",
        "SLURM_JOB_START_TIME": "1700000000",
        "SLURM_JOB_END_TIME": str(1700000000 + 365 * 86400),
    }
    end, where = job_end_time(env, run=FakeRun({}))
    assert end is None and "no time limit" in where


def test_job_end_time_scontrol(tz: Callable[[str], None]) -> None:
    tz("UTC0")
    run = FakeRun({"scontrol": SCONTROL})
    env = {"SLURM_JOB_ID": "279", "SLURM_ARRAY_JOB_ID": "270", "SLURM_JOB_END_TIME": "junk"}
    end, where = job_end_time(env, run=run)
    assert end == calendar.timegm((2026, 11, 21, 22, 48, 17, 0, 0, 0))
    assert "scontrol" in where
    assert run.calls == [["scontrol", "show", "job", "-o", "279"]]  # the job's own id


def test_job_end_time_squeue_when_scontrol_does_not_know() -> None:
    run = FakeRun(
        {
            "scontrol": SCONTROL.replace("EndTime=2026-11-21T22:48:17", "EndTime=Unknown"),
            "squeue": "1:02:03\n",
        }
    )
    end, where = job_end_time({"SLURM_JOB_ID": "5"}, run=run, now=lambda: 1000.0)
    assert end == 1000.0 + 3723 and where.startswith("squeue")
    assert run.calls[1] == ["squeue", "-h", "-j", "5", "-o", "%L"]


def test_job_end_time_squeue_when_scontrol_fails() -> None:
    run = FakeRun({"squeue": "5:00"})
    end, where = job_end_time({"SLURM_JOB_ID": "5"}, run=run, now=lambda: 50.0)
    assert end == 350.0


def test_job_end_time_unlimited_asks_no_further() -> None:
    run = FakeRun({"scontrol": SCONTROL.replace("TimeLimit=00:05:00", "TimeLimit=UNLIMITED")})
    end, where = job_end_time({"SLURM_JOB_ID": "5"}, run=run)
    assert end is None and "no time limit" in where and len(run.calls) == 1
    run = FakeRun({"squeue": "UNLIMITED"})
    end, where = job_end_time({"SLURM_JOB_ID": "5"}, run=run)
    assert end is None and "no time limit" in where


def test_job_end_time_controller_timeout_does_not_wait_twice() -> None:
    run = FakeRun(
        {"scontrol": JobInfoError("scontrol: no answer within 10s", True), "squeue": "5:00"}
    )
    end, where = job_end_time({"SLURM_JOB_ID": "5"}, run=run)
    assert end is None and "no answer" in where and len(run.calls) == 1


def test_job_end_time_nothing_answers_says_why() -> None:
    run = FakeRun({"scontrol": RuntimeError("weird"), "squeue": "NOT_SET"})
    end, where = job_end_time({"SLURM_JOB_ID": "5"}, run=run)
    assert end is None
    assert where == "end time unknown (scontrol: weird; squeue: NOT_SET)"


def test_run_returns_stdout_in_standard_time_format() -> None:
    out = jobinfo._run(["sh", "-c", "echo $SLURM_TIME_FORMAT; echo noise >&2"])
    assert out == "standard\n"


def test_run_failures_are_one_error_type(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(JobInfoError, match="not found"):
        jobinfo._run(["/nonexistent/scontrol"])
    with pytest.raises(JobInfoError, match="exited 3: oops") as ei:
        jobinfo._run(["sh", "-c", "echo oops >&2; exit 3"])
    assert not ei.value.timed_out
    monkeypatch.setattr(jobinfo, "_RUN_TIMEOUT", 0.2)
    with pytest.raises(JobInfoError, match="no answer") as ei:
        jobinfo._run(["sleep", "5"])
    assert ei.value.timed_out


def test_job_steps_outside_the_tree_count_as_the_job(tmp_path: Path) -> None:
    """In a SLURM job, `srun` tasks run under slurmstepd, not under the batch script: with
    job_id given, this user's processes whose environment carries that SLURM_JOB_ID count
    as the job's (a busy step makes the job busy), those of another job do not, and the
    excluded subtree (the sidecar) stays out even though it carries the job id too."""
    import subprocess
    import sys
    import time as _time

    busy = "import time\nt=time.time()\nwhile time.time()-t<30: pass"
    root = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    env = dict(os.environ, SLURM_JOB_ID="777001")
    step = subprocess.Popen([sys.executable, "-c", busy], env=env)
    other = subprocess.Popen([sys.executable, "-c", busy],
                             env=dict(os.environ, SLURM_JOB_ID="999"))
    me = subprocess.Popen([sys.executable, "-c", busy], env=env)
    try:
        tree = ProcessTree(root.pid, job_id="777001", exclude=(me.pid,))
        a = tree.sample()
        _time.sleep(0.6)
        b = tree.sample()
        assert b.nprocs == 2  # the root and the step
        pct = cpu_percent(a, b)
        assert pct is not None and pct > 40.0
        plain = ProcessTree(root.pid)
        a = plain.sample()
        _time.sleep(0.3)
        b = plain.sample()
        assert b.nprocs == 1 and (cpu_percent(a, b) or 0.0) < 20.0
    finally:
        for p in (root, step, other, me):
            p.kill()
            p.wait()
