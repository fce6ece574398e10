"""The internal model: what a sidecar runs, whatever it was written in.

A watcher = where to look (Source) + a trigger + actions (+ limits).
Both front ends produce these: ``config.py`` (TOML, the Haskell Sidecar schema and ours)
and ``script.py`` (``#WATCHER`` lines in a batch script). The engine only sees these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, FrozenSet, Mapping, Optional, Tuple, Union

# Action types. Short names (as ssync accepts them) map onto these in ``ACTION_ALIASES``.
ACTION_TYPES: Tuple[str, ...] = (
    "run_command",
    "cancel_job",
    "resubmit",
    "notify_email",
    "notify_slack",
    "notify",
    "store_metric",
    "log_event",
    "pause_watcher",
)

ACTION_ALIASES: Mapping[str, str] = {
    "run": "run_command",
    "command": "run_command",
    "shell": "run_command",
    "cancel": "cancel_job",
    "resubmit_job": "resubmit",
    "email": "notify_email",
    "mail": "notify_email",
    "slack": "notify_slack",
    "metric": "store_metric",
    "log": "log_event",
    "pause": "pause_watcher",
}


@dataclass(frozen=True)
class Origin:
    """Where a watcher was defined, for messages: ``file:line (table/watcher)``."""

    file: str
    line: Optional[int] = None
    what: str = ""  # e.g. "[[regex_actions]] #2" or "#WATCHER_BEGIN block"

    def __str__(self) -> str:
        loc = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{loc} {self.what}".strip()


@dataclass(frozen=True)
class Source:
    """Which files a watcher looks at.

    ``directory`` is resolved against the sidecar's working directory when it starts.
    ``filepath_regex`` is searched (``re.search``) in the file's path relative to
    ``directory``; ``paths`` lists exact file names instead (relative to ``directory`` or
    absolute). ``recursive``: also look in subdirectories (created later ones too).
    ``start_at``: where to begin in a file that already exists when the sidecar starts
    ("start" reads it whole, "end" only what is written from now on). Files that appear
    later are always read from their first byte.
    """

    directory: str = "."
    filepath_regex: Optional[str] = None
    paths: Tuple[str, ...] = ()
    recursive: bool = False
    start_at: str = "start"
    # a probe command instead of files: run through /bin/sh every ``probe_interval`` seconds,
    # its standard output is matched line by line like a file's new lines
    probe: Optional[str] = None
    probe_interval: float = 60.0
    probe_timeout: float = 30.0

    @property
    def is_probe(self) -> bool:
        return self.probe is not None


MULTILINE_PRESETS: Mapping[str, Tuple[str, str]] = {
    # name -> (start regex, end regex). A Python traceback: from its header to the first
    # line that is not indented (the exception line), the header itself excepted.
    "python_traceback": (r"^Traceback \(most recent call last\):", r"^\S"),
}


@dataclass(frozen=True)
class MultiLine:
    """A record that spans lines: it starts at a line the trigger's pattern matches and
    takes every following line up to and including one that ``end`` matches (searched,
    Python ``re``), at most ``max_lines`` lines in all; when no line comes for ``timeout``
    seconds the record is handed over as it is (and at stop). The actions get the whole
    record, lines joined by newlines, as MATCH and RECORD."""

    end: str
    max_lines: int = 100
    timeout: float = 5.0
    preset: Optional[str] = None  # "python_traceback": where start/end came from


@dataclass(frozen=True)
class RegexTrigger:
    pattern: str
    captures: Tuple[str, ...] = ()  # names for the positional groups, in order
    condition: Optional[str] = None
    ignore_case: bool = False
    multiline: Optional[MultiLine] = None
    kind: str = "regex"


@dataclass(frozen=True)
class StaleTrigger:
    timeout: float  # seconds without a write
    # a hang only while the job's processes live (the followed process and its tree)
    require_alive: bool = False
    # ... and only while they are nearly idle: their CPU use over the quiet window, in
    # percent of one core (100 = one core busy), must be at or below this
    max_cpu: Optional[float] = None
    # seconds after start: a file that has not appeared by then counts as stale (fires once)
    grace: Optional[float] = None
    kind: str = "stale"


@dataclass(frozen=True)
class FileEventTrigger:
    event_types: FrozenSet[str]
    kind: str = "file_event"


@dataclass(frozen=True)
class JobEndTrigger:
    """The job's main process (the followed process: --pid, the wrapped command, or the
    sidecar's parent) exited. Variables EXIT_CODE (empty when unknown) and the capture
    ``exit_code``; ``condition`` over it, e.g. ``"int(exit_code) != 0"``."""

    condition: Optional[str] = None
    kind: str = "job_end"


@dataclass(frozen=True)
class TimeLimitTrigger:
    """``before`` seconds before the job's end time (from SLURM), or when ``signal``
    arrives (``#SBATCH --signal=B:USR1@N`` forwarded to the sidecar), whichever is first.
    Fires once."""

    before: float
    signal: Optional[str] = "USR1"  # signal name without SIG; None = no signal
    kind: str = "time_limit"


@dataclass(frozen=True)
class MemoryTrigger:
    """The job's resident memory (sum of RSS over its process tree) passed ``fraction`` of
    its limit (``limit`` bytes, else SLURM_MEM_PER_NODE / SLURM_MEM_PER_CPU, else the
    cgroup's memory.max). Sampled every ``interval`` seconds; fires once per crossing and
    re-arms when the memory falls below the fraction again."""

    fraction: float
    limit: Optional[int] = None
    interval: float = 10.0
    kind: str = "memory"


Trigger = Union[
    RegexTrigger,
    StaleTrigger,
    FileEventTrigger,
    JobEndTrigger,
    TimeLimitTrigger,
    MemoryTrigger,
]

# triggers that look at no file
JOB_TRIGGERS = ("job_end", "time_limit", "memory")


@dataclass(frozen=True)
class ActionSpec:
    """One action. ``params`` values are strings (templates: ``$1``, ``${name}`` ...), numbers,
    booleans, or dicts of those (resubmit's ``modifications``)."""

    type: str
    params: Mapping[str, Any] = field(default_factory=dict)
    timeout: Optional[float] = None  # seconds; None = the config default


@dataclass(frozen=True)
class RateLimit:
    count: int
    per_s: float


@dataclass(frozen=True)
class Throttle:
    """swatch-style thresholds. ``threshold``: fire only when ``count`` matches fell within
    ``per_s`` seconds (the count starts again after a firing). ``track_by``: a template
    (``$1``, ``${host}``) whose value keys separate counts and suppression. ``suppress``:
    after a firing, further firings of the same key are held back for this many seconds;
    how many were held back is reported with the next firing (SUPPRESSED)."""

    threshold: Optional[RateLimit] = None
    track_by: Optional[str] = None
    suppress: Optional[float] = None


@dataclass(frozen=True)
class Watcher:
    name: str
    source: Source
    trigger: Trigger
    actions: Tuple[ActionSpec, ...]
    origin: Origin = field(default_factory=lambda: Origin("<memory>"))
    max_triggers: Optional[int] = None
    rate_limit: Optional[RateLimit] = None
    max_failures: int = 5  # consecutive failed actions before DISABLED; 0 = never
    timer_interval: Optional[float] = None  # timer mode: repeat actions every N s after 1st firing
    interval: Optional[float] = None  # ssync's check interval: the poll period when polling
    output_type: Optional[str] = None  # stdout | stderr | both (scripts only, informational)
    throttle: Optional[Throttle] = None


@dataclass(frozen=True)
class Notify:
    """Defaults for notifications; actions may override each field."""

    email_to: Optional[str] = None
    email_from: Optional[str] = None
    smtp_url: Optional[str] = None  # apprise mailto:// or mailtos:// URL; None = local MTA
    slack_webhook: Optional[str] = None
    urls: Tuple[str, ...] = ()  # extra apprise URLs for notify()


@dataclass(frozen=True)
class Settings:
    """Sidecar-wide settings. Every one has a default; the config file and the CLI override."""

    queue_length: int = 100  # pending action runs before new ones are refused (and logged)
    max_concurrent: int = 4  # action processes running at once
    action_timeout: float = 120.0
    output_cap: int = 4096  # bytes of an action's output kept in the record
    event_log: Optional[str] = None  # None = sidecar-events.jsonl (see docs/events.md)
    backend: str = "auto"  # auto | inotify | poll
    poll_interval: float = 1.0
    nice: int = 10  # added to the niceness at start (0 = leave it)
    ionice_idle: bool = True  # best-effort idle I/O class
    max_line: int = 1 << 20
    regex_time_limit: float = 0.1  # s of CPU a Python re search may take on one line; 0 = none
    chunk_size: int = 1 << 18  # 256 KiB: faster than 1 MiB (cache) and a smaller peak RSS
    start_at: str = "start"
    resubmit_limit: int = 3
    drain_grace: float = 3.0  # seconds at stop for running actions before they are killed
    state_file: Optional[str] = None
    prometheus_textfile: Optional[str] = None  # metrics for node_exporter's textfile collector
    notify: Notify = field(default_factory=Notify)


@dataclass(frozen=True)
class Config:
    watchers: Tuple[Watcher, ...]
    settings: Settings = field(default_factory=Settings)
    source_file: Optional[str] = None
    script: Optional[str] = None  # the batch script, when watchers came from #WATCHER lines


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config or script. ``str()`` is the message a user reads."""

    file: str
    message: str
    line: Optional[int] = None
    watcher: Optional[str] = None
    hint: Optional[str] = None

    def __str__(self) -> str:
        loc = self.file if self.line is None else f"{self.file}:{self.line}"
        who = f" [{self.watcher}]" if self.watcher else ""
        tail = f" ({self.hint})" if self.hint else ""
        return f"{loc}{who}: {self.message}{tail}"


class ConfigError(Exception):
    """Raised by the loaders with every problem found (not just the first)."""

    def __init__(self, problems: list[Problem] | Tuple[Problem, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
