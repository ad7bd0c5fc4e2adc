"""Every private or structural transformers name grpo touches, in one place, and a probe of which are there.

grpo's fast paths (`grpo.models.fast_paths`) replace parts of transformers' own forward, so they lean on
names transformers does not promise to keep. Each is read through a function of this module or of the
module named beside it (all in `grpo.models`), and `missing_internals()` probes them all once per load:
a missing name of INTERNALS turns off the fast path it is listed for (the whole path, even where only a
part of it needs the name; `grpo.models.fast_paths.prepare_fast_paths`, one warning line) instead of
failing deep inside a step. The structural names (the last rows) are checked per model where they are
read: the lean decoder is not built for a model without them, and the load check compares every path
with the stock forward.

| transformers name | used by | needed for |
|---|---|---|
| `config._attn_implementation` (read, set) | `attn_implementation`, `set_attn_implementation` | gqa_attention |
| `AttentionInterface.register` | `register_attention` | gqa_attention |
| `masking_utils.AttentionMaskInterface`, `masking_utils.sdpa_mask` | `register_attention` | gqa_attention |
| `integrations.sdpa_attention.sdpa_attention_forward` | `sdpa_attention_function` | gqa_attention |
| `AttentionInterface._global_mapping` (read) | `attention_function` | shared_prompts (packed completions) |
| `<Model>MLP.gate_proj/.up_proj/.down_proj/.act_fn` | `grpo.models.lean_layers` | lean_mlp |
| `cache_utils.DynamicCache(config=)`, `.layers`, `.reorder_cache` | `grpo.models.logprobs`, `grpo.rollout.hf` | shared_prompts, sampling |
| `cache_utils.DynamicLayer` (`keys`, `values`, `lazy_initialization`, `is_initialized`) | `dynamic_layer_class`, `cache_layer_kv` | shared_prompts |
| `modeling_layers.GradientCheckpointingLayer._can_checkpoint_with_cache` | `checkpoint_with_cache_supported`, `allow_checkpoint_with_cache` | shared_prompts under checkpointing |
| the LM head's `forward` (shadowed by an instance attribute) | `grpo.models.logprobs._head_returns_hidden` | chunked_head |
| the forward keyword `cache` / `past_key_values` | `grpo.models.logprobs.cache_kwarg` | every forward with a cache |
| `model.model.embed_tokens/.rotary_emb/.norm/.layers`, `model.lm_head` | `decoder_stack` | lean_decoder, the load check |
| `rotary_emb(x, position_ids) -> (cos, sin)` | `rotary_cos_sin` | lean_decoder |
| `layer.self_attn/.mlp/.input_layernorm/.post_attention_layernorm` | `decoder_layer` | lean_decoder |
| `self_attn.q_proj/.k_proj/.v_proj/.o_proj/.q_norm/.k_norm/.scaling`, `mlp.gate_proj/.up_proj/.down_proj/.act_fn` | `decoder_layer` | lean_decoder |
| `<Norm>.weight/.variance_epsilon` | `rms_norm_params` | lean_decoder |
| `config.rope_parameters` (>= 5) / `config.rope_scaling` | `rope_type` | lean_decoder |
| `activation_checkpointing_enable` (>= 5) / `gradient_checkpointing_enable` | `grpo.models.loading.enable_checkpointing` | train.gradient_checkpointing |

The tested range of transformers is the one `pyproject.toml` allows; `constraints.txt` pins the set the
suite passed on; docs/architectures.md says how to try a newer transformers.
"""  # noqa: E501  (the table rows above are longer than a line)

from __future__ import annotations

import importlib
from typing import NamedTuple

import torch

# Each internal is imported in the function that uses it, not here: `missing_internals` reports an internal
# a transformers release lacks by name (and its fast path is skipped) instead of
# this module failing to import.

INTERNALS = {
    "transformers.AttentionInterface": "gqa_attention",
    "transformers.masking_utils.AttentionMaskInterface": "gqa_attention",
    "transformers.masking_utils.sdpa_mask": "gqa_attention",
    "transformers.integrations.sdpa_attention.sdpa_attention_forward": "gqa_attention",
    "transformers.cache_utils.DynamicCache": "shared_prompts",
    "transformers.cache_utils.DynamicLayer": "shared_prompts",
    "transformers.AttentionInterface._global_mapping": "shared_prompts",
    "transformers.modeling_layers.GradientCheckpointingLayer._can_checkpoint_with_cache": "shared_prompts",
}
"""Dotted name -> the fast path that cannot run without it (`missing_internals`)."""


def _lookup(dotted: str):
    """The object at a dotted path (a module, then attributes); AttributeError/ImportError if absent."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def missing_internals() -> dict[str, str]:
    """{dotted name: fast path it disables} for every INTERNALS name this transformers lacks ({} today)."""
    missing = {}
    for dotted, path in INTERNALS.items():
        try:
            _lookup(dotted)
        except (ImportError, AttributeError):
            missing[dotted] = path
    return missing


# --------------------------------------------------------------------------- attention


def attn_implementation(config) -> str | None:
    """The attention implementation the model's layers look up (`config._attn_implementation`)."""
    return getattr(config, "_attn_implementation", None)


def set_attn_implementation(config, name: str) -> None:
    config._attn_implementation = name


def sdpa_attention_function():
    """transformers' own SDPA attention function."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def attention_function(name: str):
    """The attention function registered under `name` (transformers' "sdpa", grpo's own), or None."""
    from transformers import AttentionInterface

    return AttentionInterface._global_mapping.get(name)


def register_attention(name: str, fn) -> None:
    """Register `fn` as attention implementation `name`, with the same masks as "sdpa"."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, sdpa_mask)


# --------------------------------------------------------------------------- KV caches


def dynamic_cache(config):
    """An empty `DynamicCache` built for `config` (its per-layer caches follow the config's layer types)."""
    from transformers.cache_utils import DynamicCache

    return DynamicCache(config=config)


def cache_layer_kv(cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, values) [B, kv heads, L, d] a `DynamicCache` holds for one layer."""
    entry = cache.layers[layer]
    return entry.keys, entry.values


def dynamic_layer_class():
    """transformers' plain per-layer cache class (no sliding window); None if this version has none."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None
    return DynamicLayer


def checkpoint_with_cache_supported() -> bool:
    """Whether a checkpointed layer can be told to keep its cache (`_can_checkpoint_with_cache`)."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:
        return False
    return hasattr(GradientCheckpointingLayer, "_can_checkpoint_with_cache")


def allow_checkpoint_with_cache(layer, allow: bool) -> None:
    """Let a checkpointed layer keep the cache it is given (transformers drops it otherwise), or undo that."""
    if allow:
        layer._can_checkpoint_with_cache = True
    else:
        layer.__dict__.pop("_can_checkpoint_with_cache", None)


# --------------------------------------------------------------------------- decoder structure


class DecoderStack(NamedTuple):
    """The parts of a Llama-style `<Model>ForCausalLM` that the lean decoder reads."""

    embed_tokens: object
    rotary_emb: object
    norm: object
    layers: list
    lm_head: object


class DecoderLayer(NamedTuple):
    """One Llama-style decoder layer's parts by role: modules, and the attention's `scaling`."""

    input_layernorm: object
    post_attention_layernorm: object
    q_proj: object
    k_proj: object
    v_proj: object
    o_proj: object
    q_norm: object | None
    """Qwen3's RMSNorm over each query head (None where the attention has none); k_norm: the keys'."""
    k_norm: object | None
    gate_proj: object
    up_proj: object
    down_proj: object
    act_fn: object
    scaling: float
    """The factor the attention multiplies q.k by."""

    @property
    def linears(self) -> tuple:
        """The seven projections, attention's then the MLP's."""
        return (self.q_proj, self.k_proj, self.v_proj, self.o_proj,
                self.gate_proj, self.up_proj, self.down_proj)


def decoder_stack(model) -> DecoderStack | None:
    """`model.model.{embed_tokens, rotary_emb, norm, layers}` and
    `model.lm_head`; None where any is absent."""
    inner = getattr(model, "model", None)
    names = ("embed_tokens", "rotary_emb", "norm", "layers")
    if inner is None or not all(hasattr(inner, k) for k in names) or not hasattr(model, "lm_head"):
        return None
    return DecoderStack(inner.embed_tokens, inner.rotary_emb, inner.norm, list(inner.layers), model.lm_head)


def decoder_layer(layer) -> DecoderLayer | None:
    """`layer.{input_layernorm, post_attention_layernorm}`, `layer.self_attn.{q,k,v,o}_proj` (with `.q_norm`,
    `.k_norm` where present, and `.scaling`) and `layer.mlp.{gate,up,down}_proj, .act_fn`; None where any but
    q_norm and k_norm is absent."""
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    get = lambda obj, names: [getattr(obj, k, None) for k in names]  # noqa: E731
    norms = get(layer, ("input_layernorm", "post_attention_layernorm"))
    q, k, v, o, scaling = get(attn, ("q_proj", "k_proj", "v_proj", "o_proj", "scaling"))
    mlp_parts = get(mlp, ("gate_proj", "up_proj", "down_proj", "act_fn"))
    if any(x is None for x in [*norms, q, k, v, o, scaling, *mlp_parts]):
        return None
    return DecoderLayer(*norms, q, k, v, o, *get(attn, ("q_norm", "k_norm")), *mlp_parts, scaling)


def rms_norm_params(norm) -> tuple:
    """An RMSNorm module's (weight, epsilon) (`weight`, `variance_epsilon` in the Llama family)."""
    return norm.weight, norm.variance_epsilon


def rotary_cos_sin(rotary, positions):
    """cos, sin [B, L, head_dim] (float32, as the model's layers get them) of a decoder stack's rotary
    embedding module at position ids [B, L]."""
    return rotary(torch.empty(0, device=positions.device), positions)


def rope_type(config) -> str:
    """The RoPE type a config asks for ('default' where it names none)."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else "default"
