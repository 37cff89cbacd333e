"""The calculator: correct arithmetic, and refusal of everything else."""

from __future__ import annotations

import math

import pytest

from dispatcher.tools import CalculatorError, evaluate

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("2 ** 3 ** 2", 512),  # right-associative
        ("-2 ** 2", -4),  # unary minus binds looser than **
        ("(-2) ** 2", 4),
        ("+5 - -3", 8),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("7 % 3", 1),
        ("-7 % 3", 2),
        ("2 ** -1", 0.5),
        ("0.1 + 0.2", 0.1 + 0.2),
        ("1e3 * 2", 2000.0),
        ("10 - 4 - 3", 3),  # left-associative
        ("  1 + 1  ", 2),
        (
            "12345678901234567890 * 98765432109876543210",
            12345678901234567890 * 98765432109876543210,
        ),
        ("2 ** 1000", 2**1000),
    ],
)
def test_arithmetic(expression: str, expected: float) -> None:
    value = evaluate(expression)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("pi", math.pi),
        ("e", math.e),
        ("tau", math.tau),
        ("2 * pi", 2 * math.pi),
        ("abs(-3)", 3),
        ("round(2.567, 2)", 2.57),
        ("round(2.5)", 2),
        ("round(1234, -2)", 1200),
        ("min(3, 1, 2)", 1),
        ("max(3, 1, 2)", 3),
        ("sqrt(16)", 4.0),
        ("floor(-1.5)", -2),
        ("ceil(1.2)", 2),
        ("log(e)", 1.0),
        ("log(8, 2)", 3.0),
        ("exp(0)", 1.0),
        ("sin(0)", 0.0),
        ("cos(0)", 1.0),
        ("tan(0)", 0.0),
        ("sqrt(abs(-9)) + max(1, min(5, 2))", 5.0),
    ],
)
def test_functions_and_constants(expression: str, expected: float) -> None:
    assert evaluate(expression) == pytest.approx(expected)


def test_flat_long_sum_is_allowed() -> None:
    assert evaluate("+".join(["1"] * 90)) == 90


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os')", "unsupported expression: function call to '__import__'"),
        ("open('/etc/passwd')", "unsupported expression: function call to 'open'"),
        ("__import__('os').system('true')", "only calls to named functions"),
        ("(1).real", "unsupported expression: attribute access"),
        ("math.pi", "unsupported expression: attribute access"),
        ("x + 1", "unknown name 'x'"),
        ("__builtins__", "unknown name '__builtins__'"),
        ("lambda: 1", "unsupported expression: lambda"),
        ("[i for i in (1, 2)]", "unsupported expression: comprehension"),
        ("sum(i for i in (1, 2))", "function call to 'sum'"),
        ("max(i for i in (1, 2))", "unsupported expression: comprehension"),
        ("'a' * 3", "unsupported expression: string literal"),
        ("b'a'", "unsupported expression: bytes literal"),
        ("True + 1", "unsupported expression: boolean literal"),
        ("1j", "unsupported expression: complex number literal"),
        ("(1, 2)", "unsupported expression: tuple"),
        ("[1][0]", "unsupported expression: subscript"),
        ("[1, 2]", "unsupported expression: list"),
        ("1 < 2", "unsupported expression: comparison"),
        ("1 and 2", "unsupported expression: boolean operator"),
        ("1 if 1 else 2", "unsupported expression: conditional expression"),
        ("(y := 1)", "unsupported expression: assignment expression"),
        ("f'{1}'", "unsupported expression: f-string"),
        ("1 << 3", "unsupported operator '<<'"),
        ("~1", "unsupported operator '~'"),
        ("sqrt(x=4)", "positional arguments only"),
        ("sqrt(1, 2)", "sqrt() takes 1 argument(s), got 2"),
        ("min()", "min() takes at least 1 argument(s), got 0"),
        ("pi()", "function call to 'pi'"),
        ("sqrt", "'sqrt' is a function"),
        ("1 +", "invalid expression"),
        ("", "expression is empty"),
        ("round(1.5, 0.5)", "integer number of digits"),
    ],
)
def test_rejections_name_the_construct(expression: str, message: str) -> None:
    with pytest.raises(CalculatorError) as excinfo:
        evaluate(expression)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("9**9**9", "exponent is too large"),
        ("10**100000", "exponent is too large"),
        ("2**-100000", "exponent is too large"),
        ("1000**1000", "power is too large"),
        ("(2**1000)**5", "power is too large"),
        (
            "(2**1000) * (2**1000) * (2**1000) * (2**1000) * (2**1000)",
            "integer result is too large",
        ),
        ("round(1, -100000)", "round() digits"),
        ("2.0 ** 1000 * 2.0 ** 1000", "not a finite number"),
        ("10.0 ** 400", "numeric overflow"),
        ("exp(1000)", "numeric overflow"),
        ("1e999", "not a finite number"),
        ("(-8) ** 0.5", "complex number"),
    ],
)
def test_resource_and_range_guards(expression: str, message: str) -> None:
    with pytest.raises(CalculatorError) as excinfo:
        evaluate(expression)
    assert message in str(excinfo.value)


def test_long_input_rejected_before_parsing() -> None:
    with pytest.raises(
        CalculatorError,
        match="expression is too long: 1001 characters; the limit is 1000",
    ):
        evaluate("1" * 1001)


def test_too_many_nodes_rejected() -> None:
    with pytest.raises(CalculatorError, match="too complex"):
        evaluate("+".join(["1"] * 150))


def test_deep_nesting_rejected() -> None:
    with pytest.raises(CalculatorError, match="nested too deeply"):
        evaluate("-" * 150 + "1")
    with pytest.raises(CalculatorError, match="invalid expression"):
        evaluate("(" * 300 + "1" + ")" * 300)  # the parser's own limit


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 / 0", "division by zero"),
        ("1 // 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("1.5 / 0.0", "division by zero"),
    ],
)
def test_division_by_zero(expression: str, message: str) -> None:
    with pytest.raises(CalculatorError, match=message):
        evaluate(expression)


@pytest.mark.parametrize("expression", ["sqrt(-1)", "log(0)", "log(-1, 10)"])
def test_math_domain_errors(expression: str) -> None:
    with pytest.raises(CalculatorError, match=r"math error in (sqrt|log)\(\): math domain error"):
        evaluate(expression)


def test_calculator_error_is_a_value_error() -> None:
    assert issubclass(CalculatorError, ValueError)
