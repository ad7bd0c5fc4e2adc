"""Load the policy (and tokenizer) from a local directory or build the tiny default."""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

import torch

from grpo.config import ModelConfig
from grpo.errors import UserError
from grpo.models.lora import add_lora, is_lora, unwrap  # noqa: F401  (add_lora: re-exported for callers)


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
    pretrained model (`smollm2`) resolves to its converted, cached directory (`grpo.models.convert`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.models.convert import resolve_model_path
    from grpo.models.tiny import TinyConfig, build_tiny

    path = resolve_model_path(cfg.path)
    if cfg.path == "tiny":
        path = build_tiny(tiny_dir, TinyConfig(hidden_size=cfg.tiny_hidden_size, num_layers=cfg.tiny_num_layers,
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
    (measured: the demo's GRPO training phases 14-18x slower than in float32, docs/performance.md)."""
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up with a fallback
    return not any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def compute_dtype(cfg: ModelConfig) -> torch.dtype | None:
    """The dtype forward passes compute in when it is not the weights' own float32 (None then)."""
    return torch.bfloat16 if cfg.dtype == "bfloat16" else None


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
