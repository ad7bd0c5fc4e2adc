"""The built-in verifiable task: short multi-step arithmetic word problems.

    prompt:  "Mia has 8 shells, finds 7, loses 5, finds 3. How many?\n"
    answer:  "13"
    worked:  "<think>8+7=15\n15-5=10\n10+3=13</think><answer>13</answer>"
    direct:  "<think></think><answer>13</answer>"

Every problem has a checkable integer answer and every line of working is itself checkable
(`step_rewards`), so the task serves outcome and process supervision alike.

The warm-start demonstrations mix two styles, like real SFT data that mixes careful solutions with
bare answers: a fraction `direct_fraction` of them state the answer with an empty <think> block.
A small model cannot do three operations in its head, so an SFT model that imitates this mixture
answers directly (and mostly wrongly) whenever the bare style is the more likely one. SFT alone
cannot fix that: it matches the demonstrations, whatever their style. Reinforcement learning with a
verifiable reward can: sampled worked solutions are right more often, get positive advantages, and
the policy shifts towards working things out (the "RL sharpens the output distribution" effect of
DeepSeekMath §5.2.2, where maj@K improves but pass@K does not).

Train and held-out problems are disjoint by construction (split on a hash of the problem itself).
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from dataclasses import dataclass

NAMES = ["Mia", "Tom", "Ava", "Leo", "Zoe", "Sam", "Ivy", "Max", "Eli", "Amy"]
ITEMS = ["shells", "coins", "cards", "pens", "stamps", "beads", "books", "apples"]
GAIN = ["finds", "gets", "wins", "buys"]
LOSS = ["loses", "gives", "drops", "sells"]
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
FORMAT_RE = re.compile(r"^<think>(.*?)</think><answer>(.*?)</answer>$", re.S)
STEP_RE = re.compile(r"^\s*(-?\d+)\s*([+-])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")


@dataclass(frozen=True)
class Problem:
    start: int
    deltas: tuple[int, ...]  # signed changes, applied in order
    name: str
    item: str

    @property
    def answer(self) -> int:
        return self.start + sum(self.deltas)

    def prompt(self) -> str:
        verbs = []
        for i, d in enumerate(self.deltas):
            verb = (GAIN if d > 0 else LOSS)[(self.start + i) % 4]
            verbs.append(f"{verb} {abs(d)}")
        return f"{self.name} has {self.start} {self.item}, {', '.join(verbs)}. How many?\n"

    def worked_solution(self) -> str:
        lines, value = [], self.start
        for d in self.deltas:
            new = value + d
            lines.append(f"{value}{'+' if d > 0 else '-'}{abs(d)}={new}")
            value = new
        return f"<think>{chr(10).join(lines)}</think><answer>{value}</answer>"

    def direct_solution(self) -> str:
        return f"<think></think><answer>{self.answer}</answer>"


def _is_heldout(start: int, deltas: tuple[int, ...], heldout_percent: int) -> bool:
    key = f"{start}:{','.join(map(str, deltas))}"
    h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    return h % 100 < heldout_percent


def problem_space(num_steps: int = 3, max_start: int = 9, max_delta: int = 9,
                  max_value: int = 19) -> list[tuple[int, tuple[int, ...]]]:
    """Every (start, deltas) whose running value stays in 0..max_value, in a fixed order."""
    steps = [d for d in range(-max_delta, max_delta + 1) if d != 0]
    out = []
    for start in range(1, max_start + 1):
        for deltas in itertools.product(steps, repeat=num_steps):
            values = list(itertools.accumulate(deltas, initial=start))
            if all(0 <= v <= max_value for v in values):
                out.append((start, deltas))
    return out


def make_problems(n: int, split: str, seed: int = 0, heldout_percent: int = 20, **space) -> list[Problem]:
    """`n` distinct problems of one split ("train" or "heldout"), drawn without replacement from
    `problem_space(**space)`; the split of a problem depends only on the problem, never on the seed."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    rng = random.Random(f"{seed}:{split}")
    pool = [(s, d) for s, d in problem_space(**space) if _is_heldout(s, d, heldout_percent) == (split == "heldout")]
    if n > len(pool):
        raise ValueError(f"asked for {n} {split} problems but this task has only {len(pool)}")
    return [Problem(s, d, rng.choice(NAMES), rng.choice(ITEMS)) for s, d in rng.sample(pool, n)]


def make_rows(n: int, split: str, seed: int = 0, direct_fraction: float = 0.0, **kw) -> list[dict]:
    """Dataset rows {prompt, answer, target}: `target` is the SFT demonstration for the row, direct
    (bare answer) for a seeded `direct_fraction` of rows and worked otherwise."""
    rng = random.Random(f"{seed}:{split}:style")
    rows = []
    for p in make_problems(n, split, seed, **kw):
        target = p.direct_solution() if rng.random() < direct_fraction else p.worked_solution()
        rows.append({"prompt": p.prompt(), "answer": str(p.answer), "target": target})
    return rows


def parse_answer(completion: str) -> str | None:
    """The text inside the first <answer>...</answer>, stripped; None if there is none."""
    m = ANSWER_RE.search(completion)
    return m.group(1).strip() if m else None


def is_correct(completion: str, answer: str) -> bool:
    """The checker shared by the accuracy reward and evaluation (they can never drift apart)."""
    pred = parse_answer(completion)
    return pred is not None and pred == str(answer).strip()


def arithmetic_accuracy(prompts, completions, answer, **kwargs) -> list[float]:
    """Reward 1.0 when the <answer> equals the gold integer exactly, else 0.0."""
    return [1.0 if is_correct(c, a) else 0.0 for c, a in zip(completions, answer)]


def arithmetic_format(prompts, completions, **kwargs) -> list[float]:
    """Reward 1.0 for exactly `<think>...</think><answer>...</answer>`, else 0.0."""
    return [1.0 if FORMAT_RE.match(c.strip()) else 0.0 for c in completions]


def step_rewards(completion: str) -> list[tuple[int, float]]:
    """Process supervision: (end character offset, reward) per line of working inside <think>.

    A line scores 1.0 when it is a correct `a+b=c` / `a-b=c`, else 0.0. Offsets are character
    positions in `completion` (exclusive end), mapped to token indices by the caller.
    """
    m = FORMAT_RE.match(completion)
    if not m or not m.group(1):
        return []
    out, pos = [], completion.index("<think>") + len("<think>")
    for line in m.group(1).split("\n"):
        s = STEP_RE.match(line)
        ok = bool(s) and (int(s[1]) + (1 if s[2] == "+" else -1) * int(s[3]) == int(s[4]))
        pos += len(line)
        out.append((pos, 1.0 if ok else 0.0))
        pos += 1  # the newline
    return out


def arithmetic_steps(prompts, completions, answer, **kwargs) -> list[list[tuple[int, float]]]:
    """Process supervision for the built-in task: per completion, one step per line of working
    (`step_rewards`) plus a last step, ending at the completion's end, scored by the final answer.

    >>> arithmetic_steps(["..."], ["<think>8+7=15\\n15-5=9</think><answer>9</answer>"], ["10"])
    [[(13, 1.0), (20, 0.0), (46, 0.0)]]
    """
    return [step_rewards(c) + [(len(c), 1.0 if is_correct(c, a) else 0.0)] for c, a in zip(completions, answer)]
