"""Per-token estimators of KL(pi_theta || pi_ref) from the log-probs of the sampled tokens.

With the tokens sampled from pi_theta and r = pi_ref / pi_theta at each sampled token, the three
estimators of J. Schulman, "Approximating KL Divergence" (2020) are

    k1 = -log r               unbiased, can be negative
    k2 = 0.5 * (log r)^2      biased, always >= 0, low variance
    k3 = r - log r - 1        unbiased, always >= 0: DeepSeekMath eq. 4 (§4.1.1), the one GRPO uses

GRPO puts k3 straight into the loss (beta * KL per token) instead of folding a KL penalty into the
reward as PPO does. Its gradient with respect to log pi_theta is 1 - r, so the objective's term
-beta * k3 contributes beta * (pi_ref / pi_theta - 1) to the gradient coefficient of every token
(DeepSeekMath Appendix A.1.6).

All three take [B, T] (or any matching shapes) log-probs and return the same shape. With `mask`,
positions where it is 0 give 0 and never reach the arithmetic: the log-ratio is replaced by 0 there
before it is squared or exponentiated (a `torch.where` on the input, not on the output). Padding holds
filled-in log-probs (the reference's are 0 after EOS), so exp(0 - logp) overflows once logp < -88.7 in
float32; masking only the output would give 0 forward but 0 * inf = NaN backward.
"""

import torch


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """k1 = log pi_theta - log pi_ref, elementwise (0 where mask is 0). Example: logp=-1, ref_logp=-2 -> 1."""
    return -_log_r(logp, ref_logp, mask)  # [B, T]


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """k2 = 0.5 * (log pi_theta - log pi_ref)^2, elementwise (0 where mask is 0).

    Example: logp=-1, ref_logp=-2 -> 0.5.
    """
    return 0.5 * _log_r(logp, ref_logp, mask) ** 2  # [B, T]


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """k3 = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1, elementwise, 0 where mask is 0 (DeepSeekMath eq. 4).

    Example: logp=-1, ref_logp=-2 -> log r = -1, k3 = e^-1 + 1 - 1 = 0.3679.
    """
    log_r = _log_r(logp, ref_logp, mask)  # [B, T]
    return torch.exp(log_r) - log_r - 1  # [B, T]


def _log_r(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """log r = log pi_ref - log pi_theta, 0 where mask is 0 (so neither value nor gradient reads padding)."""
    log_r = ref_logp - logp  # [B, T]
    return log_r if mask is None else torch.where(mask.bool(), log_r, 0.0)  # [B, T]
