"""`sidecar replay` (dry runs over existing logs) and `sidecar convert` (script -> TOML)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from sidecar.cli import main
from sidecar.config import load_config_text
from sidecar.convert import name_regex, to_toml
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
