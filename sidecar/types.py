"""The one place for the data that flows between sidecar's stages.

backend -> FileEvent -> tailer -> Chunk -> matcher -> LineMatch -> trigger -> Firing
-> action -> ActionResult -> event log (Record).

Everything here is a frozen dataclass or an enum; no module-level work, no I/O.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping as _AbcMapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping, Optional, Tuple


class FileEventKind(str, Enum):
    """The file event kinds of the Haskell Sidecar, plus the two internal ones."""

    CREATE = "create"
    MODIFY = "modify"
    ATTRIBUTE = "attribute"
    REMOVE = "remove"
    CLOSE = "close"
    UNKNOWN = "unknown"
    DELETE_DIRECTORY = "delete_directory"
    # internal: the kernel queue overflowed (or a poll found a gap): rescan everything
    OVERFLOW = "overflow"


#: the kinds a user may name in ``event_types``
USER_EVENT_KINDS: Tuple[str, ...] = (
    "create",
    "modify",
    "attribute",
    "remove",
    "close",
    "unknown",
    "delete_directory",
)


@dataclass(frozen=True)
class FileEvent:
    """Something happened to ``path`` (absolute). Produced by a backend."""

    kind: FileEventKind
    path: str
    is_dir: bool = False


@dataclass(frozen=True)
class Chunk:
    """Whole lines read from one file, as bytes.

    ``data`` holds complete lines, each ended by its terminator (``\\n``, ``\\r\\n`` or a lone
    ``\\r``), except: a line longer than the cap is cut (``cut`` is True and ``data`` is that
    one cut line without terminator), and at shutdown a held-back partial last line is flushed
    (``partial`` is True).
    ``offset`` is the file offset of ``data[0]``; ``lineno`` the 1-based number of its first
    line in the current incarnation of the file (a truncation or a new inode restarts at 1).
    ``dev`` and ``inode`` identify that incarnation (0 when unknown).
    """

    path: str
    data: bytes
    offset: int
    lineno: int
    cut: bool = False
    partial: bool = False
    dev: int = 0  # the identity of the file the bytes were read from (a rotation can
    inode: int = 0  # deliver the old file's last lines after the path names a new one)


@dataclass(frozen=True)
class LineMatch:
    """A regex matched one line. ``line`` is the decoded line without its terminator
    (invalid UTF-8 replaced); ``text`` is what the regex matched ($0); ``groups`` the
    positional groups ($1..$N, None for a group that did not take part); ``named`` the
    named groups."""

    path: str
    lineno: int
    line: str
    text: str
    groups: Tuple[Optional[str], ...] = ()
    named: Mapping[str, Optional[str]] = field(default_factory=dict)


class WatcherState(str, Enum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    TRIGGERED = "TRIGGERED"  # max_triggers reached
    DISABLED = "DISABLED"  # too many consecutive failures
    COMPLETED = "COMPLETED"  # the job (or the sidecar) ended


@dataclass(frozen=True)
class ActionResult:
    """The outcome of one action run."""

    action: str
    ok: bool
    exit_code: Optional[int] = None
    duration_s: float = 0.0
    output: str = ""
    error: Optional[str] = None
    timed_out: bool = False
    detail: Mapping[str, Any] = field(default_factory=dict)


def hostname() -> str:
    """This node's name, as ``socket.gethostname()`` gives it (both read the kernel's UTS
    nodename), without importing socket at start-up."""
    return os.uname().nodename


def utc_now_iso() -> str:
    return (
        _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )


@dataclass(frozen=True)
class Record:
    """One event-log record. ``kind`` is one of:

    start, stop                  the sidecar itself
    match                        a trigger fired (regex match, stale file, file event, timer)
    action                       an action finished (ok / exit_code / duration_s / output)
    skipped                      a firing was not acted on (rate limit, max_triggers, queue full,
                                 paused, condition error); ``reason`` says which
    state                        a watcher changed state (``state``, ``previous_state``)
    metric                       store_metric (``metric``, ``value``)
    log                          log_event (``message``, ``level``)
    warning, error               a problem the sidecar survived (``message``)

    Fields that do not apply are None and are left out of the serialised form.
    """

    kind: str
    ts: str = field(default_factory=utc_now_iso)
    job_id: Optional[str] = None
    host: Optional[str] = None
    pid: Optional[int] = None
    watcher: Optional[str] = None
    trigger: Optional[str] = None  # regex | stale | file_event | timer | manual
    file: Optional[str] = None
    line: Optional[str] = None
    lineno: Optional[int] = None
    event: Optional[str] = None  # file event kind (KIND)
    captures: Optional[Mapping[str, Optional[str]]] = None
    action: Optional[str] = None
    ok: Optional[bool] = None
    exit_code: Optional[int] = None
    duration_s: Optional[float] = None
    output: Optional[str] = None
    message: Optional[str] = None
    level: Optional[str] = None
    reason: Optional[str] = None
    state: Optional[str] = None
    previous_state: Optional[str] = None
    metric: Optional[str] = None
    value: Optional[Any] = None
    firing: Optional[int] = None  # id tying a match to the actions it caused
    extra: Optional[Mapping[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in RECORD_FIELDS:
            v = getattr(self, name)
            if v is not None:
                # (the ABC: isinstance against typing.Mapping runs typing's own checks)
                out[name] = dict(v) if isinstance(v, _AbcMapping) else v
        return out

RECORD_FIELDS: Tuple[str, ...] = (
    "ts",
    "kind",
    "job_id",
    "host",
    "pid",
    "watcher",
    "trigger",
    "file",
    "line",
    "lineno",
    "event",
    "captures",
    "action",
    "ok",
    "exit_code",
    "duration_s",
    "output",
    "message",
    "level",
    "reason",
    "state",
    "previous_state",
    "metric",
    "value",
    "firing",
    "extra",
)
