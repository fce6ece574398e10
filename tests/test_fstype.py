"""sidecar.fstype: the statfs magic, the mount table, and the remote/local verdict."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import pytest

from sidecar import fstype
from sidecar.fstype import (
    LOCAL_FS_MAGIC,
    REMOTE_FS_MAGIC,
    describe,
    is_remote_name,
    mount_fstype,
    remote_fs,
    statfs_type,
)

# A mount table with the traps: an escaped space in a mount point, nested mounts, a
# mount point that is a string prefix of another directory, optional fields of varying
# number, and two mounts stacked on the same point (the later one is on top).
MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 27 0:50 / /home rw,relatime shared:20 master:3 - nfs4 srv:/export/home rw,vers=4.2
41 40 0:51 / /home/alice/fast\040scratch rw,relatime - lustre 10.0.0.1@o2ib:/lfs rw
42 27 0:52 / /scratch rw,relatime - gpfs scratchfs rw
43 42 0:53 / /scratch/local rw,relatime - xfs /dev/nvme0n1 rw
44 27 0:54 / /mnt/data rw - ext4 /dev/sdb1 rw
45 44 0:55 / /mnt/data rw - fuse.sshfs me@host:/data rw,user_id=0
46 27 0:56 / /work rw - fuse.fuse-overlayfs fuse-overlayfs rw
47 27 0:57 / /proj rw - beegfs beegfs_nodev rw
"""


@pytest.fixture
def mountinfo(tmp_path: Path) -> str:
    p = tmp_path / "mountinfo"
    p.write_text(MOUNTINFO)
    return str(p)


@pytest.mark.parametrize(
    "path,want",
    [
        ("/", "ext4"),
        ("/etc/passwd", "ext4"),
        ("/home", "nfs4"),
        ("/home/alice/run/slurm-1.out", "nfs4"),
        ("/home/alice/fast scratch", "lustre"),  # \040 is a space
        ("/home/alice/fast scratch/job/out.log", "lustre"),
        ("/home/alice/fast", "nfs4"),  # a string prefix of the mount point is not under it
        ("/scratch/x", "gpfs"),
        ("/scratch/local/x", "xfs"),  # nested: the longest mount point wins
        ("/scratch/localx", "gpfs"),
        ("/mnt/data/f", "fuse.sshfs"),  # stacked on the same point: the later one
        ("/homework", "ext4"),
    ],
)
def test_mount_fstype_longest_mount_point_wins(mountinfo: str, path: str, want: str) -> None:
    assert mount_fstype(path, mountinfo) == want


def test_mount_fstype_resolves_symlinks(mountinfo: str, tmp_path: Path) -> None:
    """A symlink is judged by where it points (os.path.realpath)."""
    link = tmp_path / "link"
    target = "/home/alice"
    try:
        link.symlink_to(target)
    except OSError:
        pytest.skip("cannot create a symlink here")
    assert mount_fstype(str(link / "x"), mountinfo) == "nfs4"


def test_mount_fstype_unreadable_table_and_garbage_lines(tmp_path: Path) -> None:
    assert mount_fstype("/", str(tmp_path / "missing")) is None
    bad = tmp_path / "bad"
    bad.write_text(
        "garbage\n1 2 3\n\n27 1 254:0 / / rw - ext4 /dev/vda rw\nno separator here at all x y z\n"
    )
    assert mount_fstype("/x", str(bad)) == "ext4"


def test_mount_fstype_of_this_machine_names_the_tmp_filesystem(tmp_path: Path) -> None:
    got = mount_fstype(str(tmp_path))
    assert got is not None and got.strip() == got and got != ""


def test_statfs_type_of_a_tmp_dir_is_a_local_filesystem(tmp_path: Path) -> None:
    """The real statfs(2) through ctypes: tmp is on a local filesystem here (the CI
    machine's disk or tmpfs), never a network one."""
    magic = statfs_type(str(tmp_path))
    assert magic is not None
    assert magic not in REMOTE_FS_MAGIC
    assert remote_fs(str(tmp_path)) is None


def test_statfs_type_matches_the_mount_table() -> None:
    """/proc is procfs: both ways of asking agree."""
    assert statfs_type("/proc") == 0x9FA0
    assert LOCAL_FS_MAGIC[0x9FA0] == "proc"
    assert mount_fstype("/proc/self") == "proc"


def test_statfs_type_missing_path_and_nul_are_none(tmp_path: Path) -> None:
    assert statfs_type(str(tmp_path / "nope")) is None
    assert statfs_type("bad\0path") is None


def test_statfs_type_unavailable_platform_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fstype, "_statfs_fn", False)
    assert statfs_type("/") is None


def test_remote_fs_magic_values_are_the_kernel_ones() -> None:
    """Spot checks against linux/magic.h and the filesystems' headers."""
    assert REMOTE_FS_MAGIC[0x6969] == "nfs"
    assert REMOTE_FS_MAGIC[0xFF534D42] == "cifs"
    assert REMOTE_FS_MAGIC[0x0BD00BD0] == "lustre"
    assert REMOTE_FS_MAGIC[0x47504653] == "gpfs"
    assert REMOTE_FS_MAGIC[0x19830326] == "beegfs"
    assert REMOTE_FS_MAGIC[0x00C36400] == "ceph"
    assert REMOTE_FS_MAGIC[0x65735546] == "fuse"
    assert not set(REMOTE_FS_MAGIC) & set(LOCAL_FS_MAGIC)


def _fixed(magic: Optional[int], mount: Optional[str]) -> dict:
    def statfs(path: str) -> Optional[int]:
        return magic

    def mnt(path: str) -> Optional[str]:
        return mount

    return {"statfs": statfs, "mount": mnt}


@pytest.mark.parametrize(
    "magic,mount,want",
    [
        (0x6969, "nfs4", "nfs4"),  # the mount table's name is more precise
        (0x6969, None, "nfs"),
        (0x6969, "ext4", "nfs"),  # the magic wins when the table disagrees
        (0x0BD00BD0, "lustre", "lustre"),
        (0xEF53, "nfs4", None),  # a known local magic: the table is not asked
        (0x65735546, "fuse.sshfs", "fuse.sshfs"),
        (0x65735546, "fuse.glusterfs", "fuse.glusterfs"),
        (0x65735546, "fuse.fuse-overlayfs", None),  # local FUSE
        (0x65735546, "fuse.somethingnew", "fuse.somethingnew"),  # unknown FUSE: remote
        (0x65735546, None, "fuse"),
        (0x12345678, "wekafs", "wekafs"),  # unknown magic: the table decides
        (0x12345678, "weirdlocalfs", None),
        (None, "nfs", "nfs"),  # no statfs: the table alone
        (None, "xfs", None),
        (None, None, None),
    ],
)
def test_remote_fs_verdict(magic: Optional[int], mount: Optional[str], want: Optional[str]) -> None:
    assert remote_fs("/some/dir", **_fixed(magic, mount)) == want


def test_remote_fs_known_local_magic_skips_the_mount_table() -> None:
    asked = []

    def mnt(path: str) -> Optional[str]:
        asked.append(path)
        return "nfs"

    assert remote_fs("/d", statfs=lambda p: 0x58465342, mount=mnt) is None
    assert asked == []


def test_remote_fs_never_raises() -> None:
    def boom(path: str) -> Optional[int]:
        raise OSError("stale file handle")

    def boom2(path: str) -> Optional[str]:
        raise RuntimeError("x")

    assert remote_fs("/d", statfs=boom, mount=lambda p: "nfs4") == "nfs4"
    assert remote_fs("/d", statfs=boom, mount=boom2) is None
    assert remote_fs("/d", statfs=lambda p: 0x6969, mount=boom2) == "nfs"


@pytest.mark.parametrize(
    "name,remote",
    [
        ("nfs", True),
        ("nfs4", True),
        ("cifs", True),
        ("smb3", True),
        ("lustre", True),
        ("gpfs", True),
        ("beegfs", True),
        ("ceph", True),
        ("fuse.glusterfs", True),
        ("fuse.sshfs", True),
        ("fuse.ceph-fuse", True),
        ("afs", True),
        ("9p", True),
        ("ext4", False),
        ("xfs", False),
        ("tmpfs", False),
        ("overlay", False),
        ("fuse.squashfuse", False),
        ("fuseblk", False),
    ],
)
def test_is_remote_name(name: str, remote: bool) -> None:
    assert is_remote_name(name) is remote


def test_describe_local_tmp_dir(tmp_path: Path) -> None:
    """A local directory: inotify, with the mount table's name of its filesystem."""
    assert describe(str(tmp_path)) == f"inotify ({mount_fstype(str(tmp_path))})"


def test_describe_remote(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fstype, "statfs_type", lambda p: 0x6969)
    monkeypatch.setattr(fstype, "remote_fs", lambda p: "nfs4")
    assert describe("/home/x") == (
        "polling (nfs4: inotify does not see writes made on other nodes)"
    )


def test_describe_falls_back_to_the_magic_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fstype, "remote_fs", lambda p: None)
    monkeypatch.setattr(fstype, "mount_fstype", lambda p: None)
    monkeypatch.setattr(fstype, "statfs_type", lambda p: 0x58465342)
    assert describe("/x") == "inotify (xfs)"
    monkeypatch.setattr(fstype, "statfs_type", lambda p: None)
    assert describe("/x") == "inotify (unknown filesystem)"


def test_import_does_not_load_ctypes_until_asked() -> None:
    """Start-up cost: ctypes is loaded by the first statfs, not by the import."""
    import subprocess
    import sys

    code = "import sys, sidecar.fstype; print('ctypes' in sys.modules)"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "False", out.stderr


def test_check_shows_the_backend_chosen_per_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sidecar check` lists each watched directory with the backend the daemon will use:
    polling, with the reason, for one on a network filesystem; inotify for a local one;
    a forced backend = "inotify" keeps inotify but warns."""
    import sidecar.fstype as fstype
    from sidecar.config import load_config
    from sidecar.report import describe_config

    local, remote = tmp_path / "local", tmp_path / "nfs"
    local.mkdir()
    remote.mkdir()
    real = fstype.remote_fs
    monkeypatch.setattr(
        fstype, "remote_fs", lambda p, **kw: "nfs4" if p.startswith(str(remote)) else real(p)
    )
    cfg_text = (
        f'[[regex_actions]]\ndirectory = "{local}"\nfilepath_regex = "x"\nline_regex = "E"\n'
        'cmd = "true"\n'
        f'[[stale_file_actions]]\ndirectory = "{remote}"\nfilepath_regex = "x"\ntimeout = 60\n'
        'cmd = "true"\n'
    )
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(cfg_text)
    ok, text = describe_config(load_config(str(cfg_file)), str(tmp_path))
    assert ok
    assert f"  {remote}: polling (nfs4: inotify does not see writes made on other nodes)" in text
    assert f"  {local}: inotify (" in text
    cfg_file.write_text('backend = "inotify"\n' + cfg_text)
    ok, text = describe_config(load_config(str(cfg_file)), str(tmp_path))
    assert f"  {remote}: inotify, as asked (warning: nfs4" in text
