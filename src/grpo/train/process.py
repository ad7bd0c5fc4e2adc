"""Process supervision's plumbing: per-step rewards in characters -> tensors in completion tokens.

A step reward function (`rewards.step_fn`) returns, for each completion, a list of steps
`(end_char, reward)`: the step is the span of the completion's text ending at character `end_char`
(exclusive) and `reward` scores it. `process_advantages` (grpo.algorithm) needs, per completion, the
token index where each step ends; a step ends at the token that holds its last character.

Token spans are found by decoding every completion token on its own and summing the text lengths,
which is exact for tokenizers whose tokens decode to whole characters (the built-in tokenizer,
SentencePiece and most BPE vocabularies on ASCII text); for a token that splits a multi-byte
character the offsets may shift by that character, never past the completion's end.
"""

from __future__ import annotations

import bisect
import itertools
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
        pieces = tokenizer.batch_decode([[t] for t in ids], skip_special_tokens=True)
        cum = list(itertools.accumulate(len(p) for p in pieces))  # cum[k]: characters in tokens 0..k
        for j, (end_char, reward) in enumerate(steps[i]):
            if reward is None:
                continue
            rewards[i, j] = float(reward)
            ends[i, j] = min(bisect.bisect_left(cum, end_char), max(len(ids) - 1, 0))
    return rewards, ends
