"""sidecar.substitute: $name substitution in parameters, and captures into commands safely."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.substitute import (
    SHELL_VAR_PREFIX,
    SubstitutionError,
    check_shell_template,
    references,
    substitute,
    substitute_shell,
    unknown_variables,
)

V = {"0": "epoch 3 loss 0.5", "1": "3", "2": "0.5", "10": "ten", "loss": "0.5", "epoch": "3",
     "JOB_ID": "123", "HOSTNAME": "node1", "SLURM_JOB_ID": "123"}


# ------------------------------------------------------------------ plain substitution
@pytest.mark.parametrize(
    "template, expected",
    [
        ("Loss is $loss at epoch $epoch", "Loss is 0.5 at epoch 3"),
        ("Loss is ${loss} at epoch ${epoch}", "Loss is 0.5 at epoch 3"),
        ("${loss}_x", "0.5_x"),
        ("$0 / $1 / $2", "epoch 3 loss 0.5 / 3 / 0.5"),
        ("$10", "ten"),
        ("${1}0", "30"),
        ("Job ${JOB_ID} on ${HOSTNAME}", "Job 123 on node1"),
        ("$SLURM_JOB_ID", "123"),
        ("cost: $$5", "cost: $5"),
        ("$$loss", "$loss"),
        ("$$$loss", "$0.5"),
        ("$", "$"),
        ("a $ b", "a $ b"),
        ("${loss:-0}", "${loss:-0}"),
        ("${", "${"),
        ("", ""),
    ],
)
def test_substitute(template, expected):
    """$name, ${name}, $N (longest number), $$ -> $; anything else is plain text."""
    assert substitute(template, V) == expected


def test_dollar_ten_is_group_ten_never_group_one_plus_zero():
    """ssync replaced "$1" inside "$10"; here $10 is group 10, and stays as written if absent."""
    assert substitute("$10", {"1": "A"}) == "$10"
    assert substitute("$10 $1", {"1": "A", "10": "B"}) == "B A"
    assert substitute("$12", {"1": "A", "12": "C"}) == "C"


def test_unknown_variables_stay_as_written_and_are_reported():
    """An unknown reference is kept verbatim; unknown_variables lists it (for sidecar check)."""
    assert substitute("a $nope ${nope2} $7 b", V) == "a $nope ${nope2} $7 b"
    assert unknown_variables("a $nope ${nope2} $7 $loss $$x", V) == ["nope", "nope2", "7"]
    assert references("$a ${b} $a $1 $$c") == ["a", "b", "1"]


def test_longest_name_wins():
    """$loss_value refers to loss_value (shell rule), not to loss followed by _value."""
    assert substitute("$loss_value", V) == "$loss_value"
    assert substitute("${loss}_value", V) == "0.5_value"


def test_values_are_not_substituted_again():
    """A value containing $name is inserted as it is (no second pass)."""
    assert substitute("$a", {"a": "$b", "b": "x"}) == "$b"


def test_none_values_become_empty():
    """A group that did not take part (None) substitutes as an empty string."""
    assert substitute("[$1]", {"1": None}) == "[]"


# ------------------------------------------------------------------ shell: rewriting rules
@pytest.mark.parametrize(
    "template, expected",
    [
        ("echo $loss", 'echo "${SIDECAR_VAR_loss}"'),
        ("echo ${loss}", 'echo "${SIDECAR_VAR_loss}"'),
        ('echo "loss=$loss!"', 'echo "loss=${SIDECAR_VAR_loss}!"'),
        ("echo '$loss'", "echo '$loss'"),
        ("echo \\$loss", "echo \\$loss"),
        ("echo $$ $? $# $@ $*", "echo $$ $? $# $@ $*"),
        ("echo $HOME", "echo $HOME"),
        ("echo $10 $1", 'echo "${SIDECAR_VAR_10}" "${SIDECAR_VAR_1}"'),
        ("echo $0", 'echo "${SIDECAR_VAR_0}"'),
        ("cp a b_$(date +%s)_$epoch", 'cp a b_$(date +%s)_"${SIDECAR_VAR_epoch}"'),
        ("echo $(echo $loss)", 'echo $(echo "${SIDECAR_VAR_loss}")'),
        ("echo `echo $loss`", 'echo `echo "${SIDECAR_VAR_loss}"`'),
        ("echo ${loss:-0} ${#loss}", "echo ${SIDECAR_VAR_loss:-0} ${#SIDECAR_VAR_loss}"),
        ("echo hi # $loss", "echo hi # $loss"),
        ("a=$loss#x", 'a="${SIDECAR_VAR_loss}"#x'),
        ("cat <<EOF\n$loss\nEOF\necho $loss", 'cat <<EOF\n${SIDECAR_VAR_loss}\nEOF\necho "${SIDECAR_VAR_loss}"'),
        ("cat <<'EOF'\n$loss\nEOF", "cat <<'EOF'\n$loss\nEOF"),
        ("cat <<-EOF\n\t$loss\n\tEOF", "cat <<-EOF\n\t${SIDECAR_VAR_loss}\n\tEOF"),
        ("echo $((epoch + 1)) $(( $epoch * 2 ))", "echo $((epoch + 1)) $(( ${SIDECAR_VAR_epoch} * 2 ))"),
        ("awk '{print $1}' f", "awk '{print $1}' f"),
        ("echo $MATCH >> matched.err", "echo $MATCH >> matched.err"),
    ],
)
def test_substitute_shell_rewrites_references_to_environment_variables(template, expected):
    """References become "${SIDECAR_VAR_x}" where the shell would expand them; values never
    enter the text; single quotes, quoted here-documents, comments, \\$ stay literal."""
    cmd, _env = substitute_shell(template, V)
    assert cmd == expected


def test_substitute_shell_returns_only_the_variables_used():
    """The environment part holds exactly the referenced variables, under their prefix."""
    _cmd, env = substitute_shell("echo $loss ${epoch} $loss", V)
    assert env == {SHELL_VAR_PREFIX + "loss": "0.5", SHELL_VAR_PREFIX + "epoch": "3"}


def test_haskell_style_match_is_rewritten_when_it_is_a_variable():
    """MATCH (the line, as the Haskell Sidecar sets it) keeps working, now as one argument."""
    cmd, env = substitute_shell("echo $MATCH >> matched.err", {"MATCH": "ERROR  x"})
    assert cmd == 'echo "${SIDECAR_VAR_MATCH}" >> matched.err'
    assert env == {"SIDECAR_VAR_MATCH": "ERROR  x"}


@pytest.mark.parametrize(
    "template",
    ["echo $(( $bad + 1 ))", "echo $((bad))", "(( bad > 1 ))", "echo ${x:$bad}", "echo ${x[$bad]}",
     "echo $(( $(echo $bad) ))", "echo $(( ${bad:-1} ))"],
)
def test_non_integer_values_never_reach_shell_arithmetic(template):
    """bash evaluates variable text in arithmetic (a[$(cmd)] runs cmd): refused unless the
    value is an integer."""
    bad = {"bad": "a[$(touch pwned)]", "x": "abc"}
    with pytest.raises(SubstitutionError, match="arithmetic"):
        substitute_shell(template, bad)
    good = {"bad": " 42 ", "x": "abc"}
    substitute_shell(template, good)  # integers are fine


def test_indirection_through_a_variable_is_refused():
    """${!name} would let the log choose a variable (and bash evaluates subscripts)."""
    with pytest.raises(SubstitutionError, match="indirection"):
        substitute_shell("echo ${!loss}", V)


def test_nul_in_values_is_replaced():
    """No environment can hold NUL: it becomes U+FFFD instead of failing the exec."""
    _cmd, env = substitute_shell("echo $a", {"a": "x\x00y"})
    assert env["SIDECAR_VAR_a"] == "x\ufffdy"


def test_check_shell_template_warns_about_literal_and_arithmetic_uses():
    """At load time: $var in single quotes (not replaced) and in arithmetic are warned about."""
    errors, warnings = check_shell_template(
        "curl -d '{\"gpu\": $gpu_id}' x; echo $((epoch+1)); echo \"open", ["gpu_id", "epoch"]
    )
    assert errors == []
    assert any("$gpu_id inside single quotes" in w for w in warnings)
    assert any("epoch is used in shell arithmetic" in w for w in warnings)
    assert any("unterminated double quote" in w for w in warnings)
    errors, _w = check_shell_template("echo ${!epoch}", ["epoch"])
    assert errors and "indirection" in errors[0]


def test_unterminated_constructs_do_not_raise():
    """Broken quoting is the shell's to report; the rewriter never raises for it."""
    for t in ["echo '", 'echo "$loss', "echo $(", "echo `", "echo ${", "echo $((", "cat <<EOF\nx"]:
        cmd, _env = substitute_shell(t, V)
        assert isinstance(cmd, str)


# ------------------------------------------------------------------ shell: for real
EVIL = [
    "; rm -rf ~",
    "$(touch PWNED)",
    "`touch PWNED`",
    "' ; touch PWNED ; '",
    '" ; touch PWNED ; "',
    "a\nb; touch PWNED",
    "*",
    "-n",
    "$HOME ${HOME} $((1+1))",
    "\\",
    "a  b\tc",
    "",
    "}; touch PWNED; {",
    "EOF\ntouch PWNED\nEOF",
]

SHELLS = [s for s in ("/bin/sh", shutil.which("bash"), shutil.which("dash")) if s]


def _run(shell, template, variables, cwd):
    cmd, env = substitute_shell(template, variables)
    full = dict(os.environ)
    full.update(env)
    res = subprocess.run([shell, "-c", cmd], env=full, cwd=cwd, capture_output=True,
                         timeout=10, check=False)
    return res


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("value", EVIL)
def test_captured_text_stays_one_literal_argument_in_a_real_shell(shell, value, tmp_path):
    """Whatever the log says, the command sees the exact text as one argument, in every
    quoting context, and nothing else runs."""
    variables = {"x": value, "1": value}
    templates = [
        "printf '%s|' $x",
        'printf \'%s|\' "$x"',
        "printf '%s|' \"pre-${x}-post\"",
        "printf '%s|' $1",
        "printf '%s|' \"`printf '%s' $x`\"",
        "printf '%s|' \"$(printf '%s' \"$x\")\"",
        "cat <<EOF\n$x|\nEOF",
    ]
    expected = [
        value + "|",
        value + "|",
        f"pre-{value}-post|",
        value + "|",
        None,  # command substitution strips trailing newlines: compared loosely below
        None,
        value + "|\n",
    ]
    for template, want in zip(templates, expected):
        res = _run(shell, template, variables, tmp_path)
        out = res.stdout.decode()
        if want is None:
            assert out == value.rstrip("\n") + "|", (template, out)
        else:
            assert out == want, (template, out)
    assert not (tmp_path / "PWNED").exists()
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.skipif(not shutil.which("bash"), reason="bash not installed")
def test_bash_arithmetic_injection_is_blocked(tmp_path):
    """The value that makes bash run a command inside $((...)) is refused before running."""
    with pytest.raises(SubstitutionError):
        _run("bash", "echo $(( $x + 1 ))", {"x": "a[$(touch PWNED)]"}, tmp_path)
    assert not (tmp_path / "PWNED").exists()
    res = _run("bash", "echo $(( $x + 1 ))", {"x": "41"}, tmp_path)
    assert res.stdout == b"42\n"


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(
        st.sampled_from(["$x", "${x}", "$1", "'", '"', "`", "$(", ")", "\\", " ", "echo", "#",
                         "\n", "<<", "EOF", "$((", "))", "${x:-", "}", "$$", "a", ";", "${#x}"]),
        max_size=14,
    ).map("".join),
    st.text(max_size=10),
)
def test_fuzz_values_never_appear_in_the_command(template, text):
    """The provable part of the design: the value only travels in the environment; the
    command is the template plus fixed text, whatever the template's quoting."""
    value = "\u2603" + text  # a marker no template contains
    try:
        cmd, env = substitute_shell(template, {"x": value, "1": value})
    except SubstitutionError as exc:
        assert "arithmetic" in str(exc)  # the only refusal this alphabet can provoke
        return
    assert "\u2603" not in cmd
    assert set(env) <= {SHELL_VAR_PREFIX + "x", SHELL_VAR_PREFIX + "1"}
    assert all(v == value.replace("\x00", "\ufffd") for v in env.values())
