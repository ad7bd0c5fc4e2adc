"""Where the update of a SmolLM2 step goes: 32 rows (4 prompts x 8 completions of up to 64 tokens at
temperature 0.7) through a no-grad forward, a forward with gradients, its backward and AdamW, twice;
--lora with LoRA adapters, --prof adds a torch profile of one forward + backward (top ops).

    .venv/bin/python bench/update_profile.py [--lora] [--prof]     # docs/performance.md, SmolLM2 section
    /usr/bin/time -v .venv/bin/python bench/update_profile.py      # + minor page faults and peak RSS
"""
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from grpo.models.convert import resolve_model_path
from grpo.rollout.hf import HFEngine
from grpo.rollout.engine import SamplingParams
from grpo.models.logprobs import completion_logprobs
from grpo.data.templates import encode_prompts
torch.set_num_threads(2)
lora = "--lora" in sys.argv
path = resolve_model_path("smollm2")
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
if lora:
    from grpo.models.loading import add_lora
    from grpo.config import LoraConfig
    model = add_lora(model, LoraConfig())
model.train()
rows = [json.loads(line) for line in open(Path(__file__).resolve().parents[1] / "data/word_problems_train.jsonl")][:4]
ids = encode_prompts(tok, [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows])
t0 = time.time()
r = HFEngine(model, [2], tok.pad_token_id).generate(ids, SamplingParams(64, 0.7, 1.0, 8), torch.Generator().manual_seed(0))
print("generate", round(time.time() - t0, 2), "s; completion tokens", int(r.completion_mask.sum()), "shape", tuple(r.completion_ids.shape), "prompt", tuple(r.prompt_ids.shape))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
def fwd(grad):
    with torch.set_grad_enabled(grad):
        return completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask, 0.7, with_entropy=True)
for _ in range(2):
    t = time.time()
    fwd(False)
    tn = time.time() - t
    t = time.time()
    lp = fwd(True)
    tf = time.time() - t
    t = time.time()
    (lp.logp * r.completion_mask).sum().backward()
    tb = time.time() - t
    t = time.time()
    opt.step()
    opt.zero_grad(set_to_none=True)
    to = time.time() - t
    print(f"no-grad forward {tn:.2f}s | grad forward {tf:.2f}s | backward {tb:.2f}s | adamw {to:.2f}s")
if "--prof" in sys.argv:
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        lp = fwd(True)
        (lp.logp * r.completion_mask).sum().backward()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
