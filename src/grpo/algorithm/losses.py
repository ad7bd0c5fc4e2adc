"""The GRPO policy loss: clipped surrogate plus per-token k3 KL, with the aggregations users ask for.

DeepSeekMath eq. 3 (§4.1.1) maximises, per group of G outputs,

    J = 1/G * sum_i 1/|o_i| * sum_t [ min(ratio_it * A_it, clip(ratio_it, 1 - eps_low, 1 + eps_high) * A_it)
                                      - beta * KL_it ]
    ratio_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t),   KL_it = k3 (see `grpo.algorithm.kl`)

and the loss is -J. Per token that is `max(pg_loss1, pg_loss2) + beta * KL` with
`pg_loss1 = -A * ratio` and `pg_loss2 = -A * clip(ratio)`. The variants are named arguments:

- `aggregation`: how per-token losses become one number (see `aggregate_loss`):
  "seq_mean_token_mean" (the paper; TRL "grpo"), "token_mean" (DAPO arXiv 2503.14476 §3.3),
  "seq_mean_token_sum_norm" (Dr. GRPO arXiv 2503.20783 §3.2).
- `eps_high` > `eps_low`: DAPO's clip-higher (§3.1), e.g. 0.2 / 0.28.
- `ratio_level="sequence"`: GSPO (arXiv 2507.18071 §4), one length-normalised ratio per output.
- `token_weights`: a detached weight on each token's surrogate term, the sampler/trainer mismatch
  correction (`grpo.algorithm.correction`); the KL term is not weighted.
- `entropy`, `entropy_coef`: an entropy bonus, `-entropy_coef * H` per token (`grpo.algorithm.entropy`),
  aggregated like the rest; `entropy` must carry its gradient for the bonus to train anything.

With one update per batch (mu = 1), old_logp == logp.detach(): every ratio is 1, nothing is clipped
and the loss value is a weighted mean of -A, near 0 by construction because advantages are centred
per group (0 up to rounding for outcome advantages, "seq_mean_token_mean" and beta = 0). Its
gradient, -A * grad(logp) / normaliser, is not 0, and is what trains the policy.

Padding (mask 0) holds filled-in log-probs, so every difference that is exponentiated (the ratio, the
k3 KL) is replaced by 0 there before `exp`: a `torch.where` on the output alone gives 0 forward but
0 * exp(large) = 0 * inf = NaN backward, which would skip the update.
"""

from functools import partial
from typing import NamedTuple

import torch

from grpo.algorithm.kl import kl_k3

AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")
RATIO_LEVELS = ("token", "sequence")


class PolicyLossOutput(NamedTuple):
    """What `policy_loss` returns; unpacks as `loss, metrics = policy_loss(...)`."""

    loss: torch.Tensor
    """0-dim loss to call `.backward()` on: -(surrogate - beta * KL), aggregated."""
    metrics: dict[str, torch.Tensor]
    """Detached 0-dim tensors, means over the valid tokens of this batch: "clip_frac_low" (ratio <
    1 - eps_low and A < 0), "clip_frac_high" (ratio > 1 + eps_high and A > 0), "clip_frac" (their
    sum), "ratio_mean", "kl" (k3; 0 without ref_logp) and "pg_loss" (the surrogate part of `loss`)."""


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over the positions where `mask` is nonzero; 0 where there are none.

    Masked-out entries are never read arithmetically (not multiplied by 0), so NaN there is harmless.
    Example: x=[[1, 2, 9]], mask=[[1, 1, 0]] -> 1.5; with dim=-1 -> [1.5].
    """
    valid = mask.bool()
    total = torch.where(valid, x, 0.0).sum(dim=dim)
    return total / valid.sum(dim=dim).clamp(min=1)


def aggregate_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    aggregation: str,
    *,
    max_completion_length: int | None = None,
    total_tokens: int | torch.Tensor | None = None,
    total_sequences: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a [B, T] per-token loss to a scalar; padding (mask 0) never counts.

    - "seq_mean_token_mean": 1/B' * sum_i (1/|o_i| * sum_t l_it)      (DeepSeekMath eq. 3)
    - "token_mean":          sum_it l_it / sum_i |o_i|                 (DAPO §3.3)
    - "seq_mean_token_sum_norm": sum_it l_it / (max_completion_length * B')   (Dr. GRPO §3.2)

    B' counts the rows with at least one kept token: a row masked out entirely (`mask_truncated`,
    DAPO's overlong filtering) leaves the loss, its denominator included (as verl's seq-mean modes).
    For gradient accumulation pass the whole batch's `total_tokens` (token_mean) or
    `total_sequences` (B', the seq modes) to replace this micro-batch's own count, so that the
    micro-batch losses sum to the loss of the whole batch. An empty denominator counts as 1.
    """
    valid = mask.bool()
    masked = torch.where(valid, per_token, 0.0)  # [B, T]
    num_sequences = valid.any(dim=-1).sum() if total_sequences is None else total_sequences
    num_sequences = torch.as_tensor(num_sequences, device=masked.device).clamp(min=1)
    if aggregation == "token_mean":
        num_tokens = valid.sum() if total_tokens is None else total_tokens
        return masked.sum() / torch.as_tensor(num_tokens, device=masked.device).clamp(min=1)
    if aggregation == "seq_mean_token_mean":
        seq_loss = masked.sum(dim=-1) / valid.sum(dim=-1).clamp(min=1)  # [B]
        return seq_loss.sum() / num_sequences
    if aggregation == "seq_mean_token_sum_norm":
        if max_completion_length is None:
            raise ValueError('aggregation="seq_mean_token_sum_norm" needs max_completion_length')
        return masked.sum() / (max_completion_length * num_sequences)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    aggregation: str = "seq_mean_token_mean",
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    ratio_level: str = "token",
    max_completion_length: int | None = None,
    total_tokens: int | torch.Tensor | None = None,
    total_sequences: int | torch.Tensor | None = None,
    token_weights: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> PolicyLossOutput:
    """Clipped GRPO surrogate + beta * k3 KL per token, aggregated (DeepSeekMath eq. 3, §4.1.1).

    Args:
        logp, old_logp, ref_logp: [B, T] log-probs of the sampled tokens under pi_theta (with grad),
            pi_old and pi_ref. The KL term is added only when ref_logp is given and beta != 0.
        advantages: [B] (one per output, spread over its tokens) or [B, T] (per token).
        mask: [B, T] completion mask, 1 for real tokens.
        eps_low, eps_high: ratio clipped to [1 - eps_low, 1 + eps_high]; eps_high None -> eps_low.
        ratio_level: "token", or "sequence" for GSPO (see `_log_ratio`).
        token_weights: [B, T] detached weights of the surrogate per token (None: 1).
        entropy: [B, T] policy entropy per token; with entropy_coef != 0 the
        loss adds -entropy_coef * entropy.
        The other arguments go to `aggregate_loss`.
    """
    if ref_logp is None and beta != 0:
        raise ValueError(f"beta={beta} needs ref_logp (the reference model's log-probs)")
    if entropy is None and entropy_coef != 0:
        raise ValueError(f"entropy_coef={entropy_coef} needs entropy (the policy's per-token entropy)")
    eps_high = eps_low if eps_high is None else eps_high
    adv = _per_token(advantages, logp)  # [B, 1] or [B, T]
    ratio = torch.exp(_log_ratio(logp, old_logp, mask, ratio_level))  # [B, T]
    pg_loss1 = -adv * ratio  # [B, T]
    pg_loss2 = -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)  # [B, T]
    pg_loss = torch.maximum(pg_loss1, pg_loss2)  # [B, T]
    if token_weights is not None:
        pg_loss = pg_loss * token_weights.detach()  # [B, T]
    kl = torch.zeros_like(logp) if ref_logp is None else kl_k3(logp, ref_logp, mask)  # [B, T], 0 on padding
    per_token = pg_loss + beta * kl if beta != 0 else pg_loss  # [B, T]
    if entropy_coef != 0:
        per_token = per_token - entropy_coef * torch.where(mask.bool(), entropy, 0.0)  # [B, T]
    aggregate = partial(
        aggregate_loss,
        mask=mask,
        aggregation=aggregation,
        max_completion_length=max_completion_length,
        total_tokens=total_tokens,
        total_sequences=total_sequences,
    )
    metrics = _clip_metrics(ratio, adv, mask, eps_low, eps_high)
    metrics["kl"] = masked_mean(kl.detach(), mask)
    metrics["pg_loss"] = aggregate(pg_loss.detach())
    return PolicyLossOutput(aggregate(per_token), metrics)


def _log_ratio(
    logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, ratio_level: str
) -> torch.Tensor:
    """log(pi_theta / pi_old) per token, or GSPO's sequence ratio written per token.

    GSPO: log s_i = 1/|o_i| * sum_t (logp - old_logp). Its token form s_i,t = sg[s_i] *
    pi_theta(o_it) / sg[pi_theta(o_it)] has the value s_i at every token while the gradient flows
    through each token's own log-prob. Both are 0 on padding (ratio 1), so `exp` never reads it.
    """
    valid = mask.bool()  # [B, T]
    log_ratio = torch.where(valid, logp - old_logp, 0.0)  # [B, T]
    if ratio_level == "token":
        return log_ratio
    if ratio_level == "sequence":
        seq_log_ratio = masked_mean(log_ratio, mask, dim=-1).detach()  # [B]
        return torch.where(valid, seq_log_ratio[:, None] + (logp - logp.detach()), 0.0)  # [B, T]
    raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}, got {ratio_level!r}")


def _per_token(advantages: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Advantages as [B, 1] (per output) or [B, T] (per token), checked against logp [B, T]."""
    if advantages.shape == logp.shape:
        return advantages
    if advantages.shape == logp.shape[:1]:
        return advantages[:, None]
    raise ValueError(
        f"advantages must be [B] or [B, T] for logp {tuple(logp.shape)}, got {tuple(advantages.shape)}"
    )


def _clip_metrics(
    ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, eps_low: float, eps_high: float
) -> dict[str, torch.Tensor]:
    """Fractions of valid tokens in the two regions where clipping zeroes the gradient."""
    ratio = ratio.detach()
    low = ((ratio < 1 - eps_low) & (adv < 0)).to(ratio.dtype)  # [B, T]
    high = ((ratio > 1 + eps_high) & (adv > 0)).to(ratio.dtype)  # [B, T]
    clip_frac_low, clip_frac_high = masked_mean(low, mask), masked_mean(high, mask)
    return {
        "clip_frac_low": clip_frac_low,
        "clip_frac_high": clip_frac_high,
        "clip_frac": clip_frac_low + clip_frac_high,
        "ratio_mean": masked_mean(ratio, mask),
    }
