"""The policy update of the GRPO loop (and of its PPO / RFT baselines): log-probs without a graph for
the reference and pi_old, and one optimizer step on a batch, micro-batched and summed exactly.

Functions of a model, an optimizer and a rollout; the loop (`grpo.train.grpo`) decides when to call
them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from grpo.algorithm import mask_truncated, masked_mean, policy_loss
from grpo.config import TrainConfig
from grpo.rollout.engine import Rollout
from grpo.train.distributed import SINGLE, Dist, all_reduce_grads, global_totals, reduce_update_stats
from grpo.train.logprobs import completion_logprobs


def _micro_batches(n: int, size: int):
    return [slice(i, i + size) for i in range(0, n, size)]


@torch.no_grad()
def logprobs_no_grad(model, r: Rollout, cfg: TrainConfig, ctx) -> torch.Tensor:
    """Log-probs of the sampled tokens, micro-batched, without building a graph. [N, T]"""
    out = []
    for mb in _micro_batches(r.completion_ids.shape[0], cfg.train.micro_batch_size):
        with ctx():
            out.append(completion_logprobs(model, r.prompt_ids[mb], r.prompt_mask[mb], r.completion_ids[mb],
                                           r.completion_mask[mb], cfg.sampling.temperature).logp.float())
    return torch.cat(out)


class UpdateResult(NamedTuple):
    stats: dict
    """loss, pg_loss, kl, clip fractions, entropy, grad_norm (docs/metrics.md)."""
    applied: bool
    """False: the loss or the gradient norm was not finite, and the optimizer step was skipped."""


def update_policy(model, optimizer, r: Rollout, adv, ref_logp, old_logp, cfg: TrainConfig, ctx,
                  dist: Dist = SINGLE, beta: float | None = None) -> UpdateResult:
    """One optimizer step on the whole batch: micro-batched forward/backward, summed exactly.

    `adv` is [N] or [N, T]; `beta` overrides grpo.beta (PPO folds the KL into its reward instead).
    With several processes `r` is this rank's share: the loss normalisers are the global batch's and the
    gradients and statistics are summed over ranks (grpo.train.distributed), so every rank takes the
    step a single process would take on the whole batch.

    A non-finite loss or gradient norm skips the step (gradients dropped, weights and optimizer state
    unchanged); the caller counts it.
    """
    g = cfg.grpo
    beta = g.beta if beta is None else beta
    mask = mask_truncated(r.completion_mask, r.truncated) if g.mask_truncated else r.completion_mask  # [N, T]
    totals = global_totals(mask, dist)
    stats: dict[str, float] = {}
    optimizer.zero_grad(set_to_none=True)
    for mb in _micro_batches(mask.shape[0], cfg.train.micro_batch_size):
        with ctx():
            lp = completion_logprobs(model, r.prompt_ids[mb], r.prompt_mask[mb], r.completion_ids[mb],
                                     r.completion_mask[mb], cfg.sampling.temperature, with_entropy=True)
        logp = lp.logp.float()  # [n, T]
        loss, m = policy_loss(
            logp, logp.detach() if old_logp is None else old_logp[mb], adv[mb], mask[mb],
            eps_low=g.eps_low, eps_high=g.eps_high, aggregation=g.aggregation,
            ref_logp=None if ref_logp is None else ref_logp[mb], beta=beta, ratio_level=g.ratio_level,
            max_completion_length=cfg.sampling.max_new_tokens, **totals)
        loss.backward()
        # loss and pg_loss already carry the whole batch's normaliser: they add up; the token means
        # (clip fractions, ratio, KL, entropy) are weighted by this micro-batch's share of tokens.
        share = float(mask[mb].sum()) / totals["total_tokens"]
        for k, v in {**m, "entropy": masked_mean(lp.entropy, mask[mb]), "loss": loss.detach()}.items():
            stats[k] = stats.get(k, 0.0) + float(v) * (1.0 if k in ("loss", "pg_loss") else share)
    params = [p for p in model.parameters() if p.requires_grad]
    stats = reduce_update_stats(stats, dist)
    all_reduce_grads(params, dist)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
    stats["grad_norm"] = float(grad_norm)
    applied = math.isfinite(stats["loss"]) and math.isfinite(stats["grad_norm"])
    if applied:
        optimizer.step()
    # dropped either way: a NaN or inf must reach neither the weights nor Adam's moments, and a gradient
    # kept until the next update would hold a copy of the weights' size through generation
    optimizer.zero_grad(set_to_none=True)
    return UpdateResult(stats, applied)
