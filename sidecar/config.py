"""The TOML config front end: a config file -> ``model.Config``.

Reads the Haskell Sidecar's schema (``[[regex_actions]]``, ``[[stale_file_actions]]``,
``[[file_event_actions]]`` / ``[[event_actions]]``, ``queue_length``) and ours (the other
top-level settings, ``[notify]``, more keys per watcher, and the tables of the triggers that
understand the job: ``[[probe_actions]]``, ``[[job_end_actions]]``,
``[[time_limit_actions]]``, ``[[memory_actions]]``; see docs/config.md).

Validation is done by pydantic models with ``extra="forbid"`` (strict: TOML values are typed,
so ``"60"`` is not a number) plus a few checks of our own. Every problem found is collected and
raised at once as a ``model.ConfigError``; each ``model.Problem`` names the file, the line when
it can be found, the watcher, and says how to fix it. The engine only ever sees the frozen
dataclasses of ``sidecar.model``.

This module imports pydantic (the bulk of a config load's cost): only import it when a TOML
config is actually loaded.
"""

from __future__ import annotations

import keyword
import os
import re
import sys
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Type, Union

from sidecar import model as m
from sidecar.lazyimport import skip_plugin_search
from sidecar.types import USER_EVENT_KINDS

skip_plugin_search()  # none to find: spare the first model build the search
from pydantic import (  # noqa: E402
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

if sys.version_info >= (3, 11):
    import tomllib as _toml
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as _toml

__all__ = [
    "JOB_TABLES",
    "TABLES",
    "ConfigFileModel",
    "json_schema",
    "load_config",
    "load_config_text",
    "parse_rate_limit",
]

#: the watcher tables, in the order their watchers are listed in ``Config.watchers``
TABLES: Tuple[str, ...] = (
    "regex_actions",
    "stale_file_actions",
    "file_event_actions",
    "event_actions",  # what the Haskell program's code reads; same schema as file_event_actions
    "probe_actions",
    "job_end_actions",
    "time_limit_actions",
    "memory_actions",
)
#: tables whose watchers watch the job itself, no file
JOB_TABLES: Tuple[str, ...] = ("job_end_actions", "time_limit_actions", "memory_actions")
_FILE_KEYS = ("directory", "filepath_regex", "recursive", "start_at")

#: the file name used in problems that come from ``overrides`` (the command line)
OVERRIDES_FILE = "<command line>"

_DEFAULTS = m.Settings()
_DURATION_KEYS = frozenset(
    {"timeout", "action_timeout", "poll_interval", "drain_grace", "timer_interval", "per",
     "grace", "suppress", "interval", "probe_timeout", "before"}
)
#: the smallest memory limit taken as meant (SLURM's --mem=4096 means megabytes)
MIN_MEMORY_LIMIT = 1 << 20


class _Invalid(ValueError):
    """A validator's complaint, with a hint on how to fix it."""

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.hint = hint


def _ctx(info: ValidationInfo) -> Mapping[str, Any]:
    c = info.context
    return c if isinstance(c, Mapping) else {}


# ----------------------------------------------------------------------------------------
# checks shared by the models
# ----------------------------------------------------------------------------------------


def _compile(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """``re.compile`` without its FutureWarnings ("Possible nested set"): library code never
    prints, and the pattern means today what it says."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return re.compile(pattern, flags)


def _check_regex(key: str, pattern: str) -> None:
    """A regex must compile (Python ``re``; re2 compatibility is the matcher's business) and
    must not hold the control characters TOML makes of ``"\\b"`` and ``"\\f"``."""
    for ch, esc in (("\b", "\\b"), ("\f", "\\f")):
        if ch in pattern:
            raise _Invalid(
                f'{key} contains a control character: TOML turned "{esc}" in a double-quoted '
                "string into one",
                hint=f"write regexes as single-quoted TOML strings, e.g. {key} = '\\bERROR\\b'",
            )
    try:
        _compile(pattern)
    except re.error as exc:
        pos = exc.pos if exc.pos is not None else len(pattern)
        after = f" (after {pattern[:pos]!r})" if pos else ""
        hint = (
            "escape a literal ( ) [ ] { } . * + ? | with a backslash, and write the regex as a "
            "single-quoted TOML string so backslashes stay as they are"
        )
        if key == "filepath_regex" and pattern[:1] in ("*", "?"):
            as_re = pattern.replace(".", "\\.").replace("*", ".*").replace("?", ".")
            hint = f"filepath_regex is a regular expression, not a glob: write '{as_re}$'"
        raise _Invalid(
            f"{key} is not a valid regular expression: {exc.msg} at position {pos}{after}", hint
        ) from None


_RATE_RE = re.compile(
    r"^\s*(\d+)\s*/\s*(\d+(?:\.\d*)?|\.\d+)?\s*([a-zA-Z]+)?\s*$",
)
_UNITS: Mapping[str, float] = {
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}  # fmt: skip
_RATE_HINT = (
    'write rate_limit = "10/60s" for at most 10 firings per 60 seconds (units s, m, h, d: '
    '"5/min", "100/1h" ...), or rate_limit = {count = 10, per = 60}'
)
_THRESHOLD_HINT = (
    'write threshold = "5/60s" to fire only when 5 matches come within 60 seconds (units s, '
    'm, h, d: "3/min", "10/1h" ...), or threshold = {count = 5, per = 60}'
)


def parse_rate_limit(value: Any, key: str = "rate_limit") -> m.RateLimit:
    """``"10/60s"``, ``"5/min"``, ``"10/60"`` (seconds) or ``{count = 10, per = 60}``
    -> RateLimit. Raises ValueError with the reason. ``key`` names the value in messages
    (``threshold`` has the same forms)."""
    hint = _THRESHOLD_HINT if key == "threshold" else _RATE_HINT
    if isinstance(value, str):
        mo = _RATE_RE.match(value)
        if not mo or (mo.group(2) is None and mo.group(3) is None):
            raise _Invalid(f"{key} {value!r} is not of the form COUNT/PERIOD", hint)
        if len(mo.group(1)) > 15:
            raise _Invalid(f"{key}: the count {mo.group(1)[:20]}... is too large", hint)
        count = int(mo.group(1))
        num = float(mo.group(2)) if mo.group(2) is not None else 1.0
        unit = (mo.group(3) or "s").lower()
        if unit not in _UNITS:
            raise _Invalid(f"{key} {value!r}: unknown time unit {mo.group(3)!r}", hint)
        per = num * _UNITS[unit]
    elif isinstance(value, dict):
        unknown = sorted(set(value) - {"count", "per"})
        if unknown:
            raise _Invalid(f"{key}: unknown key {unknown[0]!r} (only count and per)", hint)
        if "count" not in value or "per" not in value:
            raise _Invalid(f"{key} needs both count and per", hint)
        count, per = value["count"], value["per"]
        if isinstance(count, bool) or not isinstance(count, int):
            raise _Invalid(f"{key} count must be a whole number, got {_show(count)}", hint)
        if isinstance(per, bool) or not isinstance(per, (int, float)):
            raise _Invalid(f"{key} per must be a number of seconds, got {_show(per)}", hint)
        per = float(per)
    else:
        raise _Invalid(
            f"{key} must be a string or a table, got {_kind(value)} {_show(value)}", hint
        )
    if count < 1:
        raise _Invalid(f"{key} count must be at least 1, got {count}", hint)
    if not (per > 0 and per != float("inf")):
        raise _Invalid(f"{key} period must be > 0 seconds, got {per:g}", hint)
    return m.RateLimit(count=count, per_s=per)


def _check_param_value(v: Any, path: str) -> None:
    if isinstance(v, (str, bool, int, float)):
        return
    if isinstance(v, list):
        for i, x in enumerate(v):
            _check_param_value(x, f"{path}[{i + 1}]")
        return
    if isinstance(v, dict):
        for k, x in v.items():
            _check_param_value(x, f"{path}.{k}")
        return
    raise _Invalid(
        f"{path} is {_kind(v)}: action parameters are strings, numbers, booleans, arrays or "
        "tables",
        hint="put it in quotes",
    )


# ----------------------------------------------------------------------------------------
# the pydantic models (validation only; converted to sidecar.model afterwards)
# ----------------------------------------------------------------------------------------

# defer_build: a model's validator is built when first used (a config without, say, stale
# watchers never pays for that table's model).
_STRICT = ConfigDict(extra="forbid", strict=True, defer_build=True)


def _no_items() -> List[Any]:
    """The default of the list fields. Not ``list``: pydantic asks a default factory for its
    signature, which for a builtin means parsing its text signature with tokenize (whose
    regexes cost about 1.5 ms to compile) - the same empty list, for less."""
    return []


EventKind = Literal[
    "create", "modify", "attribute", "remove", "close", "unknown", "delete_directory"
]  # must equal types.USER_EVENT_KINDS (a test checks)
StartAt = Literal["start", "end"]
_KNOWN_ACTIONS = tuple(m.ACTION_TYPES) + tuple(m.ACTION_ALIASES)


class RateLimitModel(BaseModel):
    """At most ``count`` firings per ``per`` seconds (further ones are skipped and logged)."""

    model_config = _STRICT
    count: int = Field(ge=1)
    per: float = Field(gt=0, allow_inf_nan=False, description="seconds")


class ActionModel(BaseModel):
    """One action: ``{type = "notify_slack", message = "..."}``. Keys other than ``type`` and
    ``timeout`` are the action's parameters."""

    model_config = ConfigDict(extra="allow", strict=True, defer_build=True)
    type: str = Field(description="one of " + ", ".join(_KNOWN_ACTIONS))
    timeout: Optional[float] = Field(
        None, gt=0, allow_inf_nan=False, description="seconds; default: the watcher's, then "
        "the top-level action_timeout"
    )

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v in m.ACTION_TYPES or v in m.ACTION_ALIASES:
            return v
        import difflib

        close = difflib.get_close_matches(v.lower(), _KNOWN_ACTIONS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "one of " + ", ".join(m.ACTION_TYPES)
        raise _Invalid(f"unknown action type {v!r}", hint)

    @model_validator(mode="after")
    def _params(self) -> ActionModel:
        extra = self.model_extra or {}
        for k, v in extra.items():
            _check_param_value(v, k)
        if m.ACTION_ALIASES.get(self.type, self.type) == "run_command":
            if "cmd" in extra and "command" in extra:
                raise _Invalid("run_command has both cmd and command", "keep one of them")
            cmd = extra.get("command", extra.get("cmd"))
            if not isinstance(cmd, str) or not cmd.strip():
                raise _Invalid(
                    "run_command needs a command",
                    'add command = "..." to the action, e.g. {type = "run_command", '
                    'command = "echo $MATCH >> errors.txt"}',
                )
        return self


class _TableModel(BaseModel):
    """The model of one watcher table (each table has its own keys)."""

    model_config = _STRICT


# defaults of the internal model, for the tables' defaults
_SOURCE_DEFAULTS = m.Source()
_MULTILINE_DEFAULTS = m.MultiLine(end="")
_MEMORY_DEFAULTS = m.MemoryTrigger(fraction=1.0)
_TIME_LIMIT_DEFAULTS = m.TimeLimitTrigger(before=1.0)
MAX_RECORD_LINES = 100_000  # the most lines a multi-line record may be given


def _v_rate(v: Any, key: str) -> Any:
    if v is None:
        return None
    rl = parse_rate_limit(v, key)
    return RateLimitModel(count=rl.count, per=rl.per_s)


def _v_captures(v: List[str]) -> List[str]:
    for j, c in enumerate(v):
        if not c.isidentifier() or keyword.iskeyword(c):
            raise _Invalid(
                f"capture name {c!r} is not a valid name",
                "use letters, digits and _ (not starting with a digit), e.g. captures = "
                '["epoch", "loss"]',
            )
        if c in v[:j]:
            raise _Invalid(f"capture name {c!r} is given twice", "name each group once")
    return v


def _v_condition(
    v: Optional[str], names: Optional[Tuple[str, ...]] = None, example: str = ""
) -> Optional[str]:
    """A condition must compile (when sidecar.conditions is there); with ``names``, it may
    only use those variables."""
    if v is None:
        return v
    try:
        from sidecar.conditions import compile_condition
    except ImportError:  # not installed with this build: the engine checks it again
        return v
    example = example or 'condition = "float(loss) > 5 and int(epoch) > 10"'
    try:
        cond = compile_condition(v)
    except (ValueError, SyntaxError) as exc:
        raise _Invalid(
            f"condition {v!r} is not valid: {exc}",
            f"a condition is an expression over the captures, e.g. {example}",
        ) from None
    except Exception as exc:  # a bug there must not become a traceback here
        raise _Invalid(f"condition {v!r} could not be checked: {exc!r}") from None
    used = getattr(cond, "names", None)
    if names is not None and isinstance(used, (set, frozenset)):
        unknown = sorted(str(n) for n in used if n not in names)
        if unknown:
            raise _Invalid(
                f"condition {v!r} uses {', '.join(repr(n) for n in unknown)}: this watcher's "
                f"condition can only use {', '.join(names)}",
                f"e.g. {example}",
            )
    return v


def _check_preset(v: str, key: str) -> None:
    if v in m.MULTILINE_PRESETS:
        return
    import difflib

    close = difflib.get_close_matches(v, list(m.MULTILINE_PRESETS), n=1, cutoff=0.5)
    presets = ", ".join(repr(p) for p in m.MULTILINE_PRESETS)
    raise _Invalid(
        f"{key}: unknown preset {v!r}",
        (f"did you mean {close[0]!r}? " if close else "")
        + f"presets: {presets}; for other records write multiline = {{end = 'REGEX'}} (the "
        "regex of a record's last line; line_regex is its first)",
    )


class MultiLineModel(BaseModel):
    """``multiline = {...}``: a record from a line ``line_regex`` matches to a line ``end``
    matches (both included), at most ``max_lines`` lines; handed over as it is after
    ``timeout`` seconds without a new line."""

    model_config = _STRICT
    preset: Optional[str] = Field(
        None,
        description="a known kind of record: " + ", ".join(m.MULTILINE_PRESETS)
        + " (its start and end regexes; line_regex and end override them)",
    )
    end: Optional[str] = Field(
        None, description="regex of a record's last line (searched); required without preset"
    )
    max_lines: int = Field(
        _MULTILINE_DEFAULTS.max_lines, ge=1, le=MAX_RECORD_LINES,
        description="a record is handed over when it has this many lines",
    )
    timeout: float = Field(
        _MULTILINE_DEFAULTS.timeout, gt=0, allow_inf_nan=False,
        description="seconds without a new line before the record is handed over as it is",
    )

    @field_validator("preset")
    @classmethod
    def _preset(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            _check_preset(v, "preset")
        return v

    @field_validator("end")
    @classmethod
    def _end(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            if not v:
                raise _Invalid("end must not be empty", "end = 'REGEX' of a record's last line")
            _check_regex("end", v)
        return v

    @model_validator(mode="after")
    def _end_or_preset(self) -> MultiLineModel:
        if self.end is None and self.preset is None:
            raise _Invalid(
                "a multiline table needs end (the regex of a record's last line) or preset",
                "e.g. multiline = {end = '^END'} or multiline = \"python_traceback\"",
            )
        return self


def _v_multiline(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, str):
        _check_preset(v, "multiline")
        return v
    if isinstance(v, dict):
        try:
            return MultiLineModel.model_validate(v)
        except ValidationError as exc:
            described = [
                _describe(err, tuple(MultiLineModel.model_fields), "multiline")
                for err in exc.errors()
            ]
            msg = "; ".join(d[0] for d in described)
            raise _Invalid(f"multiline: {msg}", described[0][1]) from None
    raise _Invalid(
        f"multiline must be a preset name or a table, got {_kind(v)} {_show(v)}",
        'write multiline = "python_traceback", or multiline = {end = \'REGEX\', max_lines = '
        "100, timeout = 5}",
    )


def _v_probe(v: str) -> str:
    if not v.strip():
        raise _Invalid(
            "probe is empty",
            'probe is a /bin/sh command, e.g. probe = "nvidia-smi '
            '--query-gpu=utilization.gpu --format=csv,noheader,nounits"',
        )
    if "\x00" in v:
        raise _Invalid("probe contains a NUL character", "remove it")
    return v


class _WatcherModel(_TableModel):
    """Keys every table of file watchers has."""

    model_config = _STRICT
    name: Optional[str] = Field(
        None, min_length=1, description="unique; default <table>[<n>], e.g. regex_actions[1]"
    )
    directory: str = Field(
        ".", min_length=1, description="relative to the directory sidecar is started in"
    )
    filepath_regex: str = Field(
        description="searched in each file's path relative to directory"
    )
    recursive: bool = Field(False, description="also watch subdirectories")
    cmd: Optional[str] = Field(None, min_length=1, description="shell command (or: command)")
    command: Optional[str] = Field(None, min_length=1, description="shell command (or: cmd)")
    actions: List[ActionModel] = Field(
        default_factory=_no_items, description="actions run after cmd, in order"
    )
    start_at: Optional[StartAt] = Field(None, description="default: the top-level start_at")
    max_triggers: Optional[int] = Field(None, ge=1, description="stop firing after N firings")
    rate_limit: Optional[Union[str, RateLimitModel]] = Field(
        None, description='"10/60s" or {count = 10, per = 60}; default: no limit'
    )
    max_failures: int = Field(
        5, ge=0, description="consecutive failed actions before the watcher is disabled; 0=never"
    )
    action_timeout: Optional[float] = Field(
        None, gt=0, allow_inf_nan=False, description="seconds per action of this watcher"
    )

    @field_validator("filepath_regex")
    @classmethod
    def _filepath_regex(cls, v: str) -> str:
        _check_regex("filepath_regex", v)
        return v

    @field_validator("directory")
    @classmethod
    def _directory(cls, v: str, info: ValidationInfo) -> str:
        ctx = _ctx(info)
        if not ctx.get("check_dirs"):
            return v
        base = str(ctx.get("base_dir") or os.getcwd())
        full = os.path.normpath(os.path.join(base, v))
        if os.path.isdir(full):
            return v
        if os.path.exists(full):
            raise _Invalid(
                f"directory {v!r} is not a directory ({full})",
                "directory names the folder to watch; pick its files with filepath_regex",
            )
        if v.startswith("~") or "$" in v:
            hint = (
                "~ and $VARIABLES are not expanded in directory: give the path itself "
                "(absolute, or relative to the directory sidecar is started in)"
            )
        else:
            hint = (
                f"create it (mkdir -p {v}) or fix the path; a relative directory is relative "
                "to the directory sidecar is started in"
            )
        raise _Invalid(f"directory {v!r} does not exist (looked for {full})", hint)

    @field_validator("rate_limit", mode="before")
    @classmethod
    def _rate_limit(cls, v: Any) -> Any:
        if v is None:
            return None
        rl = parse_rate_limit(v)
        return RateLimitModel(count=rl.count, per=rl.per_s)


class RegexActionModel(_WatcherModel):
    """``[[regex_actions]]``: run actions for each line that matches ``line_regex``."""

    line_regex: Optional[str] = Field(
        None,
        description="searched in each new line; required unless multiline names a preset "
        "(whose start regex it then defaults to)",
    )
    timeout: Optional[float] = Field(
        None, gt=0, allow_inf_nan=False, description="action timeout (same as action_timeout)"
    )
    captures: List[str] = Field(
        default_factory=_no_items, description="names for the regex's groups, in order"
    )
    condition: Optional[str] = Field(
        None, min_length=1, description="act only when this is true, e.g. float(loss) > 5"
    )
    ignore_case: bool = False
    timer_interval: Optional[float] = Field(
        None, gt=0, allow_inf_nan=False,
        description="after the first firing, repeat the actions every N seconds",
    )
    multiline: Optional[Union[str, MultiLineModel]] = Field(
        None,
        description='a record over several lines: a preset ("python_traceback") or '
        "{end = 'REGEX', preset = ..., max_lines = 100, timeout = 5}",
    )
    threshold: Optional[Union[str, RateLimitModel]] = Field(
        None, description='fire only when COUNT matches come within PERIOD: "5/60s" or '
        "{count = 5, per = 60}",
    )
    track_by: Optional[str] = Field(
        None, min_length=1,
        description="keep threshold counts and suppression per value of this template "
        '("$1", "${host}")',
    )
    suppress: Optional[float] = Field(
        None, gt=0, allow_inf_nan=False,
        description="after a firing, hold back firings of the same key for N seconds",
    )

    @field_validator("line_regex")
    @classmethod
    def _line_regex(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            _check_regex("line_regex", v)
        return v

    @field_validator("captures")
    @classmethod
    def _captures(cls, v: List[str]) -> List[str]:
        return _v_captures(v)

    @field_validator("condition")
    @classmethod
    def _condition(cls, v: Optional[str]) -> Optional[str]:
        return _v_condition(v)

    @field_validator("multiline", mode="before")
    @classmethod
    def _multiline(cls, v: Any) -> Any:
        return _v_multiline(v)

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, v: Any) -> Any:
        return _v_rate(v, "threshold")


class StaleFileActionModel(_WatcherModel):
    """``[[stale_file_actions]]``: act when a matching file has not been written to for
    ``timeout`` seconds."""

    timeout: float = Field(
        gt=0, allow_inf_nan=False,
        description="seconds without a write before the file is stale (NOT the action timeout: "
        "that is action_timeout here)",
    )
    require_alive: Optional[bool] = Field(
        None,
        description="stale only while the job's processes are alive (default false; true when "
        "max_cpu is given)",
    )
    max_cpu: Optional[float] = Field(
        None, ge=0, allow_inf_nan=False,
        description="... and only while they used at most this much CPU over the quiet time, "
        "in percent of one core",
    )
    grace: Optional[float] = Field(
        None, gt=0, allow_inf_nan=False,
        description="seconds after start: a matching file that has not appeared by then is "
        "stale",
    )


class FileEventActionModel(_WatcherModel):
    """``[[file_event_actions]]`` (or ``[[event_actions]]``): act on file events."""

    event_types: List[EventKind] = Field(min_length=1)
    timeout: Optional[float] = Field(
        None, gt=0, allow_inf_nan=False, description="action timeout (same as action_timeout)"
    )


class ProbeActionModel(_TableModel):
    """``[[probe_actions]]``: run ``probe`` (a /bin/sh command) every ``interval`` seconds and
    treat each line of its output as a new line of a file: ``line_regex``, captures,
    conditions and actions as in ``[[regex_actions]]``."""

    name: Optional[str] = Field(
        None, min_length=1, description="unique; default probe_actions[<n>]"
    )
    probe: str = Field(description="the command (run by /bin/sh) whose output is matched")
    interval: float = Field(
        _SOURCE_DEFAULTS.probe_interval, gt=0, allow_inf_nan=False,
        description="seconds between runs of the probe",
    )
    probe_timeout: float = Field(
        _SOURCE_DEFAULTS.probe_timeout, gt=0, allow_inf_nan=False,
        description="seconds a probe may run before it is killed",
    )
    line_regex: str = Field(description="searched in each line of the probe's output")
    captures: List[str] = Field(
        default_factory=_no_items, description="names for the regex's groups, in order"
    )
    condition: Optional[str] = Field(
        None, min_length=1, description="act only when this is true, e.g. float(util) < 5"
    )
    ignore_case: bool = False
    threshold: Optional[Union[str, RateLimitModel]] = Field(
        None, description='fire only when COUNT matches come within PERIOD: "5/60s" or '
        "{count = 5, per = 60}",
    )
    track_by: Optional[str] = Field(
        None, min_length=1, description="keep counts and suppression per value of this template"
    )
    suppress: Optional[float] = Field(
        None, gt=0, allow_inf_nan=False,
        description="after a firing, hold back firings of the same key for N seconds",
    )
    cmd: Optional[str] = Field(None, min_length=1, description="shell command (or: command)")
    command: Optional[str] = Field(None, min_length=1, description="shell command (or: cmd)")
    actions: List[ActionModel] = Field(
        default_factory=_no_items, description="actions run after cmd, in order"
    )
    max_triggers: Optional[int] = Field(None, ge=1, description="stop firing after N firings")
    rate_limit: Optional[Union[str, RateLimitModel]] = Field(
        None, description='"10/60s" or {count = 10, per = 60}; default: no limit'
    )
    max_failures: int = Field(
        5, ge=0, description="consecutive failed actions before the watcher is disabled; 0=never"
    )
    action_timeout: Optional[float] = Field(
        None, gt=0, allow_inf_nan=False, description="seconds per action of this watcher"
    )
    timer_interval: Optional[float] = Field(
        None, gt=0, allow_inf_nan=False,
        description="after the first firing, repeat the actions every N seconds",
    )

    @field_validator("probe")
    @classmethod
    def _probe(cls, v: str) -> str:
        return _v_probe(v)

    @field_validator("line_regex")
    @classmethod
    def _line_regex(cls, v: str) -> str:
        _check_regex("line_regex", v)
        return v

    @field_validator("captures")
    @classmethod
    def _captures(cls, v: List[str]) -> List[str]:
        return _v_captures(v)

    @field_validator("condition")
    @classmethod
    def _condition(cls, v: Optional[str]) -> Optional[str]:
        return _v_condition(v, example='condition = "float(util) < 5"')

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, v: Any) -> Any:
        return _v_rate(v, "threshold")

    @field_validator("rate_limit", mode="before")
    @classmethod
    def _rate_limit(cls, v: Any) -> Any:
        return _v_rate(v, "rate_limit")


class _JobModel(_TableModel):
    """Keys every table of job watchers has (they watch the job itself, no file)."""

    name: Optional[str] = Field(
        None, min_length=1, description="unique; default <table>[<n>], e.g. memory_actions[1]"
    )
    cmd: Optional[str] = Field(None, min_length=1, description="shell command (or: command)")
    command: Optional[str] = Field(None, min_length=1, description="shell command (or: cmd)")
    actions: List[ActionModel] = Field(
        default_factory=_no_items, description="actions run after cmd, in order"
    )
    action_timeout: Optional[float] = Field(
        None, gt=0, allow_inf_nan=False, description="seconds per action of this watcher"
    )
    max_failures: int = Field(
        5, ge=0, description="consecutive failed actions before the watcher is disabled; 0=never"
    )


class JobEndActionModel(_JobModel):
    """``[[job_end_actions]]``: act when the job's main process exits (once)."""

    condition: Optional[str] = Field(
        None, min_length=1,
        description='act only when this is true of exit_code, e.g. "int(exit_code) != 0"',
    )

    @field_validator("condition")
    @classmethod
    def _condition(cls, v: Optional[str]) -> Optional[str]:
        return _v_condition(
            v, names=("exit_code",), example='condition = "int(exit_code) != 0"'
        )


class TimeLimitActionModel(_JobModel):
    """``[[time_limit_actions]]``: act ``before`` seconds before the job's time limit, or
    when ``signal`` arrives (``#SBATCH --signal=B:USR1@600``), whichever comes first (once)."""

    before: float = Field(
        gt=0, allow_inf_nan=False, description="seconds before the job's end time"
    )
    signal: Union[str, bool] = Field(
        "USR1" if _TIME_LIMIT_DEFAULTS.signal is None else _TIME_LIMIT_DEFAULTS.signal,
        description='also fire when this signal arrives ("USR1", "SIGUSR2" ...); false: no '
        "signal",
    )

    @field_validator("signal", mode="before")
    @classmethod
    def _signal(cls, v: Any) -> Any:
        if v is False:
            return False
        if v is True:
            raise _Invalid(
                "signal = true: name the signal",
                'e.g. signal = "USR1" (what #SBATCH --signal=B:USR1@600 sends), or '
                "signal = false for none",
            )
        if not isinstance(v, str):
            raise _Invalid(
                f"signal must be a signal name or false, got {_kind(v)} {_show(v)}",
                'e.g. signal = "USR1"',
            )
        from sidecar.units import parse_signal

        try:
            return parse_signal(v)
        except ValueError as exc:
            msg = str(exc)
            raise _Invalid(
                msg if msg.startswith("signal") else f"signal: {msg}",
                "or signal = false for no signal",
            ) from None


class MemoryActionModel(_JobModel):
    """``[[memory_actions]]``: act when the job's resident memory passes ``fraction`` of its
    limit; sampled every ``interval`` seconds, fires once per crossing."""

    fraction: float = Field(
        gt=0, le=1, allow_inf_nan=False, description="share of the limit, e.g. 0.9 for 90%"
    )
    limit: Optional[Union[int, str]] = Field(
        None,
        description='bytes, or a size "8G", "512M" (1024-based); default: the job\'s limit '
        "(SLURM_MEM_PER_NODE / SLURM_MEM_PER_CPU, else the cgroup's memory.max)",
    )
    interval: float = Field(
        _MEMORY_DEFAULTS.interval, gt=0, allow_inf_nan=False,
        description="seconds between samples",
    )
    max_triggers: Optional[int] = Field(None, ge=1, description="stop firing after N firings")
    rate_limit: Optional[Union[str, RateLimitModel]] = Field(
        None, description='"10/60s" or {count = 10, per = 60}; default: no limit'
    )

    @field_validator("limit", mode="before")
    @classmethod
    def _limit(cls, v: Any) -> Any:
        if v is None:
            return None
        from sidecar.units import format_size, parse_size

        hint = (
            'write limit = "8G" (K, M, G, T are 1024-based, as in #SBATCH --mem) or a number '
            "of bytes; leave it out to use the job's own limit"
        )
        if not isinstance(v, (int, float, str)) or isinstance(v, bool):
            raise _Invalid(f"limit must be a size, got {_kind(v)} {_show(v)}", hint)
        try:
            n = parse_size(v)
        except ValueError as exc:
            raise _Invalid(
                f"limit: {exc}", "or leave limit out to use the job's own limit"
            ) from None
        if n < MIN_MEMORY_LIMIT:
            shown = v if not isinstance(v, str) else v.strip()
            raise _Invalid(
                f"limit {_show(v)} is {format_size(n)}: below 1 MiB, surely not meant",
                f'did you mean limit = "{shown}M"? (in #SBATCH --mem={shown} a bare number '
                "is megabytes; here it is bytes)",
            )
        return n

    @field_validator("rate_limit", mode="before")
    @classmethod
    def _rate_limit(cls, v: Any) -> Any:
        return _v_rate(v, "rate_limit")


_TABLE_MODELS: Mapping[str, Type[_TableModel]] = {
    "regex_actions": RegexActionModel,
    "stale_file_actions": StaleFileActionModel,
    "file_event_actions": FileEventActionModel,
    "event_actions": FileEventActionModel,
    "probe_actions": ProbeActionModel,
    "job_end_actions": JobEndActionModel,
    "time_limit_actions": TimeLimitActionModel,
    "memory_actions": MemoryActionModel,
}


class NotifyModel(BaseModel):
    """``[notify]``: defaults for the notification actions."""

    model_config = _STRICT
    email_to: Optional[str] = Field(None, min_length=1, description="comma-separated addresses")
    email_from: Optional[str] = Field(None, min_length=1)
    smtp_url: Optional[str] = Field(
        None, min_length=1, description="apprise mailto:// or mailtos:// URL; default: local MTA"
    )
    slack_webhook: Optional[str] = Field(None, min_length=1)
    urls: List[str] = Field(
        default_factory=_no_items, description="extra apprise URLs for notify"
    )


class SettingsModel(BaseModel):
    """The top-level settings."""

    model_config = _STRICT
    queue_length: int = Field(_DEFAULTS.queue_length, ge=1)
    max_concurrent: int = Field(_DEFAULTS.max_concurrent, ge=1)
    action_timeout: float = Field(_DEFAULTS.action_timeout, gt=0, allow_inf_nan=False)
    output_cap: int = Field(_DEFAULTS.output_cap, ge=0)
    event_log: Optional[str] = Field(_DEFAULTS.event_log, min_length=1)
    backend: Literal["auto", "inotify", "poll"] = _DEFAULTS.backend  # type: ignore[assignment]
    poll_interval: float = Field(_DEFAULTS.poll_interval, gt=0, allow_inf_nan=False)
    nice: int = Field(_DEFAULTS.nice, ge=0, le=19)
    ionice_idle: bool = _DEFAULTS.ionice_idle
    max_line: int = Field(_DEFAULTS.max_line, ge=1)
    regex_time_limit: float = Field(
        _DEFAULTS.regex_time_limit, ge=0, allow_inf_nan=False,
        description="seconds of CPU a pattern on Python re may take on one line (0 = no limit)",
    )
    chunk_size: int = Field(_DEFAULTS.chunk_size, ge=1)
    start_at: StartAt = _DEFAULTS.start_at  # type: ignore[assignment]
    resubmit_limit: int = Field(_DEFAULTS.resubmit_limit, ge=0)
    drain_grace: float = Field(_DEFAULTS.drain_grace, ge=0, allow_inf_nan=False)
    state_file: Optional[str] = Field(_DEFAULTS.state_file, min_length=1)
    prometheus_textfile: Optional[str] = Field(
        _DEFAULTS.prometheus_textfile,
        min_length=1,
        description="keep the stored metrics in this file, in Prometheus text format",
    )
    # the defaults as such (model_construct): what model_validate({}) gives, without
    # building NotifyModel's own validator (SettingsModel's has it inside)
    notify: NotifyModel = Field(default_factory=lambda: NotifyModel.model_construct())


class ConfigFileModel(SettingsModel):
    """A whole config file (used for ``json_schema``; loading validates piece by piece)."""

    model_config = ConfigDict(
        extra="forbid", strict=True, title="sidecar config", defer_build=True
    )
    regex_actions: List[RegexActionModel] = Field(default_factory=_no_items)
    stale_file_actions: List[StaleFileActionModel] = Field(default_factory=_no_items)
    file_event_actions: List[FileEventActionModel] = Field(default_factory=_no_items)
    event_actions: List[FileEventActionModel] = Field(default_factory=_no_items)
    probe_actions: List[ProbeActionModel] = Field(default_factory=_no_items)
    job_end_actions: List[JobEndActionModel] = Field(default_factory=_no_items)
    time_limit_actions: List[TimeLimitActionModel] = Field(default_factory=_no_items)
    memory_actions: List[MemoryActionModel] = Field(default_factory=_no_items)


def json_schema() -> Dict[str, Any]:
    """The JSON schema of a config file (for ``sidecar schema``)."""
    schema = ConfigFileModel.model_json_schema()
    regex = schema.get("$defs", {}).get("RegexActionModel")
    if isinstance(regex, dict):  # line_regex is required unless multiline names a preset
        preset = {"anyOf": [{"type": "string"}, {"type": "object", "required": ["preset"]}]}
        regex["anyOf"] = [
            {"required": ["line_regex"]},
            {"required": ["multiline"], "properties": {"multiline": preset}},
        ]
    for name in ("RegexActionModel", "MultiLineModel"):  # the preset names
        d = schema.get("$defs", {}).get(name, {})
        key = "multiline" if name == "RegexActionModel" else "preset"
        prop = d.get("properties", {}).get(key)
        if isinstance(prop, dict):
            for alt in prop.get("anyOf", []):
                if alt.get("type") == "string":
                    alt["enum"] = list(m.MULTILINE_PRESETS)
    return schema


# ----------------------------------------------------------------------------------------
# finding lines (tomllib gives no positions: scan the text for headers and keys)
# ----------------------------------------------------------------------------------------

_HEADER_RE = re.compile(
    r"""^[ \t]*(\[\[?)[ \t]*([A-Za-z0-9_\-."' \t]+?)[ \t]*\]\]?[ \t]*(?:\#.*)?$"""
)


def _norm_name(raw: str) -> str:
    return ".".join(p.strip().strip("\"'") for p in raw.split("."))


class _Locator:
    """Heuristic line numbers (1-based) for tables and keys in a TOML text."""

    def __init__(self, text: str) -> None:
        self.lines = [ln.rstrip("\r") for ln in text.split("\n")]
        self.headers: List[Tuple[int, bool, str]] = []  # (lineno, is_array, name)
        for no, ln in enumerate(self.lines, start=1):
            mo = _HEADER_RE.match(ln)
            if mo and ln.count("[") == ln.count("]"):
                self.headers.append((no, mo.group(1) == "[[", _norm_name(mo.group(2))))

    def _span_end(self, after: int, name: str) -> int:
        for no, _arr, hname in self.headers:
            if no > after and not hname.startswith(name + "."):
                return no
        return len(self.lines) + 1

    def entry_span(self, table: str, index: int) -> Optional[Tuple[int, int]]:
        starts = [no for no, arr, name in self.headers if arr and name == table]
        if index >= len(starts):
            return None
        return starts[index], self._span_end(starts[index], table)

    def table_span(self, name: str) -> Optional[Tuple[int, int]]:
        for no, arr, hname in self.headers:
            if not arr and hname == name:
                return no, self._span_end(no, name)
        return None

    def _find(self, start: int, end: int, keys: Sequence[str], prefix: str) -> Optional[int]:
        line: Optional[int] = None
        lo = start
        for depth, k in enumerate(keys):
            q = re.escape(k)
            if depth == 0:
                pat = re.compile(rf"""^\s*["']?{q}["']?\s*[=.]""")
            else:
                pat = re.compile(rf"""(?:^|[\s{{,.])["']?{q}["']?\s*=""")
            found = None
            for no in range(lo, min(end, len(self.lines) + 1)):
                if pat.search(self.lines[no - 1]):
                    found = no
                    break
            if found is None:  # maybe a sub-table header: [table.key]
                full = f"{prefix}{'.'.join(keys[: depth + 1])}"
                for no, _arr, hname in self.headers:
                    if lo <= no < end and hname == full:
                        found = no
                        break
            if found is None:
                break
            line = lo = found
        return line

    def line(
        self, table: Optional[str], index: Optional[int], keys: Sequence[str]
    ) -> Optional[int]:
        """The line of ``keys`` (a path) in entry ``index`` of ``table`` (None: top level)."""
        keys = [k for k in keys if isinstance(k, str)]
        if table is not None and index is not None:
            span = self.entry_span(table, index)
            if span is None:  # inline form: regex_actions = [{...}]
                return self.line(None, None, [table])
            if not keys:
                return span[0]
            return self._find(span[0], span[1], keys, table + ".") or span[0]
        if not keys:
            return None
        top_end = self.headers[0][0] if self.headers else len(self.lines) + 1
        if keys[0] == "notify":
            span = self.table_span("notify")
            if span is not None:
                if len(keys) == 1:
                    return span[0]
                return self._find(span[0], span[1], keys[1:], "notify.") or span[0]
        found = self._find(1, top_end, keys, "")
        if found is not None:
            return found
        for no, _arr, hname in self.headers:  # [[regex_action]]: an unknown table
            if hname == keys[0] or hname.startswith(keys[0] + "."):
                return no
        return None


# ----------------------------------------------------------------------------------------
# pydantic errors -> Problems
# ----------------------------------------------------------------------------------------


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "a table"
    return "a date/time" if type(v).__module__ == "datetime" else type(v).__name__


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        s = v if len(v) <= 60 else v[:57] + "..."
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, dict):
        return "{...}"
    s = str(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _path(loc: Sequence[Union[str, int]]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part + 1}]"
        else:
            out += ("." if out else "") + part
    return out


_MISSING_EXAMPLES: Mapping[str, str] = {
    "line_regex": "line_regex = 'ERROR.*'",
    "probe": 'probe = "nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits"',
    "before": "before = 600 (seconds before the job's time limit)",
    "fraction": "fraction = 0.9 (of the job's memory limit)",
    "filepath_regex": r"filepath_regex = '.*\.log$'",
    "timeout": "timeout = 3600.0",
    "event_types": 'event_types = ["create", "modify"]',
    "type": 'type = "run_command"',
    "count": "count = 10",
    "per": "per = 60",
}

_EVENT_HINTS: Mapping[str, str] = {
    "delete": "remove", "deleted": "remove", "removed": "remove", "unlink": "remove",
    "created": "create", "new": "create", "write": "modify", "written": "modify",
    "modified": "modify", "change": "modify", "changed": "modify", "attrib": "attribute",
    "close_write": "close", "closed": "close", "delete_dir": "delete_directory",
}  # fmt: skip

_ALL_WATCHER_KEYS: Mapping[str, Tuple[str, ...]] = {
    t: tuple(_TABLE_MODELS[t].model_fields) for t in TABLES
}
#: the tables, without the second name of file_event_actions
_CANONICAL_TABLES: Tuple[str, ...] = tuple(t for t in TABLES if t != "event_actions")
#: hints for values out of range, by key
_RANGE_HINTS: Mapping[str, str] = {
    "fraction": "fraction is a share of the memory limit: 0.9 means 90%",
    "max_cpu": "max_cpu is in percent of one core: 5 means 5% of one core",
}


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
_SETTINGS_KEYS: Tuple[str, ...] = tuple(SettingsModel.model_fields)
_TOP_KEYS: Tuple[str, ...] = _SETTINGS_KEYS + TABLES


def _unknown_key_hint(key: str, allowed: Sequence[str], section: Optional[str]) -> str:
    """Exact knowledge first (the key is valid elsewhere), then a fuzzy "did you mean"."""
    if section in JOB_TABLES and key in _FILE_KEYS:
        return (
            f"[[{section}]] watchers watch the job itself, not files: remove {key}"
        )
    if section == "probe_actions" and key in _FILE_KEYS:
        return (
            f"a probe reads a command's output, not files: remove {key} (the command is "
            'probe = "...")'
        )
    if section in JOB_TABLES + ("probe_actions",) and key == "timeout":
        probe = ", probe_timeout the probe's" if section == "probe_actions" else ""
        return f"action_timeout is the actions' time limit{probe}"
    if section in ("job_end_actions", "time_limit_actions") and key in (
        "max_triggers", "rate_limit"
    ):
        return f"a [[{section}]] watcher fires at most once: remove {key}"
    owners = [t for t in _CANONICAL_TABLES if key in _ALL_WATCHER_KEYS[t]]
    if section in TABLES and owners:
        return f"{key!r} is only valid in " + _and([f"[[{t}]]" for t in owners])
    if section is not None and key in _SETTINGS_KEYS:
        return (
            f"{key!r} is a top-level setting: move it above the first [table] or [[table]] "
            "header (in TOML every key after a header belongs to that table)"
        )
    if section is None and owners:
        return (
            f"{key!r} belongs in a [[{owners[0]}]] table: is its [[{owners[0]}]] header "
            "missing above it?"
        )
    import difflib

    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "allowed keys: " + ", ".join(allowed)


def _describe(
    err: Mapping[str, Any], allowed: Sequence[str], section: Optional[str]
) -> Tuple[str, Optional[str]]:
    """(message, hint) for one pydantic error; the message does not say where."""
    loc: Tuple[Union[str, int], ...] = tuple(err["loc"])
    t: str = err["type"]
    v = err.get("input")
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    path = _path(loc)
    key = next((p for p in reversed(loc) if isinstance(p, str)), path)
    dur = key in _DURATION_KEYS
    if t == "extra_forbidden":
        return f"unknown key {key!r}", _unknown_key_hint(key, allowed, section)
    if t == "missing":
        ex = _MISSING_EXAMPLES.get(key)
        return f"missing required key {path!r}", (f"add {ex}" if ex else None)
    if t == "value_error":
        e = ctx.get("error")
        hint = getattr(e, "hint", None)
        msg = str(e) if e is not None else str(err.get("msg", ""))
        if len(loc) >= 2 and loc[0] == "actions":  # which action
            msg = f"{_path(loc[:2])}: {msg}"
        return msg, hint
    if t == "literal_error":
        expected = str(ctx.get("expected", ""))
        if "event_types" in loc and isinstance(v, str):
            import difflib

            allowed_ev = ", ".join(USER_EVENT_KINDS)
            if v.lower() in USER_EVENT_KINDS:
                return f"unknown event type {v!r}", f"event types are lower case: {v.lower()!r}"
            guess = _EVENT_HINTS.get(v.lower()) or next(
                iter(difflib.get_close_matches(v.lower(), USER_EVENT_KINDS, n=1)), None
            )
            hint = f"did you mean {guess!r}? " if guess else ""
            return f"unknown event type {v!r} in event_types", f"{hint}allowed: {allowed_ev}"
        return f"{path} must be one of {expected}, got {_show(v)}", None
    if t in ("float_type", "finite_number", "float_parsing"):
        what = "a number of seconds" if dur else "a number"
        hint = None
        if isinstance(v, str):
            hint = f"write a bare number without quotes or units, e.g. {key} = 3600"
        elif t == "finite_number":
            hint = "inf and nan are not allowed"
        return f"{path} must be {what}, got {_kind(v)} {_show(v)}", hint
    if t in ("int_type", "int_from_float", "int_parsing"):
        hint = None
        if isinstance(v, float) and v.is_integer():
            hint = f"write {int(v)}, not {v}"
        elif isinstance(v, str):
            hint = "write the number without quotes"
        return f"{path} must be a whole number, got {_kind(v)} {_show(v)}", hint
    if t == "string_type":
        scalar = isinstance(v, (int, float, bool))
        hint = f'quote it: {key} = "{_show(v).strip(chr(34))}"' if scalar else None
        return f"{path} must be a string, got {_kind(v)} {_show(v)}", hint
    if t == "bool_type":
        hint = "write true or false without quotes" if isinstance(v, str) else None
        return f"{path} must be true or false, got {_kind(v)} {_show(v)}", hint
    if t == "list_type":
        ex = _MISSING_EXAMPLES.get(key, f'{key} = ["..."]')
        return f"{path} must be an array, got {_kind(v)} {_show(v)}", f"e.g. {ex}"
    if t in ("model_type", "dict_type", "model_attributes_type"):
        if len(loc) >= 2 and loc[0] == "actions":
            return (
                f"{path} must be an inline table, got {_kind(v)} {_show(v)}",
                'e.g. actions = [{type = "notify_slack", message = "loss is $loss"}]',
            )
        return f"{path} must be a table, got {_kind(v)} {_show(v)}", None
    if t in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
              "less_than_equal": "<="}[t]  # fmt: skip
        bound = next(iter(ctx.values()), "?")
        if isinstance(bound, float):
            bound = f"{bound:g}"
        what = f"{path} must be {op} {bound}"
        if "gt" in ctx and "le" not in ctx and dur:
            what = f"{path} must be more than {bound} seconds"
        return f"{what}, got {_show(v)}", _RANGE_HINTS.get(key)
    if t in ("too_short", "string_too_short"):
        if key == "event_types":
            return "event_types must name at least one event type", (
                "allowed: " + ", ".join(USER_EVENT_KINDS)
            )
        return f"{path} must not be empty", None
    return f"{path}: {err.get('msg', t)}", None


class _Collector:
    """Problems of one config text, with their lines."""

    def __init__(self, filename: str, locator: _Locator) -> None:
        self.filename = filename
        self.loc = locator
        self.problems: List[m.Problem] = []

    def add(
        self,
        message: str,
        hint: Optional[str] = None,
        *,
        table: Optional[str] = None,
        index: Optional[int] = None,
        keys: Sequence[Union[str, int]] = (),
        watcher: Optional[str] = None,
        file: Optional[str] = None,
    ) -> None:
        line = None
        if file is None:
            line = self.loc.line(table, index, [k for k in keys if isinstance(k, str)])
        self.problems.append(
            m.Problem(file or self.filename, message, line=line, watcher=watcher, hint=hint)
        )

    def pydantic(
        self,
        exc: ValidationError,
        allowed: Sequence[str],
        *,
        table: Optional[str] = None,
        index: Optional[int] = None,
        where: str = "",
        watcher: Optional[str] = None,
        overridden: Sequence[str] = (),
    ) -> None:
        for err in exc.errors():
            loc = tuple(err["loc"])
            section, sub_allowed, at = table, allowed, where
            if table is None and len(loc) > 1 and loc[0] == "notify":
                section, sub_allowed, at = "notify", tuple(NotifyModel.model_fields), "[notify]"
            msg, hint = _describe(
                {**err, "loc": loc[1:]} if section == "notify" else err, sub_allowed, section
            )
            if section is None and err["type"] == "extra_forbidden":
                msg = msg.replace("unknown key", "unknown top-level key", 1)
            text = f"{at}: {msg}" if at else msg
            dotted = ".".join(str(p) for p in loc[:2])
            by_cli = bool(loc) and (loc[0] in overridden or dotted in overridden)
            file = OVERRIDES_FILE if by_cli else None
            if file is not None:
                text += " (from the command line)"
            self.add(text, hint, table=table, index=index, keys=loc, watcher=watcher, file=file)


# ----------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------


def _toml_problem(exc: Exception, filename: str, text: str) -> m.Problem:
    msg = str(exc)
    line: Optional[int] = getattr(exc, "lineno", None)
    col: Optional[int] = getattr(exc, "colno", None)
    mo = re.search(r"\s*\(at line (\d+), column (\d+)\)\s*$", msg)
    if mo:
        line, col = line or int(mo.group(1)), col or int(mo.group(2))
        msg = msg[: mo.start()]
    elif msg.endswith("(at end of document)"):
        msg = msg[: -len("(at end of document)")].rstrip()
        line = line or text.count("\n") + 1
    if isinstance(getattr(exc, "msg", None), str) and getattr(exc, "lineno", None):
        msg = exc.msg  # type: ignore[attr-defined]  # Python 3.14+ / tomli 2.1+: bare message
    low = str(msg).lower()
    if "escape" in low or "unescaped" in low:
        hint = (
            "in a double-quoted TOML string a backslash starts an escape: write regexes in "
            "single quotes, e.g. line_regex = 'loss: (\\d+\\.\\d+)', or double each backslash"
        )
    elif "overwrite" in low or "twice" in low or "declare" in low:
        hint = (
            "a key or table is defined twice: each key once per table; repeated watcher "
            "tables need double brackets, e.g. [[regex_actions]]"
        )
    elif "invalid value" in low:
        hint = 'strings need quotes (key = "text"); booleans are true/false in lower case'
    elif "expected '='" in low:
        hint = "each line is key = value; comments start with #"
    elif "illegal character" in low and "\\n" in low:
        hint = "a string is not closed on this line ('''...''' for multi-line strings)"
    else:
        hint = "see https://toml.io for the syntax"
    where = f" (column {col})" if col else ""
    return m.Problem(filename, f"TOML syntax error: {msg}{where}", line=line, hint=hint)


def load_config(
    path: str,
    *,
    overrides: Optional[Mapping[str, Any]] = None,
    base_dir: Optional[str] = None,
    check_dirs: bool = True,
    require_watchers: bool = True,
) -> m.Config:
    """Read and validate the TOML config at ``path``. Raises ``model.ConfigError`` (with every
    problem found) for anything wrong, including an unreadable file; never anything else.
    See ``load_config_text`` for the keyword arguments."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise m.ConfigError(
            [m.Problem(path, "config file not found", hint="check the path (relative to "
                       f"{os.getcwd()})")]
        ) from None
    except IsADirectoryError:
        raise m.ConfigError(
            [m.Problem(path, "is a directory, not a config file", hint="give the .toml file")]
        ) from None
    except OSError as exc:
        raise m.ConfigError(
            [m.Problem(path, f"cannot read the config file: {exc.strerror or exc}")]
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise m.ConfigError(
            [m.Problem(path, f"not valid UTF-8 (byte {exc.start})", line=line,
                       hint="TOML files are UTF-8 text; is this the right file?")]
        ) from None
    return load_config_text(
        text,
        path,
        overrides=overrides,
        base_dir=base_dir,
        check_dirs=check_dirs,
        require_watchers=require_watchers,
    )


def load_config_text(
    text: str,
    filename: str,
    *,
    overrides: Optional[Mapping[str, Any]] = None,
    base_dir: Optional[str] = None,
    check_dirs: bool = True,
    require_watchers: bool = True,
) -> m.Config:
    """Validate a config's text; ``filename`` is used in messages and kept as ``source_file``.

    ``overrides``: top-level settings given elsewhere (the command line); they replace the
    file's values and are validated the same way (a None value means "not given"); ``notify``
    may be a mapping of ``[notify]`` keys. Problems with them name ``<command line>``.
    ``base_dir``: the directory relative ``directory`` values are checked against (default:
    the current directory; ``Source.directory`` keeps the value as written).
    ``check_dirs``: check that each watcher's directory exists.
    ``require_watchers``: a config without any watcher table is a problem.
    """
    try:
        data = _toml.loads(text)
    except _toml.TOMLDecodeError as exc:
        raise m.ConfigError([_toml_problem(exc, filename, text)]) from None
    except Exception as exc:  # tomllib has raised others on odd input; never a traceback
        raise m.ConfigError([m.Problem(filename, f"cannot parse the config: {exc}")]) from None

    col = _Collector(filename, _Locator(text))
    vctx = {"base_dir": base_dir or os.getcwd(), "check_dirs": check_dirs}

    # -- top-level settings ---------------------------------------------------------------
    settings_raw: Dict[str, Any] = {k: v for k, v in data.items() if k not in TABLES}
    overridden: List[str] = []
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k == "notify" and isinstance(v, Mapping):
            base = settings_raw.get("notify")
            merged = dict(base) if isinstance(base, dict) else {}
            given = {nk: nv for nk, nv in v.items() if nv is not None}
            merged.update(given)
            settings_raw["notify"] = merged
            overridden.extend(f"notify.{nk}" for nk in given)
        else:
            settings_raw[k] = v
            overridden.append(k)
    settings = _DEFAULTS
    try:
        sm = SettingsModel.model_validate(settings_raw)
        settings = _to_settings(sm)
    except ValidationError as exc:
        col.pydantic(exc, _TOP_KEYS, overridden=overridden)

    # -- watcher tables -------------------------------------------------------------------
    entries: List[Tuple[str, int, str, bool, _TableModel]] = []  # table, i, name, named, model
    seen: Dict[str, Tuple[str, int]] = {}
    n_entries = 0
    for table in TABLES:
        raw_list = data.get(table)
        if raw_list is None:
            continue
        if not isinstance(raw_list, list):
            col.add(
                f"{table} must be an array of tables, got {_kind(raw_list)}",
                f"write each watcher as a [[{table}]] table, with double brackets",
                keys=[table],
            )
            continue
        for i, item in enumerate(raw_list):
            n_entries += 1
            where = f"[[{table}]] #{i + 1}"
            auto = f"{table}[{i + 1}]"
            if not isinstance(item, dict):
                col.add(f"{where} must be a table, got {_kind(item)}", None, keys=[table])
                continue
            nm = item.get("name")
            named = isinstance(nm, str) and bool(nm)
            name = nm if isinstance(nm, str) and nm else auto
            _pre_check(col, table, i, item, where, name)
            try:
                mdl = _TABLE_MODELS[table].model_validate(item, context=vctx)
            except ValidationError as exc:
                col.pydantic(
                    exc, _ALL_WATCHER_KEYS[table], table=table, index=i, where=where, watcher=name
                )
                mdl = None
            if mdl is not None:
                _post_check(col, table, i, mdl, where, name)
            if name in seen:
                other_t, other_i = seen[name]
                other_line = col.loc.line(other_t, other_i, [])
                at = f" at line {other_line}" if other_line else ""
                col.add(
                    f"{where}: duplicate watcher name {name!r} (also [[{other_t}]] "
                    f"#{other_i + 1}{at})",
                    "watcher names must be unique: rename one",
                    table=table, index=i, keys=["name"] if named else [], watcher=name,
                )
            else:
                seen[name] = (table, i)
            if mdl is not None:
                entries.append((table, i, name, named, mdl))

    if require_watchers and n_entries == 0 and not col.problems:
        col.add(
            "no watchers: the config has no watcher table ("
            + ", ".join(f"[[{t}]]" for t in _CANONICAL_TABLES)
            + ")",
            "add at least one, see docs/config.md",
        )
    if col.problems:
        probs = sorted(
            col.problems,
            key=lambda p: (p.file != filename, p.line is None, p.line or 0),
        )
        raise m.ConfigError(probs)

    watchers = tuple(
        _to_watcher(t, i, name, mdl, settings, filename, col.loc.line(t, i, []))
        for t, i, name, _named, mdl in entries
    )
    return m.Config(watchers=watchers, settings=settings, source_file=filename)


def _pre_check(
    col: _Collector, table: str, i: int, item: Mapping[str, Any], where: str, name: str
) -> None:
    """Checks on the raw table that must not wait for the rest to be valid."""
    if "cmd" in item and "command" in item:
        col.add(
            f"{where}: has both cmd and command",
            "they mean the same thing: keep one",
            table=table, index=i, keys=["command"], watcher=name,
        )
    acts = item.get("actions")
    if "cmd" not in item and "command" not in item and (
        acts is None or (isinstance(acts, list) and not acts)
    ):
        col.add(
            f"{where}: no command to run",
            'add cmd = "..." (the shell command run when it fires), or actions = '
            '[{type = "...", ...}]',
            table=table, index=i, keys=["actions"] if acts is not None else [], watcher=name,
        )
    if (
        table in ("regex_actions", "file_event_actions", "event_actions")
        and "timeout" in item
        and "action_timeout" in item
    ):
        col.add(
            f"{where}: has both timeout and action_timeout",
            f"in [[{table}]] they mean the same thing (the action timeout): keep one",
            table=table, index=i, keys=["action_timeout"], watcher=name,
        )
    if table == "regex_actions" and "line_regex" not in item and not _names_preset(
        item.get("multiline")
    ):
        hint = "add line_regex = 'ERROR.*'"
        if "multiline" in item:
            hint = "add line_regex = 'REGEX': the regex of a record's first line"
        col.add(
            f"{where}: missing required key 'line_regex'", hint,
            table=table, index=i, watcher=name,
        )


def _names_preset(v: Any) -> bool:
    """``multiline`` as written gives a start regex (a preset)."""
    if isinstance(v, str):
        return True
    return isinstance(v, dict) and isinstance(v.get("preset"), str)


def _effective_pattern(mdl: Union[RegexActionModel, ProbeActionModel]) -> Optional[str]:
    """line_regex, else the start regex of the multiline preset."""
    if mdl.line_regex is not None:
        return mdl.line_regex
    ml = getattr(mdl, "multiline", None)
    preset = ml if isinstance(ml, str) else getattr(ml, "preset", None)
    if isinstance(preset, str) and preset in m.MULTILINE_PRESETS:
        return m.MULTILINE_PRESETS[preset][0]
    return None


def _track_by(mdl: Union[RegexActionModel, ProbeActionModel], groups: int) -> Optional[str]:
    """The track_by template (a bare capture name or group number made a reference);
    raises ``_Invalid``."""
    if mdl.track_by is None:
        return None
    from sidecar.script import TrackByError, track_by_template

    try:
        rx = _compile(_effective_pattern(mdl) or "")
        named: Tuple[str, ...] = tuple(rx.groupindex)
    except re.error:
        named = ()
    try:
        return track_by_template(mdl.track_by, mdl.captures, named, groups)
    except TrackByError as exc:
        raise _Invalid(str(exc), exc.hint) from None


def _post_check(
    col: _Collector, table: str, i: int, mdl: _TableModel, where: str, name: str
) -> None:
    """Checks that need several valid fields."""
    if isinstance(mdl, StaleFileActionModel):
        if mdl.max_cpu is not None and mdl.require_alive is False:
            col.add(
                f"{where}: max_cpu is given but require_alive = false",
                "max_cpu only counts while the job's processes are alive (it implies "
                "require_alive = true): remove require_alive = false, or remove max_cpu",
                table=table, index=i, keys=["require_alive"], watcher=name,
            )
        return
    if not isinstance(mdl, (RegexActionModel, ProbeActionModel)):
        return
    pattern = _effective_pattern(mdl)
    if pattern is None:  # missing: reported already
        return
    caps = mdl.captures
    try:
        groups = _compile(pattern, re.IGNORECASE if mdl.ignore_case else 0).groups
    except re.error:  # reported already
        return
    if len(caps) > groups:
        col.add(
            f"{where}: captures names {len(caps)} groups but line_regex has "
            f"{groups} group{'s' if groups != 1 else ''}",
            "each name in captures is for one ( ) group of line_regex, in order: add groups "
            "or remove names",
            table=table, index=i, keys=["captures"], watcher=name,
        )
        return
    try:
        _track_by(mdl, groups)
    except _Invalid as exc:
        col.add(f"{where}: {exc}", exc.hint, table=table, index=i, keys=["track_by"],
                watcher=name)
        return
    if mdl.track_by is not None and mdl.threshold is None and mdl.suppress is None:
        col.add(
            f"{where}: track_by is given without threshold or suppress",
            "track_by keeps the counts of threshold and the holding back of suppress apart "
            'per key: add threshold = "5/60s" or suppress = 600, or remove track_by',
            table=table, index=i, keys=["track_by"], watcher=name,
        )


def _to_settings(sm: SettingsModel) -> m.Settings:
    n = sm.notify
    return m.Settings(
        queue_length=sm.queue_length,
        max_concurrent=sm.max_concurrent,
        action_timeout=float(sm.action_timeout),
        output_cap=sm.output_cap,
        event_log=sm.event_log,
        backend=sm.backend,
        poll_interval=float(sm.poll_interval),
        nice=sm.nice,
        ionice_idle=sm.ionice_idle,
        max_line=sm.max_line,
        regex_time_limit=float(sm.regex_time_limit),
        chunk_size=sm.chunk_size,
        start_at=sm.start_at,
        resubmit_limit=sm.resubmit_limit,
        drain_grace=float(sm.drain_grace),
        state_file=sm.state_file,
        prometheus_textfile=sm.prometheus_textfile,
        notify=m.Notify(
            email_to=n.email_to,
            email_from=n.email_from,
            smtp_url=n.smtp_url,
            slack_webhook=n.slack_webhook,
            urls=tuple(n.urls),
        ),
    )


def _to_multiline(v: Union[None, str, MultiLineModel]) -> Optional[m.MultiLine]:
    if v is None:
        return None
    if isinstance(v, str):
        return m.MultiLine(end=m.MULTILINE_PRESETS[v][1], preset=v)
    end = v.end
    if end is None:
        assert v.preset is not None  # the model requires one of them
        end = m.MULTILINE_PRESETS[v.preset][1]
    return m.MultiLine(
        end=end, max_lines=v.max_lines, timeout=float(v.timeout), preset=v.preset
    )


def _to_rate(v: Any) -> Optional[m.RateLimit]:
    return m.RateLimit(v.count, float(v.per)) if isinstance(v, RateLimitModel) else None


def _to_throttle(
    mdl: Union[RegexActionModel, ProbeActionModel], pattern: str
) -> Optional[m.Throttle]:
    if mdl.threshold is None and mdl.track_by is None and mdl.suppress is None:
        return None
    try:
        groups = _compile(pattern, re.IGNORECASE if mdl.ignore_case else 0).groups
        track_by = _track_by(mdl, groups)
    except (re.error, _Invalid):  # pragma: no cover - _post_check refused it already
        track_by = mdl.track_by
    return m.Throttle(
        threshold=_to_rate(mdl.threshold),
        track_by=track_by,
        suppress=float(mdl.suppress) if mdl.suppress is not None else None,
    )


def _to_watcher(
    table: str,
    i: int,
    name: str,
    mdl: _TableModel,
    settings: m.Settings,
    filename: str,
    line: Optional[int],
) -> m.Watcher:
    atimeout: Optional[float] = getattr(mdl, "action_timeout", None)
    if atimeout is None and isinstance(mdl, (RegexActionModel, FileEventActionModel)):
        atimeout = mdl.timeout
    actions: List[m.ActionSpec] = []
    cmd_: Optional[str] = getattr(mdl, "cmd", None)
    cmd = cmd_ if cmd_ is not None else getattr(mdl, "command", None)
    if cmd is not None:
        actions.append(m.ActionSpec("run_command", {"command": cmd}, atimeout))
    action_models: List[ActionModel] = getattr(mdl, "actions", [])
    for a in action_models:
        params = dict(a.model_extra or {})
        atype = m.ACTION_ALIASES.get(a.type, a.type)
        if atype == "run_command" and "cmd" in params:
            params["command"] = params.pop("cmd")
        actions.append(
            m.ActionSpec(atype, params, a.timeout if a.timeout is not None else atimeout)
        )
    trigger: m.Trigger
    timer_interval: Optional[float] = None
    throttle: Optional[m.Throttle] = None
    source = m.Source()
    if isinstance(mdl, _WatcherModel):
        source = m.Source(
            directory=mdl.directory,
            filepath_regex=mdl.filepath_regex,
            recursive=mdl.recursive,
            start_at=mdl.start_at or settings.start_at,
        )
    if isinstance(mdl, (RegexActionModel, ProbeActionModel)):
        pattern = _effective_pattern(mdl)
        assert pattern is not None  # _pre_check refused the table otherwise
        trigger = m.RegexTrigger(
            pattern=pattern,
            captures=tuple(mdl.captures),
            condition=mdl.condition,
            ignore_case=mdl.ignore_case,
            multiline=_to_multiline(mdl.multiline) if isinstance(mdl, RegexActionModel) else None,
        )
        timer_interval = mdl.timer_interval
        throttle = _to_throttle(mdl, pattern)
        if isinstance(mdl, ProbeActionModel):
            source = m.Source(
                probe=mdl.probe,
                probe_interval=float(mdl.interval),
                probe_timeout=float(mdl.probe_timeout),
            )
    elif isinstance(mdl, StaleFileActionModel):
        trigger = m.StaleTrigger(
            timeout=float(mdl.timeout),
            require_alive=bool(mdl.require_alive) or mdl.max_cpu is not None,
            max_cpu=float(mdl.max_cpu) if mdl.max_cpu is not None else None,
            grace=float(mdl.grace) if mdl.grace is not None else None,
        )
    elif isinstance(mdl, FileEventActionModel):
        trigger = m.FileEventTrigger(event_types=frozenset(mdl.event_types))
    elif isinstance(mdl, JobEndActionModel):
        trigger = m.JobEndTrigger(condition=mdl.condition)
    elif isinstance(mdl, TimeLimitActionModel):
        trigger = m.TimeLimitTrigger(
            before=float(mdl.before), signal=mdl.signal if isinstance(mdl.signal, str) else None
        )
    else:
        assert isinstance(mdl, MemoryActionModel)
        limit = mdl.limit
        trigger = m.MemoryTrigger(
            fraction=float(mdl.fraction),
            limit=limit if isinstance(limit, int) else None,
            interval=float(mdl.interval),
        )
    return m.Watcher(
        name=name,
        source=source,
        trigger=trigger,
        actions=tuple(actions),
        origin=m.Origin(filename, line, f"[[{table}]] #{i + 1}"),
        max_triggers=getattr(mdl, "max_triggers", None),
        rate_limit=_to_rate(getattr(mdl, "rate_limit", None)),
        max_failures=getattr(mdl, "max_failures", 5),
        timer_interval=timer_interval,
        throttle=throttle,
    )
