"""Tailer: bytes -> whole lines. Logic tests run on pyfakefs (or an in-memory FileSystem for
the property test); a few run on the real file system."""

from __future__ import annotations

import errno
import os
import re
import types
from typing import Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from sidecar.tailer import Tailer, TailPosition, _count_lines
from sidecar.types import Chunk

LINE_RE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)")

P = "/data/out.log"


def lines_of(chunks: List[Chunk]) -> List[Tuple[int, int, str, bytes]]:
    """(offset, lineno, kind, content) per line; checks each chunk's internal consistency."""
    out: List[Tuple[int, int, str, bytes]] = []
    for ch in chunks:
        if ch.cut or ch.partial:
            out.append((ch.offset, ch.lineno, "cut" if ch.cut else "partial", ch.data))
            continue
        assert ch.data, "empty chunk"
        parts = LINE_RE.findall(ch.data)
        assert b"".join(parts) == ch.data, f"chunk does not end with a terminator: {ch.data!r}"
        off = ch.offset
        for i, part in enumerate(parts):
            out.append((off, ch.lineno + i, "line", part.rstrip(b"\r\n")))
            off += len(part)
    return out


def texts(chunks: List[Chunk]) -> List[bytes]:
    return [c for _, _, _, c in lines_of(chunks)]


def drain(t: Tailer, budget: int = 8 << 20) -> List[Chunk]:
    out: List[Chunk] = []
    for _ in range(100000):
        out += t.read(budget)
        if not t.more:
            return out
    raise AssertionError("more never became False")


def append(path: str, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


@pytest.fixture
def ffs(fs):  # type: ignore[no-untyped-def]
    fs.create_dir("/data")
    return fs


# --------------------------------------------------------------------------- lines


def test_partial_line_is_held_back_until_its_terminator(ffs) -> None:
    t = Tailer(P)
    assert t.read() == []
    append(P, b"one\ntwo\nthr")
    assert lines_of(t.read()) == [(0, 1, "line", b"one"), (4, 2, "line", b"two")]
    assert t.read() == []
    append(P, b"ee\n")
    assert lines_of(t.read()) == [(8, 3, "line", b"three")]
    assert t.position().offset == 14 and t.position().lineno == 4


def test_many_lines_come_in_one_chunk(ffs) -> None:
    append(P, b"".join(b"line %d\n" % i for i in range(1000)))
    chunks = Tailer(P).read()
    assert len(chunks) == 1
    assert texts(chunks) == [b"line %d" % i for i in range(1000)]


def test_crlf_split_across_reads_is_one_terminator(ffs) -> None:
    t = Tailer(P)
    append(P, b"a\r")
    first = t.read()
    assert lines_of(first) == [(0, 1, "line", b"a")]  # a \r at the end ends the line now
    append(P, b"\nb\r\n")
    assert lines_of(t.read()) == [(3, 2, "line", b"b")]  # the \n is not an empty line
    append(P, b"\n")
    assert lines_of(t.read()) == [(6, 3, "line", b"")]  # a real empty line


def test_lone_cr_progress_updates_are_lines(ffs) -> None:
    t = Tailer(P)
    append(P, b"10%\r20%\r30%\r40")
    assert texts(t.read()) == [b"10%", b"20%", b"30%"]
    append(P, b"%\rdone\n")
    assert lines_of(t.read()) == [(12, 4, "line", b"40%"), (16, 5, "line", b"done")]


def test_cr_then_other_byte_is_a_lone_cr(ffs) -> None:
    t = Tailer(P)
    append(P, b"x\r")
    assert texts(t.read()) == [b"x"]
    append(P, b"y\n")
    assert lines_of(t.read()) == [(2, 2, "line", b"y")]


def test_invalid_utf8_bytes_are_kept_and_offsets_exact(ffs) -> None:
    raw = b"ok \xff\xfe\n\xc3(\n\x00nul\n"
    append(P, raw)
    chunks = Tailer(P).read()
    assert b"".join(c.data for c in chunks) == raw
    assert lines_of(chunks) == [
        (0, 1, "line", b"ok \xff\xfe"),
        (6, 2, "line", b"\xc3("),
        (9, 3, "line", b"\x00nul"),
    ]


def test_flush_returns_the_partial_line_once(ffs) -> None:
    t = Tailer(P)
    append(P, b"a\nunterminated")
    assert texts(t.read()) == [b"a"]
    ch = t.flush()
    assert ch is not None and ch.partial and ch.data == b"unterminated"
    assert (ch.offset, ch.lineno) == (2, 2)
    assert t.flush() is None
    append(P, b" more\n")  # what follows the flushed part is its own line
    assert lines_of(t.read()) == [(14, 3, "line", b" more")]


# --------------------------------------------------------------------------- long lines


def test_long_line_is_cut_and_its_rest_dropped(ffs) -> None:
    append(P, b"short\n" + b"x" * 50 + b"\nafter\n")
    t = Tailer(P, max_line=10)
    assert lines_of(t.read()) == [
        (0, 1, "line", b"short"),
        (6, 2, "cut", b"x" * 10),
        (57, 3, "line", b"after"),
    ]


def test_line_of_exactly_max_line_is_not_cut(ffs) -> None:
    append(P, b"y" * 10 + b"\n" + b"z" * 11 + b"\n")
    t = Tailer(P, max_line=10)
    assert lines_of(t.read()) == [(0, 1, "line", b"y" * 10), (11, 2, "cut", b"z" * 10)]


def test_long_line_across_many_reads_keeps_memory_bounded(ffs) -> None:
    t = Tailer(P, max_line=100, chunk_size=64)
    append(P, b"head\n")
    got = t.read()
    for _ in range(200):
        append(P, b"q" * 1000)
        got += t.read()
        assert len(t._buf) <= 100  # never more than max_line held
    append(P, b"\r\nnext\n")
    got += t.read()
    assert lines_of(got) == [
        (0, 1, "line", b"head"),
        (5, 2, "cut", b"q" * 100),
        (200007, 3, "line", b"next"),
    ]


def test_cut_line_ending_in_cr_then_lf_in_next_read(ffs) -> None:
    t = Tailer(P, max_line=4)
    append(P, b"abcdefgh\r")
    assert lines_of(t.read()) == [(0, 1, "cut", b"abcd")]
    append(P, b"\nok\n")
    assert lines_of(t.read()) == [(10, 2, "line", b"ok")]


# --------------------------------------------------------------------------- budget


def test_budget_limits_one_read_and_more_says_so(ffs) -> None:
    data = b"".join(b"%05d\n" % i for i in range(2000))  # 12000 bytes
    append(P, data)
    t = Tailer(P, chunk_size=256)
    first = t.read(budget=1000)
    assert t.more
    assert sum(len(c.data) for c in first) <= 1000
    rest = drain(t, budget=1000)
    assert texts(first + rest) == [b"%05d" % i for i in range(2000)]
    assert t.read(budget=1000) == [] and not t.more


# --------------------------------------------------------------------------- truncation


def test_truncation_restarts_at_zero_and_flushes_the_old_partial(ffs) -> None:
    t = Tailer(P)
    append(P, b"1\n2\n3\npart")
    assert texts(t.read()) == [b"1", b"2", b"3"]
    with open(P, "wb") as f:
        f.write(b"new\n")
    assert lines_of(t.read()) == [(6, 4, "partial", b"part"), (0, 1, "line", b"new")]
    append(P, b"next\n")
    assert lines_of(t.read()) == [(4, 2, "line", b"next")]


def test_truncate_and_regrow_past_offset_is_detected_by_the_head(ffs) -> None:
    t = Tailer(P)
    append(P, b"old line one\nold line two\n")
    assert len(texts(t.read())) == 2
    with open(P, "wb") as f:  # truncated and rewritten longer before the next read
        f.write(b"NEW first line\nNEW second line\nNEW third line\n")
    assert texts(t.read()) == [b"NEW first line", b"NEW second line", b"NEW third line"]
    assert t.position().lineno == 4


class StaleSizeFS:
    """The OS file system, but stat() reports a size that lags behind (NFS attribute cache)."""

    def __init__(self) -> None:
        from sidecar.fsapi import OS_FS

        self.real = OS_FS
        self.size: Optional[int] = None

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.real, name)

    def stat(self, path: str):  # type: ignore[no-untyped-def]
        st = self.real.stat(path)
        if self.size is None:
            return st
        return types.SimpleNamespace(
            st_mode=st.st_mode,
            st_dev=st.st_dev,
            st_ino=st.st_ino,
            st_size=self.size,
            st_mtime_ns=st.st_mtime_ns,
        )


def test_stale_size_below_offset_is_not_taken_for_a_truncation(ffs) -> None:
    sfs = StaleSizeFS()
    t = Tailer(P, fs=sfs)  # type: ignore[arg-type]
    append(P, b"one\ntwo\n")
    assert texts(t.read()) == [b"one", b"two"]
    append(P, b"three\n")
    sfs.size = 4  # the size as an old cached attribute
    assert lines_of(t.read()) == [(8, 3, "line", b"three")]
    with open(P, "wb") as f:  # a real truncation with a stale (smaller) size still counts
        f.write(b"x\n")
    sfs.size = 1
    assert lines_of(t.read()) == [(0, 1, "line", b"x")]


class UnstableInodeFS(StaleSizeFS):
    """stat() gives another inode number every time (a file system without stable ones)."""

    n = 0

    def stat(self, path: str):  # type: ignore[no-untyped-def]
        st = self.real.stat(path)
        self.n += 1
        return types.SimpleNamespace(
            st_mode=st.st_mode,
            st_dev=st.st_dev,
            st_ino=1000 + self.n,
            st_size=st.st_size,
            st_mtime_ns=st.st_mtime_ns,
        )


def test_unstable_inode_numbers_do_not_cause_rereads(ffs) -> None:
    append(P, b"a\n")
    t = Tailer(P, fs=UnstableInodeFS())  # type: ignore[arg-type]
    assert texts(t.read()) == [b"a"]
    append(P, b"b\n")
    assert texts(t.read()) == [b"b"]
    assert t.read() == []
    with open(P, "wb") as f:
        f.write(b"c\n")
    assert lines_of(t.read()) == [(0, 1, "line", b"c")]


def test_plain_appends_are_not_mistaken_for_truncation(ffs) -> None:
    t = Tailer(P)
    for i in range(50):
        append(P, b"line %d\n" % i)
        assert texts(t.read()) == [b"line %d" % i]


# --------------------------------------------------------------------------- rotation


def test_rotation_reads_old_file_to_end_then_new_from_zero(ffs) -> None:
    t = Tailer(P)
    append(P, b"a1\n")
    assert texts(t.read()) == [b"a1"]
    append(P, b"a2\na-part")  # written before the rotation, not yet read
    os.rename(P, P + ".1")
    append(P, b"b1\n")
    got = lines_of(t.read())
    assert got == [
        (3, 2, "line", b"a2"),
        (6, 3, "partial", b"a-part"),
        (0, 1, "line", b"b1"),
    ]
    pos = t.position()
    assert pos.inode == os.stat(P).st_ino and pos.offset == 3


def test_deleted_file_is_read_to_end_then_recreated_file_from_zero(ffs) -> None:
    t = Tailer(P)
    append(P, b"x1\n")
    assert texts(t.read()) == [b"x1"]
    append(P, b"x2\n")
    os.unlink(P)
    assert texts(t.read()) == [b"x2"]
    assert t.read() == [] and t.read() == []  # missing: nothing, no error
    assert not t.is_open
    append(P, b"y1\n")
    assert lines_of(t.read()) == [(0, 1, "line", b"y1")]


def test_missing_file_then_created_is_read_from_zero_even_with_start_at_end(ffs) -> None:
    t = Tailer(P, start_at="end")
    assert t.read() == []
    assert t.position() == TailPosition(0, 0, 0, 1)
    append(P, b"first\n")
    assert texts(t.read()) == [b"first"]


def test_start_at_end_skips_existing_content_and_its_unfinished_line(ffs) -> None:
    append(P, b"old\nold unfinished")
    t = Tailer(P, start_at="end")
    assert t.read() == []
    append(P, b" still old\nnew\n")
    assert lines_of(t.read()) == [(29, 1, "line", b"new")]


def test_start_at_end_after_cr_skips_the_lf(ffs) -> None:
    append(P, b"old\r")
    t = Tailer(P, start_at="end")
    append(P, b"\nnew\n")
    assert texts(t.read()) == [b"new"]


def test_start_at_start_reads_existing_content(ffs) -> None:
    append(P, b"old\n")
    assert texts(Tailer(P).read()) == [b"old"]


# --------------------------------------------------------------------------- resume


def test_resume_same_file_continues_at_saved_offset(ffs) -> None:
    t = Tailer(P)
    append(P, b"a\nb\npartial")
    t.read()
    pos = t.position()
    t.close()
    assert pos.offset == 4 and pos.lineno == 3
    append(P, b" done\nc\n")
    t2 = Tailer(P, position=pos, start_at="end")
    assert lines_of(t2.read()) == [(4, 3, "line", b"partial done"), (17, 4, "line", b"c")]


def test_resume_after_cr_does_not_make_an_empty_line(ffs) -> None:
    t = Tailer(P)
    append(P, b"a\r")
    t.read()
    pos = t.position()
    append(P, b"\nb\n")
    assert lines_of(Tailer(P, position=pos).read()) == [(3, 2, "line", b"b")]


def test_resume_inside_a_cut_line_skips_to_its_end(ffs) -> None:
    t = Tailer(P, max_line=4)
    append(P, b"abcdefgh")
    assert lines_of(t.read()) == [(0, 1, "cut", b"abcd")]
    pos = t.position()
    append(P, b"ij\nk\n")
    assert lines_of(Tailer(P, max_line=4, position=pos).read()) == [(11, 2, "line", b"k")]


def test_resume_on_another_inode_starts_at_zero(ffs) -> None:
    append(P, b"a\nb\n")
    t = Tailer(P)
    t.read()
    pos = t.position()
    os.unlink(P)
    append(P, b"fresh\n")
    assert lines_of(Tailer(P, position=pos).read()) == [(0, 1, "line", b"fresh")]


def test_resume_on_a_shorter_file_starts_at_zero(ffs) -> None:
    append(P, b"aaaa\nbbbb\n")
    t = Tailer(P)
    t.read()
    pos = t.position()
    with open(P, "wb") as f:
        f.write(b"c\n")
    assert lines_of(Tailer(P, position=pos).read()) == [(0, 1, "line", b"c")]


# --------------------------------------------------------------------------- robustness


def test_directory_at_path_is_not_read(ffs) -> None:
    ffs.create_dir(P)
    t = Tailer(P)
    assert t.read() == [] and not t.is_open


def test_closed_tailer_reads_nothing(ffs) -> None:
    append(P, b"a\n")
    t = Tailer(P)
    t.close()
    assert t.read() == []
    t.close()  # twice is fine


class FailingFS:
    """The OS file system with chosen calls failing."""

    def __init__(self, fail: Dict[str, int]) -> None:
        from sidecar.fsapi import OS_FS

        self.real = OS_FS
        self.fail = fail

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        fn = getattr(self.real, name)

        def call(*a):  # type: ignore[no-untyped-def]
            if name in self.fail:
                raise OSError(self.fail[name], os.strerror(self.fail[name]))
            return fn(*a)

        return call


def test_unreadable_file_returns_nothing_then_recovers(tmp_path) -> None:
    p = str(tmp_path / "a.log")
    append(p, b"a\n")
    ffs = FailingFS({"open": errno.EACCES})
    t = Tailer(p, fs=ffs)
    assert t.read() == [] and t.read() == []
    del ffs.fail["open"]
    assert texts(t.read()) == [b"a"]


def test_read_error_does_not_raise(tmp_path) -> None:
    p = str(tmp_path / "a.log")
    append(p, b"a\n")
    ffs = FailingFS({})
    t = Tailer(p, fs=ffs)
    ffs.fail["read"] = errno.EIO
    assert t.read() == []
    del ffs.fail["read"]
    assert texts(t.read()) == [b"a"]


def test_stat_permission_error_keeps_reading_the_open_fd(tmp_path) -> None:
    p = str(tmp_path / "a.log")
    t = Tailer(p)
    append(p, b"a\n")
    assert texts(t.read()) == [b"a"]
    t._fs = FailingFS({"stat": errno.EACCES})
    append(p, b"b\n")
    assert texts(t.read()) == [b"b"]


def test_bad_start_at_is_rejected() -> None:
    with pytest.raises(ValueError):
        Tailer("/nonexistent", start_at="middle")


# --------------------------------------------------------------------------- real fs


def test_real_fs_rotation_truncation_and_recreate(tmp_path) -> None:
    p = str(tmp_path / "job.out")
    t = Tailer(p)
    with open(p, "ab", buffering=0) as f:
        f.write(b"a\nb\n")
        assert texts(t.read()) == [b"a", b"b"]
        f.truncate(0)
        f.write(b"c\n")  # O_APPEND: written at the new end, offset 0
    assert lines_of(t.read()) == [(0, 1, "line", b"c")]
    os.rename(p, p + ".1")
    append(p + ".1", b"late-old\n")  # still the old inode
    append(p, b"new\n")
    assert texts(t.read()) == [b"late-old", b"new"]
    os.unlink(p)
    assert t.read() == []
    append(p, b"again\n")
    assert lines_of(t.read()) == [(0, 1, "line", b"again")]
    t.close()


def test_real_fs_fifo_is_not_opened(tmp_path) -> None:
    p = str(tmp_path / "fifo")
    os.mkfifo(p)
    t = Tailer(p)  # opening a FIFO for reading would block or steal its data
    assert t.read() == [] and not t.is_open


def test_real_fs_large_file_exact_bytes(tmp_path) -> None:
    p = str(tmp_path / "big.log")
    data = b"".join(
        b"line %d \xff\r\n" % i if i % 7 else b"progress %d\r" % i for i in range(200000)
    )
    append(p, data)
    t = Tailer(p, chunk_size=65536)
    chunks = drain(t, budget=1 << 20)
    # every byte once, in order, except the terminators' \n skipped after a \r at a read end
    got = lines_of(chunks)
    want = [
        (m.start(), i + 1, "line", m.group().rstrip(b"\r\n"))
        for i, m in enumerate(LINE_RE.finditer(data))
    ]
    assert got == want


# --------------------------------------------------------------------------- property


class MemFS:
    """A tiny in-memory FileSystem (append-only files) for the property test."""

    def __init__(self) -> None:
        self.files: Dict[str, bytearray] = {}
        self.fds: Dict[int, List[object]] = {}
        self.mtime = 0

    def write(self, path: str, data: bytes) -> None:
        self.files.setdefault(path, bytearray()).extend(data)
        self.mtime += 1

    def _st(self, data: bytearray) -> types.SimpleNamespace:
        return types.SimpleNamespace(
            st_mode=0o100644, st_dev=1, st_ino=id(data), st_size=len(data), st_mtime_ns=self.mtime
        )

    def stat(self, path: str) -> types.SimpleNamespace:
        if path not in self.files:
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        return self._st(self.files[path])

    def open(self, path: str) -> int:
        self.stat(path)
        fd = len(self.fds) + 3
        self.fds[fd] = [self.files[path], 0]
        return fd

    def fstat(self, fd: int) -> types.SimpleNamespace:
        return self._st(self.fds[fd][0])  # type: ignore[arg-type]

    def read(self, fd: int, n: int) -> bytes:
        data, pos = self.fds[fd]
        out = bytes(data[pos : pos + n])  # type: ignore[index,operator]
        self.fds[fd][1] = pos + len(out)  # type: ignore[operator]
        return out

    def seek(self, fd: int, pos: int) -> None:
        self.fds[fd][1] = pos

    def close(self, fd: int) -> None:
        del self.fds[fd]


def reference(content: bytes, max_line: int) -> List[Tuple[int, int, str, bytes]]:
    """What a tailer must deliver for ``content`` (then flushed)."""
    out = []
    pos = 0
    for m in LINE_RE.finditer(content):
        text = m.group().rstrip(b"\r\n")
        kind = "cut" if len(text) > max_line else "line"
        out.append((m.start(), len(out) + 1, kind, text[:max_line]))
        pos = m.end()
    tail = content[pos:]
    if tail:
        out.append(
            (pos, len(out) + 1, "cut" if len(tail) > max_line else "partial", tail[:max_line])
        )
    return out


ALPHABET = hs.sampled_from([b"a", b"b", b"\n", b"\r", b"\r\n", b"\xff", b"xyz"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    writes=hs.lists(hs.lists(ALPHABET, max_size=30).map(b"".join), max_size=12),
    max_line=hs.integers(1, 12),
    chunk_size=hs.integers(1, 16),
    budget=hs.integers(1, 40),
    reads_between=hs.lists(hs.booleans(), min_size=12, max_size=12),
)
def test_property_every_line_exactly_once_whatever_the_splits(
    writes: List[bytes],
    max_line: int,
    chunk_size: int,
    budget: int,
    reads_between: List[bool],
) -> None:
    """Whatever the write/read/chunk/budget boundaries: the lines, cut lines and the final
    partial line are delivered once each, with exact offsets and line numbers."""
    fs = MemFS()
    fs.write(P, b"")
    t = Tailer(P, max_line=max_line, chunk_size=chunk_size, fs=fs)  # type: ignore[arg-type]
    got: List[Chunk] = []
    for i, w in enumerate(writes):
        fs.write(P, w)
        if reads_between[i]:
            got += t.read(budget)
    got += drain(t, budget)
    last: Optional[Chunk] = t.flush()
    if last is not None:
        got.append(last)
    assert lines_of(got) == reference(b"".join(writes), max_line)
    assert t.position().offset == len(b"".join(writes))


def _lines_ended(data: bytes) -> int:
    """The reference: walk the bytes; \\n, \\r\\n and a lone \\r each end a line."""
    n = i = 0
    while i < len(data):
        if data[i] == 0x0A:
            n += 1
        elif data[i] == 0x0D:
            n += 1
            if data[i + 1 : i + 2] == b"\n":
                i += 1
        i += 1
    return n


@settings(max_examples=300, deadline=None)
@given(hs.lists(hs.sampled_from([b"a", b"xyz", b"\n", b"\r", b"\r\n", b"\n\r", b"\xe2\x96\x88"])))
def test_count_lines_equals_a_byte_walk(pieces: List[bytes]) -> None:
    """_count_lines counts every terminator kind once, a \\r\\n as one line."""
    data = b"".join(pieces)
    assert _count_lines(data) == _lines_ended(data)


def test_count_lines_with_more_than_4096_carriage_returns() -> None:
    """A CRLF file and one of lone \\r progress updates past the find-loop's cap."""
    for data in (b"line\r\n" * 5000, b"10%\r" * 5000 + b"done\n", b"a\r\n\rb\r" * 3000):
        assert _count_lines(data) == _lines_ended(data)
