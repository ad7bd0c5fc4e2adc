"""Policy entropy per token, and the high-entropy ("forking") tokens to train on.

At the sampling temperature tau, with z the logits of one position and p = softmax(z / tau):

    H = -sum_v p_v log p_v = logsumexp(z / tau) - sum_v p_v * z_v / tau

`token_entropy` computes it from logits (the trainer computes it chunk by chunk beside the log-probs,
grpo.models.logprobs, with or without a gradient). The loop logs it over the policy's own tokens, can
add a bonus `-entropy_coef * aggregate(H)` to the loss, and can train on only the tokens whose entropy
is in the top `fraction` of the batch's valid tokens: Wang et al. 2025, "Beyond the 80/20 Rule:
High-Entropy Minority Tokens Drive Effective Reinforcement Learning for LLM Reasoning" (fraction 0.2;
TRL's `top_entropy_quantile`). Those tokens are where a reasoning chain forks; the rest follow.
"""

from __future__ import annotations

import math

import torch


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) over the last dimension, in float32 (or float64 input's
    own dtype). logits [..., V] -> [...]. temperature 0 (greedy) is taken as 1, as the log-probs do.

    Example: logits [0, 0] -> log 2 = 0.6931; [0, log 3] -> -(0.25 log 0.25 + 0.75 log 0.75) = 0.5623.
    """
    z = logits if logits.dtype == torch.float64 else logits.float()
    if temperature not in (0.0, 1.0):
        z = z / temperature
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(-1)


def entropy_threshold(values: torch.Tensor, fraction: float) -> float:
    """The smallest entropy among the top `fraction` of `values` (the valid tokens' entropies, flat):
    the ceil(fraction * n)-th largest. -inf when `values` is empty or fraction is 1 (keep everything).

    Example: values [0.1, 0.9, 0.5, 0.3, 0.7], fraction 0.4 -> 0.7 (the two largest are 0.9 and 0.7).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    values = values.reshape(-1)
    if fraction == 1 or values.numel() == 0:
        return -math.inf
    k = max(1, math.ceil(fraction * values.numel()))
    return float(values.topk(k).values[-1])


def top_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, fraction: float,
                     threshold: float | None = None) -> torch.Tensor:
    """[B, T] bool: the valid tokens (mask 1) whose entropy is at least the top-`fraction` threshold of
    the valid tokens (`entropy_threshold`; pass `threshold` to use one computed over a larger batch,
    e.g. every rank's). Ties at the threshold are all kept.

    Example: entropy [[0.1, 0.9, 0.5], [0.3, 0.7, 8.0]], mask [[1, 1, 1], [1, 1, 0]], fraction 0.4
    -> [[False, True, False], [False, True, False]] (8.0 is padding).
    """
    valid = mask.bool()
    if threshold is None:
        threshold = entropy_threshold(entropy[valid], fraction)
    return valid & (entropy >= threshold)
