"""Per-token log-probabilities of given tokens under a causal LM, without a full [B, T, V] fp32 copy.

Sequences use the rollout layout: a left-padded prompt followed by a right-padded completion.
Position ids are computed from the attention mask (`cumsum - 1`), in generation and training
alike, so that the log-probs the loop trains on are those of the tokens that were sampled.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class TokenLogProbs(NamedTuple):
    logp: torch.Tensor  # [B, T] log pi(token) of each completion token
    entropy: torch.Tensor | None  # [B, T] entropy of the full next-token distribution, if asked


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, L]


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, chunk: int = 8,
                          with_entropy: bool = False) -> TokenLogProbs:
    """log_softmax(logits)[..., index] computed `chunk` rows at a time (peak memory one chunk's
    [chunk, T, V] float32 copy, not the whole batch's). logits [B, T, V], index [B, T]."""
    logps, ents = [], []
    for lg, ix in zip(logits.split(chunk), index.split(chunk)):
        lg = lg.float()  # [b, T, V]
        lse = torch.logsumexp(lg, dim=-1)  # [b, T]
        logps.append(lg.gather(-1, ix.unsqueeze(-1)).squeeze(-1) - lse)  # [b, T]
        if with_entropy:
            with torch.no_grad():
                p = torch.softmax(lg, dim=-1)
                ents.append(lse - (p * lg).sum(-1))  # [b, T]
    return TokenLogProbs(torch.cat(logps), torch.cat(ents) if with_entropy else None)


def completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                        temperature: float = 1.0, with_entropy: bool = False) -> TokenLogProbs:
    """log pi(completion token t | prompt, completion < t) for every completion position. [B, T]"""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # [B, P+T]
    mask = torch.cat([prompt_mask, completion_mask], dim=1)  # [B, P+T]
    T = completion_ids.shape[1]
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                use_cache=False, logits_to_keep=T + 1)
    logits = out.logits[:, :-1]  # [B, T, V]: position P-1+t predicts completion token t
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    return selective_log_softmax(logits, completion_ids, with_entropy=with_entropy)
