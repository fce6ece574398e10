"""sidecar.matcher: MultiMatcher.scan must equal, line by line, ``re.search`` on each decoded
line (the reference below), however the chunk is cut, terminated or encoded."""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Hashable, List, Optional, Sequence, Set, Tuple

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sidecar import matcher as M
from sidecar.matcher import MultiMatcher, PatternError, compile_check, match_line
from sidecar.model import RegexTrigger
from sidecar.types import Chunk, LineMatch

Rules = Sequence[Tuple[Hashable, RegexTrigger]]


def T(pattern: str, captures: Sequence[str] = (), ignore_case: bool = False) -> RegexTrigger:
    return RegexTrigger(pattern=pattern, captures=tuple(captures), ignore_case=ignore_case)


def ref_lines(data: bytes) -> List[str]:
    """Lines as the spec defines them, found without any bytes.replace trick."""
    out: List[str] = []
    start = 0
    i = 0
    n = len(data)
    while i < n:
        b = data[i]
        if b == 0x0A or b == 0x0D:
            out.append(data[start:i].decode("utf-8", "replace"))
            if b == 0x0D and i + 1 < n and data[i + 1] == 0x0A:
                i += 1
            start = i + 1
        i += 1
    if start < n:
        out.append(data[start:].decode("utf-8", "replace"))
    return out


def reference(rules: Rules, data: bytes, lineno: int = 1, path: str = "/p") -> List[Any]:
    out = []
    for i, line in enumerate(ref_lines(data)):
        for key, t in rules:
            m = re.search(t.pattern, line, re.IGNORECASE if t.ignore_case else 0)
            if m is None:
                continue
            groups = m.groups()
            named: Dict[str, Optional[str]] = dict(m.groupdict())
            for j, name in enumerate(t.captures):
                named[name] = groups[j] if j < len(groups) else None
            out.append((key, LineMatch(path, lineno + i, line, m.group(), groups, named)))
    return out


def scan(rules: Rules, data: bytes, lineno: int = 1, **kw: Any) -> List[Any]:
    return MultiMatcher(rules).scan(Chunk("/p", data, 0, lineno, **kw))


def check(rules: Rules, data: bytes, lineno: int = 1) -> List[Any]:
    got = scan(rules, data, lineno)
    assert got == reference(rules, data, lineno)
    return got


# ----------------------------------------------------------------------------- semantics


def test_groups_named_captures_and_text() -> None:
    """$0 is the match, groups are positional, captures name them in order."""
    r = [("w", T(r"epoch (\d+).*loss: ([\d.]+)", captures=["epoch", "loss"]))]
    got = check(r, b"INFO epoch 3 step 9 loss: 0.25 done\n")
    assert got == [
        (
            "w",
            LineMatch(
                "/p",
                1,
                "INFO epoch 3 step 9 loss: 0.25 done",
                "epoch 3 step 9 loss: 0.25",
                ("3", "0.25"),
                {"epoch": "3", "loss": "0.25"},
            ),
        )
    ]


def test_named_groups_merge_with_captures_and_unmatched_group_is_none() -> None:
    """(?P<x>) names join captures; a group that did not take part is None."""
    r = [("w", T(r"(?P<step>\d+) (a)?(b)", captures=["s", "maybe_a"]))]
    got = check(r, b"x 42 b\n")
    m = got[0][1]
    assert m.groups == ("42", None, "b")
    assert m.named == {"step": "42", "s": "42", "maybe_a": None}


def test_captures_longer_than_groups_give_none() -> None:
    got = check([("w", T(r"loss: (\d+)", captures=["loss", "extra"]))], b"loss: 7\n")
    assert got[0][1].named == {"loss": "7", "extra": None}


def test_ignore_case_flag_and_inline() -> None:
    rules = [("flag", T("killed", ignore_case=True)), ("inline", T("(?i)out of MEMORY"))]
    got = check(rules, b"Process KILLED\nCUDA Out Of Memory\nkilled\n")
    assert [(k, m.lineno) for k, m in got] == [("flag", 1), ("inline", 2), ("flag", 3)]


def test_first_match_only_once_per_line() -> None:
    """A rule matches a line once: its first (leftmost) match."""
    got = check([("l", T(r"loss: (\d+)"))], b"loss: 1 loss: 2\nloss: 3\n")
    assert [(m.lineno, m.groups) for _k, m in got] == [(1, ("1",)), (2, ("3",))]


def test_line_numbers_count_lf_crlf_and_lone_cr() -> None:
    """\\n, \\r\\n and a lone \\r each end one line; numbering starts at chunk.lineno."""
    data = b"a0\r\nb1\rc2\n\nd4\r\re6\n"
    got = check([("x", T(r"^[a-e]\d$"))], data, lineno=10)
    assert [(m.lineno, m.line) for _k, m in got] == [
        (10, "a0"),
        (11, "b1"),
        (12, "c2"),
        (14, "d4"),
        (16, "e6"),
    ]


def test_several_rules_on_one_line_come_in_rule_order() -> None:
    rules = [("second", T("b+")), ("first", T("a")), ("third", T("c"))]
    got = check(rules, b"c a bb\nxx\nbc\n")
    assert [(k, m.lineno) for k, m in got] == [
        ("second", 1),
        ("first", 1),
        ("third", 1),
        ("second", 3),
        ("third", 3),
    ]


def test_invalid_utf8_never_raises_and_is_replaced() -> None:
    """Invalid bytes become U+FFFD, and match like Python on the decoded line."""
    rules = [("dot", T("a.b")), ("err", T("ERROR.*")), ("w", T(r"x\W+y"))]
    data = b"a\xffb\nERROR \xe2\x96 tail\nx\xc3y\n\xff\xfe\xfd\n"
    got = check(rules, data)
    assert got[0][1].text == "a\ufffdb"
    assert got[1][1].text == "ERROR \ufffd tail"
    assert [k for k, _m in got] == ["dot", "err", "w"]


def test_unicode_classes_match_like_python() -> None:
    """\\d, \\w, \\s and \\b are Unicode, as in Python re on str."""
    rules = [
        ("d", T(r"n=(\d+)")),
        ("w", T(r"(\w+)!")),
        ("s", T(r"a\sb")),
        ("b", T(r"\bfoo\b")),
        ("W", T(r"x[^\W\d]y")),
    ]
    data = "n=٣4\ncafé!\na\u00a0b\nfooé foo\nfooé\nxéy x1y\n".encode()
    got = check(rules, data)
    assert [(k, m.text) for k, m in got] == [
        ("d", "n=٣4"),
        ("w", "café!"),
        ("s", "a\u00a0b"),
        ("b", "foo"),
        ("W", "xéy"),
    ]


def test_case_folding_like_python() -> None:
    """(?i) folds like Python: k matches the Kelvin sign, i the dotted and dotless i."""
    rules = [("k", T("(?i)kb")), ("i", T("(?i)xi")), ("e", T("(?i)É")), ("c", T("(?i)y[i]"))]
    check(rules, "\u212ab\nxı\nXI\né\nkB\nxİ\nyİ\n".encode())


def test_anchors_are_line_anchors_with_all_terminators() -> None:
    rules = [("a", T(r"^bar$")), ("z", T(r"\Abar\Z")), ("m", T(r"(?m)^ba"))]
    got = check(rules, b"foo\rbar\r\nxbar\nbar")
    assert [(k, m.lineno) for k, m in got] == [
        ("a", 2),
        ("z", 2),
        ("m", 2),
        ("a", 4),
        ("z", 4),
        ("m", 4),
    ]


def test_dot_and_negated_classes_never_cross_lines() -> None:
    """(?s) and [^x] do not let a match run into the next line."""
    rules = [("s", T(r"(?s)a.*b")), ("n", T(r"a[^x]*b")), ("sp", T(r"a\s*b"))]
    got = check(rules, b"a\nb\na b\n")
    assert [(k, m.lineno) for k, m in got] == [("s", 3), ("n", 3), ("sp", 3)]


def test_literal_newline_in_pattern_never_matches() -> None:
    check([("nl", T("a\nb")), ("cr", T("a\rb"))], b"a\nb\na\rb\r\n")
    assert scan([("nl", T("a\nb"))], b"a\nb\n") == []


def test_chunk_edges_cut_partial_empty() -> None:
    """A cut or partial chunk (no terminator) is one line; empty data has none; a final
    terminator does not open an empty line."""
    r = [("x", T("^$")), ("y", T("abc"))]
    assert scan(r, b"") == []
    got = scan(r, b"xxabc", cut=True)
    assert [(k, m.line) for k, m in got] == [("y", "xxabc")]
    assert [(k, m.lineno) for k, m in check(r, b"\n")] == [("x", 1)]
    assert [(k, m.lineno) for k, m in check(r, b"abc\r")] == [("y", 1)]
    check(r, b"abc\n\n\r\n\r")


def test_python_fallback_lookbehind_and_backreference() -> None:
    """What RE2 cannot run goes to Python re, with the reason for `sidecar check`."""
    for pat, word in [(r"(?<=id=)\d+", "lookbehind"), (r"(\w+) \1", "backreference")]:
        engine, msg = compile_check(T(pat))
        assert engine == "re"
        assert msg is not None and word in msg
    rules = [("lb", T(r"(?<=id=)\d+")), ("br", T(r"(\w+) \1")), ("la", T(r"foo(?!bar)"))]
    got = check(rules, b"id=12 x x\nfoobar foobaz\nid=\n")
    assert [(k, m.text) for k, m in got] == [("lb", "12"), ("br", "x x"), ("la", "foo")]


def test_fallback_without_any_literal_still_scans_every_line() -> None:
    engine, msg = compile_check(T(r"(?=\d)"))
    assert engine == "re" and msg is not None and "every line" in msg
    check([("x", T(r"(?=\d)")), ("y", T(r"(?<!a)b"))], b"a\n1\nab\ncb\n")


def test_compile_check_messages() -> None:
    assert compile_check(T(r"loss: ([\d.]+)")) == ("re2", None)
    engine, msg = compile_check(T("("))
    assert engine == "invalid" and msg is not None and "missing )" in msg
    engine, msg = compile_check(T(r"(?<=x)(a+)+$"))
    assert engine == "re" and msg is not None and "catastrophic" in msg
    assert compile_check(T(r"(a|a)*(?=b)"))[1] is not None
    assert "catastrophic" in (compile_check(T(r"(?<=x)(?:a|a)*y"))[1] or "")
    assert "every line" in (compile_check(T("x*"))[1] or "")
    assert "will be empty" in (compile_check(T("(a)", captures=["p", "q"]))[1] or "")
    engine, msg = compile_check(T("a{2000}"))
    assert engine == "re" and msg is not None and "RE2" in msg


def test_invalid_pattern_raises_pattern_error_listing_all() -> None:
    with pytest.raises(PatternError) as ei:
        MultiMatcher([("a", T("(")), ("b", T("ok")), ("c", T("[z-a]"))])
    assert [k for k, _m in ei.value.problems] == ["a", "c"]


def test_pathological_pattern_under_re2_completes() -> None:
    """(a+)+$ takes exponential time in Python re; RE2 runs it in linear time."""
    assert compile_check(T(r"(a+)+$"))[0] == "re2"
    data = (b"a" * 5000 + b"b\n") * 20
    assert scan([("p", T(r"(a+)+$"))], data) == []
    assert match_line(T(r"^(a+)+$"), "a" * 3000) is not None


def test_dangerous_unicode_boundary_pattern_stays_on_re2() -> None:
    """\\b is Unicode in Python; on a non-ASCII line that needs Python re, unless the pattern
    could backtrack catastrophically: then RE2 with ASCII \\b is used, and check says so."""
    pat = r"\b(\w+\s?)+\b!"
    engine, msg = compile_check(T(pat))
    assert engine == "re2" and msg is not None and "ASCII word boundaries" in msg
    line = "é" + "a" * 40 + "é"  # Python re would take ages here
    assert match_line(T(pat), line) is None
    assert match_line(T(pat), "éabc!").text == "abc!"  # type: ignore[union-attr]
    # not dangerous: exact Unicode meaning through Python re
    assert match_line(T(r"\bfoo"), "éfoo") is None
    assert match_line(T(r"\bfoo"), "é foo") is not None


def test_group_pass_with_set_prefilter() -> None:
    """Rules without a leading literal share one alternation pass (and a Set)."""
    rules = [
        ("d", T(r"\d+x")),
        ("ab", T(r"[ab]c")),
        ("anch", T(r"^foo")),
        ("dot", T(r".oo(\d)")),
        ("w", T(r"\w+z$")),
        ("py", T(r"(?<=q)r")),
    ]
    mm = MultiMatcher(rules)
    plan = mm._plan(True)
    assert any(len(p.members) >= M._SET_MIN and p.set_match is not None for p in plan)
    data = b"12x bc\nfoo1 qr\nzz 9x\nxfoo\nabz\nnothing\n" * 3
    assert mm.scan(Chunk("/p", data, 0, 1)) == reference(rules, data)


def test_split_rules_are_found_once_per_line() -> None:
    """A rule split into several passes reports a line once, even when two passes hit it."""
    rules = [("alt", T(r"NaN loss|loss is NaN")), ("k", T("killed", ignore_case=True))]
    got = check(rules, b"NaN loss and loss is NaN\nKilled killed \xe2\x84\xaaILLED\n")
    assert [(k, m.lineno) for k, m in got] == [("alt", 1), ("k", 2)]


def test_many_lines_and_matches_at_chunk_ends() -> None:
    rules = [("loss", T(r"loss: ([\d.]+)", captures=["loss"])), ("e", T("ERROR.*"))]
    parts = []
    for i in range(3000):
        parts.append(f"step {i} loss: {i / 7:.3f}\n" if i % 7 == 0 else f"info {i}\n")
        if i % 500 == 0:
            parts.append("\r50%|█████     |\r60%|██████    |\rERROR boom\n")
    data = ("ERROR first\n" + "".join(parts) + "ERROR last").encode()
    got = check(rules, data, lineno=100)
    assert got[0][1].lineno == 100 and got[-1][1].line == "ERROR last"


def test_scan_survives_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the fast path falls back to line-by-line Python re, same results."""
    rules = [("l", T(r"loss: (\d+)"))]
    mm = MultiMatcher(rules)

    def boom(chunk: Chunk) -> List[Any]:
        raise RuntimeError("bug")

    monkeypatch.setattr(mm, "_scan", boom)
    data = b"loss: 1\r\nx\rloss: 2\n\xff"
    assert mm.scan(Chunk("/p", data, 0, 3)) == reference(rules, data, 3)


def test_match_line_helper() -> None:
    m = match_line(T(r"loss: (?P<v>[\d.]+)"), "a loss: 0.5", path="/f", lineno=7)
    assert m == LineMatch("/f", 7, "a loss: 0.5", "loss: 0.5", ("0.5",), {"v": "0.5"})
    assert match_line(T("x"), "abc") is None


def test_benchmark_patterns_all_run_on_re2_without_a_dfa_group() -> None:
    """The usual alert patterns each get a fast literal pass (no shared DFA pass)."""
    from benchmarks.scan import CAPTURES, PATTERNS

    rules = [(n, T(p, captures=CAPTURES.get(n, ()))) for n, p, _g in PATTERNS]
    mm = MultiMatcher(rules)
    assert all(e == "re2" for _k, e in mm.engines())
    for ascii_chunk in (True, False):
        assert all(len(p.members) == 1 for p in mm._plan(ascii_chunk))


# ----------------------------------------------------------------------------- properties

_CHARS = ["a", "b", "c", "A", "é", "K", "k", "\u212a", "i", "ı", "İ", "ſ", "1", "٣", " ", "\t"]
_CHARS += ["\u00a0", "-", "_", "."]
_ATOMS = [
    "a", "b", "c", "A", "é", "K", "i", "s", "1", " ", "-", r"\.", "[ab]", "[^a]", "[a-c]", r"[^\d]",
    r"[\w-]", r"\d", r"\w", r"\s", r"\D", r"\W", r"\S", ".", r"\b", r"\B", "^", "$", r"\A",
    r"\Z", "[^\\W\\d]",
]  # fmt: skip
_RARE = [r"(?=a)", r"(?!b)", r"(?<=a)", r"(?<!c)", r"\1", "(?i:a)"]
_QUANT = ["", "", "", "*", "+", "?", "{1,2}", "*?", "+?", "{2}"]


def _patterns() -> Any:
    atom = st.one_of(st.sampled_from(_ATOMS), st.sampled_from(_RARE))

    def extend(inner: Any) -> Any:
        seq = st.lists(inner, min_size=1, max_size=3).map("".join)
        return st.one_of(
            seq,
            st.tuples(seq, seq).map(lambda t: t[0] + "|" + t[1]),
            st.tuples(st.sampled_from(["(", "(?:", "(?P<n{}>"]), seq, st.sampled_from(_QUANT)).map(
                lambda t: t[0] + t[1] + ")" + t[2]
            ),
        )

    quantified = st.tuples(atom, st.sampled_from(_QUANT)).map("".join)
    return st.recursive(quantified, extend, max_leaves=6)


def _number_named(p: str) -> str:
    parts = p.split("(?P<n{}>")
    return "".join(part if j == 0 else f"(?P<n{j}>" + part for j, part in enumerate(parts))


_pieces = st.one_of(
    st.sampled_from(_CHARS).map(lambda c: c.encode()),
    st.sampled_from([b"\n", b"\r", b"\r\n", b"\xff", b"\xe2\x96"]),
)
_data = st.lists(_pieces, max_size=30).map(b"".join)


def _rules_for(pats: List[Tuple[str, bool]], data: bytes) -> Tuple[List[Any], bytes]:
    """The generated patterns as rules keyed 0..n (hypothesis skips a draw Python cannot
    compile), and the data, cut short where a pattern may backtrack for ages."""
    rules = []
    for i, (p, ic) in enumerate(pats):
        p = _number_named(p)
        try:
            re.compile(p, re.IGNORECASE if ic else 0)
        except (re.error, OverflowError, RecursionError):
            assume(False)
        c = M._compile(p, ic)
        if c.unicode_boundary and c.danger and not data.isascii():
            continue  # by design: ASCII \b there (see test_dangerous_unicode_boundary...)
        rules.append((i, T(p, ignore_case=ic)))
        if c.danger:
            data = data[:10]  # Python re (the reference, maybe the matcher) could take ages
    return rules, data


@settings(
    max_examples=int(os.environ.get("MATCHER_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    pats=st.lists(st.tuples(_patterns(), st.booleans()), min_size=1, max_size=6),
    data=_data,
    lineno=st.integers(1, 5),
)
def test_same_results_as_python_re_line_by_line(
    pats: List[Tuple[str, bool]], data: bytes, lineno: int
) -> None:
    """No false negatives, no false positives, same $0/groups/named, same line numbers."""
    rules, data = _rules_for(pats, data)
    assert scan(rules, data, lineno) == reference(rules, data, lineno)


@settings(
    max_examples=int(os.environ.get("MATCHER_EXAMPLES", "400")) // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    pats=st.lists(st.tuples(_patterns(), st.booleans()), min_size=1, max_size=6),
    data=_data,
    mute=st.sets(st.integers(0, 5)),
    ascii_only=st.booleans(),
)
def test_muted_rules_are_counted_exactly_and_left_out(
    pats: List[Tuple[str, bool]], data: bytes, mute: Set[int], ascii_only: bool
) -> None:
    """scan(mute=K) returns the other rules' matches unchanged and, per muted key, the number
    of lines Python's re.search finds (split rules, second looks and fallbacks included)."""
    if ascii_only:  # the counting-only fast path runs on ASCII chunks
        data = data.decode("utf-8", "replace").encode("ascii", "replace")
    rules, data = _rules_for(pats, data)
    ref = reference(rules, data, 3)
    counts: Dict[Hashable, int] = {}
    got = MultiMatcher(rules).scan(Chunk("/p", data, 0, 3), mute=mute, counts=counts)
    assert got == [(k, m) for k, m in ref if k not in mute]
    expected: Dict[Hashable, int] = {}
    for k, _m in ref:
        if k in mute:
            expected[k] = expected.get(k, 0) + 1
    assert counts == expected


def test_muted_rule_is_counted_on_the_fast_path_and_others_still_built() -> None:
    """A frequent rule that is only counted (rate-limited watcher) gives no LineMatch, its
    line count is exact, and a rare rule on the same lines keeps its matches and numbers."""
    rules = [("loss", T(r"loss: ([\d.]+)", ["loss"])), ("oom", T("out of memory"))]
    lines = [f"step {i} loss: {i}.5" if i % 3 else f"step {i} out of memory" for i in range(300)]
    data = ("\n".join(lines) + "\n").encode()
    mm = MultiMatcher(rules)
    counts: Dict[Hashable, int] = {"loss": 7}  # added to, not replaced
    got = mm.scan(Chunk("/p", data, 0, 1), mute={"loss"}, counts=counts)
    assert counts == {"loss": 7 + 200}
    assert [m.lineno for k, m in got] == list(range(1, 301, 3))
    assert all(k == "oom" for k, _m in got)
    assert mm.scan(Chunk("/p", data, 0, 1)) == reference(rules, data)
    # a chunk with non-ASCII lines (progress bars): those lines get a second look
    lines += [f"{i}% |████| loss: {i}" for i in range(5)] + ["ünïcode out of memory"]
    lines += ["loss: é", "loss: ٣"]  # a candidate only, and a Unicode digit
    data = ("\n".join(lines) + "\n").encode()
    counts.clear()
    got = mm.scan(Chunk("/p", data, 0, 1), mute={"loss"}, counts=counts)
    assert counts == {"loss": 206}
    assert [m.lineno for k, m in got] == [*range(1, 301, 3), 306]


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300))
def test_any_bytes_never_raise(data: bytes) -> None:
    rules = [("a", T(r"(\w+)\s*=\s*(\S+)")), ("b", T("(?i)err.*")), ("c", T(r"(?<!x)y"))]
    assert scan(rules, data) == reference(rules, data)


# ----------------------------------------------------------------------------- Unicode tables


def test_exotic_case_folds_table_is_complete() -> None:
    """For every ASCII character, the characters Python's (?i) matches are exactly the ones
    the matcher's wide forms and splits expect."""
    everything = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    for c in range(0x80):
        got = set(re.findall(re.escape(chr(c)), everything, re.IGNORECASE))
        want = {chr(o) for o in M._ascii_orbit(c, re.IGNORECASE)}
        assert got == want, chr(c)


def test_unicode_categories_match_python_everywhere() -> None:
    """\\d, \\w, \\s, \\D, \\W, \\S (UTF-8 forms) agree with Python on every code point that
    Python's Unicode database knows."""
    import unicodedata

    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and c != 0x0A]
    known = [ch for ch in chars if unicodedata.category(ch) != "Cn"]
    for cls in [r"\d", r"\w", r"\s", r"\D", r"\W", r"\S", r"[^\W\d_]", r"[\d\s]"]:
        c = M._compile(cls, False)
        assert c.exact is not None
        py = re.compile(cls)
        for ch in known:
            b = ch.encode()
            assert (c.exact(M._UNANCHORED, b, 0, len(b))[0][0] == 0) == bool(py.fullmatch(ch)), (
                cls,
                hex(ord(ch)),
            )


def test_wide_forms_are_exact_on_ascii() -> None:
    """On ASCII text the Latin-1 wide form gives the UTF-8 form's spans."""
    line = b"Ab1 _-x.y\tZz9"
    for pat in [r"\w+", r"[^\W\d]", r"(?i)[k-z]+", r"(?i)B1", r"\S+\s", r"[^a]", r".\b."]:
        c = M._compile(pat, False)
        assert c.exact is not None and c.wide is not None
        for pos in range(len(line)):
            assert c.wide(M._UNANCHORED, line, pos, len(line)) == c.exact(
                M._UNANCHORED, line, pos, len(line)
            )


def test_check_turns_pythons_regex_warnings_into_a_message_and_prints_none() -> None:
    """A POSIX class ([[:alpha:]]) makes Python's parser warn (FutureWarning): `sidecar
    check` says so with what to write instead; nothing reaches stderr as a raw warning."""
    import warnings

    from sidecar.matcher import _compile

    _compile.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine, msg = compile_check(RegexTrigger(pattern="x[[:alpha:]]+"))
        hits = MultiMatcher([("k", RegexTrigger(pattern="x[[:alpha:]]+"))]).scan(
            Chunk(path="p", data=b"xa]\nxz\n", offset=0, lineno=1)
        )
    assert caught == []
    assert engine == "re2" and msg is not None
    assert "Possible nested set" in msg and "POSIX classes" in msg and "[a-zA-Z]" in msg
    assert [m.lineno for _k, m in hits] == [1]  # the pattern's Python meaning: 'x', 'a', ']'
