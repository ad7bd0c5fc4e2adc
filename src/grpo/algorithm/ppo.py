"""The PPO baseline's pieces that GRPO drops: GAE advantages and the clipped value loss.

DeepSeekMath §4.1.1 (eq. 1-2) compares GRPO with PPO, where a learned value model V gives the
baseline and advantages come from Generalized Advantage Estimation (Schulman et al., arXiv
1506.02438, eq. 16):

    delta_t = r_t + gamma * V(s_t+1) - V(s_t)
    A_t = sum_l (gamma * lam)^l * delta_t+l,      R_t = A_t + V(s_t)

In PPO-for-LLMs the reward model's score sits on the last token and a KL penalty on every token
(DeepSeekMath eq. 2); building that per-token reward is the caller's job, these functions take it.
Sequences are right-padded: mask is ones then zeros, and the value after the last valid token is 0.
"""

from typing import NamedTuple

import torch

from grpo.algorithm.losses import aggregate_loss


class GAEOutput(NamedTuple):
    """What `gae` returns; unpacks as `advantages, returns = gae(...)`."""

    advantages: torch.Tensor
    """[B, T] GAE advantages A_t, 0 on padding."""
    returns: torch.Tensor
    """[B, T] value targets R_t = A_t + V(s_t), 0 on padding."""


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> GAEOutput:
    """Generalized Advantage Estimation over right-padded token sequences.

    Computed backwards: A_t = delta_t + gamma * lam * A_t+1, with A and V taken as 0 past the last
    valid token (padding has delta 0, so the recursion carries 0 through it). The loop runs over T
    (each step needs the next); the batch is vectorised.
    Example (one sequence, gamma = lam = 1): rewards [0, 1], values [0.5, 0.5] -> deltas
    [0 + 0.5 - 0.5, 1 + 0 - 0.5] = [0, 0.5], advantages [0.5, 0.5], returns [1.0, 1.0].

    Args:
        rewards, values: [B, T] per-token rewards and value estimates (usually detached).
        mask: [B, T] completion mask, right-padded.
    """
    valid = mask.bool()  # [B, T]
    values = torch.where(valid, values, 0.0)  # [B, T]
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)  # [B, T]
    deltas = torch.where(valid, rewards + gamma * next_values - values, 0.0)  # [B, T]
    running = torch.zeros_like(values[:, 0])  # [B]
    reversed_advantages = []
    for t in reversed(range(values.shape[1])):
        running = deltas[:, t] + gamma * lam * running  # [B]
        reversed_advantages.append(running)
    advantages = torch.stack(reversed_advantages[::-1], dim=1)  # [B, T]
    return GAEOutput(advantages, torch.where(valid, advantages + values, 0.0))


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    aggregation: str = "token_mean",
    *,
    total_tokens: int | torch.Tensor | None = None,
    total_sequences: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """PPO's clipped value loss: 0.5 * max((v - R)^2, (clip(v, v_old - eps, v_old + eps) - R)^2).

    The clipped term keeps the value model from moving further than `clip_eps` from the values seen
    at rollout time. Aggregated like the policy loss (`aggregate_loss`); padding never counts.
    Example: v=1.5, v_old=1.0, R=2.0, eps=0.2 -> max(0.25, (1.2 - 2)^2 = 0.64) / 2 = 0.32.

    Args:
        values: [B, T] current value estimates (with grad); old_values: [B, T] at rollout time;
        returns: [B, T] targets (from `gae`); mask: [B, T] completion mask.
    """
    v_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)  # [B, T]
    v_loss1 = (values - returns) ** 2  # [B, T]
    v_loss2 = (v_clipped - returns) ** 2  # [B, T]
    v_loss = 0.5 * torch.maximum(v_loss1, v_loss2)  # [B, T]
    return aggregate_loss(
        v_loss, mask, aggregation, total_tokens=total_tokens, total_sequences=total_sequences
    )


def masked_moments(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, unbiased variance) of x over the entries where mask is set (0 and 0 with fewer than 2).

    >>> masked_moments(torch.tensor([[1.0, 3.0, 9.0]]), torch.tensor([[1, 1, 0]]))
    (tensor(2.), tensor(2.))
    """
    valid = mask.bool()  # [B, T]
    count = valid.sum()
    mean = torch.where(valid, x, 0.0).sum() / count.clamp(min=1)
    var = torch.where(valid, (x - mean) ** 2, 0.0).sum() / (count - 1).clamp(min=1)
    return mean, var


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
           moments: tuple[torch.Tensor | float, torch.Tensor | float] | None = None) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the valid entries (unbiased var), 0 on padding.

    With shift_mean=False the mean is added back, so only the scale changes (used for rewards).
    moments: (mean, var) computed elsewhere, e.g. over the batches of several processes
    (`masked_moments` of their concatenation); None: those of x itself.
    """
    valid = mask.bool()  # [B, T]
    if moments is None:
        mean, var = masked_moments(x, mask)
    else:
        mean, var = (torch.as_tensor(m, dtype=x.dtype, device=x.device) for m in moments)
    scaled = (x - mean) * torch.rsqrt(var + eps)  # [B, T]
    if not shift_mean:
        scaled = scaled + mean
    return torch.where(valid, scaled, 0.0)  # [B, T]
