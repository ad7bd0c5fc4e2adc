"""Checks that `grpo.config`'s `validate` methods share: each raises a `UserError` naming the field."""

from __future__ import annotations

import importlib.util

from grpo.errors import UserError


def check_multi_turn(cfg) -> None:
    r = cfg.rollout
    if r.tools and r.environment:
        raise UserError("rollout: give rollout.tools or rollout.environment, not both")
    if r.engine != "hf":
        raise UserError("rollout.tools / rollout.environment (multi-turn) need rollout.engine=hf; the vLLM "
                        "engine samples single turns only")
    if cfg.algorithm == "ppo" or cfg.grpo.advantage == "process":
        raise UserError("multi-turn rollouts train with outcome advantages (algorithm=grpo or rft, "
                        "grpo.advantage=outcome or rloo)")
    if r.max_turns < 1 or r.max_observation_tokens < 1 or not r.tool_timeout_s > 0:
        raise UserError("rollout: max_turns and max_observation_tokens must be >= 1, tool_timeout_s > 0")


def check_tensorboard(wanted: bool, name: str) -> None:
    """Before anything is written: the TensorBoard writer's package is there."""
    if wanted and importlib.util.find_spec("tensorboard") is None:
        raise UserError(f"{name}: the tensorboard package is not installed (pip install 'grpo[tensorboard]')")


def check_wandb(wanted: bool) -> None:
    """Before anything is written: Weights & Biases' package is there."""
    if wanted and importlib.util.find_spec("wandb") is None:
        raise UserError("train.report_to: wandb: the wandb package is not installed (pip install "
                        "'grpo[wandb]')")


def not_negative(cfg, names: list[str]) -> None:
    for name in names:
        section, key = name.split(".")
        value = getattr(getattr(cfg, section), key)
        if value < 0:
            raise UserError(f"{name} must be >= 0, got {value}")


def positive(cfg, names: list[str], prefix: str = "") -> None:
    for name in names:
        value = cfg
        for part in name.split("."):
            value = getattr(value, part)
        if value <= 0:
            raise UserError(f"{prefix}{name} must be a positive integer, got {value}")
