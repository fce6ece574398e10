"""``sidecar convert JOB.sh``: a script's #WATCHER definitions as a TOML config.

The result loads with ``sidecar CONFIG.toml`` to the same watchers: same names, triggers,
patterns, captures, conditions, actions, limits, thresholds, multi-line records and timer
mode. Where the script's watchers follow the job's output files, whose names depend on the
job (``logs/%x-%j.out``), the TOML watcher follows the files matching that name in its
directory (``filepath_regex = '^train\\-[0-9]+\\.out$'``), which is the same file inside
the job. Each trigger goes to its table: ``regex_actions`` (line), ``stale_file_actions``,
``probe_actions``, ``job_end_actions``, ``time_limit_actions``, ``memory_actions``.

What TOML cannot say is listed by ``conversion_notes`` and written as comments at the top of
the result, never dropped silently: a script watcher's ``interval`` (its own poll period;
TOML has one top-level ``poll_interval``), and a watcher whose files lie in several
directories (one TOML watcher per directory, named ``NAME@2`` ...).
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List

from sidecar.model import (
    MULTILINE_PRESETS,
    Config,
    FileEventTrigger,
    JobEndTrigger,
    MemoryTrigger,
    MultiLine,
    RegexTrigger,
    Source,
    StaleTrigger,
    TimeLimitTrigger,
    Watcher,
)

# SLURM filename pattern fields -> a regex for the text they become
_FIELD_RX = {
    "j": "[0-9]+",
    "J": "[0-9.]+",
    "A": "[0-9]+",
    "a": "[0-9]+",
    "s": "[0-9a-z]+",
    "t": "[0-9]+",
    "n": "[0-9]+",
    "N": "[^/]+",
    "x": "[^/]+",
    "u": "[^/]+",
    "b": "[0-9]+",
}
_FIELD = re.compile(r"%(%|[0-9]*([A-Za-z]))")


def name_regex(basename: str) -> str:
    """A regex matching what a (possibly unresolved) SLURM file name becomes."""
    out: List[str] = []
    pos = 0
    for m in _FIELD.finditer(basename):
        out.append(re.escape(basename[pos : m.start()]))
        if m.group(1) == "%":
            out.append("%")
        else:
            out.append(_FIELD_RX.get(m.group(2) or "", re.escape(m.group(0))))
        pos = m.end()
    out.append(re.escape(basename[pos:]))
    return "".join(out)


def _fmt_seconds(x: float) -> Any:
    return int(x) if float(x).is_integer() else x


def _fmt_size(n: int) -> Any:
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return n


_ML_DEFAULTS = MultiLine(end="")
_SOURCE_DEFAULTS = Source()
_MEMORY_DEFAULTS = MemoryTrigger(fraction=1.0)
_TIME_LIMIT_DEFAULTS = TimeLimitTrigger(before=1.0)

#: the TOML table of each trigger kind (a regex trigger over a probe: probe_actions)
TABLE_OF_KIND: Dict[str, str] = {
    "regex": "regex_actions",
    "stale": "stale_file_actions",
    "file_event": "file_event_actions",
    "job_end": "job_end_actions",
    "time_limit": "time_limit_actions",
    "memory": "memory_actions",
}


def table_name(w: Watcher) -> str:
    """The TOML table ``w`` is written to."""
    if isinstance(w.trigger, RegexTrigger) and w.source.is_probe:
        return "probe_actions"
    return TABLE_OF_KIND[w.trigger.kind]


def _rate(count: int, per_s: float) -> str:
    return f"{count}/{_fmt_seconds(per_s)}s"


def _multiline(t: RegexTrigger) -> Any:
    ml = t.multiline
    assert ml is not None
    preset = MULTILINE_PRESETS.get(ml.preset or "")
    if (
        preset is not None
        and ml.end == preset[1]
        and ml.max_lines == _ML_DEFAULTS.max_lines
        and ml.timeout == _ML_DEFAULTS.timeout
    ):
        return ml.preset
    tab: Dict[str, Any] = {}
    if preset is not None:
        tab["preset"] = ml.preset
    if preset is None or ml.end != preset[1]:
        tab["end"] = ml.end
    if ml.max_lines != _ML_DEFAULTS.max_lines:
        tab["max_lines"] = ml.max_lines
    if ml.timeout != _ML_DEFAULTS.timeout:
        tab["timeout"] = _fmt_seconds(ml.timeout)
    return tab


def _match_keys(w: Watcher, t: RegexTrigger, tab: Dict[str, Any]) -> None:
    """line_regex ... throttle keys of regex_actions and probe_actions."""
    preset = MULTILINE_PRESETS.get((t.multiline.preset or "") if t.multiline else "")
    if preset is None or t.pattern != preset[0]:
        tab["line_regex"] = t.pattern
    if t.captures:
        tab["captures"] = list(t.captures)
    if t.condition:
        tab["condition"] = t.condition
    if t.ignore_case:
        tab["ignore_case"] = True
    if t.multiline is not None:
        tab["multiline"] = _multiline(t)
    th = w.throttle
    if th is not None:
        if th.threshold is not None:
            tab["threshold"] = _rate(th.threshold.count, th.threshold.per_s)
        if th.track_by is not None:
            tab["track_by"] = th.track_by
        if th.suppress is not None:
            tab["suppress"] = _fmt_seconds(th.suppress)


def _file_groups(src: Source) -> Dict[str, List[str]]:
    groups: Dict[str, List[str]] = {}
    if src.paths:
        for p in src.paths:
            ap = p if os.path.isabs(p) else os.path.join(src.directory, p)
            groups.setdefault(os.path.dirname(ap) or ".", []).append(os.path.basename(ap))
    else:
        groups[src.directory] = []
    return groups


def _common_tail(w: Watcher, tab: Dict[str, Any]) -> None:
    acts = []
    for a in w.actions:
        entry: Dict[str, Any] = {"type": a.type}
        for k, v in a.params.items():
            entry[k] = dict(v) if isinstance(v, dict) else v
        if a.timeout is not None:
            entry["timeout"] = _fmt_seconds(a.timeout)
        acts.append(entry)
    tab["actions"] = acts
    if w.max_triggers is not None:
        tab["max_triggers"] = w.max_triggers
    if w.rate_limit is not None:
        tab["rate_limit"] = _rate(w.rate_limit.count, w.rate_limit.per_s)
    if w.max_failures != 5:
        tab["max_failures"] = w.max_failures
    if w.timer_interval:
        tab["timer_interval"] = _fmt_seconds(w.timer_interval)


def watcher_tables(w: Watcher) -> List[Dict[str, Any]]:
    """The TOML table(s) of one watcher (several when its files lie in several
    directories), for the table ``table_name(w)``."""
    t = w.trigger
    src = w.source
    if isinstance(t, (RegexTrigger,)) and src.is_probe:
        tab: Dict[str, Any] = {"name": w.name, "probe": src.probe}
        if src.probe_interval != _SOURCE_DEFAULTS.probe_interval:
            tab["interval"] = _fmt_seconds(src.probe_interval)
        if src.probe_timeout != _SOURCE_DEFAULTS.probe_timeout:
            tab["probe_timeout"] = _fmt_seconds(src.probe_timeout)
        _match_keys(w, t, tab)
        _common_tail(w, tab)
        return [tab]
    if isinstance(t, (JobEndTrigger, TimeLimitTrigger, MemoryTrigger)):
        tab = {"name": w.name}
        if isinstance(t, JobEndTrigger):
            if t.condition:
                tab["condition"] = t.condition
        elif isinstance(t, TimeLimitTrigger):
            tab["before"] = _fmt_seconds(t.before)
            if t.signal != _TIME_LIMIT_DEFAULTS.signal:
                tab["signal"] = t.signal if t.signal is not None else False
        else:
            tab["fraction"] = t.fraction
            if t.limit is not None:
                tab["limit"] = _fmt_size(t.limit)
            if t.interval != _MEMORY_DEFAULTS.interval:
                tab["interval"] = _fmt_seconds(t.interval)
        _common_tail(w, tab)
        return [tab]
    tables = []
    for i, (d, names) in enumerate(_file_groups(src).items()):
        tab = {"name": w.name if i == 0 else f"{w.name}@{i + 1}", "directory": d}
        if names:
            alts = sorted({name_regex(n) for n in names})
            tab["filepath_regex"] = (
                "^" + (alts[0] if len(alts) == 1 else f"(?:{'|'.join(alts)})") + "$"
            )
        else:
            tab["filepath_regex"] = src.filepath_regex or ".*"
            if src.recursive:
                tab["recursive"] = True
        if isinstance(t, RegexTrigger):
            _match_keys(w, t, tab)
        elif isinstance(t, StaleTrigger):
            tab["timeout"] = _fmt_seconds(t.timeout)
            if t.require_alive:
                tab["require_alive"] = True
            if t.max_cpu is not None:
                tab["max_cpu"] = _fmt_seconds(t.max_cpu)
            if t.grace is not None:
                tab["grace"] = _fmt_seconds(t.grace)
        else:
            assert isinstance(t, FileEventTrigger)
            tab["event_types"] = sorted(t.event_types)
        if src.start_at != "start":
            tab["start_at"] = src.start_at
        _common_tail(w, tab)
        tables.append(tab)
    return tables


def conversion_notes(cfg: Config) -> List[str]:
    """What the TOML form cannot carry, one sentence per watcher and property."""
    notes: List[str] = []
    for w in cfg.watchers:
        if w.interval is not None:
            notes.append(
                f"watcher {w.name!r}: interval={_fmt_seconds(w.interval)} (its poll period) is "
                "not carried: a TOML config has one poll_interval for all watchers, set it at "
                "the top if you need it"
            )
        if table_name(w) in ("regex_actions", "stale_file_actions"):
            dirs = list(_file_groups(w.source))
            if len(dirs) > 1:
                names = ", ".join([w.name] + [f"{w.name}@{i}" for i in range(2, len(dirs) + 1)])
                notes.append(
                    f"watcher {w.name!r} follows files in {len(dirs)} directories: written as "
                    f"{len(dirs)} watchers ({names}); a max_triggers or rate_limit now counts "
                    "per directory"
                )
    return notes


def to_toml(cfg: Config) -> str:
    """The config as TOML text; what cannot be carried is said in comments at the top."""
    import tomli_w

    doc: Dict[str, Any] = {}
    for table in (
        "regex_actions",
        "stale_file_actions",
        "file_event_actions",
        "probe_actions",
        "job_end_actions",
        "time_limit_actions",
        "memory_actions",
    ):
        rows = [t for w in cfg.watchers if table_name(w) == table for t in watcher_tables(w)]
        if rows:
            doc[table] = rows
    head = (
        f"# converted by `sidecar convert` from {cfg.script or cfg.source_file}\n"
        "# the watchers follow the job's output files by name pattern\n"
    )
    for note in conversion_notes(cfg):
        head += f"# NOT CARRIED OVER: {note}\n"
    return head + "\n" + tomli_w.dumps(doc, multiline_strings=False)
