"""sidecar.script: #WATCHER lines and blocks of a batch script -> watchers."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any, Dict, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.model import ActionSpec, ConfigError, RateLimit, RegexTrigger, Watcher
from sidecar.script import load_script, load_script_details, parse_watchers

FIXTURES = Path(__file__).parent / "fixtures" / "seed_watchers"
JOB = {"SLURM_JOB_ID": "42", "SLURM_SUBMIT_DIR": "/home/u/run", "SLURM_JOB_NAME": "t.sh",
       "SLURMD_NODENAME": "n1", "SLURM_JOB_USER": "u"}


def parse(text: str, environ: Dict[str, str] = JOB) -> List[Watcher]:
    return parse_watchers(textwrap.dedent(text).lstrip("\n"), "job.sh", environ=environ,
                          cwd="/submit", proc_root=None)


def one(text: str, **kw: Any) -> Watcher:
    (w,) = parse(text, **kw)
    return w


def problems(text: str, environ: Dict[str, str] = JOB) -> List[str]:
    with pytest.raises(ConfigError) as ei:
        parse(text, environ)
    return [str(p) for p in ei.value.problems]


def trig(w: Watcher) -> RegexTrigger:
    assert isinstance(w.trigger, RegexTrigger)
    return w.trigger


def as_dict(w: Watcher) -> Dict[str, Any]:
    t = trig(w)
    return {
        "name": w.name, "line": w.origin.line, "what": w.origin.what,
        "pattern": t.pattern, "captures": list(t.captures), "condition": t.condition,
        "ignore_case": t.ignore_case,
        "actions": [{"type": a.type, "params": dict(a.params), "timeout": a.timeout}
                    for a in w.actions],
        "interval": w.interval, "timer_interval": w.timer_interval,
        "max_triggers": w.max_triggers,
        "rate_limit": [w.rate_limit.count, w.rate_limit.per_s] if w.rate_limit else None,
        "max_failures": w.max_failures, "output_type": w.output_type,
    }


# --------------------------------------------------------------------------- the seeds
SEEDS = sorted(FIXTURES.glob("*.sh"))


def test_every_seed_example_has_an_expectation():
    """Each fixture script comes with its expected parse."""
    assert len(SEEDS) >= 20
    for s in SEEDS:
        assert s.with_suffix(".json").exists(), s


@pytest.mark.parametrize("path", SEEDS, ids=[p.stem for p in SEEDS])
def test_seed_examples_parse_to_their_meaning(path):
    """Every #WATCHER example of the ssync seeds parses to the meaning the seed gives it
    (or, for the two syntax templates, to the problems a user would be shown)."""
    expected = json.loads(path.with_suffix(".json").read_text())
    text = path.read_text()
    if "errors" in expected:
        with pytest.raises(ConfigError) as ei:
            parse_watchers(text, path.name, environ={}, cwd="/submit", proc_root=None)
        got = [{"line": p.line, "message": p.message} for p in ei.value.problems]
        assert got == expected["errors"]
        return
    watchers = parse_watchers(text, path.name, environ={}, cwd="/submit", proc_root=None)
    assert [as_dict(w) for w in watchers] == expected["watchers"]
    for w in watchers:
        assert w.source.paths == ("/submit/slurm-%j.out",)  # outside a job: the pattern
        assert w.origin.file == path.name


def test_seed_complete_script_inside_a_job_watches_the_job_output():
    """The seed's complete script, inside job 42: its watchers read /home/u/run/slurm-42.out."""
    text = (FIXTURES / "s002_complete_script.sh").read_text()
    ws = parse_watchers(text, "s.sh", environ=JOB, proc_root=None)
    assert [w.source.paths for w in ws] == [("/home/u/run/slurm-42.out",)] * 3
    assert {w.source.directory for w in ws} == {"/home/u/run"}


# --------------------------------------------------------------------------- inline syntax
def test_inline_watcher_with_every_key():
    """All properties on one #WATCHER line map onto the model."""
    w = one(
        r"""
        #WATCHER name="loss watch" pattern="epoch (\d+) loss ([\d.]+)" captures=[epoch, loss] condition="float(loss) > 5" action=cancel_job(reason="Loss at $epoch, stopping") max_triggers=2 output_type=stdout interval=30 timer_mode_enabled=true timer_interval_seconds=5m rate_limit=3/min max_failures=0 ignore_case=yes
        """
    )
    assert w.name == "loss watch"
    assert trig(w) == RegexTrigger(r"epoch (\d+) loss ([\d.]+)", ("epoch", "loss"),
                                   "float(loss) > 5", True)
    assert w.actions == (ActionSpec("cancel_job", {"reason": "Loss at $epoch, stopping"}),)
    assert (w.max_triggers, w.output_type, w.interval) == (2, "stdout", 30.0)
    assert (w.timer_interval, w.rate_limit, w.max_failures) == (300.0, RateLimit(3, 60.0), 0)
    assert w.origin.line == 1 and w.origin.what == "#WATCHER"


@pytest.mark.parametrize(
    "written, pattern",
    [
        (r'pattern="epoch (\d+)"', r"epoch (\d+)"),
        (r'pattern="say \"hi\""', 'say "hi"'),
        (r'pattern="a\\b"', r"a\b"),
        (r'pattern="a\\\\b"', r"a\\b"),
        (r"pattern='it\'s (\d+)'", r"it's (\d+)"),
        (r"pattern='x \"y\"'", r"x \"y\""),
        (r"pattern=ERROR|FAIL", "ERROR|FAIL"),
        (r"pattern=epoch\s(\d+)", r"epoch\s(\d+)"),
        (r'pattern="#1 \d"', r"#1 \d"),
        (r'pattern="GPU (\d+): Memory (\\d+)"', r"GPU (\d+): Memory (\d+)"),
        (r"pattern=a\(b", r"a\(b"),
        (r"pattern=[(]x", "[(]x"),
        (r"pattern=(a|b)c", "(a|b)c"),
    ],
)
def test_quoting_rules(written, pattern):
    """Inside "..." only \\" and \\\\ are escapes (likewise \\' inside '...'); every other
    backslash is kept, so regexes mean what they say; bare words are taken as written."""
    w = one(f"#WATCHER {written} action=log_event\n")
    assert trig(w).pattern == pattern


def test_inline_trailing_comment_and_list_forms():
    """A # word after the pairs is a comment; captures take [a, b], [a,b], 'a,b' or a."""
    w = one('#WATCHER pattern="(a)(b)" captures=[x,y] action=log  # note = not a key\n')
    assert trig(w).captures == ("x", "y")
    assert trig(one('#WATCHER pattern="(a)(b)" captures=x,y\n')).captures == ("x", "y")
    assert trig(one('#WATCHER pattern="(a)" captures=x\n')).captures == ("x",)
    assert trig(one('#WATCHER pattern="(a)" captures=["x"]\n')).captures == ("x",)


def test_inline_actions_list():
    """actions=[a, b(...)] gives several actions on one line; commas inside calls and
    quotes do not split."""
    w = one('#WATCHER pattern=x actions=[log_event(message="a, b"), cancel_job(reason="c, d")]\n')
    assert w.actions == (ActionSpec("log_event", {"message": "a, b"}),
                         ActionSpec("cancel_job", {"reason": "c, d"}))


def test_quoted_action_value():
    """action="name(...)" (quoted) is parsed like the bare form."""
    w = one("#WATCHER pattern=x action=\"cancel_job(reason='x y')\"\n")
    assert w.actions == (ActionSpec("cancel_job", {"reason": "x y"}),)


# --------------------------------------------------------------------------- block syntax
def test_block_with_comments_lists_and_keys_after_actions():
    """Block lines: trailing # comments, '# # note' lines, blank '#' lines, list items for
    actions and captures, and keys AFTER actions: are all honoured (ssync ignored them)."""
    w = one(
        r"""
        #WATCHER_BEGIN
        # name: monitor   # the name
        #
        # # a comment line
        # pattern: "epoch (\d+).*loss: ([\d.]+)"  # with a comment
        # captures:
        #   - epoch
        #   - loss
        # actions:
        #   - log_event(message="$level: $message")  # Always log
        #   - cancel_job(reason="x # not a comment", timeout=10)
        # condition: float(loss) > 5.0 # trailing
        # max_triggers: 3
        # output_type: both

        #WATCHER_END
        """
    )
    assert w.name == "monitor"
    assert trig(w).pattern == r"epoch (\d+).*loss: ([\d.]+)"
    assert trig(w).captures == ("epoch", "loss")
    assert trig(w).condition == "float(loss) > 5.0"
    assert w.actions == (
        ActionSpec("log_event", {"message": "$level: $message"}),
        ActionSpec("cancel_job", {"reason": "x # not a comment"}, 10.0),
    )
    assert w.max_triggers == 3 and w.output_type == "both"
    assert w.origin.what == "#WATCHER_BEGIN block" and w.origin.line == 1


def test_block_condition_written_bare_or_quoted():
    """A block condition may be bare (even starting with a quote) or quoted."""
    base = '#WATCHER_BEGIN\n# pattern: "E: (.+)"\n# captures: [msg]\n# condition: {}\n#WATCHER_END\n'
    assert trig(one(base.format("'CUDA' in msg"))).condition == "'CUDA' in msg"
    assert trig(one(base.format('"len(msg) > 2"'))).condition == "len(msg) > 2"
    assert trig(one(base.format("'#' in msg  # hash"))).condition == "'#' in msg"


def test_block_single_action_and_bare_list_item_action():
    """'# action: x(...)' gives one action; '- pause_watcher' (bare) is an action too."""
    w = one(
        """
        #WATCHER_BEGIN
        # pattern: P
        # action: notify_slack(message="Job ${JOB_ID} is ${progress}% complete")
        #WATCHER_END
        """
    )
    assert w.actions == (ActionSpec("notify_slack",
                                    {"message": "Job ${JOB_ID} is ${progress}% complete"}),)


# --------------------------------------------------------------------------- actions
@pytest.mark.parametrize(
    "written, expected",
    [
        ("notify_email", ActionSpec("notify_email")),
        ("log", ActionSpec("log_event")),
        ("cancel", ActionSpec("cancel_job")),
        ("CANCEL_JOB", ActionSpec("cancel_job")),
        ("email(to=a@b.c)", ActionSpec("notify_email", {"to": "a@b.c"})),
        ('run(command="echo \\"x\\" | logger")', ActionSpec("run_command",
                                                            {"command": 'echo "x" | logger'})),
        ('resubmit(modifications={"mem": "16G", "time": "120"}, cancel_original=true)',
         ActionSpec("resubmit", {"modifications": {"mem": "16G", "time": "120"},
                                 "cancel_original": True})),
        ("resubmit(modifications={'mem': '16G', time: 120, 'requeue': true})",
         ActionSpec("resubmit", {"modifications": {"mem": "16G", "time": "120",
                                                   "requeue": "true"}})),
        ("resubmit(modifications={}, cancel_original=no, max_resubmits=2,)",
         ActionSpec("resubmit", {"modifications": {}, "cancel_original": False,
                                 "max_resubmits": 2})),
        ('log_event(message="a, b", level=warn)', ActionSpec("log_event",
                                                             {"message": "a, b",
                                                              "level": "WARNING"})),
        ("store_metric(name=loss, value=$1)", ActionSpec("store_metric",
                                                        {"name": "loss", "value": "$1"})),
        ("store_metric(name=x, value=1.5)", ActionSpec("store_metric",
                                                      {"name": "x", "value": "1.5"})),
        ('run_command(command="sleep 1", timeout=2m)',
         ActionSpec("run_command", {"command": "sleep 1"}, 120.0)),
        ("pause_watcher", ActionSpec("pause_watcher")),
        ("run(cmd='ls -l')", ActionSpec("run_command", {"command": "ls -l"})),
        ("notify(url='json://x', title=T, body=B)",
         ActionSpec("notify", {"url": "json://x", "title": "T", "body": "B"})),
    ],
)
def test_action_forms(written, expected):
    """Bare names, aliases, any case, key=value args with quoted/bare/number/bool/dict
    values, commas inside quotes, trailing commas, timeout -> ActionSpec.timeout."""
    w = one(f"#WATCHER pattern=(x) action={written}\n")
    assert w.actions == (expected,)


def test_watcher_without_action_logs_the_event():
    """As ssync: no action means log_event."""
    assert one("#WATCHER pattern=x\n").actions == (ActionSpec("log_event"),)


# --------------------------------------------------------------------------- defaults
def test_defaults():
    """Name watcher-<line>, rate limit 10/min, max_failures 5, output stdout, no timer,
    timer interval 30 s when only enabled, source = the job's output file."""
    w = one("# one\n# two\n#WATCHER pattern=x\n")
    assert w.name == "watcher-3"
    assert w.rate_limit == RateLimit(10, 60.0)
    assert (w.max_failures, w.output_type, w.timer_interval, w.max_triggers) == (5, "stdout",
                                                                               None, None)
    assert w.source.paths == ("/home/u/run/slurm-42.out",)
    assert w.source.directory == "/home/u/run"
    assert one("#WATCHER pattern=x timer_mode_enabled=true\n").timer_interval == 30.0


@pytest.mark.parametrize("written, expected", [
    ("none", None), ("off", None), ("10/60", RateLimit(10, 60.0)), ("5/min", RateLimit(5, 60.0)),
    ("2/1h", RateLimit(2, 3600.0)), ("7/30s", RateLimit(7, 30.0)), ("1/s", RateLimit(1, 1.0)),
])
def test_rate_limit_forms(written, expected):
    """rate_limit=N/period (seconds, s, min, h) or none."""
    assert one(f"#WATCHER pattern=x rate_limit={written}\n").rate_limit == expected


def test_default_names_are_unique_and_step_aside_for_explicit_ones():
    """An explicit name equal to a default name keeps it; the default gets a suffix."""
    ws = parse("#WATCHER pattern=a\n#WATCHER name=watcher-1 pattern=b\n")
    assert [w.name for w in ws] == ["watcher-1-2", "watcher-1"]


def test_output_type_selects_the_files():
    """stdout / stderr / both map to the job's -o / -e files (both: two paths)."""
    text = "#SBATCH -o out-%j.log\n#SBATCH -e err-%j.log\n#WATCHER pattern=x output_type={}\n"
    assert one(text.format("stdout")).source.paths == ("/home/u/run/out-42.log",)
    assert one(text.format("stderr")).source.paths == ("/home/u/run/err-42.log",)
    assert one(text.format("both")).source.paths == ("/home/u/run/out-42.log",
                                                     "/home/u/run/err-42.log")
    # without -e, stderr shares the stdout file: one path
    assert one("#WATCHER pattern=x output_type=both\n").source.paths == (
        "/home/u/run/slurm-42.out",)


# --------------------------------------------------------------------------- problems
def test_every_problem_is_reported_with_line_watcher_and_fix():
    """One ConfigError lists every problem: the line, the watcher, and how to fix it."""
    msgs = problems(
        """
        #WATCHER pattern="(a" action=log
        #WATCHER name=w2 pattern=x frobnicate=1
        #WATCHER pattern=x action=explode
        #WATCHER pattern=x action=log_event(mesage="hi")
        #WATCHER_BEGIN
        # name: blk
        # pattern: (\\d+)
        # captures: [n]
        # condition: float(n) >
        #WATCHER_END
        #WATCHER captures=[a]
        """
    )
    assert len(msgs) == 6, msgs
    assert msgs[0].startswith("job.sh:1 [#WATCHER at line 1]: pattern is not a valid regex")
    assert msgs[1].startswith("job.sh:2 [w2]: unknown key 'frobnicate'")
    assert "unknown action 'explode'" in msgs[2] and "actions:" in msgs[2]
    assert "log_event() has no parameter 'mesage'" in msgs[3] and "did you mean message" in msgs[3]
    assert msgs[4].startswith("job.sh:9 [blk]: condition:")
    assert msgs[5].startswith("job.sh:11 [#WATCHER at line 11]: pattern is missing")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("#WATCHER pattern=x pattern=y\n", "pattern is given twice"),
        ("#WATCHER pattern=x action=log actions=[log]\n", "either action or actions"),
        ("#WATCHER pattern=x max_triggers=0\n", "max_triggers must be at least 1"),
        ("#WATCHER pattern=x max_triggers=many\n", "whole number"),
        ("#WATCHER pattern=x interval=-1\n", "interval must be a number of seconds"),
        ("#WATCHER pattern=x output_type=all\n", "output_type must be stdout, stderr or both"),
        ("#WATCHER pattern=x ignore_case=maybe\n", "ignore_case must be true or false"),
        ("#WATCHER pattern=x timer_interval_seconds=60\n", "timer mode is not enabled"),
        ("#WATCHER pattern=x timer_mode_enabled=false timer_interval_seconds=60\n",
         "timer_mode_enabled is false"),
        ("#WATCHER pattern=x rate_limit=fast\n", "rate_limit must look like"),
        ("#WATCHER pattern=(a) captures=[a,b]\n", "captures names 2 groups but the pattern has 1"),
        ("#WATCHER pattern=(a) captures=[MATCH]\n", "built-in variable"),
        ("#WATCHER pattern=(a)(b) captures=[a,a]\n", "given twice"),
        ("#WATCHER pattern=(a) captures=[1x]\n", "not a valid name"),
        ("#WATCHER pattern=(a) captures=[__x]\n", "may not start with __"),
        ("#WATCHER pattern=(a) captures=[a] condition=\"float(b) > 1\"\n", "'b', which is not a capture"),
        ("#WATCHER pattern=x condition=\"().__class__\"\n", "attribute access"),
        ("#WATCHER pattern=\"\"\n", "pattern is empty"),
        ("#WATCHER pattern=" + "a" * 1001 + "\n", "pattern too long"),
        ("#WATCHER pattern=x action=run_command\n", "run_command needs command"),
        ("#WATCHER pattern=x action=run_command(command=a, cmd=b)\n", "not both"),
        ("#WATCHER pattern=(x) action=run_command(command=\"echo ${!1}\")\n", "indirection"),
        ("#WATCHER pattern=x action=log_event(level=LOUD)\n", "is not one of"),
        ("#WATCHER pattern=x action=log_event(message=[1])\n", "must be a string"),
        ("#WATCHER pattern=x action=resubmit(modifications=16G)\n", "must be a dict"),
        ("#WATCHER pattern=x action=resubmit(modifications={'mem': [1]})\n", "string or a number"),
        ("#WATCHER pattern=x action=resubmit(cancel_original=perhaps)\n", "true or false"),
        ("#WATCHER pattern=x action=cancel_job(\"why\")\n", "arguments are key=value"),
        ("#WATCHER pattern=x action=cancel_job(reason=a, reason=b)\n", "reason given twice"),
        ("#WATCHER pattern=x action=cancel_job(reason=\"a\"\n", "missing ')'"),
        ("#WATCHER pattern=x action=cancel_job(reason=\"a) \n", "unterminated"),
        ("#WATCHER pattern=x action=cancel_job(reason=a)(b)\n", "unexpected"),
        ("#WATCHER pattern=x action=cancel_job reason=a\n", "unknown key 'reason'"),
        ("#WATCHER pattern=x action=cancel_job[\n", "unclosed '['"),
        ("#WATCHER pattern=x action=pause_watcher(name=nobody)\n", "no watcher has that name"),
        ("#WATCHER pattern=\"x\"y\n", "unexpected text after the closing quote"),
        ("#WATCHER pattern=\"x\n", "unterminated \" quote"),
        ("#WATCHER pattern= x\n", "no value after pattern="),
        ("#WATCHER pattern x\n", "expected key=value"),
        ("#WATCHER name=a pattern=x\n#WATCHER name=a pattern=y\n", "'a' is used twice"),
        ("#WATCHER_BEGIN\n# pattern: x\n", "never closed"),
        ("#WATCHER_BEGIN\n# pattern: x\necho hi\n#WATCHER_END\n", "not closed before line 3"),
        ("#WATCHER_BEGIN\n# pattern: x\n#WATCHER_BEGIN\n# pattern: y\n#WATCHER_END\n",
         "not closed before line 3"),
        ("#WATCHER_END\n", "without a #WATCHER_BEGIN"),
        ("#WATCHER_BEGIN junk\n# pattern: x\n#WATCHER_END\n", "unexpected text after #WATCHER_BEGIN"),
        ("#WATCHER_BEGIN\n# pattern x\n#WATCHER_END\n", "expected '# key: value'"),
        ("#WATCHER_BEGIN\n#   - log\n# pattern: x\n#WATCHER_END\n", "does not belong to a key"),
        ("#WATCHER_BEGIN\n# pattern: x\n# actions:\n#WATCHER_END\n", "actions: is empty"),
        ("#WATCHER_BEGIN\n# pattern:\n#WATCHER_END\n", "pattern has no value"),
        ("#WATCHER_BEGIN\n# pattern: x\n# name:\n#   - a\n#WATCHER_END\n", "cannot take a list"),
        ("#WATCHERS pattern=x\n", "unknown directive #WATCHERS"),
        ("#watcher pattern=x\n", "unknown directive #watcher"),
        ("#WATCHER=x\n", "unknown directive"),
        ("#SBATCH -o none\n#WATCHER pattern=x\n", "nothing to watch"),
        ("#WATCHER pattern=x interval_seconds=1 interval=2\n", "interval is given twice"),
    ],
)
def test_problems(text, fragment):
    """Each mistake is a ConfigError naming what is wrong (nothing silently dropped)."""
    msgs = problems(text)
    assert any(fragment in m for m in msgs), msgs


def test_commented_out_directives_are_ignored():
    """'# WATCHER' and '##WATCHER' are comments (the way '# SBATCH' disables #SBATCH)."""
    ws = parse("# WATCHER pattern=(\n##WATCHER junk\n#WATCHER pattern=x\n")
    assert len(ws) == 1


def test_a_broken_block_does_not_hide_the_watchers_after_it():
    """After an unclosed block (ended by a command) the next watchers are still checked."""
    msgs = problems("#WATCHER_BEGIN\n# pattern: x\necho\n#WATCHER pattern=(\n")
    assert len(msgs) == 2 and "not closed" in msgs[0] and "regex" in msgs[1]


# --------------------------------------------------------------------------- ssync defects
def test_ssync_defects_are_not_repeated():
    """max_triggers/output_type kept, output_type=both watched, keys after actions: read,
    commas inside quoted args kept, unknown keys/actions refused, $1 vs $10 distinct."""
    w = one(
        """
        #WATCHER_BEGIN
        # pattern: "(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)"
        # actions:
        #   - log_event(message="a, b, $10 $1")
        # max_triggers: 1
        # output_type: both
        #WATCHER_END
        """,
        environ=dict(JOB),
    )
    assert w.max_triggers == 1 and w.output_type == "both"
    assert w.actions[0].params["message"] == "a, b, $10 $1"
    from sidecar.substitute import substitute

    groups = {str(i): c for i, c in enumerate("abcdefghij", start=1)}
    assert substitute(w.actions[0].params["message"], groups) == "a, b, j a"
    assert problems("#WATCHER pattern=x bogus=1\n")
    assert problems("#WATCHER pattern=x action=bogus\n")


def test_commands_keep_their_templates():
    """run_command(command=...) stays a template: captures are given to it safely at run
    time (sidecar.substitute.substitute_shell), never pasted in at parse time."""
    w = one('#WATCHER pattern="(.+)" captures=[msg] action=run_command(command="echo $msg | mail x")\n')
    assert w.actions[0].params == {"command": "echo $msg | mail x"}


# --------------------------------------------------------------------------- loading
def test_load_script_reads_the_file(tmp_path):
    """load_script: Config with the watchers, the script's absolute path and source_file."""
    p = tmp_path / "job.sh"
    p.write_text("#!/bin/bash\n#SBATCH -o train.log\n#WATCHER pattern=ERROR action=log\necho\n")
    cfg = load_script(str(p), environ=dict(JOB, SLURM_SUBMIT_DIR=str(tmp_path)))
    assert cfg.script == str(p) and cfg.source_file == str(p)
    (w,) = cfg.watchers
    assert w.source.paths == (str(tmp_path / "train.log"),)
    assert w.origin.file == str(p) and w.origin.line == 3


def test_load_script_problems(tmp_path):
    """A missing file or a script without #WATCHER lines is a ConfigError."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_script(str(tmp_path / "nope.sh"), environ={})
    p = tmp_path / "empty.sh"
    p.write_text("#!/bin/bash\necho hi\n")
    with pytest.raises(ConfigError, match="no #WATCHER lines"):
        load_script(str(p), environ={})


def test_load_script_details_for_check(tmp_path):
    """For `sidecar check`: files per watcher (resolved or not), the job, and warnings
    (unknown variables, single-quoted variables, non-sbatch modifications)."""
    p = tmp_path / "job.sh"
    p.write_text(
        "#!/bin/bash\n"
        '#WATCHER name=a pattern="(x)" captures=[v] action=log_event(message="$v $nope")\n'
        "#WATCHER name=b pattern=y action=run_command(command=\"echo '$1'\")\n"
        '#WATCHER name=c pattern="(z)" action=run_command(command="echo \'$1\'")\n'
        '#WATCHER name=d pattern=w action=resubmit(modifications={"learning-rate": "1"})\n'
    )
    d = load_script_details(str(p), environ={}, cwd=str(tmp_path), proc_root=None)
    assert d.job is None
    (f,) = d.files["a"]
    assert (f.resolved, f.path) == (False, str(tmp_path / "slurm-%j.out"))
    warnings = [str(w) for w in d.warnings]
    assert any("[a]" in w and "$nope" in w for w in warnings)
    assert any("[c]" in w and "single quotes" in w for w in warnings)
    assert not any("[b]" in w for w in warnings)  # $1 is not a variable of b (no group)
    assert any("[d]" in w and "learning-rate" in w for w in warnings)
    d = load_script_details(str(p), environ=JOB, proc_root=None)
    assert d.job is not None and d.files["a"][0].resolved


def test_parsing_is_repeatable():
    """Parsing the seed's complete script twice gives equal watchers (no state kept between
    parses). Its speed is part of the start-up figures of ``make bench``, not a test."""
    text = (FIXTURES / "s002_complete_script.sh").read_text()
    a = parse_watchers(text, "s.sh", environ=JOB, proc_root=None)
    b = parse_watchers(text, "s.sh", environ=JOB, proc_root=None)
    assert a == b


# --------------------------------------------------------------------------- fuzzing
_PIECES = st.sampled_from([
    "#WATCHER ", "#WATCHER_BEGIN", "#WATCHER_END", "\n", "# ", "#   - ", "pattern", "name",
    "action", "actions", "captures", "condition", "max_triggers", "=", ":", '"', "'", "\\",
    "(", ")", "[", "]", "{", "}", ",", " ", "x", "(\\d+)", "log_event", "cancel_job",
    "resubmit", "message", "modifications", "mem", "16G", "true", "1", "float(x) > 1",
    "#", "$1", "run_command", "command", "timeout", "rate_limit", "10/min", "output_type",
    "both", "#SBATCH -o ", "%j", "echo\n", "\t", "é", "\x00",
])


@settings(max_examples=3000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.lists(_PIECES, max_size=30).map("".join))
def test_fuzz_parse_watchers_raises_only_config_error(text):
    """Whatever the script says, parse_watchers returns watchers or raises ConfigError."""
    try:
        ws = parse_watchers(text, "f.sh", environ=JOB, proc_root=None)
    except ConfigError as exc:
        assert exc.problems and all(p.message for p in exc.problems)
        return
    for w in ws:
        assert isinstance(w, Watcher) and w.actions


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text(text):
    """Arbitrary text (with #WATCHER in front) never raises anything but ConfigError."""
    for prefix in ("#WATCHER ", "#WATCHER_BEGIN\n# "):
        try:
            parse_watchers(prefix + text, "f.sh", environ={}, cwd="/", proc_root=None)
        except ConfigError:
            pass


def test_no_output_files_without_environment_leak(monkeypatch):
    """parse_watchers(environ=None) uses os.environ (the job's environment)."""
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_SUBMIT_DIR", "/sd")
    monkeypatch.delenv("SBATCH_OUTPUT", raising=False)
    (w,) = parse_watchers("#WATCHER pattern=x\n", "j.sh", proc_root=None)
    assert w.source.paths == ("/sd/slurm-77.out",)
    assert os.environ["SLURM_JOB_ID"] == "77"


def test_text_keys_take_brackets_as_written():
    """A regex that starts with '[' is a regex, inline and in blocks, not a list."""
    assert trig(one("#WATCHER pattern=[0-9]+% action=log\n")).pattern == "[0-9]+%"
    w = one("#WATCHER_BEGIN\n# pattern: [abc] # c\n#WATCHER_END\n")
    assert trig(w).pattern == "[abc]"
    w = one("#WATCHER_BEGIN\n# pattern: [(]x\n#WATCHER_END\n")
    assert trig(w).pattern == "[(]x"


# --------------------------------------------------------------------------- new triggers
from sidecar.model import (  # noqa: E402
    MULTILINE_PRESETS,
    JobEndTrigger,
    MemoryTrigger,
    MultiLine,
    Source,
    StaleTrigger,
    Throttle,
    TimeLimitTrigger,
)
from sidecar.script import TrackByError, track_by_template  # noqa: E402

OUT = ("/home/u/run/slurm-42.out",)


def problem_list(text: str) -> List[Any]:
    with pytest.raises(ConfigError) as ei:
        parse(text)
    return list(ei.value.problems)


def one_problem(text: str) -> Any:
    ps = problem_list(text)
    assert len(ps) == 1, [str(p) for p in ps]
    return ps[0]


def test_each_trigger_with_its_defaults():
    """trigger= line (default), stale, job_end, time_limit, memory, probe (also implied by
    probe=): defaults, sources, and ssync's 10/min rate limit except where a watcher fires
    at most once."""
    ws = parse(
        """
        #WATCHER pattern=x
        #WATCHER trigger=stale timeout=20m
        #WATCHER trigger=job_end
        #WATCHER trigger=time_limit before=10m
        #WATCHER trigger=memory fraction=0.9
        #WATCHER probe="nvidia-smi -q" pattern=x
        #WATCHER trigger=probe probe=df pattern=x
        """
    )
    line, stale, end, tl, mem, probe, probe2 = ws
    assert line.trigger == RegexTrigger("x") and line.source.paths == OUT
    assert stale.trigger == StaleTrigger(1200.0) and stale.source.paths == OUT
    assert stale.output_type == "stdout" and stale.rate_limit == RateLimit(10, 60.0)
    assert end.trigger == JobEndTrigger() and end.rate_limit is None
    assert tl.trigger == TimeLimitTrigger(600.0, "USR1") and tl.rate_limit is None
    assert mem.trigger == MemoryTrigger(0.9, None, 10.0) and mem.rate_limit == RateLimit(10, 60.0)
    for w in (end, tl, mem):
        assert w.source == Source() and w.output_type is None and w.interval is None
        assert w.actions == (ActionSpec("log_event"),) and w.throttle is None
    assert probe.source == Source(probe="nvidia-smi -q", probe_interval=60.0, probe_timeout=30.0)
    assert probe.trigger == RegexTrigger("x") and probe.output_type is None
    assert probe.rate_limit == RateLimit(10, 60.0)
    assert probe2.source.probe == "df"


def test_new_trigger_watchers_have_no_files_in_the_details(tmp_path):
    """`sidecar check` lists the files of file watchers only."""
    p = tmp_path / "job.sh"
    p.write_text("#WATCHER name=a pattern=x\n#WATCHER name=b trigger=job_end\n"
                 "#WATCHER name=c probe=ls pattern=x\n#WATCHER name=d trigger=stale timeout=1\n")
    d = load_script_details(str(p), environ={}, cwd=str(tmp_path), proc_root=None)
    assert set(d.files) == {"a", "d"}


def test_every_new_property_reaches_the_model():
    ws = parse(
        r"""
        #WATCHER name=h pattern="host=(\S+) down" captures=[host] threshold=5/60 track_by=host suppress=10m
        #WATCHER name=t1 multiline=python_traceback max_lines=200 record_timeout=2s
        #WATCHER name=blk pattern="^BEGIN" end_pattern="^END"
        #WATCHER name=s trigger=stale timeout=20m require_alive=true max_cpu=5 grace=30m interval=7 output_type=both
        #WATCHER name=e trigger=job_end condition="int(exit_code) != 0"
        #WATCHER name=t trigger=time_limit before=10m signal=SIGUSR2
        #WATCHER name=t0 trigger=time_limit before=1h signal=none
        #WATCHER name=m trigger=memory fraction=90% limit=8G interval=30s max_triggers=2 rate_limit=1/h
        #WATCHER name=g probe="nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits" pattern="^(\d+)" captures=[util] condition="int(util) < 5" threshold=3/15m track_by=$1 suppress=1h interval=5m probe_timeout=20s timer_mode_enabled=true max_triggers=3
        """
    )
    by = {w.name: w for w in ws}
    assert by["h"].throttle == Throttle(RateLimit(5, 60.0), "${host}", 600.0)
    start, end = MULTILINE_PRESETS["python_traceback"]
    assert by["t1"].trigger == RegexTrigger(
        start, multiline=MultiLine(end, 200, 2.0, "python_traceback"))
    assert by["blk"].trigger == RegexTrigger("^BEGIN", multiline=MultiLine("^END"))
    assert by["s"].trigger == StaleTrigger(1200.0, True, 5.0, 1800.0)
    assert by["s"].interval == 7.0 and by["s"].output_type == "both"
    assert by["e"].trigger == JobEndTrigger("int(exit_code) != 0")
    assert by["t"].trigger == TimeLimitTrigger(600.0, "USR2")
    assert by["t0"].trigger == TimeLimitTrigger(3600.0, None)
    assert by["m"].trigger == MemoryTrigger(0.9, 8 << 30, 30.0)
    assert (by["m"].max_triggers, by["m"].rate_limit) == (2, RateLimit(1, 3600.0))
    g = by["g"]
    assert g.source == Source(probe="nvidia-smi --query-gpu=utilization.gpu "
                              "--format=csv,noheader,nounits", probe_interval=300.0,
                              probe_timeout=20.0)
    assert g.trigger == RegexTrigger(r"^(\d+)", ("util",), "int(util) < 5")
    assert g.throttle == Throttle(RateLimit(3, 900.0), "$1", 3600.0)
    assert (g.timer_interval, g.max_triggers, g.interval) == (30.0, 3, None)


def test_block_form_of_the_new_properties():
    w = one(
        """
        #WATCHER_BEGIN
        # name: tb
        # multiline: python_traceback  # a preset
        # end_pattern: "^(\\w+Error|KeyboardInterrupt)"
        # max_lines: 50
        # threshold: 3/10m
        # suppress: 30m
        # actions:
        #   - notify_email(subject="Traceback", message="$RECORD ($SUPPRESSED held back)")
        #WATCHER_END
        """
    )
    assert w.trigger == RegexTrigger(
        MULTILINE_PRESETS["python_traceback"][0],
        multiline=MultiLine(r"^(\w+Error|KeyboardInterrupt)", 50, 5.0, "python_traceback"),
    )
    assert w.throttle == Throttle(RateLimit(3, 600.0), None, 1800.0)


def test_trigger_variables_are_known_where_they_exist(tmp_path):
    """The variables the engine gives each trigger ($RECORD for multi-line records,
    $SUPPRESSED/$COUNT/$KEY when throttled, $EXIT_CODE, $TIME_LEFT, $RSS_BYTES,
    $CPU_PERCENT, $PROBE) draw no unknown-variable warning there, and do elsewhere."""
    p = tmp_path / "job.sh"
    p.write_text(
        '#WATCHER name=a multiline=python_traceback action=log(message="$RECORD_LINES $RECORD")\n'
        '#WATCHER name=b pattern=x suppress=1m action=log(message="$SUPPRESSED $COUNT $KEY")\n'
        '#WATCHER name=c trigger=job_end action=log(message="$EXIT_CODE $exit_code")\n'
        '#WATCHER name=d pattern=x action=log(message="$RECORD")\n'
        '#WATCHER name=e trigger=time_limit before=1m action=log(message="$TIME_LEFT $SIGNAL")\n'
        '#WATCHER name=f trigger=memory fraction=0.5 action=log(message="$RSS_BYTES $FRACTION")\n'
        '#WATCHER name=g trigger=stale timeout=1 action=log(message="$CPU_PERCENT")\n'
        '#WATCHER name=h probe=ls pattern=x action=log(message="$PROBE $TIME_LEFT")\n'
    )
    d = load_script_details(str(p), environ={}, cwd=str(tmp_path), proc_root=None)
    warned = {w.watcher for w in d.warnings}
    assert warned == {"d", "h"}  # $RECORD without a record; $TIME_LEFT in a probe


@pytest.mark.parametrize(
    "text, line, fragment, hint",
    [
        ("#WATCHER pattern=x timeout=20m\n", 1,
         "timeout is not a property of trigger=line watchers (trigger=line is the default)",
         "write trigger=stale, or remove timeout; an action's own time limit"),
        ("#WATCHER trigger=stale timeout=1m pattern=x\n", 1,
         "pattern is not a property of trigger=stale watchers",
         "pattern is for trigger=line or trigger=probe watchers: remove pattern"),
        ("#WATCHER trigger=stale timeout=1m captures=[a]\n", 1, "captures is not a property",
         "remove captures"),
        ("#WATCHER trigger=job_end output_type=both\n", 1,
         "output_type is not a property of trigger=job_end watchers", "remove output_type"),
        ("#WATCHER trigger=memory fraction=0.5 pattern=x\n", 1, "pattern is not a property",
         None),
        ("#WATCHER trigger=time_limit before=1m captures=[x]\n", 1, "captures is not", None),
        ("#WATCHER trigger=job_end max_triggers=1\n", 1, "max_triggers is not a property",
         "fires at most once"),
        ("#WATCHER trigger=time_limit before=1m rate_limit=1/min\n", 1, "rate_limit is not",
         "fires at most once"),
        ("#WATCHER trigger=job_end interval=5\n", 1, "interval is not a property", None),
        ("#WATCHER probe=ls pattern=x output_type=both\n", 1,
         "output_type is not a property of trigger=probe watchers (probe= makes a probe watcher)",
         None),
        ("#WATCHER probe=ls pattern=x multiline=python_traceback\n", 1,
         "multiline is not a property of trigger=probe", "is for trigger=line watchers"),
        ("#WATCHER pattern=x before=10m\n", 1, "before is not a property",
         "write trigger=time_limit"),
        ("#WATCHER pattern=x fraction=0.9\n", 1, "fraction is not", "write trigger=memory"),
        ("#WATCHER trigger=line probe=ls pattern=x\n", 1,
         "probe is not a property of trigger=line watchers", "remove probe"),
        ("#WATCHER trigger=hang\n", 1, "unknown trigger 'hang'", "triggers: line, stale"),
        ("#WATCHER trigger=stal timeout=1\n", 1, "unknown trigger", "did you mean stale?"),
        ("#WATCHER trigger=memory fraction=0.5 bogus=1\n", 1, "unknown key 'bogus'",
         "keys of trigger=memory: name, trigger"),
        ("#WATCHER trigger=stale\n", 1, "timeout is missing", "timeout=20m"),
        ("#WATCHER trigger=time_limit\n", 1, "before is missing", "before=10m"),
        ("#WATCHER trigger=memory\n", 1, "fraction is missing", "fraction=0.9"),
        ("#WATCHER trigger=probe pattern=x\n", 1, "probe is missing", 'probe="COMMAND"'),
        ("#WATCHER probe=ls\n", 1, "pattern is missing", None),
        ("#WATCHER probe=\"\" pattern=x\n", 1, "probe is empty", "/bin/sh command"),
        ("#WATCHER trigger=stale timeout=soon\n", 1, "timeout must be a number of seconds", None),
        ("#WATCHER trigger=stale timeout=1m max_cpu=lots\n", 1, "max_cpu must be a number",
         "percent of one core"),
        ("#WATCHER trigger=stale timeout=1m max_cpu=-1\n", 1, "max_cpu must be at least 0",
         None),
        ("#WATCHER trigger=stale timeout=1m grace=0\n", 1, "grace must be more than 0", None),
        ("#WATCHER trigger=stale timeout=1m require_alive=maybe\n", 1, "true or false", None),
        ("#WATCHER trigger=stale timeout=1m max_cpu=5 require_alive=no\n", 1,
         "max_cpu is given but require_alive is false", "remove require_alive=false"),
        ("#WATCHER trigger=job_end condition=\"int(code) != 0\"\n", 1,
         "condition uses 'code': a job_end condition can only use exit_code",
         "int(exit_code) != 0"),
        ("#WATCHER trigger=time_limit before=1m signal=KILL\n", 1,
         "signal KILL cannot be used here: it cannot be caught", "signal=none"),
        ("#WATCHER trigger=time_limit before=1m signal=10\n", 1, "signal 10 is USR1", None),
        ("#WATCHER trigger=time_limit before=1m signal=BOGUS\n", 1, "is not a signal name",
         None),
        ("#WATCHER trigger=time_limit before=0\n", 1, "before must be more than 0 seconds",
         None),
        ("#WATCHER trigger=memory fraction=1.5\n", 1, "fraction must be more than 0 and at most 1",
         "90%"),
        ("#WATCHER trigger=memory fraction=0\n", 1, "fraction must be more than 0", None),
        ("#WATCHER trigger=memory fraction=lots\n", 1, "fraction must be a number", None),
        ("#WATCHER trigger=memory fraction=0.5 limit=4096\n", 1,
         "limit '4096' is 4.0 KiB: below 1 MiB", "did you mean limit=4096M?"),
        ("#WATCHER trigger=memory fraction=0.5 limit=8Q\n", 1, "limit: '8Q' is not a size",
         "job's own limit"),
        ("#WATCHER trigger=memory fraction=0.5 interval=0\n", 1, "interval must be more than 0",
         None),
        ("#WATCHER pattern=x max_lines=5\n", 1,
         "max_lines is set but the watcher gathers no multi-line record", "end_pattern=REGEX"),
        ("#WATCHER pattern=x record_timeout=5s\n", 1, "record_timeout is set", None),
        ("#WATCHER multiline=python_tb\n", 1, "multiline: unknown preset 'python_tb'",
         "did you mean python_traceback?"),
        ("#WATCHER pattern=x end_pattern=(\n", 1, "end_pattern is not a valid regex", None),
        ("#WATCHER pattern=x end_pattern=\"\"\n", 1, "end_pattern is empty", None),
        ("#WATCHER multiline=python_traceback max_lines=0\n", 1, "max_lines must be at least 1",
         None),
        ("#WATCHER multiline=python_traceback max_lines=100001\n", 1,
         "max_lines must be at most 100000", None),
        ("#WATCHER end_pattern=x\n", 1, "pattern is missing", None),
        ("#WATCHER pattern=x threshold=many\n", 1,
         "threshold must look like 10/60 (10 matches per 60 s)", None),
        ("#WATCHER pattern=x threshold=0/60\n", 1, "threshold must look like", None),
        ("#WATCHER pattern=x suppress=0\n", 1, "suppress must be more than 0 seconds", None),
        ("#WATCHER pattern=(a) track_by=$2 threshold=5/60\n", 1,
         "track_by uses $2, which is not a capture or a group of the pattern",
         "the pattern has 1 group"),
        ("#WATCHER pattern=(a) captures=[x] track_by=y threshold=5/60\n", 1,
         "track_by uses $y", "captures: x"),
        ("#WATCHER pattern=(a) track_by=1\n", 1,
         "track_by is given without threshold or suppress", "threshold=5/60"),
        ("#WATCHER pattern=(a) track_by=\"a b\" suppress=1m\n", 1, "refers to no variable",
         None),
        # absurd numbers are refused with a message, never a traceback
        ("#WATCHER pattern=x rate_limit=" + "9" * 5000 + "/60\n", 1, "is too large", None),
        ("#WATCHER pattern=x threshold=" + "9" * 50 + "/60\n", 1, "is too large", None),
        ("#WATCHER pattern=x interval=" + "9" * 400 + "\n", 1, "interval is too large", None),
        ("#WATCHER trigger=stale timeout=1 max_cpu=1e999\n", 1, "max_cpu is too large", None),
    ],
)
def test_new_property_problems(text, line, fragment, hint):
    """Each mistake with a new property: one problem, its line, the watcher, a fix."""
    p = one_problem(text)
    assert fragment in p.message, str(p)
    assert p.line == line and p.watcher == "#WATCHER at line 1", str(p)
    if hint:
        assert p.hint and hint in p.hint, str(p)


def test_block_properties_that_do_not_belong_point_at_their_line():
    ps = problem_list(
        "#WATCHER_BEGIN\n# name: end\n# trigger: job_end\n# pattern: x\n# output_type: both\n"
        "#WATCHER_END\n"
    )
    assert [(p.line, p.watcher) for p in ps] == [(4, "end"), (5, "end")]


@pytest.mark.parametrize("written, template", [
    ("$1", "$1"), ("1", "$1"), ("host", "${host}"), ("${host}", "${host}"),
    ("$host:$FILE", "$host:$FILE"), ("lvl", "${lvl}"), ("$0", "$0"), ("MATCH", "${MATCH}"),
])
def test_track_by_template_forms(written, template):
    """Shared by both front ends: a bare capture name or group number becomes a reference."""
    assert track_by_template(written, ["host"], ["lvl"], 2) == template


@pytest.mark.parametrize("written", ["", " ", "a b", "$$", "nope", "$3", "${x}"])
def test_track_by_template_refusals(written):
    with pytest.raises(TrackByError) as ei:
        track_by_template(written, ["host"], [], 2)
    assert ei.value.hint


def test_toml_and_watcher_lines_give_equal_models_for_equal_intent(tmp_path):
    """The same watchers written both ways give equal triggers, throttles, limits, actions
    and (for probes and job watchers) sources."""
    from sidecar.config import load_config_text

    ws = {w.name: w for w in parse(
        r"""
        #WATCHER name=h pattern="host=(\S+) down" captures=[host] threshold=5/1m track_by=host suppress=10m rate_limit=none
        #WATCHER name=tb multiline=python_traceback max_lines=50 record_timeout=2s rate_limit=none
        #WATCHER name=s trigger=stale timeout=20m max_cpu=5 grace=30m rate_limit=none
        #WATCHER name=g probe="nvidia-smi -q" pattern="^(\d+)" captures=[util] condition="int(util) < 5" threshold=3/15m interval=5m probe_timeout=20s rate_limit=none
        #WATCHER name=e trigger=job_end condition="int(exit_code) != 0"
        #WATCHER name=t trigger=time_limit before=10m signal=SIGUSR2
        #WATCHER name=t0 trigger=time_limit before=10m signal=none
        #WATCHER name=m trigger=memory fraction=0.9 limit=8G interval=30s rate_limit=none
        """
    )}
    cfg = load_config_text(textwrap.dedent(r"""
        [[regex_actions]]
        name = "h"
        filepath_regex = 'x'
        line_regex = 'host=(\S+) down'
        captures = ["host"]
        threshold = "5/60s"
        track_by = "${host}"
        suppress = 600
        actions = [{type = "log_event"}]
        [[regex_actions]]
        name = "tb"
        filepath_regex = 'x'
        multiline = {preset = "python_traceback", max_lines = 50, timeout = 2}
        actions = [{type = "log_event"}]
        [[stale_file_actions]]
        name = "s"
        filepath_regex = 'x'
        timeout = 1200
        max_cpu = 5
        grace = 1800
        actions = [{type = "log"}]
        [[probe_actions]]
        name = "g"
        probe = "nvidia-smi -q"
        interval = 300
        probe_timeout = 20
        line_regex = '^(\d+)'
        captures = ["util"]
        condition = "int(util) < 5"
        threshold = {count = 3, per = 900}
        actions = [{type = "log_event"}]
        [[job_end_actions]]
        name = "e"
        condition = "int(exit_code) != 0"
        actions = [{type = "log_event"}]
        [[time_limit_actions]]
        name = "t"
        before = 600
        signal = "USR2"
        actions = [{type = "log_event"}]
        [[time_limit_actions]]
        name = "t0"
        before = 600
        signal = false
        actions = [{type = "log_event"}]
        [[memory_actions]]
        name = "m"
        fraction = 0.9
        limit = "8GiB"
        interval = 30
        actions = [{type = "log_event"}]
    """), "c.toml", check_dirs=False)
    ts = {w.name: w for w in cfg.watchers}
    assert set(ts) == set(ws)
    for name, w in ws.items():
        t = ts[name]
        assert t.trigger == w.trigger, name
        assert t.throttle == w.throttle, name
        assert (t.rate_limit, t.max_triggers, t.max_failures, t.timer_interval) == (
            w.rate_limit, w.max_triggers, w.max_failures, w.timer_interval), name
        assert t.actions == w.actions, name
        if name in ("g", "e", "t", "t0", "m"):
            assert t.source == w.source, name


_NEW_PIECES = st.sampled_from([
    "#WATCHER ", "#WATCHER_BEGIN\n", "#WATCHER_END\n", "\n", "# ", " ", "=", ":", '"',
    "trigger", "stale", "job_end", "time_limit", "memory", "probe", "line", "timeout",
    "require_alive", "max_cpu", "grace", "before", "signal", "fraction", "limit", "interval",
    "probe_timeout", "threshold", "track_by", "suppress", "multiline", "python_traceback",
    "end_pattern", "max_lines", "record_timeout", "pattern", "captures", "condition",
    "(\\d+)", "$1", "${x}", "x", "10m", "5/60", "USR1", "KILL", "none", "0.9", "90%", "8G",
    "4096", "-1", "0", "true", "exit_code", "int(exit_code) != 0", "[x]", "ls -l",
])


@settings(max_examples=1500, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.lists(_NEW_PIECES, max_size=30).map("".join))
def test_fuzz_new_properties_raise_only_config_error(text):
    """Whatever the new properties say, parse_watchers returns watchers or a ConfigError
    whose problems all have a message."""
    try:
        ws = parse_watchers(text, "f.sh", environ=JOB, proc_root=None)
    except ConfigError as exc:
        assert exc.problems and all(p.message for p in exc.problems)
        return
    for w in ws:
        assert isinstance(w, Watcher) and w.actions


def test_check_command_line_on_a_script_with_new_triggers(tmp_path, monkeypatch, capsys):
    """`sidecar check job.sh` describes the new triggers and exits 0; a property of the
    wrong trigger exits 2 with file:line [watcher]: message (fix)."""
    from sidecar.cli import main

    monkeypatch.chdir(tmp_path)
    for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SBATCH_OUTPUT", "SBATCH_ERROR"):
        monkeypatch.delenv(k, raising=False)
    good = tmp_path / "job.sh"
    good.write_text(
        "#!/bin/bash\n"
        "#WATCHER name=hang trigger=stale timeout=20m max_cpu=5\n"
        "#WATCHER name=tl trigger=time_limit before=10m\n"
        "#WATCHER name=mem trigger=memory fraction=0.9\n"
        '#WATCHER name=gpu probe="nvidia-smi" pattern="(\\d+)" threshold=5/60 track_by=1\n'
        "#WATCHER name=tb multiline=python_traceback\n"
    )
    assert main(["check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "stale after 1200s without a write, require alive, max cpu 5%" in out
    assert "time limit: 600s before the end, or on SIGUSR1" in out
    assert "memory >= 90% of limit (from SLURM/cgroup at run time), every 10s" in out
    assert "probe: nvidia-smi every 60s (time limit 30s)" in out
    assert "threshold 5/60s per $1" in out
    assert "multi-line: python_traceback (max 100 lines, 5s)" in out
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/bash\n#WATCHER name=e trigger=job_end pattern=x\n")
    assert main(["check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2 [e]: pattern is not a property of trigger=job_end watchers (" in err


def test_regex_future_warnings_are_not_printed(recwarn):
    """A pattern Python's re warns about ("Possible nested set") loads without a warning
    reaching the user (library code never prints)."""
    import uuid

    fresh = uuid.uuid4().hex  # re caches compiled patterns: a new one warns again
    w = one(f'#WATCHER pattern="[[{fresh}]x" end_pattern="[[{fresh}]y"\n')
    assert trig(w).pattern.startswith("[[")
    assert not [r for r in recwarn if issubclass(r.category, FutureWarning)]
