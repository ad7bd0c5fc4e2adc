"""`multinomial1`: `torch.multinomial(probs, 1, generator=generator)` for float32 rows on the CPU, the same
draws and the same generator state after, without torch's serial loop.

torch draws one sample per row as argmax(probs / q), q ~ Exp(1) one per entry (the exponential trick of
`multinomial` in aten/src/ATen/native/Distributions.cpp). On the CPU its `exponential_` makes each q in a
serial loop: two 32-bit words of the generator's MT19937 stream, high word first, give the 53-bit uniform
u = ((hi << 32 | lo) mod 2^53) / 2^53, and q = -log1p(-u) in float64, rounded to float32
(`exponential_distribution` and `uniform_real` in aten/src/ATen/core/DistributionsHelper.h). At a
49,152-token vocabulary that loop was most of a decode step's sampling: 32 ms of 35-47 ms for 32 rows on
one thread of the bench CPU (docs/performance.md, "Generation"). Here numpy's MT19937 makes the same words
from the generator's own state (one C loop: 8.4 ms for those 32 rows' 3.1M words) and the advanced state
is written back, and q is computed only where it can decide the argmax: u >= the high word's bits / 2^21
bounds each ratio from above, and the few entries a row whose bound comes near the best get their exact q
(`argmax_ratio`). 13-14 ms in all against torch's 32 (one thread).

It relies on what torch does not promise: the CPU generator's state layout (`get_state`: the
`THGeneratorState` pod of aten/src/ATen/CPUGeneratorImpl.cpp) and the kernel above. So the first call in a
process compares itself with `torch.multinomial` on copies of the generator (`matches_torch`); a torch
that differs turns it off for the process, with one warning, and `torch.multinomial` runs. Other devices,
dtypes and non-contiguous rows always run `torch.multinomial`.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

_LEFT, _NEXT, _KEY = slice(8, 12), slice(16, 24), slice(24, 24 + 624 * 8)  # THGeneratorState's fields
STATE_BYTES = 5056
"""Size of a CPU generator's state in the torch versions whose layout this module reads."""

ROWS_BYTES = 2**21
"""Bytes of probabilities handled per chunk of rows (at least one row), which bounds the temporaries: 32 rows
of 49,152 took 14-15 ms in chunks of 4 to 32 rows and 20 ms one row at a time (one thread of the bench
CPU)."""

_checked: bool | None = None  # None: not yet compared with torch.multinomial in this process


def numpy_mt19937(state: np.ndarray) -> np.random.MT19937:
    """numpy's MT19937 at the position of a torch CPU generator's state bytes. torch decrements `left`
    before each word and regenerates the block when it reaches 0, so its next word is key[625 - left]."""
    bg = np.random.MT19937()
    left = int(state[_LEFT].view(np.int32)[0])
    bg.state = {"bit_generator": "MT19937",
                "state": {"key": state[_KEY].view(np.uint64).astype(np.uint32), "pos": 625 - left}}
    return bg


def _write_back(state: np.ndarray, bg: np.random.MT19937, generator: torch.Generator) -> None:
    s = bg.state["state"]
    pos = int(s["pos"])
    state[_LEFT] = np.array([625 - pos], dtype=np.int32).view(np.uint8)
    state[_NEXT] = np.array([pos], dtype=np.uint64).view(np.uint8)
    state[_KEY] = s["key"].astype(np.uint64).view(np.uint8)
    generator.set_state(torch.from_numpy(state))


def exponential(w: torch.Tensor) -> torch.Tensor:
    """q [...] float32 from the word pairs w [..., 2] (the 32-bit words as int32: high word, low word), as
    torch's `exponential_` makes it."""
    w = w.long()
    lo = w[..., 1].bitwise_and(2**32 - 1)  # [...], the int32 read as unsigned
    u53 = w[..., 0].bitwise_and(2**21 - 1).bitwise_left_shift_(32).bitwise_or_(lo)  # [...]
    # -u exactly (a power of two), log1p in float64, then float32: -(-log1p(-u)) rounds the same
    return u53.double().mul_(-(2.0**-53)).log1p_().float().neg_()


def at_least(x: torch.Tensor, cut: torch.Tensor, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) where x [n, V] >= cut [n, 1], in row-major order: `nonzero` on the blocks of `block`
    entries whose maximum reaches the cut, then inside them (a full-size `nonzero` costs 1.3 ms at 32 x
    49,152 on one thread of the bench CPU, this a fifth of that when the hits are few)."""
    n, V = x.shape
    if V % block:
        return (x >= cut).nonzero(as_tuple=True)
    hit_rows, hit_blocks = (x.view(n, V // block, block).amax(-1) >= cut).nonzero(as_tuple=True)  # [B']
    inside = x.view(n, V // block, block)[hit_rows, hit_blocks] >= cut[hit_rows]  # [B', block]
    which, offset = inside.nonzero(as_tuple=True)  # [K]
    return hit_rows[which], hit_blocks[which] * block + offset


def argmax_ratio(probs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """torch.argmax(probs / q, -1) for probs [n, V] and q = `exponential(w)`, w [n, V, 2], computing q for a
    few entries a row: the first maximum, or the first NaN (a ratio 0/0).

    q >= u >= hi / 2^21, hi the high word's 21 bits that u keeps, so bound = probs / hi is above every ratio
    (times 2^21; the 1 + 2e-5 and 2^-140 margins cover float32 rounding, subnormals included). Candidates:
    the entries whose bound is at least a quarter of the row's largest (a few a row), their exact ratios
    computed. Where the best of them is above what any other entry's bound allows (or a NaN), it is the
    answer; other rows (a row with hi == 0 somewhere, about 1 in 40 at 49,152 entries) compute every ratio.
    """
    n, V = probs.shape
    hi = w[..., 0].bitwise_and(2**21 - 1).float()  # [n, V], exact (< 2^24)
    bound = torch.div(probs, hi, out=hi).nan_to_num_(nan=float("inf"))  # [n, V]; inf where hi == 0
    cut = bound.amax(-1, keepdim=True).mul_(0.25)  # [n, 1], exact (a power of two)
    rows, cols = at_least(bound, cut)  # [K] candidates, every row has one
    ratio = probs[rows, cols] / exponential(w[rows, cols])  # [K], exact
    nan = ratio.isnan()  # [K]
    key = ratio.masked_fill(nan, float("inf"))  # [K]
    best = torch.full((n,), float("-inf")).scatter_reduce_(0, rows, key, "amax")  # [n]
    has_nan = torch.zeros(n).scatter_reduce_(0, rows, nan.float(), "amax").bool()  # [n]
    win = torch.where(has_nan[rows], nan, (key == best[rows]) & ~nan)  # [K] each row's maxima (NaNs first)
    tok = torch.full((n,), V).scatter_reduce_(0, rows, torch.where(win, cols, V), "amin")  # [n]
    # no other entry reaches best: bound < cut there, and ratio <= (bound + 2^-140) * 2^21 * (1 + 2e-5)
    beyond = (cut[:, 0].double() + 2.0**-140) * (2.0**21 * (1 + 2e-5))  # [n]
    redo = (~has_nan & ~(best.double() > beyond)).nonzero().squeeze(1)  # [R]
    if len(redo):
        tok[redo] = torch.div(probs[redo], exponential(w[redo])).argmax(-1)
    return tok


def _draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """argmax(probs / q) per row, q from the generator's stream as torch's `exponential_` makes it. [N]"""
    N, V = probs.shape
    state = generator.get_state().numpy().copy()  # uint8 [STATE_BYTES]
    bg = numpy_mt19937(state)
    words = np.random.Generator(bg)  # integers below 2^32 as uint32: one word each, in stream order
    tok = torch.empty(N, dtype=torch.long)
    step = max(1, ROWS_BYTES // (V * 4))
    for r in range(0, N, step):
        n = min(step, N - r)
        w = words.integers(0, 2**32, 2 * n * V, dtype=np.uint32).view(np.int32)
        tok[r:r + n] = argmax_ratio(probs[r:r + n], torch.from_numpy(w).view(n, V, 2))
    _write_back(state, bg, generator)
    return tok


def matches_torch(generator: torch.Generator) -> bool:
    """True if `_draw` gives torch.multinomial's samples and generator state on copies of `generator`
    (a few rows of an uneven distribution, the stream read from the middle of an MT19937 block)."""
    try:
        a, b = torch.Generator(), torch.Generator()
        a.set_state(generator.get_state())
        torch.empty(3).exponential_(generator=a)  # an odd position in the block
        b.set_state(a.get_state())
        probs = torch.softmax(torch.linspace(-8, 8, 3 * 1024).view(3, 1024) ** 2, -1)  # [3, 1024]
        want = torch.multinomial(probs, 1, generator=a).squeeze(-1)
        got = _draw(probs, b)
        return torch.equal(want, got) and torch.equal(a.get_state(), b.get_state())
    except Exception:  # noqa: BLE001 (another torch's generator: torch.multinomial then)
        return False


def multinomial1(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One sample per row of probs [N, V] (non-negative, not all zero): torch.multinomial(probs, 1,
    generator=generator).squeeze(-1), bit for bit, advancing the generator as it would. [N] long."""
    global _checked
    gen = torch.default_generator if generator is None else generator
    # torch fills q in the memory order of probs: the words go to the entries in row order only if contiguous
    copyable = probs.device.type == "cpu" and probs.dtype == torch.float32 and probs.dim() == 2
    if (not copyable or not probs.numel() or not probs.is_contiguous() or gen.device.type != "cpu"
            or gen.get_state().numel() != STATE_BYTES):
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    if _checked is None:
        _checked = matches_torch(gen)
        if not _checked:
            warnings.warn("grpo: this torch's CPU multinomial differs from grpo.rollout.multinomial's copy "
                          "of it; sampling uses torch.multinomial (the same draws, slower)", stacklevel=2)
    if not _checked:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    low, high = torch.aminmax(probs)  # torch.multinomial's own checks, with its messages
    if not (low >= 0 and high < float("inf")):
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
    if bool((probs.sum(1) == 0).any()):
        raise RuntimeError("invalid multinomial distribution (sum of probabilities <= 0)")
    return _draw(probs.detach(), gen)
