"""Greedy test accuracy per seed and method, and the claims table, from the training logs of a
`grpo reproduce` output directory (each run's own final evaluation on its seed's 500 test problems):
what docs/results.md quotes when the final sampled evaluation did not run.

    .venv/bin/python scripts/results_from_logs.py runs/reproduce
"""
import json, sys
from pathlib import Path

from grpo.stats import mean_std, mean_ci, verdict
out = Path(sys.argv[1]); seeds = [0, 1, 2]
methods = [m for m in ["grpo", "grpo_process", "ppo", "rft", "iterative"] if (out / "seed0" / m / "metrics.jsonl").exists()]
acc, mem, state, secs, sft_step, sft_val = {}, {}, {}, {}, {}, {}
for i in seeds:
    sft = [json.loads(l) for l in open(out / f"seed{i}" / "sft" / "metrics.jsonl")][-1]
    acc.setdefault("sft", []).append(100 * sft["eval/best_test_accuracy"]); sft_step[i] = sft["best_step"]; sft_val[i] = sft["eval/best_accuracy"]
    for m in methods:
        lines = [json.loads(l) for l in open(out / f"seed{i}" / m / "metrics.jsonl")]
        steps = [x for x in lines if "reward/mean" in x]
        last = lines[-1]
        assert abs(last["eval/accuracy_before"] - sft["eval/best_test_accuracy"]) < 1e-9, (i, m)
        acc.setdefault(m, []).append(100 * last["eval/accuracy"])
        mem.setdefault(m, []).append(max(x["memory/peak_mib"] - x["memory/baseline_mib"] for x in steps))
        state.setdefault(m, []).append(max(x["memory/state_mib"] for x in steps))
print("| model | seed 0 | seed 1 | seed 2 | mean ± sd | peak memory of the run (mean) | model state |")
print("|---|---|---|---|---|---|---|")
L = {"sft": "SFT (chosen on validation)", "grpo": "GRPO (outcome)", "grpo_process": "GRPO (process)", "ppo": "PPO", "rft": "Online RFT", "iterative": "Iterative GRPO"}
for m, v in acc.items():
    mm, sd = mean_std(v)
    extra = f"{mean_std(mem[m])[0]:.0f} MiB | {mean_std(state[m])[0]:.1f} MiB" if m in mem else "- | -"
    print(f"| {L[m]} | " + " | ".join(f"{x:.1f}%" for x in v) + f" | {mm:.1f} ± {sd:.1f}% | {extra} |")
print()
print("| claim (DeepSeekMath) | difference, points (per seed) | 95% interval | verdict |")
print("|---|---|---|---|")
claims = [("RL adds points over SFT (GRPO outcome − SFT)", "grpo", "sft"), ("GRPO matches or beats PPO at equal budget (GRPO − PPO)", "grpo", "ppo"),
          ("process supervision beats outcome supervision (process − outcome)", "grpo_process", "grpo"), ("GRPO beats online RFT (GRPO − RFT)", "grpo", "rft"),
          ("iterative GRPO adds to one run (iterative − GRPO)", "iterative", "grpo")]
for text, a, b in claims:
    if a in acc and b in acc:
        d = [x - y for x, y in zip(acc[a], acc[b])]
        m, lo, hi = mean_ci(d)
        print(f"| {text} | {m:+.1f} ({', '.join(f'{x:+.1f}' for x in d)}) | [{lo:+.1f}, {hi:+.1f}] | {verdict(lo, hi)} |")
if "ppo" in mem:
    r = [g / p for g, p in zip(mem["grpo"], mem["ppo"])]
    print(f"\nmemory ratio GRPO/PPO per seed: {', '.join(f'{x:.2f}' for x in r)}; state {mean_std(state['grpo'])[0]:.1f} vs {mean_std(state['ppo'])[0]:.1f}")
print("sft best steps", sft_step, "val", sft_val)
