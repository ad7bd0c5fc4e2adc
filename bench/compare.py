#!/usr/bin/env python3
"""Table of medians and ratios, and achieved FLOP/s, from the runs of bench/run_bench.sh (grpo and TRL).

Usage:
    python bench/compare.py OUT_DIR [--model MODEL_DIR] [--flops]

Reads OUT_DIR/{trl,grpo,grpo_api,grpo_bf16,grpo_capped}-N.json (bench/side_by_side.py's runs), prints
for each side the median over repeats of: seconds per step (each run's median after its first 2 steps),
steps/s, generation seconds per step,
generation tokens/s (valid completion tokens, EOS included, per second inside generation), completion
tokens per step and peak RSS; then grpo / TRL ratios against the targets of the issue. With --flops
(and --model) it also times a matmul on 2 threads (fp32 2048^3, bf16 512^3) and prints the FLOP/s grpo
achieved in generation, the reference forward and the policy update (forward + backward + AdamW),
counting the model FLOPs of the distinct tokens: each prompt once per group, each completion once.
A run side_by_side.py recorded as failed ("out of memory", "failed (rc N)") is left out of the medians; a
side none of whose runs finished is a row with that failure and the peak RSS it had reached, and its
ratios are n/a. Writes OUT_DIR/summary.json.
"""

import argparse
import glob
import json
import os
import statistics
import time
from pathlib import Path

SIDES = ("trl", "grpo", "grpo_api", "grpo_bf16", "grpo_capped")


def load(out: Path) -> dict[str, list[dict]]:
    runs = {}
    for side in SIDES:
        files = sorted(glob.glob(str(out / f"{side}-*.json")))
        if files:
            runs[side] = [json.loads(Path(f).read_text()) for f in files]
    return runs


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def finished(runs: list[dict]) -> list[dict]:
    """The runs that finished: side_by_side.py records a run that exited non-zero with a "failed" field
    and no step times."""
    return [r for r in runs if "failed" not in r]


def stopped_summary(runs: list[dict]) -> dict:
    """A side none of whose runs finished: its first failure and the median peak RSS its runs had reached
    (None where no run recorded one)."""
    rss = [r["peak_rss_mb"] for r in runs if r.get("peak_rss_mb") is not None]
    failures = [r["failed"] for r in runs]
    return {"runs": 0, "failed": failures[0], "failures": failures,
            "peak_rss_mib": statistics.median(rss) if rss else None}


def stopped_row(s: dict) -> str:
    """How a table shows a side that never finished.

    >>> stopped_row({"failed": "out of memory", "peak_rss_mib": 8500.0})
    'out of memory (peak RSS 8,500 MiB when it stopped)'
    """
    rss = s["peak_rss_mib"]
    return s["failed"] + (" (peak RSS unknown)" if rss is None else f" (peak RSS {rss:,.0f} MiB when it stopped)")


def left_out(summary: dict) -> list[str]:
    """A line for each side that finished some runs but not all: the failures the medians leave out."""
    return [f"{side}: {len(s['failures'])} run(s) left out of the medians: {', '.join(s['failures'])}"
            for side, s in summary.items() if s["failures"] and "failed" not in s]


def summarise(runs: list[dict]) -> dict:
    """Medians over a side's finished runs, or `stopped_summary` where none finished."""
    failures = [r["failed"] for r in runs if "failed" in r]
    if len(failures) == len(runs):
        return stopped_summary(runs)
    runs = finished(runs)
    s = med(runs, "sec_per_step_median_after_2")
    return {"sec_per_step": s, "steps_per_s": 1 / s, "gen_sec_per_step": med(runs, "gen_sec_per_step_median_after_2"),
            "gen_tok_per_s": med(runs, "gen_completion_tok_per_s"),
            "tokens_per_step": med(runs, "completion_tokens_per_step_mean"), "peak_rss_mib": med(runs, "peak_rss_mb"),
            "runs": len(runs), "sec_per_step_each_run": [r["sec_per_step_median_after_2"] for r in runs],
            "failures": failures}


def matmul_flops(dtype_name: str, n: int = 2048, threads: int = 2, budget_s: float = 3.0) -> float:
    """Best-of-several FLOP/s of an n x n x n matmul (at least 2 timings, more while under budget_s)."""
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = [_timed(lambda: a @ b) for _ in range(2)]
    while len(times) < 7 and sum(times) < budget_s:
        times.append(_timed(lambda: a @ b))
    return 2 * n**3 / min(times)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def forward_flops(cfg: dict, prompt_len: float, completion_len: float, groups: int, G: int) -> dict:
    """Model FLOPs of one forward over `groups` prompts of prompt_len tokens, each followed by G
    completions of completion_len tokens (matmuls only: 2 per weight per token, plus QK^T and AV)."""
    h, L, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    H, Hkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    D = cfg.get("head_dim") or h // H
    per_layer = h * H * D + 2 * h * Hkv * D + H * D * h + 3 * h * cfg["intermediate_size"]
    weights = L * per_layer + h * V  # lm_head; the embedding lookup is not a matmul
    p, t = prompt_len, completion_len
    ctx_prompt = p * (p + 1) / 2  # sum of attended keys over the prompt's positions
    ctx_completion = t * p + t * (t + 1) / 2
    tokens = groups * (p + G * t)
    attn = 4 * L * H * D * groups * (ctx_prompt + G * ctx_completion)
    return {"tokens": tokens, "flops": 2 * weights * tokens + attn, "params_matmul": weights}


def flop_report(runs: list[dict], model: Path, peak: dict, prompt_len: float, phases: bool = True) -> dict:
    """Achieved FLOP/s of one side's step (and, for grpo, of its phases) against the fp32 matmul rate.
    Work counted: a forward over the step's distinct tokens for generation and for the reference, three
    (forward + backward) for the policy update; the same useful work for either side."""
    cfg = json.loads((model / "config.json").read_text())
    r0 = runs[0]["settings"]
    G = r0.get("G") or r0["num_generations"]  # grpo's field names, then TRL's
    groups = r0.get("prompts_per_step") or r0["per_device_train_batch_size"] // G
    p = prompt_len  # the same 256 prompts on either side; grpo's runs record their mean length
    t = statistics.median(r["completion_tokens_per_step_mean"] / (groups * G) for r in runs)
    fwd = forward_flops(cfg, p, t, groups, G)
    step_s = med(runs, "sec_per_step_median_after_2")
    step_flops = 5 * fwd["flops"]  # generation + reference + policy forward/backward (3x)
    out = {"forward_flops_per_step": fwd["flops"], "matmul_params": fwd["params_matmul"],
           "step": {"seconds": step_s, "flops": step_flops, "flop_per_s": step_flops / step_s,
                    "of_fp32_matmul": step_flops / step_s / peak["float32"]}}
    if not phases:
        return out
    phase = {k: statistics.median(r["phase_sec_median_after_2"][k] for r in runs)
             for k in ("generate", "reference", "update")}
    work = {"generate": fwd["flops"], "reference": fwd["flops"], "update": 3 * fwd["flops"]}
    if all("update_split_sec_median_after_2" in r for r in runs):  # the update without optimizer and clipping
        split = [r["update_split_sec_median_after_2"] for r in runs]
        phase["policy_fwd_bwd"] = statistics.median(x["forward"] + x["backward_and_loss"]
                                                    for x in split)
        work["policy_fwd_bwd"] = 3 * fwd["flops"]
    for k in phase:
        rate = work[k] / phase[k]
        out[k] = {"seconds": phase[k], "flops": work[k], "flop_per_s": rate,
                  "of_fp32_matmul": rate / peak["float32"]}
    return out


def main(argv=None) -> dict:
    """Print the tables; what it writes to OUT_DIR/summary.json."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--flops", action="store_true")
    args = ap.parse_args(argv)
    runs = load(args.out)
    if "trl" not in runs or "grpo" not in runs:
        raise SystemExit(f"need trl-N.json and grpo-N.json in {args.out}")
    summary = {side: summarise(r) for side, r in runs.items()}
    load_log = args.out / "load.log"
    loads = [float(x.split()[1]) for x in load_log.read_text().split("\n") if x.startswith("load")] \
        if load_log.exists() else []
    if loads:
        print(f"load average (1 min) before each run: median {statistics.median(loads):.2f}, "
              f"min {min(loads):.2f}, max {max(loads):.2f} on {os.cpu_count()} CPUs")
    print(f"\n{'':10} {'s/step':>8} {'steps/s':>8} {'gen s':>7} {'gen tok/s':>10} {'tok/step':>9} {'peak RSS':>9}"
          f"   (medians over each side's finished runs; load avg now {os.getloadavg()[0]:.2f})")
    for side, s in summary.items():
        if "failed" in s:
            print(f"{side:10} {stopped_row(s)}")
            continue
        print(f"{side:10} {s['sec_per_step']:8.3f} {s['steps_per_s']:8.2f} {s['gen_sec_per_step']:7.3f} "
              f"{s['gen_tok_per_s']:10.0f} {s['tokens_per_step']:9.0f} {s['peak_rss_mib']:8.0f}M")
    ratios = {}
    for side in SIDES[1:]:
        if side not in summary:
            continue
        stopped = [f"{x}: {summary[x]['failed']}" for x in (side, "trl") if "failed" in summary[x]]
        if stopped:  # no ratio against, or of, a side that never finished
            ratios[side] = None
            print(f"{side + ' / trl':17} n/a ({'; '.join(stopped)})")
            continue
        s, trl = summary[side], summary["trl"]
        ratios[side] = {"steps_per_s_vs_trl": s["steps_per_s"] / trl["steps_per_s"],
                        "gen_tok_per_s_vs_trl": s["gen_tok_per_s"] / trl["gen_tok_per_s"],
                        "peak_rss_vs_trl": s["peak_rss_mib"] / trl["peak_rss_mib"]}
        print(f"{side + ' / trl':17} steps/s x{ratios[side]['steps_per_s_vs_trl']:.2f}   "
              f"gen tok/s x{ratios[side]['gen_tok_per_s_vs_trl']:.2f}   "
              f"peak RSS x{ratios[side]['peak_rss_vs_trl']:.2f}")
    if "grpo_bf16" in summary:
        grpo, bf16 = summary["grpo"], summary["grpo_bf16"]
        print("bf16 / fp32 (grpo): " + ("n/a" if "failed" in grpo or "failed" in bf16 else
                                        f"steps/s x{grpo['sec_per_step'] / bf16['sec_per_step']:.2f}"))
    for line in left_out(summary):
        print(line)
    result = {"summary": summary, "ratios": ratios, "load_before_runs": loads}
    if args.flops and args.model:
        result.update(flops_table(runs, summary, args.model))
    (args.out / "summary.json").write_text(json.dumps(result, indent=1))
    return result


def flops_table(runs: dict[str, list[dict]], summary: dict, model: Path) -> dict:
    """Print each finished side's achieved FLOP/s (`flop_report`); for summary.json, the matmul rates
    ("matmul_flop_per_s") and the reports by side ("flops"), or nothing where no prompt length is known."""
    # the same prompts on every side; trl's and grpo_api's runs record their mean length
    lengths = [r["prompt_tokens_mean"] for rs in runs.values() for r in rs if "prompt_tokens_mean" in r]
    if not lengths:
        print("\nFLOP/s: n/a (no finished run recorded the prompts' mean length; trl's and grpo_api's do)")
        return {}
    prompt_len = statistics.median(lengths)
    # bf16 at 512^3: without AVX512-BF16/AMX, CPUs run bf16 matmuls far below fp32 (0.2 GFLOP/s here)
    peak = {"float32": matmul_flops("float32", 2048), "bfloat16": matmul_flops("bfloat16", 512)}
    print(f"\nmatmul, 2 threads: fp32 (2048^3) {peak['float32'] / 1e9:.1f} GFLOP/s, "
          f"bf16 (512^3) {peak['bfloat16'] / 1e9:.1f} GFLOP/s")
    reports = {}
    for side in SIDES:
        if side not in runs or "failed" in summary[side]:
            continue
        rep = flop_report(finished(runs[side]), model, peak, prompt_len, phases=side != "trl")
        reports[side] = rep
        print(f"{side}: model FLOPs per forward over the step's distinct tokens "
              f"{rep['forward_flops_per_step'] / 1e9:.1f} G")
        for k in ("step", "generate", "reference", "update", "policy_fwd_bwd"):
            if k in rep:
                x = rep[k]
                print(f"  {k:14} {x['seconds']:7.3f} s  {x['flop_per_s'] / 1e9:6.1f} GFLOP/s  "
                      f"= {100 * x['of_fp32_matmul']:5.1f}% of the fp32 matmul rate")
    return {"matmul_flop_per_s": peak, "flops": reports}


if __name__ == "__main__":
    main()
