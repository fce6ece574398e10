"""Bad input (docs/reliability.md, "Bad input"): fuzzing the TOML loader, the #WATCHER
parser and the condition evaluator (never a traceback, always a message), the known Python
sandbox escapes and resource bombs, log text that tries to become shell, and regexes that
backtrack catastrophically."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.conditions import ConditionError, compile_condition
from sidecar.config import load_config_text
from sidecar.model import ActionSpec, ConfigError, Problem, Watcher
from sidecar.script import parse_watchers
from tests.conftest import wait_until
from tests.torture.conftest import (
    REPO,
    SHM_DIR,
    Daemon,
    SyncEngine,
    daemons,  # noqa: F401 - fixture
    figure,
    figure_max,
    hyp,
    records,
    regex_watcher,
    scale,
)

SEED_TOML = [
    (Path(REPO) / "configs" / "haskell-example.toml").read_text(),
    (Path(REPO) / "configs" / "example.toml").read_text(),
    """\
queue_length = 10
max_concurrent = 2
action_timeout = 30
output_cap = 100
event_log = "ev.db"
backend = "poll"
poll_interval = 0.5
start_at = "end"
[notify]
email_to = "a@b.c"
urls = ["json://127.0.0.1:9/x"]
[[regex_actions]]
name = "loss"
directory = "."
filepath_regex = '\\.out$'
line_regex = 'loss: ([\\d.]+) epoch (?P<epoch>\\d+)'
captures = ["loss"]
condition = "float(loss) > 5 and int(epoch) % 2 == 0"
rate_limit = "5/min"
max_triggers = 3
timer_interval = 60
actions = [
  { type = "store_metric", name = "loss", value = "$loss" },
  { type = "notify_slack", message = "loss $loss", timeout = 10 },
  { type = "resubmit", modifications = { mem = "64G", time = "2:00:00" } },
]
[[stale_file_actions]]
filepath_regex = 'train\\.log$'
timeout = 600
cmd = "scancel $SLURM_JOB_ID"
[[file_event_actions]]
filepath_regex = '\\.ckpt$'
event_types = ["create", "close"]
recursive = true
command = "echo $FILE $KIND"
""",
]

SEED_SCRIPT = "\n".join(
    [
        "#!/bin/bash",
        "#SBATCH --job-name=x --output=logs/%x-%j.out --mem=16G",
        '#WATCHER pattern="CUDA out of memory" action=resubmit(modifications={"mem": "32G"})',
        '#WATCHER name=loss pattern="loss: ([\\d.]+)" captures=[loss] '
        'condition="float(loss) > 5" action=cancel_job rate_limit=10/min',
        "#WATCHER_BEGIN",
        "# name: metric",
        '# pattern: "epoch (\\d+) loss=([0-9.]+)"',
        "# captures: [epoch, loss]",
        "# actions:",
        '#   - store_metric(name="loss", value="$loss")',
        '#   - log_event(message="epoch $epoch")',
        "# max_triggers: 5",
        "#WATCHER_END",
        '#WATCHER pattern="Traceback" action=notify_email(to="a@b.c") output_type=both',
        "python train.py",
        "",
    ]
)

TOKENS = [
    "[[regex_actions]]", "[[stale_file_actions]]", "[[file_event_actions]]", "[notify]",
    "=", '"', "'", "'''", '"""', "[", "]", "{", "}", ",", "\n", "#", " ", "\t", "\\",
    "-1", "0", "1e999", "inf", "nan", "true", "99999999999999999999999", "1.5", "-0.0",
    "é", "\x00", "\\u0000", "\ufeff", "\r", "x" * 300,
    "timeout", "rate_limit", "condition", "line_regex", "filepath_regex", "captures",
    "directory", "actions", "type", "cmd", "command", "event_types", "name", "recursive",
    "max_triggers", "queue_length", "state_file", "event_log", "start_at", "backend",
    "(", ")", "(?P<a>x)(?P<a>y)", "a{99999}", "\\b", "(?<=a+)b", "*", "$1", "${loss}",
    "__import__('os')", "float(x) > ", "1/0", "9**9**9", '"10/0s"', '"5/fortnight"',
    "store_metric", "resubmit", "pause_watcher", "notify", "cancel_job", "run_command",
]


def _mutations(n_max: int) -> Any:
    op = st.one_of(
        st.tuples(st.just("del"), st.floats(0, 1), st.integers(1, 40)),
        st.tuples(st.just("ins"), st.floats(0, 1), st.sampled_from(TOKENS)),
        st.tuples(st.just("dup"), st.floats(0, 1), st.integers(1, 200)),
        st.tuples(st.just("swap"), st.floats(0, 1), st.floats(0, 1)),
        st.tuples(st.just("text"), st.floats(0, 1), st.text(max_size=12)),
    )
    return st.lists(op, min_size=1, max_size=n_max)


def mutate(text: str, ops: List[Tuple[Any, ...]]) -> str:
    for kind, where, arg in ops:
        i = int(where * len(text))
        if kind == "del":
            text = text[:i] + text[i + arg :]
        elif kind in ("ins", "text"):
            text = text[:i] + arg + text[i:]
        elif kind == "dup":
            text = text[:i] + text[i : i + arg] + text[i:]
        elif kind == "swap":
            j = int(arg * len(text))
            a, b = sorted((i, j))
            lines = text.splitlines(keepends=True)
            if len(lines) > 2:
                x, y = a % len(lines), b % len(lines)
                lines[x], lines[y] = lines[y], lines[x]
                text = "".join(lines)
    return text


TB = "Traceback (most recent call last)"


def _problems_ok(exc: ConfigError) -> None:
    assert exc.problems, "ConfigError without problems"
    for p in exc.problems:
        assert isinstance(p, Problem) and p.message.strip(), p
        assert TB not in str(p)


# --------------------------------------------------------------------------- TOML


@hyp(200, 6000)
@given(seed=st.sampled_from(range(len(SEED_TOML))), ops=_mutations(8))
def test_fuzz_toml_loader_never_raises_anything_but_config_error(seed: int, ops: Any) -> None:
    """Thousands of mutations of real configs (deletions, duplications, swapped lines,
    inserted TOML syntax, keys, extreme numbers, bad regexes and conditions): the loader
    returns a Config or raises ConfigError whose every problem has a message."""
    text = mutate(SEED_TOML[seed], ops)
    outcome = "ok"
    try:
        load_config_text(text, "fuzz.toml", check_dirs=False)
    except ConfigError as exc:
        _problems_ok(exc)
        outcome = "refused"
    figure("fuzz_toml", cases=1, **{outcome: 1})


def _cli_check(args: List[str], cwd: str) -> Tuple[int, str, str]:
    """``sidecar check ...`` in this process (main() as the console script calls it)."""
    from sidecar import cli

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli.main(args)
            except SystemExit as e:  # pragma: no cover - main() returns codes
                rc = int(e.code or 0)
    finally:
        os.chdir(old)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def check_dir() -> Any:
    d = tempfile.mkdtemp(prefix="sidecar-check-")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = os.path.join(d, "cache")  # the config cache goes here
    try:
        yield d
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = old
        shutil.rmtree(d, ignore_errors=True)


@hyp(60, 1500)
@given(seed=st.sampled_from(range(len(SEED_TOML))), ops=_mutations(6))
def test_fuzz_sidecar_check_on_toml_exit_0_or_2_with_a_message(
    check_dir: str, seed: int, ops: Any
) -> None:
    """``sidecar check`` on mutated configs: exit 0, or 2 with "error:" lines; never a
    traceback, never another exit code."""
    p = os.path.join(check_dir, "c.toml")
    with open(p, "w", encoding="utf-8", errors="surrogatepass") as fh:
        fh.write(mutate(SEED_TOML[seed], ops))
    rc, out, err = _cli_check(["check", p], check_dir)
    assert rc in (0, 2), (rc, err[-500:])
    assert TB not in out + err
    if rc == 2:
        assert "error:" in err or "problem" in out + err, (out[-300:], err[-300:])
    figure("fuzz_check_cli", cases=1, **{f"exit_{rc}": 1})


# --------------------------------------------------------------------------- #WATCHER


@hyp(200, 6000)
@given(
    ops=_mutations(4),
    extra=st.none() | st.lists(st.sampled_from(TOKENS), max_size=5),
)
def test_fuzz_watcher_parser_never_raises_anything_but_config_error(
    ops: Any, extra: Any
) -> None:
    """Mutations of a script with inline and block #WATCHER definitions: parse_watchers
    returns watchers (each with actions) or raises ConfigError with messages."""
    text = mutate(SEED_SCRIPT, ops)
    if extra is not None:
        text += "\n#WATCHER " + "".join(extra)
    outcome = "ok"
    try:
        ws = parse_watchers(text, "job.sh", environ={"SLURM_JOB_ID": "7"}, cwd="/", proc_root=None)
        for w in ws:
            assert isinstance(w, Watcher) and w.actions
            assert all(isinstance(a, ActionSpec) for a in w.actions)
    except ConfigError as exc:
        _problems_ok(exc)
        outcome = "refused"
    figure("fuzz_watcher", cases=1, **{outcome: 1})


@hyp(40, 1000)
@given(ops=_mutations(4))
def test_fuzz_sidecar_check_from_script(check_dir: str, ops: Any) -> None:
    """``sidecar check --from-script`` on mutated scripts: exit 0 or 2, never a traceback."""
    p = os.path.join(check_dir, "job.sh")
    with open(p, "w", encoding="utf-8", errors="surrogatepass") as fh:
        fh.write(mutate(SEED_SCRIPT, ops))
    rc, out, err = _cli_check(["check", "--from-script", p], check_dir)
    assert rc in (0, 2), (rc, err[-500:])
    assert TB not in out + err
    figure("fuzz_check_cli", cases=1, **{f"exit_{rc}": 1})


def test_bad_configs_through_the_real_command_line(tmp_path: Path) -> None:
    """As a process (`sidecar CONFIG`, `sidecar check`, `--from-script`): a broken config or
    script exits 2 with messages naming the file, and no traceback."""
    import random

    rnd = random.Random(int.from_bytes(os.urandom(4), "little"))
    cases = scale(4, 30)
    env = dict(os.environ, PYTHONPATH=REPO, XDG_CACHE_HOME=str(tmp_path / "cache"))
    bad = 0
    for k in range(cases):
        script = k % 2 == 1
        text, broken = "", False
        for _ in range(50):  # find a mutation that breaks it
            ops: List[Tuple[Any, ...]] = []
            for _ in range(3):
                if rnd.random() < 0.5:
                    ops.append(("del", rnd.random(), rnd.randint(1, 30)))
                else:
                    ops.append(("ins", rnd.random(), rnd.choice(TOKENS)))
            text = mutate(SEED_SCRIPT if script else SEED_TOML[k % 3], ops)
            try:
                if script:
                    parse_watchers(text, "j.sh", environ={}, cwd=str(tmp_path), proc_root=None)
                else:
                    load_config_text(text, "c.toml", base_dir=str(tmp_path))
            except ConfigError:
                broken = True
                break
        name = "j.sh" if script else "c.toml"
        (tmp_path / name).write_text(text, errors="surrogatepass")
        if script:
            args = ["check", "--from-script", name]
        elif k % 4 == 0 and broken:  # `sidecar CONFIG` (run): only a broken one, it must exit
            args = [name, "--no-follow"]
        else:
            args = ["check", name]
        r = subprocess.run(
            [sys.executable, "-m", "sidecar.cli", *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )
        assert TB not in r.stderr + r.stdout, r.stderr
        assert r.returncode in (0, 2), (r.returncode, r.stderr[-500:])
        if r.returncode == 2:
            bad += 1
            assert name in r.stderr and "error:" in r.stderr
    figure("fuzz_cli_processes", cases=cases, refused_with_message=bad)


# --------------------------------------------------------------------------- conditions

_NAMES = st.sampled_from(["x", "y", "loss", "epoch", "_", "__class__", "len", "float"])
_LIT = st.one_of(
    st.integers(-1000, 1000).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
    st.sampled_from(["'a'", "''", "'é'", "None", "True", "False", "1e308", "0x10", "1_0"]),
)
_FUN = st.sampled_from(["float", "int", "str", "len", "abs", "min", "max", "round", "bool",
                        "getattr", "eval", "type", "__import__", "open"])
_BIN = st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "<", ">", "==", "!=", "<=", ">=",
                        " and ", " or ", " in ", " not in ", " is ", "&", "|", "<<", "@"])


_OK_FUN = st.sampled_from(["float", "int", "str", "len", "abs", "min", "max", "round", "bool"])
_OK_BIN = st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "<", ">", "==", "!=", "<=",
                           ">=", " and ", " or ", " in ", " not in ", " is "])
_OK_NAMES = st.sampled_from(["x", "y", "loss", "epoch", "_"])


def _expr(allowed_only: bool) -> Any:
    names, fun, binop = (_OK_NAMES, _OK_FUN, _OK_BIN) if allowed_only else (_NAMES, _FUN, _BIN)

    def grow(e: Any) -> Any:
        forms = [
            st.tuples(e, binop, e).map(lambda t: f"({t[0]}{t[1]}{t[2]})"),
            st.tuples(fun, st.lists(e, max_size=3)).map(lambda t: f"{t[0]}({', '.join(t[1])})"),
            e.map(lambda a: f"not {a}"),
            e.map(lambda a: f"-{a}"),
            st.tuples(e, e, e).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
            st.lists(e, max_size=3).map(lambda xs: "(" + ", ".join(xs) + ",)"),
        ]
        if not allowed_only:
            forms += [
                e.map(lambda a: f"{a}.__class__"),
                e.map(lambda a: f"{a}[0]"),
                e.map(lambda a: f"[z for z in {a}]"),
                e.map(lambda a: f"(lambda: {a})()"),
                e.map(lambda a: f"f'{{{a}}}'"),
            ]
        return st.one_of(*forms)

    return st.recursive(st.one_of(names, _LIT), grow, max_leaves=12)


_VALUE = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["5", "-0", "1e308", "1e-400", "nan", "inf", "-inf", " 7 ", "0x1f", "1_000",
                     "٣", "9" * 5000, "1" * 4300, "", "NaN", "True", "None", "3.5"]),
)


@hyp(500, 5000)
@given(expr=_expr(True) | _expr(True) | _expr(True) | _expr(False), x=_VALUE, y=_VALUE)
def test_fuzz_conditions_only_value_error_or_condition_error(expr: str, x: str, y: str) -> None:
    """Random expressions built from allowed and forbidden constructs, with random captured
    values: compiling raises only ValueError (with a message), evaluating returns a bool or
    raises only ConditionError (with a message), each in bounded time."""
    t0 = time.perf_counter()
    try:
        c = compile_condition(expr)
    except ValueError as exc:
        assert str(exc)
        figure("fuzz_condition", cases=1, refused_at_load=1)
        figure_max("fuzz_condition", slowest_s=time.perf_counter() - t0)
        return
    variables = {"x": x, "y": y, "loss": x, "epoch": y, "_": x}
    try:
        r = c.evaluate(variables)
        assert isinstance(r, bool)
        outcome = "evaluated"
    except ConditionError as exc:
        assert str(exc)
        outcome = "condition_error"
    took = time.perf_counter() - t0
    figure("fuzz_condition", cases=1, **{outcome: 1})
    figure_max("fuzz_condition", slowest_s=took)
    assert took < 1.0, (expr, took)


SANDBOX_ESCAPES = [
    # attribute walks to the object graph
    "().__class__.__bases__[0].__subclasses__()",
    "''.__class__.__mro__[-1].__subclasses__()",
    "x.__class__",
    "(1).__class__.__base__",
    "[].__class__.__base__.__subclasses__()",
    "x.__init__.__globals__",
    "max.__self__",
    "str.mro()",
    "(x for x in ()).gi_frame.f_globals",
    "str(x).format",
    "'{0.__class__}'.format(x)",
    "x.__reduce_ex__(2)",
    "type(x).__subclasses__(type(x))",
    "vars(x)",
    "dir()",
    "globals()['__builtins__']",
    "locals()",
    "__builtins__.__import__('os')",
    "__import__('os').system('id')",
    "__loader__",
    "__spec__",
    "getattr(x, '__cla' + 'ss__')",
    "setattr(x, 'a', 1)",
    "delattr(x, 'a')",
    "eval('1')",
    "exec('import os')",
    "compile('1', '', 'eval')",
    "open('/etc/passwd').read()",
    "breakpoint()",
    "help()",
    "input()",
    "print(x)",
    "memoryview(b'a')",
    "object()",
    "super()",
    "type('A', (), {})",
    "classmethod(len)",
    # unicode look-alikes that Python's parser normalises (NFKC)
    "ｅｖａｌ('1')",
    "__ｉｍｐｏｒｔ__('os')",
    "x.__ｃｌａｓｓ__",
    # lambdas, comprehensions, generators, walrus, star, f-strings
    "lambda: 1",
    "(lambda x=__import__('os'): x)()",
    "[c for c in ().__class__.__bases__]",
    "{c: 1 for c in x}",
    "{c for c in x}",
    "(c for c in x)",
    "[*x]",
    "max(*x)",
    "min(**x)",
    "(y := x)",
    "f'{x.__class__}'",
    "f'{x!r:>{10**9}}'",
    # subscripts and slices
    "x[0]",
    "x[::-1]",
    "x[1:10**9]",
    # statements and other syntax
    "import os",
    "x = 1",
    "del x",
    "assert x",
    "await x",
    "yield x",
    "b'bytes'",
    "1j",
    "...",
    "x @ y",
    "~x",
    "x << 1",
    "x | y",
    "x ^ y",
    "x & y",
    "{}",
    "{1}",
    # huge exponents, numbers and sequences built from constants
    "9**9**9",
    "10**10**10",
    "2**100000",
    "(-2)**(2**20)",
    "'a' * 10**9",
    "'a' * 2**22",
    "(1,) * 10**8",
    "1e308 * 1e308 > 0 and 10**5000 > 0",
    "int('9' * 5000) > 0",
    # deep nesting and size
    "(" * 300 + "x" + ")" * 300,
    "-" * 1000 + "x",
    "not " * 200 + "x",
    "[" * 200 + "]" * 200,
    "x if " * 100 + "x" + " else x" * 100,
    "+".join(["x"] * 300),
    "x" * 600,
    "\x00",
    "",
]


@pytest.mark.parametrize("expr", SANDBOX_ESCAPES)
def test_known_sandbox_escapes_are_refused_at_load(expr: str) -> None:
    """Each known escape or bomb is refused when the config is loaded, with a message."""
    with pytest.raises(ValueError) as ei:
        compile_condition(expr)
    assert str(ei.value)
    figure("sandbox_escapes", refused=1)


# bombs the compile-time checks cannot see: they are run in a child process with a time
# and memory limit; a refusal (ValueError at load, ConditionError at evaluation) within the
# limits passes, a hang or a blow-up fails
BOMBS = [
    ("round(5, -int(y))", {"y": "1000000000"}, None),
    ("round(int(x), -int(y)) > 0", {"x": "5", "y": "1000000000"}, None),
    ("round(5, -10**9) > 0", {}, None),
    ("max(((x,) * 2000000,) * 2000000) == x", {"x": "a"}, None),
    ("max(((1,) * 2000000,) * 2000000) == 1", {}, None),
    ("len(str((x,) * 2000000)) > 0", {"x": "a" * 1000}, None),
    ("str(('a' * 2000000,) * 2000000) == x", {"x": "a"}, None),
    ("(x,) * 2000000 == (y,) * 2000000", {"x": "a", "y": "a"}, "fine"),
    ("int(x) ** 100 > 0", {"x": "9" * 1200}, "fine"),
    ("x * int(y) == x", {"x": "ab", "y": "1000000000"}, "fine"),
    ("float(x) ** 100 > 0", {"x": "1e308"}, "fine"),
    ("int(x) > 0", {"x": "9" * 100000}, "fine"),
]

_BOMB_CHILD = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from sidecar.conditions import ConditionError, compile_condition
expr, variables = json.loads(sys.argv[1])
t0 = time.perf_counter()
try:
    c = compile_condition(expr)
except ValueError as e:
    out = ("refused at load", str(e))
else:
    try:
        out = ("evaluated", repr(c.evaluate(variables)))
    except ConditionError as e:
        out = ("condition error", str(e))
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps([out[0], out[1][:200], time.perf_counter() - t0, rss]))
"""


@pytest.fixture(scope="module")
def bomb_results() -> Dict[int, Tuple[str, str, float, float]]:
    """Run every bomb at once, each in a child limited to 2 s and 1 GiB."""
    env = dict(os.environ, PYTHONPATH=REPO)
    out: Dict[int, Tuple[str, str, float, float]] = {}

    def run(which: List[int]) -> None:
        procs = {
            i: subprocess.Popen(
                [sys.executable, "-c", _BOMB_CHILD, json.dumps([BOMBS[i][0], BOMBS[i][1]])],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for i in which
        }
        deadline = time.monotonic() + 2.0
        for i, p in procs.items():
            try:
                so, se = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
                if p.returncode == 0:
                    a, b, t, rss = json.loads(so)
                    out[i] = (a, b, t, rss)
                else:
                    out[i] = ("crashed", se[-300:], 0.0, 0.0)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
                out[i] = ("hang", "still running after 2 s", 2.0, 0.0)

    # the harmless ones first, so that the spinning bombs do not starve them of CPU
    run([i for i, b in enumerate(BOMBS) if b[2] == "fine"])
    run([i for i, b in enumerate(BOMBS) if b[2] != "fine"])
    return out


@pytest.mark.parametrize(
    "i",
    [
        pytest.param(
            i,
            id=BOMBS[i][0][:40],
            marks=[],
        )
        for i in range(len(BOMBS))
    ],
)
def test_resource_bombs_are_refused_quickly(
    i: int, bomb_results: Dict[int, Tuple[str, str, float, float]]
) -> None:
    """A condition that would take minutes or gigabytes is refused (at load or at
    evaluation) within 2 s (start-up included) and 1 GiB; harmless big-looking ones just
    work."""
    expr, variables, kind = BOMBS[i]
    outcome, detail, took, _rss = bomb_results[i]
    figure("condition_bombs", cases=1, **{outcome.replace(" ", "_"): 1})
    assert outcome in ("refused at load", "condition error", "evaluated"), (outcome, detail)
    if kind is None:
        assert outcome != "evaluated", detail
    assert took < 1.5


# --------------------------------------------------------------------------- shell injection

INJECT = [
    "; touch PWNED1", "$(touch PWNED2)", "`touch PWNED3`", "| touch PWNED4", "&& touch PWNED5",
    "' ; touch PWNED6 ; '", '" ; touch PWNED7 ; "', "$((1+1))", "${IFS}", "\\", "'", '"', "*",
    "~", "!", "$HOME", "${HOME}", "\x0b", "\x0c", "\x85", "\u2028", "\t", " ", "é",
    "\udcff", "-n", "--", "%s%n", "EOF", "$1", "$$", "a\\nb", ">x", "<x", "2>&1", "#",
]


def _cmds() -> List[Tuple[str, str]]:
    """(command template, what its output file must hold for a captured value v)."""
    return [
        ("printf '%s\\n' \"$1\" >> o1.txt", "v"),
        ("printf '%s\\n' $m >> o2.txt", "v"),
        ("printf '%s\\n' \"${m}\" >> o3.txt", "v"),
        ("printf '%s\\n' \"$MATCH\" >> o4.txt", "line"),
        ("cat >> o5.txt <<EOF\nv=$m\nEOF", "v=v"),
        ("printf '%s\\n' '$m' >> o6.txt", "$m"),
        ("sh -c 'printf \"%s\\n\" \"$1\"' sh \"$m\" >> o7.txt", "v"),
        ("[ \"$m\" = \"$1\" ] && echo same >> o8.txt", "same"),
    ]


@hyp(20, 400)
@given(parts=st.lists(st.sampled_from(INJECT) | st.text(max_size=4), min_size=1, max_size=6))
def test_captured_text_never_executes_as_shell(parts: List[str]) -> None:
    """Log lines whose captured text holds ; $( ) backticks quotes, $VARS, heredoc
    delimiters, odd whitespace and bytes reach commands as data, whatever the way the
    command refers to them (quoted, unquoted, ${..}, heredoc, single quotes, nested sh):
    nothing is executed, the text arrives verbatim."""
    value = "".join(parts)
    # a line ends at \r and \n (never part of a capture); NUL: test_a_line_with_a_nul_byte...
    value = re.sub(r"[\r\n\x00]", "_", value)
    root = Path(tempfile.mkdtemp(prefix="sidecar-inj-", dir=SHM_DIR))
    try:
        cmds = _cmds()
        watchers = [
            regex_watcher(f"c{k}", r"^msg: (.*)$", [ActionSpec("run_command", {"command": c})],
                          captures=("m",))
            for k, (c, _) in enumerate(cmds)
        ]
        se = SyncEngine(root, watchers, "inotify")
        raw = ("msg: " + value).encode("utf-8", "surrogateescape") + b"\n"
        try:
            (se.dir / "x.log").write_bytes(raw)
            se.pump()
            se.settle()
        finally:
            se.stop()
        line = raw[:-1].decode("utf-8", "replace")
        v = line[len("msg: "):]
        pwned = sorted(p.name for p in root.rglob("PWNED*"))
        assert not pwned, f"executed: {pwned} for {value!r}"
        acts = [r for r in records(se.log) if r["kind"] == "action"]
        assert len(acts) == len(cmds)
        for k, (_, want) in enumerate(cmds):
            out = root / f"o{k + 1}.txt"
            exp = {"v": v, "line": line, "v=v": "v=" + v}.get(want, want)
            got = out.read_bytes().decode("utf-8", "surrogateescape") if out.exists() else None
            assert got == exp + "\n", (k, cmds[k][0], value, got, acts[k].get("message"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figure("shell_injection", cases=1, commands_run=len(cmds), executed=0)


def test_a_line_with_a_nul_byte_still_runs_its_actions(tmp_path: Path) -> None:
    """A log line with a NUL byte in it (binary garbage in the output) still runs the
    watcher's command."""
    w = regex_watcher("e", r"ERROR (.*)", [ActionSpec("run_command", {"command": "echo ok"})])
    se = SyncEngine(tmp_path, [w], "inotify")
    try:
        (se.dir / "a.log").write_bytes(b"ERROR with \x00 inside\n")
        se.pump()
        se.settle()
    finally:
        se.stop()
    (a,) = [r for r in records(se.log) if r["kind"] == "action"]
    assert a["ok"] is True, a


def test_file_names_never_execute_as_shell(tmp_path: Path) -> None:
    """A file event on a file whose name holds shell syntax and a newline: $FILE reaches
    the command as data."""
    from sidecar.model import FileEventTrigger, Source

    names = ["a;touch PWNED1;b.out", "$(touch PWNED2).out", "`touch PWNED3`.out",
             "x\ntouch PWNED4\n.out", "q'\"$HOME\".out"]
    w = Watcher(
        name="ev",
        source=Source(directory="w", filepath_regex=r"\.out$"),
        trigger=FileEventTrigger(frozenset({"create"})),
        actions=(ActionSpec("run_command", {"command": 'printf "%s\\0" "$FILE" >> files.bin; '
                                            "echo $FILE > /dev/null"}),),
    )
    se = SyncEngine(tmp_path, [w], "inotify")
    try:
        for n in names:
            (se.dir / n).write_text("x")
        se.pump()
        se.settle()
    finally:
        se.stop()
    assert not list(tmp_path.rglob("PWNED*"))
    got = (tmp_path / "files.bin").read_bytes().split(b"\0")[:-1]
    assert sorted(got) == sorted(str(se.dir / n).encode() for n in names)
    figure("shell_injection", cases=len(names), executed=0)


# --------------------------------------------------------------------------- regexes

# Python patterns that backtrack exponentially, with a line that triggers it
EVIL_RE2 = [
    (r"(a+)+$", "a" * 5000 + "!"),
    (r"(a|aa)+$", "a" * 5000 + "!"),
    (r"(.*a){20}", "a" * 5000),
    (r"^(\w+\s?)+$", "word " * 2000 + "!"),
    (r"(x+x+)+y", "x" * 5000),
    (r"^(([a-z])+.)+[A-Z]([a-z])+$", "a" * 5000),
    (r"(\d+|\d+\.\d+)*x", "1" * 5000),
]


@pytest.mark.parametrize("pattern,line", EVIL_RE2, ids=[p for p, _ in EVIL_RE2])
def test_catastrophic_patterns_run_in_linear_time(pattern: str, line: str) -> None:
    """Patterns that make Python's re backtrack exponentially run on RE2 in linear time:
    `sidecar check` says re2, and a megabyte of adversarial lines is scanned in at most a
    few seconds."""
    from sidecar.matcher import MultiMatcher, compile_check
    from sidecar.model import RegexTrigger
    from sidecar.types import Chunk

    t = RegexTrigger(pattern)
    engine, _msg = compile_check(t)
    assert engine == "re2"
    data = (line + "\n").encode() * (scale(1, 4) * (1 << 20) // (len(line) + 1))
    m = MultiMatcher([(0, t)])
    t0 = time.perf_counter()
    m.scan(Chunk("f", data, 0, 1))
    took = time.perf_counter() - t0
    figure("regex_linear", cases=1, bytes_scanned=len(data))
    figure_max("regex_linear", slowest_s_per_mb=took / (len(data) / 2**20))
    # linear: about 1 s/MB for the worst (RE2 leaves its DFA for (.*a){20}); exponential
    # backtracking would not finish one line of 5000 characters
    assert took < 3.0 * scale(1, 4), took


FALLBACK_EVIL = [
    (r"^(a|a)*\1$", "a" * 40 + "!"),
    (r"(a*)*b", "a" * 40 + "!b"),
    (r"(a|a?)+$", "a" * 40 + "!"),
    (r"(?<=x)(a+)+b", "x" + "a" * 40 + "! ab"),
    (r"^(a+)+(?=b)", "a" * 40 + "!b"),
]
#: a line each pattern matches at once
FALLBACK_GOOD = {
    r"^(a|a)*\1$": "aa",
    r"(a*)*b": "ab",
    r"(a|a?)+$": "a",
    r"(?<=x)(a+)+b": "xab",
    r"^(a+)+(?=b)": "ab",
}


@pytest.mark.parametrize("pattern,line", FALLBACK_EVIL, ids=[p for p, _ in FALLBACK_EVIL])
def test_catastrophic_fallback_patterns_are_flagged_by_check(
    tmp_path: Path, pattern: str, line: str
) -> None:
    """Patterns RE2 cannot run (backreferences, lookaround) fall back to Python re;
    `sidecar check` says so and warns of catastrophic backtracking."""
    (tmp_path / "c.toml").write_text(
        "[[regex_actions]]\nname = \"evil\"\nfilepath_regex = 'x'\n"
        f"line_regex = '{pattern}'\ncmd = \"true\"\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO, XDG_CACHE_HOME=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "sidecar.cli", "check", "c.toml"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "catastrophic backtracking" in r.stdout and "engine:  re " in r.stdout, r.stdout
    figure("regex_fallback_warned", cases=1)


@pytest.mark.parametrize("pattern,line", FALLBACK_EVIL, ids=[p for p, _ in FALLBACK_EVIL])
def test_a_backtracking_line_does_not_stall_the_daemon(
    tmp_path: Path, daemons: List[Daemon], pattern: str, line: str  # noqa: F811
) -> None:
    """With a backtracking fallback pattern on one file, an adversarial line there must not
    stop another watcher on another file from acting within 2 s; the search gives up after
    regex_time_limit of CPU, and the event log says so (a warning naming watcher, file and
    line number); the evil watcher still matches its next, harmless line."""
    (tmp_path / "w").mkdir()
    (tmp_path / "c.toml").write_text(
        "[[regex_actions]]\nname = \"evil\"\ndirectory = \"w\"\nfilepath_regex = '^evil'\n"
        f"line_regex = '{pattern}'\ncmd = \"true\"\n"
        "[[regex_actions]]\nname = \"other\"\ndirectory = \"w\"\nfilepath_regex = '^other'\n"
        "line_regex = 'GO'\ncmd = \"echo go >> go.txt\"\n"
    )
    d = Daemon(tmp_path, ["c.toml"], ready=lambda: (tmp_path / ".sidecar").is_dir())
    daemons.append(d)
    (tmp_path / "w" / "evil.log").write_text(line + "\n")
    time.sleep(0.2)
    t0 = time.monotonic()
    (tmp_path / "w" / "other.log").write_text("GO\n")
    try:
        wait_until(lambda: (tmp_path / "go.txt").exists(), timeout=2)
        took = time.monotonic() - t0
        with open(tmp_path / "w" / "evil.log", "a") as fh:
            fh.write(FALLBACK_GOOD[pattern] + "\n")
        log = tmp_path / "sidecar-events.jsonl"
        wait_until(lambda: any(r.get("watcher") == "evil" and r["kind"] == "match"
                               for r in records(log)), timeout=5)
    finally:
        d.kill()
    recs = records(log)
    warns = [r for r in recs if r.get("reason") == "regex_time_limit"]
    assert [(w["kind"], w["watcher"], w["lineno"]) for w in warns] == [("warning", "evil", 1)]
    assert warns[0]["file"] == str(tmp_path / "w" / "evil.log")
    assert "regex_time_limit" in warns[0]["message"]
    ev = [r["lineno"] for r in recs if r["kind"] == "match" and r["watcher"] == "evil"]
    assert ev == [2]
    figure("regex_time_limit", cases=1, other_acted_after_s=round(took, 3))



def test_a_backtracking_multiline_end_regex_gives_up_and_says_so(
    tmp_path: Path, daemons: List[Daemon]  # noqa: F811
) -> None:
    """A multi-line record's end regex (always Python re) is limited the same way: the line
    it gave up on does not end the record, a warning names watcher, file and line, and the
    next line that ends it quickly does."""
    (tmp_path / "c.toml").write_text(
        "[[regex_actions]]\nname = \"blk\"\nfilepath_regex = '^job'\nline_regex = '^BEGIN'\n"
        "multiline = { end = '^(a+)+$', max_lines = 10 }\ncmd = \"true\"\n"
    )
    d = Daemon(tmp_path, ["c.toml"], ready=lambda: (tmp_path / ".sidecar").is_dir())
    daemons.append(d)
    (tmp_path / "job.log").write_text("BEGIN\n" + "a" * 40 + "!\naa\n")
    log = tmp_path / "sidecar-events.jsonl"
    try:
        wait_until(lambda: any(r["kind"] == "match" for r in records(log)), timeout=5)
    finally:
        d.kill()
    recs = records(log)
    (w,) = [r for r in recs if r.get("reason") == "regex_time_limit"]
    assert (w["watcher"], w["lineno"], w["file"]) == ("blk", 2, str(tmp_path / "job.log"))
    assert "multiline end" in w["message"]
    (m,) = [r for r in recs if r["kind"] == "match"]
    assert m["extra"]["record"] == {"lines": 3, "last_lineno": 3, "reason": "end"}
