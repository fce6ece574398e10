"""Safe evaluation of watcher conditions such as ``float(loss) > 5 and int(epoch) % 10 == 0``.

The expression is parsed with :mod:`ast` and compiled, by hand, into a tree of small Python
closures over a whitelist of node types. Nothing is ever handed to ``eval``/``compile``:
a name is a lookup in the variables mapping, a call can only reach one of :data:`FUNCTIONS`,
and there is no attribute access, subscripting, comprehension, lambda, f-string or
assignment expression at all, so the known sandbox escapes (``().__class__.__bases__...``,
``__import__('os')``, ``getattr``...) are refused when the config is loaded.

Resource bombs are refused too: the source length, the number of AST nodes and the nesting
depth are capped; ``**`` takes exponents of at most :data:`MAX_EXPONENT`; integer results
are capped at :data:`MAX_INT_BITS` bits and string/tuple results at :data:`MAX_SEQUENCE`
items (checked *before* the work is done); ``%`` on a string (printf formatting, whose
width field can allocate gigabytes) is refused. Sub-expressions made only of constants are
evaluated once at load time, so ``9**9**9``, ``1/0`` or ``'a' * 10**9`` are load-time errors.

``compile_condition`` raises ``ValueError`` (load time); ``Condition.evaluate`` raises
``ConditionError`` (run time: ``float("abc")``, an unknown variable, a division by zero...),
which the engine logs and counts as "condition false".
"""

from __future__ import annotations

import ast
import math
import warnings
from typing import Any, Callable, FrozenSet, List, Mapping, Set, Tuple

MAX_LENGTH = 500  # characters of source (as ssync)
MAX_NODES = 200  # AST nodes
MAX_DEPTH = 30  # nesting of AST nodes
MAX_EXPONENT = 100  # |b| in a ** b
MAX_INT_BITS = 4096  # about 1233 decimal digits
MAX_SEQUENCE = 1 << 21  # characters of a string (items of a tuple) made by + or *
MAX_NUMERIC_TEXT = 4300  # characters int()/float() accept (CPython's own int limit)

Evaluator = Callable[[Mapping[str, Any]], Any]


class ConditionError(Exception):
    """A condition could not be evaluated for these variables (the engine counts it false)."""


# --------------------------------------------------------------------------- functions
def _check_numeric_text(name: str, args: Tuple[Any, ...]) -> None:
    if args and isinstance(args[0], (str, bytes)) and len(args[0]) > MAX_NUMERIC_TEXT:
        raise ConditionError(f"{name}(): text longer than {MAX_NUMERIC_TEXT} characters")


def _fn_int(*args: Any) -> Any:
    _check_numeric_text("int", args)
    return _check_result(int(*args))


def _fn_float(*args: Any) -> Any:
    _check_numeric_text("float", args)
    return float(*args)


MAX_NDIGITS = 400  # |ndigits| of round(): round(5, -10**9) would compute 10**(10**9)
MAX_TUPLE_ITEMS = 10_000  # items of a tuple made by + or *, counting nested ones


def _leaves(v: Any, limit: int) -> int:
    """Items of a tuple, nested tuples counted through, stopping past ``limit``."""
    if not isinstance(v, tuple):
        return 1
    n = 0
    for x in v:
        n += _leaves(x, limit - n) if isinstance(x, tuple) else 1
        if n > limit:
            break
    return n


def _fn_round(*args: Any) -> Any:
    if len(args) == 2 and not (args[1] is None or _is_int(args[1])):
        raise ConditionError("round(): ndigits must be an integer")
    if len(args) == 2 and args[1] is not None and abs(int(args[1])) > MAX_NDIGITS:
        raise ConditionError(f"round(): ndigits beyond ±{MAX_NDIGITS}")
    return _check_result(round(*args))


#: the only callables a condition can reach (positional arguments only)
FUNCTIONS: Mapping[str, Callable[..., Any]] = {
    "float": _fn_float,
    "int": _fn_int,
    "str": str,
    "len": len,
    "abs": abs,
    "min": min,
    "max": max,
    "round": _fn_round,
    "bool": bool,
}


def _is_int(x: Any) -> bool:
    return isinstance(x, int)  # bool is an int too, as in Python


def _check_result(r: Any) -> Any:
    if isinstance(r, int) and not isinstance(r, bool) and r.bit_length() > MAX_INT_BITS:
        raise ConditionError(f"number too large (more than {MAX_INT_BITS} bits)")
    if isinstance(r, (str, tuple)) and len(r) > MAX_SEQUENCE:
        raise ConditionError(f"result too long (more than {MAX_SEQUENCE} items)")
    if isinstance(r, complex):
        raise ConditionError("complex result")
    return r


# --------------------------------------------------------------------------- operators
def _add(a: Any, b: Any) -> Any:
    if (
        isinstance(a, (str, tuple))
        and isinstance(b, (str, tuple))
        and len(a) + len(b) > MAX_SEQUENCE
    ):
        raise ConditionError(f"result too long (more than {MAX_SEQUENCE} items)")
    if (
        isinstance(a, tuple)
        and isinstance(b, tuple)
        and _leaves(a, MAX_TUPLE_ITEMS) + _leaves(b, MAX_TUPLE_ITEMS) > MAX_TUPLE_ITEMS
    ):
        raise ConditionError(f"tuple too large (more than {MAX_TUPLE_ITEMS} items)")
    return _check_result(a + b)


def _sub(a: Any, b: Any) -> Any:
    return _check_result(a - b)


def _repeat_size(seq: Any, n: Any) -> None:
    if isinstance(seq, (str, tuple)) and _is_int(n) and len(seq) * max(int(n), 0) > MAX_SEQUENCE:
        raise ConditionError(f"result too long (more than {MAX_SEQUENCE} items)")
    # tuples count their nested items: ((x,) * 1000,) * 1000 is a million comparisons for
    # max() and a huge text for str()
    if (
        isinstance(seq, tuple)
        and _is_int(n)
        and _leaves(seq, MAX_TUPLE_ITEMS) * max(int(n), 0) > MAX_TUPLE_ITEMS
    ):
        raise ConditionError(f"tuple too large (more than {MAX_TUPLE_ITEMS} items)")


def _mul(a: Any, b: Any) -> Any:
    _repeat_size(a, b)
    _repeat_size(b, a)
    if _is_int(a) and _is_int(b) and int(a).bit_length() + int(b).bit_length() > MAX_INT_BITS + 1:
        raise ConditionError(f"number too large (more than {MAX_INT_BITS} bits)")
    return _check_result(a * b)


def _truediv(a: Any, b: Any) -> Any:
    return _check_result(a / b)


def _floordiv(a: Any, b: Any) -> Any:
    return _check_result(a // b)


def _mod(a: Any, b: Any) -> Any:
    if isinstance(a, (str, bytes)):
        raise ConditionError("'%' formatting of strings is not supported")
    return _check_result(a % b)


def _pow(a: Any, b: Any) -> Any:
    if not isinstance(b, (int, float)):
        raise ConditionError("the exponent of ** must be a number")
    if isinstance(b, float) and not math.isfinite(b):
        raise ConditionError("the exponent of ** must be finite")
    if abs(b) > MAX_EXPONENT:
        raise ConditionError(f"exponent {b!r} too large (at most {MAX_EXPONENT})")
    if _is_int(a) and _is_int(b) and b > 0 and int(a).bit_length() * int(b) > MAX_INT_BITS + 1:
        raise ConditionError(f"number too large (more than {MAX_INT_BITS} bits)")
    return _check_result(a**b)


_BINOPS: Mapping[type, Tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Add: ("+", _add),
    ast.Sub: ("-", _sub),
    ast.Mult: ("*", _mul),
    ast.Div: ("/", _truediv),
    ast.FloorDiv: ("//", _floordiv),
    ast.Mod: ("%", _mod),
    ast.Pow: ("**", _pow),
}


def _contains(a: Any, b: Any) -> bool:
    return a in b


def _not_contains(a: Any, b: Any) -> bool:
    return a not in b


_CMPOPS: Mapping[type, Callable[[Any, Any], Any]] = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
    ast.In: _contains,
    ast.NotIn: _not_contains,
    ast.Is: lambda a, b: a is b,
    ast.IsNot: lambda a, b: a is not b,
}

# What to say about the node types that are refused.
_REFUSED: Mapping[str, str] = {
    "Attribute": "attribute access (x.y)",
    "Subscript": "indexing (x[...])",
    "Slice": "slicing",
    "Lambda": "lambda",
    "ListComp": "comprehensions",
    "SetComp": "comprehensions",
    "DictComp": "comprehensions",
    "GeneratorExp": "generator expressions",
    "JoinedStr": "f-strings",
    "FormattedValue": "f-strings",
    "NamedExpr": "assignment expressions (:=)",
    "Starred": "star arguments",
    "Dict": "dict literals",
    "Set": "set literals",
    "Await": "await",
    "Yield": "yield",
    "YieldFrom": "yield",
}


def _const(value: Any) -> Evaluator:
    def constant(_v: Mapping[str, Any]) -> Any:
        return value

    return constant


def _snippet(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(node: ast.AST) -> str:
    what = _REFUSED.get(type(node).__name__, type(node).__name__)
    col = getattr(node, "col_offset", None)
    return f"{what} (at column {col + 1})" if isinstance(col, int) else what


class Condition:
    """A compiled condition. ``names`` are the variables it refers to."""

    __slots__ = ("source", "names", "_fn")

    def __init__(self, source: str, names: FrozenSet[str], fn: Evaluator) -> None:
        self.source = source
        self.names = names
        self._fn = fn

    def evaluate(self, variables: Mapping[str, Any]) -> bool:
        """True/False for these variables; ``ConditionError`` when it cannot be evaluated."""
        try:
            return bool(self._fn(variables))
        except ConditionError:
            raise
        except RecursionError:
            raise ConditionError("expression too deep") from None
        except MemoryError:
            raise ConditionError("out of memory") from None
        except Exception as exc:  # TypeError, ValueError, ZeroDivisionError, OverflowError...
            raise ConditionError(f"{type(exc).__name__}: {exc}") from None

    def __repr__(self) -> str:
        return f"Condition({self.source!r})"


def compile_condition(expr: str) -> Condition:
    """Compile ``expr`` or raise ``ValueError`` saying what is not allowed and where."""
    if not isinstance(expr, str):
        raise ValueError("a condition must be a string")
    src = expr.strip()
    if not src:
        raise ValueError("empty condition")
    if len(src) > MAX_LENGTH:
        raise ValueError(f"condition too long ({len(src)} characters, at most {MAX_LENGTH})")
    if "\x00" in src:
        raise ValueError("condition contains a NUL character")
    try:
        with warnings.catch_warnings():  # e.g. "invalid decimal literal": never print
            warnings.simplefilter("ignore")
            tree = ast.parse(src, mode="eval")
    except SyntaxError as exc:
        col = f" at column {exc.offset}" if exc.offset else ""
        raise ValueError(f"not a valid expression{col}: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError, OverflowError):
        raise ValueError("expression too deeply nested") from None
    for count, _node in enumerate(ast.walk(tree), start=1):
        if count > MAX_NODES:
            raise ValueError(f"condition too complex (more than {MAX_NODES} syntax nodes)")
    names: Set[str] = set()
    fn, _const = _Compiler(names).compile(tree.body, 0)
    return Condition(src, frozenset(names), fn)


class _Compiler:
    def __init__(self, names: Set[str]) -> None:
        self.names = names

    def compile(self, node: ast.AST, depth: int) -> Tuple[Evaluator, bool]:
        """(evaluator, is_constant). Constant sub-trees are evaluated right away."""
        if depth > MAX_DEPTH:
            raise ValueError(f"condition nested too deeply (more than {MAX_DEPTH} levels)")
        fn, const = self._compile(node, depth + 1)
        if const and not isinstance(node, ast.Constant):
            try:
                value = fn({})
            except ConditionError as exc:
                raise ValueError(f"{_snippet(node)} always fails: {exc}") from None
            except Exception as exc:
                raise ValueError(
                    f"{_snippet(node)} always fails: {type(exc).__name__}: {exc}"
                ) from None
            return _const(value), True
        return fn, const

    def _compile(self, node: ast.AST, depth: int) -> Tuple[Evaluator, bool]:
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.Name):
            return self._name(node)
        if isinstance(node, ast.BoolOp):
            return self._boolop(node, depth)
        if isinstance(node, ast.UnaryOp):
            return self._unary(node, depth)
        if isinstance(node, ast.BinOp):
            return self._binop(node, depth)
        if isinstance(node, ast.Compare):
            return self._compare(node, depth)
        if isinstance(node, ast.Call):
            return self._call(node, depth)
        if isinstance(node, ast.IfExp):
            return self._ifexp(node, depth)
        if isinstance(node, (ast.Tuple, ast.List)):
            return self._tuple(node, depth)
        raise ValueError(f"not allowed in a condition: {_describe(node)}")

    def _constant(self, node: ast.Constant) -> Tuple[Evaluator, bool]:
        v = node.value
        if v is None or isinstance(v, (bool, int, float, str)):
            if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > MAX_INT_BITS:
                raise ValueError("number literal too large")
            return _const(v), True
        raise ValueError(f"not allowed in a condition: a {type(v).__name__} literal")

    def _name(self, node: ast.Name) -> Tuple[Evaluator, bool]:
        name = node.id
        if name.startswith("__"):
            raise ValueError(f"not allowed in a condition: the name {name!r}")
        if not isinstance(node.ctx, ast.Load):
            raise ValueError("not allowed in a condition: assignment")
        self.names.add(name)

        def lookup(v: Mapping[str, Any], _n: str = name) -> Any:
            try:
                return v[_n]
            except KeyError:
                raise ConditionError(f"unknown variable {_n!r}") from None

        return lookup, False

    def _boolop(self, node: ast.BoolOp, depth: int) -> Tuple[Evaluator, bool]:
        parts = [self.compile(x, depth) for x in node.values]
        fns = [p[0] for p in parts]
        const = all(p[1] for p in parts)
        if isinstance(node.op, ast.And):

            def and_(v: Mapping[str, Any]) -> Any:
                r: Any = True
                for f in fns:
                    r = f(v)
                    if not r:
                        return r
                return r

            return and_, const

        def or_(v: Mapping[str, Any]) -> Any:
            r: Any = False
            for f in fns:
                r = f(v)
                if r:
                    return r
            return r

        return or_, const

    def _unary(self, node: ast.UnaryOp, depth: int) -> Tuple[Evaluator, bool]:
        f, const = self.compile(node.operand, depth)
        if isinstance(node.op, ast.Not):
            return (lambda v: not f(v)), const
        if isinstance(node.op, ast.USub):

            def neg(v: Mapping[str, Any]) -> Any:
                x = f(v)
                if not isinstance(x, (int, float)):
                    raise ConditionError(f"bad operand for unary -: {type(x).__name__}")
                return -x

            return neg, const
        if isinstance(node.op, ast.UAdd):

            def pos(v: Mapping[str, Any]) -> Any:
                x = f(v)
                if not isinstance(x, (int, float)):
                    raise ConditionError(f"bad operand for unary +: {type(x).__name__}")
                return +x

            return pos, const
        raise ValueError("not allowed in a condition: the ~ operator")

    def _binop(self, node: ast.BinOp, depth: int) -> Tuple[Evaluator, bool]:
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise ValueError(
                f"not allowed in a condition: the operator {type(node.op).__name__} "
                "(allowed: + - * / // % **)"
            )
        lf, lc = self.compile(node.left, depth)
        rf, rc = self.compile(node.right, depth)
        impl = op[1]
        return (lambda v: impl(lf(v), rf(v))), lc and rc

    def _compare(self, node: ast.Compare, depth: int) -> Tuple[Evaluator, bool]:
        first, const = self.compile(node.left, depth)
        rest: List[Tuple[Callable[[Any, Any], Any], Evaluator]] = []
        for op, comp in zip(node.ops, node.comparators):
            impl = _CMPOPS.get(type(op))
            if impl is None:  # pragma: no cover - every ast cmpop is listed
                raise ValueError(f"not allowed in a condition: {type(op).__name__}")
            f, c = self.compile(comp, depth)
            const = const and c
            rest.append((impl, f))

        def compare(v: Mapping[str, Any]) -> Any:
            left = first(v)
            for impl, f in rest:
                right = f(v)
                if not impl(left, right):
                    return False
                left = right
            return True

        return compare, const

    def _call(self, node: ast.Call, depth: int) -> Tuple[Evaluator, bool]:
        if not isinstance(node.func, ast.Name):
            raise ValueError(
                f"not allowed in a condition: {_describe(node.func)} "
                f"(only {', '.join(FUNCTIONS)} can be called)"
            )
        name = node.func.id
        impl = FUNCTIONS.get(name)
        if impl is None:
            raise ValueError(
                f"not allowed in a condition: the function {name!r} "
                f"(allowed: {', '.join(FUNCTIONS)})"
            )
        if node.keywords:
            raise ValueError(f"{name}(): keyword arguments are not allowed in a condition")
        if len(node.args) > 8:
            raise ValueError(f"{name}(): too many arguments")
        parts = [self.compile(a, depth) for a in node.args]  # Starred is refused there
        fns = [p[0] for p in parts]
        const = all(p[1] for p in parts)

        def call(v: Mapping[str, Any]) -> Any:
            return _check_result(impl(*[f(v) for f in fns]))

        return call, const

    def _ifexp(self, node: ast.IfExp, depth: int) -> Tuple[Evaluator, bool]:
        t, tc = self.compile(node.test, depth)
        a, ac = self.compile(node.body, depth)
        b, bc = self.compile(node.orelse, depth)
        return (lambda v: a(v) if t(v) else b(v)), tc and ac and bc

    def _tuple(self, node: Any, depth: int) -> Tuple[Evaluator, bool]:
        if not isinstance(node.ctx, ast.Load):
            raise ValueError("not allowed in a condition: assignment")
        parts = [self.compile(e, depth) for e in node.elts]
        fns = [p[0] for p in parts]
        const = all(p[1] for p in parts)
        return (lambda v: tuple(f(v) for f in fns)), const


def referenced_names(expr: str) -> FrozenSet[str]:
    """The variable names ``expr`` uses (``ValueError`` when it does not compile)."""
    return compile_condition(expr).names


__all__ = [
    "Condition",
    "ConditionError",
    "FUNCTIONS",
    "compile_condition",
    "referenced_names",
]
