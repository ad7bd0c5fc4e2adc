"""grpo.rollout.multinomial: one draw per row by inverse CDF, against a float64 reference and counts."""

import pytest
import torch

from grpo.rollout.multinomial import BLOCK, inverse_cdf, multinomial1


def _distributions(V: int, rows: int, seed: int) -> dict[str, torch.Tensor]:
    """Probability rows [rows, V] of the shapes sampling meets: flat, an LM's spread, peaked (most
    entries underflow towards 0), a top-p nucleus (exact zeros), one certain token."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, V, generator=g)
    nucleus = (logits * 3).log_softmax(-1)
    nucleus = nucleus.masked_fill(torch.rand(rows, V, generator=g) < 0.9, float("-inf"))
    nucleus[:, 0] = 0.0
    one = torch.zeros(rows, V)
    one[:, V // 2] = 1.0
    return {"flat": (logits * 0.1).softmax(-1), "lm": (logits * 3.5 / 0.7).softmax(-1),
            "peaked": (logits * 40).softmax(-1), "nucleus": nucleus.softmax(-1), "one token": one}


def _reference(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The first i with cumsum(probs)[i] > u * sum(probs), one float64 cumulative sum over the whole row."""
    cum = probs.double().cumsum(-1)  # [N, V]
    return torch.searchsorted(cum, u.double()[:, None] * cum[:, -1:], right=True).squeeze(1)


@pytest.mark.parametrize("V", [49152, 1000, 7])
def test_the_draw_is_the_entry_whose_cdf_interval_holds_u(V):
    """49,152 (SmolLM2's vocabulary), 1000 and 7 (not multiples of BLOCK: a shorter last block) against one
    float64 cumulative sum at random u; at u = 0 and the largest u below 1, where the two may part by
    rounding (masses of 1e-16), an entry of positive probability."""
    g = torch.Generator().manual_seed(V)
    for name, probs in _distributions(V, 13, seed=V).items():
        for _ in range(3):
            u = torch.rand(13, generator=g, dtype=torch.float64)
            u[0], u[1] = 0.0, 1.0 - 2.0**-53
            got = inverse_cdf(probs, u)
            assert torch.equal(got[2:], _reference(probs, u)[2:]), name
            assert bool((probs.gather(1, got[:, None]) > 0).all()), name


def test_entries_of_probability_zero_are_never_drawn():
    """Rounding can put u * sum past the last interval: the last entry of positive probability then, not a
    trailing zero (nor an empty block). Rows: zeros after the mass, zero blocks between, one tiny entry."""
    V = 5 * BLOCK + 3
    probs = torch.zeros(4, V)
    probs[0, :10] = 0.1
    probs[1, 3], probs[1, 3 * BLOCK + 1] = 0.25, 0.75
    probs[2, V - 1] = 1e-42  # subnormal, alone
    probs[3, 2 * BLOCK:2 * BLOCK + 5] = torch.tensor([0.3, 0.0, 0.2, 0.0, 0.0])
    for u in (0.0, 0.5, 0.999999, 1.0 - 2.0**-53, 1.0):  # 1.0 itself: the rounding case, forced
        got = inverse_cdf(probs, torch.full((4,), u, dtype=torch.float64))
        assert bool((probs.gather(1, got[:, None]) > 0).all()), (u, got)
    last = inverse_cdf(probs, torch.ones(4, dtype=torch.float64))
    assert last.tolist() == [9, 3 * BLOCK + 1, V - 1, 2 * BLOCK + 2]


def test_draw_frequencies_match_the_probabilities():
    """200,000 draws of a 7-entry row with zeros (fixed seed): every frequency within 4 standard errors."""
    p = torch.tensor([0.05, 0.0, 0.3, 0.15, 0.0, 0.4, 0.1])
    n = 200_000
    draws = multinomial1(p.expand(n, 7).mul(3.0), torch.Generator().manual_seed(0))  # unnormalised rows
    freq = torch.bincount(draws, minlength=7).double() / n
    se = (p.double() * (1 - p.double()) / n).sqrt()
    assert freq[1] == 0 and freq[4] == 0
    assert bool(((freq - p.double()).abs() <= 4 * se + 1e-12).all()), freq


def test_one_uniform_per_row_from_the_generator():
    """Same generator state, same draws; the generator advances by N float64 uniforms, as a resumed run
    that restores it expects."""
    probs = _distributions(300, 6, seed=1)["lm"]
    a, b = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    first = multinomial1(probs, a)
    u = torch.rand(6, generator=b, dtype=torch.float64)
    assert torch.equal(a.get_state(), b.get_state())
    assert torch.equal(first, inverse_cdf(probs, u))
    assert torch.equal(multinomial1(probs, torch.Generator().manual_seed(4)), first)


def test_any_layout_and_probabilities_that_require_grad():
    probs = _distributions(256, 5, seed=2)["lm"]
    want = multinomial1(probs, torch.Generator().manual_seed(6))
    for p in (probs.double(), probs.t().contiguous().t(), probs.clone().requires_grad_()):
        assert torch.equal(multinomial1(p, torch.Generator().manual_seed(6)), want)
    assert multinomial1(torch.empty(0, 9), None).shape == (0,)


def test_invalid_probabilities_raise_as_torch_does():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(RuntimeError, match="inf`, `nan` or element < 0"):
        multinomial1(torch.tensor([[0.5, float("nan")]]), g)
    with pytest.raises(RuntimeError, match="inf`, `nan` or element < 0"):
        multinomial1(torch.tensor([[0.5, -0.1]]), g)
    with pytest.raises(RuntimeError, match="sum of probabilities <= 0"):
        multinomial1(torch.tensor([[0.5, 0.5], [0.0, 0.0]]), g)
