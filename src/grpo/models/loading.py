"""Load the policy (and tokenizer) from a local directory or build the tiny default."""

from __future__ import annotations

from pathlib import Path

import torch

from grpo.config import ModelConfig
from grpo.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"model.device={name!r} but no CUDA device is available (use 'cpu' or 'auto')")
    return dev


def load_policy(cfg: ModelConfig, tiny_dir: Path):
    """(model, tokenizer) in train mode, float32 master weights on the configured device.

    `cfg.path == 'tiny'` builds the built-in model into `tiny_dir` first (offline, deterministic).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.models.tiny import TinyConfig, build_tiny

    path = Path(cfg.path)
    if cfg.path == "tiny":
        path = build_tiny(tiny_dir, TinyConfig(hidden_size=cfg.tiny_hidden_size, num_layers=cfg.tiny_num_layers,
                                               architecture=cfg.tiny_architecture))
    elif not (path / "config.json").is_file():
        raise UserError(f"model.path: {path} is not a Hugging Face model directory (no config.json); "
                        "use 'tiny' or a local directory written by save_pretrained")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.to(resolve_device(cfg.device))
    model.config.use_cache = False
    return model.train(), tokenizer


def autocast(cfg: ModelConfig, device: torch.device):
    """bf16 compute with fp32 master weights when asked for; a no-op context for fp32."""
    import contextlib

    if cfg.dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
