"""The ``#WATCHER`` front end: watchers written in a batch script -> ``model.Config``.

Two forms (see docs/watchers.md for the whole reference)::

    #WATCHER pattern="loss: ([0-9.]+)" captures=[loss] condition="float(loss) > 5" action=cancel_job

    #WATCHER_BEGIN
    # name: loss_monitor
    # pattern: "epoch (\\d+).*loss: ([\\d.]+)"
    # captures: [epoch, loss]
    # condition: float(loss) > 5.0
    # actions:
    #   - cancel_job(reason="Loss too high at epoch $epoch")
    #   - notify_email(subject="Training diverged")
    #WATCHER_END

Every problem is collected (with its line, the watcher and a fix) and raised together as one
``model.ConfigError``; no key, action or watcher is ever dropped silently. Quoting: inside
"..." only ``\\"`` and ``\\\\`` are escapes (likewise ``\\'`` and ``\\\\`` inside '...'), every
other backslash is kept, so ``pattern="epoch (\\d+)"`` means what it says.

The watched files are the job's own output files (``slurm.output_files``) for the watcher's
``output_type`` (stdout, stderr or both).

``trigger=`` picks what a watcher watches: ``line`` (the default: a line of the output
matches ``pattern``), ``stale`` (the output stops growing), ``job_end``, ``time_limit``,
``memory`` (the job itself, no file) or ``probe`` (the output of a command run every
``interval``; ``probe=`` alone implies it). ``TRIGGER_KEYS`` lists the properties of each;
a property of another trigger is an error that names the trigger it belongs to.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from sidecar.model import (
    ACTION_ALIASES,
    ACTION_TYPES,
    JOB_TRIGGERS,
    MULTILINE_PRESETS,
    ActionSpec,
    Config,
    ConfigError,
    JobEndTrigger,
    MemoryTrigger,
    MultiLine,
    Origin,
    Problem,
    RateLimit,
    RegexTrigger,
    Settings,
    Source,
    StaleTrigger,
    Throttle,
    TimeLimitTrigger,
    Trigger,
    Watcher,
)
from sidecar.slurm import JobInfo, OutputFile

# ------------------------------------------------------------------------- vocabulary
#: the keys a watcher may have
WATCHER_KEYS: Tuple[str, ...] = (
    "name",
    "pattern",
    "interval",
    "captures",
    "condition",
    "action",
    "actions",
    "max_triggers",
    "output_type",
    "timer_mode_enabled",
    "timer_interval_seconds",
    "rate_limit",
    "max_failures",
    "ignore_case",
    # the triggers that understand the job (docs/watchers.md)
    "trigger",
    "threshold",
    "track_by",
    "suppress",
    "multiline",
    "end_pattern",
    "max_lines",
    "record_timeout",
    "timeout",
    "require_alive",
    "max_cpu",
    "grace",
    "before",
    "signal",
    "fraction",
    "limit",
    "probe",
    "probe_timeout",
)
#: what a watcher can watch (``trigger=``); ``line`` is the default, ``probe=`` implies probe
TRIGGERS: Tuple[str, ...] = ("line", "stale", "job_end", "time_limit", "memory", "probe")
TRIGGER_ALIASES: Mapping[str, str] = {
    "regex": "line",
    "jobend": "job_end",
    "end": "job_end",
    "timelimit": "time_limit",
    "mem": "memory",
}
#: what each trigger fires on (for messages)
TRIGGER_WHAT: Mapping[str, str] = {
    "line": "a line of the job's output matches pattern",
    "stale": "the job's output stops growing",
    "job_end": "the job's main process exits",
    "time_limit": "the job nears its time limit",
    "memory": "the job's memory nears its limit",
    "probe": "a line of a probe command's output matches pattern",
}
#: the keys every watcher may have
COMMON_KEYS: Tuple[str, ...] = ("name", "trigger", "action", "actions", "max_failures")
_MATCH_KEYS: Tuple[str, ...] = (
    "pattern",
    "captures",
    "condition",
    "ignore_case",
    "max_triggers",
    "rate_limit",
    "timer_mode_enabled",
    "timer_interval_seconds",
    "threshold",
    "track_by",
    "suppress",
)
#: the keys of each trigger (besides COMMON_KEYS)
TRIGGER_KEYS: Mapping[str, Tuple[str, ...]] = {
    "line": _MATCH_KEYS[:1] + ("interval",) + _MATCH_KEYS[1:] + (
        "output_type", "multiline", "end_pattern", "max_lines", "record_timeout"
    ),
    "stale": (
        "timeout", "require_alive", "max_cpu", "grace", "output_type", "interval",
        "max_triggers", "rate_limit",
    ),
    "job_end": ("condition",),
    "time_limit": ("before", "signal"),
    "memory": ("fraction", "limit", "interval", "max_triggers", "rate_limit"),
    "probe": ("probe", "interval", "probe_timeout") + _MATCH_KEYS,
}
#: variables a firing has besides the built-in ones, by trigger (as the engine sets them)
TRIGGER_VARIABLES: Mapping[str, Tuple[str, ...]] = {
    "stale": ("CPU_PERCENT",),
    "job_end": ("EXIT_CODE", "exit_code"),
    "time_limit": ("TIME_LEFT", "END_TIME", "SIGNAL", "time_left", "end_time", "signal"),
    "memory": ("RSS_BYTES", "LIMIT_BYTES", "FRACTION", "rss_bytes", "limit_bytes", "fraction"),
    "probe": ("PROBE",),
}
#: the key each trigger cannot do without, and the hint given when it is missing
REQUIRED_KEYS: Mapping[str, Tuple[str, str]] = {
    "stale": ("timeout", "a stale watcher fires after this long without a write: add timeout=20m"),
    "time_limit": ("before", "fire this long before the job's time limit: add before=10m"),
    "memory": (
        "fraction",
        "fire when the job's memory passes this share of its limit: add fraction=0.9",
    ),
    "probe": (
        "probe",
        'a probe watcher matches the output of a command run every interval: add '
        'probe="COMMAND", e.g. probe="nvidia-smi --query-gpu=utilization.gpu '
        '--format=csv,noheader,nounits"',
    ),
}
#: ... of multi-line records, and of thresholds
RECORD_VARIABLES: Tuple[str, ...] = ("RECORD", "RECORD_LINES") + tuple(
    f"end{i}" for i in range(1, 10)  # the end line's groups
)
THROTTLE_VARIABLES: Tuple[str, ...] = ("COUNT", "SUPPRESSED", "KEY")
TIME_LIMIT_SIGNAL = TimeLimitTrigger(before=1.0).signal  # the default signal
MAX_RECORD_LINES = 100_000  # the most lines a multi-line record may be given
_ML_DEFAULTS = MultiLine(end="")
_SOURCE_DEFAULTS = Source()
_MEMORY_DEFAULTS = MemoryTrigger(fraction=1.0)
MIN_MEMORY_LIMIT = 1 << 20  # a smaller limit is a mistake (SLURM's --mem=4096 is megabytes)
#: other spellings accepted for the same keys (ssync's API names)
KEY_ALIASES: Mapping[str, str] = {
    "interval_seconds": "interval",
    "capture_groups": "captures",
    "timer_interval": "timer_interval_seconds",
    "timer_mode": "timer_mode_enabled",
}
#: parameters each action accepts (``timeout`` is accepted by every action)
ACTION_PARAMS: Mapping[str, Tuple[str, ...]] = {
    "run_command": ("command", "cmd"),
    "cancel_job": ("reason",),
    "resubmit": ("modifications", "cancel_original", "max_resubmits"),
    "notify_email": ("to", "subject", "title", "message", "body"),
    "notify_slack": ("webhook", "channel", "subject", "title", "message", "body"),
    "notify": ("url", "subject", "title", "message", "body"),
    "store_metric": ("name", "value"),
    "log_event": ("message", "level"),
    "pause_watcher": ("name",),
}
COMMON_PARAMS: Tuple[str, ...] = ("timeout",)
LOG_LEVELS: Tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL")
#: variables every firing has (besides $0..$N and the captures); captures may not use them
BUILTIN_VARIABLES: Tuple[str, ...] = (
    "JOB_ID",
    "HOSTNAME",
    "MATCH",
    "FILE",
    "DIRECTORY",
    "NAME",
    "TRIGGER",
    "TIMEOUT",
    "KIND",
)
DEFAULT_RATE_LIMIT = RateLimit(10, 60.0)  # as ssync: 10 actions a minute
DEFAULT_TIMER_INTERVAL = 30.0  # as ssync
MAX_PATTERN = 1000  # characters, as ssync
OUTPUT_TYPES = ("stdout", "stderr", "both")

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*)\Z")
_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class _Bad(Exception):
    """One problem found while reading a value: message and fix."""

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class TrackByError(ValueError):
    """``track_by`` refers to something a match does not have; ``hint`` says what to write."""

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.hint = hint


def track_by_template(
    value: str, captures: Sequence[str], named: Sequence[str], groups: int
) -> str:
    """The template that keys a throttled watcher's counts: ``$1`` and ``${host}`` as
    written, a bare capture name (``host``) or group number (``1``) made a reference. Every
    name it uses must be a capture, a named group, a group number of the pattern or a
    built-in variable (``FILE``, ``MATCH`` ...). Raises ``TrackByError``. Shared by both
    front ends."""
    from sidecar.substitute import references

    text = value.strip()
    no_ref = TrackByError(
        f"track_by {value!r} refers to no variable: every match would have the same key",
        "write a capture name or group number (track_by = host, track_by = 1) or a template "
        "such as $1 or ${host}",
    )
    if not text:
        raise no_ref
    if "$" not in text:
        if text.isdigit():
            text = "$" + text
        elif _IDENT.match(text):
            text = "${" + text + "}"
        else:
            raise no_ref
    refs = references(text)
    if not refs:
        raise no_ref
    known = set(captures) | set(named) | set(BUILTIN_VARIABLES)
    known.update(str(i) for i in range(groups + 1))
    unknown = [r for r in refs if r not in known]
    if unknown:
        caps = ", ".join(list(captures) + [n for n in named if n not in captures])
        raise TrackByError(
            "track_by uses "
            + ", ".join("$" + u for u in unknown)
            + (", which is not" if len(unknown) == 1 else ", which are not")
            + " a capture or a group of the pattern",
            f"the pattern has {groups} group{'s' if groups != 1 else ''}"
            + (f" (captures: {caps})" if caps else "")
            + "; built-in variables: "
            + ", ".join(BUILTIN_VARIABLES),
        )
    return text


def _compile(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """``re.compile`` without its FutureWarnings ("Possible nested set"): library code never
    prints, and the pattern means today what it says."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return re.compile(pattern, flags)


# ------------------------------------------------------------------------- values
@dataclass
class _V:
    """A value as written: quoted (decoded text), bare (text as written), list or dict."""

    kind: str  # quoted | bare | list | dict
    text: str = ""  # quoted: decoded; bare: as written (stripped)
    items: List[_V] = field(default_factory=list)
    pairs: List[Tuple[str, _V]] = field(default_factory=list)
    raw: str = ""  # the source text of the whole value

    def describe(self) -> str:
        return {"quoted": "a string", "bare": "a word", "list": "a list", "dict": "a dict"}[
            self.kind
        ]


def _read_quoted(s: str, i: int) -> Tuple[str, int]:
    """The quoted string starting at ``s[i]``: (decoded text, index after it). Only the
    quote itself and the backslash can be escaped; other backslashes are kept."""
    q = s[i]
    buf: List[str] = []
    j, n = i + 1, len(s)
    while j < n:
        c = s[j]
        if c == "\\" and j + 1 < n and s[j + 1] in (q, "\\"):
            buf.append(s[j + 1])
            j += 2
            continue
        if c == q:
            return "".join(buf), j + 1
        buf.append(c)
        j += 1
    raise _Bad(
        f"unterminated {q} quote",
        "close the string; write \\" + q + " for a " + q + " inside it",
    )


def _skip_quoted(s: str, i: int) -> int:
    """Index after the quoted string at ``s[i]`` (escapes honoured); -1 if it is not closed."""
    q, j, n = s[i], i + 1, len(s)
    while j < n:
        if s[j] == "\\":
            j += 2
            continue
        if s[j] == q:
            return j + 1
        j += 1
    return -1


def _scan_bare(s: str, i: int, stop: Callable[[str], bool]) -> int:
    """End of a bare value starting at ``i``: the first ``stop`` character outside brackets
    (quoted strings inside brackets are skipped whole). Raises on an unclosed bracket."""
    n = len(s)
    stack: List[str] = []
    j = i
    while j < n:
        c = s[j]
        if not stack and stop(c):
            break
        if c in "([{":
            stack.append(c)
        elif c in ")]}":
            if not stack:
                break
            stack.pop()
        elif c in "\"'" and stack:
            k = _skip_quoted(s, j)
            if k < 0:
                raise _Bad(
                    f"unterminated {c} quote in {s[i:n].strip()[:60]!r}",
                    f"close the string; write \\{c} for a {c} inside it",
                )
            j = k
            continue
        elif c == "\\":
            j += 2
            continue
        j += 1
    if stack:
        closer = {"(": ")", "[": "]", "{": "}"}[stack[-1]]
        raise _Bad(
            f"unclosed {stack[-1]!r} in {s[i:j].strip()[:60]!r}",
            f"add the missing {closer!r}, or quote the value",
        )
    return j


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i].isspace():
        i += 1
    return i


def _parse_value(s: str, i: int, stops: str) -> Tuple[_V, int]:
    """A value inside brackets/parentheses: quoted | [list] | {dict} | bare word."""
    i = _skip_ws(s, i)
    if i >= len(s):
        raise _Bad("a value is missing at the end")
    c = s[i]
    if c in "\"'":
        text, j = _read_quoted(s, i)
        return _V("quoted", text, raw=s[i:j]), j
    if c == "[":
        return _parse_list(s, i)
    if c == "{":
        return _parse_dict(s, i)
    j = _scan_bare(s, i, lambda ch: ch in stops)
    text = s[i:j].strip()
    if not text:
        raise _Bad(
            f"a value is missing before {s[j : j + 1]!r}" if j < len(s) else "a value is missing"
        )
    return _V("bare", text, raw=text), j


def _parse_list(s: str, i: int) -> Tuple[_V, int]:
    start = i
    items: List[_V] = []
    i += 1
    while True:
        i = _skip_ws(s, i)
        if i >= len(s):
            raise _Bad("unclosed '[' in a list", "add the missing ']'")
        if s[i] == "]":
            return _V("list", items=items, raw=s[start : i + 1]), i + 1
        v, i = _parse_value(s, i, ",]")
        items.append(v)
        i = _skip_ws(s, i)
        if i < len(s) and s[i] == ",":
            i += 1
        elif i < len(s) and s[i] != "]":
            raise _Bad(f"expected ',' or ']' in a list, found {s[i]!r}")


def _parse_dict(s: str, i: int) -> Tuple[_V, int]:
    start = i
    pairs: List[Tuple[str, _V]] = []
    i += 1
    while True:
        i = _skip_ws(s, i)
        if i >= len(s):
            raise _Bad("unclosed '{' in a dict", "add the missing '}'")
        if s[i] == "}":
            return _V("dict", pairs=pairs, raw=s[start : i + 1]), i + 1
        if s[i] in "\"'":
            key, i = _read_quoted(s, i)
        else:
            m = _KEY.match(s, i)
            if not m:
                raise _Bad(f"expected a key in a dict, found {s[i]!r}", 'write {"key": "value"}')
            key, i = m.group(0), m.end()
        i = _skip_ws(s, i)
        if i >= len(s) or s[i] not in ":=":
            raise _Bad(f"expected ':' after the key {key!r} in a dict", 'write {"key": "value"}')
        v, i = _parse_value(s, i + 1, ",}")
        pairs.append((key, v))
        i = _skip_ws(s, i)
        if i < len(s) and s[i] == ",":
            i += 1
        elif i < len(s) and s[i] != "}":
            raise _Bad(f"expected ',' or '}}' in a dict, found {s[i]!r}")


def _strip_comment(s: str) -> str:
    """Cut a trailing ``# comment`` (a ``#`` after whitespace, outside quotes)."""
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c in "\"'":
            j = _skip_quoted(s, i)
            i = j if j > 0 else i + 1  # a lone quote is an ordinary character
            continue
        if c == "#" and i > 0 and s[i - 1].isspace():
            return s[:i].rstrip()
        i += 1
    return s.rstrip()


def _block_value(rest: str) -> Optional[_V]:
    """The value after ``key:`` (or ``-``) on a block line; None when empty."""
    rest = rest.strip()
    if not rest or rest.startswith("#"):
        return None
    if rest[0] in "\"'":
        try:
            text, j = _read_quoted(rest, 0)
        except _Bad:
            pass
        else:
            tail = rest[j:].strip()
            if not tail or tail.startswith("#"):
                return _V("quoted", text, raw=rest[:j])
    if rest[0] == "[":
        try:
            v, j = _parse_list(rest, 0)
        except _Bad:
            pass
        else:
            tail = rest[j:].strip()
            if not tail or tail.startswith("#"):
                return v
    text = _strip_comment(rest)
    return _V("bare", text, raw=text)


# ------------------------------------------------------------------------- scanning
@dataclass
class _Entry:
    key: str  # as written
    value: Optional[_V]
    line: int
    items: List[Tuple[_V, int]] = field(default_factory=list)  # block list items


@dataclass
class _Raw:
    kind: str  # "#WATCHER" | "#WATCHER_BEGIN block"
    line: int
    entries: List[_Entry] = field(default_factory=list)
    broken: bool = False  # a syntax problem was reported for it already

    def label(self) -> str:
        return f"{self.kind} at line {self.line}"


_DIRECTIVE = re.compile(r"\s*#\s*(WATCHER\w*)", re.IGNORECASE)


def _scan(text: str, filename: str, problems: List[Problem]) -> List[_Raw]:
    lines = text.split("\n")
    raws: List[_Raw] = []
    block: Optional[_Raw] = None
    list_entry: Optional[_Entry] = None

    def bad(line: int, msg: str, hint: Optional[str] = None, raw: Optional[_Raw] = None) -> None:
        problems.append(Problem(filename, msg, line, raw.label() if raw else None, hint))
        if raw is not None:
            raw.broken = True

    for idx, full in enumerate(lines):
        lineno = idx + 1
        line = full[:-1] if full.endswith("\r") else full
        stripped = line.strip()
        m = _DIRECTIVE.match(line)
        word = m.group(1) if m else ""
        # what a directive looks like: '#WATCHER...' with nothing between '#' and the word
        is_directive = bool(m) and stripped.startswith("#" + word)
        if block is not None:
            if is_directive and word == "WATCHER_END":
                if stripped[len("#WATCHER_END") :].strip() and not stripped[
                    len("#WATCHER_END") :
                ].strip().startswith("#"):
                    bad(lineno, "unexpected text after #WATCHER_END", None, block)
                raws.append(block)
                block, list_entry = None, None
                continue
            if is_directive and word.upper().startswith("WATCHER"):
                bad(
                    block.line,
                    f"#WATCHER_BEGIN block is not closed before line {lineno} ({stripped[:40]})",
                    "add #WATCHER_END at the end of the block",
                    block,
                )
                raws.append(block)
                block, list_entry = None, None
                # fall through: handle this directive normally
            elif not stripped:
                continue
            elif not stripped.startswith("#"):
                bad(
                    block.line,
                    f"#WATCHER_BEGIN block is not closed before line {lineno}, a command",
                    "add #WATCHER_END after the block's last '# key: value' line",
                    block,
                )
                raws.append(block)
                block, list_entry = None, None
                continue
            else:
                list_entry = _block_line(
                    block, stripped[1:], lineno, list_entry, filename, problems
                )
                continue
        if not m or not stripped.startswith("#"):
            continue
        if not is_directive:
            continue  # '# WATCHER ...', '##WATCHER ...': commented out, as '# SBATCH'
        if word == "WATCHER":
            raw = _Raw("#WATCHER", lineno)
            _inline(raw, stripped[len("#WATCHER") :], lineno, filename, problems)
            raws.append(raw)
        elif word == "WATCHER_BEGIN":
            tail = stripped[len("#WATCHER_BEGIN") :].strip()
            block = _Raw("#WATCHER_BEGIN block", lineno)
            list_entry = None
            if tail and not tail.startswith("#"):
                bad(
                    lineno,
                    f"unexpected text after #WATCHER_BEGIN: {tail[:40]!r}",
                    "put the properties on '# key: value' lines inside the block",
                    block,
                )
        elif word == "WATCHER_END":
            bad(
                lineno,
                "#WATCHER_END without a #WATCHER_BEGIN before it",
                "remove it, or add #WATCHER_BEGIN",
            )
        else:
            bad(
                lineno,
                f"unknown directive #{word}",
                "the directives are #WATCHER, #WATCHER_BEGIN and #WATCHER_END (upper case); "
                "write '# ' + the text to keep it as a comment",
            )
    if block is not None:
        bad(block.line, "#WATCHER_BEGIN block is never closed", "add #WATCHER_END", block)
        raws.append(block)
    return raws


def _inline(raw: _Raw, s: str, lineno: int, filename: str, problems: List[Problem]) -> None:
    """``key=value`` pairs of a ``#WATCHER`` line."""
    i, n = 0, len(s)
    if s and not s[0].isspace():
        problems.append(Problem(filename, f"unknown directive #WATCHER{s.split()[0]}", lineno))
        raw.broken = True
        return
    while True:
        i = _skip_ws(s, i)
        if i >= n or s[i] == "#":
            return
        m = _KEY.match(s, i)
        if not m or m.end() >= n or s[m.end()] != "=":
            word = s[i:].split(None, 1)[0]
            problems.append(
                Problem(
                    filename,
                    f"expected key=value, found {word[:40]!r} (column {i + len('#WATCHER') + 1})",
                    lineno,
                    raw.label(),
                    'quote values that contain spaces: key="a b"',
                )
            )
            raw.broken = True
            return
        key = m.group(0)
        i = m.end() + 1
        try:
            if i >= n or s[i].isspace():
                raise _Bad(f"no value after {key}=", f'write {key}="..."')
            if s[i] in "\"'":
                text, j = _read_quoted(s, i)
                if j < n and not s[j].isspace():
                    raise _Bad(
                        f"unexpected text after the closing quote of {key}: {s[j : j + 20]!r}",
                        "put a space between key=value pairs, or quote the whole value",
                    )
                value = _V("quoted", text, raw=s[i:j])
            elif s[i] == "[" and KEY_ALIASES.get(key, key) in ("captures", "actions", "action"):
                value, j = _parse_list(s, i)
                if j < n and not s[j].isspace():
                    raise _Bad(f"unexpected text after the list of {key}: {s[j : j + 20]!r}")
            elif KEY_ALIASES.get(key, key) in ("action", "actions"):
                j = _scan_bare(s, i, str.isspace)  # name(args with spaces, "quotes")
                value = _V("bare", s[i:j], raw=s[i:j])
            else:
                j = i
                while j < n and not s[j].isspace():
                    j += 1
                value = _V("bare", s[i:j], raw=s[i:j])
        except _Bad as exc:
            problems.append(
                Problem(filename, f"{key}: {exc.message}", lineno, raw.label(), exc.hint)
            )
            raw.broken = True
            return
        raw.entries.append(_Entry(key, value, lineno))
        i = j


def _block_line(
    block: _Raw,
    s: str,
    lineno: int,
    list_entry: Optional[_Entry],
    filename: str,
    problems: List[Problem],
) -> Optional[_Entry]:
    """One ``# ...`` line inside a block; returns the entry that list items add to."""
    body = s.strip()
    if not body or body.startswith("#"):
        return list_entry  # '#', '# # note'
    if body.startswith("-") and (len(body) == 1 or body[1].isspace()):
        if list_entry is None:
            problems.append(
                Problem(
                    filename,
                    f"list item {body[:40]!r} does not belong to a key",
                    lineno,
                    block.label(),
                    "list items follow a key with nothing after its ':', e.g. '# actions:'",
                )
            )
            block.broken = True
            return None
        v = _block_value(body[1:])
        if v is None:
            problems.append(Problem(filename, "empty list item", lineno, block.label()))
            block.broken = True
        else:
            list_entry.items.append((v, lineno))
        return list_entry
    m = _KEY.match(body)
    if not m or body[m.end() :].lstrip()[:1] != ":":
        problems.append(
            Problem(
                filename,
                f"expected '# key: value' in the block, found {body[:40]!r}",
                lineno,
                block.label(),
                "every line of a #WATCHER_BEGIN block is '# key: value', '#   - item' or "
                "'# # comment'",
            )
        )
        block.broken = True
        return list_entry
    key = m.group(0)
    rest = body[m.end() :].lstrip()[1:]
    entry = _Entry(key, _block_value(rest), lineno)
    block.entries.append(entry)
    return entry if entry.value is None else None


# ------------------------------------------------------------------------- conversion
def _scalar(v: _V) -> Any:
    """A bare word's type: true/false, null/none, numbers, else the text."""
    if v.kind == "quoted":
        return v.text
    if v.kind == "list":
        return [_scalar(x) for x in v.items]
    if v.kind == "dict":
        return {k: _scalar(x) for k, x in v.pairs}
    t = v.text
    low = t.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    if low in ("null", "none"):
        return None
    if _NUMBER.match(t):
        try:
            return int(t)
        except ValueError:
            return float(t)
    return t


def _as_text(v: _V, what: str) -> str:
    """The value as text: a list or dict written where text is expected is taken as it was
    written (``# pattern: [0-9]+`` is a regex, not a list)."""
    if v.kind in ("quoted", "bare"):
        return v.text
    return v.raw


def _as_bool(v: _V, what: str) -> bool:
    t = _as_text(v, what).strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise _Bad(f"{what} must be true or false, not {v.text!r}")


def _as_int(v: _V, what: str, minimum: int, maximum: Optional[int] = None) -> int:
    t = _as_text(v, what).strip()
    try:
        n = int(t)
    except ValueError:
        raise _Bad(f"{what} must be a whole number, not {t!r}") from None
    if n < minimum:
        raise _Bad(f"{what} must be at least {minimum}, not {n}")
    if maximum is not None and n > maximum:
        raise _Bad(f"{what} must be at most {maximum}, not {n}")
    return n


def _as_number(v: _V, what: str, minimum: float, example: str) -> float:
    t = _as_text(v, what).strip()
    if not _NUMBER.match(t):
        raise _Bad(f"{what} must be a number, not {t[:40]!r}", f"e.g. {example}")
    x = float(t)
    if x == float("inf"):
        raise _Bad(f"{what} is too large", f"e.g. {example}")
    if x < minimum:
        raise _Bad(f"{what} must be at least {minimum:g}, not {t}", f"e.g. {example}")
    return x


def _as_fraction(v: _V) -> float:
    """``0.9`` or ``90%``: a share, more than 0 and at most 1."""
    t = _as_text(v, "fraction").strip()
    hint = "fraction=0.9 (or 90%) fires at 90% of the job's memory limit"
    pct = t.endswith("%")
    num = t[:-1].strip() if pct else t
    if not _NUMBER.match(num):
        raise _Bad(f"fraction must be a number such as 0.9 or 90%, not {t[:40]!r}", hint)
    x = float(num) / (100.0 if pct else 1.0)
    if not 0 < x <= 1:
        raise _Bad(f"fraction must be more than 0 and at most 1 (100%), not {t[:40]}", hint)
    return x


def _as_limit(v: _V) -> int:
    from sidecar.units import format_size, parse_size

    t = _as_text(v, "limit").strip()
    try:
        n = parse_size(t)
    except ValueError as exc:
        raise _Bad(f"limit: {exc}", "or leave limit out to use the job's own limit") from None
    if n < MIN_MEMORY_LIMIT:
        raise _Bad(
            f"limit {t!r} is {format_size(n)}: below 1 MiB, surely not meant",
            f"did you mean limit={t}M? (in #SBATCH --mem={t} a bare number is megabytes; "
            "here it is bytes)",
        )
    return n


def _as_signal(v: _V) -> Optional[str]:
    from sidecar.units import parse_signal

    t = _as_text(v, "signal").strip()
    if t.lower() in ("none", "off", "false", "no"):
        return None
    try:
        return parse_signal(t)
    except ValueError as exc:
        msg = str(exc)
        raise _Bad(
            msg if msg.startswith("signal") else f"signal: {msg}", "or signal=none for no signal"
        ) from None


def _as_probe(v: _V) -> str:
    t = _as_text(v, "probe")
    if not t.strip():
        raise _Bad(
            "probe is empty",
            'probe is a /bin/sh command, e.g. probe="nvidia-smi --query-gpu=utilization.gpu '
            '--format=csv,noheader,nounits"',
        )
    if "\x00" in t:
        raise _Bad("probe contains a NUL character")
    return t


def _as_preset(v: _V) -> str:
    t = _as_text(v, "multiline").strip()
    if t in MULTILINE_PRESETS:
        return t
    guess = _close(t.lower(), list(MULTILINE_PRESETS))
    raise _Bad(
        f"multiline: unknown preset {t[:40]!r}",
        (f"did you mean {guess}? " if guess else "")
        + "presets: "
        + ", ".join(MULTILINE_PRESETS)
        + "; for other records give end_pattern=REGEX (the record's last line)",
    )


def _as_regex(v: _V, what: str) -> str:
    t = _as_text(v, what)
    if not t:
        raise _Bad(f"{what} is empty")
    if len(t) > MAX_PATTERN:
        raise _Bad(f"{what} too long ({len(t)} characters, at most {MAX_PATTERN})")
    try:
        _compile(t)
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        raise _Bad(
            f"{what} is not a valid regex: {exc}",
            "Python re syntax; inside \"...\" only \\\" and \\\\ are escapes",
        ) from None
    return t


def _not_for_trigger(key: str, trigger: str, how: str) -> Tuple[str, str]:
    """(message, hint) for a key that does not belong to the watcher's trigger. ``how``
    the trigger was chosen: "default" (line), "given" (trigger=) or "probe" (probe=)."""
    owners = [t for t in TRIGGERS if key in TRIGGER_KEYS[t]]
    msg = f"{key} is not a property of trigger={trigger} watchers" + {
        "default": " (trigger=line is the default)",
        "probe": " (probe= makes a probe watcher)",
    }.get(how, "")
    hint = f"a trigger={trigger} watcher fires when {TRIGGER_WHAT[trigger]}: remove {key}"
    if trigger in ("job_end", "time_limit") and key in ("max_triggers", "rate_limit"):
        hint = f"a trigger={trigger} watcher fires at most once: remove {key}"
    elif owners:
        others = " or ".join(f"trigger={t}" for t in owners)
        what = TRIGGER_WHAT[owners[0]] if len(owners) == 1 else ""
        hint = f"{key} is for {others} watchers" + (f" (they fire when {what})" if what else "")
        if len(owners) == 1 and how == "default":
            hint += f": write trigger={owners[0]}, or remove {key}"
        else:
            hint += f": remove {key}"
    if key == "timeout" and trigger != "stale":
        hint += "; an action's own time limit is written action(timeout=...)"
    return msg, hint


def _as_seconds(v: _V, what: str) -> float:
    t = _as_text(v, what).strip().lower()
    m = _DURATION.match(t)
    if not m or m.group(2) not in _UNITS:
        raise _Bad(f"{what} must be a number of seconds (or 5m, 1h), not {v.text!r}")
    secs = float(m.group(1)) * _UNITS[m.group(2)]
    if secs <= 0:
        raise _Bad(f"{what} must be more than 0 seconds")
    if secs == float("inf"):
        raise _Bad(f"{what} is too large")
    return secs


def _as_rate_limit(v: _V, key: str = "rate_limit") -> Optional[RateLimit]:
    t = _as_text(v, key).strip().lower()
    if t in ("none", "off", "0", "false", "unlimited"):
        return None
    count, slash, per = t.partition("/")
    if count.strip().isdigit() and len(count.strip()) > 15:
        raise _Bad(f"{key}: the count {count.strip()[:20]}... is too large")
    if not slash or not count.strip().isdigit() or int(count) < 1:
        what = "firings" if key == "rate_limit" else "matches"
        raise _Bad(
            f"{key} must look like 10/60 (10 {what} per 60 s), 10/min or none, not {v.text!r}"
        )
    per = per.strip()
    if per in ("s", "sec", "m", "min", "h", "hr"):
        per = "1" + per
    seconds = _as_seconds(_V("bare", per), f"{key}'s period")
    return RateLimit(int(count), seconds)


def _as_names(v: _V, what: str) -> List[str]:
    if v.kind == "list":
        out = []
        for x in v.items:
            if x.kind not in ("quoted", "bare"):
                raise _Bad(f"{what}: items must be names, not {x.describe()}")
            out.append(x.text.strip())
        return out
    if v.kind == "dict":
        raise _Bad(f"{what} must be a list of names like [epoch, loss]")
    return [p.strip() for p in v.text.split(",") if p.strip()]


def _close(word: str, choices: Sequence[str]) -> Optional[str]:
    import difflib

    if len(word) > 40:
        return None
    hits = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return hits[0] if hits else None


def _parse_action(v: _V) -> ActionSpec:
    """``name`` or ``name(key=value, ...)`` -> ActionSpec (names and params checked)."""
    src = v.text.strip() if v.kind in ("quoted", "bare") else ""
    if v.kind not in ("quoted", "bare"):
        raise _Bad(f"an action must be name or name(key=value, ...), not {v.describe()}")
    m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", src)
    if not m:
        raise _Bad(
            f"an action must start with its name, found {src[:40]!r}",
            'e.g. cancel_job(reason="...")',
        )
    written = m.group(0)
    i = _skip_ws(src, m.end())
    params: Dict[str, Any] = {}
    if i < len(src):
        if src[i] != "(":
            raise _Bad(
                f"unexpected {src[i : i + 20]!r} after the action name {written!r}",
                "arguments go in parentheses: name(key=value, ...)",
            )
        i += 1
        while True:
            i = _skip_ws(src, i)
            if i >= len(src):
                raise _Bad(f"{written}(: missing ')'", "close the argument list")
            if src[i] == ")":
                i += 1
                break
            km = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(src, i)
            if not km or src[_skip_ws(src, km.end()) : _skip_ws(src, km.end()) + 1] != "=":
                raise _Bad(
                    f"{written}(): arguments are key=value, found {src[i : i + 30]!r}",
                    f'e.g. {written}(message="...")',
                )
            key = km.group(0)
            if key in params:
                raise _Bad(f"{written}(): {key} given twice")
            val, i = _parse_value(src, _skip_ws(src, km.end()) + 1, ",)")
            params[key] = val
            i = _skip_ws(src, i)
            if i < len(src) and src[i] == ",":
                i += 1
            elif i < len(src) and src[i] != ")":
                raise _Bad(f"{written}(): expected ',' or ')' , found {src[i : i + 20]!r}")
        tail = src[i:].strip()
        if tail:
            raise _Bad(
                f"unexpected {tail[:30]!r} after {written}(...)",
                "one action per item; use actions=[a, b] for several",
            )
    name = written.lower()
    name = ACTION_ALIASES.get(name, name)
    if name not in ACTION_TYPES:
        guess = _close(name, list(ACTION_TYPES) + list(ACTION_ALIASES))
        raise _Bad(
            f"unknown action {written!r}",
            (f"did you mean {guess}? " if guess else "") + "actions: " + ", ".join(ACTION_TYPES),
        )
    return _action_spec(name, params)


def _action_spec(name: str, raw_params: Mapping[str, _V]) -> ActionSpec:
    allowed = ACTION_PARAMS[name]
    params: Dict[str, Any] = {}
    timeout: Optional[float] = None
    for key, v in raw_params.items():
        if key == "timeout":
            timeout = _as_seconds(v, f"{name}(timeout)")
            continue
        if key not in allowed:
            guess = _close(key, allowed)
            raise _Bad(
                f"{name}() has no parameter {key!r}",
                (f"did you mean {guess}? " if guess else "")
                + f"{name} takes: "
                + ", ".join(allowed + COMMON_PARAMS),
            )
        if key == "modifications":
            if v.kind != "dict":
                raise _Bad(
                    "resubmit(modifications=...) must be a dict",
                    'e.g. modifications={"mem": "16G", "time": "120"}',
                )
            mods: Dict[str, str] = {}
            for mk, mv in v.pairs:
                val = _scalar(mv)
                if isinstance(val, bool):
                    val = "true" if val else "false"
                if isinstance(val, (dict, list)) or val is None:
                    raise _Bad(f"resubmit modification {mk!r} must be a string or a number")
                sval = str(val)
                if any(c in sval for c in "\r\n\x00"):
                    raise _Bad(f"resubmit modification {mk!r} contains a line break")
                mods[mk] = sval
            params[key] = mods
        elif key in ("cancel_original",):
            params[key] = _as_bool(v, f"{name}({key})")
        elif key == "max_resubmits":
            params[key] = _as_int(v, f"{name}({key})", 0)
        else:
            val = _scalar(v)
            if isinstance(val, (dict, list)) or val is None:
                raise _Bad(f"{name}({key}) must be a string", f'write {key}="..."')
            if isinstance(val, bool):
                val = "true" if val else "false"
            params[key] = val if isinstance(val, str) else str(val)
    if name == "run_command":
        if "command" not in params and "cmd" not in params:
            raise _Bad(
                'run_command needs command="..."', 'e.g. run_command(command="echo $1 >> hits.txt")'
            )
        if "command" in params and "cmd" in params:
            raise _Bad("run_command: give command or cmd, not both")
        if "cmd" in params:  # the Haskell Sidecar's name; one spelling in the model
            params["command"] = params.pop("cmd")
    if name == "log_event" and "level" in params:
        level = str(params["level"]).upper()
        if level not in LOG_LEVELS:
            raise _Bad(f"log_event level {params['level']!r} is not one of {', '.join(LOG_LEVELS)}")
        params["level"] = "WARNING" if level == "WARN" else level
    return ActionSpec(name, params, timeout)


# ------------------------------------------------------------------------- building
@dataclass(frozen=True)
class ScriptDetails:
    """What ``sidecar check`` shows about a script: the config, each watcher's files (and
    whether their names could be resolved), the job, and warnings that are not errors."""

    config: Config
    files: Mapping[str, Tuple[OutputFile, ...]]
    job: Optional[JobInfo]
    warnings: Tuple[Problem, ...]


class _Builder:
    def __init__(
        self,
        text: str,
        filename: str,
        environ: Mapping[str, str],
        cwd: Optional[str],
        proc_root: Optional[str],
    ) -> None:
        self.text = text
        self.filename = filename
        self.environ = environ
        self.cwd = cwd
        self.proc_root = proc_root
        self.problems: List[Problem] = []
        self.warnings: List[Problem] = []
        self.files: Dict[str, Tuple[OutputFile, ...]] = {}
        self._file_cache: Dict[str, List[OutputFile]] = {}

    def outputs(self, output_type: str) -> List[OutputFile]:
        got = self._file_cache.get(output_type)
        if got is None:
            from sidecar.slurm import output_files

            got = output_files(
                self.filename,
                self.text,
                self.environ,
                output_type,
                cwd=self.cwd,
                proc_root=self.proc_root,
            )
            self._file_cache[output_type] = got
        return got

    def build(self) -> List[Watcher]:
        raws = _scan(self.text, self.filename, self.problems)
        built: List[Tuple[_Raw, Optional[Watcher]]] = []
        names: Set[str] = set()
        for raw in raws:
            w = self.one(raw)
            built.append((raw, w))
        # names: explicit ones must be unique; defaults step aside
        explicit = [w.name for _r, w in built if w is not None and not w.name.startswith("\0")]
        seen: Set[str] = set()
        out: List[Watcher] = []
        for raw, w in built:
            if w is None:
                continue
            name = w.name
            if name.startswith("\0"):
                base = name[1:]
                name, k = base, 2
                while name in explicit or name in seen:
                    name, k = f"{base}-{k}", k + 1
            elif name in seen:
                self.problems.append(
                    Problem(
                        self.filename,
                        f"watcher name {name!r} is used twice",
                        raw.line,
                        name,
                        "give every watcher its own name",
                    )
                )
                continue
            seen.add(name)
            names.add(name)
            if name != w.name:
                import dataclasses

                files = self.files.pop(w.name, ())
                w = dataclasses.replace(w, name=name)
                self.files[name] = files
            out.append(w)
        self.check_pause_targets(out, names)
        return out

    def check_pause_targets(self, watchers: Sequence[Watcher], names: Set[str]) -> None:
        for w in watchers:
            for a in w.actions:
                target = a.params.get("name") if a.type == "pause_watcher" else None
                if isinstance(target, str) and "$" not in target and target not in names:
                    self.problems.append(
                        Problem(
                            self.filename,
                            f"pause_watcher(name={target!r}): no watcher has that name",
                            w.origin.line,
                            w.name,
                            "watchers: " + ", ".join(sorted(names)),
                        )
                    )

    def one(self, raw: _Raw) -> Optional[Watcher]:
        problems_before = len(self.problems)
        values: Dict[str, _Entry] = {}
        label = raw.label()
        for entry in raw.entries:
            if entry.key == "name" and entry.value is not None and entry.value.kind != "list":
                label = entry.value.text.strip() or label

        def bad(line: int, msg: str, hint: Optional[str] = None) -> None:
            self.problems.append(Problem(self.filename, msg, line, label, hint))

        # the trigger first: it decides which keys belong
        trigger = "line"
        trigger_given = False
        for e in raw.entries:
            if e.key == "trigger" and e.value is not None and not e.items:
                word = _as_text(e.value, "trigger").strip().lower().replace("-", "_")
                trigger = TRIGGER_ALIASES.get(word, word)
                trigger_given = True
                if trigger not in TRIGGERS:
                    guess = _close(word, list(TRIGGERS) + list(TRIGGER_ALIASES))
                    bad(
                        e.line,
                        f"unknown trigger {e.value.text.strip()[:40]!r}",
                        (f"did you mean {guess}? " if guess else "")
                        + "triggers: "
                        + ", ".join(TRIGGERS),
                    )
                    return None
                break
        if not trigger_given and any(KEY_ALIASES.get(e.key, e.key) == "probe" for e in raw.entries):
            trigger = "probe"  # probe="..." makes a probe watcher
        allowed = COMMON_KEYS + TRIGGER_KEYS[trigger]

        for e in raw.entries:
            key = KEY_ALIASES.get(e.key, e.key)
            if key not in WATCHER_KEYS:
                guess = _close(key, list(WATCHER_KEYS) + list(KEY_ALIASES))
                bad(
                    e.line,
                    f"unknown key {e.key!r}",
                    (f"did you mean {guess}? " if guess else "")
                    + ("keys: " if trigger == "line" else f"keys of trigger={trigger}: ")
                    + ", ".join(allowed),
                )
                continue
            if key in values:
                bad(
                    e.line,
                    f"{key} is given twice (lines {values[key].line} and {e.line})",
                    "keep one",
                )
                continue
            if key not in allowed:
                how = "given" if trigger_given else ("probe" if trigger == "probe" else "default")
                msg, hint = _not_for_trigger(key, trigger, how)
                bad(e.line, msg, hint)
                continue
            if e.value is None and not e.items:
                if key in ("actions", "captures"):
                    bad(e.line, f"{key}: is empty", f"add '#   - ...' lines after '# {key}:'")
                else:
                    bad(e.line, f"{key} has no value", f"write '# {key}: value'")
                continue
            if e.value is not None and e.items:  # pragma: no cover - the scanner prevents it
                bad(e.line, f"{key}: both a value and list items")
                continue
            if e.items and key not in ("actions", "captures", "action"):
                bad(e.line, f"{key} cannot take a list of '- ' items")
                continue
            values[key] = e

        def get(key: str, conv: Callable[[_V], Any]) -> Any:
            e = values.get(key)
            if e is None or e.value is None:
                return None
            try:
                return conv(e.value)
            except _Bad as exc:
                bad(
                    e.line,
                    f"{key}: {exc.message}" if not exc.message.startswith(key) else exc.message,
                    exc.hint,
                )
                return None

        name = get("name", lambda v: _as_text(v, "name").strip())
        if name is not None and (not name or "\n" in name or len(name) > 200):
            bad(values["name"].line, "name must be 1 to 200 characters on one line")
            name = None
        pattern = get("pattern", lambda v: _as_text(v, "pattern"))
        ignore_case = bool(get("ignore_case", lambda v: _as_bool(v, "ignore_case")))
        output_type = get("output_type", lambda v: _as_text(v, "output_type").strip().lower())
        if output_type is not None and output_type not in OUTPUT_TYPES:
            bad(
                values["output_type"].line,
                f"output_type must be stdout, stderr or both, not {output_type!r}",
            )
            output_type = None
        interval = get("interval", lambda v: _as_seconds(v, "interval"))
        max_triggers = get("max_triggers", lambda v: _as_int(v, "max_triggers", 1))
        max_failures = get("max_failures", lambda v: _as_int(v, "max_failures", 0))
        timer_on = get("timer_mode_enabled", lambda v: _as_bool(v, "timer_mode_enabled"))
        timer_secs = get(
            "timer_interval_seconds", lambda v: _as_seconds(v, "timer_interval_seconds")
        )
        rate_limit: Optional[RateLimit] = (
            None if trigger in ("job_end", "time_limit") else DEFAULT_RATE_LIMIT
        )
        if "rate_limit" in values:
            rate_limit = get("rate_limit", _as_rate_limit)
        if timer_secs is not None and not timer_on and "timer_mode_enabled" not in values:
            bad(
                values["timer_interval_seconds"].line,
                "timer_interval_seconds is set but timer mode is not enabled",
                "add timer_mode_enabled=true (or remove timer_interval_seconds)",
            )
        elif timer_secs is not None and timer_on is False:
            bad(
                values["timer_interval_seconds"].line,
                "timer_interval_seconds is set but timer_mode_enabled is false",
                "set timer_mode_enabled=true, or remove timer_interval_seconds",
            )

        # multi-line records (line watchers)
        preset = get("multiline", _as_preset)
        end_pattern = get("end_pattern", lambda v: _as_regex(v, "end_pattern"))
        max_lines = get("max_lines", lambda v: _as_int(v, "max_lines", 1, MAX_RECORD_LINES))
        record_timeout = get("record_timeout", lambda v: _as_seconds(v, "record_timeout"))
        multiline: Optional[MultiLine] = None
        if "multiline" in values or "end_pattern" in values:
            if preset is not None or end_pattern is not None:
                end = end_pattern if end_pattern is not None else MULTILINE_PRESETS[preset][1]
                multiline = MultiLine(
                    end=end,
                    max_lines=_ML_DEFAULTS.max_lines if max_lines is None else max_lines,
                    timeout=_ML_DEFAULTS.timeout if record_timeout is None else record_timeout,
                    preset=preset,
                )
        else:
            for key in ("max_lines", "record_timeout"):
                if key in values:
                    bad(
                        values[key].line,
                        f"{key} is set but the watcher gathers no multi-line record",
                        "add multiline=python_traceback, or end_pattern=REGEX (the record's "
                        f"last line), or remove {key}",
                    )
        if preset is not None and "pattern" not in values:
            pattern = MULTILINE_PRESETS[preset][0]

        # pattern and captures
        groups = 0
        named: Tuple[str, ...] = ()
        pattern_used = trigger in ("line", "probe")
        if not pattern_used:
            pattern = None
        elif "pattern" not in values and pattern is None and "multiline" not in values:
            if not raw.broken:  # a line cut short by a syntax error: already reported
                bad(raw.line, "pattern is missing", 'every watcher needs pattern="REGEX"')
        elif pattern is not None:
            pline = values["pattern"].line if "pattern" in values else raw.line
            if not pattern:
                bad(pline, "pattern is empty")
            elif len(pattern) > MAX_PATTERN:
                bad(
                    pline,
                    f"pattern too long ({len(pattern)} characters, at most {MAX_PATTERN})",
                )
            else:
                try:
                    rx = _compile(pattern, re.IGNORECASE if ignore_case else 0)
                    groups = rx.groups
                    named = tuple(rx.groupindex)
                except (re.error, OverflowError, RecursionError, ValueError) as exc:
                    bad(
                        pline,
                        f"pattern is not a valid regex: {exc}",
                        "Python re syntax; inside \"...\" only \\\" and \\\\ are escapes",
                    )
                    pattern = None
        captures: List[str] = []
        captures_ok = pattern is not None or "pattern" not in values
        if "captures" in values:
            e = values["captures"]
            try:
                if e.items:
                    captures = [n for v, _l in e.items for n in _as_names(v, "captures")]
                elif e.value is not None:
                    captures = _as_names(e.value, "captures")
                captures = self.check_captures(captures, groups if pattern else None)
            except _Bad as exc:
                bad(e.line, exc.message, exc.hint)
                captures = []
                captures_ok = False
        known = set(captures) | set(named)
        if trigger == "job_end":
            known = {"exit_code"}

        condition = get("condition", lambda v: _as_text(v, "condition").strip())
        if condition is not None:
            from sidecar.conditions import compile_condition

            example = "int(exit_code) != 0" if trigger == "job_end" else "float(loss) > 5"
            try:
                cond = compile_condition(condition)
            except ValueError as exc:
                bad(
                    values["condition"].line,
                    f"condition: {exc}",
                    f"a Python expression over the captures, e.g. {example}",
                )
                condition = None
            else:
                missing = sorted(cond.names - known)
                if missing and trigger == "job_end":
                    bad(
                        values["condition"].line,
                        "condition uses "
                        + ", ".join(repr(m) for m in missing)
                        + ": a job_end condition can only use exit_code",
                        f"e.g. condition=\"{example}\"",
                    )
                    condition = None
                elif missing and captures_ok:
                    bad(
                        values["condition"].line,
                        "condition uses "
                        + ", ".join(repr(m) for m in missing)
                        + (
                            ", which is not a capture"
                            if len(missing) == 1
                            else ", which are not captures"
                        ),
                        "name the regex groups with captures=[...] "
                        f"(now: {', '.join(sorted(known)) or 'none'})",
                    )
                    condition = None

        # thresholds (line and probe watchers)
        threshold = get("threshold", lambda v: _as_rate_limit(v, "threshold"))
        suppress = get("suppress", lambda v: _as_seconds(v, "suppress"))
        track_by: Optional[str] = None
        if "track_by" in values:
            te = values["track_by"]
            if te.value is not None and pattern is not None and captures_ok:
                try:
                    track_by = track_by_template(
                        _as_text(te.value, "track_by"), captures, named, groups
                    )
                except TrackByError as exc:
                    bad(te.line, str(exc), exc.hint)
                else:
                    if threshold is None and suppress is None and "threshold" not in values:
                        bad(
                            te.line,
                            "track_by is given without threshold or suppress",
                            "track_by keeps the counts of threshold and the holding back of "
                            "suppress apart per key: add threshold=5/60 or suppress=10m, or "
                            "remove track_by",
                        )
        throttle: Optional[Throttle] = None
        if threshold is not None or suppress is not None or track_by is not None:
            throttle = Throttle(threshold=threshold, track_by=track_by, suppress=suppress)

        # stale watchers
        stale_timeout = get("timeout", lambda v: _as_seconds(v, "timeout"))
        require_alive = get("require_alive", lambda v: _as_bool(v, "require_alive"))
        max_cpu = get("max_cpu", lambda v: _as_number(v, "max_cpu", 0.0, "max_cpu=5 (percent "
                                                       "of one core)"))
        grace = get("grace", lambda v: _as_seconds(v, "grace"))
        required = REQUIRED_KEYS.get(trigger)
        if required is not None and required[0] not in values and not raw.broken:
            bad(raw.line, f"{required[0]} is missing", required[1])
        if trigger == "stale" and max_cpu is not None and require_alive is False:
            bad(
                values["require_alive"].line,
                "max_cpu is given but require_alive is false",
                "max_cpu only counts while the job's processes are alive (it implies "
                "require_alive=true): remove require_alive=false, or remove max_cpu",
            )

        # time limit
        before = get("before", lambda v: _as_seconds(v, "before"))
        signal_name: Optional[str] = TIME_LIMIT_SIGNAL
        if "signal" in values:
            signal_name = get("signal", _as_signal)

        # memory
        fraction = get("fraction", _as_fraction)
        limit = get("limit", _as_limit)

        # probes
        probe = get("probe", _as_probe)
        probe_timeout = get("probe_timeout", lambda v: _as_seconds(v, "probe_timeout"))

        # actions
        actions: List[ActionSpec] = []
        action_lines: List[int] = []
        if "action" in values and "actions" in values:
            bad(
                values["actions"].line,
                "give either action or actions, not both",
                "put every action in actions=[...]",
            )
        for key in ("action", "actions"):
            ae = values.get(key)
            if ae is None:
                continue
            items: List[Tuple[_V, int]] = []
            if ae.items:
                items = list(ae.items)
            elif ae.value is not None and ae.value.kind == "list":
                items = [(v, ae.line) for v in ae.value.items]
            elif ae.value is not None:
                items = [(ae.value, ae.line)]
            if not items:
                bad(ae.line, f"{key} is empty")
            for v, line in items:
                try:
                    actions.append(_parse_action(v))
                    action_lines.append(line)
                except _Bad as exc:
                    bad(line, exc.message, exc.hint)
        if not values.get("action") and not values.get("actions"):
            actions = [ActionSpec("log_event")]  # as ssync: a watcher without action logs
            action_lines = [raw.line]

        variables = self.variable_names(captures, named, groups)
        variables.update(TRIGGER_VARIABLES.get(trigger, ()))
        if multiline is not None:
            variables.update(RECORD_VARIABLES)
        if throttle is not None:
            variables.update(THROTTLE_VARIABLES)
        for a, line in zip(actions, action_lines):
            self.check_templates(a, variables, label, line)

        if len(self.problems) > problems_before or raw.broken:
            return None
        final_name = name if name else "\0watcher-" + str(raw.line)
        common: Dict[str, Any] = dict(
            name=final_name,
            actions=tuple(actions),
            origin=Origin(self.filename, raw.line, raw.kind),
            max_triggers=max_triggers,
            rate_limit=rate_limit,
            max_failures=5 if max_failures is None else max_failures,
        )
        if trigger == "probe":
            assert pattern is not None and probe is not None
            return Watcher(
                source=Source(
                    probe=probe,
                    probe_interval=_SOURCE_DEFAULTS.probe_interval if interval is None
                    else interval,
                    probe_timeout=_SOURCE_DEFAULTS.probe_timeout if probe_timeout is None
                    else probe_timeout,
                ),
                trigger=RegexTrigger(pattern, tuple(captures), condition, ignore_case),
                timer_interval=(timer_secs or DEFAULT_TIMER_INTERVAL) if timer_on else None,
                throttle=throttle,
                **common,
            )
        if trigger in JOB_TRIGGERS:
            job_trigger: Trigger
            if trigger == "job_end":
                job_trigger = JobEndTrigger(condition=condition)
            elif trigger == "time_limit":
                assert before is not None
                job_trigger = TimeLimitTrigger(before=before, signal=signal_name)
            else:
                assert fraction is not None
                job_trigger = MemoryTrigger(
                    fraction=fraction,
                    limit=limit,
                    interval=_MEMORY_DEFAULTS.interval if interval is None else interval,
                )
            return Watcher(source=Source(), trigger=job_trigger, **common)

        # line and stale watchers read the job's output files
        otype = output_type or "stdout"
        files = self.outputs(otype)
        paths: List[str] = []
        for f in files:
            if f.path not in paths:
                paths.append(f.path)
        if all(f.path.startswith("/dev/") for f in files):
            bad(
                raw.line,
                f"the job's {otype} goes to {files[0].path}: there is nothing to watch",
                "remove --output/--error none (or choose another output_type)",
            )
            return None
        paths = [p for p in paths if not p.startswith("/dev/")]
        directory = os.path.dirname(paths[0])
        self.files[final_name] = tuple(files)
        file_trigger: Trigger
        if trigger == "stale":
            assert stale_timeout is not None
            file_trigger = StaleTrigger(
                timeout=stale_timeout,
                require_alive=bool(require_alive) or max_cpu is not None,
                max_cpu=max_cpu,
                grace=grace,
            )
        else:
            assert pattern is not None
            file_trigger = RegexTrigger(
                pattern, tuple(captures), condition, ignore_case, multiline=multiline
            )
        return Watcher(
            source=Source(directory=directory, paths=tuple(paths)),
            trigger=file_trigger,
            timer_interval=(timer_secs or DEFAULT_TIMER_INTERVAL) if timer_on else None,
            interval=interval,
            output_type=otype,
            throttle=throttle,
            **common,
        )

    def check_captures(self, captures: List[str], groups: Optional[int]) -> List[str]:
        import keyword

        seen: Set[str] = set()
        for c in captures:
            if not _IDENT.match(c) or keyword.iskeyword(c):
                raise _Bad(
                    f"captures: {c!r} is not a valid name",
                    "names are letters, digits and _, not starting with a digit",
                )
            if c.startswith("__"):
                raise _Bad(f"captures: {c!r} may not start with __")
            if c in BUILTIN_VARIABLES:
                raise _Bad(f"captures: {c!r} is a built-in variable", "choose another name")
            if c in seen:
                raise _Bad(f"captures: {c!r} is given twice")
            seen.add(c)
        if groups is not None and len(captures) > groups:
            raise _Bad(
                f"captures names {len(captures)} groups but the pattern has {groups}",
                "each name needs a (...) group in the pattern, in order",
            )
        return captures

    def variable_names(
        self, captures: Sequence[str], named: Sequence[str], groups: int
    ) -> Set[str]:
        names = set(captures) | set(named) | set(BUILTIN_VARIABLES)
        names.update(str(i) for i in range(groups + 1))
        return names

    def check_templates(self, a: ActionSpec, variables: Set[str], label: str, line: int) -> None:
        from sidecar.substitute import check_shell_template, unknown_variables

        def warn(msg: str, hint: Optional[str] = None) -> None:
            self.warnings.append(Problem(self.filename, msg, line, label, hint))

        env_known = set(self.environ)
        for key, value in a.params.items():
            if a.type == "run_command" and key in ("command", "cmd"):
                errors, warnings = check_shell_template(str(value), variables)
                for m in errors:
                    self.problems.append(Problem(self.filename, f"run_command: {m}", line, label))
                for m in warnings:
                    warn(f"run_command: {m}")
                continue
            texts: List[str] = []
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, dict):
                texts.extend(str(x) for x in value.values())
            for t in texts:
                unknown = [
                    u
                    for u in unknown_variables(t, variables)
                    if u not in env_known and not u.startswith(("SLURM_", "SBATCH_"))
                ]
                if unknown:
                    warn(
                        f"{a.type}({key}): "
                        + ", ".join("$" + u for u in unknown)
                        + " is not a known variable and will stay as written",
                        "variables: the captures, $0..$N, "
                        + ", ".join(BUILTIN_VARIABLES)
                        + ", and the environment (SLURM_*...)",
                    )
        if a.type == "resubmit":
            from sidecar.slurm import canonical_option

            for k in dict(a.params.get("modifications") or {}):
                if canonical_option(k) is None:
                    warn(
                        f"resubmit: {k!r} is not an sbatch option; the resubmission will fail",
                        "modifications are #SBATCH options such as mem, time, partition, gres",
                    )


# ------------------------------------------------------------------------- entry points
def parse_watchers(
    text: str,
    filename: str,
    *,
    environ: Optional[Mapping[str, str]] = None,
    cwd: Optional[str] = None,
    proc_root: Optional[str] = "/proc",
) -> List[Watcher]:
    """The watchers of a batch script's text; ``ConfigError`` lists every problem.
    ``environ`` (default ``os.environ``) is the job's environment, used to name the output
    files; ``cwd`` stands in for the submit directory outside a job."""
    b = _Builder(text, filename, os.environ if environ is None else environ, cwd, proc_root)
    watchers = b.build()
    if b.problems:
        raise ConfigError(sorted(b.problems, key=lambda p: p.line or 0))
    return watchers


def load_script_details(
    path: str,
    environ: Optional[Mapping[str, str]] = None,
    *,
    cwd: Optional[str] = None,
    proc_root: Optional[str] = "/proc",
) -> ScriptDetails:
    """Like ``load_script`` but also returns the files, the job and the warnings."""
    from sidecar.slurm import job_env

    env = os.environ if environ is None else environ
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(
            [Problem(path, f"cannot read the script: {exc.strerror or exc}")]
        ) from None
    b = _Builder(text, path, env, cwd, proc_root)
    watchers = b.build()
    if b.problems:
        raise ConfigError(sorted(b.problems, key=lambda p: p.line or 0))
    if not watchers:
        raise ConfigError(
            [
                Problem(
                    path,
                    "no #WATCHER lines in the script",
                    hint='add e.g. #WATCHER pattern="ERROR" action=log_event',
                )
            ]
        )
    config = Config(
        watchers=tuple(watchers),
        settings=Settings(),
        source_file=path,
        script=os.path.abspath(path),
    )
    return ScriptDetails(config, dict(b.files), job_env(env), tuple(b.warnings))


def load_script(path: str, environ: Optional[Mapping[str, str]] = None) -> Config:
    """The ``#WATCHER`` watchers of the batch script at ``path`` as a Config
    (``ConfigError`` with every problem)."""
    return load_script_details(path, environ).config
