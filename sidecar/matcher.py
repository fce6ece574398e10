"""Regexes over whole-line buffers: a :class:`~sidecar.types.Chunk` in, ``LineMatch``-es out.

The language of a pattern is Python's ``re`` (what ssync's ``#WATCHER`` lines and the Haskell
Sidecar's configs are written in); the reference meaning of a rule is::

    for each line of the chunk (terminators \\n, \\r\\n, lone \\r; line decoded as UTF-8 with
    errors="replace", terminator stripped):
        m = re.search(pattern, line, re.IGNORECASE if ignore_case else 0)

and this module produces exactly that, fast:

* Each pattern is parsed with Python's own parser and re-emitted as an RE2 (google-re2)
  pattern with the same meaning (Unicode ``\\d``/``\\w``/``\\s``, Python's case folding, ``.``
  and negated classes never crossing a line end, ``\\A``/``\\Z``/``^``/``$`` as line anchors).
  What RE2 cannot express with the same meaning (lookaround, backreferences, possessive
  quantifiers, atomic and conditional groups, repeated groups that can match empty, huge
  counted repeats) runs on Python ``re``, pre-filtered by an RE2 *relaxation* of the
  pattern (lookarounds dropped, backreferences widened...) that matches a superset of lines.
* A chunk is scanned as one buffer, never line by line: a rule whose RE2 pattern begins with
  a literal gets its own pass (RE2 skips with memchr to candidates: ~10 GB/s); the other
  rules share one pass with an alternation of their patterns. Only candidate lines cost any
  Python work. Emitted patterns cannot match a ``\\n``, so a buffer-level match from a line
  start is the per-line match (no re-check needed for exact RE2 rules); a pass continues at
  the start of the line after each hit, so no line is skipped.
* ``\\r`` terminators are rewritten to ``\\n`` (and invalid UTF-8 to U+FFFD) on a private copy
  only when the chunk has them; line numbers count terminators exactly.

``\\b``/``\\B`` are ASCII in RE2 and Unicode in Python: rules using them are exact on ASCII
lines and checked with Python ``re`` on other candidate lines. Remaining known difference:
characters that Python's Unicode database (Unicode 13-15 depending on the Python) does not
know yet but RE2's does are classified by RE2 in ``\\d``/``\\w``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Callable, Hashable, List, Optional, Sequence, Tuple

from sidecar.log import get_logger
from sidecar.model import RegexTrigger
from sidecar.types import Chunk, LineMatch

try:  # Python >= 3.11
    from re import _constants as _sre_c  # type: ignore[attr-defined]
    from re import _parser as _sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_constants as _sre_c  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

try:
    import re2 as _re2mod

    _RE2_ERROR: Optional[str] = None
except Exception as _e:  # pragma: no cover - exercised only where the wheel is missing
    _re2mod = None
    _RE2_ERROR = f"{type(_e).__name__}: {_e}"

__all__ = [
    "MultiMatcher",
    "PatternError",
    "compile_check",
    "match_line",
    "ENGINE_RE2",
    "ENGINE_RE",
    "ENGINE_ERROR",
]

ENGINE_RE2 = "re2"
ENGINE_RE = "re"
ENGINE_ERROR = "invalid"

_log = get_logger(__name__)

# ---------------------------------------------------------------------------------------------
# RE2 access. The pybind11 object behind re2.compile() has Match(anchor, buffer, pos, endpos)
# -> [(start, end) per group], zero-copy on bytes; the public wrapper adds ~1 us per call.

Span = Tuple[int, int]
MatchFn = Callable[[Any, bytes, int, int], List[Span]]

_NO_SPAN: Span = (-1, -1)


def _re2_options(max_mem: int = 8 << 20) -> Any:
    assert _re2mod is not None
    opts = _re2mod.Options()
    opts.log_errors = False  # RE2 would write compile/DFA errors to stderr itself
    opts.max_mem = max_mem
    return opts


if _re2mod is not None:
    try:
        _UNANCHORED: Any = _re2mod._re2.RE2.Anchor.UNANCHORED
    except AttributeError:  # pragma: no cover - future binding without the private module
        _UNANCHORED = None
else:  # pragma: no cover
    _UNANCHORED = None


def _re2_compile(src: str, max_mem: int = 8 << 20) -> Tuple[MatchFn, int]:
    """Compile ``src`` with RE2 -> (match function, number of groups). Raises ValueError."""
    assert _re2mod is not None
    try:
        rx = _re2mod.compile(src, _re2_options(max_mem))
    except Exception as e:  # re2.error; message is bytes
        msg = e.args[0] if e.args else e
        if isinstance(msg, bytes):
            msg = msg.decode("utf-8", "replace")
        raise ValueError(str(msg)) from None
    raw = getattr(rx, "_regexp", None)
    if raw is not None and _UNANCHORED is not None and hasattr(raw, "Match"):
        return raw.Match, int(rx.groups)
    ngroups = int(rx.groups)  # pragma: no cover - only with a different binding

    def match(_anchor: Any, buf: bytes, pos: int, end: int) -> List[Span]:  # pragma: no cover
        m = rx.search(buf, pos, end)
        if m is None:
            return [_NO_SPAN]
        return [m.span(i) for i in range(ngroups + 1)]

    return match, ngroups  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# Translation: Python parse tree -> RE2 syntax.

_C = _sre_c
_LITERAL = _C.LITERAL
_NOT_LITERAL = _C.NOT_LITERAL
_ANY = _C.ANY
_IN = _C.IN
_RANGE = _C.RANGE
_NEGATE = _C.NEGATE
_CATEGORY = _C.CATEGORY
_BRANCH = _C.BRANCH
_SUBPATTERN = _C.SUBPATTERN
_MAX_REPEAT = _C.MAX_REPEAT
_MIN_REPEAT = _C.MIN_REPEAT
_POSSESSIVE_REPEAT = getattr(_C, "POSSESSIVE_REPEAT", object())
_ATOMIC_GROUP = getattr(_C, "ATOMIC_GROUP", object())
_AT = _C.AT
_GROUPREF = _C.GROUPREF
_GROUPREF_EXISTS = _C.GROUPREF_EXISTS
_ASSERT = _C.ASSERT
_ASSERT_NOT = _C.ASSERT_NOT
_MAXREPEAT = _C.MAXREPEAT
_REPEATS = (_MAX_REPEAT, _MIN_REPEAT, _POSSESSIVE_REPEAT)

_AT_BEGIN = {_C.AT_BEGINNING, _C.AT_BEGINNING_LINE, _C.AT_BEGINNING_STRING}
_AT_END = {_C.AT_END, _C.AT_END_LINE, _C.AT_END_STRING}
_AT_BOUNDARY = _C.AT_BOUNDARY
_AT_NON_BOUNDARY = _C.AT_NON_BOUNDARY

_F_IGNORECASE = int(re.IGNORECASE)
_F_ASCII = int(re.ASCII)

_NL = 0x0A
_MAXCP = 0x10FFFF
_NEVER = "[^\\x{0}-\\x{10ffff}]"  # an empty class: never matches (e.g. a literal \n)
_DOTI = (0x49, 0x69, 0x131)  # Python's (?i) puts I, i and dotless i together; RE2 does not

# Python's Unicode \s (str.isspace), as ranges; \n is left out (lines never contain it).
_SPACE_RANGES: Tuple[Span, ...] = (
    (0x09, 0x09),
    (0x0B, 0x0D),
    (0x1C, 0x20),
    (0x85, 0x85),
    (0xA0, 0xA0),
    (0x1680, 0x1680),
    (0x2000, 0x200A),
    (0x2028, 0x2029),
    (0x202F, 0x202F),
    (0x205F, 0x205F),
    (0x3000, 0x3000),
)
_ASCII_SPACE: Tuple[Span, ...] = ((0x09, 0x0D), (0x20, 0x20))
_ASCII_DIGIT: Tuple[Span, ...] = ((0x30, 0x39),)
_ASCII_WORD: Tuple[Span, ...] = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))


class _Untranslatable(Exception):
    """The pattern has no RE2 equivalent; ``args[0]`` says why (for ``sidecar check``)."""


def _esc(c: int) -> str:
    if c < 0x80 and chr(c).isalnum():
        return chr(c)
    return f"\\x{{{c:x}}}"


def _complement(ranges: Sequence[Span]) -> List[Span]:
    out: List[Span] = []
    nxt = 0
    for lo, hi in sorted(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = max(nxt, hi + 1)
    if nxt <= _MAXCP:
        out.append((nxt, _MAXCP))
    return out


def _normalize(ranges: Sequence[Span]) -> List[Span]:
    """Sorted, merged, without \\n."""
    out: List[Span] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    res: List[Span] = []
    for lo, hi in out:
        if lo <= _NL <= hi:
            if lo < _NL:
                res.append((lo, _NL - 1))
            if hi > _NL:
                res.append((_NL + 1, hi))
        else:
            res.append((lo, hi))
    return res


def _ranges_src(ranges: Sequence[Span]) -> str:
    return "".join(_esc(lo) if lo == hi else f"{_esc(lo)}-{_esc(hi)}" for lo, hi in ranges)


def _contains(ranges: Sequence[Span], c: int) -> bool:
    return any(lo <= c <= hi for lo, hi in ranges)


def _ascii_fold(ranges: Sequence[Span]) -> List[Span]:
    """(?ai): add the other case of every ASCII letter in ``ranges``."""
    extra: List[Span] = []
    for lo, hi in ranges:
        for c in range(max(lo, 0x41), min(hi, 0x7A) + 1):
            ch = chr(c)
            if ch.isalpha():
                o = ord(ch.swapcase())
                extra.append((o, o))
    return list(ranges) + extra


class _Emitter:
    """Writes the RE2 form of a parsed pattern.

    exact=True: same meaning on a single line, or raise _Untranslatable. exact=False: a
    relaxation (matches every line the pattern matches, maybe more) that always exists.
    capture=False turns groups into non-capturing ones (for alternations and prefilters).
    """

    def __init__(self, exact: bool, capture: bool, max_count: int = 1000) -> None:
        self.exact = exact
        self.capture = capture
        self.max_count = max_count
        self.unicode_boundary = False  # exact pattern uses \b/\B with ASCII-only meaning

    def seq(self, items: Any, flags: int) -> str:
        return "".join(self.item(op, av, flags) for op, av in items)

    def seq3(self, triples: Sequence[Tuple[Any, Any, int]]) -> str:
        return "".join(self.item(op, av, fl) for op, av, fl in triples)

    def _no(self, what: str) -> None:
        if self.exact:
            raise _Untranslatable(what)

    def item(self, op: Any, av: Any, flags: int) -> str:
        if op is _LITERAL:
            return self.literal(av, flags)
        if op is _NOT_LITERAL:
            return self.klass([(_NEGATE, None), (_LITERAL, av)], flags)
        if op is _ANY:
            return "[^\\n]"  # with or without DOTALL: a line has no \n
        if op is _IN:
            return self.klass(av, flags)
        if op is _CATEGORY:
            return self.klass([(_CATEGORY, av)], flags)
        if op is _BRANCH:
            return "(?:" + "|".join(self.seq(alt, flags) for alt in av[1]) + ")"
        if op is _SUBPATTERN:
            group, add, delete, sub = av
            inner = self.seq(sub, (flags | add) & ~delete)
            if group is not None and self.capture:
                return "(" + inner + ")"
            return "(?:" + inner + ")"
        if op in _REPEATS:
            return self.repeat(op, av, flags)
        if op is _ATOMIC_GROUP:
            self._no("an atomic group (?>...)")
            return "(?:" + self.seq(av, flags) + ")"
        if op is _AT:
            if av in _AT_BEGIN:
                return "^"
            if av in _AT_END:
                return "$"
            if av is _AT_BOUNDARY or av is _AT_NON_BOUNDARY:
                src = "\\b" if av is _AT_BOUNDARY else "\\B"
                if flags & _F_ASCII:
                    return src
                if self.exact:
                    self.unicode_boundary = True
                    return src
                return ""
            self._no(f"the anchor {av}")
            return ""
        if op is _GROUPREF:
            self._no("a backreference")
            return "[^\\n]*"
        if op is _GROUPREF_EXISTS:
            self._no("a conditional group (?(id)yes|no)")
            _group, yes, no = av
            return "(?:" + self.seq(yes, flags) + "|" + (self.seq(no, flags) if no else "") + ")"
        if op is _ASSERT or op is _ASSERT_NOT:
            direction = "lookahead" if av[0] >= 0 else "lookbehind"
            self._no(("a negative " if op is _ASSERT_NOT else "a ") + direction)
            return ""
        self._no(f"the construct {op}")
        return "[^\\n]*"

    def repeat(self, op: Any, av: Any, flags: int) -> str:
        lo, hi, body = av
        if op is _POSSESSIVE_REPEAT:
            self._no("a possessive quantifier")
        if self.exact and hi != 1 and _nullable(body) and _has_capture(body):
            # e.g. (a*)+ on "aa": Python gives group 1 = "", RE2 "aa"
            raise _Untranslatable("a repeated group that can match the empty string")
        inner = "(?:" + self.seq(body, flags) + ")"
        unbounded = hi is _MAXREPEAT or hi == _MAXREPEAT
        if not self.exact and (lo > self.max_count or (not unbounded and hi > self.max_count)):
            q = "*" if lo == 0 else "+"
        elif unbounded:
            q = "*" if lo == 0 else "+" if lo == 1 else f"{{{lo},}}"
        elif lo == hi:
            q = f"{{{lo}}}"
        elif (lo, hi) == (0, 1):
            q = "?"
        else:
            q = f"{{{lo},{hi}}}"
        if op is _MIN_REPEAT:
            q += "?"
        return inner + q

    def literal(self, c: int, flags: int) -> str:
        if c == _NL or 0xD800 <= c <= 0xDFFF:
            return _NEVER
        if not flags & _F_IGNORECASE:
            return _esc(c)
        if flags & _F_ASCII:
            ch = chr(c)
            if c < 0x80 and ch.isalpha():
                return "[" + _esc(ord(ch.lower())) + _esc(ord(ch.upper())) + "]"
            return _esc(c)
        if c in _DOTI:
            return "[Ii\\x{131}]"
        return "(?i:" + _esc(c) + ")"

    def klass(self, items: Any, flags: int) -> str:
        negate = False
        ranges: List[Span] = []
        pos_tokens: List[str] = []  # Unicode properties inside the brackets
        not_digit = not_word = False
        ascii_mode = bool(flags & _F_ASCII)
        for op, av in items:
            if op is _NEGATE:
                negate = True
            elif op is _LITERAL:
                ranges.append((av, av))
            elif op is _RANGE:
                ranges.append((av[0], av[1]))
            elif op is _CATEGORY:
                name = str(av)
                if name.startswith("CATEGORY_NOT_"):
                    base = name[len("CATEGORY_NOT_") :]
                    neg = True
                else:
                    base = name[len("CATEGORY_") :]
                    neg = False
                if base == "SPACE":
                    rs = _ASCII_SPACE if ascii_mode else _SPACE_RANGES
                    ranges.extend(_complement(rs) if neg else rs)
                elif ascii_mode and base in ("DIGIT", "WORD"):
                    rs = _ASCII_DIGIT if base == "DIGIT" else _ASCII_WORD
                    ranges.extend(_complement(rs) if neg else rs)
                elif base == "DIGIT":
                    if neg:
                        not_digit = True
                    else:
                        pos_tokens.append("\\p{Nd}")
                elif base == "WORD":
                    if neg:
                        not_word = True
                    else:
                        pos_tokens.append("\\p{L}\\p{N}_")
                else:
                    self._no(f"the class {name}")
                    return "[^\\n]"
            else:
                self._no(f"the class item {op}")
                return "[^\\n]"
        fold = bool(flags & _F_IGNORECASE)
        if fold and ascii_mode:
            ranges = _ascii_fold(ranges)
            fold = False
        elif fold and any(_contains(ranges, c) for c in _DOTI):
            ranges = ranges + [(c, c) for c in _DOTI]
        ranges = _normalize(ranges)
        body = _ranges_src(ranges) + "".join(pos_tokens)
        if not negate:
            alts = []
            if body:
                alts.append("[" + body + "]")
            if not_digit:
                alts.append("[^\\p{Nd}\\n]")
            if not_word:
                alts.append("[^\\p{L}\\p{N}_\\n]")
            if not alts:
                return _NEVER
            src = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        else:
            rest = body + ("\\P{Nd}" if not_digit else "")
            if not_word:  # [^\W...] = word characters that are none of the rest
                parts = ["[^\\PL" + rest + "\\n]", "[^\\PN" + rest + "\\n]"]
                if not _contains(ranges, 0x5F) and "\\p{L}\\p{N}_" not in pos_tokens:
                    parts.append("[^\\x{0}-\\x{5e}\\x{60}-\\x{10ffff}" + rest + "\\n]")
                src = "(?:" + "|".join(parts) + ")"
            else:
                src = "[^" + rest + "\\n]"
        return "(?i:" + src + ")" if fold else src


def _nullable(items: Any) -> bool:
    for op, av in items:
        if op in (_LITERAL, _NOT_LITERAL, _ANY, _IN, _CATEGORY):
            return False
        if op is _SUBPATTERN:
            if not _nullable(av[3]):
                return False
        elif op is _BRANCH:
            if not any(_nullable(alt) for alt in av[1]):
                return False
        elif op in _REPEATS:
            if av[0] > 0 and not _nullable(av[2]):
                return False
        elif op is _ATOMIC_GROUP:
            if not _nullable(av):
                return False
        elif op is _GROUPREF_EXISTS and not (_nullable(av[1]) or av[2] is None or _nullable(av[2])):
            return False
        # AT, ASSERT, ASSERT_NOT, GROUPREF: zero-width or possibly empty
    return True


def _children(op: Any, av: Any) -> List[Any]:
    if op is _SUBPATTERN:
        return [av[3]]
    if op is _BRANCH:
        return list(av[1])
    if op in _REPEATS:
        return [av[2]]
    if op is _ATOMIC_GROUP:
        return [av]
    if op is _ASSERT or op is _ASSERT_NOT:
        return [av[1]]
    if op is _GROUPREF_EXISTS:
        return [av[1]] + ([av[2]] if av[2] is not None else [])
    return []


def _has_capture(items: Any) -> bool:
    for op, av in items:
        if op is _SUBPATTERN and av[0] is not None:
            return True
        if any(_has_capture(ch) for ch in _children(op, av)):
            return True
    return False


def _first_chars(items: Any) -> Optional[frozenset[int]]:
    """Literal code points a match can start with; None = unknown/anything (or nullable)."""
    for op, av in items:
        if op is _LITERAL:
            return frozenset((av,))
        if op is _SUBPATTERN:
            return _first_chars(av[3])
        if op is _IN and all(o is _LITERAL for o, _ in av):
            return frozenset(a for _, a in av)
        return None
    return None


def _danger(items: Any, in_repeat: bool = False) -> Optional[str]:
    """A reason the pattern may backtrack catastrophically in Python re, or None."""
    for op, av in items:
        if op is _MAX_REPEAT or op is _MIN_REPEAT:
            lo, hi, body = av
            variable = hi != lo
            if in_repeat and variable:
                return "nested quantifiers (like (a+)+ or (.*)*)"
            many = hi is _MAXREPEAT or hi == _MAXREPEAT or hi > 1
            if many:
                if _nullable(body):
                    return "a repeated part that can match the empty string (like (a?)*)"
                r = _danger(body, True) or _branch_overlap(body)
            else:
                r = _danger(body, in_repeat)
            if r:
                return r
        elif op is _ATOMIC_GROUP or op is _POSSESSIVE_REPEAT:
            continue  # no backtracking into these
        else:
            for ch in _children(op, av):
                r = _danger(ch, in_repeat)
                if r:
                    return r
    return None


def _branch_overlap(items: Any) -> Optional[str]:
    for op, av in items:
        if op is _SUBPATTERN:
            return _branch_overlap(av[3])
        if op is _BRANCH:
            firsts = [_first_chars(alt) for alt in av[1]]
            for i in range(len(firsts)):
                for j in range(i + 1, len(firsts)):
                    a, b = firsts[i], firsts[j]
                    if a is None or b is None or a & b:
                        return "a repeated alternation whose branches overlap (like (a|a)*)"
        return None
    return None


def _lead_literal(items: Any, flags: int, exact: bool) -> Optional[bool]:
    """Does every match begin with one fixed, case-sensitive character? (RE2 then skips to
    candidates with memchr.) None = the items can be empty (look further)."""
    for op, av in items:
        if op is _LITERAL:
            return not (flags & _F_IGNORECASE) and av != _NL and not (0xD800 <= av <= 0xDFFF)
        if op is _SUBPATTERN:
            r = _lead_literal(av[3], (flags | av[1]) & ~av[2], exact)
            if r is None:
                continue
            return r
        if op in _REPEATS:
            if av[0] < 1:
                return False
            r = _lead_literal(av[2], flags, exact)
            return bool(r)
        if op is _ATOMIC_GROUP:
            r = _lead_literal(av, flags, exact)
            if r is None:
                continue
            return r
        if not exact and (op is _ASSERT or op is _ASSERT_NOT):
            continue  # dropped by the relaxation
        if (
            not exact
            and op is _AT
            and (av is _AT_BOUNDARY or av is _AT_NON_BOUNDARY)
            and not flags & _F_ASCII
        ):
            continue
        return False
    return None


# Splitting: a rule whose pattern starts with an alternation or a case-insensitive letter
# is scanned as several passes that each start with a fixed character (each ~10x faster than
# one DFA pass); their candidate lines are then checked with the whole pattern.

#: (?i) in Python (and RE2, plus the dotless i fix) also matches these for an ASCII letter
_EXOTIC_FOLDS = {"k": (0x212A,), "s": (0x17F,), "i": (0x131,)}
_SPLIT_MAX = 8

Triple = Tuple[Any, Any, int]


def _fold_variants(c: int, flags: int, ascii_chunk: bool) -> Optional[List[int]]:
    ch = chr(c)
    if c >= 0x80:
        return [c] if flags & _F_ASCII else None
    if not ch.isalpha():
        return [c]
    out = [ord(ch.lower()), ord(ch.upper())]
    if not flags & _F_ASCII and not ascii_chunk:  # the others are not ASCII
        out.extend(_EXOTIC_FOLDS.get(ch.lower(), ()))
    return out


def _expand(
    seq: List[Triple], exact: bool, ascii_chunk: bool, depth: int = 0
) -> Optional[List[List[Triple]]]:
    """Sequences, each starting with a case-sensitive literal, whose matches include every
    match of ``seq``; None when there is no such small set."""
    if depth > 50:
        return None
    i = 0
    while i < len(seq):
        op, av, fl = seq[i]
        if not exact and (
            op is _ASSERT
            or op is _ASSERT_NOT
            or (op is _AT and (av is _AT_BOUNDARY or av is _AT_NON_BOUNDARY) and not fl & _F_ASCII)
        ):
            i += 1  # dropped by the relaxation
            continue
        break
    if i >= len(seq):
        return None
    op, av, fl = seq[i]
    rest = seq[i + 1 :]
    if op is _LITERAL:
        if av == _NL or 0xD800 <= av <= 0xDFFF:
            return []  # cannot match a line at all
        if not fl & _F_IGNORECASE:
            return [seq[i:]]
        variants = _fold_variants(av, fl, ascii_chunk)
        if variants is None:
            return None
        return [[(_LITERAL, v, fl & ~_F_IGNORECASE)] + rest for v in variants]
    if op is _SUBPATTERN:
        _g, add, delete, sub = av
        nfl = (fl | add) & ~delete
        return _expand([(o, a, nfl) for o, a in sub] + rest, exact, ascii_chunk, depth + 1)
    if op is _BRANCH:
        out: List[List[Triple]] = []
        for alt in av[1]:
            e = _expand([(o, a, fl) for o, a in alt] + rest, exact, ascii_chunk, depth + 1)
            if e is None:
                return None
            out.extend(e)
            if len(out) > _SPLIT_MAX:
                return None
        return out
    if (op is _MAX_REPEAT or op is _MIN_REPEAT) and av[0] >= 1:
        lo, hi, body = av
        unbounded = hi is _MAXREPEAT or hi == _MAXREPEAT
        tail: List[Triple] = []
        if unbounded or hi > 1:
            tail = [(op, (lo - 1, hi if unbounded else hi - 1, body), fl)]
        return _expand([(o, a, fl) for o, a in body] + tail + rest, exact, ascii_chunk, depth + 1)
    return None


# ---------------------------------------------------------------------------------------------
# One compiled pattern (shared by every rule with the same pattern/ignore_case).


class _Compiled:
    __slots__ = (
        "pattern",
        "ignore_case",
        "py",
        "ngroups",
        "groupindex",
        "exact",
        "exact_nc_src",
        "exact_lead",
        "exact_broad",
        "unicode_boundary",
        "reason",
        "danger",
        "relaxed",
        "relaxed_src",
        "relaxed_lead",
        "relaxed_broad",
        "tree",
        "gflags",
        "_splits",
    )

    def __init__(self, pattern: str, ignore_case: bool) -> None:
        self.pattern = pattern
        self.ignore_case = ignore_case
        flags = _F_IGNORECASE if ignore_case else 0
        # re.error (or RecursionError/OverflowError on absurd input) propagates to the caller
        self.py: re.Pattern[str] = re.compile(pattern, flags)
        tree = _sre_parse.parse(pattern, flags)
        gflags = int(tree.state.flags)
        self.tree = tree
        self.gflags = gflags
        self._splits: dict[Tuple[bool, bool], Optional[List[MatchFn]]] = {}
        self.ngroups = self.py.groups
        self.groupindex = dict(self.py.groupindex)
        self.exact: Optional[MatchFn] = None
        self.exact_nc_src: Optional[str] = None
        self.exact_lead = self.exact_broad = False
        self.unicode_boundary = False
        self.reason: Optional[str] = None
        self.danger: Optional[str] = None
        self.relaxed: Optional[MatchFn] = None
        self.relaxed_src = ""
        self.relaxed_lead = False
        self.relaxed_broad = True
        if _re2mod is None:
            self.reason = f"google-re2 is not importable ({_RE2_ERROR})"
            self.danger = _safe(lambda: _danger(tree))
            return
        # exact
        try:
            em = _Emitter(exact=True, capture=True)
            src = "(?m)" + em.seq(tree, gflags)
            fn, ng = _re2_compile(src)
            if ng != self.ngroups:
                raise _Untranslatable(f"RE2 counts {ng} groups, Python {self.ngroups}")
            nc = _Emitter(exact=True, capture=False).seq(tree, gflags)
            self.exact = fn
            self.exact_nc_src = nc
            self.unicode_boundary = em.unicode_boundary
            self.exact_lead = bool(_lead_literal(tree, gflags, True))
            self.exact_broad = _broad(fn)
        except _Untranslatable as e:
            self.reason = f"it uses {e.args[0]}"
        except ValueError as e:
            self.reason = f"RE2 rejects it ({e})"
        except RecursionError:
            self.reason = "it is nested too deeply for RE2"
        if self.exact is None or self.unicode_boundary:
            self.danger = _safe(lambda: _danger(tree))
            for max_count in (1000, 1):
                try:
                    rsrc = _Emitter(exact=False, capture=False, max_count=max_count).seq(
                        tree, gflags
                    )
                    self.relaxed, _ = _re2_compile("(?m)" + rsrc)
                    self.relaxed_src = rsrc
                    self.relaxed_lead = bool(_lead_literal(tree, gflags, False))
                    self.relaxed_broad = _broad(self.relaxed)
                    break
                except (ValueError, RecursionError):
                    continue
            if self.relaxed is None:  # every line is a candidate
                self.relaxed, _ = _re2_compile("")
                self.relaxed_src = ""
                self.relaxed_broad = True

    @property
    def engine(self) -> str:
        return ENGINE_RE2 if self.exact is not None else ENGINE_RE

    def splits(self, exact: bool, ascii_chunk: bool) -> Optional[List[MatchFn]]:
        """Scan passes that together find every line the pattern (exact or relaxed) can match,
        each starting with a fixed character; None when the pattern does not split so."""
        key = (exact, ascii_chunk)
        if key in self._splits:
            return self._splits[key]
        res: Optional[List[MatchFn]] = None
        try:
            seqs = _expand([(o, a, self.gflags) for o, a in self.tree], exact, ascii_chunk)
            if seqs is not None and 1 < len(seqs) <= _SPLIT_MAX:
                em = _Emitter(exact=exact, capture=False)
                res = [_re2_compile("(?m)" + em.seq3(sq))[0] for sq in seqs]
        except (_Untranslatable, ValueError, RecursionError):
            res = None
        self._splits[key] = res
        return res


def _safe(f: Callable[[], Optional[str]]) -> Optional[str]:
    try:
        return f()
    except RecursionError:
        return "it is nested too deeply to analyse"


_PROBE = b"\x00\x01 \x7f"


def _broad(fn: MatchFn) -> bool:
    """Matches a line of junk: it would make nearly every line a candidate."""
    return fn(_UNANCHORED, _PROBE, 0, len(_PROBE))[0][0] >= 0


@lru_cache(maxsize=512)
def _compile(pattern: str, ignore_case: bool) -> _Compiled:
    return _Compiled(pattern, ignore_case)


# ---------------------------------------------------------------------------------------------
# Rules and the scan plan.

_V_NONE = 0  # the scan's spans are the result
_V_RE2 = 1  # re-run the exact RE2 pattern on the line (captures; or exactness)
_V_PY = 2  # Python re on the decoded line
_V_BOUND = 3  # exact RE2 on ASCII lines, Python re on others (Unicode \b / \B)


class _Rule:
    __slots__ = ("key", "index", "c", "names", "captures")

    def __init__(self, key: Hashable, index: int, trigger: RegexTrigger) -> None:
        self.key = key
        self.index = index
        self.c = _compile(trigger.pattern, bool(trigger.ignore_case))
        self.captures = tuple(trigger.captures)
        items: List[Tuple[str, Optional[int]]] = [
            (name, idx - 1) for name, idx in sorted(self.c.groupindex.items(), key=lambda x: x[1])
        ]
        for i, name in enumerate(self.captures):
            items.append((name, i if i < self.c.ngroups else None))
        self.names: Tuple[Tuple[str, Optional[int]], ...] = tuple(items)

    def named(self, groups: Tuple[Optional[str], ...]) -> dict[str, Optional[str]]:
        return {n: (None if i is None else groups[i]) for n, i in self.names}


class _Pass:
    """One scan over the buffer: ``fn`` finds candidates; members are (rule, verify kind)."""

    __slots__ = ("fn", "members", "set_match")

    def __init__(
        self, fn: MatchFn, members: List[Tuple[_Rule, int]], set_match: Optional[Any] = None
    ) -> None:
        self.fn = fn
        self.members = members
        self.set_match = set_match


_SET_MIN = 4  # alternation groups this big first ask an RE2 Set which members match a line


def _build_plan(rules: Sequence[_Rule], ascii_chunk: bool) -> List[_Pass]:
    solo: List[_Pass] = []
    group: List[Tuple[_Rule, int, str]] = []
    for r in rules:
        c = r.c
        exact_ok = c.exact is not None and (ascii_chunk or not c.unicode_boundary)
        if exact_ok:
            vk = _V_RE2
        elif c.exact is not None:
            vk = _V_BOUND
        else:
            vk = _V_PY
        if exact_ok and (c.exact_lead or c.exact_broad):
            assert c.exact is not None
            solo.append(_Pass(c.exact, [(r, _V_NONE)]))
            continue
        if not exact_ok and (c.relaxed_lead or c.relaxed_broad):
            assert c.relaxed is not None
            solo.append(_Pass(c.relaxed, [(r, vk)]))
            continue
        split = c.splits(exact_ok, ascii_chunk)
        if split is not None:
            solo.extend(_Pass(fn, [(r, vk)]) for fn in split)
        else:
            src = c.exact_nc_src if exact_ok else c.relaxed_src
            assert src is not None
            group.append((r, vk, src))
    passes = solo
    if len(group) == 1 or len(group) > 1 and not _group_pass(group, passes):
        for r, vk, _src in group:
            c = r.c
            if vk == _V_RE2:
                assert c.exact is not None
                passes.append(_Pass(c.exact, [(r, _V_NONE)]))
            else:
                assert c.relaxed is not None
                passes.append(_Pass(c.relaxed, [(r, vk)]))
    return passes


def _group_pass(group: List[Tuple[_Rule, int, str]], passes: List[_Pass]) -> bool:
    src = "(?m)" + "|".join("(?:" + s + ")" for _r, _vk, s in group)
    try:
        fn, _ = _re2_compile(src, max_mem=max(8 << 20, len(group) << 20))
    except ValueError:
        return False
    set_match = None
    if len(group) >= _SET_MIN:
        try:
            assert _re2mod is not None
            s = _re2mod.Set.SearchSet(_re2_options(max(8 << 20, len(group) << 20)))
            for _r, _vk, gsrc in group:
                s.Add("(?m)" + gsrc)
            s.Compile()
            set_match = getattr(s, "_set", s).Match
        except Exception:
            set_match = None
    passes.append(_Pass(fn, [(r, vk) for r, vk, _s in group], set_match))
    return True


class PatternError(ValueError):
    """Some rules' patterns do not compile. ``problems`` = [(key, message)]."""

    def __init__(self, problems: Sequence[Tuple[Hashable, str]]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(f"{k}: {m}" for k, m in self.problems))


def _py_error(pattern: str, e: BaseException) -> str:
    if isinstance(e, re.error):
        return f"invalid regex {pattern!r}: {e}"
    return f"invalid regex {pattern!r}: {type(e).__name__}: {e}"


# ---------------------------------------------------------------------------------------------


class MultiMatcher:
    """Scans chunks with many regex rules at once.

    ``rules``: (key, RegexTrigger) pairs; ``scan`` returns (key, LineMatch) pairs in line
    order, then rule order; each rule matches a line at most once (its first match, with
    ``re.search`` semantics). Raises :class:`PatternError` listing every pattern that does not
    compile (check them first with :func:`compile_check`).
    """

    def __init__(self, rules: Sequence[Tuple[Hashable, RegexTrigger]]) -> None:
        built: List[_Rule] = []
        problems: List[Tuple[Hashable, str]] = []
        for i, (key, trig) in enumerate(rules):
            try:
                built.append(_Rule(key, i, trig))
            except (re.error, RecursionError, OverflowError, ValueError, TypeError) as e:
                problems.append((key, _py_error(trig.pattern, e)))
        if problems:
            raise PatternError(problems)
        self._rules = built
        self._plans: dict[bool, List[_Pass]] = {}
        self._failed_logged = False

    @property
    def keys(self) -> List[Hashable]:
        return [r.key for r in self._rules]

    def engines(self) -> List[Tuple[Hashable, str]]:
        """(key, "re2" | "re") for each rule."""
        return [(r.key, r.c.engine) for r in self._rules]

    def _plan(self, ascii_chunk: bool) -> List[_Pass]:
        plan = self._plans.get(ascii_chunk)
        if plan is None:
            plan = self._plans[ascii_chunk] = _build_plan(self._rules, ascii_chunk)
        return plan

    def scan(self, chunk: Chunk) -> List[Tuple[Hashable, LineMatch]]:
        if not chunk.data or not self._rules:
            return []
        try:
            if _re2mod is None:  # pragma: no cover - degraded installation
                return self._scan_lines(chunk)
            return self._scan(chunk)
        except Exception as e:  # a bug here must not stop the daemon: fall back to re
            if not self._failed_logged:
                self._failed_logged = True
                _log.error("matcher_fast_path_failed", path=chunk.path, error=repr(e))
            return self._scan_lines(chunk)

    # -- fast path ------------------------------------------------------------------------------

    def _scan(self, chunk: Chunk) -> List[Tuple[Hashable, LineMatch]]:
        buf = chunk.data
        if b"\r" in buf:  # one terminator per \r\n and lone \r -> \n (same line contents)
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        ascii_chunk = buf.isascii()
        if not ascii_chunk:
            try:
                buf.decode("utf-8")
            except UnicodeDecodeError:  # so that RE2 sees what Python would see
                buf = buf.decode("utf-8", "replace").encode("utf-8")
        n = len(buf)
        phantom = buf.endswith(b"\n")  # a match at n would be on no line
        hits: List[Tuple[int, int, int, Any]] = []
        passes_with_hits = 0
        find = buf.find
        rfind = buf.rfind
        U = _UNANCHORED
        for ps in self._plan(ascii_chunk):
            fn = ps.fn
            before = len(hits)
            members = ps.members
            pos = 0
            if len(members) == 1 and members[0][1] == _V_NONE:
                idx = members[0][0].index
                append = hits.append
                while pos < n:
                    sp = fn(U, buf, pos, n)
                    p = sp[0][0]
                    if p < 0:
                        break
                    le = find(b"\n", p)
                    if le < 0:
                        if phantom:
                            break
                        le = n
                    append((rfind(b"\n", 0, p) + 1, idx, le, sp))
                    pos = le + 1
            else:
                set_match = ps.set_match
                while pos < n:
                    p = fn(U, buf, pos, n)[0][0]
                    if p < 0:
                        break
                    le = find(b"\n", p)
                    if le < 0:
                        if phantom:
                            break
                        le = n
                    ls = rfind(b"\n", 0, p) + 1
                    if set_match is not None:
                        which = set_match(buf[ls:le])
                        if which:
                            for k in sorted(which):
                                r, vk = members[k]
                                self._verify(r, vk, buf, ls, le, hits)
                    else:
                        for r, vk in members:
                            self._verify(r, vk, buf, ls, le, hits)
                    pos = le + 1
            if len(hits) > before:
                passes_with_hits += 1
        if not hits:
            return []
        if passes_with_hits > 1:
            hits.sort(key=_hit_order)
        return self._results(chunk, buf, hits)

    @staticmethod
    def _verify(
        r: _Rule, vk: int, buf: bytes, ls: int, le: int, hits: List[Tuple[int, int, int, Any]]
    ) -> None:
        c = r.c
        if vk in (_V_RE2, _V_NONE):
            assert c.exact is not None
            sp = c.exact(_UNANCHORED, buf, ls, le)
            if sp[0][0] >= 0:
                hits.append((ls, r.index, le, sp))
            return
        lb = buf[ls:le]
        if vk == _V_BOUND and (c.danger is not None or lb.isascii()):
            assert c.exact is not None
            sp = c.exact(_UNANCHORED, buf, ls, le)
            if sp[0][0] >= 0:
                hits.append((ls, r.index, le, sp))
            return
        m = c.py.search(lb.decode("utf-8", "replace"))
        if m is not None:
            hits.append((ls, r.index, le, m))

    def _results(
        self, chunk: Chunk, buf: bytes, hits: List[Tuple[int, int, int, Any]]
    ) -> List[Tuple[Hashable, LineMatch]]:
        out: List[Tuple[Hashable, LineMatch]] = []
        rules = self._rules
        path = chunk.path
        lineno = chunk.lineno
        count = buf.count
        last = 0
        cur = -1
        prev_idx = -1
        line = ""
        line_ascii = True
        for ls, idx, le, payload in hits:
            if ls == cur and idx == prev_idx:
                continue  # found again by another pass of a split rule
            prev_idx = idx
            if ls != cur:
                lineno += count(b"\n", last, ls)
                last = cur = ls
                line = buf[ls:le].decode("utf-8", "replace")
                line_ascii = len(line) == le - ls
            r = rules[idx]
            if type(payload) is list:
                s, e = payload[0]
                if line_ascii:
                    text = line[s - ls : e - ls]
                    groups = tuple(None if a < 0 else line[a - ls : b - ls] for a, b in payload[1:])
                else:
                    text = buf[s:e].decode("utf-8", "replace")
                    groups = tuple(
                        None if a < 0 else buf[a:b].decode("utf-8", "replace")
                        for a, b in payload[1:]
                    )
            else:
                text = payload.group()
                groups = payload.groups()
            named = r.named(groups) if r.names else {}
            out.append((r.key, LineMatch(path, lineno, line, text, groups, named)))
        return out

    # -- slow path: line by line with Python re (no re2, or a bug above) ------------------------

    def _scan_lines(self, chunk: Chunk) -> List[Tuple[Hashable, LineMatch]]:
        out: List[Tuple[Hashable, LineMatch]] = []
        for i, line in enumerate(_split_lines(chunk.data)):
            for r in self._rules:
                m = r.c.py.search(line)
                if m is not None:
                    groups = m.groups()
                    out.append(
                        (
                            r.key,
                            LineMatch(
                                chunk.path,
                                chunk.lineno + i,
                                line,
                                m.group(),
                                groups,
                                r.named(groups) if r.names else {},
                            ),
                        )
                    )
        return out


def _hit_order(h: Tuple[int, int, int, Any]) -> Tuple[int, int]:
    return (h[0], h[1])


def _split_lines(data: bytes) -> List[str]:
    """The reference split: terminators \\n, \\r\\n, lone \\r; a final terminator ends the
    last line (no empty line after it)."""
    if not data:
        return []
    buf = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    lines = buf.split(b"\n")
    if buf.endswith(b"\n"):
        lines.pop()
    return [ln.decode("utf-8", "replace") for ln in lines]


# ---------------------------------------------------------------------------------------------


def compile_check(trigger: RegexTrigger) -> Tuple[str, Optional[str]]:
    """(engine, message) for ``sidecar check``: engine is "re2", "re" (Python fallback) or
    "invalid" (the pattern does not compile; message says why). The message is None when there
    is nothing to say, else warnings joined with "; "."""
    try:
        c = _compile(trigger.pattern, bool(trigger.ignore_case))
    except (re.error, RecursionError, OverflowError, ValueError, TypeError) as e:
        return ENGINE_ERROR, _py_error(trigger.pattern, e)
    msgs: List[str] = []
    if c.exact is None:
        msgs.append(f"{c.reason}, so it runs on Python re (slower, and without a time limit)")
        if c.danger:
            msgs.append(
                f"{c.danger} can make Python re take exponential time on some lines "
                "(catastrophic backtracking)"
            )
        if c.relaxed_broad:
            msgs.append("nothing to pre-filter lines on: every line is checked with Python re")
    n_caps = len(trigger.captures)
    if n_caps > c.ngroups:
        msgs.append(
            f"captures names {n_caps} groups but the pattern has {c.ngroups}: "
            f"{', '.join(trigger.captures[c.ngroups :])} will be empty"
        )
    dup = set(trigger.captures) & set(c.groupindex)
    for name in sorted(dup):
        if trigger.captures.index(name) + 1 != c.groupindex[name]:
            msgs.append(f"captures name {name!r} is also a different (?P<{name}>...) group")
    try:
        if c.py.search("") is not None and c.py.search("\x00\x01 \x7f") is not None:
            msgs.append("it matches the empty string, so it matches (nearly) every line")
    except RecursionError:  # pragma: no cover
        pass
    return c.engine, ("; ".join(msgs) if msgs else None)


def match_line(
    trigger: RegexTrigger, line: str, *, path: str = "", lineno: int = 1
) -> Optional[LineMatch]:
    """The first match of ``trigger`` in ``line`` (for replay / test-pattern), or None.
    ``line`` is one line; if it holds terminators, the first matching line of it counts.
    Raises PatternError for an invalid pattern."""
    mm = _single(trigger)
    data = line.encode("utf-8", "surrogatepass")
    res = mm.scan(Chunk(path=path, data=data, offset=0, lineno=lineno))
    return res[0][1] if res else None


@lru_cache(maxsize=64)
def _single(trigger: RegexTrigger) -> MultiMatcher:
    return MultiMatcher([(0, trigger)])
