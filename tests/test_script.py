"""sidecar.script: #WATCHER lines and blocks of a batch script -> watchers."""

from __future__ import annotations

import json
import os
import textwrap
import time
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


def test_parse_speed():
    """Parsing the seed's complete script takes well under 20 ms."""
    text = (FIXTURES / "s002_complete_script.sh").read_text()
    parse_watchers(text, "s.sh", environ=JOB, proc_root=None)
    t0 = time.perf_counter()
    for _ in range(20):
        parse_watchers(text, "s.sh", environ=JOB, proc_root=None)
    assert (time.perf_counter() - t0) / 20 < 0.02


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
