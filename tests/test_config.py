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
    ActionSpec,
    ConfigError,
    FileEventTrigger,
    Problem,
    RateLimit,
    RegexTrigger,
    Settings,
    StaleTrigger,
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
    assert set(regex["required"]) == {"filepath_regex", "line_regex"}


def test_settings_model_covers_model_settings_with_the_same_defaults() -> None:
    sm = C.SettingsModel.model_validate({})
    assert C._to_settings(sm) == Settings()
    assert set(C.SettingsModel.model_fields) == set(Settings.__dataclass_fields__)


def test_docs_describe_every_key_and_the_settings_defaults() -> None:
    """docs/config.md has a table row per key; the settings rows show the model defaults."""
    doc = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    keys = set(C.ConfigFileModel.model_fields) | set(C.NotifyModel.model_fields)
    for model in (C.RegexActionModel, C.StaleFileActionModel, C.FileEventActionModel):
        keys |= set(model.model_fields)
    keys -= {*C.TABLES, "notify"}  # sections of their own
    assert "### `[notify]`" in doc
    first_cells = [ln.split("|")[1] for ln in doc.splitlines() if ln.startswith("| `")]
    for k in sorted(keys):
        assert any(f"`{k}`" in cell for cell in first_cells), k
    defaults: Dict[str, Any] = vars(Settings())
    for k in ("queue_length", "max_concurrent", "action_timeout", "output_cap",
              "poll_interval", "nice", "max_line", "chunk_size", "resubmit_limit",
              "drain_grace"):
        mo = re.search(rf"^\| `{k}` \| [^|]+ \| ([^|]+) \|", doc, re.M)
        assert mo, k
        assert float(mo.group(1)) == float(defaults[k]), k


# ---------------------------------------------------------------------------------------
# robustness: bad input never gives anything but ConfigError
# ---------------------------------------------------------------------------------------

_scalar = st.one_of(
    st.text(max_size=12), st.integers(-5, 5), st.floats(allow_nan=False), st.booleans()
)
_keys = st.sampled_from(
    ["name", "directory", "filepath_regex", "line_regex", "cmd", "command", "timeout",
     "event_types", "actions", "captures", "rate_limit", "condition", "max_triggers",
     "type", "message", "bogus", "count", "per", "recursive", "start_at"]
)
_value = st.recursive(
    _scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=4)
    ),
    max_leaves=8,
)
_BASE_ENTRY: Dict[str, Dict[str, Any]] = {
    "regex_actions": {"line_regex": "a(b)"},
    "stale_file_actions": {"timeout": 5},
    "file_event_actions": {"event_types": ["create"]},
    "event_actions": {"event_types": ["close"]},
}
_mutated = st.sampled_from(C.TABLES).flatmap(
    lambda table: st.lists(
        st.dictionaries(_keys, _value, max_size=2).map(
            lambda extra: {"filepath_regex": "x", "cmd": "true", **_BASE_ENTRY[table], **extra}
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
