"""Each algorithm's advantages from a scored batch: the one place where GRPO, its process-supervised
variant and online RFT differ (PPO's GAE advantages live with its value model, grpo.train.ppo).

    GRPO, outcome   A_i = (r_i - mean(r_group)) / (std(r_group) + eps), for every token of o_i
    GRPO, process   A_i,t = sum of the group-normalised rewards of o_i's steps ending at or after t
    online RFT      A_i = 1 if o_i is correct else 0 (DeepSeekMath §5.2.1's gradient coefficient)
"""

from __future__ import annotations

import torch

from grpo.algorithm import leave_one_out_advantages, outcome_advantages, process_advantages
from grpo.config import TrainConfig
from grpo.rewards.combine import reward_inputs
from grpo.rollout.engine import Rollout
from grpo.train.process import step_tensors


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
