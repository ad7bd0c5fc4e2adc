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

All three take [B, T] (or any matching shapes) log-probs and return the same shape; padding is the
caller's to mask.
"""

import torch


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log pi_theta - log pi_ref, elementwise. Example: logp=-1, ref_logp=-2 -> 1."""
    return logp - ref_logp  # [B, T]


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (log pi_theta - log pi_ref)^2, elementwise. Example: logp=-1, ref_logp=-2 -> 0.5."""
    return 0.5 * (logp - ref_logp) ** 2  # [B, T]


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1, elementwise (DeepSeekMath eq. 4).

    Example: logp=-1, ref_logp=-2 -> log r = -1, k3 = e^-1 + 1 - 1 = 0.3679.
    """
    log_ratio = ref_logp - logp  # [B, T]
    return torch.exp(log_ratio) - log_ratio - 1  # [B, T]
