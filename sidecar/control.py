"""Talking to running sidecars: find them (their state files) and send them commands.

A command is a small JSON file renamed into the sidecar's control directory, which the
sidecar watches (inotify: it acts within milliseconds; polling: within a poll period).
Watchers are added to a running sidecar by dropping a TOML file into its drop-in directory
(``sidecar attach``); the sidecar reloads, and an invalid file is refused and logged.

inotify sees only changes made on the sidecar's own node: run these commands on the node
(``srun --overlap --jobid=JOBID sidecar pause NAME``) when the directory is on a shared
filesystem and you are elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from sidecar import state as stmod
from sidecar.types import hostname


@dataclass(frozen=True)
class Sidecar:
    state_path: str
    data: Dict[str, Any]

    @property
    def pid(self) -> int:
        return int(self.data.get("pid") or 0)

    @property
    def alive(self) -> bool:
        if not self.data.get("running"):
            return False
        if self.data.get("host") != hostname():
            return True  # another node: trust the file
        return stmod.pid_alive(self.pid)

    @property
    def control(self) -> Optional[str]:
        c = self.data.get("control")
        return str(c) if c else None

    @property
    def dropin(self) -> Optional[str]:
        d = self.data.get("dropin")
        return str(d) if d else None


def find(directory: str = ".", include_stopped: bool = False) -> List[Sidecar]:
    """Sidecars whose state files live in ``directory`` (the event log's directory, or its
    ``.sidecar`` subdirectory)."""
    out = []
    for path, data in stmod.iter_states(directory):
        sc = Sidecar(path, data)
        if include_stopped or sc.alive:
            out.append(sc)
    return out


def send(sc: Sidecar, cmd: str, watcher: Optional[str] = None) -> str:
    """Drop a command for one sidecar; returns the command file's path."""
    ctl = sc.control
    if not ctl:
        raise OSError(f"{sc.state_path}: this sidecar has no control directory")
    os.makedirs(ctl, exist_ok=True)
    name = f"{time.time():.6f}-{uuid.uuid4().hex[:8]}.json"
    tmp = os.path.join(ctl, "." + name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"cmd": cmd, "watcher": watcher, "from_pid": os.getpid()}, fh)
    final = os.path.join(ctl, name)
    os.replace(tmp, final)
    return final


def wait_taken(path: str, timeout: float = 5.0) -> bool:
    """True once the sidecar has taken the command (the file is gone)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not os.path.exists(path):
            return True
        time.sleep(0.02)
    return not os.path.exists(path)


def attach(sc: Sidecar, toml_file: str) -> str:
    """Copy a TOML file of watchers into a sidecar's drop-in directory."""
    d = sc.dropin
    if not d:
        raise OSError(f"{sc.state_path}: this sidecar takes no drop-in watchers")
    os.makedirs(d, exist_ok=True)
    base = os.path.basename(toml_file)
    if not base.endswith(".toml"):
        base += ".toml"
    tmp = os.path.join(d, "." + base + ".tmp")
    shutil.copyfile(toml_file, tmp)
    final = os.path.join(d, base)
    os.replace(tmp, final)
    return final


def status_rows(sidecars: List[Sidecar]) -> List[Dict[str, Any]]:
    rows = []
    for sc in sidecars:
        d = sc.data
        rows.append(
            {
                "state_file": sc.state_path,
                "pid": sc.pid,
                "host": d.get("host"),
                "job_id": d.get("job_id"),
                "running": sc.alive,
                "started": d.get("started"),
                "updated": d.get("updated"),
                "config": d.get("config"),
                "event_log": d.get("event_log"),
                "backend": d.get("backend"),
                "watchers": d.get("watchers") or {},
                "files": d.get("files") or {},
                "stop_reason": d.get("stop_reason"),
            }
        )
    return rows


def format_status(rows: List[Dict[str, Any]]) -> str:
    if not rows:
        return "no sidecar found (state files live in <event log dir>/.sidecar/)"
    out: List[str] = []
    for r in rows:
        head = (
            f"sidecar pid {r['pid']} on {r['host']}"
            + (f", job {r['job_id']}" if r["job_id"] else "")
            + (" — running" if r["running"] else f" — stopped ({r['stop_reason'] or 'gone'})")
        )
        out.append(head)
        out.append(f"  config: {r['config']}   events: {r['event_log']}   backend: {r['backend']}")
        out.append(f"  started {r['started']}, updated {r['updated']}")
        ws = r["watchers"]
        if ws:
            wn = max(len(n) for n in ws)
            out.append(
                f"  {'WATCHER'.ljust(wn)}  {'STATE':9}  {'TRIGGER':10}  MATCHES  FIRED  LAST"
            )
            for n, w in ws.items():
                out.append(
                    f"  {n.ljust(wn)}  {str(w.get('state')):9}  {str(w.get('trigger')):10}  "
                    f"{w.get('matches', 0):7}  {w.get('triggers', 0):5}  "
                    f"{w.get('last_event') or '-'}"
                )
        fs = r["files"]
        if fs:
            out.append("  FILE  OFFSET  LINE")
            for p, f in fs.items():
                out.append(f"  {p}  {f.get('offset')}  {f.get('lineno')}")
    return "\n".join(out)
