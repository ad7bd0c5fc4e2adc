"""`multinomial1`: one draw per row of a probability matrix, by inverse CDF, from one uniform a row.

torch.multinomial draws a row's sample as argmax(probs / q) with q ~ Exp(1), one q per vocabulary entry;
on the CPU its `exponential_` makes them in a serial loop, and even the exact copy of its stream this
module used to be (numpy's MT19937 and a bound that computed few q exactly) took 13-26 ms of a 32-row
decode step at SmolLM2's 49,152-token vocabulary, more than 1.5 s of a `generate`.

Here each row takes one float64 uniform u from the generator (`torch.rand`) and the token whose interval
of the cumulative sum holds u * sum(probs): the sums of blocks of BLOCK entries in float64, their
cumulative sum searched for the block, then the cumulative sum inside that block for the entry. 1.2 ms
for 32 x 49,152 on 2 threads of the bench CPU. The draw has the distribution probs / sum(probs) up to
float64 rounding (about 1e-16 of the mass), never lands on an entry of probability 0, and advances the
generator by exactly N doubles, so a run resumed from a saved generator state draws the same tokens. The
draws are not torch.multinomial's: the same seed gives other samples than it would.
"""

from __future__ import annotations

import torch

BLOCK = 64
"""Entries per block of the two-level search."""


def _last_positive(mass: torch.Tensor) -> torch.Tensor:
    """Index of the last entry > 0 of each row of mass [N, K] (0 if none). [N] long."""
    K = mass.shape[1]
    at = torch.arange(K, device=mass.device).expand_as(mass)
    return torch.where(mass > 0, at, 0).amax(-1)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The entry of each row of probs [N, V] (non-negative, positive sum) where u [N] (in [0, 1)) falls in
    its cumulative distribution: the first i with cumsum(probs)[i] > u * sum(probs), computed in float64
    over blocks of BLOCK entries. An entry of probability 0 is never returned: where rounding puts the
    target past the last interval, the last entry of positive probability is. [N] long."""
    N, V = probs.shape
    full = V - V % BLOCK
    sums = probs[:, :full].reshape(N, full // BLOCK, BLOCK).sum(-1, dtype=torch.float64)  # [N, V // BLOCK]
    if full < V:
        sums = torch.cat([sums, probs[:, full:].sum(-1, keepdim=True, dtype=torch.float64)], 1)  # [N, nb]
    cum = sums.cumsum(-1)  # [N, nb]
    target = u.to(torch.float64)[:, None] * cum[:, -1:]  # [N, 1]
    block = torch.searchsorted(cum, target, right=True).minimum(_last_positive(sums)[:, None])  # [N, 1]
    before = torch.where(block > 0, cum.gather(1, (block - 1).clamp(min=0)), 0.0)  # [N, 1]
    cols = block * BLOCK + torch.arange(BLOCK, device=probs.device)  # [N, BLOCK]
    inside = probs.gather(1, cols.clamp(max=V - 1)).to(torch.float64)  # [N, BLOCK]
    inside = inside.masked_fill(cols >= V, 0.0)
    j = torch.searchsorted(inside.cumsum(-1), target - before, right=True)  # [N, 1]
    j = j.minimum(_last_positive(inside)[:, None])
    return (block * BLOCK + j).squeeze(1)


def multinomial1(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One sample per row of probs [N, V] (non-negative, finite, each row with a positive sum; need not sum
    to 1), drawn with one float64 uniform per row from `generator` (torch's default one if None), on
    probs' device. [N] long."""
    if probs.dim() != 2:
        raise ValueError(f"probs must be [N, V], got shape {tuple(probs.shape)}")
    probs = probs.detach()
    if not probs.shape[0]:
        return torch.empty(0, dtype=torch.long, device=probs.device)
    low, high = torch.aminmax(probs)  # torch.multinomial's checks, with its messages
    if not (low >= 0 and high < float("inf")):
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
    if bool((probs.sum(1) == 0).any()):
        raise RuntimeError("invalid multinomial distribution (sum of probabilities <= 0)")
    u = torch.rand(probs.shape[0], generator=generator, dtype=torch.float64, device=probs.device)  # [N]
    return inverse_cdf(probs, u)
