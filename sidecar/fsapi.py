"""The file-system boundary of the tailer and the polling backend.

Everything that touches files goes through a :class:`FileSystem`, so tests can inject
failures or a fake. :data:`OS_FS` is the real one; it looks ``os.*`` up at call time, so it
also works unchanged under pyfakefs (which patches the ``os`` module).
"""

from __future__ import annotations

import os
from typing import Iterator, Protocol


class FileSystem(Protocol):
    """The calls the tailer and the polling backend make. All raise ``OSError``."""

    def stat(self, path: str) -> os.stat_result: ...

    def open(self, path: str) -> int: ...  # read-only fd, close-on-exec, non-blocking

    def fstat(self, fd: int) -> os.stat_result: ...

    def read(self, fd: int, n: int) -> bytes: ...  # from the fd's current position

    def seek(self, fd: int, pos: int) -> None: ...  # absolute position

    def close(self, fd: int) -> None: ...

    def scandir(self, path: str) -> Iterator[os.DirEntry[str]]: ...


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


class OsFileSystem:
    """The real file system (``os`` functions, resolved at call time)."""

    def stat(self, path: str) -> os.stat_result:
        return os.stat(path)

    def open(self, path: str) -> int:
        return os.open(path, _OPEN_FLAGS)

    def fstat(self, fd: int) -> os.stat_result:
        return os.fstat(fd)

    def read(self, fd: int, n: int) -> bytes:
        return os.read(fd, n)

    def seek(self, fd: int, pos: int) -> None:
        os.lseek(fd, pos, os.SEEK_SET)

    def close(self, fd: int) -> None:
        os.close(fd)

    def scandir(self, path: str) -> Iterator[os.DirEntry[str]]:
        # a generator, so the directory fd is closed as soon as the listing is consumed
        with os.scandir(path) as it:
            yield from it


OS_FS: FileSystem = OsFileSystem()
