"""Load the policy (and tokenizer) from a local directory or build the tiny default, and everything grpo
knows about peft's LoRA wrappers: adding adapters, finding the transformers model under them (`unwrap`),
and folding the adapters into plain weights (W + scale * B @ A: `folded_linear`, `hf_weights`). The sampler
(`grpo.rollout.lean`), the vLLM weight copy, the reward model built from a LoRA policy and the saved model
read a LoRA policy through these functions, so peft's names and attributes are looked up in one place."""

from __future__ import annotations

import contextlib
import copy
import os
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.config import ModelConfig
from grpo.errors import UserError
from grpo.models.convert import resolve_model_path
from grpo.models.tiny import TinyConfig, build_tiny


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else cpu. Under torchrun, 'cuda' without an index is cuda:LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"model.device={name!r} but no CUDA device is available (use 'cpu' or 'auto')")
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return dev


def load_policy(cfg: ModelConfig, tiny_dir: Path):
    """(model, tokenizer) in train mode, float32 master weights on the configured device.

    `cfg.path == 'tiny'` builds the built-in model into `tiny_dir` first (offline, deterministic); a named
    pretrained model (`smollm2`) resolves to its converted, cached directory (`grpo.models.convert`). The
    fast paths its class is proven for are applied and checked against the stock forward on a small batch
    (`grpo.models.fast_paths.prepare_fast_paths`; one warning line for any skipped).
    """
    # not at the top: grpo.models.fast_paths imports this module (an import cycle)
    from grpo.models.fast_paths import prepare_fast_paths

    path = resolve_model_path(cfg.path)
    if cfg.path == "tiny":
        path = build_tiny(tiny_dir,
                          TinyConfig(hidden_size=cfg.tiny_hidden_size, num_layers=cfg.tiny_num_layers,
                                               architecture=cfg.tiny_architecture))
    elif not (path / "config.json").is_file():
        hint = (f"; it holds a LoRA adapter: the merged model a LoRA run writes is in {path.parent}"
                if (path / "adapter_config.json").is_file() else "")
        raise UserError(f"model.path: {path} is not a Hugging Face model directory (no config.json); "
                        f"use 'tiny', 'smollm2' or a local directory written by save_pretrained{hint}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.to(resolve_device(cfg.device))
    model.config.use_cache = False
    prepare_fast_paths(model)  # the proven fast paths, checked against the stock forward
    if cfg.lora is not None:
        model = add_lora(model, cfg.lora)
    return model.train(), tokenizer


def stop_token_ids(model, tokenizer) -> list[int]:
    """The ids that end a completion: every id of the model's generation_config.eos_token_id (an int or a
    list: chat models often list their end-of-turn token there), then the tokenizer's eos_token_id, each
    once. Every rollout engine is given these, so where a completion stops (its mask, `truncated`) does
    not depend on the engine.

    SmolLM2-135M-Instruct: generation_config 2 (<|im_end|>), tokenizer 2 -> [2].
    """
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def is_lora(model) -> bool:
    """True for a peft model (LoRA adapters over a transformers model)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def unwrap(model):
    """The transformers model under a peft wrapper (its adapters still in place), or `model` itself."""
    return model.get_base_model() if is_lora(model) else model


def add_lora(model, lora):
    """Wrap `model` with peft LoRA adapters; only the adapters train, the base stays frozen."""
    try:
        # optional dependency: imported only where it is used (grpo[lora])
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
    except ImportError:
        raise UserError("model.lora needs the peft package: pip install 'grpo[lora]'") from None
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in lora.target_modules if m not in names]
    if missing:
        raise UserError(f"model.lora.target_modules: {', '.join(missing)} not found in the model "
                        "(linear layers it has include: "
                        f"{', '.join(sorted(n for n in names if 'proj' in n))})")
    peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    model = get_peft_model(model, peft_cfg)
    lean_lora(model)
    return model


def _lean_lora_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """A peft LoRA `Linear`'s forward as base(x) + scale * (x A^T) B^T, the last product and the sum one
    `addmm` (peft: B's output, its product with the scale and the sum, three [tokens, out] tensors and
    their backward passes). Anything but one plain adapter in the input's dtype, outside autocast, with no
    active dropout (disabled or merged adapters, DoRA, biases, variants, mixed batches) runs peft's own
    forward."""
    active = [] if args or kwargs or self.disable_adapters or self.merged else [
        a for a in self.active_adapters if a in self.lora_A]
    if len(active) == 1:
        a = active[0]
        A, B, drop = self.lora_A[a], self.lora_B[a], self.lora_dropout[a]
        plain = (a not in getattr(self, "lora_variant", {}) and not getattr(self, "use_dora", {}).get(a)
                 and B.bias is None and x.dtype == A.weight.dtype == B.weight.dtype
                 and not torch.is_autocast_enabled(x.device.type)
                 and (isinstance(drop, torch.nn.Identity) or not (drop.training and drop.p > 0)))
        if plain:
            result = self.base_layer(x)  # [..., out]
            xa = F.linear(x, A.weight)  # [..., r]
            out = torch.addmm(result.reshape(-1, result.shape[-1]), xa.reshape(-1, xa.shape[-1]),
                              B.weight.t(), alpha=self.scaling[a])
            return out.view(result.shape)
    return type(self).forward(self, x, *args, **kwargs)


def lean_lora(model) -> int:
    """Give every peft LoRA `Linear` over a plain `nn.Linear` in `model` the fused forward
    `_lean_lora_forward` (the same function up to float rounding: tests/test_lean_layers.py); how many."""
    n = 0
    for module in model.modules():
        if active_lora(module) is not None and "forward" not in vars(module):
            module.forward = types.MethodType(_lean_lora_forward, module)
            n += 1
    return n


def active_lora(module) -> list[str] | None:
    """The adapters a peft LoRA `Linear` over a plain `nn.Linear` adds in its forward (none where they are
    disabled, as for a LoRA reference, or already merged); None if `module` is not one, or uses more
    than plain LoRA (DoRA, LoRA biases)."""
    base = getattr(module, "base_layer", None)
    if type(base) is not torch.nn.Linear or not all(
        hasattr(module, k) for k in ("get_delta_weight", "lora_A")
    ):
        return None
    active = (
        []
        if module.disable_adapters or module.merged
        else [a for a in module.active_adapters if a in module.lora_A]
    )
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
    (`folded_linear`; e.g. `model.layers.0.self_attn.q_proj.weight` = base +
    scale * B @ A), what another engine
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
    # optional dependency: imported only where it is used (grpo[lora])
    from peft import get_peft_model

    base = model.get_base_model()
    dtype = next(iter(state_dict.values())).dtype
    name = model.active_adapter
    fresh = get_peft_model(AutoModelForCausalLM.from_config(copy.deepcopy(base.config), dtype=dtype),
                           copy.deepcopy(model.peft_config[name]), adapter_name=name)
    fresh.load_state_dict(state_dict, strict=True)
    return fresh


def enable_checkpointing(model) -> None:
    """Hugging Face's activation checkpointing on every decoder layer, non-reentrant (so LoRA needs no
    input-gradient hook and the recompute sees the same autocast and RNG state). It acts only in a
    forward with gradients in train mode: generation and the reference keep their KV cache."""
    base = unwrap(model)
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise UserError(f"train.gradient_checkpointing: {type(base).__name__} does not support activation "
                        "checkpointing in transformers; set it to false")
    kwargs = {"use_reentrant": False}
    enable = getattr(base, "activation_checkpointing_enable", None)  # transformers >= 5 (the old name warns)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class Reference:
    """The frozen reference policy pi_ref of the KL penalty.

    A frozen copy of the initial policy; with LoRA, the policy itself with its adapter disabled (the
    base weights never train), so no second copy of the model is held in memory.
    """

    def __init__(self, policy):
        self.shares_policy = is_lora(policy)
        self.model = policy if self.shares_policy else copy.deepcopy(policy).eval().requires_grad_(False)

    def reset(self, policy, weights: dict | None = None) -> None:
        """pi_ref <- pi_theta (iterative GRPO, DeepSeekMath Algorithm 1). weights: the policy's full weights
        where its own are FSDP shards (`grpo.train.distributed.full_state_dict`), else None."""
        if self.shares_policy:
            raise ValueError("a LoRA reference is the base model; it cannot be reset to the policy")
        self.model.load_state_dict(policy.state_dict() if weights is None else weights)

    def context(self):
        return self.model.disable_adapter() if self.shares_policy else contextlib.nullcontext()


def emulates_bf16(device: torch.device) -> bool:
    """True on a CPU without AVX512-BF16 or AMX, where torch runs bf16 matmuls through a slow fallback
    (measured on an AVX2 machine: the demo's GRPO training phases 14-18x slower than in float32; with
    AVX512-BF16, bf16 matmuls run at 2.2x the fp32 rate: docs/performance.md)."""
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up with a fallback
    return not any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def disable_dropout(model) -> int:
    """Set every dropout probability in `model` to 0: `nn.Dropout` modules (the model's and LoRA's
    `lora_dropout`) and the float `*dropout` attributes attention modules read in train mode (Llama's
    `attention_dropout`). Returns how many were changed. In eval mode dropout is off anyway; this makes
    train mode (the update, pi_old) compute the same function as the sampler (TRL's disable_dropout)."""
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p != 0:
            module.p = 0.0
            changed += 1
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float) and not isinstance(value, bool) and value != 0:
                setattr(module, name, 0.0)
                changed += 1
    return changed


def autocast(cfg: ModelConfig, device: torch.device):
    """bf16 compute with fp32 master weights when asked for; a no-op context for fp32."""
    if cfg.dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
