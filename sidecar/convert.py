"""``sidecar convert JOB.sh``: a script's #WATCHER definitions as a TOML config.

The result loads with ``sidecar CONFIG.toml`` to the same watchers: same names, patterns,
captures, conditions, actions, limits and timer mode. Where the script's watchers follow the
job's output files, whose names depend on the job (``logs/%x-%j.out``), the TOML watcher
follows the files matching that name in its directory (``filepath_regex =
'^train\\-[0-9]+\\.out$'``), which is the same file inside the job.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List

from sidecar.model import Config, RegexTrigger, Watcher

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


def watcher_tables(w: Watcher) -> List[Dict[str, Any]]:
    t = w.trigger
    assert isinstance(t, RegexTrigger)
    src = w.source
    groups: Dict[str, List[str]] = {}
    if src.paths:
        for p in src.paths:
            ap = p if os.path.isabs(p) else os.path.join(src.directory, p)
            groups.setdefault(os.path.dirname(ap) or ".", []).append(os.path.basename(ap))
    else:
        groups[src.directory] = []
    tables = []
    for i, (d, names) in enumerate(groups.items()):
        tab: Dict[str, Any] = {"name": w.name if i == 0 else f"{w.name}@{i + 1}", "directory": d}
        if names:
            alts = sorted({name_regex(n) for n in names})
            tab["filepath_regex"] = (
                "^" + (alts[0] if len(alts) == 1 else f"(?:{'|'.join(alts)})") + "$"
            )
        else:
            tab["filepath_regex"] = src.filepath_regex or ".*"
            if src.recursive:
                tab["recursive"] = True
        tab["line_regex"] = t.pattern
        if t.captures:
            tab["captures"] = list(t.captures)
        if t.condition:
            tab["condition"] = t.condition
        if t.ignore_case:
            tab["ignore_case"] = True
        if src.start_at != "start":
            tab["start_at"] = src.start_at
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
            tab["rate_limit"] = f"{w.rate_limit.count}/{_fmt_seconds(w.rate_limit.per_s)}s"
        if w.max_failures != 5:
            tab["max_failures"] = w.max_failures
        if w.timer_interval:
            tab["timer_interval"] = _fmt_seconds(w.timer_interval)
        tables.append(tab)
    return tables


def to_toml(cfg: Config) -> str:
    import tomli_w

    regex = [w for w in cfg.watchers if isinstance(w.trigger, RegexTrigger)]
    doc: Dict[str, Any] = {"regex_actions": [t for w in regex for t in watcher_tables(w)]}
    head = (
        f"# converted by `sidecar convert` from {cfg.script or cfg.source_file}\n"
        "# the watchers follow the job's output files by name pattern\n\n"
    )
    return head + tomli_w.dumps(doc, multiline_strings=False)
