"""``$name`` substitution in action parameters, and the safe way to give variables to commands.

Two functions, two rules:

``substitute(template, variables)`` (messages, subjects, metric names and values, resubmit
modifications...): ``$0``, ``$1`` .. ``$N`` (the longest run of digits: ``$10`` is group 10,
never ``$1`` followed by ``0``), ``$name``, ``${name}`` (``${loss}_x`` when letters follow)
are replaced by their values; ``$$`` is a literal ``$``; a reference to a variable that is
not in the mapping is left exactly as written (``unknown_variables`` lists those, for
``sidecar check``). Nothing else is special: the result is plain text.

``substitute_shell(template, variables)`` (``run_command``): the values never enter the
command text. Every reference to a variable of the mapping is rewritten into a reference to
an environment variable ``SIDECAR_VAR_<name>`` that the caller exports together with the
command; the shell then expands it as it expands any variable, which never parses the value
as shell syntax. Where the reference stands decides how it is written:

==========================================  ==========================================
``echo $loss`` (unquoted)                   ``echo "${SIDECAR_VAR_loss}"`` (one argument)
``echo "loss=$loss"`` (double quotes)       ``echo "loss=${SIDECAR_VAR_loss}"``
here-document body (unquoted delimiter)     ``${SIDECAR_VAR_loss}``
``'$loss'`` (single quotes)                 unchanged: single quotes are literal, as in sh
quoted here-document, ``# comment``         unchanged
``\\$loss``, ``$$``, ``$?``, ``$(...)``     unchanged (the shell's own)
``$((...))``, ``((...))``, ``${x:$off}``    ``${SIDECAR_VAR_off}`` only if the value is an
                                            integer, else ``SubstitutionError``: bash
                                            evaluates variable text in arithmetic
                                            (``a[$(cmd)]`` runs ``cmd``)
``${loss:-0}``, ``${#loss}``, ``${loss%.*}``  the name is rewritten, the operator kept
``${!loss}`` (indirection)                  ``SubstitutionError`` (bash would evaluate it)
==========================================  ==========================================

A value containing NUL (which no environment can hold) has it replaced by U+FFFD.
"""

from __future__ import annotations

import re
from typing import Callable, Collection, Dict, List, Mapping, Optional, Tuple

#: prefix of the environment variables that carry substituted values into commands
SHELL_VAR_PREFIX = "SIDECAR_VAR_"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIGITS = re.compile(r"[0-9]+")
_REF = re.compile(
    r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*|[0-9]+)\}|([A-Za-z_][A-Za-z0-9_]*)|([0-9]+))"
)
_INTEGER = re.compile(r"[ \t]*[+-]?[0-9]+[ \t]*\Z")
MAX_TEMPLATE = 1 << 16  # characters of a command template


class SubstitutionError(ValueError):
    """A command cannot be built safely from these values (the action fails, not run)."""


def _text(v: object) -> str:
    return "" if v is None else str(v)


# ------------------------------------------------------------------------- plain text
def substitute(template: str, variables: Mapping[str, object]) -> str:
    """Replace ``$name``/``${name}``/``$N`` by their values; ``$$`` -> ``$``; unknown
    references stay as written."""

    def repl(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(3) or m.group(4)
        if name in variables:
            return _text(variables[name])
        return m.group(0)

    return _REF.sub(repl, template)


def references(template: str) -> List[str]:
    """The variable names ``template`` refers to, in order, each once (``$$`` excluded)."""
    out: List[str] = []
    for m in _REF.finditer(template):
        name = m.group(2) or m.group(3) or m.group(4)
        if name and name not in out:
            out.append(name)
    return out


def unknown_variables(template: str, known: Collection[str]) -> List[str]:
    """Names ``template`` refers to that are not in ``known`` (they would stay as written)."""
    return [n for n in references(template) if n not in known]


# ------------------------------------------------------------------------- shell
def env_name(name: str) -> str:
    """The environment variable that carries variable ``name`` into a command."""
    return SHELL_VAR_PREFIX + name


def substitute_shell(template: str, variables: Mapping[str, object]) -> Tuple[str, Dict[str, str]]:
    """(command, environment) for ``/bin/sh -c``: the command refers to the variables it
    uses through ``SIDECAR_VAR_<name>`` environment variables, given in the second item.
    Raises ``SubstitutionError`` when a value would reach shell arithmetic without being an
    integer (or for ``${!name}``)."""

    def value(name: str) -> str:
        return _text(variables[name]).replace("\x00", "\ufffd")

    scan = _ShellScan(template, lambda n: n in variables, value)
    scan.run()
    if scan.errors:
        raise SubstitutionError(scan.errors[0])
    return "".join(scan.out), scan.env


def check_shell_template(template: str, names: Collection[str]) -> Tuple[List[str], List[str]]:
    """(errors, warnings) for a command template, at load time. ``names`` are the variables
    a firing will have (captures, group numbers, JOB_ID...)."""
    scan = _ShellScan(template, lambda n: n in names, None)
    scan.run()
    return scan.errors, scan.warnings


_WORD_BREAK = " \t\n;&|()<>"


class _ShellScan:
    """A small POSIX-sh lexer: enough to know, for every ``$``, whether the shell would
    expand it and in which quoting context. It only ever inserts fixed text (``"${...}"``)
    into the command, so a lexing mistake can at worst affect word splitting, never make
    a value into syntax."""

    def __init__(
        self,
        s: str,
        is_var: Callable[[str], bool],
        value: Optional[Callable[[str], str]],
    ) -> None:
        self.s = s
        self.n = len(s)
        self.is_var = is_var
        self.value = value  # None: check mode
        self.out: List[str] = []
        self.env: Dict[str, str] = {}
        self.errors: List[str] = []
        self.warnings: List[str] = []
        self.pending: List[Tuple[str, bool, bool]] = []  # here-docs: delimiter, strip, quoted
        self.in_arith = 0  # > 0 while inside an arithmetic context, however deeply nested

    def run(self) -> None:
        if self.n > MAX_TEMPLATE:
            self.errors.append(f"command too long ({self.n} characters, at most {MAX_TEMPLATE})")
            return
        try:
            i = self.cmd(0, None)
            while i < self.n:  # a stray closer at top level: keep it, go on
                self.out.append(self.s[i])
                i = self.cmd(i + 1, None)
        except RecursionError:
            self.out = []
            self.errors.append("command nested too deeply")

    # -- helpers ---------------------------------------------------------------------
    def warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)

    def error(self, msg: str) -> None:
        if msg not in self.errors:
            self.errors.append(msg)

    def emit_ref(self, name: str, ctx: str, shown: str) -> None:
        env = env_name(name)
        if ctx == "arith" or self.in_arith:
            self.arith_use(name, shown)
        if self.value is not None:
            self.env[env] = self.value(name)
        if ctx == "cmd":
            self.out.append(f'"${{{env}}}"')
        else:
            self.out.append(f"${{{env}}}")

    def arith_use(self, name: str, shown: str) -> None:
        if self.value is None:
            self.warn(
                f"{shown} is used in shell arithmetic: the command runs only when its value "
                "is an integer"
            )
            return
        v = self.value(name)
        if not _INTEGER.match(v):
            self.error(
                f"{shown} is used in shell arithmetic but its value {v[:40]!r} is not an "
                "integer (bash would evaluate it as code): the command was not run"
            )

    # -- contexts --------------------------------------------------------------------
    def cmd(self, i: int, closer: Optional[str]) -> int:
        """Unquoted command text until ``closer`` (``)`` or a backquote) or the end."""
        s, n, out = self.s, self.n, self.out
        depth = 0
        word_start = True
        while i < n:
            c = s[i]
            if closer == "`" and c == "`":
                return i
            if c == "\\":
                out.append(s[i : i + 2])
                i += 2
                word_start = False
                continue
            if c == "'":
                i = self.sq(i, "single quotes")
                word_start = False
                continue
            if c == '"':
                i = self.dq(i)
                word_start = False
                continue
            if c == "`":
                i = self.backquote(i)
                word_start = False
                continue
            if c == "$":
                i = self.dollar(i, "cmd")
                word_start = False
                continue
            if c == "#" and word_start:
                j = s.find("\n", i)
                j = n if j < 0 else j
                out.append(s[i:j])
                i = j
                continue
            if c == "(" and word_start and s.startswith("((", i):
                out.append("((")
                i = self.arith(i + 2)
                word_start = False
                continue
            if c == "(":
                depth += 1
            elif c == ")":
                if closer == ")" and depth == 0:
                    return i
                depth = max(depth - 1, 0)
            elif c == "<" and s.startswith("<<", i) and not s.startswith("<<<", i):
                i = self.heredoc_op(i)
                word_start = False
                continue
            out.append(c)
            i += 1
            if c == "\n" and self.pending:
                i = self.heredoc_bodies(i)
            word_start = c in _WORD_BREAK
        if closer is not None:
            self.warn(f"unterminated {'$(' if closer == ')' else '`'} in the command")
        return i

    def sq(self, i: int, what: str) -> int:
        j = self.s.find("'", i + 1)
        end = self.n if j < 0 else j + 1
        text = self.s[i:end]
        self.out.append(text)
        if j < 0:
            self.warn("unterminated single quote in the command")
        self.literal_refs(text, what)
        return end

    def literal_refs(self, text: str, what: str) -> None:
        for m in _REF.finditer(text):
            name = m.group(2) or m.group(3) or m.group(4)
            if name and self.is_var(name):
                self.warn(
                    f"{m.group(0)} inside {what} is not replaced (shell quoting rules); "
                    "use double quotes to get its value"
                )

    def dq(self, i: int) -> int:
        s, n, out = self.s, self.n, self.out
        out.append('"')
        i += 1
        while i < n:
            c = s[i]
            if c == '"':
                out.append('"')
                return i + 1
            if c == "\\":
                out.append(s[i : i + 2])
                i += 2
            elif c == "$":
                i = self.dollar(i, "dq")
            elif c == "`":
                i = self.backquote(i)
            else:
                out.append(c)
                i += 1
        self.warn("unterminated double quote in the command")
        return i

    def backquote(self, i: int) -> int:
        self.out.append("`")
        i = self.cmd(i + 1, "`")
        if i < self.n:
            self.out.append("`")
            i += 1
        return i

    def dollar(self, i: int, ctx: str) -> int:
        """A ``$`` at ``i`` in context ctx: cmd | dq | heredoc | arith | word."""
        s, n, out = self.s, self.n, self.out
        j = i + 1
        if j >= n:
            out.append("$")
            return j
        c = s[j]
        if c == "(":
            if s.startswith("((", j):
                out.append("$((")
                return self.arith(j + 2)
            out.append("$(")
            k = self.cmd(j + 1, ")")
            if k < n:
                out.append(")")
                k += 1
            return k
        if c == "{":
            return self.brace(i, ctx)
        m = _NAME.match(s, j) or _DIGITS.match(s, j)
        if m:
            name = m.group(0)
            if self.is_var(name):
                self.emit_ref(name, ctx, "$" + name)
            else:
                out.append(s[i : m.end()])
            return m.end()
        if c in "$?#!@*-":
            out.append(s[i : j + 1])
            return j + 1
        out.append("$")
        return j

    def brace(self, i: int, ctx: str) -> int:
        """``${...}`` starting at ``i``."""
        s, n, out = self.s, self.n, self.out
        j = i + 2
        if j < n and s[j] in "#!" and j + 1 < n and s[j + 1] not in "}":
            m = _NAME.match(s, j + 1) or _DIGITS.match(s, j + 1)
            if m and self.is_var(m.group(0)):
                name = m.group(0)
                if s[j] == "!":
                    self.error(
                        f"${{!{name}}}: indirection through a sidecar variable is not allowed"
                    )
                    out.append(s[i : m.end()])
                    return self.brace_rest(m.end(), "word")
                if m.end() < n and s[m.end()] == "}":  # ${#name}: its length
                    if self.value is not None:
                        self.env[env_name(name)] = self.value(name)
                    out.append(f"${{#{env_name(name)}}}")
                    return m.end() + 1
        m = _NAME.match(s, j) or _DIGITS.match(s, j)
        if m:
            name = m.group(0)
            k = m.end()
            if k < n and s[k] == "}":
                if self.is_var(name):
                    self.emit_ref(name, ctx, "${" + name + "}")
                else:
                    out.append(s[i : k + 1])
                return k + 1
            if self.is_var(name):
                if ctx == "arith" or self.in_arith:
                    self.arith_use(name, "${" + name + "}")
                if self.value is not None:
                    self.env[env_name(name)] = self.value(name)
                out.append("${" + env_name(name))
            else:
                out.append(s[i:k])
            # substring (${x:off:len}) and subscripts (${x[i]}) are arithmetic in bash
            arith = k < n and (s[k] == "[" or (s[k] == ":" and s[k + 1 : k + 2] not in "-=?+"))
            if ctx == "arith":
                arith = True
            return self.brace_rest(k, "arith" if arith else "word")
        out.append("${")
        return self.brace_rest(j, "arith" if ctx == "arith" else "word")

    def brace_rest(self, i: int, ctx: str) -> int:
        """The operator part of ``${...}`` up to and including its ``}``."""
        if ctx != "arith":
            return self._brace_rest(i, ctx)
        self.in_arith += 1
        try:
            return self._brace_rest(i, ctx)
        finally:
            self.in_arith -= 1

    def _brace_rest(self, i: int, ctx: str) -> int:
        s, n, out = self.s, self.n, self.out
        while i < n:
            c = s[i]
            if c == "}":
                out.append("}")
                return i + 1
            if c == "\\":
                out.append(s[i : i + 2])
                i += 2
            elif c == "$":
                i = self.dollar(i, ctx)
            elif c == "`":
                i = self.backquote(i)
            else:
                out.append(c)
                i += 1
        self.warn("unterminated ${ in the command")
        return i

    def arith(self, i: int) -> int:
        """After ``$((`` or ``((``: up to and including the matching ``))``."""
        self.in_arith += 1
        try:
            return self._arith(i)
        finally:
            self.in_arith -= 1

    def _arith(self, i: int) -> int:
        s, n, out = self.s, self.n, self.out
        depth = 0
        while i < n:
            c = s[i]
            if c == ")" and depth == 0:
                if s.startswith("))", i):
                    out.append("))")
                    return i + 2
                out.append(c)
                return i + 1
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            if c == "$":
                i = self.dollar(i, "arith")
                continue
            if c == "\\":
                out.append(s[i : i + 2])
                i += 2
                continue
            if c == "`":
                i = self.backquote(i)
                continue
            m = _NAME.match(s, i)
            if m and (i == 0 or not (s[i - 1].isalnum() or s[i - 1] == "_")):
                name = m.group(0)
                if self.is_var(name):  # a bare name is read from the environment
                    self.arith_use(name, name)
                out.append(name)
                i = m.end()
                continue
            out.append(c)
            i += 1
        self.warn("unterminated (( in the command")
        return i

    # -- here-documents --------------------------------------------------------------
    def heredoc_op(self, i: int) -> int:
        s, n, out = self.s, self.n, self.out
        j = i + 2
        strip = j < n and s[j] == "-"
        if strip:
            j += 1
        while j < n and s[j] in " \t":
            j += 1
        k = j
        delim: List[str] = []
        quoted = False
        while k < n and s[k] not in _WORD_BREAK:
            c = s[k]
            if c in "'\"":
                quoted = True
                e = s.find(c, k + 1)
                e = n if e < 0 else e
                delim.append(s[k + 1 : e])
                k = e + 1
            elif c == "\\":
                quoted = True
                delim.append(s[k + 1 : k + 2])
                k += 2
            else:
                delim.append(c)
                k += 1
        out.append(s[i : min(k, n)])
        if delim:
            self.pending.append(("".join(delim), strip, quoted))
        return min(k, n)

    def heredoc_bodies(self, i: int) -> int:
        """Just after the newline that ends a line with ``<<WORD``: the bodies."""
        s, n, out = self.s, self.n, self.out
        pending, self.pending = self.pending, []
        for delim, strip, quoted in pending:
            while i < n:
                e = s.find("\n", i)
                e = n if e < 0 else e
                line = s[i:e]
                if (line.lstrip("\t") if strip else line) == delim:
                    out.append(s[i : e + 1])
                    i = e + 1
                    break
                if quoted:
                    out.append(s[i : e + 1])
                    self.literal_refs(line, "a quoted here-document")
                    i = e + 1
                else:
                    i = self.heredoc_line(i)
            else:
                self.warn(f"here-document {delim!r} is not terminated")
        return i

    def heredoc_line(self, i: int) -> int:
        """One line of an unquoted here-document body (``$`` and backquotes expand)."""
        s, n, out = self.s, self.n, self.out
        while i < n:
            c = s[i]
            if c == "\n":
                out.append(c)
                return i + 1
            if c == "\\":
                out.append(s[i : i + 2])
                i += 2
            elif c == "$":
                i = self.dollar(i, "heredoc")
            elif c == "`":
                i = self.backquote(i)
            else:
                out.append(c)
                i += 1
        return i
