"""Spread over seeds and whether a difference is more than noise (pure functions, no tensors).

`grpo reproduce --seeds N` trains every method N times; each claim of the paper is a difference
between two methods measured on the same seed (same SFT model, same data order), so the seeds give
N paired differences. Their mean and Student-t interval say whether the claim holds beyond noise.
With a single seed there is no spread to measure; the interval then comes from the test set alone
(the binomial standard error of a difference of two accuracies), which understates the noise.

Every seed is scored on the same problems, so the seeds' interval does not carry the choice of problems.
Where each problem's score is kept, `paired_ci` takes both: seeds and problems are two crossed random
factors of the per-problem, per-seed differences, and the variance of their grand mean is estimated from
the spread of the seeds' means and of the problems' means.
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


def paired_ci(diffs: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% interval of the mean of a seeds x problems table of paired differences
    (diffs[s][p]: model a's score minus model b's on problem p, both trained with seed s), carrying the
    spread of training and the choice of problems.

    With S seeds and P problems, v_s = var(seed means) / S and v_p = var(problem means) / P (each problem's
    difference averaged over the seeds); the mean's variance is estimated by v_s + v_p, which counts the
    seed-by-problem interaction once more than it is there (so it errs large), with the Welch-Satterthwaite
    degrees of freedom df = (v_s + v_p)^2 / (v_s^2 / (S - 1) + v_p^2 / (P - 1)) for Student's t
    (`t_quantile`). The half-width is never less than the seeds' own (t with S - 1 df times sqrt(v_s), as
    `mean_ci` of the seed means): taking the problems in never makes an interval narrower. One seed: v_s = 0,
    the paired problems alone (the test set's noise only, as `binomial_ci` but from the data).

    >>> mean, low, high = paired_ci([[1, 0, 0, 1], [1, 1, 0, 0]])  # v_s = 0, v_p = var([1, .5, 0, .5]) / 4
    >>> mean, round(high - mean, 3)                                # df 3: t = 3.182, x sqrt(1/24)
    (0.5, 0.65)
    """
    S, P = len(diffs), len(diffs[0]) if diffs else 0
    if P < 2 or any(len(row) != P for row in diffs):
        raise ValueError("paired_ci needs the same >= 2 problems for every seed")
    seed_means = [sum(row) / P for row in diffs]
    problem_means = [sum(row[p] for row in diffs) / S for p in range(P)]
    mean = sum(seed_means) / S
    v_s = mean_std(seed_means)[1] ** 2 / S if S > 1 else 0.0
    v_p = mean_std(problem_means)[1] ** 2 / P
    if v_s + v_p == 0:
        return mean, mean, mean
    df = (v_s + v_p) ** 2 / ((v_s ** 2 / (S - 1) if S > 1 else 0.0) + v_p ** 2 / (P - 1))
    half = t_quantile(max(1, int(df))) * math.sqrt(v_s + v_p)
    if S > 1:
        half = max(half, t_quantile(S - 1) * math.sqrt(v_s))
    return mean, mean - half, mean + half


def verdict(low: float, high: float) -> str:
    """A claim that a difference is positive: held beyond noise, not held beyond noise, or neither."""
    if low > 0:
        return "holds beyond noise"
    if high < 0:
        return "does not hold (the opposite is beyond noise)"
    return "within noise"
