"""A cache of validated configs, so that a sidecar starts without importing pydantic.

Validating a TOML config with pydantic costs about 60 ms of CPU and 9 MB of memory (the
import and the model build), nearly as much as everything else in a sidecar's start. At nice 19 on
a node whose cores the job saturates, that CPU becomes seconds of wall time during which the
job's output is not watched. So the validated result (the frozen dataclasses of
``sidecar.model``) is kept in ``$XDG_CACHE_HOME/sidecar`` (default ``~/.cache/sidecar``),
keyed by a hash of the config's bytes, its absolute path, the working directory and the
sidecar version. ``sidecar check config.toml`` (run before ``sbatch``, usually on a login
node sharing the home directory) fills it, and so does every run; the sidecar in the job then
starts from the cache. Any change to the file, the directory or the version misses the cache
and validates again.

The cache is a pickle, so it is only read from a directory owned by the user and not
writable by others, from a file owned by the user; anything unusual means a miss.
"""

from __future__ import annotations

import os
import pickle
import stat
from typing import Any, Callable, Optional

from sidecar import __version__
from sidecar.model import Config


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sidecar")


def _sha256() -> Any:
    """SHA-256 from CPython's own module when there is one: hashlib loads OpenSSL first,
    about 3 ms of every start."""
    try:
        from _sha2 import sha256  # type: ignore[import-not-found]  # Python >= 3.12
    except ImportError:
        try:
            from _sha256 import sha256  # type: ignore[import-not-found,no-redef]
        except ImportError:  # pragma: no cover - a build without it
            from hashlib import sha256  # type: ignore[assignment]
    return sha256()


def _key(path: str, data: bytes, cwd: str) -> str:
    h = _sha256()
    for part in (__version__.encode(), os.path.abspath(path).encode(), cwd.encode(), data):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return str(h.hexdigest())


def _safe(p: str, uid: int, is_dir: bool) -> bool:
    try:
        st = os.stat(p)
    except OSError:
        return False
    if st.st_uid != uid or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return False
    return stat.S_ISDIR(st.st_mode) if is_dir else stat.S_ISREG(st.st_mode)


def _entry(path: str, cwd: Optional[str]) -> Optional[str]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    return os.path.join(cache_dir(), _key(path, data, cwd or os.getcwd()) + ".pickle")


def lookup(path: str, cwd: Optional[str] = None) -> Optional[Config]:
    """The cached validated config for ``path`` as it is now, or None."""
    if os.environ.get("SIDECAR_NO_CACHE"):
        return None
    f = _entry(path, cwd)
    uid = os.getuid()
    if f is None or not (_safe(os.path.dirname(f), uid, True) and _safe(f, uid, False)):
        return None
    try:
        with open(f, "rb") as fh:
            cfg = pickle.load(fh)
    except Exception:
        return None
    return cfg if isinstance(cfg, Config) else None


def store(path: str, cfg: Config, cwd: Optional[str] = None) -> None:
    """Keep a config that validated. A cache that cannot be written is only slower."""
    if os.environ.get("SIDECAR_NO_CACHE"):
        return
    f = _entry(path, cwd)
    if f is None:
        return
    d = os.path.dirname(f)
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        if not _safe(d, os.getuid(), True):
            return
        tmp = f"{f}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(cfg, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, f)
    except Exception:
        pass


def load_cached(path: str, load: Callable[[str], Config], cwd: Optional[str] = None) -> Config:
    """``load(path)`` through the cache. ``load`` raises ConfigError for a bad config; such
    results are never cached."""
    cfg = lookup(path, cwd)
    if cfg is None:
        cfg = load(path)
        store(path, cfg, cwd)
    return cfg
