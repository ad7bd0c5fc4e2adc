"""Per-token log-probabilities of given tokens under a causal LM, without a full [B, T, V] fp32 copy.

Sequences use the rollout layout: a left-padded prompt followed by a right-padded completion.
Position ids are computed from the attention mask (`cumsum - 1`), in generation and training
alike, so that the log-probs the loop trains on are those of the tokens that were sampled.

Shared prompts. In GRPO the G completions of a group continue one prompt, so a batch holds each
prompt G times. `completion_logprobs` runs every distinct prompt once (with the KV cache on), gives
each row a copy of its prompt's keys and values (an index_select, differentiable: the gradient of
all G rows flows back into the one prompt forward), then runs only the completion tokens against
that cache. Same function, fewer FLOPs: with 22-token prompts and 32-token completions at G=8 the
forward sees 2,224 instead of 3,456 tokens. Used where consecutive rows repeat a prompt and the
model is one whose cache is known to behave (`SHARED_PROMPT_MODELS`); otherwise one plain forward.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

SHARED_PROMPT_MODELS = ("llama", "mistral", "qwen2", "qwen3")
"""`config.model_type`s whose dynamic KV cache keeps gradients and reorders by batch index."""

LOGSOFTMAX_CHUNK_ELEMENTS = 2**24
"""Elements of the [rows x T x V] float32 slice `selective_log_softmax` materialises at once (64 MiB)."""


class TokenLogProbs(NamedTuple):
    logp: torch.Tensor  # [B, T] log pi(token) of each completion token
    entropy: torch.Tensor | None  # [B, T] entropy of the full next-token distribution, if asked


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, L]


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, chunk: int | None = None,
                          with_entropy: bool = False) -> TokenLogProbs:
    """log_softmax(logits)[..., index], `chunk` rows at a time (default: as many rows as keep the
    float32 copy under LOGSOFTMAX_CHUNK_ELEMENTS), so peak memory is one chunk's, not the batch's.
    logits [B, T, V], index [B, T]."""
    B, T, V = logits.shape
    chunk = chunk or max(1, LOGSOFTMAX_CHUNK_ELEMENTS // max(1, T * V))
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


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, inverse): first [n] indexes one row per run of identical consecutive prompts, and
    inverse [B] maps every row to its run. prompt_ids/prompt_mask [B, P].

    >>> prompt_groups(torch.tensor([[5, 6], [5, 6], [7, 8]]), torch.ones(3, 2))
    (tensor([0, 2]), tensor([0, 0, 1]))
    """
    B = prompt_ids.shape[0]
    ids = prompt_ids.masked_fill(prompt_mask == 0, -1)  # pads never make two prompts differ
    starts = torch.ones(B, dtype=torch.bool, device=ids.device)
    starts[1:] = (ids[1:] != ids[:-1]).any(-1)
    return starts.nonzero().squeeze(1), starts.long().cumsum(0) - 1


def recomputes_layers(model) -> bool:
    """Whether a forward of `model` now runs under Hugging Face's activation checkpointing, which
    turns the KV cache off in every checkpointed layer (train mode with gradients; see
    grpo.models.loading.enable_checkpointing)."""
    return model.training and torch.is_grad_enabled() and \
        any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def _forward(model, **kw):
    """(logits, cache) of one forward; the cache under whichever name this transformers uses."""
    out = model(**kw)
    if not kw.get("use_cache"):
        return out.logits, None
    cache = out.get("cache")  # transformers >= 5.x; older versions call it past_key_values
    return out.logits, cache if cache is not None else out.get("past_key_values")


def cache_kwarg(model) -> str:
    """The forward keyword of the KV cache in this transformers version ('cache', or 'past_key_values')."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT passes it through
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                        temperature: float = 1.0, with_entropy: bool = False,
                        share_prompts: bool | None = None) -> TokenLogProbs:
    """log pi(completion token t | prompt, completion < t) for every completion position. [B, T]

    share_prompts: run each distinct prompt once (None: when rows repeat prompts, the model type is in
    SHARED_PROMPT_MODELS and its layers are not being checkpointed). Both ways compute the same function."""
    first, inverse = prompt_groups(prompt_ids, prompt_mask)
    checkpointed = recomputes_layers(model)
    if share_prompts is None:
        share_prompts = (2 * len(first) <= prompt_ids.shape[0] and not checkpointed
                         and getattr(model.config, "model_type", None) in SHARED_PROMPT_MODELS)
    elif share_prompts and checkpointed:
        raise ValueError("share_prompts=True needs the KV cache, which activation checkpointing turns off")
    mask = torch.cat([prompt_mask, completion_mask], dim=1)  # [B, P+T]
    positions = position_ids_from_mask(mask)  # [B, P+T]
    B, P = prompt_ids.shape
    T = completion_ids.shape[1]
    if not share_prompts:
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # [B, P+T]
        logits, _ = _forward(model, input_ids=input_ids, attention_mask=mask, position_ids=positions,
                             use_cache=False, logits_to_keep=T + 1)
        logits = logits[:, :-1]  # [B, T, V]: position P-1+t predicts completion token t
    else:
        head, cache = _forward(model, input_ids=prompt_ids[first], attention_mask=prompt_mask[first],
                               position_ids=positions[first, :P], use_cache=True, logits_to_keep=1)
        head = head[inverse]  # [B, 1, V]: the last prompt position predicts completion token 0
        if T > 1:
            cache.reorder_cache(inverse)  # every row gets (a differentiable copy of) its prompt's K/V
            rest, _ = _forward(model, input_ids=completion_ids[:, :-1], attention_mask=mask[:, :-1],
                               position_ids=positions[:, P:-1], use_cache=True, **{cache_kwarg(model): cache})
            logits = torch.cat([head, rest], dim=1)  # [B, T, V]
        else:
            logits = head
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    return selective_log_softmax(logits, completion_ids, with_entropy=with_entropy)
