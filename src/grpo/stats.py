"""Spread over seeds and whether a difference is more than noise (pure functions, no tensors).

`grpo reproduce --seeds N` trains every method N times; each claim of the paper is a difference
between two methods measured on the same seed (same SFT model, same data order), so the seeds give
N paired differences. Their mean and Student-t interval say whether the claim holds beyond noise.
With a single seed there is no spread to measure; the interval then comes from the test set alone
(the binomial standard error of a difference of two accuracies), which understates the noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         15: 2.131, 20: 2.086, 30: 2.042}
"""Two-sided 95% quantiles of Student's t by degrees of freedom (beyond 30: the normal's 1.96)."""


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (the table's next lower entry)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df > 30:
        return 1.96
    return T_975[max(k for k in T_975 if k <= df)]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0.0 for one value)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% Student-t confidence interval of the mean of >= 2 values."""
    if len(values) < 2:
        raise ValueError("a confidence interval over seeds needs at least 2 values")
    mean, sd = mean_std(values)
    half = t_quantile(len(values) - 1) * sd / math.sqrt(len(values))
    return mean, mean - half, mean + half


def binomial_ci(diff: float, p: float, n: int) -> tuple[float, float, float]:
    """(diff, low, high) for one difference of two accuracies near `p` on `n` problems each, from the
    binomial standard error sqrt(2 p (1 - p) / n): the test set's noise only."""
    half = 1.96 * math.sqrt(2 * p * (1 - p) / n)
    return diff, diff - half, diff + half


def verdict(low: float, high: float) -> str:
    """A claim that a difference is positive: held beyond noise, not held beyond noise, or neither."""
    if low > 0:
        return "holds beyond noise"
    if high < 0:
        return "does not hold (the opposite is beyond noise)"
    return "within noise"
