"""Sampler/trainer mismatch: how far the sampler's log-probs are from the trainer's, and the correction.

The engine that samples (vLLM in bf16, the built-in engine from bf16 copies of the weights, a top-p
truncated distribution) and the trainer that computes the loss give slightly different probabilities
to the same tokens. The loss treats the samples as drawn from pi_old (the trainer's policy before the
update), so a gap is an off-policy error nobody sees unless it is measured. Per valid token, with
`logp_s` the sampler's log-prob of the token it drew and `logp_old` the trainer's:

    d = logp_old - logp_s,       exp(d) = pi_old / pi_sampler   (the importance weight)

Diagnostics (`mismatch_metrics`): the k3 estimate of KL(sampler || trainer), `exp(d) - d - 1` (the
samples come from the sampler; `grpo.algorithm.kl.kl_k3` with the sampler as the policy), the mean
and max of |d|, and the share of tokens whose weight leaves [low, high].

Correction (`importance_weights`), a detached per-token weight on the policy-gradient term; the
clipped ratio stays pi_theta / pi_old, trainer against trainer:

- "tis": truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings
  you off-policy RL training"): w = min(exp(d), high).
- "mask": masked importance sampling (IcePop-style): w = exp(d) where low <= exp(d) <= high, else 0,
  so tokens the two sides disagree on badly give no gradient at all.
- level "sequence": every token of a completion takes the weight of the geometric mean of its
  ratios, exp(mean_t d) (one weight, one keep-or-drop decision, per completion; the plain product over
  hundreds of tokens would under- or overflow).

With the built-in engine in float32, d is about 0 and both corrections are the identity.
"""

from __future__ import annotations

import torch

from grpo.algorithm.kl import kl_k3
from grpo.algorithm.losses import masked_mean

CORRECTIONS = ("none", "tis", "mask")
LEVELS = ("token", "sequence")


def _log_weight(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                level: str = "token") -> torch.Tensor:
    """d = logp_old - logp_s per token (0 on padding), or its per-completion
    mean at level "sequence". [B, T]"""
    valid = mask.bool()
    d = torch.where(valid, trainer_logp.detach() - sampler_logp.detach(), 0.0)  # [B, T]
    if level == "token":
        return d
    if level == "sequence":
        return torch.where(valid, masked_mean(d, mask, dim=-1)[:, None], 0.0)  # [B, T]
    raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def importance_weights(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, *,
                       mode: str = "tis", level: str = "token", low: float = 0.5,
                       high: float = 2.0) -> torch.Tensor:
    """Detached weight of each token's policy-gradient term ([B, T], 0 on padding, 1 for mode "none").

    Example: trainer [[-1.0, -2.0]], sampler [[-1.5, -1.0]] -> exp(d) = [1.6487, 0.3679];
    "tis" (high 2) -> [1.6487, 0.3679]; "mask" (0.5, 2) -> [1.6487, 0.0].
    """
    if mode not in CORRECTIONS:
        raise ValueError(f"mode must be one of {CORRECTIONS}, got {mode!r}")
    if not 0 <= low <= 1 <= high:
        raise ValueError(f"need 0 <= low <= 1 <= high, got low={low}, high={high}")
    valid = mask.bool()
    if mode == "none":
        return valid.to(trainer_logp.dtype)
    ratio = torch.exp(_log_weight(trainer_logp, sampler_logp, mask, level))  # [B, T], 1 on padding
    if mode == "tis":
        weight = ratio.clamp(max=high)
    else:
        weight = torch.where((ratio >= low) & (ratio <= high), ratio, 0.0)
    return torch.where(valid, weight, 0.0)  # [B, T]


def mismatch_metrics(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, *,
                     low: float = 0.5, high: float = 2.0) -> dict[str, torch.Tensor]:
    """Detached 0-dim diagnostics over the valid tokens: "mismatch/kl" (k3 of KL(sampler || trainer)),
    "mismatch/abs_logp_diff" (mean |d|), "mismatch/abs_logp_diff_max" (max |d|; 0 without valid tokens)
    and "mismatch/outside_frac" (share of tokens with exp(d) outside [low, high])."""
    d = _log_weight(trainer_logp, sampler_logp, mask)  # [B, T]
    valid = mask.bool()
    kl = kl_k3(sampler_logp.detach(), trainer_logp.detach(), mask)  # [B, T]: exp(d) - d - 1
    ratio = torch.exp(d)
    outside = ((ratio < low) | (ratio > high)).to(d.dtype)
    return {
        "mismatch/kl": masked_mean(kl, mask),
        "mismatch/abs_logp_diff": masked_mean(d.abs(), mask),
        "mismatch/abs_logp_diff_max": d.abs().masked_fill(~valid, 0.0).max() if d.numel()
        else d.new_zeros(()),
        "mismatch/outside_frac": masked_mean(outside, mask),
    }
