"""Tests of the TOML config loader (sidecar/config.py)."""

from __future__ import annotations

import os
import re
import sys
import textwrap
import types
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar import config as C
from sidecar.model import (
    MULTILINE_PRESETS,
    ActionSpec,
    ConfigError,
    FileEventTrigger,
    JobEndTrigger,
    MemoryTrigger,
    MultiLine,
    Problem,
    RateLimit,
    RegexTrigger,
    Settings,
    Source,
    StaleTrigger,
    Throttle,
    TimeLimitTrigger,
    Watcher,
)
from sidecar.types import USER_EVENT_KINDS

REPO = Path(__file__).resolve().parent.parent
HASKELL = REPO / "configs" / "haskell-example.toml"
EXAMPLE = REPO / "configs" / "example.toml"
SEED = Path("/work/shared/seeds/004_7b42051d207d16f3.txt")

OK_REGEX = """
[[regex_actions]]
name = "w"
line_regex = 'ERROR'
filepath_regex = 'x\\.log$'
cmd = "true"
"""


def load(text: str, **kw: Any) -> Any:
    kw.setdefault("check_dirs", False)
    return C.load_config_text(textwrap.dedent(text), "cfg.toml", **kw)


def problems(text: str, **kw: Any) -> List[Problem]:
    with pytest.raises(ConfigError) as ei:
        load(text, **kw)
    return list(ei.value.problems)


def one_problem(text: str, **kw: Any) -> Problem:
    ps = problems(text, **kw)
    assert len(ps) == 1, "\n".join(map(str, ps))
    return ps[0]


@pytest.fixture()
def in_tmp(tmp_path: Path) -> Iterator[Path]:
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


# ---------------------------------------------------------------------------------------
# the Haskell Sidecar's example config
# ---------------------------------------------------------------------------------------


def test_haskell_example_is_the_seed_config_verbatim() -> None:
    """configs/haskell-example.toml is the seed's config block, byte for byte."""
    if not SEED.exists():
        pytest.skip("seed not available")
    seed = SEED.read_text(encoding="utf-8")
    block = seed.split("#+begin_src toml\n", 1)[1].split("#+end_src", 1)[0]
    assert HASKELL.read_text(encoding="utf-8") == block


def test_haskell_example_loads_into_the_expected_watchers(in_tmp: Path) -> None:
    """Every watcher of the Haskell example, every field (cwd has the '.' directory)."""
    cfg = C.load_config(str(HASKELL))
    assert cfg.source_file == str(HASKELL)
    assert cfg.settings.queue_length == 100
    assert cfg.settings == Settings()  # queue_length = 100 is also the default
    names = [w.name for w in cfg.watchers]
    assert names == [
        "error_detector",
        "warning_detector",
        "temp_warning",
        "output_watcher",
        "rust_watcher",
    ]
    err, warn, stale, out, rust = cfg.watchers

    assert err.source.directory == "."
    assert err.source.filepath_regex == ".*.log"
    assert err.source.recursive is False
    assert err.source.start_at == "start"
    assert err.trigger == RegexTrigger(pattern="ERROR.*")
    assert err.actions == (ActionSpec("run_command", {"command": "echo $MATCH >> matched.err"}),)
    assert err.origin.line == 8 and err.origin.what == "[[regex_actions]] #1"
    assert err.max_triggers is None and err.rate_limit is None and err.max_failures == 5
    assert err.timer_interval is None

    assert warn.trigger == RegexTrigger(pattern="WARN.*")
    assert warn.source.filepath_regex == ".*.log"
    assert warn.actions == (ActionSpec("run_command", {"command": "echo $MATCH >> matched.warn"}),)
    assert warn.origin.line == 24

    assert stale.trigger == StaleTrigger(timeout=3600.0)
    assert stale.source.filepath_regex == ".*.tmp"
    assert stale.actions == (ActionSpec("run_command", {"command": "echo $FILE >> stale"}),)
    assert stale.origin.line == 31 and stale.origin.what == "[[stale_file_actions]] #1"

    assert out.trigger == FileEventTrigger(event_types=frozenset({"create", "modify"}))
    assert out.source.filepath_regex == ".*.out"
    assert out.actions == (ActionSpec("run_command", {"command": "echo $FILE >> new_files"}),)
    assert out.origin.line == 42

    assert rust.trigger == FileEventTrigger(event_types=frozenset({"modify", "remove"}))
    assert rust.source.filepath_regex == ".*.rs"
    assert rust.actions == (ActionSpec("run_command", {"command": "echo $FILE >> rust_files"}),)
    assert rust.origin.line == 56 and rust.origin.what == "[[file_event_actions]] #2"


def test_haskell_example_dedented_loads_the_same() -> None:
    """Without the org-mode indentation the example gives the same watchers."""
    text = HASKELL.read_text(encoding="utf-8")
    a = C.load_config_text(text, "a.toml", check_dirs=False)
    b = C.load_config_text(textwrap.dedent(text), "a.toml", check_dirs=False)
    assert a.watchers == b.watchers and a.settings == b.settings


def test_example_config_loads_with_the_richer_keys(tmp_path: Path) -> None:
    """configs/example.toml loads (where its checkpoints/ directory exists)."""
    (tmp_path / "checkpoints").mkdir()
    cfg = C.load_config(str(EXAMPLE), base_dir=str(tmp_path))
    by = {w.name: w for w in cfg.watchers}
    assert set(by) == {"loss", "diverged", "errors", "sync_checkpoints", "hung", "new_checkpoint"}
    assert cfg.settings.max_concurrent == 2 and cfg.settings.event_log == "sidecar-events.jsonl"
    assert cfg.settings.notify.email_to == "alice@example.org"
    assert by["loss"].trigger.captures == ("epoch", "loss")  # type: ignore[union-attr]
    assert [a.type for a in by["diverged"].actions] == ["notify_slack", "cancel_job"]
    assert by["diverged"].max_triggers == 1
    assert by["errors"].rate_limit == RateLimit(3, 3600.0)
    assert by["sync_checkpoints"].timer_interval == 1800.0
    assert by["sync_checkpoints"].actions[0].timeout == 600.0
    assert by["hung"].trigger == StaleTrigger(1800.0)
    assert all(a.timeout == 120.0 for a in by["hung"].actions)
    assert by["new_checkpoint"].source.directory == "checkpoints"


def test_example_config_names_its_missing_directory(tmp_path: Path) -> None:
    """Without checkpoints/ the example is refused, with the mkdir fix."""
    with pytest.raises(ConfigError) as ei:
        C.load_config(str(EXAMPLE), base_dir=str(tmp_path))
    (p,) = ei.value.problems
    assert p.watcher == "new_checkpoint" and "mkdir -p checkpoints" in (p.hint or "")


# ---------------------------------------------------------------------------------------
# spellings: cmd / command / event_actions
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", ["regex_actions", "stale_file_actions", "file_event_actions",
                                   "event_actions"])
@pytest.mark.parametrize("key", ["cmd", "command"])
def test_cmd_and_command_are_accepted_in_every_table(table: str, key: str) -> None:
    """Both spellings give one run_command action, in all four tables."""
    extra = {
        "regex_actions": "line_regex = 'x'",
        "stale_file_actions": "timeout = 10",
        "file_event_actions": 'event_types = ["create"]',
        "event_actions": 'event_types = ["create"]',
    }[table]
    cfg = load(f"""
        [[{table}]]
        filepath_regex = 'a'
        {extra}
        {key} = "echo hi"
    """)
    (w,) = cfg.watchers
    assert w.actions == (ActionSpec("run_command", {"command": "echo hi"}),)
    assert w.name == f"{table}[1]"


def test_event_actions_table_is_a_file_event_watcher() -> None:
    """[[event_actions]] (the Haskell code's name) has the file_event_actions schema."""
    cfg = load("""
        [[event_actions]]
        name = "ev"
        filepath_regex = 'a'
        event_types = ["remove", "close"]
        cmd = "x"
    """)
    (w,) = cfg.watchers
    assert w.trigger == FileEventTrigger(frozenset({"remove", "close"}))
    assert w.origin.what == "[[event_actions]] #1" and w.origin.line == 2


def test_both_cmd_and_command_is_an_error() -> None:
    p = one_problem("""
        [[regex_actions]]
        name = "both"
        line_regex = 'x'
        filepath_regex = 'a'
        cmd = "a"
        command = "b"
    """)
    assert p.watcher == "both" and p.line == 7
    assert "both cmd and command" in p.message and "[[regex_actions]] #1" in p.message
    assert p.hint and "keep one" in p.hint


def test_a_watcher_without_command_or_actions_is_an_error() -> None:
    """For the Haskell tables a command is required (no silent default action)."""
    p = one_problem("""
        [[stale_file_actions]]
        name = "s"
        filepath_regex = 'a'
        timeout = 5
    """)
    assert p.watcher == "s" and p.line == 2 and "no command" in p.message
    assert p.hint and "cmd =" in p.hint


def test_empty_actions_list_without_cmd_is_an_error() -> None:
    p = one_problem("""
        [[regex_actions]]
        line_regex = 'x'
        filepath_regex = 'a'
        actions = []
    """)
    assert "no command" in p.message and p.line == 5


# ---------------------------------------------------------------------------------------
# actions lists
# ---------------------------------------------------------------------------------------


def test_actions_become_action_specs_with_canonical_types_and_timeouts() -> None:
    """cmd first, then actions in order; aliases canonical; action timeout > watcher timeout."""
    cfg = load("""
        action_timeout = 99
        [[regex_actions]]
        line_regex = 'loss=(\\S+)'
        filepath_regex = 'a'
        captures = ["loss"]
        cmd = "echo $loss"
        timeout = 7
        actions = [
          {type = "slack", message = "loss $loss"},
          {type = "store_metric", name = "loss", value = "$loss", timeout = 3},
          {type = "run", cmd = "echo again"},
          {type = "resubmit", modifications = {mem = "64G", time = 120}},
        ]
    """)
    (w,) = cfg.watchers
    assert w.actions == (
        ActionSpec("run_command", {"command": "echo $loss"}, 7.0),
        ActionSpec("notify_slack", {"message": "loss $loss"}, 7.0),
        ActionSpec("store_metric", {"name": "loss", "value": "$loss"}, 3.0),
        ActionSpec("run_command", {"command": "echo again"}, 7.0),
        ActionSpec("resubmit", {"modifications": {"mem": "64G", "time": 120}}, 7.0),
    )
    assert cfg.settings.action_timeout == 99.0


def test_actions_without_any_timeout_leave_it_to_the_settings() -> None:
    cfg = load("""
        [[file_event_actions]]
        filepath_regex = 'a'
        event_types = ["create"]
        actions = [{type = "log_event", message = "new $FILE"}]
    """)
    assert cfg.watchers[0].actions == (ActionSpec("log_event", {"message": "new $FILE"}, None),)


def test_stale_timeout_is_not_the_action_timeout() -> None:
    """In stale tables `timeout` is the stale time; the action timeout is action_timeout."""
    cfg = load("""
        [[stale_file_actions]]
        filepath_regex = 'a'
        timeout = 600
        action_timeout = 20
        cmd = "x"
    """)
    (w,) = cfg.watchers
    assert w.trigger == StaleTrigger(600.0)
    assert w.actions[0].timeout == 20.0


def test_timeout_and_action_timeout_together_are_an_error_outside_stale_tables() -> None:
    p = one_problem("""
        [[regex_actions]]
        line_regex = 'x'
        filepath_regex = 'a'
        cmd = "x"
        timeout = 1
        action_timeout = 2
    """)
    assert "both timeout and action_timeout" in p.message and p.line == 7


@pytest.mark.parametrize(
    ("action", "needle", "hint"),
    [
        ('{type = "slak"}', "unknown action type 'slak'", "did you mean 'slack'?"),
        ('{type = "notify_emial"}', "unknown action type", "did you mean 'notify_email'?"),
        ('{type = "run_command"}', "run_command needs a command", "command ="),
        ('{type = "run", cmd = "a", command = "b"}', "both cmd and command", "keep one"),
        ('{message = "x"}', "missing required key 'actions[1].type'", "run_command"),
        ('{type = "log", timeout = 0}', "actions[1].timeout must be more than 0", None),
        ('{type = "log", when = 1979-05-27}', "when is a date/time", "quotes"),
        ('"echo hi"', "actions[1] must be an inline table", "type ="),
    ],
)
def test_bad_actions_are_reported_with_the_action_index(
    action: str, needle: str, hint: Optional[str]
) -> None:
    p = one_problem(f"""
        [[regex_actions]]
        name = "r"
        line_regex = 'x'
        filepath_regex = 'a'
        actions = [{action}]
    """)
    assert needle in p.message, p
    assert p.line == 6 and p.watcher == "r"
    if hint:
        assert p.hint and hint in p.hint, p


# ---------------------------------------------------------------------------------------
# unknown keys, did you mean
# ---------------------------------------------------------------------------------------


def test_unknown_key_names_key_table_index_line_watcher_and_suggests() -> None:
    """`line_regexp` -> did you mean 'line_regex'?, at the key's own line."""
    ps = problems("""
        [[regex_actions]]
        name = "first"
        line_regex = 'a'
        filepath_regex = 'a'
        cmd = "x"

        [[regex_actions]]
        name = "error_detector"
        line_regexp = "ERROR.*"
        filepath_regex = 'a'
        cmd = "x"
    """)
    unknown = [p for p in ps if "unknown key" in p.message]
    assert len(unknown) == 1
    p = unknown[0]
    assert p.file == "cfg.toml" and p.line == 10 and p.watcher == "error_detector"
    assert "'line_regexp'" in p.message and "[[regex_actions]] #2" in p.message
    assert p.hint == "did you mean 'line_regex'?"
    assert str(p).startswith("cfg.toml:10 [error_detector]: [[regex_actions]] #2: unknown key")
    missing = [p for p in ps if "missing" in p.message]
    assert len(missing) == 1 and "'line_regex'" in missing[0].message


@pytest.mark.parametrize(
    ("text", "line", "hint"),
    [
        ("queue_lenght = 3\n" + OK_REGEX, 1, "did you mean 'queue_length'?"),
        ("[notify]\nemial_to = 'a@b'\n" + OK_REGEX, 2, "did you mean 'email_to'?"),
        (OK_REGEX + "captures = ['a']\n".replace("captures", "capture"), 7,
         "did you mean 'captures'?"),
        ("[[stale_file_actions]]\nfilepath_regex='a'\ntimeout=1\ncmd='x'\ncaptures=['a']\n",
         5, "only valid in [[regex_actions]]"),
        (OK_REGEX + "max_concurrent = 2\n", 7, "top-level setting"),
        ("line_regex = 'x'\n" + OK_REGEX, 1, "is its [[regex_actions]] header missing"),
        (OK_REGEX + "[[regex_action]]\nline_regex = 'y'\n", 7, "did you mean 'regex_actions'?"),
        (OK_REGEX + "zzzz = 1\n", 7, "allowed keys: name, directory"),
    ],
)
def test_unknown_keys_get_a_useful_hint(text: str, line: int, hint: str) -> None:
    p = one_problem(text)
    assert "unknown" in p.message and p.line == line, p
    assert p.hint and hint in p.hint, p


# ---------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------


def test_invalid_regex_gives_re_message_and_position() -> None:
    p = one_problem("""
        [[regex_actions]]
        name = "bad"
        line_regex = 'ERROR('
        filepath_regex = 'a'
        cmd = "x"
    """)
    assert p.line == 4 and p.watcher == "bad"
    assert "line_regex is not a valid regular expression" in p.message
    assert "missing ), unterminated subpattern at position 5" in p.message
    assert p.hint and "backslash" in p.hint


def test_glob_in_filepath_regex_gets_the_regex_spelling() -> None:
    p = one_problem(OK_REGEX.replace("filepath_regex = 'x\\.log$'", "filepath_regex = '*.log'"))
    assert "filepath_regex is not a valid regular expression" in p.message
    assert p.hint and "'.*\\.log$'" in p.hint


def test_backspace_from_double_quoted_backslash_b_is_refused() -> None:
    """"\\bERROR\\b" in TOML double quotes is a backspace: refuse, suggest single quotes."""
    p = one_problem(OK_REGEX.replace("line_regex = 'ERROR'", 'line_regex = "\\bERROR\\b"'))
    assert "control character" in p.message and p.hint and "single-quoted" in p.hint


@pytest.mark.parametrize(
    ("table_text", "line", "needle"),
    [
        ("[[stale_file_actions]]\nfilepath_regex='a'\ntimeout = 0\ncmd='x'",
         3, "timeout must be more than 0 seconds, got 0"),
        ("[[stale_file_actions]]\nfilepath_regex='a'\ntimeout = -5.5\ncmd='x'",
         3, "got -5.5"),
        ("[[stale_file_actions]]\nfilepath_regex='a'\ntimeout = '1h'\ncmd='x'",
         3, 'timeout must be a number of seconds, got a string "1h"'),
        ("[[stale_file_actions]]\nfilepath_regex='a'\ntimeout = true\ncmd='x'",
         3, "timeout must be a number of seconds, got a boolean true"),
        ("[[stale_file_actions]]\nfilepath_regex='a'\ntimeout = inf\ncmd='x'",
         3, "timeout must be a number of seconds"),
        ("[[regex_actions]]\nfilepath_regex='a'\nline_regex='a'\ntimeout = 0\ncmd='x'",
         4, "timeout must be more than 0 seconds"),
        ("[[regex_actions]]\nfilepath_regex='a'\nline_regex='a'\ntimer_interval = -1\ncmd='x'",
         4, "timer_interval must be more than 0 seconds"),
        ("action_timeout = 0\n" + OK_REGEX, 1, "action_timeout must be more than 0 seconds"),
        ("poll_interval = '1'\n" + OK_REGEX, 1, "poll_interval must be a number of seconds"),
    ],
)
def test_bad_timeouts_are_reported(table_text: str, line: int, needle: str) -> None:
    p = one_problem(table_text)
    assert needle in p.message and p.line == line, p


@pytest.mark.parametrize(
    ("text", "needle", "hint"),
    [
        ("queue_length = 0", "queue_length must be >= 1, got 0", None),
        ("queue_length = 100.0", "queue_length must be a whole number", "write 100, not 100.0"),
        ("nice = 20", "nice must be <= 19", None),
        ("backend = 'fast'", "backend must be one of 'auto', 'inotify' or 'poll'", None),
        ("start_at = 'middle'", "start_at must be one of 'start' or 'end'", None),
        ("ionice_idle = 'yes'", "ionice_idle must be true or false", "without quotes"),
        ("notify = 'me'", "notify must be a table", None),
        ("[notify]\nurls = 'x'", "urls must be an array", None),
        ("[notify]\nemail_to = 5", "email_to must be a string", "quote it"),
        ("event_log = ''", "event_log must not be empty", None),
    ],
)
def test_bad_settings_are_reported(text: str, needle: str, hint: Optional[str]) -> None:
    p = one_problem(text + "\n" + OK_REGEX)
    assert needle in p.message and p.line is not None, p
    if hint:
        assert p.hint and hint in p.hint


def test_settings_map_onto_model_settings() -> None:
    cfg = load("""
        queue_length = 7
        max_concurrent = 2
        action_timeout = 30
        output_cap = 100
        event_log = "ev.db"
        backend = "poll"
        poll_interval = 0.5
        nice = 0
        ionice_idle = false
        max_line = 4096
        chunk_size = 8192
        start_at = "end"
        resubmit_limit = 0
        drain_grace = 0
        state_file = "state.json"
        [notify]
        email_to = "a@b.c"
        email_from = "s@b.c"
        smtp_url = "mailtos://u:p@smtp.b.c"
        slack_webhook = "https://hooks.slack.com/services/x"
        urls = ["json://localhost"]
    """ + OK_REGEX)
    s = cfg.settings
    assert (s.queue_length, s.max_concurrent, s.action_timeout, s.output_cap) == (7, 2, 30.0, 100)
    assert (s.event_log, s.backend, s.poll_interval, s.nice) == ("ev.db", "poll", 0.5, 0)
    assert (s.ionice_idle, s.max_line, s.chunk_size, s.start_at) == (False, 4096, 8192, "end")
    assert (s.resubmit_limit, s.drain_grace, s.state_file) == (0, 0.0, "state.json")
    assert s.notify.email_to == "a@b.c" and s.notify.email_from == "s@b.c"
    assert s.notify.smtp_url == "mailtos://u:p@smtp.b.c"
    assert s.notify.slack_webhook == "https://hooks.slack.com/services/x"
    assert s.notify.urls == ("json://localhost",)
    assert cfg.watchers[0].source.start_at == "end"  # the top-level start_at is the default


def test_all_watcher_keys_reach_the_model() -> None:
    cfg = load("""
        [[regex_actions]]
        name = "r"
        directory = "logs"
        filepath_regex = 'train\\.log$'
        line_regex = 'epoch (\\d+) loss (\\S+)'
        recursive = true
        start_at = "end"
        max_triggers = 3
        rate_limit = {count = 2, per = 30}
        max_failures = 0
        captures = ["epoch", "loss"]
        condition = "float(loss) > 1"
        ignore_case = true
        timer_interval = 60
        cmd = "x"
    """)
    (w,) = cfg.watchers
    assert w.source.directory == "logs" and w.source.recursive is True
    assert w.source.start_at == "end" and w.source.filepath_regex == "train\\.log$"
    assert w.trigger == RegexTrigger(
        "epoch (\\d+) loss (\\S+)", ("epoch", "loss"), "float(loss) > 1", True
    )
    assert w.max_triggers == 3 and w.rate_limit == RateLimit(2, 30.0) and w.max_failures == 0
    assert w.timer_interval == 60.0


def test_strings_are_not_numbers_and_numbers_are_not_strings() -> None:
    """TOML is typed: "60" is refused where a number is expected, 5 where a string is."""
    ps = problems("""
        [[regex_actions]]
        line_regex = 'a'
        filepath_regex = 'a'
        cmd = 5
        max_triggers = "3"
        recursive = "true"
    """)
    msgs = " | ".join(p.message for p in ps)
    assert "cmd must be a string" in msgs
    assert "max_triggers must be a whole number" in msgs
    assert "recursive must be true or false" in msgs
    assert len(ps) == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"10/60s"', RateLimit(10, 60.0)),
        ('"10/60"', RateLimit(10, 60.0)),
        ('"5/min"', RateLimit(5, 60.0)),
        ('"3 / 1h"', RateLimit(3, 3600.0)),
        ('"1/1.5m"', RateLimit(1, 90.0)),
        ('"20/2days"', RateLimit(20, 172800.0)),
        ("{count = 4, per = 0.5}", RateLimit(4, 0.5)),
    ],
)
def test_rate_limit_forms(value: str, expected: RateLimit) -> None:
    cfg = load(OK_REGEX + f"rate_limit = {value}\n")
    assert cfg.watchers[0].rate_limit == expected


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ('"10"', "not of the form COUNT/PERIOD"),
        ('"ten/60s"', "not of the form COUNT/PERIOD"),
        ('"10/60 fortnights"', "unknown time unit 'fortnights'"),
        ('"0/60s"', "count must be at least 1"),
        ('"10/0s"', "period must be > 0"),
        ("{count = 10}", "needs both count and per"),
        ("{count = 10, per = 60, burst = 3}", "unknown key 'burst'"),
        ('{count = "10", per = 60}', "count must be a whole number"),
        ('{count = 10, per = "1m"}', "per must be a number of seconds"),
        ("10", "must be a string or a table"),
    ],
)
def test_bad_rate_limits(value: str, needle: str) -> None:
    p = one_problem(OK_REGEX + f"rate_limit = {value}\n")
    assert needle in p.message and p.line == 7, p
    assert p.hint and "10/60s" in p.hint


def test_parse_rate_limit_is_usable_alone() -> None:
    assert C.parse_rate_limit("2/30s") == RateLimit(2, 30.0)
    with pytest.raises(ValueError):
        C.parse_rate_limit("2 per minute")


def test_unknown_event_types_list_the_allowed_ones() -> None:
    ps = problems("""
        [[file_event_actions]]
        name = "fe"
        filepath_regex = 'a'
        event_types = ["create", "delete", "Modify", "bogus"]
        cmd = "x"
    """)
    assert len(ps) == 3
    assert all(p.line == 5 and p.watcher == "fe" for p in ps)
    delete, modify, bogus = ps
    assert "unknown event type 'delete'" in delete.message
    assert delete.hint and "did you mean 'remove'?" in delete.hint
    assert "allowed: " + ", ".join(USER_EVENT_KINDS) in delete.hint
    assert modify.hint and "lower case" in modify.hint
    assert bogus.hint and "allowed:" in bogus.hint


def test_empty_event_types_is_an_error() -> None:
    p = one_problem("""
        [[file_event_actions]]
        filepath_regex = 'a'
        event_types = []
        cmd = "x"
    """)
    assert "at least one event type" in p.message and p.line == 4


@pytest.mark.parametrize(
    ("table", "body", "key"),
    [
        ("regex_actions", "filepath_regex = 'a'\ncmd = 'x'", "line_regex"),
        ("regex_actions", "line_regex = 'a'\ncmd = 'x'", "filepath_regex"),
        ("stale_file_actions", "filepath_regex = 'a'\ncmd = 'x'", "timeout"),
        ("file_event_actions", "filepath_regex = 'a'\ncmd = 'x'", "event_types"),
    ],
)
def test_missing_required_keys(table: str, body: str, key: str) -> None:
    p = one_problem(f"[[{table}]]\nname = 'n'\n{body}\n")
    assert p.message == f"[[{table}]] #1: missing required key '{key}'"
    assert p.line == 1 and p.watcher == "n"
    assert p.hint and p.hint.startswith(f"add {key} =")


def test_captures_must_be_names_unique_and_not_more_than_groups() -> None:
    ps = problems("""
        [[regex_actions]]
        line_regex = '(a)(b)'
        filepath_regex = 'a'
        cmd = "x"
        captures = ["x", "1y"]

        [[regex_actions]]
        line_regex = '(a)(b)'
        filepath_regex = 'a'
        cmd = "x"
        captures = ["x", "x"]

        [[regex_actions]]
        line_regex = '(a)'
        filepath_regex = 'a'
        cmd = "x"
        captures = ["x", "y"]
    """)
    assert [p.line for p in ps] == [6, 12, 18]
    assert "capture name '1y' is not a valid name" in ps[0].message
    assert "capture name 'x' is given twice" in ps[1].message
    assert "captures names 2 groups but line_regex has 1 group" in ps[2].message


def test_named_groups_count_as_groups_for_captures() -> None:
    cfg = load(OK_REGEX.replace("'ERROR'", "'(?P<lvl>E)(R)'") + "captures = ['a', 'b']\n")
    assert cfg.watchers[0].trigger.captures == ("a", "b")  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------
# conditions (sidecar.conditions is a colleague's module: faked here)
# ---------------------------------------------------------------------------------------


def _fake_conditions(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    seen: List[str] = []
    mod = types.ModuleType("sidecar.conditions")

    def compile_condition(expr: str) -> object:
        seen.append(expr)
        if "import" in expr:
            raise ValueError("name 'import' is not allowed")
        return object()

    mod.compile_condition = compile_condition  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sidecar.conditions", mod)
    return seen


def test_condition_is_checked_by_compile_condition(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _fake_conditions(monkeypatch)
    p = one_problem(OK_REGEX + 'condition = "import os"\n')
    assert seen == ["import os"]
    assert p.line == 7 and "condition 'import os' is not valid: name 'import'" in p.message
    assert p.hint and "float(loss) > 5" in p.hint


def test_valid_condition_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_conditions(monkeypatch)
    cfg = load(OK_REGEX + 'condition = "1 < 2"\n')
    assert cfg.watchers[0].trigger.condition == "1 < 2"  # type: ignore[union-attr]


def test_condition_is_checked_by_the_real_conditions_module() -> None:
    pytest.importorskip("sidecar.conditions")
    p = one_problem(OK_REGEX + 'condition = "float(loss) >"\n')
    assert p.line == 7 and "condition 'float(loss) >' is not valid" in p.message


def test_condition_check_is_skipped_without_the_conditions_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "sidecar.conditions", None)  # import raises ImportError
    cfg = load(OK_REGEX + 'condition = "anything at all"\n')
    assert cfg.watchers[0].trigger.condition == "anything at all"  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------
# directories, names
# ---------------------------------------------------------------------------------------


def test_missing_directory_says_where_it_looked_and_how_to_fix(tmp_path: Path) -> None:
    p = one_problem(OK_REGEX + "directory = 'logs/run1'\n", check_dirs=True,
                    base_dir=str(tmp_path))
    assert p.line == 7 and p.watcher == "w"
    assert "directory 'logs/run1' does not exist" in p.message
    assert str(tmp_path / "logs" / "run1") in p.message
    assert p.hint and "mkdir -p logs/run1" in p.hint and "fix the path" in p.hint


def test_directory_is_checked_against_base_dir_but_kept_as_written(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    cfg = load(OK_REGEX + "directory = 'logs'\n", check_dirs=True, base_dir=str(tmp_path))
    assert cfg.watchers[0].source.directory == "logs"


def test_directory_defaults_to_the_cwd(in_tmp: Path) -> None:
    (in_tmp / "here").mkdir()
    assert load(OK_REGEX + "directory = 'here'\n", check_dirs=True).watchers
    with pytest.raises(ConfigError):
        load(OK_REGEX + "directory = 'nothere'\n", check_dirs=True)


def test_a_file_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    p = one_problem(OK_REGEX + "directory = 'f'\n", check_dirs=True, base_dir=str(tmp_path))
    assert "is not a directory" in p.message and p.hint and "filepath_regex" in p.hint


def test_unexpanded_variables_in_directory_get_a_hint(tmp_path: Path) -> None:
    p = one_problem(OK_REGEX + "directory = '$SCRATCH/run'\n", check_dirs=True,
                    base_dir=str(tmp_path))
    assert p.hint and "not expanded" in p.hint


def test_duplicate_names_are_an_error_naming_the_first() -> None:
    ps = problems(OK_REGEX + OK_REGEX)
    assert len(ps) == 1
    p = ps[0]
    assert p.line == 9 and p.watcher == "w"
    assert "duplicate watcher name 'w' (also [[regex_actions]] #1 at line 2)" in p.message


def test_missing_names_are_numbered_per_table() -> None:
    body = "filepath_regex = 'a'\ncmd = 'x'\n"
    cfg = load(
        "[[regex_actions]]\nline_regex='a'\n" + body
        + "[[regex_actions]]\nline_regex='a'\n" + body
        + "[[stale_file_actions]]\ntimeout=1\n" + body
    )
    assert [w.name for w in cfg.watchers] == [
        "regex_actions[1]",
        "regex_actions[2]",
        "stale_file_actions[1]",
    ]


def test_an_explicit_name_may_collide_with_an_automatic_one() -> None:
    ps = problems(
        "[[regex_actions]]\nname = 'regex_actions[2]'\nline_regex='a'\nfilepath_regex='a'\n"
        "cmd='x'\n[[regex_actions]]\nline_regex='a'\nfilepath_regex='a'\ncmd='x'\n"
    )
    assert len(ps) == 1 and "duplicate watcher name 'regex_actions[2]'" in ps[0].message


def test_empty_name_is_an_error() -> None:
    p = one_problem(OK_REGEX.replace('name = "w"', 'name = ""'))
    assert "name must not be empty" in p.message and p.line == 3


# ---------------------------------------------------------------------------------------
# TOML syntax, file errors, structure
# ---------------------------------------------------------------------------------------


def test_toml_syntax_error_has_file_line_and_escape_hint() -> None:
    p = one_problem('queue_length = 10\n[[regex_actions]]\nline_regex = "\\d+"\n')
    assert p.file == "cfg.toml" and p.line == 3
    assert p.message.startswith("TOML syntax error: ")
    assert "(at line" not in p.message
    assert p.hint and "single quotes" in p.hint
    assert str(p).startswith("cfg.toml:3: TOML syntax error")


def test_toml_duplicate_key_is_a_syntax_problem() -> None:
    p = one_problem('[[regex_actions]]\nname = "a"\nname = "b"\n')
    assert p.line == 3 and "defined twice" in (p.hint or "")


def test_single_bracket_watcher_table_is_explained() -> None:
    p = one_problem("[regex_actions]\nline_regex='a'\nfilepath_regex='a'\ncmd='x'\n")
    assert p.line == 1 and "must be an array of tables" in p.message
    assert p.hint and "[[regex_actions]]" in p.hint and "double brackets" in p.hint


def test_inline_array_form_is_accepted() -> None:
    cfg = load("regex_actions = [{line_regex = 'a', filepath_regex = 'b', cmd = 'c'}]\n")
    assert cfg.watchers[0].trigger == RegexTrigger("a")


def test_no_watchers_is_an_error_unless_not_required() -> None:
    p = one_problem("queue_length = 5\n")
    assert "no watchers" in p.message
    assert load("queue_length = 5\n", require_watchers=False).settings.queue_length == 5


def test_every_problem_is_reported_in_line_order() -> None:
    """One load reports all problems, from all tables and the settings, sorted by line."""
    ps = problems("""
        queue_length = 0
        [[regex_actions]]
        name = "a"
        line_regex = '('
        filepath_regex = 'a'
        cmd = "x"
        bogus = 1
        [[stale_file_actions]]
        name = "b"
        filepath_regex = 'a'
        timeout = -1
        cmd = "x"
        [[file_event_actions]]
        name = "c"
        filepath_regex = 'a'
        event_types = ["nope"]
        cmd = "x"
    """)
    assert [p.line for p in ps] == [2, 5, 8, 12, 17]
    assert [p.watcher for p in ps] == [None, "a", "a", "b", "c"]


def test_load_config_reports_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        C.load_config(str(tmp_path / "nope.toml"))
    assert "config file not found" in str(ei.value)
    with pytest.raises(ConfigError) as ei:
        C.load_config(str(tmp_path))
    assert "is a directory" in str(ei.value)
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"a = 1\nb = '\xff'\n")
    with pytest.raises(ConfigError) as ei:
        C.load_config(str(bad))
    (p,) = ei.value.problems
    assert p.line == 2 and "not valid UTF-8" in p.message


def test_load_config_accepts_a_utf8_bom(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_bytes(b"\xef\xbb\xbf" + OK_REGEX.encode())
    assert C.load_config(str(f), check_dirs=False).watchers[0].name == "w"


# ---------------------------------------------------------------------------------------
# overrides
# ---------------------------------------------------------------------------------------


def test_overrides_replace_file_values_and_none_means_not_given() -> None:
    cfg = load(
        "backend = 'inotify'\nnice = 5\n[notify]\nemail_to = 'a@b'\n" + OK_REGEX,
        overrides={"backend": "poll", "nice": None, "start_at": "end",
                   "notify": {"email_from": "me@b", "email_to": None}},
    )
    assert cfg.settings.backend == "poll" and cfg.settings.nice == 5
    assert cfg.settings.notify.email_to == "a@b" and cfg.settings.notify.email_from == "me@b"
    assert cfg.watchers[0].source.start_at == "end"


def test_notify_overrides_blame_only_the_keys_they_give() -> None:
    ps = problems("[notify]\nemail_to = 5\n" + OK_REGEX,
                  overrides={"notify": {"email_from": 7}})
    assert sorted((p.file, p.line) for p in ps) == [(C.OVERRIDES_FILE, None), ("cfg.toml", 2)]


def test_bad_overrides_are_blamed_on_the_command_line() -> None:
    ps = problems("backend = 'poll'\n" + OK_REGEX, overrides={"backend": "nfs", "bogus": 1})
    assert {p.file for p in ps} == {C.OVERRIDES_FILE}
    assert all(p.line is None for p in ps)
    assert any("backend must be one of" in p.message for p in ps)
    assert any("unknown top-level key 'bogus'" in p.message for p in ps)


# ---------------------------------------------------------------------------------------
# schema, docs, consistency
# ---------------------------------------------------------------------------------------


def test_event_kind_literal_matches_the_user_event_kinds() -> None:
    assert C.EventKind.__args__ == USER_EVENT_KINDS  # type: ignore[attr-defined]


def test_json_schema_describes_the_tables_and_forbids_extra_keys() -> None:
    s = C.json_schema()
    assert s["additionalProperties"] is False
    for key in ("queue_length", "notify", *C.TABLES):
        assert key in s["properties"]
    regex = s["$defs"]["RegexActionModel"]
    assert regex["additionalProperties"] is False
    # line_regex is required unless multiline names a preset (then it is the preset's start)
    assert set(regex["required"]) == {"filepath_regex"}
    assert {"required": ["line_regex"]} in regex["anyOf"]
    assert regex["properties"]["multiline"]["anyOf"][0]["enum"] == ["python_traceback"]
    for name, required in (
        ("ProbeActionModel", {"probe", "line_regex"}),
        ("JobEndActionModel", set()),
        ("TimeLimitActionModel", {"before"}),
        ("MemoryActionModel", {"fraction"}),
    ):
        d = s["$defs"][name]
        assert d["additionalProperties"] is False, name
        assert set(d.get("required", [])) == required, name
        assert "directory" not in d["properties"] and "filepath_regex" not in d["properties"]


def test_settings_model_covers_model_settings_with_the_same_defaults() -> None:
    sm = C.SettingsModel.model_validate({})
    assert C._to_settings(sm) == Settings()
    assert set(C.SettingsModel.model_fields) == set(Settings.__dataclass_fields__)


def test_docs_describe_every_key_and_the_settings_defaults() -> None:
    """docs/config.md has a table row per key; the settings rows show the model defaults."""
    doc = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    keys = set(C.ConfigFileModel.model_fields) | set(C.NotifyModel.model_fields)
    for model in set(C._TABLE_MODELS.values()) | {C.MultiLineModel}:
        keys |= set(model.model_fields)
    keys -= {*C.TABLES, "notify"}  # sections of their own
    assert "### `[notify]`" in doc
    first_cells = [ln.split("|")[1] for ln in doc.splitlines() if ln.startswith("| `")]
    undocumented = [k for k in sorted(keys) if not any(f"`{k}`" in c for c in first_cells)]
    assert undocumented == [], "docs/config.md has no table row for these keys"
    defaults: Dict[str, Any] = vars(Settings())
    for k in ("queue_length", "max_concurrent", "action_timeout", "output_cap",
              "poll_interval", "nice", "max_line", "chunk_size", "resubmit_limit",
              "drain_grace"):
        mo = re.search(rf"^\| `{k}` \| [^|]+ \| ([^|]+) \|", doc, re.M)
        assert mo, k
        assert float(mo.group(1)) == float(defaults[k]), k


# ---------------------------------------------------------------------------------------
# the triggers that understand the job (issue #6): new keys and tables
# ---------------------------------------------------------------------------------------

CMD = 'cmd = "true"\n'
FILES = "filepath_regex = 'x'\n"


def one_watcher(text: str, **kw: Any) -> Watcher:
    (w,) = load(text, **kw).watchers
    assert isinstance(w, Watcher)
    return w


def test_new_tables_load_with_their_defaults() -> None:
    """Each new table with only its required keys: the model's defaults, no files."""
    cfg = load(
        "[[probe_actions]]\nprobe = 'nvidia-smi'\nline_regex = '(\\d+)'\n" + CMD
        + "[[job_end_actions]]\n" + CMD
        + "[[time_limit_actions]]\nbefore = 600\n" + CMD
        + "[[memory_actions]]\nfraction = 0.9\n" + CMD
    )
    probe, end, tl, mem = cfg.watchers
    assert probe.name == "probe_actions[1]" and probe.origin.what == "[[probe_actions]] #1"
    assert probe.source == Source(probe="nvidia-smi", probe_interval=60.0, probe_timeout=30.0)
    assert probe.trigger == RegexTrigger("(\\d+)")
    assert probe.throttle is None and probe.rate_limit is None and probe.max_triggers is None
    assert end.trigger == JobEndTrigger() and end.source == Source()
    assert tl.trigger == TimeLimitTrigger(before=600.0, signal="USR1")
    assert mem.trigger == MemoryTrigger(fraction=0.9, limit=None, interval=10.0)
    for w in (end, tl, mem):
        assert w.source == Source() and w.rate_limit is None and w.max_failures == 5
        assert w.actions == (ActionSpec("run_command", {"command": "true"}),)


def test_watchers_are_listed_table_by_table_and_names_are_unique_across_tables() -> None:
    """Order: regex, stale, file_event, probe, job_end, time_limit, memory (file order
    within a table), whatever the order in the file; a name used in two tables is refused."""
    cfg = load(
        "[[memory_actions]]\nfraction = 0.5\n" + CMD
        + "[[time_limit_actions]]\nbefore = 1\n" + CMD
        + "[[job_end_actions]]\n" + CMD
        + "[[probe_actions]]\nprobe = 'p'\nline_regex = 'x'\n" + CMD
        + "[[file_event_actions]]\nevent_types = ['create']\n" + FILES + CMD
        + "[[stale_file_actions]]\ntimeout = 1\n" + FILES + CMD
        + "[[regex_actions]]\nline_regex = 'a'\n" + FILES + CMD
        + "[[job_end_actions]]\n" + CMD
    )
    assert [w.name for w in cfg.watchers] == [
        "regex_actions[1]", "stale_file_actions[1]", "file_event_actions[1]",
        "probe_actions[1]", "job_end_actions[1]", "job_end_actions[2]",
        "time_limit_actions[1]", "memory_actions[1]",
    ]
    p = one_problem(OK_REGEX + "[[job_end_actions]]\nname = 'w'\n" + CMD)
    assert "duplicate watcher name 'w' (also [[regex_actions]] #1 at line 2)" in p.message
    assert p.line == 8 and p.watcher == "w"


def test_config_with_only_job_watchers_needs_no_file_and_no_directory(tmp_path: Path) -> None:
    """Job tables have no directory to check, even with check_dirs."""
    cfg = C.load_config_text("[[job_end_actions]]\n" + CMD, "c.toml", base_dir=str(tmp_path))
    assert cfg.watchers[0].trigger == JobEndTrigger()


def test_no_watchers_message_lists_every_table() -> None:
    p = one_problem("queue_length = 5\n")
    assert "[[probe_actions]]" in p.message and "[[memory_actions]]" in p.message


# -- multi-line records -----------------------------------------------------------------


def test_multiline_preset_needs_no_line_regex() -> None:
    """multiline = "python_traceback": the preset's start regex is the pattern."""
    start, end = MULTILINE_PRESETS["python_traceback"]
    w = one_watcher("[[regex_actions]]\nmultiline = 'python_traceback'\n" + FILES + CMD)
    assert w.trigger == RegexTrigger(
        start, multiline=MultiLine(end=end, max_lines=100, timeout=5.0, preset="python_traceback")
    )


def test_multiline_table_forms() -> None:
    """A table with end (and line_regex), or a preset with overrides; max_lines, timeout."""
    w = one_watcher(
        "[[regex_actions]]\nline_regex = '^BEGIN'\n"
        "multiline = {end = '^END', max_lines = 10, timeout = 2.5}\n" + FILES + CMD
    )
    assert w.trigger == RegexTrigger("^BEGIN", multiline=MultiLine("^END", 10, 2.5))
    w = one_watcher(
        "[[regex_actions]]\nline_regex = 'Traceback'\n"
        "multiline = {preset = 'python_traceback', end = '^Error'}\n" + FILES + CMD
    )
    assert w.trigger == RegexTrigger(
        "Traceback", multiline=MultiLine("^Error", preset="python_traceback")
    )
    w = one_watcher("[[regex_actions]]\n" + FILES + CMD
                    + "[regex_actions.multiline]\npreset = 'python_traceback'\nmax_lines = 7\n")
    assert w.trigger.multiline == MultiLine(  # type: ignore[union-attr]
        MULTILINE_PRESETS["python_traceback"][1], 7, preset="python_traceback"
    )


@pytest.mark.parametrize(
    ("value", "line", "needle", "hint"),
    [
        ("'python_tracebak'", 3, "multiline: unknown preset 'python_tracebak'",
         "did you mean 'python_traceback'?"),
        ("{end = '('}", 3, "multiline: end is not a valid regular expression", "backslash"),
        ("{end = 'x', max_lines = 0}", 3, "multiline: max_lines must be >= 1, got 0", None),
        ("{end = 'x', max_lines = 100001}", 3, "max_lines must be <= 100000", None),
        ("{end = 'x', timeout = 0}", 3, "multiline: timeout must be more than 0 seconds", None),
        ("{end = 'x', timeout = '5s'}", 3, "timeout must be a number of seconds", "bare number"),
        ("{ends = 'x'}", 3, "multiline: unknown key 'ends'", "did you mean 'end'?"),
        ("{max_lines = 5}", 3, "needs end (the regex of a record's last line) or preset",
         "python_traceback"),
        ("{end = ''}", 3, "end must not be empty", None),
        ("{preset = 'nope'}", 3, "unknown preset 'nope'", "presets: 'python_traceback'"),
        ("true", 3, "multiline must be a preset name or a table, got a boolean", "multiline ="),
    ],
)
def test_bad_multiline_values_are_reported(
    value: str, line: int, needle: str, hint: Optional[str]
) -> None:
    p = one_problem(f"[[regex_actions]]\nline_regex = 'a'\nmultiline = {value}\n" + FILES + CMD)
    assert needle in p.message and p.line == line, p
    assert p.watcher == "regex_actions[1]" and "[[regex_actions]] #1" in p.message
    if hint:
        assert p.hint and hint in p.hint, p


def test_custom_multiline_still_needs_line_regex() -> None:
    """Without a preset, line_regex (the record's first line) is required."""
    p = one_problem("[[regex_actions]]\nmultiline = {end = 'x'}\n" + FILES + CMD)
    assert "missing required key 'line_regex'" in p.message and p.line == 1
    assert p.hint and "first line" in p.hint


def test_line_regex_is_still_required_without_multiline() -> None:
    p = one_problem("[[regex_actions]]\nname = 'r'\n" + FILES + CMD)
    assert p.message == "[[regex_actions]] #1: missing required key 'line_regex'"
    assert p.hint == "add line_regex = 'ERROR.*'" and p.line == 1


# -- thresholds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "throttle"),
    [
        ("threshold = '5/60s'", Throttle(RateLimit(5, 60.0))),
        ("threshold = {count = 3, per = 600}", Throttle(RateLimit(3, 600.0))),
        ("threshold = '5/min'\ntrack_by = '$1'", Throttle(RateLimit(5, 60.0), "$1")),
        ("threshold = '5/min'\ntrack_by = '1'", Throttle(RateLimit(5, 60.0), "$1")),
        ("suppress = 600\ntrack_by = 'host'", Throttle(None, "${host}", 600.0)),
        ("suppress = 600\ntrack_by = '${host}'", Throttle(None, "${host}", 600.0)),
        ("suppress = 600\ntrack_by = '$host@$FILE'", Throttle(None, "$host@$FILE", 600.0)),
        ("suppress = 0.5\ntrack_by = 'lvl'", Throttle(None, "${lvl}", 0.5)),
        ("suppress = 10", Throttle(None, None, 10.0)),
    ],
)
def test_threshold_track_by_and_suppress_build_the_throttle(keys: str, throttle: Throttle) -> None:
    """A bare capture name or group number in track_by becomes a reference; named groups
    and built-in variables count."""
    w = one_watcher(
        "[[regex_actions]]\nline_regex = '(?P<lvl>E) host=(\\S+)'\ncaptures = ['x', 'host']\n"
        + keys + "\n" + FILES + CMD
    )
    assert w.throttle == throttle


def test_no_throttle_keys_no_throttle() -> None:
    assert one_watcher(OK_REGEX).throttle is None


@pytest.mark.parametrize(
    ("keys", "line", "needle", "hint"),
    [
        ("threshold = '5/fortnight'", 4, "threshold '5/fortnight': unknown time unit",
         'threshold = "5/60s"'),
        ("threshold = '0/60s'", 4, "threshold count must be at least 1", "threshold ="),
        ("threshold = {count = 5}", 4, "threshold needs both count and per", None),
        ("threshold = 5", 4, "threshold must be a string or a table, got an integer", None),
        ("threshold = '" + "9" * 40 + "/60s'", 4, "threshold: the count 9999", None),
        ("suppress = 0", 4, "suppress must be more than 0 seconds, got 0", None),
        ("suppress = '10m'", 4, "suppress must be a number of seconds", "bare number"),
        ("suppress = 5\ntrack_by = 'nope'", 5,
         "track_by uses $nope, which is not a capture or a group of the pattern",
         "captures: host"),
        ("suppress = 5\ntrack_by = '$2'", 5, "track_by uses $2", "the pattern has 1 group"),
        ("suppress = 5\ntrack_by = 'a b'", 5, "refers to no variable", "track_by = host"),
        ("suppress = 5\ntrack_by = '$$'", 5, "refers to no variable", None),
        ("track_by = 'host'", 4, "track_by is given without threshold or suppress",
         "add threshold"),
        ("track_by = ''", 4, "track_by must not be empty", None),
    ],
)
def test_bad_throttle_keys_are_reported(
    keys: str, line: int, needle: str, hint: Optional[str]
) -> None:
    p = one_problem(
        "[[regex_actions]]\nline_regex = 'host=(\\S+)'\ncaptures = ['host']\n"
        + keys + "\n" + FILES + CMD
    )
    assert needle in p.message and p.line == line, p
    if hint:
        assert p.hint and hint in p.hint, p


# -- stale --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "trigger"),
    [
        ("", StaleTrigger(1200.0)),
        ("require_alive = true", StaleTrigger(1200.0, require_alive=True)),
        ("require_alive = false", StaleTrigger(1200.0)),
        ("max_cpu = 5", StaleTrigger(1200.0, require_alive=True, max_cpu=5.0)),
        ("max_cpu = 0\nrequire_alive = true", StaleTrigger(1200.0, True, 0.0)),
        ("grace = 1800", StaleTrigger(1200.0, grace=1800.0)),
    ],
)
def test_stale_hang_keys(keys: str, trigger: StaleTrigger) -> None:
    """max_cpu implies require_alive = true."""
    w = one_watcher("[[stale_file_actions]]\ntimeout = 1200\n" + keys + "\n" + FILES + CMD)
    assert w.trigger == trigger


@pytest.mark.parametrize(
    ("keys", "line", "needle", "hint"),
    [
        ("max_cpu = -1", 3, "max_cpu must be >= 0, got -1", "percent of one core"),
        ("max_cpu = '5%'", 3, "max_cpu must be a number, got a string", None),
        ("max_cpu = inf", 3, "max_cpu must be a number", None),
        ("grace = 0", 3, "grace must be more than 0 seconds", None),
        ("require_alive = 'yes'", 3, "require_alive must be true or false", "without quotes"),
        ("max_cpu = 5\nrequire_alive = false", 4, "max_cpu is given but require_alive = false",
         "remove require_alive = false"),
    ],
)
def test_bad_stale_keys_are_reported(
    keys: str, line: int, needle: str, hint: Optional[str]
) -> None:
    p = one_problem("[[stale_file_actions]]\ntimeout = 1\n" + keys + "\n" + FILES + CMD)
    assert needle in p.message and p.line == line, p
    if hint:
        assert p.hint and hint in p.hint, p


# -- probes -------------------------------------------------------------------------------


def test_probe_table_with_every_key() -> None:
    w = one_watcher("""
        [[probe_actions]]
        name = "gpu"
        probe = "nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits"
        interval = 300
        probe_timeout = 20
        line_regex = '^(\\d+)'
        captures = ["util"]
        condition = "int(util) < 5"
        ignore_case = true
        threshold = "3/15m"
        track_by = "util"
        suppress = 3600
        cmd = "echo idle"
        actions = [{type = "log_event", message = "GPU idle: $util%"}]
        max_triggers = 4
        rate_limit = "1/h"
        max_failures = 0
        action_timeout = 9
        timer_interval = 600
    """)
    assert w.name == "gpu"
    assert w.source == Source(
        probe="nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits",
        probe_interval=300.0, probe_timeout=20.0,
    )
    assert w.trigger == RegexTrigger("^(\\d+)", ("util",), "int(util) < 5", True)
    assert w.throttle == Throttle(RateLimit(3, 900.0), "${util}", 3600.0)
    assert w.actions == (
        ActionSpec("run_command", {"command": "echo idle"}, 9.0),
        ActionSpec("log_event", {"message": "GPU idle: $util%"}, 9.0),
    )
    assert (w.max_triggers, w.rate_limit, w.max_failures) == (4, RateLimit(1, 3600.0), 0)
    assert w.timer_interval == 600.0 and w.interval is None


@pytest.mark.parametrize(
    ("keys", "needle", "hint"),
    [
        ("directory = '.'", "unknown key 'directory'", "a probe reads a command's output"),
        ("filepath_regex = 'x'", "unknown key 'filepath_regex'", "not files"),
        ("recursive = true", "unknown key 'recursive'", "not files"),
        ("start_at = 'end'", "unknown key 'start_at'", "not files"),
        ("timeout = 5", "unknown key 'timeout'", "probe_timeout the probe's"),
        ("multiline = 'python_traceback'", "unknown key 'multiline'",
         "only valid in [[regex_actions]]"),
        ("probe_timout = 5", "unknown key 'probe_timout'", "did you mean 'probe_timeout'?"),
        ("interval = 0", "interval must be more than 0 seconds", None),
        ("probe_timeout = -1", "probe_timeout must be more than 0 seconds", None),
        ("interval = '5m'", "interval must be a number of seconds", "bare number"),
        ("captures = ['a', 'b']", "captures names 2 groups but line_regex has 1 group", None),
    ],
)
def test_bad_probe_keys_are_reported(keys: str, needle: str, hint: Optional[str]) -> None:
    p = one_problem(
        "[[probe_actions]]\nname = 'p'\nprobe = 'ls'\nline_regex = '(a)'\n" + CMD + keys + "\n"
    )
    assert needle in p.message and p.line == 6 and p.watcher == "p", p
    assert "[[probe_actions]] #1" in p.message
    if hint:
        assert p.hint and hint in p.hint, p


@pytest.mark.parametrize(
    ("text", "needle", "hint"),
    [
        ("line_regex = 'a'\n", "missing required key 'probe'", "nvidia-smi"),
        ("probe = 'ls'\n", "missing required key 'line_regex'", None),
        ("probe = '  '\nline_regex = 'a'\n", "probe is empty", "/bin/sh command"),
        ("probe = 5\nline_regex = 'a'\n", "probe must be a string, got an integer", "quote it"),
        ("probe = 'ls'\nline_regex = '('\n", "line_regex is not a valid regular expression",
         None),
    ],
)
def test_probe_and_its_regex_are_required_and_checked(
    text: str, needle: str, hint: Optional[str]
) -> None:
    p = one_problem("[[probe_actions]]\n" + text + CMD)
    assert needle in p.message, p
    if hint:
        assert p.hint and hint in p.hint, p


# -- job_end, time_limit, memory --------------------------------------------------------


@pytest.mark.parametrize("table", ["job_end_actions", "time_limit_actions", "memory_actions"])
@pytest.mark.parametrize("key", ["directory = '.'", "filepath_regex = 'x'", "recursive = true",
                                 "start_at = 'end'"])
def test_job_tables_watch_no_files(table: str, key: str) -> None:
    base = {"job_end_actions": "", "time_limit_actions": "before = 5\n",
            "memory_actions": "fraction = 0.5\n"}[table]
    p = one_problem(f"[[{table}]]\n{base}{CMD}{key}\n")
    assert "unknown key" in p.message and p.line == (4 if base else 3), p
    assert p.hint and f"[[{table}]] watchers watch the job itself, not files" in p.hint


def test_job_end_condition_is_over_exit_code() -> None:
    w = one_watcher("[[job_end_actions]]\ncondition = 'int(exit_code) != 0'\n" + CMD)
    assert w.trigger == JobEndTrigger("int(exit_code) != 0")
    p = one_problem("[[job_end_actions]]\nname = 'e'\ncondition = 'int(code) != 0'\n" + CMD)
    assert p.line == 3 and p.watcher == "e"
    assert "uses 'code': this watcher's condition can only use exit_code" in p.message
    assert p.hint and 'int(exit_code) != 0' in p.hint
    p = one_problem("[[job_end_actions]]\ncondition = 'int(exit_code) !='\n" + CMD)
    assert "is not valid" in p.message and p.line == 2


@pytest.mark.parametrize("key", ["max_triggers = 1", "rate_limit = '1/min'"])
@pytest.mark.parametrize("table", ["job_end_actions", "time_limit_actions"])
def test_once_only_tables_refuse_limits(table: str, key: str) -> None:
    before = "before = 5\n" if table == "time_limit_actions" else ""
    p = one_problem(f"[[{table}]]\n{before}{CMD}{key}\n")
    assert "unknown key" in p.message and p.hint and "fires at most once" in p.hint


@pytest.mark.parametrize(
    ("value", "signal"),
    [("'USR1'", "USR1"), ("'SIGUSR2'", "USR2"), ("'urg'", "URG"), ("false", None)],
)
def test_time_limit_signal_forms(value: str, signal: Optional[str]) -> None:
    w = one_watcher(f"[[time_limit_actions]]\nbefore = 600\nsignal = {value}\n" + CMD)
    assert w.trigger == TimeLimitTrigger(600.0, signal)


@pytest.mark.parametrize(
    ("keys", "line", "needle", "hint"),
    [
        ("", 1, "missing required key 'before'", "before = 600"),
        ("before = 0", 2, "before must be more than 0 seconds", None),
        ("before = '10m'", 2, "before must be a number of seconds", "bare number"),
        ("before = 1\nsignal = 'KILL'", 3, "signal KILL cannot be used here: it cannot be caught",
         "signal = false"),
        ("before = 1\nsignal = 'TERM'", 3, "signal TERM cannot be used here", None),
        ("before = 1\nsignal = 'HUP'", 3, "reload", None),
        ("before = 1\nsignal = 'USR9'", 3, "'USR9' is not a signal name", None),
        ("before = 1\nsignal = '10'", 3, "signal 10 is USR1", None),
        ("before = 1\nsignal = 10", 3, "signal must be a signal name or false, got an integer",
         'signal = "USR1"'),
        ("before = 1\nsignal = true", 3, "signal = true: name the signal", "signal = false"),
        ("before = 1\ninterval = 5", 3, "unknown key 'interval'", "only valid in"),
    ],
)
def test_bad_time_limit_keys_are_reported(
    keys: str, line: int, needle: str, hint: Optional[str]
) -> None:
    p = one_problem("[[time_limit_actions]]\n" + keys + "\n" + CMD)
    assert needle in p.message and p.line == line, p
    assert p.watcher == "time_limit_actions[1]"
    if hint:
        assert p.hint and hint in p.hint, p


@pytest.mark.parametrize(
    ("keys", "trigger"),
    [
        ("fraction = 1", MemoryTrigger(1.0)),
        ("fraction = 0.9\nlimit = '8G'", MemoryTrigger(0.9, 8 << 30)),
        ("fraction = 0.9\nlimit = '8GB'", MemoryTrigger(0.9, 8 << 30)),
        ("fraction = 0.9\nlimit = '512M'\ninterval = 2.5", MemoryTrigger(0.9, 512 << 20, 2.5)),
        ("fraction = 0.9\nlimit = 2000000", MemoryTrigger(0.9, 2_000_000)),
    ],
)
def test_memory_keys(keys: str, trigger: MemoryTrigger) -> None:
    assert one_watcher("[[memory_actions]]\n" + keys + "\n" + CMD).trigger == trigger


def test_memory_watchers_may_have_limits() -> None:
    """A memory watcher re-arms when the memory falls again: max_triggers and rate_limit
    make sense there (and #WATCHER memory watchers have ssync's 10/min default)."""
    w = one_watcher("[[memory_actions]]\nfraction = 0.5\nmax_triggers = 2\nrate_limit = '1/h'\n"
                    + CMD)
    assert (w.max_triggers, w.rate_limit) == (2, RateLimit(1, 3600.0))


@pytest.mark.parametrize(
    ("keys", "line", "needle", "hint"),
    [
        ("", 1, "missing required key 'fraction'", "fraction = 0.9"),
        ("fraction = 90", 2, "fraction must be <= 1, got 90", "0.9 means 90%"),
        ("fraction = 0", 2, "fraction must be > 0, got 0", "0.9 means 90%"),
        ("fraction = '90%'", 2, "fraction must be a number, got a string", None),
        ("fraction = 0.5\nlimit = '4096'", 3, 'limit "4096" is 4.0 KiB: below 1 MiB',
         'did you mean limit = "4096M"?'),
        ("fraction = 0.5\nlimit = 4096", 3, "limit 4096 is 4.0 KiB", "limit = \"4096M\""),
        ("fraction = 0.5\nlimit = '8Q'", 3, "limit: '8Q' is not a size", "job's own limit"),
        ("fraction = 0.5\nlimit = -5", 3, "limit: a size cannot be negative", None),
        ("fraction = 0.5\nlimit = true", 3, "limit must be a size, got a boolean", "8G"),
        ("fraction = 0.5\ninterval = 0", 3, "interval must be more than 0 seconds", None),
    ],
)
def test_bad_memory_keys_are_reported(
    keys: str, line: int, needle: str, hint: Optional[str]
) -> None:
    p = one_problem("[[memory_actions]]\n" + keys + "\n" + CMD)
    assert needle in p.message and p.line == line, p
    if hint:
        assert p.hint and hint in p.hint, p


@pytest.mark.parametrize(
    ("text", "line", "hint"),
    [
        (OK_REGEX + "before = 60\n", 7, "'before' is only valid in [[time_limit_actions]]"),
        (OK_REGEX + "fraction = 0.5\n", 7, "'fraction' is only valid in [[memory_actions]]"),
        (OK_REGEX + "probe = 'ls'\n", 7, "'probe' is only valid in [[probe_actions]]"),
        ("[[stale_file_actions]]\ntimeout = 1\n" + FILES + CMD + "threshold = '5/60s'\n", 5,
         "only valid in [[regex_actions]] and [[probe_actions]]"),
        ("probe = 'ls'\n" + OK_REGEX, 1, "is its [[probe_actions]] header missing"),
        (OK_REGEX + "[[probe_action]]\nprobe = 'x'\n", 7, "did you mean 'probe_actions'?"),
        ("[[job_end_actions]]\n" + CMD + "conditon = 'x'\n", 3, "did you mean 'condition'?"),
    ],
)
def test_new_keys_in_the_wrong_place_get_a_hint(text: str, line: int, hint: str) -> None:
    p = one_problem(text)
    assert "unknown" in p.message and p.line == line, p
    assert p.hint and hint in p.hint, p


def test_job_tables_need_a_command_and_refuse_both_spellings() -> None:
    p = one_problem("[[job_end_actions]]\nname = 'e'\n")
    assert "no command to run" in p.message and p.watcher == "e"
    p = one_problem("[[memory_actions]]\nfraction = 0.5\ncmd = 'a'\ncommand = 'b'\n")
    assert "both cmd and command" in p.message and p.line == 4


def test_action_timeout_of_job_tables() -> None:
    w = one_watcher("[[time_limit_actions]]\nbefore = 5\naction_timeout = 7\n"
                    "actions = [{type = 'log_event'}, {type = 'cancel', timeout = 1}]\n")
    assert [a.timeout for a in w.actions] == [7.0, 1.0]


def test_new_problems_are_collected_with_the_old_ones_in_line_order() -> None:
    """One load reports problems of old and new tables together, sorted by line."""
    ps = problems("""
        [[regex_actions]]
        name = "a"
        line_regex = '('
        filepath_regex = 'a'
        cmd = "x"
        [[memory_actions]]
        name = "m"
        fraction = 2
        cmd = "x"
        [[probe_actions]]
        name = "p"
        probe = "ls"
        line_regex = 'x'
        directory = "."
        cmd = "x"
    """)
    assert [(p.line, p.watcher) for p in ps] == [(4, "a"), (9, "m"), (15, "p")]


def test_check_command_line_exit_codes_for_new_tables(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sidecar check` describes the new triggers and exits 0; a bad key exits 2 with
    file:line [watcher]: message (fix)."""
    from sidecar.cli import main

    good = tmp_path / "good.toml"
    good.write_text(
        "[[stale_file_actions]]\nname = 'hang'\ntimeout = 1200\nmax_cpu = 5\ngrace = 1800\n"
        + FILES + CMD
        + "[[probe_actions]]\nname = 'gpu'\nprobe = 'nvidia-smi'\nline_regex = '(\\d+)'\n"
        "threshold = '5/60s'\ntrack_by = '1'\nsuppress = 600\n" + CMD
        + "[[job_end_actions]]\nname = 'end'\ncondition = 'int(exit_code) != 0'\n" + CMD
        + "[[time_limit_actions]]\nname = 'tl'\nbefore = 600\n" + CMD
        + "[[memory_actions]]\nname = 'mem'\nfraction = 0.9\nlimit = '8G'\n" + CMD
        + "[[memory_actions]]\nname = 'mem2'\nfraction = 0.9\n" + CMD
        + "[[regex_actions]]\nname = 'tb'\nmultiline = 'python_traceback'\n" + FILES + CMD
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("[[memory_actions]]\nname = 'm'\nfraction = 90\n" + CMD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main(["check", str(good)]) == 0
    out = capsys.readouterr().out
    assert main(["check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "stale after 1200s without a write, require alive, max cpu 5%, grace 1800s" in out
    assert "probe: nvidia-smi every 60s" in out
    assert "threshold 5/60s per $1, suppress 600s" in out
    assert "job end (condition: int(exit_code) != 0)" in out
    assert "time limit: 600s before the end, or on SIGUSR1" in out
    assert "memory >= 90% of limit (8.0 GiB given), every 10s" in out
    assert "memory >= 90% of limit (from SLURM/cgroup at run time), every 10s" in out
    assert "multi-line: python_traceback (max 100 lines, 5s)" in out
    assert "watches: the job itself (no file)" in out and out.rstrip().endswith("OK")
    assert f"{bad}:3 [m]: [[memory_actions]] #1: fraction must be <= 1, got 90 (" in err


def test_regex_future_warnings_are_not_printed(recwarn: Any) -> None:
    """A regex Python's re warns about ("Possible nested set") loads without a warning
    reaching the user."""
    import uuid

    fresh = uuid.uuid4().hex  # re caches compiled patterns: a new one warns again
    w = one_watcher(f"[[regex_actions]]\nline_regex = '[[{fresh}]x'\n" + FILES + CMD)
    assert w.trigger.pattern.startswith("[[")  # type: ignore[union-attr]
    assert not [r for r in recwarn if issubclass(r.category, FutureWarning)]


# ---------------------------------------------------------------------------------------
# robustness: bad input never gives anything but ConfigError
# ---------------------------------------------------------------------------------------

_scalar = st.one_of(
    st.text(max_size=12), st.integers(-5, 5), st.floats(allow_nan=False), st.booleans()
)
_keys = st.sampled_from(
    ["name", "directory", "filepath_regex", "line_regex", "cmd", "command", "timeout",
     "event_types", "actions", "captures", "rate_limit", "condition", "max_triggers",
     "type", "message", "bogus", "count", "per", "recursive", "start_at",
     "multiline", "end", "preset", "max_lines", "threshold", "track_by", "suppress",
     "require_alive", "max_cpu", "grace", "probe", "interval", "probe_timeout", "before",
     "signal", "fraction", "limit"]
)
_value = st.recursive(
    _scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=4)
    ),
    max_leaves=8,
)
_BASE_ENTRY: Dict[str, Dict[str, Any]] = {
    "regex_actions": {"filepath_regex": "x", "line_regex": "a(b)"},
    "stale_file_actions": {"filepath_regex": "x", "timeout": 5},
    "file_event_actions": {"filepath_regex": "x", "event_types": ["create"]},
    "event_actions": {"filepath_regex": "x", "event_types": ["close"]},
    "probe_actions": {"probe": "true", "line_regex": "(a)"},
    "job_end_actions": {},
    "time_limit_actions": {"before": 60},
    "memory_actions": {"fraction": 0.5},
}
_mutated = st.sampled_from(C.TABLES).flatmap(
    lambda table: st.lists(
        st.dictionaries(_keys, _value, max_size=2).map(
            lambda extra: {"cmd": "true", **_BASE_ENTRY[table], **extra}
        ),
        min_size=1,
        max_size=2,
    ).map(lambda entries: {table: entries})
)
_doc = _mutated | st.dictionaries(
    st.sampled_from([*C.TABLES, "queue_length", "backend", "notify", "nice", "zz"]),
    st.one_of(_value, st.lists(st.dictionaries(_keys, _value, max_size=6), max_size=3)),
    max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_doc)
def test_random_documents_load_or_raise_config_error(doc: Dict[str, Any]) -> None:
    import tomli_w

    try:
        text = tomli_w.dumps(doc)
    except Exception:  # a shape tomli_w cannot write: not a config anyone can have
        return
    try:
        C.load_config_text(text, "fuzz.toml", check_dirs=False)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, Problem) and p.message for p in exc.problems)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80))
def test_random_text_loads_or_raises_config_error(text: str) -> None:
    try:
        C.load_config_text(text, "fuzz.toml", check_dirs=False)
    except ConfigError as exc:
        assert exc.problems
