#!/usr/bin/env python3
"""The models of bench/run_bench.sh: a randomly initialised Llama with a character-level tokenizer, offline.

    python bench/make_tiny_model.py OUT_DIR [--hidden 128 --layers 4 --heads 4 --intermediate 512] [--seed 0]

Defaults: the tiny model (1.07M parameters); `--hidden 512 --layers 8 --heads 8 --intermediate 1376`: the
25M one. Every character of the A+B prompts is one token (a prompt "What is 49+97? Answer:" is 23
tokens with BOS), so the work's cost depends on the model's width and depth alone. The weights come from
`torch.manual_seed(seed)`: the same arguments give the same files. Both sides load OUT_DIR with
`from_pretrained`. Prints one JSON line: the directory, the parameter count and the weights' sha256.
"""

import argparse
import hashlib
import json
import os
import string
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARACTERS = list(string.digits + string.ascii_letters + " \n" + "+-*/=()?.,:;!%<>^'\"_#")
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
""""role: content" lines, so that chat-format prompt files work too."""


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + CHARACTERS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one piece per character
    tok.decoder = decoders.Fuse()  # join the characters back without spaces
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="left", model_max_length=512)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, args):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=512, rms_norm_eps=1e-6,
                         tie_word_embeddings=False, **ids)
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(do_sample=True, **ids)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(args.out_dir)
    model.save_pretrained(args.out_dir)
    text = "What is 49+97? Answer: 146"
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text  # round trip
    weights = (args.out_dir / "model.safetensors").read_bytes()
    print(json.dumps({"out_dir": str(args.out_dir.resolve()), "n_params": sum(x.numel() for x in model.parameters()),
                      "vocab_size": len(tokenizer), "hidden": args.hidden, "layers": args.layers, "heads": args.heads,
                      "intermediate": args.intermediate, "seed": args.seed,
                      "sha256": hashlib.sha256(weights).hexdigest()}))


if __name__ == "__main__":
    main()
