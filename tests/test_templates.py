"""The template library (sidecar/templates/*.toml) and ``sidecar init``.

Every template is a valid config; its regexes fire on real-looking bad lines
(tests/fixtures/logs/: PyTorch's CUDA OOM text, the NCCL watchdog timeout, slurmstepd's
messages, errno texts ...) and not on the ordinary lines around them, nor on a healthy
training log. Firing is decided as the daemon decides it: sidecar.matcher over the file's
bytes, captures by sidecar.triggers.match_variables, the condition by sidecar.conditions.
One test runs the real engine on a starter config from ``sidecar init``."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import pytest

from sidecar import cli_cockpit
from sidecar.conditions import ConditionError, compile_condition
from sidecar.config import load_config, load_config_text
from sidecar.matcher import MultiMatcher, compile_check
from sidecar.model import Config, RegexTrigger, StaleTrigger
from sidecar.triggers import match_variables
from sidecar.types import Chunk
from tests.conftest import wait_until

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "logs"
TEMPLATES = Path(cli_cockpit.TEMPLATES_DIR)
ALL = sorted(p.stem for p in TEMPLATES.glob("*.toml"))
#: templates that only record metrics (they are meant to fire on healthy output)
METRIC_ONLY = {"progress"}


def load_template(name: str) -> Config:
    path = TEMPLATES / f"{name}.toml"
    return load_config_text(path.read_text(), str(path), check_dirs=False)


def firing_lines(name: str, fixture: str) -> Dict[int, Tuple[str, Dict[str, Optional[str]]]]:
    """lineno -> (watcher, captures) of the lines of ``fixture`` on which a watcher of
    template ``name`` fires (regex matched and condition true), as the daemon decides."""
    cfg = load_template(name)
    data = (FIXTURES / fixture).read_bytes()
    out: Dict[int, Tuple[str, Dict[str, Optional[str]]]] = {}
    for w in cfg.watchers:
        if not isinstance(w.trigger, RegexTrigger):
            continue
        cond = compile_condition(w.trigger.condition) if w.trigger.condition else None
        mm = MultiMatcher([(w.name, w.trigger)])
        for _key, m in mm.scan(Chunk(path=fixture, data=data, offset=0, lineno=1)):
            caps, _vars = match_variables(w, m)
            if cond is not None:
                try:
                    if not cond.evaluate(caps):
                        continue
                except ConditionError:
                    continue
            out.setdefault(m.lineno, (w.name, dict(caps)))
    return out


def lines_of(fixture: str) -> List[str]:
    text = (FIXTURES / fixture).read_bytes().decode("utf-8")
    return re.split(r"\r\n|\r|\n", text.rstrip("\n"))


def lines_containing(fixture: str, needles: List[str]) -> Set[int]:
    return {i for i, ln in enumerate(lines_of(fixture), 1) if any(n in ln for n in needles)}


# template -> fixture -> the substrings identifying every line that must fire (all others
# of that fixture must not)
EXPECTED: Dict[str, Dict[str, List[str]]] = {
    "oom": {
        "cuda_oom.log": ["torch.OutOfMemoryError: CUDA out of memory",
                         "RuntimeError: CUDA out of memory", "CUDA error: out of memory",
                         "CUBLAS_STATUS_ALLOC_FAILED"],
        "host_oom.log": ["MemoryError", "std::bad_alloc", " Killed ", "Out Of Memory",
                         "oom-kill event"],
    },
    "nan_loss": {
        "nan_loss.log": ["loss=nan", "'loss': inf", "Loss is nan", "val_loss: nan",
                         "train_loss=-inf", "returned nan values", "Invalid loss",
                         "loss tensor(nan"],
    },
    "loss_divergence": {
        "loss_divergence.log": ["loss=12.8312", "'loss': 15.2", "Loss: 23.4107",
                                "train_loss=1.2e+02"],
    },
    "traceback": {
        "traceback.log": ["Traceback (most recent call last):", "terminate called after"],
        "cuda_oom.log": ["Traceback (most recent call last):"],
    },
    "segfault": {
        "segfault.log": ["Segmentation fault", "Bus error", "bus error", "SIGBUS",
                         "*** Process received signal ***", "exitcode: -11"],
    },
    "nccl": {
        "nccl.log": ["Watchdog caught collective operation timeout", "Some NCCL operations",
                     "DistBackendError: NCCL error", "ncclSystemError", "NCCL WARN",
                     "communicator was aborted"],
    },
    "disk_quota": {
        "disk_quota.log": ["[Errno 122] Disk quota exceeded", "PytorchStreamWriter",
                           "[Errno 28] No space left", "Disk quota exceeded",
                           "Cannot write: No space left"],
    },
    "slurm_cancel": {
        "slurm_cancel.log": ["*** JOB", "*** STEP"],
    },
    "progress": {
        "progress.log": ["Epoch 1/10", "Epoch 2/10", "Epoch [3/90]", "  0%|", " 40%|",
                         "100%|", "Epoch 2:  70%|", "50% complete"],
        "healthy_training.log": ["Epoch 1/90", "Epoch 2/90", "Validation: 100%|"],
    },
}


CASES = [(t, f) for t, fx in EXPECTED.items() for f in fx]


@pytest.mark.parametrize("template, fixture", CASES, ids=[f"{t}-{f}" for t, f in CASES])
def test_template_fires_on_the_bad_lines_and_only_on_them(template: str, fixture: str) -> None:
    got = set(firing_lines(template, fixture))
    want = lines_containing(fixture, EXPECTED[template][fixture])
    lines = lines_of(fixture)
    missed = [lines[i - 1] for i in sorted(want - got)]
    extra = [lines[i - 1] for i in sorted(got - want)]
    assert not missed and not extra, f"missed: {missed}\nfired on ordinary lines: {extra}"


@pytest.mark.parametrize("template", sorted(set(ALL) - METRIC_ONLY - {"hang"}))
def test_alarm_templates_stay_silent_on_a_healthy_training_log(template: str) -> None:
    fired = firing_lines(template, "healthy_training.log")
    lines = lines_of("healthy_training.log")
    assert not fired, [lines[i - 1] for i in fired]


def test_every_template_is_covered_by_a_fixture_test() -> None:
    assert set(ALL) == set(EXPECTED) | {"hang"}


def test_slurm_cancel_captures_scope_id_node_time_and_reason() -> None:
    got = firing_lines("slurm_cancel", "slurm_cancel.log")
    caps = [c for _w, c in got.values()]
    assert caps[0] == {"scope": "JOB", "id": "4242", "node": "gpu017",
                       "at": "2024-05-01T10:00:03", "reason": "TIME LIMIT"}
    assert [c["reason"] for c in caps] == [
        "TIME LIMIT", "TIME LIMIT", "PREEMPTION", "NODE FAILURE", None, "TIME LIMIT",
        "JOB REQUEUE",
    ]
    assert caps[5]["node"] is None  # srun's form has no "ON node"


def test_progress_captures_feed_the_metrics() -> None:
    got = firing_lines("progress", "progress.log")
    epochs = [c["epoch"] for w, c in got.values() if w == "progress_epoch"]
    percents = [c["percent"] for w, c in got.values() if w == "progress_percent"]
    assert epochs == ["1", "2", "3"]
    assert percents == ["0", "40", "100", "70", "50"]  # 45% is not a 10% milestone


def test_hang_template_is_a_stale_watcher_on_the_slurm_output() -> None:
    (w,) = load_template("hang").watchers
    assert isinstance(w.trigger, StaleTrigger) and w.trigger.timeout == 1800.0
    rx = re.compile(w.source.filepath_regex or "")
    assert rx.search("slurm-4242.out") and rx.search("slurm-4242_7.out")
    assert not rx.search("sidecar-events.jsonl") and not rx.search("train.log")


@pytest.mark.parametrize("template", ALL)
def test_template_header_regexes_and_actions(template: str) -> None:
    text = (TEMPLATES / f"{template}.toml").read_text()
    first, second = text.splitlines()[:2]
    assert first == f"# sidecar template: {template}"
    assert second.startswith("# summary: ") and len(second) > 30
    cfg = load_template(template)
    assert cfg.watchers
    for w in cfg.watchers:
        assert w.actions, w.name
        assert all(a.type in ("log_event", "store_metric") for a in w.actions)
        if isinstance(w.trigger, RegexTrigger):
            engine, msg = compile_check(w.trigger)
            assert (engine, msg) == ("re2", None), (w.name, engine, msg)


def test_watcher_names_are_unique_across_the_library() -> None:
    names = [w.name for t in ALL for w in load_template(t).watchers]
    assert len(names) == len(set(names))


def test_defaults_exist_and_init_list_shows_every_template(capsys: Any) -> None:
    assert set(cli_cockpit.DEFAULT_TEMPLATES) <= set(ALL)
    assert cli_cockpit.main(["init", "--list"]) == 0
    out = capsys.readouterr().out
    for t in ALL:
        assert re.search(rf"^[* ] {t} ", out, re.M), t


def test_a_config_of_every_template_loads(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    text = cli_cockpit.starter_config(ALL)
    (tmp_path / "all.toml").write_text(text)
    cfg = load_config(str(tmp_path / "all.toml"))
    assert len(cfg.watchers) == sum(len(load_template(t).watchers) for t in ALL)
    assert cfg.settings.event_log == "sidecar-events.jsonl"


def test_the_printed_schema_accepts_every_template_and_a_starter_config(capsys: Any) -> None:
    jsonschema = pytest.importorskip("jsonschema")  # not a dependency: only where installed
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]

    assert cli_cockpit.main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"].startswith("https://json-schema.org/draft/2020-12")
    validator = jsonschema.Draft202012Validator(schema)
    texts = [(t, (TEMPLATES / f"{t}.toml").read_text()) for t in ALL]
    texts.append(("starter", cli_cockpit.starter_config(ALL)))
    for name, text in texts:
        errors = [e.message for e in validator.iter_errors(tomllib.loads(text))]
        assert not errors, (name, errors)
    bad = tomllib.loads(cli_cockpit.starter_config(["oom"]).replace("line_regex", "line_regexp"))
    assert list(validator.iter_errors(bad))  # and it does catch a misspelt key


def test_test_pattern_agrees_with_the_template(capsys: Any) -> None:
    (w,) = load_template("nccl").watchers
    assert isinstance(w.trigger, RegexTrigger)
    rc = cli_cockpit.main(["test-pattern", w.trigger.pattern, str(FIXTURES / "nccl.log"),
                           "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    assert [json.loads(ln)["lineno"] for ln in out.splitlines()] == sorted(
        firing_lines("nccl", "nccl.log")
    )


# ---------------------------------------------------------------------------------------------
# the whole loop: sidecar init -> the daemon -> the event log -> the cockpit


def test_a_starter_config_runs_in_the_engine_and_the_cockpit_reads_the_result(
    tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    from sidecar.cockpit import compute_stats, iter_records, metric_points
    from sidecar.engine import Engine

    monkeypatch.chdir(tmp_path)
    assert cli_cockpit.main(["init"]) == 0
    capsys.readouterr()
    old = tmp_path / "slurm-4241.out"
    old.write_text("Traceback (most recent call last):\n")  # a previous job's output
    cfg = load_config("sidecar.toml")
    eng = Engine(cfg, cwd=str(tmp_path), install_signals=False,
                 environ={"PATH": os.environ["PATH"], "SLURM_JOB_ID": "4242"})
    eng.start()
    th = threading.Thread(target=eng.run, daemon=True)
    th.start()
    log = tmp_path / "sidecar-events.jsonl"
    try:
        out = tmp_path / "slurm-4242.out"
        with open(out, "wb") as f:
            for fx in ("healthy_training.log", "cuda_oom.log", "nccl.log", "slurm_cancel.log",
                       "progress.log"):
                f.write((FIXTURES / fx).read_bytes())
                f.flush()

        def seen() -> Set[str]:
            if not log.exists():
                return set()
            return {r.get("watcher") for r in iter_records(str(log)) if r["kind"] == "log"}

        wanted = {"oom", "traceback", "nccl", "slurm_cancel"}
        wait_until(lambda: wanted <= seen(), timeout=20)
        wait_until(lambda: len(metric_points(iter_records(str(log)))) >= 5, timeout=20)
    finally:
        eng.request_stop("test")
        th.join(10)
    assert not th.is_alive()
    recs = list(iter_records(str(log)))
    st = compute_stats(recs)
    assert {"oom", "nccl", "slurm_cancel", "traceback"} <= {w["watcher"] for w in st["busiest"]}
    assert all(r.get("file") != str(old) for r in recs if r["kind"] == "match")  # start_at end
    assert st["actions"]["log_event"]["failed"] == 0
    names = {p.metric for p in metric_points(recs)}
    assert {"epoch", "progress"} <= names
    assert {r.get("watcher") for r in recs if r["kind"] == "match"} <= {
        w.name for w in cfg.watchers
    }
    rc = cli_cockpit.main(["stats", str(log)])
    text = capsys.readouterr().out
    assert rc == 0 and "Busiest watchers" in text and "log_event" in text
