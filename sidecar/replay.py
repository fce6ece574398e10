"""Dry runs: the regex watchers of a config or a script over an existing log, no action run.

``sidecar replay CONFIG|--from-script JOB.sh LOG...`` reads each log as the daemon would (the
same tailer and matcher, so the same lines, line numbers and captures), applies conditions
and ``max_triggers``, and reports what would have fired and which actions would have run.
Rate limits are not applied (a replay has no clock) and stale / file-event watchers cannot
be replayed from a finished log; both are said in the summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from sidecar.model import Config, RegexTrigger, Watcher
from sidecar.triggers import match_variables


@dataclass(frozen=True)
class ReplayHit:
    watcher: str
    file: str
    lineno: int
    line: str
    captures: Mapping[str, Optional[str]]
    actions: Tuple[str, ...]
    fired: bool  # False: matched, but the condition was false or failed
    note: str = ""


@dataclass
class ReplaySummary:
    lines: int = 0
    bytes: int = 0
    matches: Dict[str, int] = field(default_factory=dict)
    firings: Dict[str, int] = field(default_factory=dict)
    not_replayable: List[str] = field(default_factory=list)
    ends_job_at: Optional[Tuple[str, int, str]] = None  # first firing that cancels the job
    #: (watcher, file, line number) a Python re search gave up on (regex_time_limit)
    timed_out: List[Tuple[str, str, int]] = field(default_factory=list)


def regex_watchers(cfg: Config) -> List[Watcher]:
    return [w for w in cfg.watchers if isinstance(w.trigger, RegexTrigger)]


def replay(
    cfg: Config, files: List[str], summary: Optional[ReplaySummary] = None, show_all: bool = False
) -> Iterator[ReplayHit]:
    """Yield what each regex watcher would do over ``files``, in file and line order."""
    from sidecar.conditions import compile_condition
    from sidecar.matcher import MultiMatcher
    from sidecar.tailer import Tailer

    summary = summary if summary is not None else ReplaySummary()
    ws = regex_watchers(cfg)
    summary.not_replayable = [w.name for w in cfg.watchers if w not in ws]
    conds: Dict[str, Any] = {}
    for w in ws:
        t = w.trigger
        assert isinstance(t, RegexTrigger)
        conds[w.name] = compile_condition(t.condition) if t.condition else None
    rules = []
    for w in ws:
        assert isinstance(w.trigger, RegexTrigger)
        rules.append((w.name, w.trigger))
    by_name = {w.name: w for w in ws}
    fired: Dict[str, int] = {}
    matcher = MultiMatcher(rules, time_limit=cfg.settings.regex_time_limit)
    for path in files:
        tailer = Tailer(path, start_at="start")
        try:
            while True:
                chunks = tailer.read()
                last = tailer.flush() if not tailer.more else None
                if last is not None:
                    chunks.append(last)
                for ch in chunks:
                    summary.bytes += len(ch.data)
                    summary.lines += ch.data.count(b"\n") + (0 if ch.data.endswith(b"\n") else 1)
                    hits = matcher.scan(ch)
                    for key, p, no in matcher.take_timed_out():
                        summary.timed_out.append((str(key), p, no))
                    for name, m in hits:
                        w = by_name[str(name)]
                        summary.matches[w.name] = summary.matches.get(w.name, 0) + 1
                        captures, _vars = match_variables(w, m)
                        ok, err = True, None
                        cond = conds[w.name]
                        if cond is not None:
                            try:
                                ok = bool(cond.evaluate(captures))
                            except Exception as exc:
                                ok, err = False, f"condition failed: {exc}"
                        note = err or ""
                        n = fired.get(w.name, 0)
                        if ok and w.max_triggers is not None and n >= w.max_triggers:
                            ok, note = False, f"max_triggers={w.max_triggers} reached"
                        acts = tuple(a.type for a in w.actions)
                        if ok:
                            fired[w.name] = n + 1
                            summary.firings[w.name] = n + 1
                            if summary.ends_job_at is None and (
                                "cancel_job" in acts or "resubmit" in acts
                            ):
                                summary.ends_job_at = (path, m.lineno, w.name)
                                note = "the job would end here"
                        if ok or show_all:
                            yield ReplayHit(
                                w.name, path, m.lineno, m.line, captures, acts, ok, note
                            )
                if not tailer.more:
                    break
        finally:
            tailer.close()
