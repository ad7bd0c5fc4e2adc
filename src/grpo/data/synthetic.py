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
TIMES = {2: "doubles them", 3: "triples them"}
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
FORMAT_RE = re.compile(r"^<think>(.*?)</think><answer>(.*?)</answer>$", re.S)
STEP_RE = re.compile(r"^\s*(-?\d+)\s*([+*-])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
SPLITS = ("train", "validation", "heldout")
VALIDATION_PERCENT = 10
"""Share of the problems set aside as the validation split when one is asked for."""
ENUMERATE_UP_TO = 200_000
"""Spaces with at most this many candidate problems are listed whole; larger ones are sampled."""


def apply(value: int, op: str, amount: int) -> int:
    return value + amount if op == "+" else value - amount if op == "-" else value * amount


def running_values(start: int, ops) -> list[int]:
    """The value after each operation, `start` first."""
    return list(itertools.accumulate(ops, lambda value, o: apply(value, *o), initial=start))


@dataclass(frozen=True)
class Space:
    """Which problems the built-in task draws: `num_steps` operations on a start in 1..max_start,
    adding or taking away 1..max_delta (and, with `multiply`, doubling or tripling), with every
    running value in 0..max_value. The defaults are the original 3-step task."""

    num_steps: int = 3
    max_start: int = 9
    max_delta: int = 9
    max_value: int = 19
    multiply: bool = False

    def options(self) -> list[tuple[str, int]]:
        out = [("-" if d < 0 else "+", abs(d)) for d in range(-self.max_delta, self.max_delta + 1) if d != 0]
        return out + ([("*", 2), ("*", 3)] if self.multiply else [])

    def candidates(self) -> int:
        return self.max_start * len(self.options()) ** self.num_steps


@dataclass(frozen=True)
class Problem:
    start: int
    ops: tuple[tuple[str, int], ...]  # ("+", 7), ("-", 5), ("*", 2), applied in order
    name: str
    item: str

    @property
    def answer(self) -> int:
        return running_values(self.start, self.ops)[-1]

    def prompt(self) -> str:
        verbs = []
        for i, (op, amount) in enumerate(self.ops):
            verbs.append(TIMES[amount] if op == "*"
                         else f"{(GAIN if op == '+' else LOSS)[(self.start + i) % 4]} {amount}")
        return f"{self.name} has {self.start} {self.item}, {', '.join(verbs)}. How many?\n"

    def worked_solution(self) -> str:
        values = running_values(self.start, self.ops)
        lines = [f"{v}{op}{amount}={new}" for v, (op, amount), new in zip(values, self.ops, values[1:])]
        return f"<think>{chr(10).join(lines)}</think><answer>{values[-1]}</answer>"

    def direct_solution(self) -> str:
        return f"<think></think><answer>{self.answer}</answer>"


def _bucket(start: int, ops: tuple[tuple[str, int], ...]) -> int:
    """0..99 from a hash of the problem alone: its split never depends on a seed."""
    key = f"{start}:{','.join(('' if op == '+' else op) + str(a) for op, a in ops)}"  # "8:7,-5,*2"
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100


def _split_of(bucket: int, heldout_percent: int, validation_percent: int) -> str:
    if bucket < heldout_percent:
        return "heldout"
    return "validation" if bucket >= 100 - validation_percent else "train"


def _in_range(start: int, ops, max_value: int) -> bool:
    return all(0 <= v <= max_value for v in running_values(start, ops))


def problem_space(num_steps: int = 3, max_start: int = 9, max_delta: int = 9, max_value: int = 19,
                  multiply: bool = False) -> list[tuple[int, tuple[tuple[str, int], ...]]]:
    """Every (start, ops) whose running value stays in 0..max_value, in a fixed order."""
    space = Space(num_steps, max_start, max_delta, max_value, multiply)
    return [(start, ops) for start in range(1, max_start + 1)
            for ops in itertools.product(space.options(), repeat=num_steps)
            if _in_range(start, ops, max_value)]


def _sample_space(space: Space, rng: random.Random, n: int, split: str, heldout_percent: int,
                  validation_percent: int) -> list[tuple[int, tuple[tuple[str, int], ...]]]:
    """`n` distinct problems of `split` from a space too large to list: at each step an operation
    (add, take away, multiply) is drawn among those that keep the value in range, then its amount."""
    seen, out, options = set(), [], space.options()
    for _ in range(50 * n + 1000):
        start, ops = rng.randint(1, space.max_start), []
        value = start
        for _ in range(space.num_steps):
            valid = [o for o in options if 0 <= apply(value, *o) <= space.max_value
                     and not (o[0] == "*" and value == 0)]
            kind = rng.choice(sorted({op for op, _ in valid}))
            op = rng.choice([o for o in valid if o[0] == kind])
            ops.append(op)
            value = apply(value, *op)
        problem = (start, tuple(ops))
        if problem in seen or _split_of(_bucket(*problem), heldout_percent, validation_percent) != split:
            continue
        seen.add(problem)
        out.append(problem)
        if len(out) == n:
            return out
    raise ValueError(f"asked for {n} {split} problems but found only {len(out)} in {50 * n + 1000} draws")


def make_problems(n: int, split: str, seed: int = 0, heldout_percent: int = 20, validation_percent: int = 0,
                  **space) -> list[Problem]:
    """`n` distinct problems of one split ("train", "validation" or "heldout"); the split of a problem
    depends only on the problem, never on the seed. `validation_percent` of the problems are set
    aside as validation (disjoint from train and held-out); 0 keeps them in train."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "validation" and not validation_percent:
        validation_percent = VALIDATION_PERCENT
    rng = random.Random(f"{seed}:{split}")
    sp = Space(**space)
    if sp.candidates() <= ENUMERATE_UP_TO:
        pool = [(s, o) for s, o in problem_space(**space)
                if _split_of(_bucket(s, o), heldout_percent, validation_percent) == split]
        if n > len(pool):
            raise ValueError(f"asked for {n} {split} problems but this task has only {len(pool)}")
        chosen = rng.sample(pool, n)
    else:
        chosen = _sample_space(sp, rng, n, split, heldout_percent, validation_percent)
    return [Problem(s, o, rng.choice(NAMES), rng.choice(ITEMS)) for s, o in chosen]


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
        ok = bool(s) and apply(int(s[1]), s[2], int(s[3])) == int(s[4])
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
    return [
        step_rewards(c) + [(len(c), 1.0 if is_correct(c, a) else 0.0)] for c, a in zip(completions, answer)
    ]
