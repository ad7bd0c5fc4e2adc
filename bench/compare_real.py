#!/usr/bin/env python3
"""Each side's step against its floor, for the real-model bench (bench/run_real_bench.sh, SmolLM2).

Usage:
    python bench/compare_real.py OUT_DIR --model MODEL_DIR

Reads the runs bench/side_by_side.py wrote in OUT_DIR (SIDE-N.json: trl, grpo, grpo_api and their _lora
modes; its table has the medians and the ratios against TRL). For each side, medians over the repeats of:
seconds per step (each run's median after its first 2 steps), completion tokens per step (valid tokens,
EOS included: the sides sample different completions, so their lengths differ), seconds per 1,000
completion tokens, generation seconds per step, grpo's reference and update seconds, and peak RSS;
beside them the step's floor.

The floor of a step, from this CPU's rates measured in the same invocation (fp32 matmul on 2 threads,
2048^3; reading a 1 GiB float32 tensor): generation = the longest completion's decode steps (the cap on
new tokens) x the weights' bytes / read bandwidth + the prompts' prefill FLOPs / matmul rate; reference
= 2 x matmul parameters x rows x (prompt + completion tokens) / matmul rate (with beta > 0); update =
6 x the same (LoRA: 4 x, no weight gradients for the frozen base). Rows count their whole prompt, as a
plain forward would; grpo's shared prompts can therefore beat this floor's reference and update parts.
Writes OUT_DIR/summary_real.json.
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from compare import matmul_flops

SIDES = ("trl", "grpo", "grpo_api", "trl_lora", "grpo_lora", "grpo_api_lora")


def load(out: Path) -> dict[str, list[dict]]:
    runs = {}
    for side in SIDES:
        files = sorted(out.glob(f"{side}-*.json"))
        if files:
            runs[side] = [json.loads(f.read_text()) for f in files]
    return runs


def read_bandwidth(gib: float = 1.0, threads: int = 2) -> float:
    """Best-of-5 bytes/s of summing a float32 tensor of `gib` GiB (a read of every byte once)."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(int(gib * 2**30) // 4)
    x.sum()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def matmul_params(model: Path) -> tuple[int, int]:
    """(parameters a token's forward multiplies by, bytes of the weights a decode step reads) for a Llama."""
    c = json.loads((model / "config.json").read_text())
    h, L, V, inter = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"], c["intermediate_size"]
    H, Hkv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    D = c.get("head_dim") or h // H
    per_layer = h * H * D + 2 * h * Hkv * D + H * D * h + 3 * h * inter
    weights = L * per_layer + h * V  # the LM head (tied or not) is a matmul; the embedding lookup is not
    return weights, 4 * weights


def side_summary(runs: list[dict]) -> dict:
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    s, tokens = med("sec_per_step_median_after_2"), med("completion_tokens_per_step_mean")
    return {"sec_per_step": s, "completion_tokens_per_step": tokens, "sec_per_1k_tokens": 1000 * s / tokens,
            "gen_sec_per_step": med("gen_sec_per_step_median_after_2"), "peak_rss_mib": med("peak_rss_mb"),
            "runs": len(runs), "sec_per_step_each_run": [r["sec_per_step_median_after_2"] for r in runs],
            "phases": {k: statistics.median(r["phase_sec_median_after_2"][k] for r in runs)
                       for k in ("generate", "reference", "update")} if "phase_sec_median_after_2" in runs[0] else None}


def floor(summary: dict, runs: list[dict], prompt: float, weights: int, weight_bytes: int, rate: float,
          bandwidth: float, lora: bool) -> dict:
    """The step's floor for one side, from its own token counts (see the module docstring)."""
    r0 = runs[0]["settings"]
    G = r0.get("G") or r0["num_generations"]
    rows = (r0.get("prompts_per_step") or r0["per_device_train_batch_size"] // G) * G
    beta = r0["beta"]
    longest = r0.get("max_new_tokens") or r0["max_completion_length"]  # decode steps: the cap, on both sides
    completion = summary["completion_tokens_per_step"] / rows
    tokens = rows * (prompt + completion)
    gen = longest * weight_bytes / bandwidth + 2 * weights * (rows // G) * prompt / rate
    ref = 2 * weights * tokens / rate if beta > 0 else 0.0
    upd = (4 if lora else 6) * weights * tokens / rate
    return {"generate": gen, "reference": ref, "update": upd, "step": gen + ref + upd, "tokens": tokens}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", type=Path, required=True)
    args = ap.parse_args()
    runs = load(args.out)
    rate, bandwidth = matmul_flops("float32", 2048), read_bandwidth()
    weights, weight_bytes = matmul_params(args.model)
    print(f"this CPU, 2 threads: fp32 matmul {rate / 1e9:.0f} GFLOP/s, read bandwidth {bandwidth / 1e9:.1f} GB/s; "
          f"{weights / 1e6:.1f}M matmul parameters, {weight_bytes / 2**20:.0f} MiB read per decode step; "
          f"load average now {os.getloadavg()[0]:.2f}")
    summary = {side: side_summary(r) for side, r in runs.items()}
    # the same prompts on every side; trl's and grpo_api's runs record their mean length in tokens
    prompt = statistics.median(r["prompt_tokens_mean"] for rs in runs.values() for r in rs if "prompt_tokens_mean" in r)
    floors = {side: floor(summary[side], runs[side], prompt, weights, weight_bytes, rate, bandwidth,
                          side.endswith("lora")) for side in summary}
    print(f"\n{'':13} {'s/step':>7} {'floor':>6} {'x floor':>7} {'tok/step':>8} {'s/1k tok':>8} {'gen s':>6} "
          f"{'ref s':>6} {'upd s':>6} {'peak RSS':>9}   (medians over the runs)")
    for side, s in summary.items():
        f, ph = floors[side], s["phases"] or {}
        print(f"{side:13} {s['sec_per_step']:7.1f} {f['step']:6.1f} {s['sec_per_step'] / f['step']:7.2f} "
              f"{s['completion_tokens_per_step']:8.0f} {s['sec_per_1k_tokens']:8.1f} {s['gen_sec_per_step']:6.1f} "
              f"{ph.get('reference', float('nan')):6.1f} {ph.get('update', float('nan')):6.1f} "
              f"{s['peak_rss_mib'] / 1024:8.2f}G")
        print(f"{'  floor':10} generate {f['generate']:.1f} s, reference {f['reference']:.1f} s, update "
              f"{f['update']:.1f} s ({f['tokens']:.0f} tokens)")
    (args.out / "summary_real.json").write_text(json.dumps(
        {"summary": summary, "floors": floors, "matmul_flop_per_s": rate,
         "read_bytes_per_s": bandwidth, "matmul_params": weights}, indent=1))


if __name__ == "__main__":
    main()
