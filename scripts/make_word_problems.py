"""Write GSM8K-style word problems as chat messages: data/word_problems_{train,test}.jsonl.

    python scripts/make_word_problems.py            # 3000 train, 400 test (the files in data/)

word_problems_train_answers.jsonl holds the same training problems with answers only (`#### N`, no
worked solution): the setting where RL with a checker has what SFT lacks (docs/real-model.md).
word_problems_ood_{numbers,steps}.jsonl (200 each) test out of distribution: the training templates with
numbers outside their ranges, and problems of three operations where training's take one or two.

Each row: {"prompt": [{"role": "user", "content": QUESTION + INSTRUCTION}], "answer": "...#### N"}, the
answer a worked solution in GSM8K's style (calculator annotations <<a+b=c>>, then `#### N`), so
`math_accuracy` with `gold_style: gsm8k` reads it as GSM8K's own answers are read. Problems take one
or two operations (+, -, x) on small whole numbers with whole, non-negative results. Train and test
are disjoint by construction: a problem goes to the test split when a hash of its text says so,
never to both. Deterministic: the same arguments write the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

NAMES = ["Mia", "Tom", "Ava", "Leo", "Zoe", "Sam", "Ivy", "Max", "Eli", "Amy", "Noah", "Lily", "Omar", "Rosa",
         "Ben", "Nina", "Jack", "Emma", "Raj", "Sofia"]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "shells", "cards", "coins", "flowers"]
INSTRUCTION = "\nSolve it step by step, then give the final answer as a number on the last line, after ####."


def _one_step(rng: random.Random) -> tuple[str, str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(3, 40), rng.randint(2, 30)
    kind = rng.choice(["add", "sub", "mul"])
    if kind == "add":
        q = f"{name} has {a} {item}. {name} gets {b} more {item}. How many {item} does {name} have now?"
        return q, f"{name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {item}.", a + b
    if kind == "sub":
        a, b = max(a, b) + 1, min(a, b)
        q = f"{name} has {a} {item} and gives {b} of them to a friend. How many {item} does {name} have left?"
        return q, f"{name} has {a} - {b} = <<{a}-{b}={a - b}>>{a - b} {item} left.", a - b
    a, b = rng.randint(2, 9), rng.randint(2, 12)
    q = f"{name} buys {a} bags with {b} {item} in each bag. How many {item} does {name} buy?"
    return q, f"{name} buys {a} * {b} = <<{a}*{b}={a * b}>>{a * b} {item}.", a * b


def _two_steps(rng: random.Random) -> tuple[str, str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(5, 40), rng.randint(2, 25), rng.randint(2, 20)
    kind = rng.choice(["add_sub", "mul_add", "sub_add"])
    if kind == "add_sub":
        c = min(c, a + b)
        q = (f"{name} has {a} {item}. {name} buys {b} more and then loses {c}. "
             f"How many {item} does {name} have now?")
        s = (f"After buying, {name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {item}.\n"
             f"After losing some, {name} has {a + b} - {c} = <<{a + b}-{c}={a + b - c}>>{a + b - c} {item}.")
        return q, s, a + b - c
    if kind == "mul_add":
        a, b = rng.randint(2, 6), rng.randint(2, 10)
        q = (f"{name} has {a} boxes with {b} {item} in each box, and {c} loose {item}. "
             f"How many {item} does {name} have in total?")
        s = (f"The boxes hold {a} * {b} = <<{a}*{b}={a * b}>>{a * b} {item}.\n"
             f"In total {name} has {a * b} + {c} = <<{a * b}+{c}={a * b + c}>>{a * b + c} {item}.")
        return q, s, a * b + c
    b = min(b, a)
    q = (f"{name} had {a} {item}, gave away {b}, and then found {c} more. "
         f"How many {item} does {name} have now?")
    s = (f"After giving some away, {name} has {a} - {b} = <<{a}-{b}={a - b}>>{a - b} {item}.\n"
         f"After finding more, {name} has {a - b} + {c} = <<{a - b}+{c}={a - b + c}>>{a - b + c} {item}.")
    return q, s, a - b + c


def _bigger_numbers(rng: random.Random) -> tuple[str, str, int]:
    """A training template with numbers outside every training range (3-digit sums and differences, a
    2-digit factor): the same wording, longer arithmetic."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.choice(["add", "sub", "mul", "add_sub"])
    if kind == "add":
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        q = f"{name} has {a} {item}. {name} gets {b} more {item}. How many {item} does {name} have now?"
        return q, f"{name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {item}.", a + b
    if kind == "sub":
        a, b = rng.randint(300, 999), rng.randint(100, 299)
        q = f"{name} has {a} {item} and gives {b} of them to a friend. How many {item} does {name} have left?"
        return q, f"{name} has {a} - {b} = <<{a}-{b}={a - b}>>{a - b} {item} left.", a - b
    if kind == "mul":
        a, b = rng.randint(2, 9), rng.randint(13, 99)
        q = f"{name} buys {a} bags with {b} {item} in each bag. How many {item} does {name} buy?"
        return q, f"{name} buys {a} * {b} = <<{a}*{b}={a * b}>>{a * b} {item}.", a * b
    a, b, c = rng.randint(100, 999), rng.randint(100, 999), rng.randint(100, 199)
    q = (f"{name} has {a} {item}. {name} buys {b} more and then loses {c}. "
         f"How many {item} does {name} have now?")
    s = (f"After buying, {name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {item}.\n"
         f"After losing some, {name} has {a + b} - {c} = <<{a + b}-{c}={a + b - c}>>{a + b - c} {item}.")
    return q, s, a + b - c


def _three_steps(rng: random.Random) -> tuple[str, str, int]:
    """Three operations in one problem (training problems take one or two), numbers in training's ranges."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(2, 6), rng.randint(2, 10), rng.randint(2, 20)
    d = rng.randint(2, a * b + c)
    q = (f"{name} has {a} boxes with {b} {item} in each box, and {c} loose {item}. {name} then gives {d} "
         f"{item} to a friend. How many {item} does {name} have left?")
    s = (f"The boxes hold {a} * {b} = <<{a}*{b}={a * b}>>{a * b} {item}.\n"
         f"With the loose ones {name} has {a * b} + {c} = <<{a * b}+{c}={a * b + c}>>{a * b + c} {item}.\n"
         f"After giving some away, {name} has {a * b + c} - {d} = <<{a * b + c}-{d}={a * b + c - d}>>"
         f"{a * b + c - d} {item}.")
    return q, s, a * b + c - d


def make_ood_rows(n: int, kind: str, seed: int) -> list[dict]:
    """`n` distinct out-of-distribution test problems in the training format: `kind` "numbers"
    (`_bigger_numbers`) or "steps" (`_three_steps`). No such problem is a training problem: the numbers
    or the number of steps are outside training's."""
    make = {"numbers": _bigger_numbers, "steps": _three_steps}[kind]
    rng, rows, seen = random.Random(f"{seed}-ood-{kind}"), [], set()
    while len(rows) < n:
        question, solution, answer = make(rng)
        if question in seen:
            continue
        seen.add(question)
        rows.append({"prompt": [{"role": "user", "content": question + INSTRUCTION}],
                     "answer": f"{solution}\n#### {answer}"})
    return rows


def make_rows(n: int, split: str, seed: int, two_step_fraction: float = 0.5) -> list[dict]:
    """`n` distinct problems of `split` ("train" or "test"; about 1 in 8 problems hash to test)."""
    rng, rows, seen = random.Random(f"{seed}-{split}"), [], set()
    while len(rows) < n:
        question, solution, answer = (_two_steps if rng.random() < two_step_fraction else _one_step)(rng)
        in_test = hashlib.sha256(question.encode()).digest()[0] < 32
        if question in seen or in_test != (split == "test"):
            continue
        seen.add(question)
        rows.append({"prompt": [{"role": "user", "content": question + INSTRUCTION}],
                     "answer": f"{solution}\n#### {answer}"})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data", help="directory for word_problems_{train,test}.jsonl")
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--test", type=int, default=400)
    p.add_argument("--ood", type=int, default=200, help="problems in each out-of-distribution test file")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = {"train": make_rows(args.train, "train", args.seed), "test": make_rows(args.test, "test", args.seed),
              # the same training problems with answers only (`#### N`), no worked solutions
              "train_answers": None}
    splits["train_answers"] = [{**r, "answer": r["answer"].rsplit("\n", 1)[-1]} for r in splits["train"]]
    # out of distribution: the same format, bigger numbers or one more step (docs/real-model.md)
    splits["ood_numbers"] = make_ood_rows(args.ood, "numbers", args.seed)
    splits["ood_steps"] = make_ood_rows(args.ood, "steps", args.seed)
    for name, rows in splits.items():
        path = out / f"word_problems_{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"wrote {path} ({len(rows)} problems)")

if __name__ == "__main__":
    main()
