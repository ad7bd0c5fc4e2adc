"""Advantage estimators: the one place where GRPO, its process-supervised and leave-one-out variants,
online RFT and PPO differ. Each takes the step's scored batch and returns `Advantages`; which one a run
uses is chosen once, from the config (`grpo.train.variants.choose_variant`).

    GRPO, outcome   A_i = (r_i - mean(r_group)) / (std(r_group) + eps), for every token of o_i (the paper)
    RLOO            A_i = G / (G - 1) * (r_i - mean(r_group))
    GRPO, process   A_i,t = sum of the group-normalised rewards of o_i's steps ending at or after t
    online RFT      A_i = 1 if o_i is correct else 0 (DeepSeekMath §5.2.1's gradient coefficient); no KL
    PPO             A_i,t = GAE over a learned value model, the KL to pi_ref folded into the reward
                    (grpo.train.ppo); the value model takes a step after each policy update

Every estimator has the signature `(batch, everyone, logp) -> Advantages`: `batch` is this rank's
scored batch, `everyone` the batch gathered from every rank, `logp` the log-probs taken without
gradients before the update (pi_ref's, and pi_old's where the step computed them). The formulas are
grpo.algorithm's; these functions only feed them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from grpo.algorithm import leave_one_out_advantages, outcome_advantages, process_advantages
from grpo.config import TrainConfig
from grpo.rewards.combine import reward_inputs
from grpo.rollout.engine import Rollout
from grpo.train.batch import Batch, GlobalBatch
from grpo.train.distributed import Dist, my_rows
from grpo.train.ppo import Critic
from grpo.train.process import step_tensors
from grpo.train.update import StepLogProbs


@dataclass
class Advantages:
    """What an estimator gives the policy update."""

    adv: torch.Tensor
    """This rank's advantages: [N] one per completion (every token of it gets that value), or [N, T] one
    per token."""
    kl_in_loss: bool = True
    """Whether the loss subtracts beta * KL(pi_theta || pi_ref) per token, as GRPO's does. False for PPO
    (the KL is in its reward) and RFT (no reference)."""
    metrics: dict = field(default_factory=dict)
    """The estimator's own metrics (PPO: ppo/kl_reward)."""
    critic_update: Callable[[], dict] | None = None
    """PPO: one optimizer step of the value model on this batch, taken after each applied policy update;
    returns its metrics (ppo/value_loss). None: nothing else learns from the batch."""


Estimator = Callable[[Batch, GlobalBatch, StepLogProbs], Advantages]


def group_relative(batch: Batch, everyone: GlobalBatch, logp: StepLogProbs, *, cfg: TrainConfig,
                   dist: Dist) -> Advantages:
    """GRPO's outcome supervision (grpo.advantage=outcome), or RLOO: computed over the gathered batch
    (grpo.scale=batch needs all of it), then this rank's rows are kept."""
    return Advantages(my_rows(compute_advantages(everyone.rewards, cfg), dist))  # [N / world_size]


def process_supervised(batch: Batch, everyone: GlobalBatch, logp: StepLogProbs, *, step_fn, tokenizer,
                       cfg: TrainConfig) -> Advantages:
    """Process supervision (grpo.advantage=process): groups are whole on each rank, so this rank's steps
    suffice."""
    adv = step_advantages(step_fn, tokenizer, batch.rollout, batch.rows, batch.texts, cfg)  # [N, T]
    return Advantages(adv)


def rejection_sampling(batch: Batch, everyone: GlobalBatch, logp: StepLogProbs, *,
                       accuracy: str) -> Advantages:
    """Online RFT (algorithm=rft): coefficient 1 for the samples the `accuracy` reward calls correct."""
    return Advantages(rft_advantages(batch.per_function[accuracy]), kl_in_loss=False)  # [N]


def ppo_gae(batch: Batch, everyone: GlobalBatch, logp: StepLogProbs, *, critic: Critic,
            beta: float) -> Advantages:
    """PPO (algorithm=ppo): GAE over the value model, beta * KL(pi_old || pi_ref) in the per-token reward."""
    ppo = critic.advantages(batch.rollout, batch.rewards, logp.old, logp.ref, beta)
    return Advantages(ppo.advantages, kl_in_loss=False, metrics={"ppo/kl_reward": ppo.kl_reward},  # [N, T]
                      critic_update=lambda: critic.update(batch.rollout, ppo))


def compute_advantages(rewards: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """GRPO's per-completion advantages from the summed rewards (outcome supervision, or RLOO). [N]"""
    g = cfg.grpo
    if g.advantage == "rloo":
        return leave_one_out_advantages(rewards, g.G)
    return outcome_advantages(rewards, g.G, scale=g.scale, std=g.std, eps=g.adv_eps)  # [N]


def rft_advantages(accuracy: list) -> torch.Tensor:
    """Online RFT's gradient coefficient (DeepSeekMath §5.2.1): 1 for a correct sample, else 0. [N]"""
    return torch.tensor([1.0 if v is not None and v >= 1.0 else 0.0 for v in accuracy])


def step_advantages(step_fn, tokenizer, r: Rollout, rows: list[dict], texts: list[str],
                    cfg: TrainConfig) -> torch.Tensor:
    """Process supervision: per-step rewards from rewards.step_fn -> per-token advantages. [N, T]"""
    G = cfg.grpo.G
    steps = step_fn(**reward_inputs(rows, texts, r.completion_lists(), G).kwargs())
    step_rewards, step_end = step_tensors(list(steps), tokenizer, r.completion_ids, r.completion_mask)
    return process_advantages(step_rewards, step_end, G, r.completion_mask, eps=cfg.grpo.adv_eps,
                              std=cfg.grpo.std)  # [N, T]
