"""JSON as the run files write it: indented, with each flat list on one line."""

from __future__ import annotations

import json
import re

_FLAT_LIST = re.compile(r"\[\n\s+([^\[\]{}]*?)\n\s*\]")
"""An indented JSON list holding no list or object (JSON strings hold no raw newline or, here, bracket)."""


def json_text(obj) -> str:
    """`json.dumps(obj, indent=2)`, but a list of numbers, strings or nulls on one line, so that a file with
    per-problem scores (hundreds of them per model) stays readable; `json.loads` gives `obj` back.

    >>> print(json_text({"seeds": [0, 1], "scores": {"grpo": [1.0, 0.0]}}))
    {
      "seeds": [0, 1],
      "scores": {
        "grpo": [1.0, 0.0]
      }
    }
    """
    one_line = lambda m: "[" + re.sub(r",\n\s+", ", ", m.group(1)) + "]"  # noqa: E731
    return _FLAT_LIST.sub(one_line, json.dumps(obj, indent=2))
