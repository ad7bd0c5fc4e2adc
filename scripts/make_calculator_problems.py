"""Write `builtin:calculator`'s problems as chat messages for a chat model: data/calculator_{train,test}.jsonl.

    python scripts/make_calculator_problems.py       # 2000 train, 200 test (100 hard, 100 easy)

The rows are `grpo.data.calculator`'s (half 3-digit x 2-digit products, half sums of two digits; SFT
demonstrations in column `target` that call the `calculator` tool on a share of the hard problems and
state the answer on the others), with the question in a user message that says how to call the tool
and how to answer. Hard test problems are disjoint from the training ones (split on a hash of the
numbers); the 81 easy sums recur in both. The test split takes as many hard problems as easy ones.
calculator_train_tools.jsonl has the same training problems with complete tool-use demonstrations (every
hard one calls the tool): the best SFT data there is for `grpo reproduce --config
configs/smollm2_tools_vs_sft.yaml`; calculator_train_answers.jsonl has them with the answer only (no
demonstration calls the tool, as in a dataset of questions and answers): what `sft_more` trains on in
configs/smollm2_tools_answers_only.yaml. Deterministic: the same arguments write the same bytes. Used by
configs/smollm2_tools.yaml.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from grpo.data.calculator import make_rows

INSTRUCTION = ('You have a calculator tool. To use it, reply with only <tool_call>{"name":"calculator","arguments":'
               '{"expression":"..."}}</tool_call>. Give the final answer as <answer>N</answer>.')


def chat_rows(rows: list[dict]) -> list[dict]:
    return [{**r, "prompt": [{"role": "user", "content": r["prompt"] + INSTRUCTION}]} for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data", help="directory for calculator_{train,test}.jsonl")
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=200, help="held-out problems, half hard and half easy")
    p.add_argument("--direct-fraction", type=float, default=0.7,
                   help="share of the hard demonstrations that state the product instead of calling the tool")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = make_rows(args.train, "train", args.seed, args.direct_fraction)
    pool = make_rows(6 * args.test, "heldout", args.seed)  # 5 easy to 1 hard: draw each half from it
    test = [r for r in pool if r["kind"] == "hard"][: args.test // 2]
    test += [r for r in pool if r["kind"] == "easy"][: args.test - len(test)]
    tools = make_rows(args.train, "train", args.seed, 0.0)  # every hard demonstration calls the tool
    answers = make_rows(args.train, "train", args.seed, 1.0)  # none does: the answer only
    for split, rows in (("train", train), ("test", test), ("train_tools", tools), ("train_answers", answers)):
        path = out / f"calculator_{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(rows)), encoding="utf-8")
        print(f"wrote {path} ({len(rows)} problems)")


if __name__ == "__main__":
    main()
