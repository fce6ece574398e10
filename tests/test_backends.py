"""Backends: real inotify event mapping, the polling snapshot diff (pyfakefs), and the
fallbacks of make_backend (failures injected through the inotify factory)."""

from __future__ import annotations

import errno
import os
import select
import shutil
from typing import Any, Callable, List, Optional, Set, Tuple

import pytest

from sidecar.backends import (
    AutoBackend,
    BackendError,
    InotifyBackend,
    PollingBackend,
    make_backend,
)
from sidecar.types import FileEvent, FileEventKind
from tests.conftest import wait_until

K = FileEventKind
Ev = Tuple[str, str, bool]  # (kind, path relative to the root, is_dir)


def rel(root: str, events: List[FileEvent]) -> List[Ev]:
    return [
        (e.kind.value, os.path.relpath(e.path, root) if e.path else "", e.is_dir) for e in events
    ]


class Collector:
    """Reads a backend until the wanted events arrived (bounded wait), keeps them all."""

    def __init__(self, backend: Any, root: str) -> None:
        self.b = backend
        self.root = root
        self.seen: List[Ev] = []

    def until(self, *want: Ev, timeout: float = 5.0) -> List[Ev]:
        def got() -> bool:
            self.seen += rel(self.root, self.b.read())
            return all(w in self.seen for w in want)

        wait_until(got, timeout=timeout)
        out, self.seen = self.seen, []
        return out

    def settle(self) -> List[Ev]:
        """Everything pending now (inotify delivers synchronously with the syscalls)."""
        out = self.seen + rel(self.root, self.b.read())
        self.seen = []
        return out


@pytest.fixture
def ino(tmp_path):  # type: ignore[no-untyped-def]
    b = InotifyBackend()
    yield b
    b.close()


# --------------------------------------------------------------------------- inotify


def test_inotify_maps_file_events_to_kinds(ino: InotifyBackend, tmp_path) -> None:
    root = str(tmp_path)
    ino.watch_dir(root, recursive=False)
    c = Collector(ino, root)
    f = tmp_path / "a.log"
    with open(f, "w") as fh:
        fh.write("x\n")
    assert c.settle() == [
        ("create", "a.log", False),
        ("modify", "a.log", False),
        ("close", "a.log", False),
    ]
    os.chmod(f, 0o600)
    assert c.settle() == [("attribute", "a.log", False)]
    with open(f) as fh:
        fh.read()
    assert c.settle() == []  # reading is not an event (no IN_CLOSE_NOWRITE, no feedback loop)
    os.rename(f, tmp_path / "b.log")
    assert c.settle() == [("remove", "a.log", False), ("create", "b.log", False)]
    os.truncate(tmp_path / "b.log", 0)
    assert c.settle() == [("modify", "b.log", False)]
    os.unlink(tmp_path / "b.log")
    assert c.settle() == [("remove", "b.log", False)]
    outside = tmp_path.parent / (tmp_path.name + "-outside")
    outside.write_text("moved in\n")
    os.rename(outside, tmp_path / "in.log")
    assert c.settle() == [("create", "in.log", False)]


def test_inotify_directory_events(ino: InotifyBackend, tmp_path) -> None:
    root = str(tmp_path)
    (tmp_path / "gone").mkdir()
    (tmp_path / "away").mkdir()
    ino.watch_dir(root, recursive=False)
    c = Collector(ino, root)
    (tmp_path / "sub").mkdir()
    assert c.settle() == [("create", "sub", True)]
    os.listdir(tmp_path / "sub")  # opening a directory is not a 'close' event
    os.listdir(tmp_path)
    assert c.settle() == []
    os.rmdir(tmp_path / "gone")
    assert c.settle() == [("delete_directory", "gone", True)]
    os.rename(tmp_path / "away", tmp_path.parent / (tmp_path.name + "-away"))
    assert c.settle() == [("delete_directory", "away", True)]
    (tmp_path / "sub" / "inner").write_text("x")  # not recursive: not seen
    assert c.settle() == []


def test_inotify_watched_directory_deleted_then_watched_again(
    ino: InotifyBackend, tmp_path
) -> None:
    d = tmp_path / "w"
    d.mkdir()
    ino.watch_dir(str(d), recursive=True)
    c = Collector(ino, str(d))
    shutil.rmtree(d)
    assert c.settle() == [("delete_directory", ".", True)]
    assert ino.read() == []
    with pytest.raises(BackendError):
        ino.watch_dir(str(d), recursive=True)  # gone: a clear error, no crash
    d.mkdir()
    ino.watch_dir(str(d), recursive=True)
    (d / "new.log").write_text("x\n")
    assert ("create", "new.log", False) in c.settle()


def test_inotify_watched_directory_moved_away_is_deleted_and_forgotten(
    ino: InotifyBackend, tmp_path
) -> None:
    d = tmp_path / "w"
    d.mkdir()
    ino.watch_dir(str(d), recursive=False)
    c = Collector(ino, str(d))
    moved = tmp_path / "moved"
    os.rename(d, moved)
    assert c.settle() == [("delete_directory", ".", True)]
    (moved / "x.log").write_text("x")  # its watch is gone: no event with a stale path
    assert c.settle() == []


def test_inotify_recursive_adds_new_subdirectories_and_reports_their_files(
    ino: InotifyBackend, tmp_path
) -> None:
    root = str(tmp_path)
    (tmp_path / "old").mkdir()
    ino.watch_dir(root, recursive=True)
    c = Collector(ino, root)
    (tmp_path / "old" / "o.log").write_text("o\n")
    assert ("create", "old/o.log", False) in c.settle()
    # created before its watch can exist: mkdir -p and files at once
    os.makedirs(tmp_path / "a" / "b" / "c")
    (tmp_path / "a" / "b" / "c" / "deep.log").write_text("d\n")
    (tmp_path / "a" / "top.log").write_text("t\n")
    got = c.settle()
    for want in [
        ("create", "a", True),
        ("create", "a/b", True),
        ("create", "a/b/c", True),
        ("create", "a/b/c/deep.log", False),
        ("create", "a/top.log", False),
    ]:
        assert want in got
    with open(tmp_path / "a" / "b" / "c" / "deep.log", "a") as fh:
        fh.write("more\n")
    assert c.settle() == [("modify", "a/b/c/deep.log", False), ("close", "a/b/c/deep.log", False)]
    shutil.rmtree(tmp_path / "a")
    got = c.settle()
    assert ("delete_directory", "a", True) in got
    assert ("remove", "a/b/c/deep.log", False) in got
    assert ino.read() == []


def test_inotify_subdirectory_moved_away_stops_reporting_under_old_path(
    ino: InotifyBackend, tmp_path
) -> None:
    root = tmp_path / "r"
    (root / "s" / "t").mkdir(parents=True)
    ino.watch_dir(str(root), recursive=True)
    c = Collector(ino, str(root))
    os.rename(root / "s", tmp_path / "elsewhere")
    assert c.settle() == [("delete_directory", "s", True)]
    (tmp_path / "elsewhere" / "t" / "x.log").write_text("x")
    assert c.settle() == []
    os.rename(tmp_path / "elsewhere", root / "back")  # moved in: watched again, contents reported
    got = c.settle()
    assert ("create", "back", True) in got and ("create", "back/t", True) in got
    assert ("create", "back/t/x.log", False) in got
    (root / "back" / "t" / "y.log").write_text("y")
    assert ("create", "back/t/y.log", False) in c.settle()


def test_inotify_fd_is_selectable_and_read_never_blocks(ino: InotifyBackend, tmp_path) -> None:
    ino.watch_dir(str(tmp_path), recursive=False)
    fd = ino.fileno()
    assert fd is not None and ino.poll_interval() is None
    assert select.select([fd], [], [], 0)[0] == []
    assert ino.read() == []  # nothing pending: returns at once
    (tmp_path / "x").write_text("x")
    assert select.select([fd], [], [], 5)[0] == [fd]
    assert ino.read()


def test_inotify_watch_dir_rejects_missing_or_file(ino: InotifyBackend, tmp_path) -> None:
    with pytest.raises(BackendError, match="not an existing directory"):
        ino.watch_dir(str(tmp_path / "nope"), recursive=False)
    (tmp_path / "f").write_text("")
    with pytest.raises(BackendError):
        ino.watch_dir(str(tmp_path / "f"), recursive=False)


def test_inotify_adjacent_duplicate_events_are_merged(ino: InotifyBackend, tmp_path) -> None:
    ino.watch_dir(str(tmp_path), recursive=False)
    with open(tmp_path / "a", "wb", buffering=0) as fh:
        for _ in range(50):
            fh.write(b"x\n")
    got = rel(str(tmp_path), ino.read())
    assert got.count(("modify", "a", False)) == 1


def _max_queued() -> int:
    try:
        with open("/proc/sys/fs/inotify/max_queued_events") as f:
            return int(f.read())
    except OSError:
        return 16384


def test_inotify_queue_overflow_gives_overflow_and_watches_missed_subdirs(
    ino: InotifyBackend, tmp_path
) -> None:
    """More distinct events than the kernel queue holds: one overflow event; a subdirectory
    created while events were being lost is watched after the rescan."""
    n = _max_queued() + 1000
    if n > 200000:
        pytest.skip("inotify queue too large to overflow quickly here")
    root = str(tmp_path)
    ino.watch_dir(root, recursive=True)
    with (
        open(tmp_path / "a", "wb", buffering=0) as fa,
        open(tmp_path / "b", "wb", buffering=0) as fb,
    ):
        for _ in range(n // 2 + 1):  # alternating files: the kernel cannot merge them
            fa.write(b"1")
            fb.write(b"2")
    os.makedirs(tmp_path / "late" / "deeper")
    (tmp_path / "late" / "deeper" / "x.log").write_text("x")
    got = rel(root, ino.read())
    assert ("overflow", "", False) in got
    assert ("create", "late/deeper/x.log", False) in got
    (tmp_path / "late" / "deeper" / "y.log").write_text("y")
    assert ("create", "late/deeper/y.log", False) in rel(root, ino.read())


# --------------------------------------------------------------------------- failures


class FakeInotify:
    """Wraps a real inotify instance; add_watch fails with ``fail_errno`` after ``ok`` calls."""

    def __init__(self, fail_errno: Optional[int] = None, ok: int = 0) -> None:
        import inotify_simple

        self.real = inotify_simple.INotify(nonblocking=True)
        self.fail_errno = fail_errno
        self.ok = ok
        self.removed: List[int] = []
        self.added: List[int] = []

    def add_watch(self, path: str, mask: int) -> int:
        if self.fail_errno is not None:
            if self.ok <= 0:
                raise OSError(self.fail_errno, os.strerror(self.fail_errno))
            self.ok -= 1
        wd = int(self.real.add_watch(path, mask))
        self.added.append(wd)
        return wd

    def rm_watch(self, wd: int) -> None:
        self.removed.append(wd)
        self.real.rm_watch(wd)

    def read(self, timeout: Optional[int] = None) -> Any:
        return self.real.read(timeout=timeout)

    def fileno(self) -> int:
        return int(self.real.fileno())

    def close(self) -> None:
        self.real.close()


def failing_init(code: int) -> Callable[[], Any]:
    def factory() -> Any:
        raise OSError(code, os.strerror(code))

    return factory


class RecLog:
    def __init__(self) -> None:
        self.records: List[Tuple[str, str, dict]] = []

    def _rec(self, level: str) -> Callable[..., None]:
        def f(msg: str, **kw: Any) -> None:
            self.records.append((level, msg, kw))

        return f

    def __getattr__(self, level: str) -> Callable[..., None]:
        return self._rec(level)


@pytest.mark.parametrize(
    "code,words",
    [
        (errno.EMFILE, "max_user_instances"),
        (errno.ENOSYS, "does not support"),
        (errno.ENOMEM, "cannot create"),
    ],
)
def test_inotify_init_failure_is_a_backend_error_with_reason(code: int, words: str) -> None:
    with pytest.raises(BackendError) as ei:
        InotifyBackend(failing_init(code))
    assert words in ei.value.reason and ei.value.errno == code


def test_watch_limit_is_a_clear_backend_error_and_leaves_no_watches(tmp_path) -> None:
    for i in range(3):
        (tmp_path / f"d{i}").mkdir()
    fake = FakeInotify(errno.ENOSPC, ok=2)  # root + one subdir, then the limit
    b = InotifyBackend(lambda: fake)
    with pytest.raises(BackendError) as ei:
        b.watch_dir(str(tmp_path), recursive=True)
    assert "watch limit" in ei.value.reason and "max_user_watches" in ei.value.reason
    assert ei.value.errno == errno.ENOSPC
    assert sorted(fake.removed) == sorted(fake.added) and len(fake.added) == 2
    b.close()


def test_make_backend_auto_falls_back_to_polling_with_logged_reason() -> None:
    log = RecLog()
    b = make_backend("auto", 0.5, log, inotify_factory=failing_init(errno.EMFILE))
    assert isinstance(b, PollingBackend) and b.name == "poll"
    assert b.poll_interval() == 0.5 and b.fileno() is None
    assert [r for r in log.records if r[0] == "warning" and "max_user_instances" in r[2]["reason"]]


def test_make_backend_explicit_kinds() -> None:
    with pytest.raises(BackendError):
        make_backend("inotify", 1.0, RecLog(), inotify_factory=failing_init(errno.ENOSYS))
    assert isinstance(make_backend("poll", 1.0, RecLog()), PollingBackend)
    b = make_backend("inotify", 1.0, RecLog())
    assert isinstance(b, InotifyBackend)
    b.close()
    b = make_backend("auto", 1.0, RecLog())
    assert isinstance(b, AutoBackend) and b.name == "inotify" and b.poll_interval() is None
    b.close()
    with pytest.raises(BackendError, match="unknown backend"):
        make_backend("fanotify", 1.0, RecLog())


def test_auto_polls_a_directory_over_the_watch_limit(tmp_path) -> None:
    (tmp_path / "ok").mkdir()
    (tmp_path / "full").mkdir()
    fake = FakeInotify(None)
    t = [0.0]
    b = AutoBackend(InotifyBackend(lambda: fake), 0.5, RecLog(), clock=lambda: t[0])
    b.watch_dir(str(tmp_path / "ok"), False)
    fake.fail_errno = errno.ENOSPC
    b.watch_dir(str(tmp_path / "full"), False)
    assert b.name == "inotify+poll" and b.poll_interval() == 0.5
    assert b.fileno() == fake.fileno()
    (tmp_path / "ok" / "a").write_text("a")
    (tmp_path / "full" / "b").write_text("b")
    got = rel(str(tmp_path), b.read())
    assert ("create", "ok/a", False) in got and ("create", "full/b", False) in got
    (tmp_path / "full" / "c").write_text("c")
    assert rel(str(tmp_path), b.read()) == []  # polled at most once per interval
    t[0] = 1.0
    assert ("create", "full/c", False) in rel(str(tmp_path), b.read())
    b.close()


def test_auto_polls_a_new_subdirectory_over_the_watch_limit(tmp_path) -> None:
    fake = FakeInotify(None)
    t = [0.0]
    b = AutoBackend(InotifyBackend(lambda: fake), 0.5, RecLog(), clock=lambda: t[0])
    b.watch_dir(str(tmp_path), True)
    fake.fail_errno = errno.ENOSPC
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "early.log").write_text("e")
    got = rel(str(tmp_path), b.read())
    assert ("create", "new", True) in got and ("create", "new/early.log", False) in got
    assert b.name == "inotify+poll"
    t[0] = 1.0
    (tmp_path / "new" / "later.log").write_text("l")
    assert ("create", "new/later.log", False) in rel(str(tmp_path), b.read())
    b.close()


# ------------------------------------------------------------------ network filesystems


def remote_for(*remote_dirs: str, fs: str = "nfs") -> Callable[[str], Optional[str]]:
    """A remote_fs that says ``fs`` for the given directories (and below), None elsewhere."""

    def remote_fs(path: str) -> Optional[str]:
        for d in remote_dirs:
            if path == d or path.startswith(d + os.sep):
                return fs
        return None

    return remote_fs


def test_auto_polls_a_directory_on_a_network_filesystem(tmp_path) -> None:
    """One directory "on NFS" is polled, the other gets inotify; writes in both are seen
    (the polled one at its next poll); the choice and its reason are kept and logged once
    per directory."""
    nfs, local = tmp_path / "nfs", tmp_path / "local"
    nfs.mkdir()
    local.mkdir()
    log = RecLog()
    t = [0.0]
    b = AutoBackend(InotifyBackend(), 0.5, log, clock=lambda: t[0], remote_fs=remote_for(str(nfs)))
    try:
        b.watch_dir(str(nfs), False)
        b.watch_dir(str(local) + "/", False)  # the path is normalised
        b.watch_dir(str(nfs), False)  # again: no second warning
        assert b.choices == {
            str(nfs): ("poll", "nfs: inotify does not see writes made on other nodes"),
            str(local): ("inotify", "local filesystem"),
        }
        warnings = [r for r in log.records if r[0] == "warning"]
        assert warnings == [
            (
                "warning",
                "polling a directory on a network filesystem",
                {"directory": str(nfs), "fs": "nfs"},
            )
        ]
        assert b.name == "inotify+poll" and b.poll_interval() == 0.5
        (local / "a.log").write_text("a\n")
        (nfs / "b.log").write_text("b\n")
        got = rel(str(tmp_path), b.read())  # the first read also polls
        assert ("create", "local/a.log", False) in got and ("create", "nfs/b.log", False) in got
        with open(nfs / "b.log", "a") as f:
            f.write("more\n")
        with open(local / "a.log", "a") as f:
            f.write("more\n")
        got = rel(str(tmp_path), b.read())
        assert ("modify", "local/a.log", False) in got  # inotify: at once
        assert ("modify", "nfs/b.log", False) not in got  # polled: not before its interval
        t[0] = 1.0
        assert ("modify", "nfs/b.log", False) in rel(str(tmp_path), b.read())
    finally:
        b.close()


def test_auto_remote_directory_that_does_not_exist_is_a_backend_error(tmp_path) -> None:
    b = AutoBackend(InotifyBackend(), 0.5, RecLog(), remote_fs=lambda p: "lustre")
    try:
        with pytest.raises(BackendError):
            b.watch_dir(str(tmp_path / "missing"), False)
        assert b.choices == {}
    finally:
        b.close()


def test_auto_remote_fs_failure_means_inotify(tmp_path) -> None:
    def broken(path: str) -> Optional[str]:
        raise OSError(errno.ESTALE, "stale file handle")

    b = AutoBackend(InotifyBackend(), 0.5, RecLog(), remote_fs=broken)
    try:
        b.watch_dir(str(tmp_path), False)
        assert b.choices[str(tmp_path)][0] == "inotify" and b.name == "inotify"
    finally:
        b.close()


def test_auto_real_filesystem_check_picks_inotify_for_a_tmp_dir(tmp_path) -> None:
    """The default remote_fs (real statfs): tmp is local on the test machines."""
    b = make_backend("auto", 0.5, RecLog())
    try:
        b.watch_dir(str(tmp_path), False)
        assert isinstance(b, AutoBackend)
        assert b.choices == {str(tmp_path): ("inotify", "local filesystem")}
    finally:
        b.close()


def test_auto_watch_limit_choice_is_recorded(tmp_path) -> None:
    fake = FakeInotify(errno.ENOSPC, ok=0)
    b = AutoBackend(InotifyBackend(lambda: fake), 0.5, RecLog(), remote_fs=lambda p: None)
    try:
        b.watch_dir(str(tmp_path), False)
        kind, reason = b.choices[str(tmp_path)]
        assert kind == "poll" and "watch limit" in reason
    finally:
        b.close()


def test_make_backend_auto_passes_remote_fs(tmp_path) -> None:
    b = make_backend("auto", 0.5, RecLog(), remote_fs=remote_for(str(tmp_path), fs="gpfs"))
    try:
        b.watch_dir(str(tmp_path), True)
        assert isinstance(b, AutoBackend) and b.name == "inotify+poll"
        assert b.choices[str(tmp_path)][0] == "poll"
    finally:
        b.close()


def test_forced_inotify_does_not_switch_but_warns(tmp_path) -> None:
    """backend = "inotify": a directory on a network filesystem keeps inotify (the user
    asked for it), with a warning that writes made on other nodes will not be seen."""
    log = RecLog()
    b = make_backend("inotify", 0.5, log, remote_fs=remote_for(str(tmp_path), fs="nfs4"))
    try:
        assert isinstance(b, InotifyBackend) and b.name == "inotify"
        b.watch_dir(str(tmp_path), False)
        b.watch_dir(str(tmp_path), False)
        warnings = [r for r in log.records if r[0] == "warning"]
        assert len(warnings) == 1
        assert "will not be seen" in warnings[0][1] and warnings[0][2]["fs"] == "nfs4"
        kind, reason = b.choices[str(tmp_path)]  # type: ignore[attr-defined]
        assert kind == "inotify" and "nfs4" in reason
        assert b.poll_interval() is None
        (tmp_path / "x.log").write_text("x")
        assert ("create", "x.log", False) in rel(str(tmp_path), b.read())
    finally:
        b.close()


def test_forced_poll_is_unchanged(tmp_path) -> None:
    asked: List[str] = []

    def remote_fs(path: str) -> Optional[str]:
        asked.append(path)
        return "nfs"

    b = make_backend("poll", 0.5, RecLog(), remote_fs=remote_fs)
    b.watch_dir(str(tmp_path), False)
    assert isinstance(b, PollingBackend) and asked == []
    b.close()


# --------------------------------------------------------------------------- polling


@pytest.fixture
def pfs(fs):  # type: ignore[no-untyped-def]
    fs.create_dir("/w/sub")
    fs.create_file("/w/existing.log", contents="old\n")
    fs.create_file("/w/sub/s.log", contents="s\n")
    return fs


def kinds(events: List[FileEvent]) -> Set[Ev]:
    return set(rel("/w", events))


def test_poll_existing_files_are_not_reported_and_quiet_means_no_events(pfs) -> None:
    b = PollingBackend(0.1)
    b.watch_dir("/w", recursive=True)
    assert b.read() == [] and b.read() == []
    assert b.fileno() is None and b.poll_interval() == 0.1


def test_poll_create_modify_attribute_remove(pfs) -> None:
    b = PollingBackend(0.1)
    b.watch_dir("/w", recursive=False)
    pfs.create_file("/w/new.log", contents="n\n")
    assert kinds(b.read()) == {("create", "new.log", False)}
    with open("/w/existing.log", "a") as f:
        f.write("more\n")
    assert kinds(b.read()) == {("modify", "existing.log", False)}
    os.utime("/w/existing.log", ns=(1, 1))  # same size, other mtime
    assert kinds(b.read()) == {("modify", "existing.log", False)}
    st = os.stat("/w/existing.log")
    os.chmod("/w/existing.log", 0o600)
    os.utime("/w/existing.log", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert kinds(b.read()) == {("attribute", "existing.log", False)}
    os.unlink("/w/new.log")
    assert kinds(b.read()) == {("remove", "new.log", False)}


def test_poll_replaced_file_is_remove_then_create(pfs) -> None:
    b = PollingBackend(0.1)
    b.watch_dir("/w", recursive=False)
    os.rename("/w/existing.log", "/w/existing.log.1")
    pfs.create_file("/w/existing.log", contents="fresh\n")
    got = rel("/w", b.read())
    assert got.index(("remove", "existing.log", False)) < got.index(
        ("create", "existing.log", False)
    )
    assert ("create", "existing.log.1", False) in got


def test_poll_recursive_subdirectories(pfs) -> None:
    b = PollingBackend(0.1)
    b.watch_dir("/w", recursive=True)
    pfs.create_file("/w/sub/deeper/d.log", contents="d\n")
    assert kinds(b.read()) == {
        ("create", "sub/deeper", True),
        ("create", "sub/deeper/d.log", False),
    }
    with open("/w/sub/s.log", "a") as f:
        f.write("x")
    assert kinds(b.read()) == {("modify", "sub/s.log", False)}
    shutil.rmtree("/w/sub")
    got = rel("/w", b.read())
    assert set(got) == {
        ("remove", "sub/s.log", False),
        ("remove", "sub/deeper/d.log", False),
        ("delete_directory", "sub/deeper", True),
        ("delete_directory", "sub", True),
    }
    assert got.index(("remove", "sub/deeper/d.log", False)) < got.index(
        ("delete_directory", "sub/deeper", True)
    )
    assert got[-1] == ("delete_directory", "sub", True)


def test_poll_not_recursive_ignores_subdirectory_contents(pfs) -> None:
    b = PollingBackend(0.1)
    b.watch_dir("/w", recursive=False)
    pfs.create_file("/w/sub/x.log")
    pfs.create_dir("/w/other")
    assert kinds(b.read()) == {("create", "other", True)}


def test_poll_watched_directory_deleted_then_watched_again(pfs) -> None:
    b = PollingBackend(0.1)
    b.watch_dir("/w", recursive=True)
    shutil.rmtree("/w")
    got = rel("/w", b.read())
    assert got[-1] == ("delete_directory", ".", True)
    assert ("remove", "existing.log", False) in got
    assert b.read() == []  # the watch is gone, no crash
    with pytest.raises(BackendError):
        b.watch_dir("/w", recursive=True)
    pfs.create_file("/w/again.log")
    b.watch_dir("/w", recursive=True)
    assert b.read() == []
    pfs.create_file("/w/after.log")
    assert kinds(b.read()) == {("create", "after.log", False)}


def test_poll_report_existing_announces_current_content(pfs) -> None:
    b = PollingBackend(0.1)
    b.watch_dir("/w", recursive=True, report_existing=True)
    assert kinds(b.read()) == {
        ("create", "existing.log", False),
        ("create", "sub", True),
        ("create", "sub/s.log", False),
    }


def test_poll_unlistable_directory_keeps_what_was_known(pfs) -> None:
    from sidecar.fsapi import OS_FS

    class FlakyFS:
        broken: Set[str] = set()

        def __getattr__(self, name: str) -> Any:
            return getattr(OS_FS, name)

        def scandir(self, path: str) -> Any:
            if path in self.broken:
                raise PermissionError(errno.EACCES, "denied", path)
            return OS_FS.scandir(path)

    flaky = FlakyFS()
    b = PollingBackend(0.1, fs=flaky)  # type: ignore[arg-type]
    b.watch_dir("/w", recursive=True)
    flaky.broken.add("/w/sub")
    assert b.read() == []  # no false 'remove' for sub/s.log
    flaky.broken.clear()
    pfs.create_file("/w/sub/t.log")
    assert kinds(b.read()) == {("create", "sub/t.log", False)}


def test_poll_watch_dir_rejects_missing_and_files(pfs) -> None:
    b = PollingBackend(0.1)
    with pytest.raises(BackendError):
        b.watch_dir("/nope", recursive=False)
    with pytest.raises(BackendError, match="not a directory"):
        b.watch_dir("/w/existing.log", recursive=False)


def test_default_inotify_starts_no_process_to_find_libc() -> None:
    """inotify_simple would run `ldconfig -p` (ctypes.util.find_library) to find libc: a
    process start, slow at nice 19 on a busy node. The backend hands it the C library of
    the process instead; watching still works."""
    import subprocess
    import sys

    code = (
        "import subprocess, tempfile, os\n"
        "started = []\n"
        "orig = subprocess.Popen.__init__\n"
        "def spy(self, *a, **k):\n"
        "    started.append(a[0] if a else k.get('args'))\n"
        "    return orig(self, *a, **k)\n"
        "subprocess.Popen.__init__ = spy\n"
        "from sidecar.backends import InotifyBackend\n"
        "b = InotifyBackend()\n"
        "d = tempfile.mkdtemp()\n"
        "b.watch_dir(d, False)\n"
        "open(os.path.join(d, 'x.log'), 'w').close()\n"
        "import select\n"
        "select.select([b.fileno()], [], [], 5)\n"
        "print(started, any(e.path.endswith('x.log') for e in b.read()))\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["[]", "True"]
