"""`sidecar replay` (dry runs over existing logs) and `sidecar convert` (script -> TOML)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from sidecar.cli import main
from sidecar.config import load_config_text
from sidecar.convert import conversion_notes, name_regex, table_name, to_toml
from sidecar.model import Watcher
from sidecar.replay import ReplaySummary, replay
from sidecar.script import load_script

SCRIPT = r"""#!/bin/bash
#SBATCH --job-name=train --output=logs/%x-%j.out --error=logs/%x-%j.err
#WATCHER pattern="CUDA out of memory" action=resubmit(modifications={"mem": "32G"}) max_triggers=1
#WATCHER_BEGIN
# name: loss_monitor
# pattern: "epoch (\d+).*loss: ([\d.]+)"
# captures: [epoch, loss]
# condition: float(loss) > 5.0
# output_type: both
# timer_mode_enabled: true
# timer_interval_seconds: 45
# actions:
#   - cancel_job(reason="Loss diverged at epoch $epoch, stopping")
#   - store_metric(name="loss", value="$loss")
#WATCHER_END
python train.py
"""


def _script(tmp_path: Path) -> Path:
    (tmp_path / "logs").mkdir()
    p = tmp_path / "job.sh"
    p.write_text(SCRIPT)
    return p


def test_replay_reports_firings_with_line_numbers_and_captures(tmp_path: Path) -> None:
    """Conditions and max_triggers apply; lines that match without firing are only shown
    with show_all; the first job-ending firing is noted."""
    cfg = load_script(str(_script(tmp_path)), environ={})
    log = tmp_path / "old.log"
    log.write_text(
        "epoch 1 loss: 0.5\nCUDA out of memory\nepoch 2 loss: 7.5\nCUDA out of memory\nepoch 3 loss: x\n"
    )
    s = ReplaySummary()
    hits = list(replay(cfg, [str(log)], s))
    assert [(h.watcher, h.lineno) for h in hits] == [("watcher-3", 2), ("loss_monitor", 3)]
    assert hits[1].captures == {"epoch": "2", "loss": "7.5"}
    assert s.ends_job_at == (str(log), 2, "watcher-3")
    everything = list(replay(cfg, [str(log)], show_all=True))
    notes = {(h.lineno, h.fired, h.note) for h in everything}
    assert (4, False, "max_triggers=1 reached") in notes  # second OOM line
    assert any(h.lineno == 1 and not h.fired for h in everything)


def test_replay_cli_prints_and_never_runs_actions(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    script = _script(tmp_path)
    log = tmp_path / "a.log"
    log.write_text("epoch 9 loss: 99\n")
    assert main(["replay", "--from-script", str(script), "-l", str(log)]) == 0
    out = capsys.readouterr().out
    assert f"{log}:1 [loss_monitor]" in out and "cancel_job" in out
    assert not (tmp_path / "sidecar-events.jsonl").exists()


def test_replay_gives_up_on_a_backtracking_line_and_says_where(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A replay applies regex_time_limit like the daemon: the evil line is named on stderr,
    the next line is still replayed."""
    (tmp_path / "c.toml").write_text(
        "regex_time_limit = 0.05\n[[regex_actions]]\nname = 'evil'\nfilepath_regex = 'x'\n"
        "line_regex = '(a|a?)+$'\ncmd = 'true'\n"
    )
    log = tmp_path / "a.log"
    log.write_text("a" * 40 + "!\na\n")
    assert main(["replay", str(tmp_path / "c.toml"), "-l", str(log)]) == 0
    out, err = capsys.readouterr()
    assert f"{log}:2 [evil]" in out and f"{log}:1 [evil]" not in out
    assert f"{log}:1 [evil]: gave up after regex_time_limit (0.05 s of CPU)" in err


def test_convert_round_trip_keeps_the_watchers(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Converting a script's watchers to TOML and loading that gives the same watchers; the
    TOML source matches the job's output files by name."""
    script = _script(tmp_path)
    monkeypatch.chdir(tmp_path)  # outside a job, output files are relative to where sbatch runs
    cfg = load_script(str(script), environ={})
    text = to_toml(cfg)
    back = load_config_text(text, "converted.toml", base_dir=str(tmp_path))
    strip = lambda w: dataclasses.replace(w, source=None, origin=None, interval=None, output_type=None)  # noqa: E731
    got = {w.name: strip(w) for w in back.watchers}
    want = {w.name: strip(w) for w in cfg.watchers}
    # stdout and stderr of the loss watcher are in one directory: one TOML watcher
    assert got == want
    loss = next(w for w in back.watchers if w.name == "loss_monitor")
    rx = re.compile(loss.source.filepath_regex or "")
    assert rx.search("train-123.out") and rx.search("train-123.err") and not rx.search("x.out")


def test_name_regex_turns_slurm_fields_into_wildcards() -> None:
    assert re.fullmatch(name_regex("slurm-%A_%4a.out"), "slurm-77_0003.out")
    assert re.fullmatch(name_regex("100%%-%j.log"), "100%-5.log")
    assert not re.fullmatch(name_regex("%x-%j.out"), "dir/x-1.out")


NEW_SCRIPT = r"""#!/bin/bash
#SBATCH --job-name=train --output=logs/%x-%j.out --error=logs/%x-%j.err
#WATCHER name=hosts pattern="host=(\S+) down" captures=[host] threshold=5/60 track_by=host suppress=10m
#WATCHER name=tb multiline=python_traceback action=log
#WATCHER name=tb2 multiline=python_traceback end_pattern="^Error" max_lines=20 output_type=both
#WATCHER name=blk pattern="^BEGIN" end_pattern="^END" max_lines=50 record_timeout=2s
#WATCHER name=hang trigger=stale timeout=20m max_cpu=5 grace=30m
#WATCHER name=alive trigger=stale timeout=1h require_alive=yes
#WATCHER name=end trigger=job_end condition="int(exit_code) != 0" action=notify_email(subject="exit $EXIT_CODE")
#WATCHER name=tl trigger=time_limit before=10m signal=SIGUSR2 action=resubmit
#WATCHER name=tl1 trigger=time_limit before=5m
#WATCHER name=tl0 trigger=time_limit before=10m signal=none
#WATCHER name=mem trigger=memory fraction=90% limit=1536M interval=30s max_triggers=2
#WATCHER name=mem0 trigger=memory fraction=0.5
#WATCHER name=gpu probe="nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits" pattern="^(\d+)" captures=[util] condition="int(util) < 5" threshold=3/15m interval=5m probe_timeout=20s timer_mode_enabled=true
#WATCHER name=df probe="df -P ." pattern="(\d+)%"
python train.py
"""


def _strip(w: Watcher) -> Watcher:
    """What TOML says differently: where files are (a name pattern), the origin, the
    script-only output_type, and the poll interval (reported as not carried)."""
    src = w.source if w.source.is_probe or w.trigger.kind in ("job_end", "time_limit",
                                                               "memory") else None
    return dataclasses.replace(w, source=src, origin=None, interval=None, output_type=None)


def test_convert_round_trip_carries_every_new_trigger_and_property(
    tmp_path: Path, monkeypatch  # type: ignore[no-untyped-def]
) -> None:
    """Script -> TOML -> load gives the same watchers for stale, job_end, time_limit,
    memory and probe watchers, thresholds and multi-line records (presets and custom);
    probes and job watchers keep their exact source; nothing is noted as lost."""
    (tmp_path / "logs").mkdir()
    script = tmp_path / "job.sh"
    script.write_text(NEW_SCRIPT)
    monkeypatch.chdir(tmp_path)
    cfg = load_script(str(script), environ={})
    assert conversion_notes(cfg) == []
    text = to_toml(cfg)
    assert "NOT CARRIED OVER" not in text
    back = load_config_text(text, "converted.toml", base_dir=str(tmp_path))
    got = {w.name: _strip(w) for w in back.watchers}
    want = {w.name: _strip(w) for w in cfg.watchers}
    assert got == want
    kinds = {w.name: table_name(w) for w in back.watchers}
    assert kinds == {
        "hosts": "regex_actions", "tb": "regex_actions", "tb2": "regex_actions",
        "blk": "regex_actions", "hang": "stale_file_actions", "alive": "stale_file_actions",
        "end": "job_end_actions", "tl": "time_limit_actions", "tl1": "time_limit_actions",
        "tl0": "time_limit_actions", "mem": "memory_actions", "mem0": "memory_actions",
        "gpu": "probe_actions", "df": "probe_actions",
    }
    assert 'limit = "1536M"' in text and 'multiline = "python_traceback"' in text
    assert "signal = false" in text


def test_convert_says_what_it_cannot_carry(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A watcher's own poll interval has no TOML form, and files in two directories make
    two TOML watchers: both are written as NOT CARRIED OVER comments, never dropped."""
    (tmp_path / "o").mkdir()
    (tmp_path / "e").mkdir()
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n#SBATCH -o o/%j.out -e e/%j.err\n"
        "#WATCHER name=p pattern=x interval=30\n"
        "#WATCHER name=two trigger=stale timeout=1m output_type=both\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_script(str(script), environ={})
    notes = conversion_notes(cfg)
    assert len(notes) == 2
    assert "'p': interval=30 (its poll period) is not carried" in notes[0]
    assert "'two' follows files in 2 directories: written as 2 watchers (two, two@2)" in notes[1]
    text = to_toml(cfg)
    for n in notes:
        assert f"# NOT CARRIED OVER: {n}" in text
    back = load_config_text(text, "c.toml", base_dir=str(tmp_path))
    assert [w.name for w in back.watchers] == ["p", "two", "two@2"]


def test_convert_cli_writes_new_triggers(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "logs").mkdir()
    script = tmp_path / "job.sh"
    script.write_text(NEW_SCRIPT)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "c.toml"
    assert main(["convert", str(script), "-o", str(out)]) == 0
    cfg = load_config_text(out.read_text(), str(out), base_dir=str(tmp_path))
    assert len(cfg.watchers) == 14
