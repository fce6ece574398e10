"""Regexes over whole-line buffers: a :class:`~sidecar.types.Chunk` in, ``LineMatch``-es out.

Patterns are Python ``re`` syntax, and the meaning of a rule is, by definition::

    for each line of the chunk (terminators \\n, \\r\\n and a lone \\r; the line decoded as
    UTF-8 with errors="replace", without its terminator):
        m = re.search(pattern, line, re.IGNORECASE if ignore_case else 0)

This module computes exactly that without looking at most lines from Python:

* Every pattern is parsed with Python's own parser and written out again for RE2
  (google-re2), which runs in linear time. The UTF-8 form has the same meaning as Python's
  (Unicode ``\\d``/``\\w``/``\\s``, Python's case folding, ``^``/``$``/``\\A``/``\\Z`` as line
  anchors, ``.`` and negated classes never crossing a line end). What RE2 cannot say with the
  same meaning (lookaround, backreferences, possessive quantifiers, atomic and conditional
  groups, repeats of something that can match empty, where the two engines differ; counted
  repeats over 1000) runs on Python ``re`` instead, on the candidate lines found by an RE2
  *relaxation* of the pattern (lookarounds dropped, backreferences widened, ...) that
  matches a superset of lines.
* A chunk is scanned as one buffer of raw bytes by *wide* forms of the patterns, compiled as
  Latin-1 so that any byte sequence is valid: exact on ASCII lines, and on other lines a
  superset (a non-ASCII character is any run of bytes >= 0x80). Hits on ASCII lines are
  final; hits on other lines are checked again with the UTF-8 form (on the repaired line
  when it holds invalid UTF-8). So the buffer is never decoded or validated as a whole.
* A rule whose pattern starts with a fixed character gets a pass of its own (RE2 skips to
  candidates with memchr, ~10 GB/s); a pattern that starts with an alternation or a
  case-insensitive letter is split into such passes (then checked on its candidate lines);
  the remaining rules share one pass of an alternation of their patterns. After each hit a
  pass goes on at the start of the next line (each rule matches a line at most once); the
  patterns cannot match a ``\\n``, so a hit found from a line start is that line's first match
  and no line is skipped.
* ``\\r`` terminators become ``\\n`` (on a copy, only for chunks that contain ``\\r``); line
  numbers count terminators exactly.

Known differences from the definition, all deliberate:

* ``\\b``/``\\B`` are ASCII word boundaries in RE2 and Unicode ones in Python: such rules are
  exact on ASCII chunks and checked with Python ``re`` on non-ASCII candidate lines, except
  when the pattern looks able to backtrack catastrophically (:func:`compile_check` says so):
  then RE2's ASCII boundaries are used on those lines too, rather than risk a hang.
* characters that the Python's Unicode database (13.0 in 3.9, 14.0 in 3.11) does not know
  yet but RE2's does are classified by RE2 for ``\\d`` and ``\\w``.
"""

from __future__ import annotations

import re
import sys
import warnings
from functools import lru_cache
from operator import itemgetter
from typing import (
    Any,
    Callable,
    Collection,
    Dict,
    FrozenSet,
    Hashable,
    List,
    Optional,
    Sequence,
    Tuple,
)

from sidecar.budget import BudgetExceeded, SearchBudget
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
except Exception as _e:  # pragma: no cover - only where the wheel is missing
    _re2mod = None
    _RE2_ERROR = f"{type(_e).__name__}: {_e}"

__all__ = [
    "ENGINE_INVALID",
    "ENGINE_RE",
    "ENGINE_RE2",
    "MultiMatcher",
    "PatternError",
    "compile_check",
    "match_line",
]

ENGINE_RE2 = "re2"
ENGINE_RE = "re"
ENGINE_INVALID = "invalid"

_log = get_logger(__name__)

# ---------------------------------------------------------------------------------------------
# RE2 access. The pybind11 object behind re2.compile() has Match(anchor, buffer, pos, endpos)
# -> [(start, end) for each group], zero-copy on bytes; the public wrapper adds ~1 us a call.

Span = Tuple[int, int]
MatchFn = Callable[[Any, bytes, int, int], List[Span]]
_NO_SPAN: Span = (-1, -1)

if _re2mod is not None:
    try:
        _UNANCHORED: Any = _re2mod._re2.RE2.Anchor.UNANCHORED
    except AttributeError:  # pragma: no cover - a binding without the private module
        _UNANCHORED = None
else:  # pragma: no cover
    _UNANCHORED = None


def _re2_options(latin1: bool, max_mem: int = 8 << 20) -> Any:
    assert _re2mod is not None
    opts = _re2mod.Options()
    opts.log_errors = False  # else RE2 writes compile errors to stderr itself
    opts.max_mem = max_mem
    if latin1:
        opts.encoding = _re2mod.Options.Encoding.LATIN1
    return opts


def _re2_compile(src: str, latin1: bool, max_mem: int = 8 << 20) -> Tuple[MatchFn, int]:
    """Compile ``src`` (ASCII text: everything else is escaped) -> (match function, number of
    groups). Raises ValueError with RE2's message."""
    assert _re2mod is not None
    try:
        rx = _re2mod.compile(src.encode("ascii"), _re2_options(latin1, max_mem))
    except Exception as e:  # re2.error; its message is bytes
        msg = e.args[0] if e.args else e
        if isinstance(msg, bytes):
            msg = msg.decode("utf-8", "replace")
        raise ValueError(str(msg)) from None
    ngroups = int(rx.groups)
    raw = getattr(rx, "_regexp", None)
    if raw is not None and _UNANCHORED is not None and hasattr(raw, "Match"):
        return raw.Match, ngroups

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
_NEVER = "[^\\x{0}-\\x{10ffff}]"  # an empty class (e.g. for a literal \n: lines have none)
_NEVER_WIDE = "[^\\x{0}-\\x{ff}]"
_WIDE_CHAR = "[\\x{80}-\\x{ff}]+"  # stands for any non-ASCII character in the wide forms
_WIDE_ANY = "(?:[\\x{0}-\\x{9}\\x{b}-\\x{7f}]|" + _WIDE_CHAR + ")"

#: (?i) in Python also matches these for an ASCII letter. RE2 agrees for k and s; Python puts
#: I, i, dotted I and dotless i together, RE2 only I and i (we emit Python's meaning)
_EXOTIC_FOLDS: Dict[str, Tuple[int, ...]] = {"k": (0x212A,), "s": (0x17F,), "i": (0x130, 0x131)}
_DOTI = (0x49, 0x69, 0x130, 0x131)

# Python's Unicode \s (str.isspace) as ranges, without \n (lines never contain it).
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


#: before Python 3.14, \\B never matches an empty string (RE2's does, at 0)
_PY_NB_EMPTY = sys.version_info >= (3, 14)


def _has_non_boundary(items: Any) -> bool:
    for op, av in items:
        if op is _AT and av is _AT_NON_BOUNDARY:
            return True
        if any(_has_non_boundary(ch) for ch in _children(op, av)):
            return True
    return False


class _Untranslatable(Exception):
    """The pattern has no RE2 equivalent; ``args[0]`` says why (for ``sidecar check``)."""


def _esc(c: int) -> str:
    if c < 0x80 and chr(c).isalnum():
        return chr(c)
    return f"\\x{{{c:x}}}"


def _esc_utf8(c: int) -> str:
    """A code point as the Latin-1 escapes of its UTF-8 bytes (for the wide forms)."""
    if c < 0x80:
        return _esc(c)
    return "".join(f"\\x{{{b:x}}}" for b in chr(c).encode("utf-8"))


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


def _ascii_orbit(c: int, flags: int) -> Tuple[int, ...]:
    """The characters a class must contain for ASCII ``c`` to match it under ``flags``."""
    ch = chr(c)
    if not flags & _F_IGNORECASE or not ch.isalpha():
        return (c,)
    lo = ch.lower()
    base = (ord(lo), ord(ch.upper()))
    if flags & _F_ASCII:
        return base
    return base + _EXOTIC_FOLDS.get(lo, ())


class _Class:
    """A parsed character class: explicit ranges plus Unicode digit/word categories."""

    def __init__(self, items: Any, flags: int) -> None:
        self.negate = False
        self.ranges: List[Span] = []
        self.digit = self.word = self.not_digit = self.not_word = False
        ascii_mode = bool(flags & _F_ASCII)
        for op, av in items:
            if op is _NEGATE:
                self.negate = True
            elif op is _LITERAL:
                self.ranges.append((av, av))
            elif op is _RANGE:
                self.ranges.append((av[0], av[1]))
            elif op is _CATEGORY:
                name = str(av)
                neg = name.startswith("CATEGORY_NOT_")
                base = name[len("CATEGORY_NOT_") :] if neg else name[len("CATEGORY_") :]
                if base == "SPACE":
                    rs = _ASCII_SPACE if ascii_mode else _SPACE_RANGES
                    self.ranges.extend(_complement(rs) if neg else rs)
                elif ascii_mode and base in ("DIGIT", "WORD"):
                    rs = _ASCII_DIGIT if base == "DIGIT" else _ASCII_WORD
                    self.ranges.extend(_complement(rs) if neg else rs)
                elif base == "DIGIT":
                    if neg:
                        self.not_digit = True
                    else:
                        self.digit = True
                elif base == "WORD":
                    if neg:
                        self.not_word = True
                    else:
                        self.word = True
                else:
                    raise _Untranslatable(f"the class {name}")
            else:
                raise _Untranslatable(f"the class item {op}")

    def base_contains(self, c: int) -> bool:
        """Is ``c`` in the class before negation (and before case folding)?"""
        if _contains(self.ranges, c):
            return True
        ch = chr(c)
        if (self.digit and ch.isdecimal()) or (self.word and (ch.isalnum() or c == 0x5F)):
            return True
        if self.not_digit and not ch.isdecimal():
            return True
        return self.not_word and not (ch.isalnum() or c == 0x5F)

    def has_non_ascii(self) -> bool:
        return (
            self.negate
            or any(hi >= 0x80 for _lo, hi in self.ranges)
            or self.digit
            or self.word
            or self.not_digit
            or self.not_word
        )


class _Emitter:
    """Writes the RE2 form of a parsed pattern.

    exact=True: the same meaning on a line, or raise _Untranslatable; exact=False: a
    relaxation (matches every line the pattern matches, maybe more) that always exists.
    capture=False turns groups into non-capturing ones. wide=True: the Latin-1 form (see the
    module docstring): the same meaning on ASCII lines, a superset on others.
    """

    def __init__(self, exact: bool, capture: bool, wide: bool, max_count: int = 1000) -> None:
        self.exact = exact
        self.capture = capture
        self.wide = wide
        self.max_count = max_count
        self.never = _NEVER_WIDE if wide else _NEVER
        self.unicode_boundary = False  # an exact form uses \b/\B with an ASCII-only meaning

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
        if op is _ANY:  # with or without DOTALL: a line has no \n
            return _WIDE_ANY if self.wide else "[^\\n]"
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
        if self.exact and hi != 1 and _nullable(body) and not _zero_width(body):
            # RE2 and Python differ on empty iterations: (a*)+ on "aa" gives group 1 = ""
            # in Python and "aa" in RE2; (?:b+|\w*?)* on "b1" matches "b" and "b1"
            raise _Untranslatable("a repeated part that can match the empty string")
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
            return self.never
        fold = bool(flags & _F_IGNORECASE)
        if self.wide:
            if c >= 0x80:
                if fold and not flags & _F_ASCII:
                    return _WIDE_CHAR
                return _esc_utf8(c)
            orbit = _ascii_orbit(c, flags)
            if len(orbit) == 1:
                return _esc(c)
            ascii_part = "[" + "".join(_esc(o) for o in orbit if o < 0x80) + "]"
            others = [_esc_utf8(o) for o in orbit if o >= 0x80]
            return "(?:" + "|".join([ascii_part, *others]) + ")" if others else ascii_part
        if not fold:
            return _esc(c)
        if flags & _F_ASCII:
            ch = chr(c)
            if c < 0x80 and ch.isalpha():
                return "[" + _esc(ord(ch.lower())) + _esc(ord(ch.upper())) + "]"
            return _esc(c)
        if c in _DOTI:
            return "[Ii\\x{130}\\x{131}]"
        return "(?i:" + _esc(c) + ")"

    def klass(self, items: Any, flags: int) -> str:
        try:
            k = _Class(items, flags)
        except _Untranslatable as e:
            self._no(str(e.args[0]))
            return _WIDE_ANY if self.wide else "[^\\n]"
        if self.wide:
            return self._wide_class(k, flags)
        return self._utf8_class(k, flags)

    def _wide_class(self, k: _Class, flags: int) -> str:
        members = [
            c
            for c in range(0x80)
            if c != _NL and any(k.base_contains(o) for o in _ascii_orbit(c, flags)) != k.negate
        ]
        non_ascii = k.has_non_ascii() or (
            flags & _F_IGNORECASE
            and not flags & _F_ASCII
            and any(chr(c).isalpha() for c in members)
        )
        parts = []
        if members:
            parts.append("[" + _ranges_src(_normalize([(c, c) for c in members])) + "]")
        if non_ascii:
            parts.append(_WIDE_CHAR)
        if not parts:
            return self.never
        return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"

    def _utf8_class(self, k: _Class, flags: int) -> str:
        ranges = k.ranges
        fold = bool(flags & _F_IGNORECASE)
        if fold and flags & _F_ASCII:
            ranges = _ascii_fold(ranges)
            fold = False
        elif fold and any(_contains(ranges, c) for c in _DOTI):
            ranges = ranges + [(c, c) for c in _DOTI]
        ranges = _normalize(ranges)
        tokens = ("\\p{Nd}" if k.digit else "") + ("\\p{L}\\p{N}_" if k.word else "")
        body = _ranges_src(ranges) + tokens
        if not k.negate:
            alts = []
            if body:
                alts.append("[" + body + "]")
            if k.not_digit:
                alts.append("[^\\p{Nd}\\n]")
            if k.not_word:
                alts.append("[^\\p{L}\\p{N}_\\n]")
            if not alts:
                return self.never
            src = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        else:
            rest = body + ("\\P{Nd}" if k.not_digit else "")
            if k.not_word:  # [^\W...]: the word characters that are none of the rest
                parts = ["[^\\PL" + rest + "\\n]", "[^\\PN" + rest + "\\n]"]
                if not _contains(ranges, 0x5F) and not k.word:
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


def _first_chars(items: Any) -> Optional[FrozenSet[int]]:
    """Code points a match can start with (-1: it can be empty); None = unknown/anything."""
    for op, av in items:
        if op is _LITERAL:
            return frozenset((av,))
        if op is _SUBPATTERN:
            return _first_chars(av[3])
        if op is _IN and all(o is _LITERAL for o, _ in av):
            return frozenset(a for _, a in av)
        return None
    return frozenset((-1,))


def _zero_width(items: Any) -> bool:
    for op, av in items:
        if op is _SUBPATTERN:
            if not _zero_width(av[3]):
                return False
        elif op is _BRANCH:
            if not all(_zero_width(alt) for alt in av[1]):
                return False
        elif op is not _AT and op is not _ASSERT and op is not _ASSERT_NOT:
            return False
    return True


def _danger(items: Any, in_repeat: bool = False) -> Optional[str]:
    """Why the pattern may backtrack catastrophically in Python re, or None. A heuristic:
    a repeat (of 3 or more) around a variable repeat, around something that can match empty
    and also consume, or around an alternation whose branches can start alike."""
    for op, av in items:
        if op is _MAX_REPEAT or op is _MIN_REPEAT:
            lo, hi, body = av
            if in_repeat and hi != lo:
                return "nested quantifiers (like (a+)+ or (.*)*)"
            if hi is _MAXREPEAT or hi == _MAXREPEAT or hi >= 3:
                if _nullable(body) and not _zero_width(body):
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
    """An alternation (outside nested repeats) where two branches can start alike."""
    for op, av in items:
        if op is _BRANCH:
            firsts = [_first_chars(alt) for alt in av[1]]
            for i in range(len(firsts)):
                for j in range(i + 1, len(firsts)):
                    a, b = firsts[i], firsts[j]
                    if a is None or b is None or a & b:
                        return "a repeated alternation whose branches overlap (like (a|a)*)"
        if op not in _REPEATS:
            for ch in _children(op, av):
                r = _branch_overlap(ch)
                if r:
                    return r
    return None


# ---------------------------------------------------------------------------------------------
# Lead characters. RE2 finds candidates fast (memchr) when every match starts with one fixed
# byte. _expand turns a pattern into a few such sequences when it can (alternations, a
# case-insensitive first letter) so that each gets its own fast pass.

_SPLIT_MAX = 8
Triple = Tuple[Any, Any, int]


def _fold_variants(c: int, flags: int, ascii_chunk: bool) -> Optional[List[int]]:
    if c >= 0x80:
        return [c] if flags & _F_ASCII else None
    orbit = _ascii_orbit(c, flags)
    if ascii_chunk:  # the exotic partners are not ASCII
        return [o for o in orbit if o < 0x80]
    return list(orbit)


def _skippable(op: Any, av: Any, fl: int, exact: bool) -> bool:
    """Is this item dropped (zero-width) in the relaxed form?"""
    if exact:
        return False
    if op is _ASSERT or op is _ASSERT_NOT:
        return True
    return op is _AT and (av is _AT_BOUNDARY or av is _AT_NON_BOUNDARY) and not fl & _F_ASCII


def _expand(
    seq: List[Triple], exact: bool, ascii_chunk: bool, depth: int = 0
) -> Optional[List[List[Triple]]]:
    """Sequences that each start with a case-sensitive literal and together match wherever
    ``seq`` matches; None when there is no small set of them."""
    if depth > 50:
        return None
    i = 0
    while i < len(seq) and _skippable(*seq[i], exact):
        i += 1
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


def _lead_literal(items: Any, flags: int, exact: bool) -> bool:
    """Does every match begin with one fixed character (so RE2 can skip with memchr)?"""
    seqs = _expand([(o, a, flags) for o, a in items], exact, True)
    return seqs is not None and len(seqs) == 1


# ---------------------------------------------------------------------------------------------
# One compiled pattern (shared by every rule with the same pattern and ignore_case).


class _Compiled:
    def __init__(self, pattern: str, ignore_case: bool) -> None:
        self.pattern = pattern
        flags = _F_IGNORECASE if ignore_case else 0
        # re.error (RecursionError, OverflowError on absurd input) goes to the caller; the
        # warnings Python's parser gives (FutureWarning "Possible nested set": a POSIX
        # class such as [[:alpha:]]) are kept for `sidecar check`, never printed
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.py: re.Pattern[str] = re.compile(pattern, flags)
            tree = _sre_parse.parse(pattern, flags)
        self.py_warnings: Tuple[str, ...] = tuple(sorted({str(w.message) for w in caught}))
        gflags = int(tree.state.flags)
        self.tree = tree
        self.gflags = gflags
        self.ngroups: int = self.py.groups
        self.groupindex: Dict[str, int] = dict(self.py.groupindex)
        self.reason: Optional[str] = None  # why there is no exact RE2 form
        self.danger: Optional[str] = None  # why Python re might backtrack badly
        self.unicode_boundary = False
        # empty lines are checked with Python re (see _PY_NB_EMPTY)
        self.nb_empty = not _PY_NB_EMPTY and _has_non_boundary(tree)
        # exact forms: UTF-8 (checks) and wide (scans); None when RE2 cannot say it
        self.exact: Optional[MatchFn] = None
        self.wide: Optional[MatchFn] = None
        self.wide_src = ""  # without groups, for alternations
        self.wide_lead = False
        self.wide_broad = False
        # the wide relaxed form, for rules checked on their candidate lines
        self.relaxed: Optional[MatchFn] = None
        self.relaxed_src = ""
        self.relaxed_lead = False
        self.relaxed_broad = True
        self._splits: Dict[Tuple[bool, bool], Optional[List[MatchFn]]] = {}
        if _re2mod is None:
            self.reason = f"google-re2 is not importable ({_RE2_ERROR})"
            self.danger = _safe(lambda: _danger(tree))
            return
        try:
            em = _Emitter(exact=True, capture=True, wide=False)
            fn, ng = _re2_compile("(?m)" + em.seq(tree, gflags), latin1=False)
            if ng != self.ngroups:
                raise _Untranslatable(f"{ng} groups for RE2 and {self.ngroups} for Python")
            self.exact = fn
            self.unicode_boundary = em.unicode_boundary
        except _Untranslatable as e:
            self.reason = f"it uses {e.args[0]}"
        except ValueError as e:
            self.reason = f"RE2 rejects it ({e})"
        except RecursionError:
            self.reason = "it is nested too deeply for RE2"
        if self.exact is not None:
            try:
                wsrc = _Emitter(exact=True, capture=True, wide=True).seq(tree, gflags)
                wfn, wng = _re2_compile("(?m)" + wsrc, latin1=True)
                self.wide_src = _Emitter(exact=True, capture=False, wide=True).seq(tree, gflags)
                if wng == ng:
                    self.wide = wfn
                    self.wide_lead = _lead_literal(tree, gflags, True)
                    self.wide_broad = _broad(wfn)
            except (_Untranslatable, ValueError, RecursionError):
                self.wide = None
        if self.exact is None or self.unicode_boundary or self.wide is None:
            self.danger = _safe(lambda: _danger(tree))
            for max_count in (1000, 1):
                try:
                    em = _Emitter(exact=False, capture=False, wide=True, max_count=max_count)
                    rsrc = em.seq(tree, gflags)
                    self.relaxed, _ = _re2_compile("(?m)" + rsrc, latin1=True)
                    self.relaxed_src = rsrc
                    self.relaxed_lead = _lead_literal(tree, gflags, False)
                    self.relaxed_broad = _broad(self.relaxed)
                    break
                except (ValueError, RecursionError):
                    continue
            if self.relaxed is None:  # every line is a candidate
                self.relaxed, _ = _re2_compile("", latin1=True)
                self.relaxed_src = ""
                self.relaxed_broad = True

    @property
    def engine(self) -> str:
        return ENGINE_RE2 if self.exact is not None else ENGINE_RE

    def splits(self, exact: bool, ascii_chunk: bool) -> Optional[List[MatchFn]]:
        """Fast passes (wide forms without groups) that together find every line the
        pattern (exact or relaxed form) matches; None when it does not split that way."""
        key = (exact, ascii_chunk)
        if key in self._splits:
            return self._splits[key]
        res: Optional[List[MatchFn]] = None
        try:
            seqs = _expand([(o, a, self.gflags) for o, a in self.tree], exact, ascii_chunk)
            if seqs is not None and 1 < len(seqs) <= _SPLIT_MAX:
                em = _Emitter(exact=exact, capture=False, wide=True)
                res = [_re2_compile("(?m)" + em.seq3(sq), latin1=True)[0] for sq in seqs]
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
    """Does it match a line of junk? Then nearly every line is a candidate."""
    return fn(_UNANCHORED, _PROBE, 0, len(_PROBE))[0][0] >= 0


@lru_cache(maxsize=512)
def _compile(pattern: str, ignore_case: bool) -> _Compiled:
    return _Compiled(pattern, ignore_case)


# ---------------------------------------------------------------------------------------------
# Rules and scan plans.

_LM_FIELDS = ("path", "lineno", "line", "text", "groups", "named")


def _lm_fast_ok() -> bool:
    """LineMatch is a plain frozen dataclass with exactly these fields (no slots, no
    __post_init__): then an instance can be filled in directly, 2-3x faster than through its
    generated __init__ (which calls object.__setattr__ once per field)."""
    import dataclasses

    try:
        names = tuple(f.name for f in dataclasses.fields(LineMatch))
    except TypeError:  # pragma: no cover
        return False
    return (
        names == _LM_FIELDS
        and "__slots__" not in LineMatch.__dict__
        and not hasattr(LineMatch, "__post_init__")
    )


def _new_line_match_fast(
    path: str,
    lineno: int,
    line: str,
    text: str,
    groups: Tuple[Optional[str], ...],
    named: Dict[str, Optional[str]],
) -> LineMatch:
    lm = object.__new__(LineMatch)
    lm.__dict__.update(path=path, lineno=lineno, line=line, text=text, groups=groups, named=named)
    return lm


_new_line_match: Callable[..., LineMatch] = _new_line_match_fast if _lm_fast_ok() else LineMatch

# How a candidate becomes a result:
_V_NONE = 0  # the wide exact form's spans are the result on an ASCII line (else: _V_RE2)
_V_RE2 = 1  # run the UTF-8 exact form on the line
_V_PY = 2  # Python re on the decoded line
_V_BOUND = 3  # UTF-8 exact form on an ASCII line, Python re on others (Unicode \b, \B)

Hit = Tuple[int, int, int, int, Any]  # line start, rule index, line end, _V_*, spans or None
_hit_order = itemgetter(0, 1)


def _no_names(groups: Tuple[Optional[str], ...]) -> Dict[str, Optional[str]]:
    return {}


class _Rule:
    __slots__ = ("key", "index", "c", "named")

    def __init__(self, key: Hashable, index: int, trigger: RegexTrigger) -> None:
        self.key = key
        self.index = index
        self.c = _compile(trigger.pattern, bool(trigger.ignore_case))
        items: List[Tuple[str, Optional[int]]] = [
            (name, idx - 1) for name, idx in sorted(self.c.groupindex.items(), key=itemgetter(1))
        ]
        for i, name in enumerate(trigger.captures):
            items.append((name, i if i < self.c.ngroups else None))
        names = tuple(items)
        #: groups -> LineMatch.named
        self.named: Callable[[Tuple[Optional[str], ...]], Dict[str, Optional[str]]]
        if not names:
            self.named = _no_names
        elif len(names) == 1 and names[0][1] == 0:
            only = names[0][0]
            self.named = lambda g: {only: g[0]}
        else:
            self.named = lambda g: {n: (None if i is None else g[i]) for n, i in names}


class _Pass:
    """One scan of the buffer: ``fn`` finds candidates for ``members`` ((rule, _V_*))."""

    __slots__ = ("fn", "members", "set_match", "whole")

    def __init__(
        self, fn: MatchFn, members: List[Tuple[_Rule, int]], set_match: Optional[Any] = None
    ) -> None:
        self.fn = fn
        self.members = members
        self.set_match = set_match
        #: no other pass of the plan looks for these rules (a split rule has several passes,
        #: whose hits on one line are merged later)
        self.whole = False


_SET_MIN = 4  # alternation groups this big ask an RE2 Set which members a line may match


def _build_plan(rules: Sequence[_Rule], ascii_chunk: bool) -> List[_Pass]:
    passes: List[_Pass] = []
    group: List[Tuple[_Rule, int, str]] = []
    for r in rules:
        c = r.c
        exact_ok = c.wide is not None and (ascii_chunk or not c.unicode_boundary)
        if exact_ok:
            vk = _V_RE2
        elif c.exact is not None and (c.unicode_boundary and not ascii_chunk):
            vk = _V_BOUND
        elif c.exact is not None:
            vk = _V_RE2
        else:
            vk = _V_PY
        if exact_ok and (c.wide_lead or c.wide_broad):
            assert c.wide is not None
            passes.append(_Pass(c.wide, [(r, _V_NONE)]))
            continue
        if not exact_ok and (c.relaxed_lead or c.relaxed_broad):
            assert c.relaxed is not None
            passes.append(_Pass(c.relaxed, [(r, vk)]))
            continue
        split = c.splits(exact_ok, ascii_chunk)
        if split is not None:
            passes.extend(_Pass(fn, [(r, vk)]) for fn in split)
        else:
            group.append((r, vk, c.wide_src if exact_ok else c.relaxed_src))
    if len(group) == 1 or (len(group) > 1 and not _group_pass(group, passes)):
        for r, vk, _src in group:
            c = r.c
            if vk == _V_RE2 and c.wide is not None:
                passes.append(_Pass(c.wide, [(r, _V_NONE)]))
            else:
                assert c.relaxed is not None
                passes.append(_Pass(c.relaxed, [(r, vk)]))
    seen: Dict[int, int] = {}
    for ps in passes:
        for r, _vk in ps.members:
            seen[r.index] = seen.get(r.index, 0) + 1
    for ps in passes:
        ps.whole = all(seen[r.index] == 1 for r, _vk in ps.members)
    return passes


def _group_pass(group: List[Tuple[_Rule, int, str]], passes: List[_Pass]) -> bool:
    max_mem = max(8 << 20, len(group) << 20)
    try:
        src = "(?m)" + "|".join("(?:" + s + ")" for _r, _vk, s in group)
        fn, _ = _re2_compile(src, latin1=True, max_mem=max_mem)
    except ValueError:
        return False
    set_match = None
    if len(group) >= _SET_MIN:
        try:
            assert _re2mod is not None
            s = _re2mod.Set.SearchSet(_re2_options(True, max_mem))
            for _r, _vk, gsrc in group:
                s.Add(("(?m)" + gsrc).encode("ascii"))
            s.Compile()
            set_match = getattr(s, "_set", s).Match
        except Exception:
            set_match = None
    passes.append(_Pass(fn, [(r, vk) for r, vk, _s in group], set_match))
    return True


class PatternError(ValueError):
    """Some rules' patterns do not compile. ``problems`` = ((key, message), ...)."""

    def __init__(self, problems: Sequence[Tuple[Hashable, str]]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(f"{k}: {m}" for k, m in self.problems))


_COMPILE_ERRORS = (re.error, RecursionError, OverflowError, ValueError, TypeError)


def _py_error(pattern: str, e: BaseException) -> str:
    if isinstance(e, re.error):
        return f"invalid regex {pattern!r}: {e}"
    return f"invalid regex {pattern!r}: {type(e).__name__}: {e}"


# ---------------------------------------------------------------------------------------------


class MultiMatcher:
    """Scans chunks with many regex rules at once.

    ``rules``: (key, RegexTrigger) pairs. :meth:`scan` returns (key, LineMatch) pairs in line
    order, then rule order; a rule matches a line at most once (its first match, with
    ``re.search`` semantics). Raises :class:`PatternError` listing every pattern that Python
    cannot compile (:func:`compile_check` says the same per trigger).

    ``time_limit``: seconds of CPU time one Python ``re`` search (a rule RE2 cannot run, on
    one line) may take; 0 = no limit. A line that runs out of it does not match that rule and
    is put in :attr:`timed_out` as (key, path, line number), which the caller takes with
    :meth:`take_timed_out`.
    """

    def __init__(
        self, rules: Sequence[Tuple[Hashable, RegexTrigger]], time_limit: float = 0.0
    ) -> None:
        built: List[_Rule] = []
        problems: List[Tuple[Hashable, str]] = []
        for i, (key, trig) in enumerate(rules):
            try:
                built.append(_Rule(key, i, trig))
            except _COMPILE_ERRORS as e:
                problems.append((key, _py_error(trig.pattern, e)))
        if problems:
            raise PatternError(problems)
        self._rules = built
        self._keys = [r.key for r in built]
        self._named = [r.named for r in built]
        self._any_nb_empty = any(r.c.nb_empty for r in built)
        self._plans: Dict[bool, List[_Pass]] = {}
        self._failed_logged = False
        self._budget = SearchBudget(time_limit)
        #: (key, path, line number) of the lines a Python re search gave up on
        self.timed_out: List[Tuple[Hashable, str, int]] = []

    def take_timed_out(self) -> List[Tuple[Hashable, str, int]]:
        """:attr:`timed_out` since the last call (and forget it)."""
        out, self.timed_out = self.timed_out, []
        return out

    def engines(self) -> List[Tuple[Hashable, str]]:
        """(key, "re2" | "re") for each rule, in order."""
        return [(r.key, r.c.engine) for r in self._rules]

    def _plan(self, ascii_chunk: bool) -> List[_Pass]:
        plan = self._plans.get(ascii_chunk)
        if plan is None:
            plan = self._plans[ascii_chunk] = _build_plan(self._rules, ascii_chunk)
        return plan

    def scan(
        self,
        chunk: Chunk,
        mute: Collection[Hashable] = (),
        counts: Optional[Dict[Hashable, int]] = None,
    ) -> List[Tuple[Hashable, LineMatch]]:
        """Every (rule key, LineMatch) of the chunk's lines. Never raises for any content.

        ``mute``: keys whose matches the caller will only count (a rate-limited or paused
        watcher): for these no LineMatch is built; the number of lines each matched is added
        to ``counts`` instead (a key that matched nothing is left out)."""
        if not chunk.data or not self._rules:
            return []
        muted: Dict[int, int] = {}
        if mute:
            muted = {i: 0 for i, k in enumerate(self._keys) if k in mute}
        try:
            # (no re2: a degraded installation goes line by line)
            out = self._scan_lines(chunk) if _re2mod is None else self._scan(chunk, muted)
        except Exception as e:  # a bug here must not stop the daemon: go line by line
            if not self._failed_logged:
                self._failed_logged = True
                _log.error("matcher_fast_path_failed", path=chunk.path, error=repr(e))
            out = self._scan_lines(chunk)
            muted = dict.fromkeys(muted, 0)
        finally:
            self._budget.done()
        if not muted:
            return out
        keys = self._keys
        # what the paths that build every match (line by line, or a line that needed a
        # second look) left in: counted here
        quiet = {keys[i]: i for i in muted}
        if any(k in quiet for k, _m in out):
            kept: List[Tuple[Hashable, LineMatch]] = []
            for k, m in out:
                i = quiet.get(k)
                if i is None:
                    kept.append((k, m))
                else:
                    muted[i] += 1
            out = kept
        if counts is not None:
            for i, n in muted.items():
                if n:
                    counts[keys[i]] = counts.get(keys[i], 0) + n
        return out

    # -- the fast path ----------------------------------------------------------------------

    def _scan(self, chunk: Chunk, muted: Dict[int, int]) -> List[Tuple[Hashable, LineMatch]]:
        buf = chunk.data
        if b"\r" in buf:  # one terminator per \r\n and lone \r -> \n (line contents unchanged)
            if _CRLF(_UNANCHORED, buf, 0, len(buf))[0][0] >= 0:
                buf = buf.replace(b"\r\n", b"\n")
            buf = buf.replace(b"\r", b"\n")
        n = len(buf)
        phantom = buf.endswith(b"\n")  # a match at n is on no line
        hits: List[Hit] = []
        passes_with_hits = 0
        find = buf.find
        rfind = buf.rfind
        U = _UNANCHORED
        ascii_chunk = buf.isascii()
        for ps in self._plan(ascii_chunk):
            fn = ps.fn
            before = len(hits)
            members = ps.members
            append = hits.append
            pos = 0
            if len(members) == 1:
                r, vk = members[0]
                idx = r.index
                keep = vk == _V_NONE
                if idx in muted and keep and ps.whole and not r.c.nb_empty:
                    # only counted, and the pass's spans are final on an ASCII line: count
                    # such lines, build nothing; another line gets its second look below
                    found = 0
                    while pos < n:
                        sp = fn(U, buf, pos, n)
                        p, e = sp[0]
                        if p < 0:
                            break
                        le = find(b"\n", e)
                        if le < 0:
                            if phantom:
                                break
                            le = n
                        if ascii_chunk:
                            found += 1
                        else:
                            ls = rfind(b"\n", 0, p) + 1
                            if buf[ls:le].isascii():
                                found += 1
                            else:
                                append((ls, idx, le, vk, sp))
                        pos = le + 1
                    muted[idx] += found
                    if len(hits) > before:
                        passes_with_hits += 1
                    continue
                while pos < n:
                    sp = fn(U, buf, pos, n)
                    p, e = sp[0]
                    if p < 0:
                        break
                    le = find(b"\n", e)  # the match never holds a \n
                    if le < 0:
                        if phantom:
                            break
                        le = n
                    append((rfind(b"\n", 0, p) + 1, idx, le, vk, sp if keep else None))
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
                        for k in sorted(set_match(buf[ls:le]) or ()):
                            r, vk = members[k]
                            append((ls, r.index, le, vk, None))
                    else:
                        for r, vk in members:
                            append((ls, r.index, le, vk, None))
                    pos = le + 1
            if len(hits) > before:
                passes_with_hits += 1
        if not hits:
            return []
        if passes_with_hits > 1:
            hits.sort(key=_hit_order)
        return self._results(chunk, buf, hits, muted)

    def _results(
        self, chunk: Chunk, buf: bytes, hits: List[Hit], muted: Dict[int, int]
    ) -> List[Tuple[Hashable, LineMatch]]:
        out: List[Tuple[Hashable, LineMatch]] = []
        append = out.append
        rules = self._rules
        keys = self._keys
        named = self._named
        any_nb = self._any_nb_empty
        path = chunk.path
        lineno = chunk.lineno
        count = buf.count
        U = _UNANCHORED
        new = _new_line_match
        search = self._budget.search
        last = 0
        cur = -1
        prev_idx = -1
        line = ""
        fast = True  # an ASCII line: the wide forms' spans are final, offsets are chars
        src = buf  # what spans index: the buffer, or the repaired line
        base = 0  # where the line starts in src
        end = 0
        for ls, idx, le, vk, spans in hits:
            if ls != cur:
                lineno += count(b"\n", last, ls)
                last = cur = ls
                lb = buf[ls:le]
                src, base, end = buf, ls, le
                try:
                    line = lb.decode("utf-8")
                    fast = len(line) == le - ls and (not any_nb or le > ls)
                except UnicodeDecodeError:
                    line = lb.decode("utf-8", "replace")
                    fast = False
                    src = line.encode("utf-8")
                    base, end = 0, len(src)
            elif idx == prev_idx:
                continue  # found again by another pass of a split rule
            prev_idx = idx
            if vk == _V_NONE and fast:  # the common case, kept short
                s, e = spans[0]
                ns = len(spans)
                if ns == 1:
                    groups: Tuple[Optional[str], ...] = ()
                elif ns == 2:
                    a, b = spans[1]
                    groups = (None if a < 0 else line[a - base : b - base],)
                else:
                    groups = tuple(
                        None if a < 0 else line[a - base : b - base] for a, b in spans[1:]
                    )
                append(
                    (
                        keys[idx],
                        new(
                            path,
                            lineno,
                            line,
                            line[s - base : e - base],
                            groups,
                            named[idx](groups),
                        ),
                    )
                )
                continue
            c = rules[idx].c
            ascii_line = len(line) == end - base
            if c.nb_empty and not line:
                vk = _V_PY
            if vk == _V_NONE and ascii_line:
                pass
            elif vk in (_V_RE2, _V_NONE) or (vk == _V_BOUND and (ascii_line or c.danger)):
                assert c.exact is not None
                spans = c.exact(U, src, base, end)
                if spans[0][0] < 0:
                    continue
            else:  # Python re on the decoded line, within its CPU time
                try:
                    m = search(c.py, line)
                except BudgetExceeded:
                    self.timed_out.append((keys[idx], path, lineno))
                    continue
                if m is None:
                    continue
                groups = m.groups()
                append((keys[idx], new(path, lineno, line, m.group(), groups, named[idx](groups))))
                continue
            s, e = spans[0]
            if ascii_line:
                text = line[s - base : e - base]
                groups = tuple(None if a < 0 else line[a - base : b - base] for a, b in spans[1:])
            else:
                text = src[s:e].decode("utf-8", "replace")
                groups = tuple(
                    None if a < 0 else src[a:b].decode("utf-8", "replace") for a, b in spans[1:]
                )
            append((keys[idx], new(path, lineno, line, text, groups, named[idx](groups))))
        return out

    # -- the slow path: line by line with Python re (no re2, or a bug above) ------------------

    def _scan_lines(self, chunk: Chunk) -> List[Tuple[Hashable, LineMatch]]:
        out: List[Tuple[Hashable, LineMatch]] = []
        search = self._budget.search
        for i, line in enumerate(_split_lines(chunk.data)):
            for r in self._rules:
                try:
                    m = search(r.c.py, line)
                except BudgetExceeded:
                    self.timed_out.append((r.key, chunk.path, chunk.lineno + i))
                    continue
                if m is not None:
                    groups = m.groups()
                    lm = LineMatch(
                        chunk.path, chunk.lineno + i, line, m.group(), groups, r.named(groups)
                    )
                    out.append((r.key, lm))
        return out


if _re2mod is not None:
    _CRLF: MatchFn = _re2_compile("\\x{d}\\x{a}", latin1=True)[0]


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
    """(engine, message) for ``sidecar check``: engine is "re2", "re" (Python re fallback)
    or "invalid" (the pattern does not compile; the message says why). The message is None
    when there is nothing to say, else warnings joined with "; "."""
    try:
        c = _compile(trigger.pattern, bool(trigger.ignore_case))
    except _COMPILE_ERRORS as e:
        return ENGINE_INVALID, _py_error(trigger.pattern, e)
    msgs: List[str] = []
    if c.exact is None:
        msgs.append(
            f"{c.reason}, so it runs on Python re (slower; a line that takes it more than "
            "regex_time_limit of CPU, 0.1 s by default, is taken as not matching)"
        )
        if c.danger:
            msgs.append(
                f"{c.danger} can make Python re take exponential time on some lines "
                "(catastrophic backtracking)"
            )
        if c.relaxed_broad:
            msgs.append("nothing to pre-filter lines on: every line is checked with Python re")
    elif c.unicode_boundary and c.danger:
        msgs.append(
            f"on lines with non-ASCII characters its \\b/\\B are ASCII word boundaries: the "
            f"exact Unicode ones would need Python re, which {c.danger} could make take "
            "exponential time"
        )
    for w in c.py_warnings:
        hint = ""
        if "nested set" in w and "[[:" in trigger.pattern:
            hint = (
                " - POSIX classes like [[:alpha:]] do not exist in Python's re, where "
                "[[:alpha:]] is one of the characters [ : a l p h followed by a ]: write "
                "[a-zA-Z], \\d, \\s or \\w instead"
            )
        msgs.append(f"Python's re warns: {w}{hint}")
    n_caps = len(trigger.captures)
    if n_caps > c.ngroups:
        extra = ", ".join(trigger.captures[c.ngroups :])
        msgs.append(
            f"captures names {n_caps} groups but the pattern has {c.ngroups}: {extra} will be empty"
        )
    for name in sorted(set(trigger.captures) & set(c.groupindex)):
        if trigger.captures.index(name) + 1 != c.groupindex[name]:
            msgs.append(f"captures name {name!r} is also another group's (?P<{name}>...) name")
    if c.py.search("") is not None and c.py.search("\x00\x01 \x7f") is not None:
        msgs.append("it matches the empty string, so it matches (nearly) every line")
    return c.engine, ("; ".join(msgs) if msgs else None)


def match_line(
    trigger: RegexTrigger, line: str, *, path: str = "", lineno: int = 1
) -> Optional[LineMatch]:
    """The match of ``trigger`` in one ``line`` (for replay / test-pattern), or None. If
    ``line`` holds terminators, the first line of it that matches counts. Raises
    :class:`PatternError` for an invalid pattern."""
    res = _single(trigger).scan(
        Chunk(path=path, data=line.encode("utf-8", "surrogatepass"), offset=0, lineno=lineno)
    )
    return res[0][1] if res else None


@lru_cache(maxsize=64)
def _single(trigger: RegexTrigger) -> MultiMatcher:
    return MultiMatcher([(0, trigger)])
