"""The optimizers: AdamW with the `optim` section's betas, weight decay and gradient clipping, for the policy
(with its warm-up and schedule), PPO's value model and the learned reward model alike."""

from __future__ import annotations

import math
from typing import Callable

import torch

from grpo.config import OptimConfig


def adamw(params, lr: float, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `params` at learning rate `lr`, with optim.betas and optim.weight_decay.

    torch's fused kernel where every parameter is a plain tensor on the CPU or a CUDA GPU (not FSDP's
    DTensor shards): on the CPU torch's default is a Python loop over the parameters, and a SmolLM2-135M
    step took 0.5-0.9 s that way against 0.07-0.08 s fused (2 threads, `docs/performance.md`)."""
    params = list(params)
    fused = bool(params) and all(type(p) is torch.nn.Parameter and p.device.type in ("cpu", "cuda")
                                 for p in params)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                             fused=fused or None)


def clip_gradients(params: list, cfg: OptimConfig) -> torch.Tensor:
    """Clip the global gradient norm of `params` to optim.grad_clip (0: no clipping); the norm before."""
    return torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))


def make_optimizer(model, cfg: OptimConfig, total_steps: int, spent: Callable[[], float] | None = None):
    """The policy's AdamW over its trainable parameters and its learning-rate schedule (linear warm-up over
    optim.warmup_steps, then optim.schedule over the remaining `total_steps`). `spent`, if given, is the
    fraction of a second budget used so far (a time limit): the schedule then follows whichever of the two
    is further along, so it ends its decay where the run ends."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, cfg.lr, cfg)

    def factor(step: int) -> float:  # step counts optimizer steps already taken
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        if spent is not None:
            progress = max(progress, spent())
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if cfg.schedule == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)
