"""Runner: real /bin/sh processes, real signals, bounded waits."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import psutil
import pytest

from sidecar.runner import KILLED_STOPPING, NOT_STARTED_STOPPING, Runner, ShellJob
from sidecar.types import ActionResult
from tests.conftest import wait_until

ENV: Dict[str, str] = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def job(cmd: str, tag: Any = None, **kw: Any) -> ShellJob:
    kw.setdefault("env", ENV)
    return ShellJob(tag=tag, command=cmd, **kw)


class Collector:
    """A runner plus its wake events and collected results."""

    def __init__(self, **kw: Any) -> None:
        self.wakes = 0
        self.woken = threading.Event()
        kw.setdefault("max_concurrent", 2)
        kw.setdefault("queue_length", 10)
        kw.setdefault("output_cap", 4096)
        self.runner = Runner(wake=self._wake, **kw)
        self.got: Dict[Any, ActionResult] = {}

    def _wake(self) -> None:
        self.wakes += 1
        self.woken.set()

    def collect(self) -> Dict[Any, ActionResult]:
        for tag, res in self.runner.results():
            assert tag not in self.got
            self.got[tag] = res
        return self.got

    def wait(self, n: int, timeout: float = 10.0) -> Dict[Any, ActionResult]:
        wait_until(lambda: len(self.collect()) >= n, timeout)
        return self.got


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie waiting for a reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


@pytest.fixture
def col() -> Any:
    c = Collector()
    yield c
    c.runner.shutdown(0)


# -- basics ----------------------------------------------------------------------------------


def test_exit_code_ok_and_stdout_stderr_merged_in_order(col: Collector) -> None:
    r = col.runner.run_sync(job("echo out; echo err >&2; echo out2; exit 3"))
    assert (r.ok, r.exit_code, r.timed_out, r.error) == (False, 3, False, None)
    assert r.output == "out\nerr\nout2\n"
    ok = col.runner.run_sync(job("true", action="cancel_job"))
    assert (ok.ok, ok.exit_code, ok.action) == (True, 0, "cancel_job")
    assert ok.duration_s > 0


def test_stdin_is_dev_null(col: Collector) -> None:
    r = col.runner.run_sync(job("cat; echo rc=$?", timeout=5))
    assert r.output == "rc=0\n" and r.ok


def test_env_values_arrive_verbatim_and_are_never_executed(col: Collector, tmp_path: Any) -> None:
    marker = tmp_path / "pwned"
    values = {
        "SPACES": "a  b   c",
        "QUOTES": "it's \"quoted\" 'x'",
        "SUBST": f"$(touch {marker}) `touch {marker}` ${{HOME}}",
        "NEWLINES": "line1\nline2\n\nend",
        "SEMI": f"; touch {marker}; #",
    }
    env = dict(ENV, **values)
    names = list(values)
    cmd = "printf '%s\\0' " + " ".join(f'"${n}"' for n in names)
    r = col.runner.run_sync(job(cmd, env=env))
    assert r.ok, r
    assert r.output.split("\0")[:-1] == [values[n] for n in names]
    assert not marker.exists()


def test_env_is_the_full_environment_not_added_to_ours(col: Collector) -> None:
    os.environ["SIDECAR_TEST_LEAK"] = "leaked"
    try:
        r = col.runner.run_sync(job('printf %s "${SIDECAR_TEST_LEAK-unset}"', env={"A": "1"}))
    finally:
        del os.environ["SIDECAR_TEST_LEAK"]
    assert r.output == "unset"


def test_cwd_is_used(col: Collector, tmp_path: Any) -> None:
    r = col.runner.run_sync(job("pwd -P", cwd=str(tmp_path)))
    assert r.output.strip() == os.path.realpath(tmp_path)


def test_missing_cwd_gives_failed_result_not_exception(col: Collector, tmp_path: Any) -> None:
    missing = str(tmp_path / "nope")
    r = col.runner.run_sync(job("true", cwd=missing))
    assert not r.ok and r.exit_code is None and r.error and "cannot start" in r.error
    assert missing in r.error
    # the asynchronous path: accepted, then reported through results() with a wake
    assert col.runner.submit(job("true", tag="bad", cwd=missing))
    res = col.wait(1)["bad"]
    assert not res.ok and "cannot start" in (res.error or "")
    assert col.wakes >= 1
    assert col.runner.running() == 0


def test_nul_in_environment_is_a_failed_result(col: Collector) -> None:
    r = col.runner.run_sync(job("true", env={"A": "x\0y"}))
    assert not r.ok and "cannot start" in (r.error or "")


def test_killed_by_signal_is_a_negative_exit_code(col: Collector) -> None:
    r = col.runner.run_sync(job("kill -USR1 $$"))
    assert r.exit_code == -signal.SIGUSR1 and not r.ok and "signal" in (r.error or "")


def test_results_are_returned_once_with_their_tags_and_wake_is_called(col: Collector) -> None:
    for i in range(3):
        assert col.runner.submit(job(f"echo {i}", tag=("t", i)))
    got = col.wait(3)
    assert {k: v.output for k, v in got.items()} == {("t", i): f"{i}\n" for i in range(3)}
    assert col.wakes == 3
    assert col.runner.results() == []


# -- output cap ------------------------------------------------------------------------------


def test_huge_output_is_capped_read_to_the_end_and_counted() -> None:
    c = Collector(output_cap=1000)
    try:
        t0 = time.monotonic()
        r = c.runner.run_sync(job("head -c 5000000 /dev/zero | tr '\\0' a; echo tail >&2",
                                  timeout=30))
        assert time.monotonic() - t0 < 10
        assert r.ok and r.exit_code == 0
        assert r.output == "a" * 1000
        assert r.detail["output_truncated_bytes"] == 5_000_000 + len("tail\n") - 1000
    finally:
        c.runner.shutdown(0)


def test_output_cut_inside_a_utf8_character_drops_the_half_character() -> None:
    c = Collector(output_cap=5)
    try:
        r = c.runner.run_sync(job("printf 'ééé'"))  # 6 bytes: the cap cuts the third
        assert r.output == "éé" and r.detail["output_truncated_bytes"] == 1
        c.runner.output_cap = 100
        bad = c.runner.run_sync(job("printf 'a\\377b'"))
        assert bad.output == "a\ufffdb" and "output_truncated_bytes" not in bad.detail
    finally:
        c.runner.shutdown(0)


# -- timeouts and process groups ---------------------------------------------------------


def test_timeout_kills_the_whole_group_including_a_grandchild(col: Collector) -> None:
    t0 = time.monotonic()
    r = col.runner.run_sync(job("sleep 100 & echo $!; sleep 100", timeout=0.5))
    elapsed = time.monotonic() - t0
    grandchild = int(r.output.split()[0])
    try:
        assert r.timed_out and not r.ok and r.error and "timed out" in r.error
        assert r.exit_code == -signal.SIGTERM
        assert 0.5 <= elapsed < 2.0
        wait_until(lambda: gone(grandchild), 5)
    finally:
        kill_quietly(grandchild)


def test_command_ignoring_sigterm_is_killed_2s_later(col: Collector) -> None:
    assert col.runner.kill_after == 2.0  # the documented default
    t0 = time.monotonic()
    r = col.runner.run_sync(job("trap '' TERM; sleep 100 & echo $!; wait", timeout=0.3))
    elapsed = time.monotonic() - t0
    child = int(r.output.split()[0])
    try:
        assert r.timed_out and r.exit_code == -signal.SIGKILL
        assert 2.3 <= elapsed < 4.0
        wait_until(lambda: gone(child), 5)
    finally:
        kill_quietly(child)


def test_background_child_holding_the_pipe_does_not_keep_the_action_running(
    col: Collector,
) -> None:
    """The shell exits at once; its `sleep &` still holds stdout. The action ends after the
    linger (0.5 s), the leftover is terminated, the result is the shell's."""
    t0 = time.monotonic()
    r = col.runner.run_sync(job("sleep 100 & echo $!; echo done", timeout=60))
    elapsed = time.monotonic() - t0
    child = int(r.output.split()[0])
    try:
        assert r.ok and r.exit_code == 0 and not r.timed_out
        assert r.output.endswith("done\n")
        assert r.detail.get("killed_leftovers") is True
        assert elapsed < 2.0
        wait_until(lambda: gone(child), 5)
    finally:
        kill_quietly(child)


def test_background_child_with_redirected_output_is_left_alone(col: Collector) -> None:
    r = col.runner.run_sync(job("sleep 100 >/dev/null 2>&1 & echo $!"))
    child = int(r.output.split()[0])
    try:
        assert r.ok and "killed_leftovers" not in r.detail and r.duration_s < 1.0
        assert not gone(child)
    finally:
        kill_quietly(child)


def test_setsid_escapee_holding_the_pipe_cannot_hang_the_worker() -> None:
    """A grandchild that left the group (setsid) is out of killpg's reach (documented); the
    worker still finishes: it stops reading shortly after the SIGKILL of the group."""
    c = Collector(kill_after=0.2, linger=0.2)
    pid: Optional[int] = None
    try:
        t0 = time.monotonic()
        r = c.runner.run_sync(job("setsid sleep 100 & echo $!", timeout=60))
        pid = int(r.output.split()[0])
        assert r.ok and time.monotonic() - t0 < 3.0
        assert not gone(pid)  # escaped, as documented
    finally:
        if pid is not None:
            kill_quietly(pid)
        c.runner.shutdown(0)


# -- slots, queue, shutdown --------------------------------------------------------------


def test_queue_full_is_refused_and_nothing_is_lost() -> None:
    c = Collector(max_concurrent=1, queue_length=2)
    try:
        assert c.runner.submit(job("sleep 100", tag="run"))
        assert c.runner.submit(job("true", tag="q1"))
        assert c.runner.submit(job("true", tag="q2"))
        assert c.runner.submit(job("true", tag="q3")) is False
        assert (c.runner.running(), c.runner.queued()) == (1, 2)
        t0 = time.monotonic()
        res = dict(c.runner.shutdown(0))
        assert time.monotonic() - t0 < 2.0
        assert set(res) == {"run", "q1", "q2"}
        assert res["q1"].error == res["q2"].error == NOT_STARTED_STOPPING
        assert not res["run"].ok and res["run"].error == KILLED_STOPPING
        assert c.runner.submit(job("true")) is False  # stopped
    finally:
        c.runner.shutdown(0)


def test_at_most_max_concurrent_run_and_queued_jobs_follow_in_order(tmp_path: Any) -> None:
    c = Collector(max_concurrent=2, queue_length=10)
    log = tmp_path / "order"
    seen: List[int] = []
    try:
        for i in range(6):
            assert c.runner.submit(job(f"echo {i} >> {log}; sleep 0.2", tag=i))

        def sample() -> bool:
            seen.append(c.runner.running())
            return len(c.collect()) == 6

        wait_until(sample, 10, interval=0.005)
        assert max(seen) == 2
        order = [int(x) for x in log.read_text().split()]
        # FIFO: each pair starts when the previous pair frees the two slots (0.2 s later)
        assert [set(order[i:i + 2]) for i in (0, 2, 4)] == [{0, 1}, {2, 3}, {4, 5}]
        assert all(c.got[i].ok for i in range(6))
        assert "queued_s" not in c.got[0].detail and c.got[5].detail["queued_s"] >= 0.3
    finally:
        c.runner.shutdown(0)


def test_shutdown_gives_running_jobs_the_grace_period() -> None:
    c = Collector(max_concurrent=2)
    try:
        c.runner.submit(job("sleep 0.3; echo finished", tag="short"))
        c.runner.submit(job("sleep 100", tag="long"))
        t0 = time.monotonic()
        res = dict(c.runner.shutdown(1.0))
        elapsed = time.monotonic() - t0
        assert res["short"].ok and res["short"].output == "finished\n"
        assert res["long"].error == KILLED_STOPPING and not res["long"].ok
        assert 1.0 <= elapsed < 2.5
        assert c.runner.running() == 0
    finally:
        c.runner.shutdown(0)


def test_shutdown_sigkills_a_group_that_ignores_sigterm() -> None:
    c = Collector(kill_after=0.3)
    try:
        c.runner.submit(job("trap '' TERM; sleep 100", tag="stubborn"))
        wait_until(lambda: c.runner.running() == 1)
        time.sleep(0.1)  # let the shell install its trap (a real race, not logic)
        t0 = time.monotonic()
        res = dict(c.runner.shutdown(0))
        assert time.monotonic() - t0 < 2.0
        assert res["stubborn"].exit_code == -signal.SIGKILL
        assert res["stubborn"].error == KILLED_STOPPING
    finally:
        c.runner.shutdown(0)


def test_no_file_descriptor_or_thread_leak_over_many_jobs() -> None:
    c = Collector(max_concurrent=3, queue_length=100, idle_timeout=0.2)
    try:
        before = len(os.listdir("/proc/self/fd"))
        for i in range(60):
            assert c.runner.submit(job("echo x", tag=i))
        c.wait(60)
        assert all(r.ok for r in c.got.values())
        wait_until(lambda: len(os.listdir("/proc/self/fd")) <= before, 5)
        # idle workers leave after idle_timeout
        wait_until(lambda: not [t for t in threading.enumerate()
                                if t.name == "sidecar-action"], 5)
    finally:
        c.runner.shutdown(0)


def test_an_idle_worker_is_reused_for_the_next_job() -> None:
    c = Collector(max_concurrent=2, idle_timeout=30)
    try:
        c.runner.submit(job("true", tag=1))
        c.wait(1)
        wait_until(lambda: c.runner._idle == 1)
        n = sum(1 for t in threading.enumerate() if t.name == "sidecar-action")
        c.runner.submit(job("true", tag=2))
        c.wait(2)
        assert sum(1 for t in threading.enumerate() if t.name == "sidecar-action") == n == 1
    finally:
        c.runner.shutdown(0)
    wait_until(lambda: not [t for t in threading.enumerate() if t.name == "sidecar-action"], 5)


def test_a_failing_wake_callback_does_not_lose_results() -> None:
    def bad_wake() -> None:
        raise RuntimeError("boom")

    r = Runner(1, 1, 100, bad_wake)
    try:
        assert r.submit(job("echo hi", tag="x"))
        got: List[Tuple[Any, ActionResult]] = []
        wait_until(lambda: got.extend(r.results()) or got)
        assert got[0][1].output == "hi\n"
    finally:
        r.shutdown(0)


def test_no_timeout_when_timeout_is_zero(col: Collector) -> None:
    r = col.runner.run_sync(job("sleep 0.2; echo ok", timeout=0))
    assert r.ok and not r.timed_out and r.output == "ok\n"


def test_worker_threads_are_reused_between_jobs(monkeypatch: Any) -> None:
    """``submit`` hands a started process to an idle worker instead of starting a thread
    per job (a thread start costs the caller ~1 ms of GIL wait): 50 jobs run one after
    another start one worker thread. (The submit-to-exec latency itself is measured by
    ``make bench``, not here.)"""
    import sidecar.runner as runner_mod

    started: List[str] = []
    real = runner_mod.threading.Thread

    class CountingThread(real):  # type: ignore[misc, valid-type]
        def start(self) -> None:
            started.append(self.name)
            super().start()

    monkeypatch.setattr(runner_mod.threading, "Thread", CountingThread)
    c = Collector(max_concurrent=4, queue_length=100)
    try:
        for i in range(50):
            assert c.runner.submit(job("true", tag=i))
            c.wait(i + 1)
            # the worker must be back to idle before the next submit can reuse it
            wait_until(lambda: c.runner.running() == 0 and c.runner._idle >= 1, interval=0.001)
    finally:
        c.runner.shutdown(0)
    assert len(started) == 1, started


def test_without_pidfd_exit_timeout_and_leftovers_still_work(monkeypatch: Any) -> None:
    """Kernels < 5.3 have no pidfd: the worker polls waitid(WNOWAIT) instead."""
    import sidecar.runner as runner_mod

    monkeypatch.setattr(runner_mod, "_pidfd_open", lambda pid: None)
    c = Collector(kill_after=0.3)
    try:
        r = c.runner.run_sync(job("echo hi; exit 4"))
        assert (r.exit_code, r.output) == (4, "hi\n") and r.duration_s < 0.2
        r = c.runner.run_sync(job("sleep 100 & echo $!; sleep 100", timeout=0.3))
        assert r.timed_out and r.exit_code == -signal.SIGTERM
        wait_until(lambda: gone(int(r.output.split()[0])), 5)
        r = c.runner.run_sync(job("sleep 100 & echo $!", timeout=30))
        assert r.ok and r.detail.get("killed_leftovers") and r.duration_s < 2.0
        wait_until(lambda: gone(int(r.output.split()[0])), 5)
    finally:
        c.runner.shutdown(0)
