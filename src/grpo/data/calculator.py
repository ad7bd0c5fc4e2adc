"""`builtin:calculator`: arithmetic where a tool pays (docs/tools.md).

Half the problems are products of a 3-digit and a 2-digit number, which the tiny model cannot compute
in its head but can with the built-in `calculator` tool; half are sums of two digits, which it can:

    hard:  "Mia buys 347 boxes of 29 pens. How many pens?\\n"   answer "10063"
    easy:  "Tom has 3 coins, finds 4. How many?\\n"              answer "7"

The SFT demonstrations (column `target`, a list of chat messages) answer easy problems directly and
hard ones with a tool call except for a fraction `direct_fraction` of them, which state the right
product directly, which the model can imitate in form only. So the warm-started model calls the tool
on some hard problems and guesses on the others, and GRPO, rewarded for the right answer only, can
learn to call it. A demonstration with a call is the episode a rollout would produce:

    assistant: <tool_call>{"name":"calculator","arguments":{"expression":"347*29"}}</tool_call>
    tool:      10063
    assistant: <answer>10063</answer>

Train and held-out problems are disjoint (split on a hash of the numbers).
"""

from __future__ import annotations

import hashlib
import json
import random

from grpo.data.synthetic import ITEMS, NAMES


def tool_call(expression: str) -> str:
    """The call text the demonstrations use (grpo.tools.parser's default format, no spaces)."""
    return "<tool_call>" + json.dumps({"name": "calculator", "arguments": {"expression": expression}},
                                      separators=(",", ":")) + "</tool_call>"


def _heldout(key: str, percent: int = 20) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100 < percent


def make_rows(n: int, split: str, seed: int = 0, direct_fraction: float = 0.7) -> list[dict]:
    """`n` rows {prompt, answer, kind ('hard'/'easy'), target (list of messages)} of one split."""
    rng = random.Random(f"{seed}:{split}:calculator")
    want_heldout = split == "heldout"
    rows = []
    while len(rows) < n:
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        if rng.random() < 0.5:
            a, b = rng.randint(100, 999), rng.randint(11, 99)
            if _heldout(f"mul:{a}:{b}") != want_heldout:
                continue
            answer, kind = a * b, "hard"
            prompt = f"{name} buys {a} boxes of {b} {item}. How many {item}?\n"
            if rng.random() >= direct_fraction:
                target = [{"role": "assistant", "content": tool_call(f"{a}*{b}")},
                          {"role": "tool", "name": "calculator", "content": str(answer)},
                          {"role": "assistant", "content": f"<answer>{answer}</answer>"}]
            else:
                target = [{"role": "assistant", "content": f"<answer>{answer}</answer>"}]
        else:
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            answer, kind = a + b, "easy"  # 81 problems: the held-out ones recur (they are the easy half)
            prompt = f"{name} has {a} {item}, finds {b}. How many?\n"
            target = [{"role": "assistant", "content": f"<answer>{answer}</answer>"}]
        rows.append({"prompt": prompt, "answer": str(answer), "kind": kind, "target": target})
    return rows
