"""Pinned numbers: the first 3 steps of `grpo train` on the default tiny configuration.

Everything on the path from data to update (the synthetic task, tokenisation, sampling, rewards,
advantages, log-probs, the loss, AdamW and its warm-up) feeds these numbers, so a change that moves
any of them fails here, at rel 1e-4, even when every other test still passes.

The configuration is `grpo train`'s defaults (the tiny Llama, G = 8, beta = 0.04, lr 5e-4 with its
warm-up, 32 new tokens, temperature 1) with three changes that keep the test at a few seconds and
the numbers informative: 2 prompts a step instead of 16 (micro-batches of 16), 4 held-out problems
instead of 200, and a third reward, digit_share (tests/conftest.py), after the two default ones. The
random model never gets the arithmetic right, so with the default rewards alone every group's
rewards are equal: the advantages, the loss, the KL and the gradient would all be 0 and pin nothing.

A change meant to move these numbers re-pins them: run `.venv/bin/python tests/test_golden.py`,
paste the dict it prints over GOLDEN, and say in the commit why the numbers moved.
"""

import json
import sys
from pathlib import Path

import pytest

from grpo.commands.cli import main

GOLDEN = {  # metrics.jsonl key: [step 1, step 2, step 3]
    "loss":                 [-1.4901161193847656e-08, 0.0003148019313812256, 0.0008800867944955826],
    "pg_loss":              [-1.4901161193847656e-08, 8.456408977508545e-07, -3.0547380447387695e-07],
    "kl":                   [0.0, 0.00788683071732521, 0.022687437012791634],
    "grad_norm":            [1.8703835010528564, 1.6805301904678345, 1.5626169443130493],
    "entropy":              [6.965173244476318, 6.965036869049072, 6.9632039070129395],
    "reward/mean":          [0.9659059047698975, 0.9599111676216125, 0.9563934803009033],
    "reward/std":           [0.030155500397086143, 0.04747127369046211, 0.03722091391682625],
    "reward/digit_share":   [0.965905969729502, 0.9599110974037929, 0.9563934972887048],
    "completion/len_mean":  [32.0, 31.5625, 30.0625],
    "completion/len_max":   [32.0, 32.0, 32.0],
    "completion/truncated": [1.0, 0.9375, 0.875],
    "lr":                   [0.00016666666666666666, 0.00025, 0.0003333333333333333],
}


def golden_run(tmp_path: Path, reward_file: Path) -> dict[str, list[float]]:
    """`grpo train` with the overrides above; GOLDEN's keys from metrics.jsonl, step by step."""
    rewards = (f"rewards.functions=[{{fn: arithmetic_accuracy}}, {{fn: arithmetic_format, weight: 0.1}}, "
               f"{{fn: '{reward_file}:digit_share'}}]")
    argv = ["train", "-q", "train.steps=3", "train.prompts_per_step=2", "train.micro_batch_size=16",
            "data.num_heldout=4", "train.threads=1", rewards, f"train.output_dir={tmp_path / 'run'}"]
    assert main(argv) == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "reward/mean" in x]
    return {k: [x[k] for x in steps] for k in GOLDEN}


def test_the_default_tiny_configuration_takes_its_pinned_first_three_steps(tmp_path, reward_file):
    got = golden_run(tmp_path, reward_file)
    for k, want in GOLDEN.items():
        # the surrogate's value is 0 up to float32 rounding with mu = 1 (docs/metrics.md): pg_loss, and the
        # loss before the KL term has grown, are rounding noise of ~1e-6, pinned to that; the rest to rel 1e-4
        tol = 1e-6 if k in ("loss", "pg_loss") else 1e-12
        assert got[k] == pytest.approx(want, rel=1e-4, abs=tol), k
    # the numbers pin something: every update had a signal, and the policy moved away from the reference
    assert all(g > 0.1 for g in got["grad_norm"]) and all(s > 0 for s in got["reward/std"])
    assert got["kl"][0] == 0 < got["kl"][1] < got["kl"][2]


if __name__ == "__main__":  # re-pin: print GOLDEN from a fresh run
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        reward_file = Path(tmp) / "digits.py"
        sys.path.insert(0, str(Path(__file__).parent))
        from conftest import REWARD

        reward_file.write_text(REWARD)
        got = golden_run(Path(tmp), reward_file)
        print("GOLDEN = {  # metrics.jsonl key: [step 1, step 2, step 3]")
        print(*(f"    {json.dumps(k) + ':':<23} {v}," for k, v in got.items()), "}", sep="\n")
