"""Where file events come from: kernel inotify, or polling (stat snapshots).

Both watch *directories* and report what happened to the entries in them as
:class:`~sidecar.types.FileEvent` (absolute paths). The engine reads the tailers of the files
named in the events; it never trusts an event for content, only as a hint to look.

Event kinds (both backends, as far as polling can see them):

=================  ==========================================================================
create             a file or directory appeared (IN_CREATE, IN_MOVED_TO)
modify             a file was written or truncated (IN_MODIFY)
attribute          metadata changed (IN_ATTRIB)
remove             a file disappeared (IN_DELETE, IN_MOVED_FROM)
close              a file open for writing was closed (IN_CLOSE_WRITE); inotify only.
                   Closes after reading (IN_CLOSE_NOWRITE) are not watched: every ``cat`` or
                   ``grep`` would wake the sidecar, and an action reading the file it fires
                   on would fire itself forever (the Haskell Sidecar's "close" is also
                   close-after-write only)
delete_directory   a directory disappeared: a subdirectory deleted or moved away, or a watched
                   directory itself (its watch is then gone; ``watch_dir`` it again to re-add)
unknown            anything else (IN_UNMOUNT)
overflow           events were lost (the kernel queue overflowed): rescan the directories
                   and read every file
=================  ==========================================================================

Recursive watches add the subdirectories created later themselves, and emit ``create`` for
the files already inside a new subdirectory (they may have been created before its watch
was added; so a ``create`` can come twice: the engine treats it as idempotent). Adjacent
identical events in one batch are merged, as the kernel itself does.

:func:`make_backend` with ``"auto"`` returns inotify when it works, with polling for the
directories inotify cannot take (watch limit reached) or cannot follow (on a network or
parallel filesystem -- NFS, Lustre, GPFS, BeeGFS, CIFS ... -- inotify does not see the writes
made on other nodes; :mod:`sidecar.fstype` tells), and polling alone when inotify is
unavailable (kernel without it, too many inotify instances); the reason is logged.
The filesystem is looked at for the directories given to ``watch_dir``, not for each
subdirectory of a recursive watch.
"""

from __future__ import annotations

import errno as _errno
import os
import stat as _stat
import time
from typing import Any, Callable, Dict, List, Optional, Protocol, Set, Tuple

from sidecar.fsapi import OS_FS, FileSystem
from sidecar.log import get_logger
from sidecar.types import FileEvent, FileEventKind

__all__ = [
    "AutoBackend",
    "Backend",
    "BackendError",
    "InotifyBackend",
    "PollingBackend",
    "make_backend",
]

_log = get_logger(__name__)

K = FileEventKind


class BackendError(Exception):
    """A watch could not be set up. ``reason`` is for the user; ``errno`` when from the OS."""

    def __init__(self, reason: str, errno: Optional[int] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errno = errno


class Backend(Protocol):
    @property
    def name(self) -> str: ...  # "inotify" | "poll" | "inotify+poll"

    def watch_dir(self, path: str, recursive: bool) -> None: ...

    def fileno(self) -> Optional[int]: ...

    def poll_interval(self) -> Optional[float]: ...

    def read(self) -> List[FileEvent]: ...

    def close(self) -> None: ...


def _sysctl(name: str) -> str:
    try:
        with open(f"/proc/sys/fs/inotify/{name}") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _dedup(events: List[FileEvent]) -> List[FileEvent]:
    out: List[FileEvent] = []
    last = None
    for ev in events:
        if ev != last:
            out.append(ev)
            last = ev
    return out


# ---------------------------------------------------------------------------- inotify

# inotify flag values (linux/inotify.h); fixed by the kernel ABI
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_CLOSE_NOWRITE = 0x00000010
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000

WATCH_MASK = (
    IN_CREATE
    | IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_DELETE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)


def _default_inotify() -> Any:
    import inotify_simple

    if getattr(inotify_simple, "_libc", False) is None:
        # inotify_simple finds libc with ctypes.util.find_library("c"), which runs
        # `ldconfig -p` in a subprocess (~2 ms of CPU, and a process start: slow at nice 19
        # on a busy node). The C library is in the process's own symbol namespace already.
        import ctypes

        try:
            inotify_simple._libc = ctypes.CDLL(None, use_errno=True)
            inotify_simple._libc.inotify_init1  # noqa: B018 - fails here if absent
        except (OSError, AttributeError):
            inotify_simple._libc = None
    return inotify_simple.INotify(nonblocking=True)


class InotifyBackend:
    """Kernel inotify on directories. ``inotify_factory`` (tests) returns an object with
    ``add_watch(path, mask) -> wd``, ``rm_watch(wd)``, ``read(timeout=0) -> [(wd, mask,
    cookie, name)]``, ``fileno()``, ``close()`` (``inotify_simple.INotify`` by default).

    ``failed_dirs`` lists the subdirectories found while reading that could not be watched
    (watch limit); :class:`AutoBackend` polls them.
    """

    name = "inotify"

    def __init__(self, inotify_factory: Optional[Callable[[], Any]] = None) -> None:
        try:
            self._ino = (inotify_factory or _default_inotify)()
        except OSError as exc:
            if exc.errno == _errno.EMFILE:
                reason = (
                    "too many inotify instances for this user "
                    f"(fs.inotify.max_user_instances={_sysctl('max_user_instances')})"
                )
            elif exc.errno == _errno.ENOSYS:
                reason = "the kernel does not support inotify"
            elif exc.errno in (_errno.ENFILE, _errno.ENOMEM):
                reason = f"cannot create an inotify instance: {exc.strerror}"
            else:
                reason = f"inotify_init failed: {exc.strerror or exc}"
            raise BackendError(reason, exc.errno) from None
        except (ImportError, AttributeError, TypeError) as exc:  # no libc inotify_init1...
            raise BackendError(f"inotify is not available: {exc}") from None
        self._wd_path: Dict[int, str] = {}
        self._path_wd: Dict[str, int] = {}
        self._recursive: Set[str] = set()  # watched dirs whose new subdirs get watched
        self._roots: Set[str] = set()  # dirs watch_dir() was called for
        self.failed_dirs: List[str] = []
        self._warned_limit = False

    # -------------------------------------------------------------- watches
    def fileno(self) -> Optional[int]:
        return int(self._ino.fileno())

    def poll_interval(self) -> Optional[float]:
        return None

    def watch_dir(self, path: str, recursive: bool) -> None:
        path = os.path.abspath(path)
        if not os.path.isdir(path):
            raise BackendError(f"{path}: not an existing directory", _errno.ENOENT)
        added: List[int] = []
        try:
            self._add(path, recursive, added, strict=True, root=True)
            if recursive:
                self._walk(path, added, None, strict=True)
        except BackendError:
            for wd in added:  # leave no half-watched tree behind
                self._forget(wd, rm=True)
            raise
        self._roots.add(path)

    def _add(
        self, path: str, recursive: bool, added: List[int], strict: bool, root: bool = False
    ) -> bool:
        """Watch one directory. Returns False when it cannot be (gone, no permission; or the
        watch limit when not ``strict``, noted in ``failed_dirs``). Raises BackendError for
        the watch limit when ``strict``, and for any problem with a ``root``."""
        try:
            wd = int(self._ino.add_watch(path, WATCH_MASK))
        except OSError as exc:
            if exc.errno == _errno.ENOSPC:
                reason = (
                    "inotify watch limit reached "
                    f"(fs.inotify.max_user_watches={_sysctl('max_user_watches')}); "
                    'use backend = "poll" or raise the limit'
                )
                if strict:
                    raise BackendError(f"{path}: {reason}", exc.errno) from None
                if len(self.failed_dirs) < 10000:  # drained by AutoBackend
                    self.failed_dirs.append(path)
                if not self._warned_limit:
                    self._warned_limit = True
                    _log.error("cannot watch directory", directory=path, reason=reason)
                return False
            if exc.errno in (_errno.ENOENT, _errno.ENOTDIR):
                if root:
                    raise BackendError(f"{path}: not an existing directory", exc.errno) from None
                return False
            if root:
                raise BackendError(
                    f"{path}: cannot watch: {exc.strerror or exc}", exc.errno
                ) from None
            _log.warning("cannot watch directory", directory=path, problem=str(exc.strerror))
            return False
        old = self._wd_path.get(wd)
        if old is None:
            added.append(wd)
            self._wd_path[wd] = path
            self._path_wd[path] = wd
        elif old != path:  # the same directory under another name (symlink, bind mount)
            _log.debug("directory already watched", directory=path, as_=old)
            return False
        if recursive:
            self._recursive.add(path)
        return True

    def _walk(
        self, top: str, added: List[int], events: Optional[List[FileEvent]], strict: bool
    ) -> None:
        """Watch the subdirectories under ``top`` (already watched). With ``events``, also
        report what is in them (``create``), ``top``'s own files included."""
        stack = [top]
        while stack:
            d = stack.pop()
            try:
                with os.scandir(d) as it:
                    entries = list(it)
            except OSError:
                continue
            for e in entries:
                try:
                    is_dir = e.is_dir(follow_symlinks=False)
                except OSError:
                    continue
                if is_dir:
                    if e.path in self._path_wd:  # known: look for new ones below it
                        stack.append(e.path)
                        continue
                    ok = self._add(e.path, True, added, strict)
                    if events is not None:
                        events.append(FileEvent(K.CREATE, e.path, True))
                    if ok:
                        stack.append(e.path)
                    elif events is not None and not strict:
                        self._report_files(e.path, events)
                elif events is not None:
                    events.append(FileEvent(K.CREATE, e.path, False))

    def _report_files(self, d: str, events: List[FileEvent]) -> None:
        """``create`` for the files of an unwatched directory (it is polled from now on)."""
        try:
            with os.scandir(d) as it:
                for e in it:
                    try:
                        if not e.is_dir(follow_symlinks=False):
                            events.append(FileEvent(K.CREATE, e.path, False))
                    except OSError:
                        continue
        except OSError:
            pass

    def _forget(self, wd: int, rm: bool) -> None:
        path = self._wd_path.pop(wd, None)
        if path is None:
            return
        if self._path_wd.get(path) == wd:  # not when the path was watched again since
            del self._path_wd[path]
            self._recursive.discard(path)
            self._roots.discard(path)
        if rm:
            try:
                self._ino.rm_watch(wd)
            except OSError:
                pass

    def _forget_tree(self, path: str) -> None:
        """Drop the watches of ``path`` and of everything under it (it moved away: their
        events would carry wrong paths)."""
        prefix = path + os.sep
        for p, wd in list(self._path_wd.items()):
            if p == path or p.startswith(prefix):
                self._forget(wd, rm=True)

    # -------------------------------------------------------------- events
    def read(self) -> List[FileEvent]:
        try:
            raw = self._ino.read(timeout=0)
        except OSError as exc:
            _log.warning("reading inotify events failed", problem=str(exc))
            return []
        out: List[FileEvent] = []
        for wd, mask, _cookie, name in raw:
            if mask & IN_Q_OVERFLOW:
                out.append(FileEvent(K.OVERFLOW, ""))
                self._rescan(out)
                continue
            d = self._wd_path.get(wd)
            if d is None:  # a watch already dropped
                continue
            if mask & IN_IGNORED:
                self._forget(wd, rm=False)
                continue
            is_dir = bool(mask & IN_ISDIR)
            if not name:  # the watched directory itself
                if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                    root = d in self._roots
                    if mask & IN_MOVE_SELF:
                        self._forget_tree(d)
                    if root:
                        out.append(FileEvent(K.DELETE_DIRECTORY, d, True))
                elif mask & IN_ATTRIB:
                    out.append(FileEvent(K.ATTRIBUTE, d, True))
                elif mask & IN_UNMOUNT:
                    out.append(FileEvent(K.UNKNOWN, d, True))
                continue  # close/open of the directory itself: not interesting
            path = os.path.join(d, name)
            if mask & (IN_CREATE | IN_MOVED_TO):
                out.append(FileEvent(K.CREATE, path, is_dir))
                if is_dir and d in self._recursive:
                    added: List[int] = []
                    if self._add(path, True, added, strict=False):
                        self._walk(path, added, out, strict=False)
                    else:
                        self._report_files(path, out)
            elif mask & IN_MODIFY:
                out.append(FileEvent(K.MODIFY, path, is_dir))
            elif mask & (IN_CLOSE_WRITE | IN_CLOSE_NOWRITE):
                if not is_dir:
                    out.append(FileEvent(K.CLOSE, path, False))
            elif mask & IN_ATTRIB:
                out.append(FileEvent(K.ATTRIBUTE, path, is_dir))
            elif mask & (IN_DELETE | IN_MOVED_FROM):
                if is_dir:
                    if mask & IN_MOVED_FROM:
                        self._forget_tree(path)
                    out.append(FileEvent(K.DELETE_DIRECTORY, path, True))
                else:
                    out.append(FileEvent(K.REMOVE, path, False))
            else:
                out.append(FileEvent(K.UNKNOWN, path, is_dir))
        return _dedup(out)

    def _rescan(self, out: List[FileEvent]) -> None:
        """After an overflow: watch the subdirectories whose creation was lost."""
        for d in sorted(self._roots & self._recursive):
            if d in self._path_wd:
                added: List[int] = []
                self._walk(d, added, None, strict=False)
                for wd in added:  # report what the new directories hold
                    p = self._wd_path.get(wd)
                    if p is not None:
                        out.append(FileEvent(K.CREATE, p, True))
                        self._report_files(p, out)

    def close(self) -> None:
        try:
            self._ino.close()
        except OSError:
            pass
        self._wd_path.clear()
        self._path_wd.clear()


# ---------------------------------------------------------------------------- polling

# what a scan remembers of an entry: (is_dir, dev, inode, size, mtime_ns, ctime_ns)
_Sig = Tuple[bool, int, int, int, int, int]


class PollingBackend:
    """Compare stat snapshots of the watched directories at every :meth:`read`.

    Sees create / modify / attribute / remove / delete_directory (not close); a file
    replaced by another (new inode) is reported as remove + create. Symlinks are followed
    for files, not for directories (no loops). ``fs`` is the injected file system.
    """

    name = "poll"

    def __init__(self, interval: float = 1.0, *, fs: FileSystem = OS_FS) -> None:
        self._interval = max(0.01, float(interval))
        self._fs = fs
        self._roots: Dict[str, bool] = {}  # dir -> recursive
        self._snap: Dict[str, _Sig] = {}
        self._warned: Set[str] = set()

    def fileno(self) -> Optional[int]:
        return None

    def poll_interval(self) -> Optional[float]:
        return self._interval

    @property
    def watching(self) -> bool:
        return bool(self._roots)

    def watch_dir(self, path: str, recursive: bool, *, report_existing: bool = False) -> None:
        """Watch ``path``. ``report_existing``: the next :meth:`read` reports what is in it
        now as ``create`` (for a directory handed over from another backend)."""
        path = os.path.abspath(path)
        try:
            st = self._fs.stat(path)
        except OSError as exc:
            raise BackendError(f"{path}: {exc.strerror or exc}", exc.errno) from None
        if not _stat.S_ISDIR(st.st_mode):
            raise BackendError(f"{path}: not a directory", _errno.ENOTDIR)
        self._roots[path] = self._roots.get(path, False) or recursive
        if not report_existing:
            snap: Dict[str, _Sig] = {}
            self._scan_root(path, recursive, snap, self._snap)
            for p, sig in snap.items():
                self._snap.setdefault(p, sig)

    def _scan_root(
        self, root: str, recursive: bool, snap: Dict[str, _Sig], prev: Dict[str, _Sig]
    ) -> bool:
        """Add what is under ``root`` to ``snap``. False when ``root`` itself is gone."""
        stack = [root]
        fs = self._fs
        while stack:
            d = stack.pop()
            try:
                entries = list(fs.scandir(d))
            except (FileNotFoundError, NotADirectoryError):
                if d == root:
                    return False
                continue
            except OSError as exc:
                # unreadable for now: keep what we knew under it (no false removes)
                if d not in self._warned:
                    self._warned.add(d)
                    _log.warning("cannot list directory", directory=d, problem=str(exc.strerror))
                prefix = d + os.sep
                for p, sig in prev.items():
                    if p.startswith(prefix):
                        snap.setdefault(p, sig)
                continue
            self._warned.discard(d)
            for e in entries:
                p = e.path
                if p in snap:
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        snap[p] = (True, st.st_dev, st.st_ino, 0, st.st_mtime_ns, st.st_ctime_ns)
                        if recursive:
                            stack.append(p)
                        continue
                    st = e.stat()
                except OSError:  # vanished meanwhile, or a dangling symlink
                    continue
                snap[p] = (False, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return True

    def read(self) -> List[FileEvent]:
        prev = self._snap
        snap: Dict[str, _Sig] = {}
        out: List[FileEvent] = []
        gone_roots: List[str] = []
        for root, recursive in list(self._roots.items()):
            if not self._scan_root(root, recursive, snap, prev):
                gone_roots.append(root)
                del self._roots[root]
        gone = [p for p in prev if p not in snap]
        for p in reversed(gone):  # children before their directory
            out.append(FileEvent(K.DELETE_DIRECTORY if prev[p][0] else K.REMOVE, p, prev[p][0]))
        for root in gone_roots:
            out.append(FileEvent(K.DELETE_DIRECTORY, root, True))
        for p, sig in snap.items():
            old = prev.get(p)
            if old is None:
                out.append(FileEvent(K.CREATE, p, sig[0]))
            elif old[0] != sig[0] or old[1:3] != sig[1:3]:  # replaced by another inode
                out.append(FileEvent(K.DELETE_DIRECTORY if old[0] else K.REMOVE, p, old[0]))
                out.append(FileEvent(K.CREATE, p, sig[0]))
            elif sig[0]:
                if old[5] != sig[5] and old[4] == sig[4]:  # chmod etc., not a new entry
                    out.append(FileEvent(K.ATTRIBUTE, p, True))
            elif old[3] != sig[3] or old[4] != sig[4]:
                out.append(FileEvent(K.MODIFY, p, False))
            elif old[5] != sig[5]:
                out.append(FileEvent(K.ATTRIBUTE, p, False))
        self._snap = snap
        return out

    def close(self) -> None:
        self._roots.clear()
        self._snap.clear()


# ---------------------------------------------------------------------------- auto

_REMOTE_REASON = "inotify does not see writes made on other nodes"


def _default_remote_fs(path: str) -> Optional[str]:
    from sidecar.fstype import remote_fs

    return remote_fs(path)


def _ask_remote_fs(remote_fs: Callable[[str], Optional[str]], path: str) -> Optional[str]:
    """The network filesystem holding ``path``, None for a local one or when it cannot
    be told (then inotify is tried, as before)."""
    try:
        return remote_fs(path)
    except Exception as exc:
        _log.debug("cannot tell the filesystem type", directory=path, problem=str(exc))
        return None


class AutoBackend:
    """inotify, plus polling for the directories inotify cannot follow: those on a network
    or parallel filesystem (``remote_fs(path)`` names one: inotify does not see the writes
    made on other nodes) and those over the watch limit.

    ``choices`` maps each watched directory (absolute) to ``(backend, reason)``, backend
    "inotify" or "poll", for ``sidecar check`` and the status.
    """

    def __init__(
        self,
        inotify: InotifyBackend,
        poll_interval: float,
        log: Any = None,
        clock: Callable[[], float] = time.monotonic,
        remote_fs: Optional[Callable[[str], Optional[str]]] = None,
    ) -> None:
        self._ino = inotify
        self._poll = PollingBackend(poll_interval)
        self._log = log or _log
        self._clock = clock
        self._next_poll = 0.0
        self._remote_fs = remote_fs or _default_remote_fs
        self._warned_remote: Set[str] = set()
        self.choices: Dict[str, Tuple[str, str]] = {}

    @property
    def name(self) -> str:
        return "inotify+poll" if self._poll.watching else "inotify"

    def fileno(self) -> Optional[int]:
        return self._ino.fileno()

    def poll_interval(self) -> Optional[float]:
        return self._poll.poll_interval() if self._poll.watching else None

    def watch_dir(self, path: str, recursive: bool) -> None:
        path = os.path.abspath(path)
        fs = _ask_remote_fs(self._remote_fs, path)
        if fs is not None:
            self._poll.watch_dir(path, recursive)  # BackendError for a missing directory
            self.choices[path] = ("poll", f"{fs}: {_REMOTE_REASON}")
            if path not in self._warned_remote:
                self._warned_remote.add(path)
                self._log.warning(
                    "polling a directory on a network filesystem", directory=path, fs=fs
                )
            return
        try:
            self._ino.watch_dir(path, recursive)
        except BackendError as exc:
            if exc.errno != _errno.ENOSPC:
                raise
            self._log.warning(
                "polling a directory inotify cannot watch", directory=path, reason=exc.reason
            )
            self._poll.watch_dir(path, recursive)
            self.choices[path] = ("poll", exc.reason)
            return
        self.choices[path] = ("inotify", "local filesystem")

    def read(self) -> List[FileEvent]:
        out = self._ino.read()
        if self._ino.failed_dirs:
            for d in self._ino.failed_dirs:
                try:
                    self._poll.watch_dir(d, True, report_existing=True)
                except BackendError:
                    continue
                self._log.warning("polling a directory inotify cannot watch", directory=d)
            self._ino.failed_dirs.clear()
            self._next_poll = 0.0
        if self._poll.watching:
            now = self._clock()
            if now >= self._next_poll:
                self._next_poll = now + 0.9 * (self._poll.poll_interval() or 1.0)
                out.extend(self._poll.read())
        return out

    def close(self) -> None:
        self._ino.close()
        self._poll.close()


class _CheckedInotifyBackend(InotifyBackend):
    """inotify chosen by the user (backend = "inotify"): used on every directory, with a
    warning for those on a network filesystem (writes made on other nodes are not seen)."""

    def __init__(
        self,
        inotify_factory: Optional[Callable[[], Any]],
        log: Any,
        remote_fs: Optional[Callable[[str], Optional[str]]],
    ) -> None:
        super().__init__(inotify_factory)
        self._log = log or _log
        self._remote_fs = remote_fs or _default_remote_fs
        self._warned_remote: Set[str] = set()
        self.choices: Dict[str, Tuple[str, str]] = {}

    def watch_dir(self, path: str, recursive: bool) -> None:
        path = os.path.abspath(path)
        super().watch_dir(path, recursive)
        fs = _ask_remote_fs(self._remote_fs, path)
        if fs is None:
            self.choices[path] = ("inotify", "backend = inotify; local filesystem")
            return
        self.choices[path] = (
            "inotify",
            f"backend = inotify; {fs}: writes made on other nodes are not seen",
        )
        if path not in self._warned_remote:
            self._warned_remote.add(path)
            self._log.warning(
                "inotify on a network filesystem: writes made on other nodes will not be seen"
                ' (backend = "auto" polls it)',
                directory=path,
                fs=fs,
            )


def make_backend(
    kind: str,
    poll_interval: float,
    log: Any = None,
    *,
    inotify_factory: Optional[Callable[[], Any]] = None,
    remote_fs: Optional[Callable[[str], Optional[str]]] = None,
) -> Backend:
    """``kind``: "inotify" (BackendError when unavailable; a directory on a network
    filesystem gets a warning), "poll", or "auto" (inotify, falling back to polling --
    with the reason logged -- when inotify is unavailable, and polling the directories it
    cannot watch or follow: over the watch limit, or on a network filesystem).
    ``remote_fs(path) -> fs name or None`` (default :func:`sidecar.fstype.remote_fs`)."""
    log = log or _log
    if kind == "poll":
        return PollingBackend(poll_interval)
    if kind == "inotify":
        return _CheckedInotifyBackend(inotify_factory, log, remote_fs)
    if kind == "auto":
        try:
            ino = InotifyBackend(inotify_factory)
        except BackendError as exc:
            log.warning(
                "inotify unavailable: polling instead",
                reason=exc.reason,
                poll_interval=poll_interval,
            )
            return PollingBackend(poll_interval)
        return AutoBackend(ino, poll_interval, log, remote_fs=remote_fs)
    raise BackendError(f"unknown backend {kind!r} (expected auto, inotify or poll)")
