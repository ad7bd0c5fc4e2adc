#!/usr/bin/env python3
"""Forward / backward time of `completion_logprobs` on the step's shapes: shared prompts vs one plain
forward, at 2 and 1 torch threads (the levers of docs/performance.md, "What was tried").

Usage:
    python bench/logprobs_threads.py MODEL_DIR [--prompts 8] [--G 8] [--prompt-len 23] [--completion-len 32]

Random token ids of the benchmark's shapes (8 prompts x G=8, 23 prompt + 32 completion tokens by
default); each setting runs 6 times, the median of the last 4 is printed, in milliseconds.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from grpo.models.logprobs import completion_logprobs  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=23)
    ap.add_argument("--completion-len", type=int, default=32)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).train()
    V, n, G = model.config.vocab_size, args.prompts, args.G
    prompt_ids = torch.randint(4, V, (n, args.prompt_len)).repeat_interleave(G, 0)  # [n*G, P], grouped
    completion_ids = torch.randint(4, V, (n * G, args.completion_len))  # [n*G, T]
    ones = torch.ones_like

    def once(share: bool, grad: bool) -> tuple[float, float]:
        t0 = time.perf_counter()
        with torch.set_grad_enabled(grad):
            lp = completion_logprobs(model, prompt_ids, ones(prompt_ids), completion_ids,
                                     ones(completion_ids), with_entropy=grad, share_prompts=share)
        t1 = time.perf_counter()
        if grad:
            lp.logp.sum().backward()
            model.zero_grad(set_to_none=True)
        return t1 - t0, time.perf_counter() - t1

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for threads in (2, 1):
        torch.set_num_threads(threads)
        for share in (True, False):
            for grad in (False, True):
                fwd, bwd = zip(*[once(share, grad) for _ in range(6)][2:])
                how = f"{'shared' if share else 'plain '}  {'fwd+bwd' if grad else 'no grad'}"
                print(f"threads {threads}  {how}: forward {1000 * statistics.median(fwd):6.0f} ms  "
                      f"backward {1000 * statistics.median(bwd):6.0f} ms", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
