"""sidecar.cli: the daemon's own process starts with the cyclic garbage collector off, and
turns it on again at ready (freezing what the start made), or as it was if the start ends
before ready."""

from __future__ import annotations

import argparse
import gc
from typing import Any, Iterator, List

import pytest

from sidecar import cli


@pytest.fixture
def restore_gc() -> Iterator[None]:
    frozen = gc.get_freeze_count()
    try:
        yield
    finally:
        if gc.get_freeze_count() > frozen:
            gc.unfreeze()  # what a test froze goes back to the collector
        gc.enable()


def test_the_collector_is_off_while_starting_and_on_after_ready(
    restore_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until ready the collector is off; at ready the objects made so far are frozen and
    the collector is on; it stays on after the run."""
    seen: List[Any] = []
    before = gc.get_freeze_count()

    def run(args: argparse.Namespace) -> int:
        seen.append(gc.isenabled())
        cli._gc_ready()
        seen.append((gc.isenabled(), gc.get_freeze_count() > before))
        return 0

    monkeypatch.setattr(cli, "cmd_run", run)
    assert cli._run_without_gc(argparse.Namespace()) == 0
    assert seen == [False, (True, True)]
    assert gc.isenabled()


def test_a_start_that_ends_before_ready_turns_the_collector_on_without_freezing(
    restore_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad config (an early return) or an exception before ready: the collector is on
    again and nothing was frozen."""
    before = gc.get_freeze_count()
    monkeypatch.setattr(cli, "cmd_run", lambda args: cli.EXIT_CONFIG)
    assert cli._run_without_gc(argparse.Namespace()) == cli.EXIT_CONFIG
    assert gc.isenabled() and gc.get_freeze_count() == before

    def boom(args: argparse.Namespace) -> int:
        raise OSError("no inotify")

    monkeypatch.setattr(cli, "cmd_run", boom)
    with pytest.raises(OSError):
        cli._run_without_gc(argparse.Namespace())
    assert gc.isenabled() and gc.get_freeze_count() == before
    cli._gc_ready()  # a later ready of an in-process run: nothing held, nothing frozen
    assert gc.get_freeze_count() == before


def test_a_collector_turned_off_by_the_caller_stays_off(
    restore_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program that turned the collector off itself finds it off afterwards, and nothing
    is frozen for it."""
    before = gc.get_freeze_count()

    def run(args: argparse.Namespace) -> int:
        cli._gc_ready()
        return 0

    monkeypatch.setattr(cli, "cmd_run", run)
    gc.disable()
    assert cli._run_without_gc(argparse.Namespace()) == 0
    assert not gc.isenabled() and gc.get_freeze_count() == before
