"""The packed completion forward against the padded one on SmolLM2 (grpo.models.packing): 32 rows (4 chat
prompts of data/word_problems_train.jsonl x G=8, up to 64 new tokens at temperature 0.7) through the
reference's no-grad forward, the training forward and its backward, the two alternating run by run.

    .venv/bin/python bench/packing.py [--runs 3] [--first-prompt 4]      # docs/performance.md
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.data.templates import encode_prompts
from grpo.models.convert import resolve_model_path
from grpo.models.fast_paths import prepare_fast_paths
from grpo.models.logprobs import completion_logprobs
from grpo.rollout.engine import SamplingParams
from grpo.rollout.hf import HFEngine

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--first-prompt", type=int, default=4)
args = ap.parse_args()
torch.set_num_threads(2)
path = resolve_model_path("smollm2")
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
prepare_fast_paths(model)  # as grpo loads it
model.train()
data = Path(__file__).resolve().parents[1] / "data/word_problems_train.jsonl"
rows = [json.loads(line) for line in open(data)][args.first_prompt:args.first_prompt + 4]
ids = encode_prompts(tok, [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
                           for r in rows])
r = HFEngine(model, [2], tok.pad_token_id).generate(ids, SamplingParams(64, 0.7, 1.0, 8),
                                                    torch.Generator().manual_seed(0))
batch = (r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
print(f"completion tokens {int(r.completion_mask.sum())} of {r.completion_mask.numel()} positions", flush=True)


def run(pack: bool):
    t = time.perf_counter()
    with torch.no_grad():
        ref = completion_logprobs(model, *batch, 0.7, pack=pack).logp
    reference = time.perf_counter() - t
    t = time.perf_counter()
    lp = completion_logprobs(model, *batch, 0.7, with_entropy=True, pack=pack)
    forward = time.perf_counter() - t
    t = time.perf_counter()
    (lp.logp * r.completion_mask).sum().backward()
    backward = time.perf_counter() - t
    model.zero_grad(set_to_none=True)
    return (reference, forward, backward), ref * r.completion_mask


times = {False: [], True: []}
logp = {}
for i in range(args.runs):
    for pack in (False, True):
        t, logp[pack] = run(pack)
        times[pack].append(t)
        print(f"run {i} {'packed' if pack else 'padded'}: reference {t[0]:.2f} s, forward {t[1]:.2f} s, "
              f"backward {t[2]:.2f} s, total {sum(t):.2f} s", flush=True)
for pack in (False, True):
    med = [statistics.median(t[k] for t in times[pack]) for k in range(3)]
    total = statistics.median(sum(t) for t in times[pack])
    print(f"{'packed' if pack else 'padded'} medians: reference {med[0]:.2f}, forward {med[1]:.2f}, "
          f"backward {med[2]:.2f}, total {total:.2f} s")
print(f"max |d logp| packed - padded: {float((logp[True] - logp[False]).abs().max()):.2g}")
