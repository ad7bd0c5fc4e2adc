"""The built-in `calculator` tool: exact integer/decimal arithmetic over a parsed expression (no eval)."""

from __future__ import annotations

import ast
import operator

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_MAX_EXPONENT = 64
_MAX_DIGITS = 100


def _value(node: ast.AST):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _value(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        a, b = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and abs(b) > _MAX_EXPONENT:
            raise ValueError(f"exponent {b} is too large (at most {_MAX_EXPONENT})")
        out = _OPS[type(node.op)](a, b)
        if isinstance(out, int) and len(str(abs(out))) > _MAX_DIGITS:
            raise ValueError(f"result has more than {_MAX_DIGITS} digits")
        return out
    raise ValueError(f"unsupported expression: {ast.unparse(node)!r} (numbers, + - * / // % ** and "
                     "parentheses)")


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly: numbers, + - * / // % ** and parentheses.

    >>> calculator("347*29")
    '10063'
    >>> calculator("7/2")
    '3.5'
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    out = _value(tree.body)
    if isinstance(out, float) and out.is_integer():
        out = int(out)
    return str(out)
