"""Reward functions for GRPO (DeepSeek-R1 recipe): math accuracy, output format, length and
repetition penalties, a learned reward model, user functions by reference, and their weighted sum.

Every reward is a plain function (or callable object) following one contract, see
`grpo.rewards.combine` and docs/rewards.md:

    fn(prompts, completions, completion_ids, **columns) -> list[float | None]

Importing this package does not import torch, transformers or math-verify; they load on first use.
"""

from grpo.rewards.combine import (
    RewardInputs,
    RewardResult,
    RewardSpec,
    compute_rewards,
    make_reward_pool,
    reward_inputs,
    reward_spec,
)
from grpo.rewards.format import (
    make_length_penalty,
    make_repetition_penalty,
    make_soft_overlong_penalty,
    r1_format_lenient,
    gsm8k_format,
    r1_format_strict,
)
from grpo.rewards.loader import BUILTIN_REWARDS, FileRewardFunction, RewardFn, load_reward_function
from grpo.rewards.math import (
    MathAccuracy,
    answers_match,
    extract_gold,
    extract_prediction,
    make_math_accuracy,
    math_accuracy,
)
from grpo.rewards.model import RewardModel
from grpo.utils.deadline import CallTimeout, run_with_deadline

__all__ = [
    "BUILTIN_REWARDS",
    "CallTimeout",
    "FileRewardFunction",
    "MathAccuracy",
    "RewardModel",
    "RewardFn",
    "RewardInputs",
    "RewardResult",
    "RewardSpec",
    "answers_match",
    "compute_rewards",
    "extract_gold",
    "extract_prediction",
    "load_reward_function",
    "make_length_penalty",
    "make_math_accuracy",
    "make_repetition_penalty",
    "make_reward_pool",
    "make_soft_overlong_penalty",
    "math_accuracy",
    "r1_format_lenient",
    "gsm8k_format",
    "r1_format_strict",
    "reward_inputs",
    "reward_spec",
    "run_with_deadline",
]
