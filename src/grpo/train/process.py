"""Process supervision's plumbing: per-step rewards in characters -> tensors in completion tokens.

A step reward function (`rewards.step_fn`) returns, for each completion, a list of steps
`(end_char, reward)`: the step is the span of the completion's text ending at character `end_char`
(exclusive) and `reward` scores it. `process_advantages` (grpo.algorithm) needs, per completion, the
token index where each step ends; a step ends at the token that holds its last character.

The text the step function saw is `tokenizer.decode(ids, skip_special_tokens=True)`, so characters
are counted in decoded prefixes of the same ids: token k ends at character len(decode(ids[:k + 1])),
and a step ending at `end_char` ends at the first token whose prefix reaches it (a binary search,
O(log T) decodes per step). Decoding each token alone and summing the lengths would not do:
SentencePiece ("▁", Metaspace) decoders drop the leading space of a sequence's first token, so every
lone word-initial token comes out one character short and the steps drift onto later tokens, one
character per word. Prefixes are decoded the way the whole text was, whatever the tokenizer. A token
that splits a multi-byte character (byte-level BPE) decodes to U+FFFD until the character is
complete, so a step ending at such a character may end at its first token.
"""

from __future__ import annotations

import bisect
import functools
import math

import torch


def step_tensors(steps: list[list[tuple[int, float]]], tokenizer, completion_ids: torch.Tensor,
                 completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(step_rewards [N, S] with NaN padding, step_end_index [N, S]) for `process_advantages`.

    Example: a completion "ab" "cd" (two tokens) with steps [(2, 1.0), (4, 0.0)] gives rewards
    [[1.0, 0.0]] and end indices [[0, 1]]: the first step's last character is in token 0. A step whose
    reward is None is left out (NaN), as a reward function's None means "not applicable".
    """
    N = completion_ids.shape[0]
    if len(steps) != N:
        raise ValueError(f"step reward function returned {len(steps)} lists for {N} completions")
    S = max(1, max((len(s) for s in steps), default=0))
    rewards = torch.full((N, S), math.nan, dtype=torch.float32)  # [N, S]
    ends = torch.zeros((N, S), dtype=torch.long)  # [N, S]
    for i, (row, m) in enumerate(zip(completion_ids, completion_mask)):
        ids = row[m.bool()].tolist()
        chars_through = _prefix_lengths(tokenizer, ids)
        for j, (end_char, reward) in enumerate(steps[i]):
            if reward is None:
                continue
            rewards[i, j] = float(reward)
            k = bisect.bisect_left(range(len(ids)), end_char, key=chars_through)  # first to reach end_char
            ends[i, j] = min(k, max(len(ids) - 1, 0))
    return rewards, ends


def _prefix_lengths(tokenizer, ids: list[int]):
    """k -> characters in the decoded text of tokens 0..k, decoded as the whole completion is; cached."""

    @functools.cache
    def chars_through(k: int) -> int:
        return len(tokenizer.decode(ids[:k + 1], skip_special_tokens=True))

    return chars_through
