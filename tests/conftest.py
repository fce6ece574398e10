from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, TypeVar

import pytest

from sidecar.engine import Engine

T = TypeVar("T")


def wait_until(pred: Callable[[], T], timeout: float = 10.0, interval: float = 0.01) -> T:
    """Poll ``pred`` until it returns something truthy; fail the test after ``timeout`` s.
    For tests of real inotify / real processes only (logic tests inject a clock instead)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {pred}")
        time.sleep(interval)


# the SMTP and webhook protocol peers as fixtures (smtp_server, webhook_server)
pytest_plugins = ["tests.peers"]


# ---------------------------------------------------------------- an engine in a thread


def records(path: Path) -> List[Dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


class Running:
    def __init__(self, engine: Engine, thread: threading.Thread, log: Path) -> None:
        self.engine = engine
        self.thread = thread
        self.log = log

    def recs(self, kind: Optional[str] = None, **match: Any) -> List[Dict[str, Any]]:
        """The records of ``kind`` (all without) whose fields equal ``match``."""
        return [
            r
            for r in records(self.log)
            if (kind is None or r["kind"] == kind)
            and all(r.get(k) == v for k, v in match.items())
        ]

    def stop(self) -> None:
        self.engine.request_stop("test")
        self.thread.join(15)
        assert not self.thread.is_alive()


@pytest.fixture
def running() -> Iterator[List[Running]]:
    rs: List[Running] = []
    yield rs
    for r in rs:
        if r.thread.is_alive():
            r.stop()


REPO_ROOT = str(Path(__file__).resolve().parent.parent)


def run_fresh(code: str, path: Optional[List[str]] = None) -> subprocess.CompletedProcess[str]:
    """``python -c CODE`` in a fresh interpreter (what it imports is the point), with the
    repository and ``path`` alone on PYTHONPATH."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": os.pathsep.join([REPO_ROOT, *(path or [])]), "PATH": "/usr/bin:/bin"},
    )
