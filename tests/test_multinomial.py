"""grpo.rollout.multinomial: torch.multinomial's draws and generator state, bit for bit, faster."""

import numpy as np
import pytest
import torch

from grpo.rollout import multinomial
from grpo.rollout.multinomial import argmax_ratio, exponential, matches_torch, multinomial1, numpy_mt19937


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


@pytest.mark.parametrize("V", [49152, 1000, 7])
def test_draws_and_generator_state_are_torch_multinomials(V):
    """49,152 (SmolLM2's vocabulary, the blocked candidate search), 1000 and 7 (not multiples of 64: the plain
    one); 3 draws in a row from each distribution, so the stream is read across MT19937 blocks."""
    for name, probs in _distributions(V, 13, seed=V).items():
        ours, torchs = torch.Generator().manual_seed(V), torch.Generator().manual_seed(V)
        for _ in range(3):
            want = torch.multinomial(probs, 1, generator=torchs).squeeze(-1)  # [13]
            assert torch.equal(multinomial1(probs, ours), want), name
            assert torch.equal(ours.get_state(), torchs.get_state()), name


def test_exponential_is_torchs_exponential_bit_for_bit():
    """2^20 q's from the same stream: the words as torch's kernel reads them (high word first)."""
    g = torch.Generator().manual_seed(3)
    torch.empty(5).exponential_(generator=g)  # start mid-block
    state = g.get_state()
    want = torch.empty(2**20).exponential_(generator=g)
    b = np.random.Generator(numpy_mt19937(state.numpy().copy()))
    words = torch.from_numpy(b.integers(0, 2**32, 2**21, dtype=np.uint32).view(np.int32)).view(2**20, 2)
    assert torch.equal(exponential(words), want)


def test_argmax_ratio_on_the_words_that_break_its_bound():
    """u = 0 where the probability is > 0 (ratio inf: wins) and where it is 0 (ratio 0/0 = NaN: torch.argmax
    picks the first NaN); hi's 21 bits 0 with u > 0 (no bound: the row computes every ratio); equal ratios
    (the first wins); subnormal probabilities. Each row against torch.argmax over every exact ratio."""
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(6, 128, generator=g)
    probs[:, ::3] = 0.0
    w = torch.randint(-2**31, 2**31, (6, 128, 2), generator=g, dtype=torch.int64).int()  # [6, 128, 2]
    w[0, 5] = 0  # u = 0, p > 0
    w[1, 3] = 0  # u = 0, p = 0
    w[1, 7] = 0  # a later 0/0
    w[2, 7, 0], w[2, 7, 1] = 7 << 21, 99  # hi bits 0, u = 99 / 2^53
    w[3, 40, 0], w[3, 40, 1] = 1, 5  # u = (2^32 + 5) / 2^53, the smallest q of the row ...
    w[3, 10], w[3, 20] = w[3, 40], w[3, 40]  # ... three times
    probs[3, 10] = probs[3, 20] = probs[3, 40] = 2.0  # and the largest p: three equal ratios, the largest
    probs[4] = 1e-42  # subnormal
    probs[5, 64:] = 0.0
    want = torch.div(probs, exponential(w)).argmax(-1)  # [6]
    assert want[:4].tolist() == [5, 3, 7, 10]
    assert torch.equal(argmax_ratio(probs, w), want)


def test_probabilities_that_require_grad_are_drawn_from_like_any():
    logits = torch.randn(3, 256, requires_grad=True)
    probs = logits.softmax(-1)
    want = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(2)).squeeze(-1)
    assert torch.equal(multinomial1(probs, torch.Generator().manual_seed(2)), want)


def test_rows_it_does_not_copy_go_to_torch_multinomial():
    """float64, or a transposed view (torch fills q in memory order, not row by row)."""
    probs = _distributions(256, 5, seed=2)["lm"]
    for p in (probs.double(), probs.t().contiguous().t()):
        want = torch.multinomial(p, 1, generator=torch.Generator().manual_seed(6)).squeeze(-1)
        assert torch.equal(multinomial1(p, torch.Generator().manual_seed(6)), want)


def test_invalid_probabilities_raise_as_torch_does():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(RuntimeError, match="inf`, `nan` or element < 0"):
        multinomial1(torch.tensor([[0.5, float("nan")]]), g)
    with pytest.raises(RuntimeError, match="sum of probabilities <= 0"):
        multinomial1(torch.tensor([[0.5, 0.5], [0.0, 0.0]]), g)


def test_a_torch_whose_multinomial_differs_gets_torch_multinomial_with_a_warning(monkeypatch):
    monkeypatch.setattr(multinomial, "_checked", None)
    monkeypatch.setattr(multinomial, "matches_torch", lambda generator: False)
    probs = _distributions(64, 4, seed=1)["lm"]
    with pytest.warns(UserWarning, match="uses torch.multinomial"):
        got = multinomial1(probs, torch.Generator().manual_seed(4))
    want = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(4)).squeeze(-1)
    assert torch.equal(got, want)
    assert matches_torch(torch.Generator().manual_seed(0))  # this torch: the fast path
