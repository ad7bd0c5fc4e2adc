"""Everything grpo knows about peft's LoRA wrappers: adding adapters, finding the transformers model under
them, and folding the adapters into plain weights (W + scale * B @ A).

The sampler (`grpo.rollout.lean`), the vLLM weight copy, the reward model built from a LoRA policy and
the saved model all read a LoRA policy through these functions, so that peft's names and attributes are
looked up in one place.
"""

from __future__ import annotations

import copy

import torch

from grpo.errors import UserError


def is_lora(model) -> bool:
    """True for a peft model (LoRA adapters over a transformers model)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def unwrap(model):
    """The transformers model under a peft wrapper (its adapters still in place), or `model` itself."""
    return model.get_base_model() if is_lora(model) else model


def add_lora(model, lora):
    """Wrap `model` with peft LoRA adapters; only the adapters train, the base stays frozen."""
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
    except ImportError:
        raise UserError("model.lora needs the peft package: pip install 'grpo[lora]'") from None
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in lora.target_modules if m not in names]
    if missing:
        raise UserError(f"model.lora.target_modules: {', '.join(missing)} not found in the model "
                        f"(linear layers it has include: {', '.join(sorted(n for n in names if 'proj' in n))})")
    peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg)


def active_lora(module) -> list[str] | None:
    """The adapters a peft LoRA `Linear` over a plain `nn.Linear` adds in its forward (none where they are
    disabled, as for a LoRA reference, or already merged); None if `module` is not one, or uses more
    than plain LoRA (DoRA, LoRA biases)."""
    base = getattr(module, "base_layer", None)
    if type(base) is not torch.nn.Linear or not all(hasattr(module, k) for k in ("get_delta_weight", "lora_A")):
        return None
    active = [] if module.disable_adapters or module.merged else [a for a in module.active_adapters if a in module.lora_A]
    if any(getattr(module, "use_dora", {}).get(a) or getattr(module, "lora_bias", {}).get(a) for a in active):
        return None
    return active


def base_weight(module) -> torch.Tensor:
    return getattr(module, "base_layer", module).weight


def foldable(module) -> bool:
    return type(module) is torch.nn.Linear or active_lora(module) is not None


def folded_linear(module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(w, b) such that a `foldable` module computes x @ w.T + b in eval mode.

    A plain `nn.Linear`: its own parameters. A LoRA `Linear`: the base weight plus each active adapter's
    scale * B @ A (peft's `get_delta_weight`, what merging the adapter would store), a new tensor per
    call. LoRA's dropout is the identity in eval mode, so the folded weight computes the same function
    up to float rounding (tests/test_rollout.py: the same greedy tokens, log-probs to 1e-5).
    """
    if type(module) is torch.nn.Linear:
        return module.weight, module.bias
    base = module.base_layer
    w = base.weight
    for a in active_lora(module):
        w = w + module.get_delta_weight(a).to(w.dtype)
    return w, base.bias


def hf_weights(model) -> dict[str, torch.Tensor]:
    """The model's weights under transformers' own names: a peft LoRA model's with its adapters folded in
    (`folded_linear`; e.g. `model.layers.0.self_attn.q_proj.weight` = base + scale * B @ A), what another engine
    loading a transformers checkpoint of this architecture expects."""
    base = unwrap(model)
    if base is model:
        return model.state_dict()
    out = {k: v for k, v in base.state_dict().items() if ".base_layer." not in k and "lora_" not in k}
    for name, module in base.named_modules():
        if active_lora(module) is not None:
            w, b = folded_linear(module)
            out[f"{name}.weight"] = w.detach()
            if b is not None:
                out[f"{name}.bias"] = b.detach()
    return out


def unsharded_copy(model, state_dict: dict):
    """A new, unsharded copy of the peft LoRA `model` holding `state_dict` (its full weights, by name)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = model.get_base_model()
    dtype = next(iter(state_dict.values())).dtype
    name = model.active_adapter
    fresh = get_peft_model(AutoModelForCausalLM.from_config(copy.deepcopy(base.config), dtype=dtype),
                           copy.deepcopy(model.peft_config[name]), adapter_name=name)
    fresh.load_state_dict(state_dict, strict=True)
    return fresh
