"""The built-in tiny default: a character-level tokenizer and a small Llama, built offline in code.

Nothing is downloaded. The vocabulary is a fixed character list, the numbers 0-999 as whole tokens
(Llama-3 splits digit runs the same way), plus the special tokens of the
DeepSeek-R1 template (`<think>`, `</think>`, `<answer>`, `</answer>` are single tokens, as they are in
tokenizers of real reasoning models), and the weights come from `torch.manual_seed(seed)`, so the
same arguments always give bit-identical files. `build_tiny(dir)` writes a directory that plain
`transformers.AutoModelForCausalLM.from_pretrained(dir)` / `AutoTokenizer.from_pretrained(dir)` load.
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from transformers import (AutoModelForCausalLM, GenerationConfig, LlamaConfig, PreTrainedTokenizerFast,
                          Qwen2Config)

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
CHARS = (
    list(string.digits)
    + list("+-*/=()?.,:;!%<>^'\"_#$&[]{}\\|~@")
    + list(string.ascii_lowercase)
    + list(string.ascii_uppercase)
    + [" ", "\n"]
)
NUMBERS = [str(n) for n in range(10, 1000)]  # 0-9 are in CHARS
# A plain "role: content" chat template, so that chat-format datasets also work with the tiny model.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of the built-in Llama. The defaults give about 1.6M parameters."""

    hidden_size: int = 160
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 256
    seed: int = 0
    architecture: str = "llama"  # "llama" or "qwen2": proves nothing downstream is Llama-specific


def build_tokenizer():
    """Character-level `PreTrainedTokenizerFast` with R1 tag tokens; left padding for generation."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + TAG_TOKENS + CHARS + NUMBERS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Runs of up to three digits are one token (as in Llama-3's tokenizer); everything else a character.
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=Regex(r"\d{1,3}|[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # concatenate characters; the default decoder adds spaces
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=4096,
    )
    # Tags are matched whole before the character split; they stay in decoded text (not "special").
    fast.add_tokens(TAG_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, cfg: TinyConfig = TinyConfig()):
    """A randomly initialised causal LM of the given architecture, seeded and in eval mode."""
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if cfg.architecture == "llama":
        config = LlamaConfig(**common)
    elif cfg.architecture == "qwen2":
        config = Qwen2Config(**common)
    else:
        raise ValueError(f"unknown tiny architecture {cfg.architecture!r} (use 'llama' or 'qwen2')")
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model.eval()


def build_tiny(out_dir: str | Path, cfg: TinyConfig = TinyConfig()) -> Path:
    """Write tokenizer + model to `out_dir` (skipped if already built with the same config)."""
    out = Path(out_dir)
    stamp = out / "grpo_tiny.json"
    if stamp.exists() and json.loads(stamp.read_text()) == asdict(cfg):
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, cfg)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    stamp.write_text(json.dumps(asdict(cfg)))
    return out
