"""Human-readable descriptions of a loaded config (``sidecar check``). Returns text; the CLI
prints it."""

from __future__ import annotations

import os
import re
from typing import Any, List, Tuple

from sidecar.model import (
    JOB_TRIGGERS,
    Config,
    FileEventTrigger,
    JobEndTrigger,
    MemoryTrigger,
    RegexTrigger,
    StaleTrigger,
    TimeLimitTrigger,
    Watcher,
)


def _secs(x: float) -> str:
    return f"{x:g}s"


def _trigger_text(w: Watcher) -> str:
    t = w.trigger
    if isinstance(t, RegexTrigger):
        s = f"regex {t.pattern!r}"
        if t.captures:
            s += f" captures={list(t.captures)}"
        if t.condition:
            s += f" if {t.condition}"
        if w.source.is_probe:
            s += " in the probe's output"
        return s
    if isinstance(t, StaleTrigger):
        s = f"stale after {t.timeout:g}s without a write"
        if t.require_alive or t.max_cpu is not None:
            s += ", require alive"
        if t.max_cpu is not None:
            s += f", max cpu {t.max_cpu:g}%"
        if t.grace is not None:
            s += f", grace {_secs(t.grace)}"
        return s
    if isinstance(t, JobEndTrigger):
        return "job end" + (f" (condition: {t.condition})" if t.condition else "")
    if isinstance(t, TimeLimitTrigger):
        sig = f", or on SIG{t.signal}" if t.signal else ""
        return f"time limit: {_secs(t.before)} before the end{sig}"
    if isinstance(t, MemoryTrigger):
        from sidecar.units import format_size

        limit = (
            f"{format_size(t.limit)} given"
            if t.limit is not None
            else "from SLURM/cgroup at run time"
        )
        return f"memory >= {t.fraction * 100:g}% of limit ({limit}), every {_secs(t.interval)}"
    if isinstance(t, FileEventTrigger):
        return "file events " + ",".join(sorted(t.event_types))
    return getattr(t, "kind", type(t).__name__)  # a trigger this report does not know yet


def _record_text(w: Watcher) -> str:
    """``multi-line: python_traceback (max 100 lines, 5s)``, or "" for single lines."""
    t = w.trigger
    ml = t.multiline if isinstance(t, RegexTrigger) else None
    if ml is None:
        return ""
    what = ml.preset if ml.preset else f"until {ml.end!r}"
    if ml.preset and ml.end != _preset_end(ml.preset):
        what += f" until {ml.end!r}"
    return f"multi-line: {what} (max {ml.max_lines} lines, {_secs(ml.timeout)})"


def _throttle_text(w: Watcher) -> List[str]:
    """``threshold 5/60s per $1``, ``suppress 600s`` (nothing without a throttle)."""
    th = w.throttle
    parts: List[str] = []
    if th is None:
        return parts
    if th.threshold is not None:
        parts.append(f"threshold {th.threshold.count}/{_secs(th.threshold.per_s)}")
    if th.track_by:
        if parts:
            parts[-1] += f" per {th.track_by}"
        else:
            parts.append(f"per {th.track_by}")
    if th.suppress is not None:
        parts.append(f"suppress {_secs(th.suppress)}")
    return parts


def _preset_end(name: str) -> str:
    from sidecar.model import MULTILINE_PRESETS

    return MULTILINE_PRESETS.get(name, ("", ""))[1]


def _source_text(w: Watcher, cwd: str) -> Tuple[str, List[str]]:
    src = w.source
    if src.is_probe:
        return (
            f"probe: {src.probe} every {_secs(src.probe_interval)} "
            f"(time limit {_secs(src.probe_timeout)})",
            [],
        )
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


def _watched_dirs(cfg: Config, cwd: str) -> List[str]:
    out: List[str] = []
    for w in cfg.watchers:
        src = w.source
        if src.is_probe or getattr(w.trigger, "kind", "") in JOB_TRIGGERS:
            continue
        d = src.directory if os.path.isabs(src.directory) else os.path.join(cwd, src.directory)
        ds = [os.path.normpath(d)]
        if src.paths:
            ds = [
                os.path.dirname(os.path.normpath(p if os.path.isabs(p) else os.path.join(d, p)))
                for p in src.paths
            ]
        for x in ds:
            if x not in out:
                out.append(x)
    return out


def _backend_text(d: str, backend: str) -> str:
    """Which backend follows directory ``d``: the choice per filesystem (statfs) that the
    daemon makes with backend = "auto"."""
    if not os.path.isdir(d):
        return "does not exist (yet)"
    if backend == "poll":
        return "polling (backend = poll)"
    from sidecar.fstype import describe, remote_fs

    if backend == "inotify":
        fs = remote_fs(d)
        if fs is not None:
            return f"inotify, as asked (warning: {fs}: writes made on other nodes are not seen)"
        return "inotify, as asked"
    return describe(d)


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
        record = _record_text(w)
        if record:
            lines.append(f"    record:  {record}")
        if getattr(w.trigger, "kind", "") in JOB_TRIGGERS:
            lines.append("    watches: the job itself (no file)")
        else:
            what, found = _source_text(w, cwd)
            lines.append(f"    watches: {what}")
            if found:
                shown = ", ".join(found[:5]) + (
                    f" and {len(found) - 5} more" if len(found) > 5 else ""
                )
                lines.append(f"    now:     {shown}")
            elif not w.source.is_probe:
                lines.append(
                    "    now:     no such file yet (it will be picked up when it appears)"
                )
        acts = ", ".join(a.type for a in w.actions)
        lines.append(f"    actions: {acts}")
        limits = []
        if w.max_triggers is not None:
            limits.append(f"max_triggers={w.max_triggers}")
        if w.rate_limit is not None:
            limits.append(f"rate_limit={w.rate_limit.count}/{w.rate_limit.per_s:g}s")
        if w.timer_interval:
            limits.append(f"timer every {w.timer_interval:g}s after the first match")
        limits.extend(_throttle_text(w))
        if limits:
            lines.append("    limits:  " + ", ".join(limits))
        if compile_check is not None and isinstance(w.trigger, RegexTrigger):
            engine, msg = compile_check(w.trigger)
            lines.append(f"    engine:  {engine}" + (f" ({msg})" if msg else ""))
            if engine == "invalid":
                ok = False
    s = cfg.settings
    dirs = _watched_dirs(cfg, cwd)
    if dirs:
        lines.append("directories:")
        for d in dirs:
            lines.append(f"  {d}: {_backend_text(d, s.backend)}")
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
