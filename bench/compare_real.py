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
A run side_by_side.py recorded as failed ("out of memory", "failed (rc N)") is left out of the medians; a
side none of whose runs finished is a row with that failure and the peak RSS it had reached, and no floor.
Writes OUT_DIR/summary_real.json.
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from compare import finished, left_out, matmul_flops, stopped_row, stopped_summary

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
    """Medians over a side's finished runs, or `compare.stopped_summary` where none finished."""
    failures = [r["failed"] for r in runs if "failed" in r]
    if len(failures) == len(runs):
        return stopped_summary(runs)
    runs = finished(runs)
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    s, tokens = med("sec_per_step_median_after_2"), med("completion_tokens_per_step_mean")
    return {"sec_per_step": s, "completion_tokens_per_step": tokens, "sec_per_1k_tokens": 1000 * s / tokens,
            "gen_sec_per_step": med("gen_sec_per_step_median_after_2"), "peak_rss_mib": med("peak_rss_mb"),
            "runs": len(runs), "sec_per_step_each_run": [r["sec_per_step_median_after_2"] for r in runs],
            "phases": {k: statistics.median(r["phase_sec_median_after_2"][k] for r in runs)
                       for k in ("generate", "reference", "update")} if "phase_sec_median_after_2" in runs[0] else None,
            "failures": failures}


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


def main(argv=None) -> dict:
    """Print the table; what it writes to OUT_DIR/summary_real.json."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", type=Path, required=True)
    args = ap.parse_args(argv)
    runs = load(args.out)
    rate, bandwidth = matmul_flops("float32", 2048), read_bandwidth()
    weights, weight_bytes = matmul_params(args.model)
    print(f"this CPU, 2 threads: fp32 matmul {rate / 1e9:.0f} GFLOP/s, read bandwidth {bandwidth / 1e9:.1f} GB/s; "
          f"{weights / 1e6:.1f}M matmul parameters, {weight_bytes / 2**20:.0f} MiB read per decode step; "
          f"load average now {os.getloadavg()[0]:.2f}")
    summary = {side: side_summary(r) for side, r in runs.items()}
    # the same prompts on every side; trl's and grpo_api's runs record their mean length in tokens
    lengths = [r["prompt_tokens_mean"] for rs in runs.values() for r in rs if "prompt_tokens_mean" in r]
    prompt = statistics.median(lengths) if lengths else None
    floors = {side: floor(summary[side], finished(runs[side]), prompt, weights, weight_bytes, rate, bandwidth,
                          side.endswith("lora"))
              for side in summary if "failed" not in summary[side] and prompt is not None}
    if prompt is None:
        print("no floors: no finished run recorded the prompts' mean length (trl's and grpo_api's do)")
    print(f"\n{'':13} {'s/step':>7} {'floor':>6} {'x floor':>7} {'tok/step':>8} {'s/1k tok':>8} {'gen s':>6} "
          f"{'ref s':>6} {'upd s':>6} {'peak RSS':>9}   (medians over the finished runs)")
    nan = float("nan")
    for side, s in summary.items():
        if "failed" in s:
            print(f"{side:13} {stopped_row(s)}")
            continue
        f, ph = floors.get(side, {}), s["phases"] or {}
        print(f"{side:13} {s['sec_per_step']:7.1f} {f.get('step', nan):6.1f} "
              f"{s['sec_per_step'] / f.get('step', nan):7.2f} "
              f"{s['completion_tokens_per_step']:8.0f} {s['sec_per_1k_tokens']:8.1f} {s['gen_sec_per_step']:6.1f} "
              f"{ph.get('reference', nan):6.1f} {ph.get('update', nan):6.1f} "
              f"{s['peak_rss_mib'] / 1024:8.2f}G")
        if f:
            print(f"{'  floor':10} generate {f['generate']:.1f} s, reference {f['reference']:.1f} s, update "
                  f"{f['update']:.1f} s ({f['tokens']:.0f} tokens)")
    for line in left_out(summary):
        print(line)
    result = {"summary": summary, "floors": floors, "matmul_flop_per_s": rate, "read_bytes_per_s": bandwidth,
              "matmul_params": weights}
    (args.out / "summary_real.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
