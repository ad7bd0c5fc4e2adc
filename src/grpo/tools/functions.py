"""Tools are plain Python functions: typed arguments, the docstring as the description.

    def calculator(expression: str) -> str:
        \"\"\"Evaluate an arithmetic expression (+ - * / ** and parentheses) exactly.\"\"\"
        ...

`tool_schema(fn)` derives the JSON schema a chat template's `tools=` argument (and the model) reads,
in the OpenAI function format that Qwen's and SmolLM2's templates render:

    {"type": "function", "function": {"name": "calculator",
     "description": "Evaluate an arithmetic expression (+ - * / ** and parentheses) exactly.",
     "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                    "required": ["expression"]}}}

Config entries name them by reference like reward functions (`rollout.tools: [{fn: my_tools.py:calc}]`,
`package.module:fn`, or a built-in name: `calculator`); a function from a file pickles as (path, name),
so a reward-pool worker reloads it (grpo.rewards.loader).
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable

from grpo.errors import UserError
from grpo.utils.references import FileFunction, load_function

BUILTIN_TOOLS = {"calculator": "grpo.tools.calculator:calculator"}
"""Built-in tool names -> references."""

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


@dataclass
class Tool:
    """One callable tool."""

    name: str
    """What the model writes in a call's "name"."""
    fn: Callable[..., Any]
    """The function; called with the call's "arguments" as keywords."""
    schema: dict
    """`tool_schema(fn)`."""
    sandbox: bool = False
    """Run each call in the code sandbox (a fresh process with limits, grpo.sandbox) instead of the
    reward worker pool."""
    source: str | None = None
    """The .py file the function was loaded from (needed to run it in the sandbox)."""


def _json_type(annotation) -> dict:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _json_type(options[0]) if len(options) == 1 else {}
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(annotation))}
    if origin in (list, tuple):
        return {"type": "array"}
    if origin is dict:
        return {"type": "object"}
    return {"type": _JSON_TYPES[annotation]} if annotation in _JSON_TYPES else {}


def tool_schema(fn: Callable[..., Any], name: str | None = None) -> dict:
    """The function-calling schema of `fn`: its name, docstring and typed parameters (module docstring).

    >>> def add(a: int, b: int = 0) -> int:
    ...     '''Add two integers.'''
    >>> tool_schema(add)["function"]["parameters"]
    {'type': 'object', 'properties': {'a': {'type': 'integer'}, 'b': {'type': 'integer'}}, 'required': ['a']}
    """
    target = inspect.unwrap(fn)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 (an annotation that does not resolve: described without a type)
        hints = {}
    properties, required = {}, []
    for p in inspect.signature(target).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        properties[p.name] = _json_type(hints.get(p.name))
        if p.default is p.empty:
            required.append(p.name)
    return {"type": "function", "function": {
        "name": name or target.__name__, "description": inspect.cleandoc(target.__doc__ or ""),
        "parameters": {"type": "object", "properties": properties, "required": required}}}


def load_tools(entries: list) -> list[Tool]:
    """Tools from config entries ({fn, sandbox}); a mistake is a `UserError` naming the entry."""
    tools = []
    for entry in entries:
        ref = BUILTIN_TOOLS.get(entry.fn, entry.fn)
        if ":" not in ref:
            raise UserError(f"rollout.tools: unknown tool {entry.fn!r}: use a built-in "
                            f"({', '.join(BUILTIN_TOOLS)}), 'path/to/file.py:function' or "
                            "'package.module:function'")
        fn = load_function(ref, "tool")
        source = fn.path if isinstance(fn, FileFunction) else inspect.getsourcefile(inspect.unwrap(fn))
        tools.append(Tool(ref.rsplit(":", 1)[1], fn, tool_schema(fn), entry.sandbox, source))
    names = [t.name for t in tools]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"rollout.tools: two tools are named {repeated[0]!r}")
    return tools
