"""How grpo calls a transformers causal LM's forward: position ids and the KV cache across versions.

Sequences use the rollout layout (`grpo.rollout.engine`): a left-padded prompt followed by a
right-padded completion. Position ids come from the attention mask (`cumsum - 1`), in generation and
training alike, so that the log-probs the loop trains on are those of the tokens that were sampled.
transformers >= 5 names the KV cache `cache` (argument and output); older versions `past_key_values`.
"""

from __future__ import annotations

import inspect

import torch

from grpo.models.lora import unwrap


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Each token's position among the real tokens of its row (pads before the first get 0).

    >>> position_ids_from_mask(torch.tensor([[0, 1, 1, 1]]))
    tensor([[0, 0, 1, 2]])
    """
    return (mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, L]


def cache_kwarg(model) -> str:
    """The forward keyword of the KV cache in this transformers version ('cache', or 'past_key_values')."""
    return "cache" if "cache" in inspect.signature(unwrap(model).forward).parameters else "past_key_values"


def output_cache(out):
    """The KV cache a forward with use_cache returned, under whichever name this transformers uses."""
    cache = out.get("cache")
    return cache if cache is not None else out.get("past_key_values")
