"""One AdamW step over SmolLM2-135M's parameters (random gradients) with torch's three CPU implementations:
the per-parameter loop (torch's CPU default), foreach and fused (what grpo.train.optim.adamw uses),
alternating, 4 steps each, 2 threads.

    .venv/bin/python bench/adamw.py [--rounds 2]      # docs/performance.md, "What the design does"
"""
import argparse
import time

import torch
from transformers import AutoModelForCausalLM

from grpo.models.convert import resolve_model_path

ap = argparse.ArgumentParser()
ap.add_argument("--rounds", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(2)
model = AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2"), dtype=torch.float32)
params = list(model.parameters())
for p in params:
    p.grad = torch.randn_like(p) * 1e-3
kinds = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
for _ in range(args.rounds):
    for kind, kw in kinds.items():
        opt = torch.optim.AdamW(params, lr=1e-5, **kw)
        seconds = []
        for _ in range(4):
            t = time.perf_counter()
            opt.step()
            seconds.append(time.perf_counter() - t)
        print(f"{kind:8s} step seconds: " + ", ".join(f"{s:.3f}" for s in seconds), flush=True)
