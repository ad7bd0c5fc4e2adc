"""Greedy test accuracy per seed and method, and the claims table, from the training logs of a
`grpo reproduce` output directory (each run's own final evaluation on its seed's 500 test problems):
what docs/results.md quotes when the final sampled evaluation did not run.

    .venv/bin/python scripts/results_from_logs.py runs/reproduce
"""

import json
import sys
from pathlib import Path

import yaml

from grpo.reproduce import CLAIMS, LABELS, claim_row
from grpo.stats import mean_std

ROW_LABELS = {**LABELS, "sft": "SFT (chosen on validation)"}


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def main(out: Path) -> None:
    seeds = sorted(int(p.name[4:]) for p in out.glob("seed*"))
    methods = [m for m in LABELS if m != "sft" and (out / f"seed{seeds[0]}" / m / "metrics.jsonl").exists()]
    test_n = yaml.safe_load((out / "rl.yaml").read_text())["data"]["num_heldout"]
    acc, mem, state, chosen = {"sft": []}, {}, {}, {}
    for i in seeds:
        sft = read(out / f"seed{i}" / "sft" / "metrics.jsonl")[-1]
        acc["sft"].append(100 * sft["eval/best_test_accuracy"])
        chosen[i] = (sft["best_step"], sft["eval/best_accuracy"])
        for m in methods:
            lines = read(out / f"seed{i}" / m / "metrics.jsonl")
            steps = [x for x in lines if "reward/mean" in x]
            assert abs(lines[-1]["eval/accuracy_before"] - sft["eval/best_test_accuracy"]) < 1e-9, (i, m)
            acc.setdefault(m, []).append(100 * lines[-1]["eval/accuracy"])
            mem.setdefault(m, []).append(max(x["memory/peak_mib"] - x["memory/baseline_mib"] for x in steps))
            state.setdefault(m, []).append(max(x["memory/state_mib"] for x in steps))
    print("| model | " + " | ".join(f"seed {i}" for i in seeds) + " | mean ± sd | peak memory of the run (mean) "
          "| model state |")
    print("|---|" + "---|" * len(seeds) + "---|---|---|")
    for m, v in acc.items():
        extra = f"{mean_std(mem[m])[0]:.0f} MiB | {mean_std(state[m])[0]:.1f} MiB" if m in mem else "- | -"
        print(f"| {ROW_LABELS[m]} | " + " | ".join(f"{x:.1f}%" for x in v) + " | %.1f ± %.1f%% | " % mean_std(v)
              + extra + " |")
    print("\n| claim (DeepSeekMath) | difference, points (per seed) | 95% interval | verdict |\n|---|---|---|---|")
    for text, a, b in CLAIMS:
        if a in acc and b in acc:
            diffs = [x - y for x, y in zip(acc[a], acc[b])]
            print(claim_row(text, diffs, mean_std(acc[a] + acc[b])[0] / 100, test_n))
    if "ppo" in mem:
        ratios = ", ".join(f"{g / p:.2f}" for g, p in zip(mem["grpo"], mem["ppo"]))
        print(f"\nGRPO/PPO peak memory per seed: {ratios}")
    print("SFT checkpoints (step, validation accuracy) per seed:", chosen)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
