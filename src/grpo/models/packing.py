"""The shared-prompt completion forward without padding: only the completion tokens that exist go through
the decoder layers.

In a padded batch every row is as long as the longest completion, so the projections and MLPs (nearly
all of a step's FLOPs) also run on the pad positions after each shorter completion, and the LM head on
their outputs. At SmolLM2's bench settings (32 completions of up to 64 tokens, 1,650 of them real) that
is a fifth of the completion positions. Here the completion tokens of all rows go through the model as
one packed row [1, N]: every layer but attention works per token and does not care, and attention is
given, in place of the model's own attention function, `packed_attention`, which scatters the packed
queries, keys and values into the padded [B, heads, T, d] layout, puts each row's prompt keys and values
(from the prompt forward's cache, as in the padded path) in front, runs the model's attention function
(transformers' SDPA or grpo's GQA one) under the mask the padded path builds, and gathers the real
positions back. Attention is the only part still padded, and it is a few percent of the work.

Same function as the padded shared-prompt forward (to float rounding: the matrix products see other row
counts); `grpo.models.logprobs.completion_logprobs` uses it where it applies (`packing_applies`): the
completions are right-padded (each row's mask a run of ones, then zeros), no activation checkpointing,
the model's attention is "sdpa" or grpo's GQA function (both take a boolean mask [B, 1, q, k]), and no
sliding window shorter than the sequence (the mask here has none).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import NamedTuple

import torch

from grpo.models import hf_internals
from grpo.models.lean_layers import GQA_ATTENTION

PACKED_ATTENTION = "grpo_packed"
"""The attention implementation name the packed forward registers and sets for the duration of a call."""
MASKED_ATTENTIONS = ("sdpa", GQA_ATTENTION)
"""Attention implementations that take the boolean [B, 1, q, k] mask `packed_attention` builds."""


class Packing(NamedTuple):
    """What `packed_attention` needs besides the layer's packed q, k, v."""

    index: torch.Tensor
    """[N]: each packed token's position in the padded [B * width] layout."""
    gather: torch.Tensor
    """[B * width]: each padded position's packed token, N (a zero row) at pads."""
    rows: int
    width: int
    prompt_cache: object
    """The prompt forward's cache: per layer keys and values [n prompts, kv heads, P, d]."""
    inverse: torch.Tensor
    """[B]: each row's prompt in the cache."""
    mask: torch.Tensor
    """[B, 1, width, P + width] bool: what each padded query position attends to."""
    inner: object
    """The model's own attention function (transformers' signature)."""


_PACKING: contextvars.ContextVar[Packing | None] = contextvars.ContextVar("grpo_packing", default=None)


def _padded(x: torch.Tensor, p: Packing) -> torch.Tensor:
    """[1, h, N, d] packed -> [B, h, width, d] padded (zeros at pads); differentiable. A gather from the
    packed tokens and one zero row, not a scatter: index_copy would keep its source for backward."""
    flat = torch.cat([x[0].transpose(0, 1), x.new_zeros(1, x.shape[1], x.shape[3])])  # [N + 1, h, d]
    out = flat.index_select(0, p.gather)  # [B * width, h, d]
    return out.view(p.rows, p.width, *flat.shape[1:]).transpose(1, 2)


def packed_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' attention-function signature on the packed row: query [1, H, N, d], key and value
    [1, KV, N, d] (the completion tokens' own); returns [1, N, H, d] as transformers' functions do."""
    p = _PACKING.get()
    prompt_keys, prompt_values = hf_internals.cache_layer_kv(p.prompt_cache, module.layer_idx)
    keys = torch.cat([prompt_keys.index_select(0, p.inverse), _padded(key, p)], dim=2)  # [B, KV, P+w, d]
    values = torch.cat([prompt_values.index_select(0, p.inverse), _padded(value, p)], dim=2)
    out, weights = p.inner(module, _padded(query, p), keys, values, p.mask, **kwargs)  # [B, w, H, d]
    out = out.reshape(p.rows * p.width, *out.shape[2:]).index_select(0, p.index)  # [N, H, d]
    return out.unsqueeze(0), weights


def packing_applies(model, completion_mask: torch.Tensor, sequence_length: int) -> bool:
    """Whether `packed_completion_outputs` computes what the padded forward does for this model and batch:
    right-padded completions, an attention that takes `packed_attention`'s mask, no sliding window
    shorter than the sequence."""
    config = model.config
    if hf_internals.attn_implementation(config) not in MASKED_ATTENTIONS:
        return False
    window = getattr(config, "sliding_window", None)
    if window is not None and window < sequence_length:
        return False
    lengths = completion_mask.sum(1, keepdim=True)  # [B, 1]
    prefix = torch.arange(completion_mask.shape[1], device=completion_mask.device) < lengths  # [B, T]
    return bool(torch.equal(prefix, completion_mask.bool()))


@contextlib.contextmanager
def _packed_attention(config, packing: Packing):
    hf_internals.register_attention(PACKED_ATTENTION, packed_attention)
    name = hf_internals.attn_implementation(config)
    token = _PACKING.set(packing)
    hf_internals.set_attn_implementation(config, PACKED_ATTENTION)
    try:
        yield
    finally:
        hf_internals.set_attn_implementation(config, name)
        _PACKING.reset(token)


def packed_completion_outputs(forward, config, head: torch.Tensor, prompt_cache, inverse: torch.Tensor,
                              prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                              completion_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The outputs (hidden states or logits) at the positions that predict the real completion tokens,
    in row-major order: [M, H or V], M = completion_mask.sum().

    forward(input_ids, position_ids, attention_mask) runs the model and returns its outputs [1, N, .];
    head [B, 1, .]: each row's output at its prompt's last position (predicts completion token 0);
    prompt_cache: the prompt forward's cache, a row per distinct prompt (`inverse` maps rows to them);
    prompt_mask [B, P], completion_ids / completion_mask [B, T] (right-padded), positions [B, P + T]."""
    B, P = prompt_mask.shape
    lengths = completion_mask.sum(1)  # [B]
    width = max(int(lengths.max()) - 1, 0)  # completion inputs: every token but each row's last
    if width == 0:
        return head[:, 0][lengths > 0]
    cols = torch.arange(width, device=completion_mask.device)
    inputs = cols < (lengths - 1)[:, None]  # [B, width]: tokens that predict a later real token
    index = inputs.reshape(-1).nonzero().squeeze(1)  # [N]
    gather = torch.full((B * width,), len(index), dtype=torch.long, device=index.device)
    gather[index] = torch.arange(len(index), device=index.device)
    allowed = torch.cat([prompt_mask.bool()[:, None, :].expand(B, width, P),  # prompt keys
                         (cols[None, :] <= cols[:, None])[None] & inputs[:, None, :]], dim=2)  # own keys
    packing = Packing(index, gather, B, width, prompt_cache, inverse, allowed[:, None],  # [B, 1, w, P + w]
                      hf_internals.attention_function(hf_internals.attn_implementation(config)))
    with _packed_attention(config, packing):
        rest = forward(input_ids=completion_ids[:, :width][inputs][None],
                       position_ids=positions[:, P:P + width][inputs][None],
                       attention_mask=torch.ones(1, len(index), dtype=torch.long, device=index.device))[0]
    # row b's outputs: its prompt's last position, then its packed tokens (row-major in `rest`)
    starts = torch.cat([lengths.new_zeros(1), (lengths - 1).clamp(min=0).cumsum(0)[:-1]])  # [B]
    real = completion_mask.bool()  # [B, T]
    t = torch.arange(real.shape[1], device=real.device).expand_as(real)[real]  # [M]
    b = torch.arange(B, device=real.device)[:, None].expand_as(real)[real]  # [M]
    order = torch.where(t == 0, b, B + starts[b] + t - 1)  # [M] into cat([head rows, rest])
    return torch.cat([head[:, 0], rest]).index_select(0, order)
