"""Two savings in what a Llama-style block keeps for backward. The first is exact bit for bit (the forward
values, and the gradients through the backward kernel autograd itself calls); the second computes the same
function through another SDPA kernel, so log-probs and gradients agree to float rounding (1e-5 in
tests/test_lean_layers.py), not bit for bit.

1. **SiLU and multiply** (`SiluMul`). The MLP is down(silu(gate(x)) * up(x)). Autograd keeps gate(x) for the
   SiLU's backward, then silu(gate(x)) and up(x) for the product's, then the product as down's input:
   four [rows, tokens, intermediate] tensors per layer. `SiluMul` keeps gate(x) and up(x) and recomputes
   the SiLU in backward, so three. On SmolLM2-135M at the bench's shapes (32 completions of 64 tokens) that
   is 354 MiB less (`bench/saved_activations.py`).
2. **Grouped-query attention under a mask** (`sdpa_gqa_attention`). transformers' SDPA path repeats keys
   and values to every query head whenever an attention mask is given, because CUDA's fused kernels need
   that; the repeated copies are what autograd keeps. PyTorch's CPU flash-attention kernel takes the mask
   with `enable_gqa=True` and reads the kv heads in place. SmolLM2 (9 query heads, 3 kv heads): 374 MiB
   less at the same shapes. Only on CPU; elsewhere, and without a mask, transformers' own function runs.

`lean_layers(model, paths)` applies them to a loaded transformers model (before LoRA adapters are added),
each only where `paths` (default: `grpo.models.fast_paths.proven_paths(model)`, an explicit list of model
classes) names it: the MLP to modules of the classes in LEAN_MLP_CLASSES whose activation is the SiLU,
the attention where the model is grouped-query, on CPU, and on "sdpa". Any other module keeps its own
forward: a MultiplierMLP (FalconH1's, which scales gate and down), a clamped SwiGLU, an MLP with dropout
look the same by their attribute names but compute something else. `remove_lean_layers` undoes both
(`grpo.models.fast_paths` compares the two on a small batch once per load).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from grpo.models.hf_internals import (attn_implementation, register_attention, sdpa_attention_function,
                                      set_attn_implementation)

LEAN_MLP_CLASSES = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "Olmo2MLP")
"""transformers MLP classes whose forward is down_proj(act_fn(gate_proj(x)) * up_proj(x)) and nothing more
(read in transformers 5.25's modeling files); `SiluMul` replaces it where act_fn is the SiLU."""

GQA_ATTENTION = "grpo_sdpa_gqa"
"""The attention implementation name `lean_layers` registers with transformers and sets on the model."""


class SiluMul(torch.autograd.Function):
    """silu(gate) * up, keeping gate and up for backward (not silu(gate)); gradients as autograd's."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up  # [..., I]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        g_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        g_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        return g_gate, g_up


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up; through `SiluMul` only when autograd will need it (else
    plain, no Function overhead)."""
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return SiluMul.apply(gate, up)
    return F.silu(gate) * up


def _lean_mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


def sdpa_gqa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                       is_causal=None, **kwargs):
    """transformers' attention-function signature; query [B, H, q, d], key and value [B, KV, k, d].

    With a mask on CPU and fewer kv heads than query heads: one SDPA call with `enable_gqa=True` (PyTorch's
    CPU flash kernel, which takes both), returning [B, q, H, d] as transformers' SDPA function does.
    Anything else goes to that function unchanged."""
    sdpa_attention_forward = sdpa_attention_function()
    plain = (attention_mask is None or query.device.type != "cpu" or query.shape[2] == 1
             or key.shape[1] == query.shape[1] or kwargs.get("position_bias") is not None
             or kwargs.get("softcap") is not None)
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, enable_gqa=True)  # [B, H, q, d]
    return out.transpose(1, 2).contiguous(), None


def _is_lean_mlp(module) -> bool:
    """A transformers MLP of a class in LEAN_MLP_CLASSES whose activation is the SiLU (checked by value:
    transformers has its own SiLU classes)."""
    cls = type(module)
    if cls.__name__ not in LEAN_MLP_CLASSES or not cls.__module__.startswith("transformers.models."):
        return False
    act, probe = getattr(module, "act_fn", None), torch.linspace(-6, 6, 25)
    try:
        return callable(act) and torch.equal(act(probe), F.silu(probe))
    except Exception:  # an activation that does not take a CPU float tensor is not one to replace
        return False


def lean_layers(model, paths=None) -> dict[str, int | bool]:
    """Apply both savings to a transformers model in place, where `paths` (a set of fast-path names,
    default `proven_paths(model)`) has "lean_mlp" and "gqa_attention"; returns what was changed:
    {"mlps": MLPs now through `SiluMul`, "gqa_attention": whether the attention function changed}."""
    if paths is None:
        # not at the top: grpo.models.fast_paths imports this module (an import cycle)
        from grpo.models.fast_paths import proven_paths

        paths = proven_paths(model)
    mlps = 0
    if "lean_mlp" in paths:
        for module in model.modules():
            if _is_lean_mlp(module) and "forward" not in vars(module):
                module.forward = types.MethodType(_lean_mlp_forward, module)
                mlps += 1
    config = model.config
    heads = getattr(config, "num_attention_heads", None)
    grouped = heads is not None and (getattr(config, "num_key_value_heads", None) or heads) < heads
    on_cpu = next(model.parameters()).device.type == "cpu"
    gqa = "gqa_attention" in paths and grouped and on_cpu and attn_implementation(config) == "sdpa"
    if gqa:
        register_attention(GQA_ATTENTION, sdpa_gqa_attention)
        set_attn_implementation(config, GQA_ATTENTION)
    return {"mlps": mlps, "gqa_attention": gqa}


def remove_lean_layers(model, mlp: bool = True, attention: bool = True) -> None:
    """Undo `lean_layers`: the MLPs' own forward (mlp) and transformers' "sdpa" (attention)."""
    if mlp:
        for module in model.modules():
            if (
                vars(module).get("forward") is not None
                and getattr(module.forward, "__func__", None) is _lean_mlp_forward
            ):
                del module.forward
    if attention and attn_implementation(model.config) == GQA_ATTENTION:
        set_attn_implementation(model.config, "sdpa")
