from __future__ import annotations

import time
from typing import Callable, TypeVar

import pytest

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
