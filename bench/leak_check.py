"""Does memory grow over a long run? Train with shapes held fixed and compare each step's peak resident
memory (`memory/peak_mib`, the high-water mark reset every step) after the first 10% of steps with its
value at 10%: a leak shows as steady growth, noise as a flat band.

    python bench/leak_check.py --out runs/leak_tiny -- train.steps=300 model.tiny_hidden_size=32 \
        model.tiny_num_layers=1 train.prompts_per_step=2 grpo.G=4 train.micro_batch_size=8 \
        sampling.max_new_tokens=16 data.num_heldout=2
    python bench/leak_check.py --out runs/leak_smollm2 -- --config configs/smollm2_gsm8k_lora.yaml \
        train.steps=50 sampling.max_new_tokens=32 sampling.min_new_tokens=32 data.num_heldout=2

Completions keep one length when sampling never stops early: the tiny random model almost never samples
EOS; a real model is held to one length by `sampling.min_new_tokens` equal to `sampling.max_new_tokens`
(`completion/len_mean`, in the report, says whether they all reached it). Prints the growth and writes
OUT/leak.json; exits 1 when the growth is 5% or more.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def growth(peaks: list[float], warmup: float = 0.1) -> dict:
    """The peaks' growth after the first `warmup` share of steps: (max after - value at) / value at.

    >>> round(growth([100, 110, 111, 112, 110, 111, 110, 112, 111, 113], 0.2)["growth"], 4)  # (113 - 110) / 110
    0.0273
    """
    start = max(1, round(warmup * len(peaks)))
    base, after = peaks[start - 1], peaks[start:]
    return {"steps": len(peaks), "warmup_steps": start, "at_warmup_mib": base, "max_after_mib": max(after),
            "last_mib": peaks[-1], "growth": (max(after) - base) / base}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the run's train.output_dir; leak.json goes there too")
    p.add_argument("train_args", nargs="*", help="`grpo train` arguments after --")
    args = p.parse_args()
    out = Path(args.out)
    subprocess.run([sys.executable, "-m", "grpo", "train", "-q", "--overwrite", *args.train_args,
                    f"train.output_dir={out}"], check=True)
    steps = [x for x in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "memory/peak_mib" in x]
    result = growth([x["memory/peak_mib"] for x in steps])
    lengths = sorted({round(x.get("completion/len_mean", 0), 1) for x in steps})
    result["completion_lengths"] = lengths[:5] + (["..."] if len(lengths) > 5 else [])
    (out / "leak.json").write_text(json.dumps(result, indent=2))
    print(f"{result['steps']} steps: peak RSS {result['at_warmup_mib']:.1f} MiB at step {result['warmup_steps']}, "
          f"at most {result['max_after_mib']:.1f} MiB after it, {result['last_mib']:.1f} MiB at the end: "
          f"{100 * result['growth']:+.1f}% (limit +5%); mean completion lengths seen: {result['completion_lengths']}")
    sys.exit(0 if result["growth"] < 0.05 else 1)


if __name__ == "__main__":
    main()
