"""What a variant changes in the GRPO step, chosen once from the config (`choose_variant`).

The step (`grpo.train.grpo.train_step`) is the paper's; a variant replaces one of its parts, each part
a function with one signature:

    part          the paper's (the defaults)                 variants
    collect       one draw of prompts, G completions each    DAPO's dynamic sampling (grpo.dynamic_sampling)
    advantages    group-standardised outcome rewards         RLOO, process supervision, online RFT, PPO's
                                                             GAE (grpo.train.advantages)
    select_tokens every policy token is in the loss          forking tokens (grpo.top_entropy_quantile < 1)

The loss's own variants (clip-higher, aggregation, GSPO's sequence ratio, overlong masking, the entropy
bonus, the sampler correction) are named arguments of `grpo.algorithm.policy_loss`, passed by
`grpo.train.update.update_policy`; multi-turn rollouts are `grpo.train.episodes.Episodic`'s.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

from grpo.algorithm import entropy_threshold, top_entropy_mask
from grpo.config import TrainConfig
from grpo.train.advantages import Estimator, group_relative, ppo_gae, process_supervised, rejection_sampling
from grpo.train.batch import Batch, collect_batch
from grpo.train.distributed import Dist, all_gather_objects
from grpo.train.ppo import Critic

Draw = Callable[[], list[dict]]
"""This rank's slice of the next train.prompts_per_step prompts (dataset rows)."""
Score = Callable[[list[dict]], Batch]
"""G completions of each of these prompts, sampled and scored."""


@dataclass(frozen=True)
class Variant:
    """The parts of the step a run's config chooses (module docstring)."""

    collect: Callable[[Draw, Score], tuple[Batch, dict]]
    """(draw, score) -> (this rank's batch, its sampling/* metrics)."""
    advantages: Estimator
    """(batch, everyone, logp) -> Advantages."""
    select_tokens: Callable[[torch.Tensor | None, torch.Tensor], tuple[torch.Tensor | None, dict]]
    """(pi_old's entropy [N, T], policy tokens [N, T]) -> (the tokens the loss keeps [N, T] bool, or None for
    every policy token; entropy/* metrics)."""
    old_logp: bool
    """Whether pi_old's log-probs are computed before the update: for the ratio when mu > 1, PPO's KL reward
    and the forking tokens' entropy. Otherwise the update's own logp.detach() is pi_old."""
    entropy: bool
    """Whether pi_old's entropy is computed with them (forking tokens)."""


def choose_variant(cfg: TrainConfig, *, critic: Critic | None, step_fn, tokenizer, accuracy: str, pad_id: int,
                   dist: Dist) -> Variant:
    """The run's variant: its estimator from algorithm and grpo.advantage, its batch collection from
    grpo.dynamic_sampling, its token selection from grpo.top_entropy_quantile. `accuracy` names the reward
    RFT reads (rewards.functions' first); `step_fn` is process supervision's step reward function."""
    g = cfg.grpo
    if cfg.algorithm == "ppo":
        advantages = functools.partial(ppo_gae, critic=critic, beta=g.beta)
    elif cfg.algorithm == "rft":
        advantages = functools.partial(rejection_sampling, accuracy=accuracy)
    elif g.advantage == "process":
        advantages = functools.partial(process_supervised, step_fn=step_fn, tokenizer=tokenizer, cfg=cfg)
    else:  # outcome or rloo
        advantages = functools.partial(group_relative, cfg=cfg, dist=dist)
    forking = g.top_entropy_quantile < 1
    return Variant(
        collect=functools.partial(dynamic_sampling, cfg=cfg, pad_id=pad_id, dist=dist) if g.dynamic_sampling
        else one_draw,
        advantages=advantages,
        select_tokens=functools.partial(forking_tokens, fraction=g.top_entropy_quantile, dist=dist) if forking
        else every_token,
        old_logp=g.mu > 1 or cfg.algorithm == "ppo" or forking,
        entropy=forking)


def one_draw(draw: Draw, score: Score) -> tuple[Batch, dict]:
    """The paper's batch: one draw of prompts, G scored completions each."""
    return score(draw()), {}


def dynamic_sampling(draw: Draw, score: Score, *, cfg: TrainConfig, pad_id: int,
                     dist: Dist) -> tuple[Batch, dict]:
    """DAPO's dynamic sampling (grpo.train.batch): groups with all-equal rewards are dropped and more prompts
    drawn until the batch is full, at most grpo.max_sampling_rounds draws."""
    batch, s = collect_batch(draw, score, cfg.grpo.G, cfg.train.prompts_per_step,
                             cfg.grpo.max_sampling_rounds, pad_id, dist)
    return batch, {"sampling/rounds": s.rounds, "sampling/prompts_drawn": s.prompts_drawn,
                   "sampling/kept_groups": s.kept_groups}


def every_token(entropy: torch.Tensor | None, mask: torch.Tensor) -> tuple[None, dict]:
    """The paper's loss: every policy token."""
    return None, {}


def forking_tokens(entropy: torch.Tensor, mask: torch.Tensor, *, fraction: float,
                   dist: Dist) -> tuple[torch.Tensor, dict]:
    """The policy tokens whose entropy is in the top `fraction` of the whole batch's (every rank's) policy
    tokens ("Beyond the 80/20 rule", Wang et al. 2025; `grpo.algorithm.top_entropy_mask`), and the
    entropy/threshold and entropy/kept_frac metrics."""
    valid = entropy[mask.bool()].float()
    if dist.enabled:
        valid = torch.tensor([v for part in all_gather_objects(valid.tolist(), dist) for v in part])
    threshold = entropy_threshold(valid, fraction)
    keep = top_entropy_mask(entropy, mask, fraction, threshold)  # [N, T] bool
    return keep, {"entropy/threshold": threshold,
                  "entropy/kept_frac": float(keep.sum()) / max(1.0, float(mask.sum()))}
