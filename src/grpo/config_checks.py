"""The checks behind `grpo.config`'s `validate` methods: impossible values and combinations, each a
`UserError` naming the field. Unknown keys and wrong types are caught earlier, as `grpo.config_io` reads a
config.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from grpo.errors import UserError

if TYPE_CHECKING:
    from grpo.config import SFTConfig, TrainConfig


_TASK_SIZES = ["data.task_steps", "data.task_max_value", "data.task_max_delta"]


def check_train(cfg: TrainConfig) -> None:
    """`TrainConfig.validate`: sizes, ranges and combinations `grpo train` cannot run with."""
    g, t = cfg.grpo, cfg.train
    positive(cfg, ["grpo.G", "grpo.mu", "train.steps", "train.prompts_per_step", "train.micro_batch_size",
                   "sampling.max_new_tokens", "data.max_prompt_length", "data.num_train",
                   "train.keep_checkpoints", "train.max_bad_steps", "model.tiny_num_layers",
                   "train.iterations", "grpo.max_sampling_rounds", *_TASK_SIZES])
    not_negative(cfg, ["train.eval_every", "train.sample_every", "train.save_every", "train.log_every",
                       "train.threads", "rewards.workers", "sampling.min_new_tokens", "data.num_heldout",
                       "data.num_validation", "optim.lr", "optim.weight_decay", "optim.warmup_steps",
                       "optim.grad_clip"])
    o, m = cfg.optim, cfg.model
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise UserError(f"optim.betas must be two numbers in [0, 1), got {o.betas}")
    if not cfg.rewards.functions:
        raise UserError("rewards.functions is empty: at least one reward function is needed")
    check_tensorboard(t.tensorboard or "tensorboard" in t.report_to,
                      "train.tensorboard" if t.tensorboard else "train.report_to")
    check_wandb("wandb" in t.report_to)
    if cfg.rewards.timeout_s is not None and not cfg.rewards.timeout_s > 0:
        raise UserError("rewards.timeout_s must be > 0 (or null for no limit), got "
                        f"{cfg.rewards.timeout_s}")
    if m.path == "tiny" and (m.tiny_hidden_size <= 0 or m.tiny_hidden_size % 8):
        raise UserError("model.tiny_hidden_size must be a positive multiple of 8 (4 attention heads of "
                        f"even width), got {m.tiny_hidden_size}")
    if g.G < 2:
        raise UserError(f"grpo.G: a group needs at least 2 completions to compare, got {g.G}")
    if t.micro_batch_tokens is not None and (isinstance(t.micro_batch_tokens, bool)
                                             or t.micro_batch_tokens <= 0):
        raise UserError(f"train.micro_batch_tokens must be a positive integer (or null for no cap), "
                        f"got {t.micro_batch_tokens}")
    if cfg.sampling.min_new_tokens > cfg.sampling.max_new_tokens:
        raise UserError(f"sampling.min_new_tokens ({cfg.sampling.min_new_tokens}) must be at most "
                        f"sampling.max_new_tokens ({cfg.sampling.max_new_tokens})")
    if cfg.sampling.temperature < 0 or not 0 < cfg.sampling.top_p <= 1:
        raise UserError("sampling: temperature must be >= 0 and top_p in (0, 1]")
    if g.beta < 0 or g.eps_low <= 0 or (g.eps_high is not None and g.eps_high <= 0):
        raise UserError("grpo: beta must be >= 0 and eps_low/eps_high > 0")
    if not 0 < g.top_entropy_quantile <= 1:
        raise UserError(f"grpo.top_entropy_quantile must be in (0, 1] (the share of tokens kept), "
                        f"got {g.top_entropy_quantile}")
    r = cfg.rollout
    if not 0 <= r.correction_low <= 1 <= r.correction_high:
        raise UserError(f"rollout: need 0 <= correction_low <= 1 <= correction_high, got "
                        f"{r.correction_low} and {r.correction_high}")
    if g.advantage == "process" and not cfg.rewards.step_fn:
        raise UserError("grpo.advantage=process needs rewards.step_fn, a function giving per-step "
                        "rewards (built-in task: rewards.step_fn=arithmetic_steps)")
    if g.advantage == "process" and cfg.algorithm != "grpo":
        raise UserError(f"grpo.advantage=process is a GRPO option; algorithm={cfg.algorithm} has its "
                        "own advantages")
    if t.iterations > t.steps:
        raise UserError(f"train.iterations={t.iterations} is more than train.steps={t.steps}: each "
                        "iteration needs at least one step")
    if r.multi_turn:
        check_multi_turn(cfg)
    if not 0 < cfg.rollout.gpu_memory_utilization < 1:
        raise UserError("rollout.gpu_memory_utilization must be in (0, 1), got "
                        f"{cfg.rollout.gpu_memory_utilization}")
    rm = cfg.rewards.model
    if rm is not None:
        positive(rm, ["batch_size", "max_length", "prompts_per_iteration", "train_steps", "train_batch_size"],
                 "rewards.model.")
        if rm.path == "init" and not rm.retrain:
            raise UserError("rewards.model.path=init starts from an untrained score head: set "
                            "rewards.model.retrain=true (or give a trained reward model's directory)")
        if not 0 <= rm.replay <= 1 or rm.lr <= 0:
            raise UserError("rewards.model: replay must be in [0, 1] and lr > 0")
    if t.iterations > 1 and m.lora is not None:
        raise UserError("train.iterations > 1 resets the reference to the current policy, but with "
                        "model.lora the reference is the base model with the adapter off; use full "
                        "fine-tuning")


def check_sft(cfg: SFTConfig) -> None:
    """`SFTConfig.validate`: sizes and ranges `grpo sft` cannot run with."""
    positive(cfg, ["sft.max_steps", "sft.batch_size", "sft.eval_every", "sft.keep_checkpoints", *_TASK_SIZES])
    not_negative(cfg, ["sft.patience", "sft.start_row", "sft.save_every", "data.num_validation",
                       "data.num_heldout"])
    if cfg.sft.train_rows is not None and cfg.sft.train_rows < cfg.sft.batch_size:
        raise UserError(f"sft.train_rows={cfg.sft.train_rows} is fewer than one batch "
                        f"(sft.batch_size={cfg.sft.batch_size})")
    if cfg.sft.max_seconds is not None and not cfg.sft.max_seconds > 0:
        raise UserError(f"sft.max_seconds must be > 0 (or null), got {cfg.sft.max_seconds}")
    if cfg.sft.clock not in ("wall", "cpu"):
        raise UserError(f"sft.clock must be 'wall' or 'cpu', got {cfg.sft.clock!r}")
    for name in ("micro_batch_size", "micro_batch_tokens"):
        value = getattr(cfg.sft, name)
        if value is not None and (isinstance(value, bool) or value <= 0):
            raise UserError(f"sft.{name} must be a positive integer (or null), got {value}")
    check_tensorboard(cfg.sft.tensorboard, "sft.tensorboard")


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
