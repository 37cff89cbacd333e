"""Safe arithmetic for the `calculator` tool.

The expression is parsed with `ast` and walked against an explicit whitelist; nothing is
ever compiled or evaluated as Python. Arguments come from a model, so every way to make
the walk slow or huge (long input, deep nesting, giant powers, giant integers) is
refused up front with a message that names the reason.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_EXPRESSION_LENGTH", "CalculatorError", "evaluate"]

MAX_EXPRESSION_LENGTH = 1000
MAX_NODES = 200
MAX_DEPTH = 100
MAX_INT_BITS = 4096
MAX_EXPONENT = 1000
MAX_ROUND_DIGITS = 1000

Number = int | float


class CalculatorError(ValueError):
    """The expression is unsupported, too expensive, or mathematically undefined."""


_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}
_CONSTANT_NAMES = sorted(_CONSTANTS)

_BINARY: dict[type[ast.operator], tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
    ast.FloorDiv: ("//", operator.floordiv),
    ast.Mod: ("%", operator.mod),
    ast.Pow: ("**", operator.pow),
}
_OTHER_OPERATORS: dict[type[ast.AST], str] = {
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.BitAnd: "&",
    ast.Invert: "~",
    ast.Not: "not",
}


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if type(ndigits) is not int:
        raise CalculatorError("round() needs an integer number of digits")
    if abs(ndigits) > MAX_ROUND_DIGITS:  # int rounding builds 10**|ndigits|
        raise CalculatorError(f"round() digits must be within +/-{MAX_ROUND_DIGITS}")
    return round(x, ndigits)


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


# name -> (function, minimum arity, maximum arity or None for unbounded)
_FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int | None]] = {
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (lambda *xs: min(xs), 1, None),
    "max": (lambda *xs: max(xs), 1, None),
    "sqrt": (math.sqrt, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "log": (_log, 1, 2),
    "exp": (math.exp, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
}

_FUNCTION_NAMES = sorted(_FUNCTIONS)

# Rejected node types with a readable name; others are named by their class.
_CONSTRUCTS: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscript",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehension",
    ast.SetComp: "comprehension",
    ast.DictComp: "comprehension",
    ast.GeneratorExp: "comprehension",
    ast.Compare: "comparison",
    ast.BoolOp: "boolean operator",
    ast.IfExp: "conditional expression",
    ast.NamedExpr: "assignment expression",
    ast.JoinedStr: "f-string",
    ast.List: "list",
    ast.Tuple: "tuple",
    ast.Set: "set",
    ast.Dict: "dict",
    ast.Starred: "starred argument",
    ast.Slice: "slice",
}

# Leaf markers carry no work and would only inflate the node count.
_UNCOUNTED = (ast.expr_context, ast.operator, ast.unaryop, ast.boolop, ast.cmpop)


def evaluate(expression: str) -> int | float:
    """Evaluate an arithmetic expression; raise CalculatorError for anything else."""
    if not isinstance(expression, str):
        raise CalculatorError(f"expression must be a string, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise CalculatorError(
            f"expression is too long: {len(expression)} characters; the limit is {MAX_EXPRESSION_LENGTH}"
        )
    if not expression.strip():
        raise CalculatorError("expression is empty")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"invalid expression: {exc.msg}") from None
    # ValueError: NUL bytes (3.11); the others: the parser's own nesting limits.
    except (ValueError, RecursionError, MemoryError) as exc:
        raise CalculatorError(f"invalid expression: {exc}") from None
    _check_size(tree)
    return _eval(tree.body)


def _check_size(tree: ast.AST) -> None:
    # Iterative, so a pathological tree cannot exhaust the stack before it is measured.
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise CalculatorError(f"expression is too complex: more than {MAX_NODES} nodes")
        if depth > MAX_DEPTH:
            raise CalculatorError(f"expression is nested too deeply: more than {MAX_DEPTH} levels")
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, _UNCOUNTED):
                stack.append((child, depth + 1))


def _eval(node: ast.AST) -> Number:
    try:
        value = _eval_node(node)
    except CalculatorError:
        raise
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError:
        raise CalculatorError("numeric overflow: the result is too large") from None
    except (ValueError, TypeError) as exc:  # math domain errors, bad argument types
        raise CalculatorError(f"math error: {exc}") from None
    return _checked(value)


def _checked(value: object) -> Number:
    # Each intermediate result is checked, so no later step starts from something huge.
    if type(value) is int:
        if value.bit_length() > MAX_INT_BITS:
            raise CalculatorError(f"integer result is too large: more than {MAX_INT_BITS} bits")
        return value
    if type(value) is float:
        if not math.isfinite(value):
            raise CalculatorError("result is not a finite number")
        return value
    if isinstance(value, complex):
        raise CalculatorError("result is a complex number (e.g. a fractional power of a negative number)")
    raise CalculatorError(f"result has unsupported type {type(value).__name__}")


def _eval_node(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        value = node.value
        if type(value) is int or type(value) is float:
            return value
        kind = {
            bool: "boolean",
            str: "string",
            bytes: "bytes",
            complex: "complex number",
        }.get(type(value), type(value).__name__)
        raise CalculatorError(f"unsupported expression: {kind} literal {value!r:.40}")
    if isinstance(node, ast.BinOp):
        op_type = type(node.op)
        if op_type not in _BINARY:
            symbol = _OTHER_OPERATORS.get(op_type, op_type.__name__)
            raise CalculatorError(f"unsupported operator {symbol!r}")
        left = _eval(node.left)
        right = _eval(node.right)
        if op_type is ast.Pow:
            _check_power(left, right)
        return _BINARY[op_type][1](left, right)  # type: ignore[no-any-return]
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.USub):
            return -_eval(node.operand)
        if isinstance(node.op, ast.UAdd):
            return +_eval(node.operand)
        unary_type = type(node.op)
        symbol = _OTHER_OPERATORS.get(unary_type, unary_type.__name__)
        raise CalculatorError(f"unsupported operator {symbol!r}")
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if node.id in _FUNCTIONS:
            raise CalculatorError(f"{node.id!r} is a function; call it, e.g. {node.id}(x)")
        raise CalculatorError(f"unknown name {node.id!r} (known constants: {', '.join(_CONSTANT_NAMES)})")
    if isinstance(node, ast.Call):
        return _call(node)
    construct = _CONSTRUCTS.get(type(node), type(node).__name__)
    raise CalculatorError(f"unsupported expression: {construct}")


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name):
        raise CalculatorError("unsupported expression: only calls to named functions are supported")
    name = node.func.id
    if name not in _FUNCTIONS:
        raise CalculatorError(
            f"unsupported expression: function call to {name!r} (known functions: {', '.join(_FUNCTION_NAMES)})"
        )
    if node.keywords:
        raise CalculatorError(f"{name}() takes positional arguments only")
    func, low, high = _FUNCTIONS[name]
    count = len(node.args)
    if count < low or (high is not None and count > high):
        if high is None:
            expected = f"at least {low}"
        elif low == high:
            expected = str(low)
        else:
            expected = f"{low} or {high}"
        raise CalculatorError(f"{name}() takes {expected} argument(s), got {count}")
    args = [_eval(arg) for arg in node.args]
    try:
        return func(*args)
    except ValueError as exc:
        if isinstance(exc, CalculatorError):
            raise
        raise CalculatorError(f"math error in {name}(): {exc}") from None


def _check_power(base: Number, exponent: Number) -> None:
    if abs(exponent) > MAX_EXPONENT:
        # Not formatted: a 4096-bit exponent has no useful (or float-convertible) text.
        raise CalculatorError(f"exponent is too large: its magnitude must be at most {MAX_EXPONENT}")
    # Float powers overflow cheaply (OverflowError); only int powers grow unbounded.
    if type(base) is int and type(exponent) is int and exponent > 0 and abs(base) > 1:
        if exponent * math.log2(abs(base)) > MAX_INT_BITS:
            raise CalculatorError(f"power is too large: the result would exceed {MAX_INT_BITS} bits")
