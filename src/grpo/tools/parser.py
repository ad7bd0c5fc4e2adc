"""Tool calls parsed from a policy turn's text.

The default format is the one Qwen2.5/3 and SmolLM2 are trained on (Hermes style): each call is a JSON
object with "name" and "arguments" between tags,

    <tool_call>{"name": "calculator", "arguments": {"expression": "347*29"}}</tool_call>

A parser is any function `text -> list[ToolCall]` (`rollout.tool_parser`: a built-in name or
'file.py:function'). A call that cannot be read comes back as a `ToolCall` with `error` set, which
becomes an error observation the model sees (never an exception).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable

from grpo.errors import UserError
from grpo.utils.references import load_function


@dataclass
class ToolCall:
    name: str
    """The tool's name as written by the model ('' when the call could not be read)."""
    arguments: dict = field(default_factory=dict)
    """Keyword arguments for the tool."""
    error: str | None = None
    """Why the call could not be read (then it is not run)."""


TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.S)


def parse_json_tags(text: str) -> list[ToolCall]:
    """Every `<tool_call>{json}</tool_call>` in `text`, in order; an unclosed tag at the end counts too.

    >>> parse_json_tags('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>')
    [ToolCall(name='f', arguments={'x': 1}, error=None)]
    >>> parse_json_tags('<tool_call>{"name": f}</tool_call>')[0].error
    'malformed tool call: not JSON (Expecting value at char 9)'
    """
    calls = []
    for m in TOOL_CALL_RE.finditer(text):
        body = m.group(1).strip()
        if not m.group(2):
            calls.append(ToolCall("", error="malformed tool call: no closing </tool_call>"))
            continue
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as e:
            calls.append(ToolCall("", error=f"malformed tool call: not JSON ({e.msg} at char {e.pos})"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            calls.append(ToolCall("",
                                  error='malformed tool call: expected {"name": ..., "arguments": {...}}'))
            continue
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        if not isinstance(args, dict):
            calls.append(ToolCall(obj["name"],
                                  error="malformed tool call: \"arguments\" must be a JSON object"))
            continue
        calls.append(ToolCall(obj["name"], args))
    return calls


PARSERS: dict[str, Callable[[str], list[ToolCall]]] = {"json_tags": parse_json_tags}
"""Built-in parsers by name."""


def load_parser(ref: str) -> Callable[[str], list[ToolCall]]:
    """A built-in parser name or a 'file.py:function' / 'module:function' reference."""
    if ref in PARSERS:
        return PARSERS[ref]
    if ":" not in ref:
        raise UserError(f"rollout.tool_parser: unknown parser {ref!r}: use a built-in "
                        f"({', '.join(PARSERS)}), 'path/to/file.py:function' or 'package.module:function'")
    return load_function(ref, "parser")
