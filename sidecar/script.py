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
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from sidecar.model import (
    ACTION_ALIASES,
    ACTION_TYPES,
    ActionSpec,
    Config,
    ConfigError,
    Origin,
    Problem,
    RateLimit,
    RegexTrigger,
    Settings,
    Source,
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
)
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


def _as_int(v: _V, what: str, minimum: int) -> int:
    t = _as_text(v, what).strip()
    try:
        n = int(t)
    except ValueError:
        raise _Bad(f"{what} must be a whole number, not {t!r}") from None
    if n < minimum:
        raise _Bad(f"{what} must be at least {minimum}, not {n}")
    return n


def _as_seconds(v: _V, what: str) -> float:
    t = _as_text(v, what).strip().lower()
    m = _DURATION.match(t)
    if not m or m.group(2) not in _UNITS:
        raise _Bad(f"{what} must be a number of seconds (or 5m, 1h), not {v.text!r}")
    secs = float(m.group(1)) * _UNITS[m.group(2)]
    if secs <= 0:
        raise _Bad(f"{what} must be more than 0 seconds")
    return secs


def _as_rate_limit(v: _V) -> Optional[RateLimit]:
    t = _as_text(v, "rate_limit").strip().lower()
    if t in ("none", "off", "0", "false", "unlimited"):
        return None
    count, slash, per = t.partition("/")
    if not slash or not count.strip().isdigit() or int(count) < 1:
        raise _Bad(
            f"rate_limit must look like 10/60 (10 firings per 60 s), 10/min or none, not {v.text!r}"
        )
    per = per.strip()
    if per in ("s", "sec", "m", "min", "h", "hr"):
        per = "1" + per
    seconds = _as_seconds(_V("bare", per), "rate_limit's period")
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

        for e in raw.entries:
            key = KEY_ALIASES.get(e.key, e.key)
            if key not in WATCHER_KEYS:
                guess = _close(key, list(WATCHER_KEYS) + list(KEY_ALIASES))
                bad(
                    e.line,
                    f"unknown key {e.key!r}",
                    (f"did you mean {guess}? " if guess else "")
                    + "keys: "
                    + ", ".join(WATCHER_KEYS),
                )
                continue
            if key in values:
                bad(
                    e.line,
                    f"{key} is given twice (lines {values[key].line} and {e.line})",
                    "keep one",
                )
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
        rate_limit = DEFAULT_RATE_LIMIT
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

        # pattern and captures
        groups = 0
        named: Tuple[str, ...] = ()
        if "pattern" not in values:
            if not raw.broken:  # a line cut short by a syntax error: already reported
                bad(raw.line, "pattern is missing", 'every watcher needs pattern="REGEX"')
        elif pattern is not None:
            if not pattern:
                bad(values["pattern"].line, "pattern is empty")
            elif len(pattern) > MAX_PATTERN:
                bad(
                    values["pattern"].line,
                    f"pattern too long ({len(pattern)} characters, at most {MAX_PATTERN})",
                )
            else:
                try:
                    rx = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
                    groups = rx.groups
                    named = tuple(rx.groupindex)
                except (re.error, OverflowError, RecursionError, ValueError) as exc:
                    bad(
                        values["pattern"].line,
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

        condition = get("condition", lambda v: _as_text(v, "condition").strip())
        if condition is not None:
            from sidecar.conditions import compile_condition

            try:
                cond = compile_condition(condition)
            except ValueError as exc:
                bad(
                    values["condition"].line,
                    f"condition: {exc}",
                    "a Python expression over the captures, e.g. float(loss) > 5",
                )
                condition = None
            else:
                missing = sorted(cond.names - known)
                if missing and captures_ok:
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
        for a, line in zip(actions, action_lines):
            self.check_templates(a, variables, label, line)

        if len(self.problems) > problems_before or raw.broken:
            return None
        assert pattern is not None
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
        final_name = name if name else "\0watcher-" + str(raw.line)
        self.files[final_name] = tuple(files)
        return Watcher(
            name=final_name,
            source=Source(directory=directory, paths=tuple(paths)),
            trigger=RegexTrigger(pattern, tuple(captures), condition, ignore_case),
            actions=tuple(actions),
            origin=Origin(self.filename, raw.line, raw.kind),
            max_triggers=max_triggers,
            rate_limit=rate_limit,
            max_failures=5 if max_failures is None else max_failures,
            timer_interval=(timer_secs or DEFAULT_TIMER_INTERVAL) if timer_on else None,
            interval=interval,
            output_type=otype,
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
