"""DAPO's two treatments of completions cut off at the length limit (arXiv 2503.14476, §3.4).

A truncated completion's reward says nothing about its reasoning, so DAPO either drops it from the
loss (overlong filtering: `mask_truncated`) or adds a length penalty that ramps in over the last
`cache_len` tokens before the limit (soft overlong punishment):

    R_length(L) = 0                                      if L <= L_max - L_cache
                  ((L_max - L_cache) - L) / L_cache      if L_max - L_cache < L <= L_max
                  -1                                     if L > L_max
"""

import torch


def soft_overlong_penalty(lengths: torch.Tensor, max_len: int, cache_len: int) -> torch.Tensor:
    """DAPO's soft overlong punishment, to add to each completion's reward (DAPO §3.4).

    The middle branch is a line from 0 at L_max - L_cache down to -1 at L_max, so the whole function
    is that line clamped to [-1, 0]. Example: max_len=20, cache_len=4 -> lengths [16, 18, 20, 21]
    get [0, -0.5, -1, -1].

    Args:
        lengths: [N] completion lengths in tokens (int or float).
    Returns:
        [N] penalties in [-1, 0]; float dtype of `lengths`, or the default float dtype for ints.
    """
    if not (0 < cache_len <= max_len):
        raise ValueError(f"soft_overlong_penalty needs 0 < cache_len <= max_len, got {cache_len}, {max_len}")
    if not lengths.is_floating_point():
        lengths = lengths.to(torch.get_default_dtype())
    ramp = ((max_len - cache_len) - lengths) / cache_len  # [N]
    return ramp.clamp(min=-1.0, max=0.0)  # [N]


def mask_truncated(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """Overlong filtering: the completion mask with every truncated completion's row set to 0.

    Example: mask [[1, 1], [1, 1]], truncated [False, True] -> [[1, 1], [0, 0]].

    Args:
        mask: [B, T] completion mask (any dtype); truncated: [B] bool, True where the completion hit
            the length limit without finishing.
    Returns:
        [B, T] mask of the same dtype.
    """
    return torch.where(truncated.bool()[:, None], torch.zeros_like(mask), mask)  # [B, T]
