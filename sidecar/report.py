"""Human-readable descriptions of a loaded config (``sidecar check``). Returns text; the CLI
prints it."""

from __future__ import annotations

import os
import re
from typing import Any, List, Tuple

from sidecar.model import Config, FileEventTrigger, RegexTrigger, StaleTrigger, Watcher


def _trigger_text(w: Watcher) -> str:
    t = w.trigger
    if isinstance(t, RegexTrigger):
        s = f"regex {t.pattern!r}"
        if t.captures:
            s += f" captures={list(t.captures)}"
        if t.condition:
            s += f" if {t.condition}"
        return s
    if isinstance(t, StaleTrigger):
        return f"stale after {t.timeout:g}s without a write"
    assert isinstance(t, FileEventTrigger)
    return "file events " + ",".join(sorted(t.event_types))


def _source_text(w: Watcher, cwd: str) -> Tuple[str, List[str]]:
    src = w.source
    d = src.directory if os.path.isabs(src.directory) else os.path.join(cwd, src.directory)
    d = os.path.normpath(d)
    found: List[str] = []
    if src.paths:
        what = ", ".join(src.paths)
        for p in src.paths:
            ap = p if os.path.isabs(p) else os.path.join(d, p)
            if os.path.exists(ap):
                found.append(ap)
    else:
        rx = re.compile(src.filepath_regex or "")
        what = f"{d}/ files matching {src.filepath_regex!r}" + (
            " (recursive)" if src.recursive else ""
        )
        if os.path.isdir(d):
            for root, _dirs, files in os.walk(d):
                for f in files:
                    rel = os.path.relpath(os.path.join(root, f), d)
                    if rx.search(rel):
                        found.append(os.path.join(root, f))
                if not src.recursive:
                    break
    return what, found


def describe_config(cfg: Config, cwd: str = "") -> Tuple[bool, str]:
    """(ok, text). ok is False when a watcher cannot work as written."""
    cwd = cwd or os.getcwd()
    lines: List[str] = []
    ok = True
    origin = cfg.script or cfg.source_file or "<config>"
    lines.append(f"{origin}: {len(cfg.watchers)} watcher(s)")
    try:
        from sidecar.matcher import compile_check
    except ImportError:  # pragma: no cover - matcher always present in a release
        compile_check = None  # type: ignore[assignment]
    for w in cfg.watchers:
        lines.append(f"  {w.name}  ({w.origin})")
        lines.append(f"    when:    {_trigger_text(w)}")
        what, found = _source_text(w, cwd)
        lines.append(f"    watches: {what}")
        if found:
            shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
            lines.append(f"    now:     {shown}")
        else:
            lines.append("    now:     no such file yet (it will be picked up when it appears)")
        acts = ", ".join(a.type for a in w.actions)
        lines.append(f"    actions: {acts}")
        limits = []
        if w.max_triggers is not None:
            limits.append(f"max_triggers={w.max_triggers}")
        if w.rate_limit is not None:
            limits.append(f"rate_limit={w.rate_limit.count}/{w.rate_limit.per_s:g}s")
        if w.timer_interval:
            limits.append(f"timer every {w.timer_interval:g}s after the first match")
        if limits:
            lines.append("    limits:  " + ", ".join(limits))
        if compile_check is not None and isinstance(w.trigger, RegexTrigger):
            engine, msg = compile_check(w.trigger)
            lines.append(f"    engine:  {engine}" + (f" ({msg})" if msg else ""))
            if engine == "invalid":
                ok = False
    s = cfg.settings
    log = s.event_log or "sidecar-events.jsonl"
    lines.append(f"event log: {log}; backend: {s.backend}; queue_length={s.queue_length}")
    lines.append("OK" if ok else "NOT OK")
    return ok, "\n".join(lines)


def describe_script_files(details: Any) -> str:
    """The job's output files a script's watchers follow, resolved or not, and the warnings
    (``sidecar.script.ScriptDetails``)."""
    lines: List[str] = []
    job = details.job
    if job is None:
        lines.append(
            "outside a job: file names with %j and the like are shown as patterns; inside the "
            "job they are filled in from SLURM_* variables"
        )
    for name, files in details.files.items():
        for f in files:
            state = "resolved" if f.resolved else "pattern, resolved in the job"
            lines.append(f"  {name}: {f.stream} -> {f.path}  ({state}; from {f.source})")
    for w in details.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)
