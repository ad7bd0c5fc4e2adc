#!/usr/bin/env python3
"""What autograd keeps for backward in one update forward of SmolLM2-135M-Instruct, by tensor shape.

Usage:
    python bench/saved_activations.py [--lora] [--prompts 4] [--G 8] [--prompt-len 70] [--completion-len 64]

Runs `grpo.models.logprobs.completion_logprobs` (shared prompts, chunked head) on random ids of the bench's
shapes under `torch.autograd.graph.saved_tensors_hooks` and prints the bytes of every distinct storage saved
for backward, grouped by shape (each storage counted once: a tensor saved by several ops costs once). The
weights appear too (saved by reference, no extra memory). docs/performance.md ("Where the update's memory
goes") has what it showed.
"""

import argparse
import collections

import torch

from grpo.config import LoraConfig, ModelConfig
from grpo.models.loading import load_policy
from grpo.models.logprobs import completion_logprobs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lora", action="store_true", help="LoRA r 16, alpha 32 on every projection")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=70)
    p.add_argument("--completion-len", type=int, default=64)
    args = p.parse_args()
    torch.manual_seed(0)
    model, _ = load_policy(ModelConfig(path="smollm2", lora=LoraConfig() if args.lora else None),
                           ".peers/tiny-unused")
    prompt_ids = torch.randint(100, 40000, (args.prompts, args.prompt_len)).repeat_interleave(args.G, 0)
    completion_ids = torch.randint(100, 40000, (args.prompts * args.G, args.completion_len))
    seen, by_shape = set(), collections.Counter()

    def pack(t):
        storage = t.untyped_storage()
        if (storage.data_ptr(), storage.nbytes()) not in seen:
            seen.add((storage.data_ptr(), storage.nbytes()))
            by_shape[(tuple(t.shape), str(t.dtype).removeprefix("torch."))] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        completion_logprobs(model, prompt_ids, torch.ones_like(prompt_ids), completion_ids,
                            torch.ones_like(completion_ids), temperature=0.7)
    weights = {(p.data_ptr(), p.untyped_storage().nbytes()) for p in model.parameters()}
    saved_weights = sum(n for ptr, n in seen if (ptr, n) in weights)
    total = sum(by_shape.values())
    print(f"saved for backward: {total / 2**20:.0f} MiB in {len(seen)} storages, of which weights "
          f"{saved_weights / 2**20:.0f} MiB ({'LoRA' if args.lora else 'full fine-tuning'})")
    for (shape, dtype), nbytes in by_shape.most_common(15):
        print(f"{nbytes / 2**20:8.1f} MiB  {shape} {dtype}")


if __name__ == "__main__":
    main()
