"""The state file's journal: a firing appends one line before its actions start; a reader
applies only the lines the state file does not hold yet."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sidecar import state as stmod


def test_journal_alone_gives_positions_and_trigger_counts(tmp_path: Path) -> None:
    """A sidecar killed before it ever wrote its state file: the journal still says where
    each firing was and how many times each watcher fired."""
    sp = str(tmp_path / "s.json")
    j = stmod.Journal(stmod.journal_path(sp))
    j.append("/log/a", stmod.FileResume(1, 2, 100, 7, 9), "err", 1)
    j.append("/log/a", stmod.FileResume(1, 2, 100, 7, 12), "err", 2)
    j.append(None, None, "hang", 1)
    j.close()
    data = stmod.read_state(sp)
    assert data is not None
    assert data["files"]["/log/a"] == {
        "dev": 1, "inode": 2, "offset": 100, "lineno": 7, "fired_through": 12, "head": ""
    }
    assert data["watchers"]["err"]["triggers"] == 2
    assert data["watchers"]["hang"]["triggers"] == 1
    assert stmod.resume_positions(data)["/log/a"].fired_through == 12


def test_lines_the_state_file_holds_are_not_applied_again(tmp_path: Path) -> None:
    """Killed between writing the state file and emptying the journal: the journal's older
    lines must not move a position backwards; a newer line still applies."""
    sp = str(tmp_path / "s.json")
    j = stmod.Journal(stmod.journal_path(sp))
    j.append("/log/a", stmod.FileResume(1, 2, 100, 7, 9), "err", 1)
    stmod.write_atomic(sp, {
        "version": stmod.VERSION, "journal_seq": 1,
        "files": {"/log/a": {"dev": 1, "inode": 2, "offset": 5000, "lineno": 80,
                             "fired_through": 0}},
        "watchers": {"err": {"triggers": 1}},
    })
    data = stmod.read_state(sp)
    assert data is not None and data["files"]["/log/a"]["offset"] == 5000
    j.append("/log/a", stmod.FileResume(1, 2, 5000, 80, 85), "err", 2)
    data = stmod.read_state(sp)
    assert data is not None
    assert data["files"]["/log/a"] == {
        "dev": 1, "inode": 2, "offset": 5000, "lineno": 80, "fired_through": 85, "head": ""
    }
    assert data["watchers"]["err"]["triggers"] == 2
    j.clear()
    assert Path(stmod.journal_path(sp)).read_text() == ""
    j.close()


def test_a_line_cut_by_a_crash_is_ignored(tmp_path: Path) -> None:
    """The last journal line may be cut short by a crash: it is skipped, the rest read."""
    sp = str(tmp_path / "s.json")
    jp = Path(stmod.journal_path(sp))
    good = json.dumps([1, "/log/a", 1, 2, 10, 1, 1, "err", 1])
    jp.write_text(good + "\n" + good[:-9])
    data = stmod.read_state(sp)
    assert data is not None and data["files"]["/log/a"]["fired_through"] == 1
    assert data["journal_seq"] == 1


def test_pending_firings_follow_their_marks(tmp_path: Path) -> None:
    """A journaled firing is pending from its first action; an `S` mark moves it past the
    action that started (never started again); a `D` mark (all done) removes it; marks the
    state file already holds change nothing."""
    sp = str(tmp_path / "s.json")
    j = stmod.Journal(stmod.journal_path(sp))
    j.append(None, None, "w", 1, "", ("r1:1", {"watcher": "w", "line": "a"}))
    j.append(None, None, "w", 2, "", ("r1:2", {"watcher": "w", "line": "b"}))
    j.append(None, None, "w", 3, "", ("r1:3", {"watcher": "w", "line": "c"}))
    j.mark("S", "r1:1", 0)
    j.mark("D", "r1:1")
    j.mark("S", "r1:2", 0)
    j.mark("S", "r1:2", 0)  # twice: idempotent
    j.close()
    data = stmod.read_state(sp)
    assert data is not None
    pend = data["pending"]
    assert sorted(pend) == ["r1:2", "r1:3"]
    assert pend["r1:2"]["next"] == 1 and pend["r1:3"]["next"] == 0
    assert pend["r1:3"]["firing"] == {"watcher": "w", "line": "c"}


def test_a_resumed_firing_replaces_the_one_it_takes_over(tmp_path: Path) -> None:
    """A successor journals the predecessor's pending firing again under its own key, naming
    the key it replaces and the first action not started: a reader then has only the new one
    pending (with its marks, from that action on), never both, even when the state file
    still lists the old one (the successor was killed before it wrote its own)."""
    sp = str(tmp_path / "s.json")
    stmod.write_atomic(sp, {
        "version": stmod.VERSION, "journal_seq": 4,
        "pending": {"a:1": {"firing": {"watcher": "w", "line": "x"}, "next": 0},
                    "a:2": {"firing": {"watcher": "w", "line": "y"}, "next": 1}},
    })
    j = stmod.Journal(stmod.journal_path(sp))
    j.seq = 4
    j.append(None, None, "w", 1, "", ("b:1", {"watcher": "w", "line": "x"}), replaces="a:1")
    j.append(None, None, "w", 1, "", ("b:2", {"watcher": "w", "line": "y"}), replaces="a:2",
             start=1)
    j.mark("S", "b:1", 0)
    j.close()
    data = stmod.read_state(sp)
    assert data is not None
    pend = data["pending"]
    assert sorted(pend) == ["b:1", "b:2"]
    assert pend["b:1"]["next"] == 1 and pend["b:2"]["next"] == 1


def test_a_successor_killed_before_its_state_file_leaves_each_firing_pending_once(
    tmp_path: Path,
) -> None:
    """Sidecar A was killed with a firing of two commands whose first had started. B takes
    it over and is killed before it writes its state file: the state a third sidecar reads
    holds B's firing only, from the second command on, not A's as well (which ran every
    queued command twice in the SIGKILL torture test)."""
    import subprocess
    import sys

    from sidecar.engine import Engine
    from sidecar.model import ActionSpec, Config, RegexTrigger, Settings, Source, Watcher

    sp = tmp_path / "state.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stmod.write_atomic(str(sp), {
        "version": stmod.VERSION, "pid": dead.pid, "journal_seq": 0,
        "pending": {"A.1:7": {"firing": {"watcher": "w", "line": "HIT 1", "captures": {},
                                         "variables": {}}, "next": 1}},
    })
    cmd = {"command": "echo $MATCH >> fired.txt"}
    w = Watcher("w", Source(directory=str(tmp_path), filepath_regex=r"\.log$"),
                RegexTrigger(pattern="HIT"),
                (ActionSpec("run_command", cmd), ActionSpec("run_command", cmd)))
    st = Settings(backend="inotify", event_log=str(tmp_path / "ev.jsonl"), state_file=str(sp))
    b = Engine(Config((w,), st), cwd=str(tmp_path), environ={"PATH": "/usr/bin:/bin"},
               install_signals=False)
    b.save_state = lambda: None  # type: ignore[method-assign]  # killed before its first
    try:
        b.start()
        data = stmod.read_state(str(sp))
        assert data is not None
        pend = data["pending"]
        assert "A.1:7" not in pend
        (key,) = [k for k in pend if k.startswith(f"{os.getpid()}.")]
        assert pend[key]["next"] >= 1  # the first command is not run again
    finally:
        b.request_stop("test")
        b.run()
