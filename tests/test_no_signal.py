"""Saying when a run cannot learn: the share of groups without signal, expected
vs measured, and the warning."""

import logging
import random

import pytest

from grpo.algorithm import expected_zero_std_fraction
from grpo.config import TrainConfig, load_config
from grpo.train.rollout_metrics import warn_if_no_signal


def test_expected_share_hand_values():
    # p = 0.05, G = 8: 0.05^8 + 0.95^8 = 3.9e-11 + 0.66342 = 0.66342
    assert expected_zero_std_fraction(0.05, 8) == pytest.approx(0.6634204313, abs=1e-9)
    assert expected_zero_std_fraction(0.5, 8) == pytest.approx(2 / 256)
    assert expected_zero_std_fraction(0.0, 4) == 1.0 and expected_zero_std_fraction(1.0, 4) == 1.0
    with pytest.raises(ValueError):
        expected_zero_std_fraction(1.5, 4)


def test_expected_share_matches_simulated_binary_groups():
    rng, p, G, trials = random.Random(0), 0.2, 6, 20000
    flat = sum(len({rng.random() < p for _ in range(G)}) == 1 for _ in range(trials)) / trials
    assert flat == pytest.approx(expected_zero_std_fraction(p, G), abs=0.01)  # 0.2^6 + 0.8^6 = 0.2622


def _record(share, p=0.03):
    return {"step": 1, "reward/zero_std_groups": share, "reward/acc": p,
            "reward/zero_std_expected": expected_zero_std_fraction(p, 8)}


def test_warning_once_when_most_groups_carry_no_signal(caplog):
    cfg = load_config(TrainConfig, None, ["grpo.G=8"])
    with caplog.at_level(logging.WARNING, logger="grpo.train.grpo"):
        assert warn_if_no_signal(_record(0.5), cfg, "acc", False) is False  # half is not "most"
        assert warn_if_no_signal(_record(0.75), cfg, "acc", False) is True
        assert warn_if_no_signal(_record(1.0), cfg, "acc", True) is True  # already said: not again
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "75% of the groups have all-equal rewards" in lines[0] and "78% expected" in lines[0]
    assert "pass rate acc = 3.0%" in lines[0] and "grpo.G=8" in lines[0] and "temperature" in lines[0]


def test_training_logs_expected_share_and_warns_from_the_first_step(tmp_path, caplog):
    from grpo.train.grpo import train

    # the random tiny model never solves the built-in task: every group is all zeros
    cfg = load_config(TrainConfig, None, [
        "train.steps=1", "train.prompts_per_step=2", "grpo.G=4", "train.micro_batch_size=8",
        "sampling.max_new_tokens=8", "data.num_heldout=0", "data.num_train=16", "train.eval_every=0",
        f"train.output_dir={tmp_path / 'run'}", "rewards.functions=[{fn: arithmetic_accuracy}]"])
    with caplog.at_level(logging.WARNING, logger="grpo.train.grpo"):
        res = train(cfg, progress=False)
    step = res.history[0]
    assert step["reward/zero_std_groups"] == 1.0 and step["reward/zero_std_expected"] == 1.0
    assert any("100% of the groups have all-equal rewards" in r.getMessage() for r in caplog.records)
