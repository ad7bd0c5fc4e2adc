"""Per-token log-probabilities of given tokens under a causal LM, without a full [B, T, V] fp32 copy.

Sequences use the rollout layout (`grpo.rollout.engine`): a left-padded prompt followed by a
right-padded completion. Position ids are computed from the attention mask (`cumsum - 1`,
`position_ids_from_mask`), in generation and training alike, so that the log-probs the loop trains on
are those of the tokens that were sampled. The sampler (`grpo.rollout.hf`) calls the model's forward
through the same helpers: transformers >= 5 names the KV cache `cache` (argument and output), older
versions `past_key_values` (`cache_kwarg`, `output_cache`).

Shared prompts. In GRPO the G completions of a group continue one prompt, so a batch holds each
prompt G times. `completion_logprobs` runs every distinct prompt once (with the KV cache on), gives
each row a copy of its prompt's keys and values (an index_select, differentiable: the gradient of
all G rows flows back into the one prompt forward), then runs only the completion tokens against
that cache. Same function, fewer FLOPs: with 22-token prompts and 32-token completions at G=8 the
forward sees 2,224 instead of 3,456 tokens. Used where consecutive rows repeat a prompt and the
model has the "shared_prompts" fast path (`grpo.models.fast_paths`: a proven class whose load check
passed); otherwise one plain forward.
Under activation checkpointing (train.gradient_checkpointing) too, where transformers would drop the
cache of a checkpointed layer: its caches are then ones whose updates a recompute can repeat.

No full-vocabulary logits. The model's forward stops at the last hidden states (its LM head returns its
input for the duration of the call); `head_logprobs` then applies the head, log-softmax and the gather
to a chunk of positions at a time, and in a forward with gradients recomputes each chunk's logits in
the backward pass, with a hand-written backward (`ChunkedHeadLogProbs`, below). So no
[B, T, V] tensor exists in the
forward or the backward: at a 49,152-token vocabulary, 32 rows x 130 positions would be 0.8 GB of
float32 logits and as much again for their gradient. Where the model lacks the "chunked_head" fast path
(a class that scales or soft-caps its logits after the head, Gemma 2's), the head is not a plain linear
layer (LoRA on the head) or the weights are FSDP shards, the head runs inside the forward as usual and
the chunks are of those logits (`selective_log_softmax`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import NamedTuple

import torch
import torch.nn.functional as F

from grpo.algorithm.entropy import token_entropy
from grpo.models import hf_internals
from grpo.models.fast_paths import enabled_paths
from grpo.models.loading import unwrap
from grpo.models.packing import packed_completion_outputs, packing_applies

LOGSOFTMAX_CHUNK_ELEMENTS = 2**24
"""Elements of the [rows x T x V] float32 slice `selective_log_softmax` materialises at once (64 MiB)."""


class TokenLogProbs(NamedTuple):
    logp: torch.Tensor  # [B, T] log pi(token) of each completion token
    entropy: torch.Tensor | None  # [B, T] entropy of the full next-token distribution, if asked


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


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, chunk: int | None = None,
                          with_entropy: bool = False, entropy_grad: bool = False) -> TokenLogProbs:
    """log_softmax(logits)[..., index], `chunk` rows at a time (default: as many rows as keep the
    float32 copy under LOGSOFTMAX_CHUNK_ELEMENTS), so peak memory is one chunk's, not the batch's.
    logits [B, T, V], index [B, T]. The entropy (with_entropy) carries a gradient only with entropy_grad."""
    B, T, V = logits.shape
    chunk = chunk or max(1, LOGSOFTMAX_CHUNK_ELEMENTS // max(1, T * V))
    logps, ents = [], []
    for lg, ix in zip(logits.split(chunk), index.split(chunk)):
        lg = lg.float()  # [b, T, V]
        lse = torch.logsumexp(lg, dim=-1)  # [b, T]
        logps.append(lg.gather(-1, ix.unsqueeze(-1)).squeeze(-1) - lse)  # [b, T]
        if with_entropy:
            with contextlib.nullcontext() if entropy_grad else torch.no_grad():
                ents.append(token_entropy(lg))  # [b, T]
    return TokenLogProbs(torch.cat(logps), torch.cat(ents) if with_entropy else None)


# The LM head with a hand-written backward: log-probs (and entropy) of given tokens through the LM head,
# a chunk of positions at a time, the backward recomputing each chunk's logits (docs/algorithm.md).
#
# For hidden states h [N, H], head weight W [V, H] (bias b [V]), z = (h W^T + b) / tau, per position:
#
#     logp = z[y] - lse(z)                      H = lse(z) - sum_v p_v z_v,  p = softmax(z)
#     dlogp/dz = onehot(y) - p                  dH/dz = -p * (log p + H)
#
# Forward keeps only lse and H per position ([N] each), never the [N, V] logits. Backward recomputes one
# chunk's z, turns it into p in place, forms dz = g_logp * (onehot - p) + g_H * dH/dz in that same buffer,
# and accumulates dh = dz W / tau and dW = dz^T h / tau. Autograd through the same arithmetic (a
# checkpointed chunk) allocates several [chunk, V] temporaries per op of logsumexp's and the division's
# backward; on SmolLM2's 49,152-token vocabulary that was ~3 s of a 30 s update (bench/run_real_bench.sh).
#
# Under autocast the recompute runs under the forward's autocast state, so it sees the forward's logits.


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """z = (h W^T + b) / temperature, float32 [n, V], written into `out` (a `_buffer`) where given: the
    product F.linear runs, in one buffer for every chunk rather than fresh memory each time (a fresh 64
    MiB tensor comes from mmap and pays a page fault per 4 KiB)."""
    if out is not None:
        z = out[:h.shape[0]]
        if bias is None:
            torch.mm(h, weight.t(), out=z)
        else:
            torch.addmm(bias, h, weight.t(), out=z)
    else:
        z = F.linear(h, weight, bias).float()  # [n, V]: log-probs are float32 whatever the model's dtype
    if temperature not in (0.0, 1.0):
        z.div_(temperature)
    return z


def _buffer(hidden: torch.Tensor, weight: torch.Tensor, chunk: int, autocast: bool) -> torch.Tensor | None:
    """One [min(chunk, N), V] float32 buffer for a chunk's logits, where the product is float32 outside
    autocast (else None: F.linear's output is cast to float32 anyway)."""
    if autocast or not hidden.dtype == weight.dtype == torch.float32:
        return None
    rows = min(chunk, hidden.shape[0])
    return torch.empty(rows, weight.shape[0], dtype=torch.float32, device=hidden.device)


class ChunkedHeadLogProbs(torch.autograd.Function):
    """(logp [N], entropy [N]) of index [N] under softmax((hidden W^T + b) / temperature), chunk rows at a
    time. Gradients reach hidden, weight and bias; entropy's gradient is computed only if it is used."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, index, temperature: float, chunk: int, with_entropy: bool):
        device_type = hidden.device.type
        ctx.autocast = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        logps, lses, ents, p_buf = [], [], [], None
        z_buf = _buffer(hidden, weight, chunk, ctx.autocast[0])
        with torch.no_grad():
            for h, ix in zip(hidden.split(chunk), index.split(chunk)):
                z = _logits(h, weight, bias, temperature, z_buf)  # [n, V]
                if with_entropy:  # one exp per entry: e = exp(z - max), s = sum e, H = log s - sum(e z') / s
                    top = z.amax(-1, keepdim=True)  # [n, 1]
                    z.sub_(top)  # z' = z - max
                    if p_buf is None:
                        p_buf = torch.empty_like(z)  # the first chunk is the largest
                    e = torch.exp(z, out=p_buf[:z.shape[0]])  # [n, V]
                    s = e.sum(-1)  # [n]
                    log_s = s.log()
                    ez = torch.bmm(e.unsqueeze(1), z.unsqueeze(2)).view(-1)  # [n] sum_v e_v z'_v
                    lse = top.squeeze(-1) + log_s
                    logps.append(z.gather(-1, ix[:, None]).squeeze(-1) - log_s)
                    ents.append(log_s - ez / s)
                else:
                    lse = torch.logsumexp(z, dim=-1)  # [n]
                    logps.append(z.gather(-1, ix[:, None]).squeeze(-1) - lse)
                lses.append(lse)
        logp, lse = torch.cat(logps), torch.cat(lses)
        entropy = torch.cat(ents) if with_entropy else torch.zeros_like(logp)
        ctx.save_for_backward(hidden, weight, bias, index, lse, entropy)
        ctx.temperature, ctx.chunk = temperature, chunk
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_entropy):
        hidden, weight, bias, index, lse, entropy = ctx.saved_tensors
        tau = ctx.temperature if ctx.temperature not in (0.0, 1.0) else 1.0
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        use_entropy = g_entropy is not None and bool(g_entropy.ne(0).any())
        device_type = hidden.device.type
        enabled, dtype = ctx.autocast
        z_buf = _buffer(hidden, weight, ctx.chunk, enabled)
        start = 0
        for h, ix in zip(hidden.split(ctx.chunk), index.split(ctx.chunk)):
            n = h.shape[0]
            rows = slice(start, start + n)
            with torch.no_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
                z = _logits(h, weight, bias, ctx.temperature, z_buf)  # [n, V]
            z.sub_(lse[rows, None])  # log p
            g = g_logp[rows].to(z.dtype).div(tau)  # [n]; dz/tau in one pass: d/dh of z = h W^T / tau
            if use_entropy:
                p = z.exp()
                ge = g_entropy[rows].to(z.dtype).div(tau)
                # dz = -g p + g_H * (-p (log p + H)) = -p * (g + g_H (log p + H)); then + g at y
                z.add_(entropy[rows, None]).mul_(ge[:, None]).add_(g[:, None]).mul_(p).neg_()
                dz = z
            else:
                dz = z.exp_().mul_(-g[:, None])  # -g p
            dz.scatter_add_(-1, ix[:, None], g[:, None])  # + g onehot(y)
            if need_h:
                grad_h[rows] = (dz @ weight.to(dz.dtype)).to(hidden.dtype)
            if need_w:
                grad_w.addmm_(dz.t(), h.to(dz.dtype))
            if need_b:
                grad_b.add_(dz.sum(0))
            start += n
        grad_w = grad_w.to(weight.dtype) if need_w else None
        grad_b = grad_b.to(bias.dtype) if need_b else None
        return grad_h, grad_w, grad_b, None, None, None, None


def chunked_head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          index: torch.Tensor, temperature: float, chunk: int,
                          with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logp [N], entropy [N] or None) for hidden [N, H] and index [N]; see `ChunkedHeadLogProbs`."""
    logp, entropy = ChunkedHeadLogProbs.apply(hidden, weight, bias, index, temperature, chunk, with_entropy)
    return logp, entropy if with_entropy else None


def head_logprobs(hidden: torch.Tensor, head: torch.nn.Linear, index: torch.Tensor, temperature: float = 1.0,
                  with_entropy: bool = False, chunk: int | None = None,
                  entropy_grad: bool = False) -> TokenLogProbs:
    """log_softmax(head(hidden) / temperature)[..., index] without the full logits: `chunk` positions at a
    time (default: as many as keep one chunk's float32 logits under LOGSOFTMAX_CHUNK_ELEMENTS), each
    chunk's logits recomputed in the backward pass (`ChunkedHeadLogProbs`, below).
    hidden [B, T, H], index [B, T].
    The entropy (with_entropy) comes from the same chunks and carries a gradient only with entropy_grad
    (the entropy bonus). Equal to the plain path to float rounding (tests/test_rollout_logprobs.py)."""
    B, T, H = hidden.shape
    V = head.weight.shape[0]
    chunk = chunk or max(1, LOGSOFTMAX_CHUNK_ELEMENTS // V)
    logp, entropy = chunked_head_logprobs(hidden.reshape(B * T, H), head.weight, head.bias,
                                          index.reshape(B * T),
                                          temperature, chunk, with_entropy)
    if entropy is not None:
        entropy = (entropy if entropy_grad else entropy.detach()).reshape(B, T)
    return TokenLogProbs(logp.reshape(B, T), entropy)


def _plain_head(model) -> torch.nn.Linear | None:
    """The model's LM head if it is a plain, unsharded linear layer (so that it can be applied outside the
    forward, in chunks); else None."""
    base = unwrap(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or type(head.weight) is not torch.nn.Parameter:
        return None  # peft-wrapped (LoRA on the head), or FSDP's DTensor shards
    return head


@contextlib.contextmanager
def _head_returns_hidden(head: torch.nn.Linear | None):
    """For the duration: the LM head returns its input, so the model's 'logits' are its last hidden states."""
    if head is None:
        yield
        return
    head.forward = lambda h: h  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        del head.forward


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


def _checkpointed_layers(model) -> list:
    return [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]


def recomputes_layers(model) -> bool:
    """Whether a forward of `model` now runs under Hugging Face's activation checkpointing, which
    turns the KV cache off in every checkpointed layer (train mode with gradients; see
    grpo.models.loading.enable_checkpointing)."""
    return model.training and torch.is_grad_enabled() and bool(_checkpointed_layers(model))


def _prefix_cache_supported(model) -> bool:
    """Whether this transformers lets a checkpointed layer keep a cache (`_can_checkpoint_with_cache`)
    and gives this model plain per-layer caches (`DynamicLayer`: no sliding window), which
    `_repeatable_caches` builds on."""
    plain = hf_internals.dynamic_layer_class()
    if plain is None or not hf_internals.checkpoint_with_cache_supported():
        return False
    try:
        layers = hf_internals.dynamic_cache(model.config).layers
    except Exception:  # noqa: BLE001 (any model this version cannot build a cache for)
        return False
    return bool(layers) and all(type(layer) is plain for layer in layers)


@contextlib.contextmanager
def _checkpointed_with_cache(model):
    """Let the checkpointed layers keep the cache they are given (transformers drops it otherwise); the
    caches of `_repeatable_caches` make every update repeatable, so a layer's recompute in the backward
    pass sees what its forward saw."""
    layers = _checkpointed_layers(model)
    try:
        for m in layers:
            hf_internals.allow_checkpoint_with_cache(m, True)
        yield
    finally:
        for m in layers:
            hf_internals.allow_checkpoint_with_cache(m, False)


@functools.cache
def _repeatable_layer_classes() -> tuple[type, type]:
    """(StoringLayer, PrefixLayer): `DynamicLayer`s whose update a recompute can repeat. Defined on first
    use, so that importing this module does not import transformers."""
    DynamicLayer = hf_internals.dynamic_layer_class()

    class StoringLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states, value_states
            return key_states, value_states

    class PrefixLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)

    return StoringLayer, PrefixLayer


def _repeatable_caches(model, inverse: torch.Tensor):
    """(prompt cache, make_completion_cache) for a forward under activation checkpointing, whose layers'
    updates give the same result when a recompute repeats them: the prompt cache stores (the cache is
    empty before, so storing is appending), the completion cache returns its prompt's keys and values
    followed by the new ones and stores nothing. The second is built from the first once the prompt
    forward has filled it, one copy per row (`inverse`). Class swaps, not bound methods: a method bound
    to its own layer would be a reference cycle keeping the autograd graph alive until gc runs."""
    StoringLayer, PrefixLayer = _repeatable_layer_classes()
    prompt = hf_internals.dynamic_cache(model.config)
    for layer in prompt.layers:
        layer.__class__ = StoringLayer

    def completion_cache():
        rows = hf_internals.dynamic_cache(model.config)
        for src, layer in zip(prompt.layers, rows.layers):
            keys, values = src.keys.index_select(0, inverse), src.values.index_select(0, inverse)
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
            layer.__class__ = PrefixLayer
        return rows

    return prompt, completion_cache


def _forward(model, **kw):
    """(logits, cache) of one forward (cache None without use_cache)."""
    out = model(**kw)
    return out.logits, output_cache(out) if kw.get("use_cache") else None


def completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                        temperature: float = 1.0, with_entropy: bool = False,
                        share_prompts: bool | None = None, chunked_head: bool | None = None,
                        entropy_grad: bool = False, pack: bool | None = None) -> TokenLogProbs:
    """log pi(completion token t | prompt, completion < t) for every completion position. [B, T]

    share_prompts: run each distinct prompt once (None: when rows repeat prompts, the model has the
    "shared_prompts" fast path (`grpo.models.fast_paths.enabled_paths`) and, under activation
    checkpointing, this transformers lets checkpointed layers keep a cache). Both ways compute the same
    function. Under checkpointing both forwards are checkpointed, over the caches of `_repeatable_caches`.
    chunked_head: the LM head applied in chunks of positions after the forward (`head_logprobs`), where
    the head is a plain linear layer (None: and the model has the "chunked_head" fast path); False:
    inside it.
    with_entropy: also the entropy of each position's distribution, with a gradient if entropy_grad.
    pack: with shared prompts, only the real completion tokens go through the model
    (`grpo.models.packing`; None: where `packing_applies`, never under checkpointing; True where it does
    not apply: ValueError); the log-probs (and entropy) at padding are then 0, where the padded forward
    leaves what the pads compute."""
    first, inverse = prompt_groups(prompt_ids, prompt_mask)
    checkpointed = recomputes_layers(model)
    if share_prompts is None:
        share_prompts = (2 * len(first) <= prompt_ids.shape[0]
                         and "shared_prompts" in enabled_paths(model)
                         and (not checkpointed or _prefix_cache_supported(model)))
    elif share_prompts and checkpointed and not _prefix_cache_supported(model):
        raise ValueError("share_prompts=True under activation checkpointing needs a transformers whose "
                         "checkpointed layers can keep a cache (_can_checkpoint_with_cache)")
    mask = torch.cat([prompt_mask, completion_mask], dim=1)  # [B, P+T]
    positions = position_ids_from_mask(mask)  # [B, P+T]
    B, P = prompt_ids.shape
    if chunked_head is None:
        chunked_head = "chunked_head" in enabled_paths(model)
    head = _plain_head(model) if chunked_head else None
    applies = bool(share_prompts) and not checkpointed and packing_applies(unwrap(model), completion_mask,
                                                                           P + completion_ids.shape[1])
    if pack and not applies:
        raise ValueError("pack=True needs shared prompts, no activation checkpointing and a batch and model "
                         "that grpo.models.packing.packing_applies accepts")
    if applies if pack is None else pack:
        return _packed_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, positions,
                                first, inverse, head, temperature, with_entropy, entropy_grad)
    with _head_returns_hidden(head):  # `logits` below are hidden states [.., H] when head is not None
        logits = _completion_outputs(model, prompt_ids, prompt_mask, completion_ids, mask, positions, first,
                                     inverse, share_prompts, checkpointed)
    if head is not None:
        return head_logprobs(logits, head, completion_ids, temperature, with_entropy,
                             entropy_grad=entropy_grad)
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    return selective_log_softmax(logits, completion_ids, with_entropy=with_entropy, entropy_grad=entropy_grad)


def _packed_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, positions, first,
                     inverse, head, temperature: float, with_entropy: bool,
                     entropy_grad: bool) -> TokenLogProbs:
    """`completion_logprobs` through the packed completion forward (`grpo.models.packing`)."""
    P = prompt_ids.shape[1]
    with _head_returns_hidden(head):  # outputs are hidden states [.., H] when head is not None
        last, cache = _forward(model, input_ids=prompt_ids[first], attention_mask=prompt_mask[first],
                               position_ids=positions[first, :P], logits_to_keep=1, use_cache=True,
                               **{cache_kwarg(model): None})
        outputs = packed_completion_outputs(lambda **kw: _forward(model, use_cache=False, **kw)[0],
                                            unwrap(model).config, last[inverse], cache, inverse, prompt_mask,
                                            completion_ids, completion_mask, positions)  # [M, H or V]
    real = completion_mask.bool()  # [B, T]
    index = completion_ids[real][:, None]  # [M, 1]: a position per row, so chunks are of positions
    if head is not None:
        out = head_logprobs(outputs[:, None], head, index, temperature, with_entropy,
                            entropy_grad=entropy_grad)
    else:
        logits = outputs[:, None] if temperature in (0.0, 1.0) else outputs[:, None] / temperature
        out = selective_log_softmax(logits, index, with_entropy=with_entropy, entropy_grad=entropy_grad)
    spread = lambda x: None if x is None else x.new_zeros(real.shape).masked_scatter(real, x[:, 0])  # noqa: E731
    return TokenLogProbs(spread(out.logp), spread(out.entropy))


def _completion_outputs(model, prompt_ids, prompt_mask, completion_ids, mask, positions, first, inverse,
                        share_prompts: bool, checkpointed: bool) -> torch.Tensor:
    """The model's outputs at the positions that predict the completion tokens. [B, T, V or H]"""
    B, P = prompt_ids.shape
    T = completion_ids.shape[1]
    if not share_prompts:
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # [B, P+T]
        logits, _ = _forward(model, input_ids=input_ids, attention_mask=mask, position_ids=positions,
                             use_cache=False, logits_to_keep=T + 1)
        logits = logits[:, :-1]  # [B, T, V]: position P-1+t predicts completion token t
    else:
        # under checkpointing: caches whose updates a layer's recompute can repeat, passed explicitly
        # (use_cache stays off so that transformers does not warn about them)
        kw = {cache_kwarg(model): None, "use_cache": True}
        if checkpointed:
            prompt_cache, completion_cache = _repeatable_caches(model, inverse)
            kw = {cache_kwarg(model): prompt_cache, "use_cache": False}
        with _checkpointed_with_cache(model) if checkpointed else contextlib.nullcontext():
            head, cache = _forward(model, input_ids=prompt_ids[first], attention_mask=prompt_mask[first],
                                   position_ids=positions[first, :P], logits_to_keep=1, **kw)
            head = head[inverse]  # [B, 1, V]: the last prompt position predicts completion token 0
            logits = head
            if T > 1:
                if checkpointed:
                    kw = {cache_kwarg(model): completion_cache(), "use_cache": False}
                else:
                    cache.reorder_cache(inverse)  # every row gets (a differentiable copy of) its prompt's K/V
                    kw = {cache_kwarg(model): cache, "use_cache": True}
                rest, _ = _forward(model, input_ids=completion_ids[:, :-1], attention_mask=mask[:, :-1],
                                   position_ids=positions[:, P:-1], **kw)
                logits = torch.cat([head, rest], dim=1)  # [B, T, V]
    return logits
