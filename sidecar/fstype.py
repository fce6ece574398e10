"""Which filesystem holds a path, and is it one that inotify cannot follow?

inotify reports the changes made through the local kernel. On a network or parallel
filesystem (NFS, Lustre, GPFS, BeeGFS, CIFS, CephFS ...) the writes made on *other* nodes
reach the file without passing through this kernel's VFS, so no event comes: a job whose
output is written by another node of the allocation (``srun`` over several nodes) is only
seen by polling. :func:`remote_fs` says which filesystem that is, from the ``statfs``
magic number first (one system call) and from ``/proc/self/mountinfo`` second.

FUSE is a single magic for local (fuse-overlayfs, squashfuse ...) and network (sshfs,
glusterfs, ceph-fuse, s3fs ...) filesystems: the mount table's subtype decides; a FUSE
filesystem not known to be local counts as remote (polling misses nothing).

``statfs`` on a hard-mounted NFS whose server does not answer blocks like any other access
to it.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, FrozenSet, List, Mapping, Optional, Tuple

__all__ = [
    "LOCAL_FS_MAGIC",
    "REMOTE_FS_MAGIC",
    "REMOTE_FS_NAMES",
    "describe",
    "is_remote_name",
    "mount_fstype",
    "remote_fs",
    "statfs_type",
]

#: statfs ``f_type`` -> name, for the filesystems on which inotify does not see the writes
#: made elsewhere (linux/magic.h and the filesystems' own headers)
REMOTE_FS_MAGIC: Mapping[int, str] = {
    0x6969: "nfs",
    0x517B: "smb",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x0BD00BD0: "lustre",
    0x47504653: "gpfs",
    0x19830326: "beegfs",  # also fhgfs, its former name
    0x00C36400: "ceph",
    0x5346414F: "afs",  # OpenAFS
    0x6B414653: "afs",  # kAFS, the kernel's AFS client
    0x01021997: "9p",
    0x20030528: "orangefs",  # pvfs2
    0xAAD7AAEA: "panfs",
    0x01161970: "gfs2",
    0x7461636F: "ocfs2",
    0x564C: "ncp",
    0x73757245: "coda",
    0x65735546: "fuse",  # local or remote: see the module docstring
}

#: common local filesystems (no mount table lookup needed for these)
LOCAL_FS_MAGIC: Mapping[int, str] = {
    0xEF53: "ext4",  # ext2/ext3/ext4 share it
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
    0x794C7630: "overlay",
    0x2FC12FC1: "zfs",
    0x858458F6: "ramfs",
    0xF2F52010: "f2fs",
    0x52654973: "reiserfs",
    0x3153464A: "jfs",
    0x73717368: "squashfs",
    0xCA451A4E: "bcachefs",
    0x4D44: "vfat",
    0x2011BAB0: "exfat",
    0x5346544E: "ntfs",
    0x7366746E: "ntfs3",
    0x9660: "iso9660",
    0x15013346: "udf",
    0x3434: "nilfs",
    0xF15F: "ecryptfs",
    0x958458F6: "hugetlbfs",
    0x9FA0: "proc",
    0x62656572: "sysfs",
}

_FUSE = 0x65735546

#: mount table type names of remote filesystems (FUSE ones are ``fuse.<subtype>``)
REMOTE_FS_NAMES: FrozenSet[str] = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "beegfs",
        "fhgfs",
        "cifs",
        "smb3",
        "smbfs",
        "smb2",
        "ceph",
        "afs",
        "9p",
        "pvfs2",
        "orangefs",
        "panfs",
        "gfs2",
        "ocfs2",
        "glusterfs",
        "ncpfs",
        "coda",
        "davfs",
        "wekafs",
        "vboxsf",
        "virtiofs",
        "fuse",
    }
)

# FUSE subtypes that are local: the files change only through this kernel
_LOCAL_FUSE: FrozenSet[str] = frozenset(
    {
        "fuse-overlayfs",
        "squashfuse",
        "squashfuse_ll",
        "lxcfs",
        "portal",
        "gvfsd-fuse",
        "encfs",
        "gocryptfs",
        "bindfs",
        "ntfs-3g",
        "appimage",
        "archivemount",
        "fuse-zip",
    }
)


def is_remote_name(fstype: str) -> bool:
    """Is this mount table type (``nfs4``, ``fuse.sshfs``, ``ext4`` ...) a filesystem on
    which inotify misses the writes made on other machines?"""
    t = fstype.strip().lower()
    if t in REMOTE_FS_NAMES:
        return True
    if t.startswith("fuse."):
        return t[5:] not in _LOCAL_FUSE
    return False


# ---------------------------------------------------------------------------- statfs

_statfs_fn: Any = None  # the libc function once loaded; False when unavailable

# architectures whose struct statfs starts with a C long f_type (glibc and musl)
_LONG_FIRST = frozenset(
    {"x86_64", "amd64", "aarch64", "arm64", "ppc64le", "riscv64", "i386", "i686", "armv7l"}
)


def _load_statfs() -> Any:
    global _statfs_fn
    if _statfs_fn is None:
        _statfs_fn = False
        try:
            import ctypes

            if sys.platform.startswith("linux") and os.uname().machine.lower() in _LONG_FIRST:
                libc = ctypes.CDLL(None, use_errno=True)
                fn = libc.statfs
                fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
                fn.restype = ctypes.c_int
                _statfs_fn = fn
        except (OSError, AttributeError, ImportError):
            _statfs_fn = False
    return _statfs_fn


def statfs_type(path: str) -> Optional[int]:
    """The ``f_type`` magic of the filesystem holding ``path`` (statfs(2)); None when the
    call fails (no such path, no permission) or is not available on this platform."""
    fn = _load_statfs()
    if not fn:
        return None
    import ctypes

    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    try:
        if fn(os.fsencode(path), buf) != 0:
            return None
    except (ValueError, TypeError):  # a NUL in the path
        return None
    return int(ctypes.c_long.from_buffer(buf).value) & 0xFFFFFFFF


# ---------------------------------------------------------------------------- mountinfo


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    if "\\" not in field:
        return field
    out: List[str] = []
    i = 0
    while i < len(field):
        c = field[i]
        if c == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            try:
                out.append(chr(int(field[i + 1 : i + 4], 8)))
                i += 4
                continue
            except ValueError:
                pass
        out.append(c)
        i += 1
    return "".join(out)


def _mounts(text: str) -> List[Tuple[str, str]]:
    """(mount point, fs type) per mountinfo line, in the file's order."""
    out: List[Tuple[str, str]] = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 10:
            continue
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if sep + 1 >= len(fields):
            continue
        out.append((_unescape(fields[4]), _unescape(fields[sep + 1])))
    return out


def _under(path: str, mount_point: str) -> bool:
    if mount_point == "/":
        return True
    mp = mount_point.rstrip("/")
    return path == mp or path.startswith(mp + "/")


def mount_fstype(path: str, mountinfo: str = "/proc/self/mountinfo") -> Optional[str]:
    """The type name (``ext4``, ``nfs4``, ``fuse.sshfs`` ...) of the mount holding
    ``path`` (symlinks resolved): the longest mount point that contains it, the last
    mounted one when several are stacked on the same point. None when the mount table
    cannot be read."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError:
        return None
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):
        real = os.path.abspath(path)
    best: Optional[Tuple[int, str]] = None
    for mp, fstype in _mounts(text):
        if _under(real, mp) and (best is None or len(mp.rstrip("/")) >= best[0]):
            best = (len(mp.rstrip("/")), fstype)
    return None if best is None else best[1]


# ---------------------------------------------------------------------------- the verdict


def remote_fs(
    path: str,
    *,
    statfs: Callable[[str], Optional[int]] = statfs_type,
    mount: Callable[[str], Optional[str]] = mount_fstype,
) -> Optional[str]:
    """The name of the network/parallel filesystem holding ``path`` (on which inotify does
    not see writes made on other nodes), or None for a local one. The statfs magic decides
    first (a common local one ends the question without reading the mount table); the
    mount table's type name second (and names FUSE filesystems). Never raises."""
    try:
        magic = statfs(path)
    except Exception:
        magic = None
    if magic is not None:
        name = REMOTE_FS_MAGIC.get(magic)
        if name is None and magic in LOCAL_FS_MAGIC:
            return None
        if name is not None:
            try:
                t = mount(path)
            except Exception:
                t = None
            if magic == _FUSE:
                if t is None:
                    return "fuse"
                return t if is_remote_name(t) else None
            # the mount table's name is more precise (nfs4 rather than nfs) when it agrees
            return t if t is not None and is_remote_name(t) else name
    try:
        t = mount(path)
    except Exception:
        return None
    return t if t is not None and is_remote_name(t) else None


def describe(path: str) -> str:
    """How sidecar's automatic backend follows ``path``, for ``sidecar check``:
    ``"inotify (ext4)"`` or ``"polling (nfs4: inotify does not see writes made on other
    nodes)"``."""
    fs = remote_fs(path)
    if fs is not None:
        return f"polling ({fs}: inotify does not see writes made on other nodes)"
    name = mount_fstype(path)
    if name is None:
        magic = statfs_type(path)
        name = LOCAL_FS_MAGIC.get(magic, "unknown filesystem") if magic is not None else None
    return f"inotify ({name or 'unknown filesystem'})"
