"""What bf16 costs in sampler/trainer agreement on SmolLM2-135M-Instruct: 4 word problems x 4 samples,
up to 64 tokens at temperature 0.7, sampled by the built-in engine in fp32 or from bf16 weight copies,
scored by the trainer in fp32 or under bf16 autocast; prints the mismatch metrics and the mean TIS weight.

    .venv/bin/python bench/bf16_mismatch.py        # docs/algorithm.md, "Sampler/trainer mismatch"
"""

import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.algorithm import importance_weights, mismatch_metrics
from grpo.data.templates import encode_prompts
from grpo.models.convert import resolve_model_path
from grpo.rollout.engine import SamplingParams
from grpo.rollout.hf import HFEngine
from grpo.models.logprobs import completion_logprobs

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    path = resolve_model_path("smollm2")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rows = [json.loads(line) for line in open(ROOT / "data/word_problems_test.jsonl")][:4]
    ids = encode_prompts(tok, [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
                               for r in rows])
    for sampler in ("fp32", "bf16"):
        t0 = time.perf_counter()
        engine = HFEngine(model, [tok.eos_token_id], tok.pad_token_id,
                          dtype=torch.bfloat16 if sampler == "bf16" else None)
        r = engine.generate(ids, SamplingParams(64, 0.7, 1.0, 4), torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - t0
        for trainer in ("fp32", "bf16 autocast"):
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=trainer != "fp32")
            with torch.no_grad(), autocast:
                lp = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                         0.7).logp.float()
            m = {k: round(float(v), 6) for k, v in mismatch_metrics(lp, r.logp, r.completion_mask).items()}
            w = importance_weights(lp, r.logp, r.completion_mask, mode="tis")
            mean_w = float(w.sum() / r.completion_mask.sum())
            print(f"sampler {sampler}, trainer {trainer}: {int(r.completion_mask.sum())} tokens, generation "
                  f"{seconds:.1f} s, {m}, TIS weight mean {mean_w:.5f}")


if __name__ == "__main__":
    main()
