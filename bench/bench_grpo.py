#!/usr/bin/env python3
"""grpo's side of the benchmark through its Python API: the work of bench/work.py, `grpo.train.grpo.train`.

Usage:
    python bench/bench_grpo.py MODEL_DIR [the flags of bench/work.py] [--set KEY=VALUE ...]
                               [--output-dir DIR] [--json-out FILE]

The config is `grpo train`'s, built from the same overrides the command line gets
(`work.grpo_overrides`), plus any `--set` overrides (e.g. `--set model.dtype=bfloat16`); the loop and its
timers are the ones the command runs. bench/side_by_side.py runs it beside `grpo train` and TRL
(side grpo_api); alone it is handy for A/B runs of two source trees (`SRC=... PYTHONPATH=$SRC`) and for
bench/heap_by_phase.py, which passes its own phase timers.

The last line printed is one JSON object: the per-step lists and figures of `side_by_side.grpo_figures`
(the same for every side; the median of each phase of a step and of the update's parts among them), the
mean prompt length in tokens, and this process's peak RSS (the larger of `ru_maxrss` and the loop's
high-water mark, read before it resets it each step).
"""

import os
import time

T_PROCESS_START = time.perf_counter()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import grpo_figures  # noqa: E402
from work import emit, work_settings, add_work_arguments, grpo_overrides, work_from_args  # noqa: E402


def build_config(work, output_dir: Path, extra: list[str]):
    from grpo.config import TrainConfig
    from grpo.config_io import load_config

    return load_config(TrainConfig, None, grpo_overrides(work, output_dir) + extra)


def main(timers=None):
    """timers: the loop's phase timers (bench/heap_by_phase.py passes its own, with hooks)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_work_arguments(p)
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="a further `grpo train` override (repeatable)")
    p.add_argument("--output-dir", type=Path, default=Path(".peers/runs/grpo"))
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args()
    work = work_from_args(args)

    import torch

    from grpo.train.grpo import train

    t_imports = time.perf_counter() - T_PROCESS_START
    cfg = build_config(work, args.output_dir, args.extra)
    t0 = time.perf_counter()
    res = train(cfg, progress=False, timers=timers, overwrite=True)  # a re-run replaces its run
    t_train = time.perf_counter() - t0

    from transformers import AutoTokenizer

    from grpo.data.templates import encode_prompts, render_prompt

    tokenizer = AutoTokenizer.from_pretrained(work.model_dir)
    prompts = [json.loads(line)["prompt"] for line in open(cfg.data.source, encoding="utf-8") if line.strip()]
    prompt_lens = [len(x) for x in encode_prompts(tokenizer, [render_prompt(x, tokenizer) for x in prompts])]
    result = {
        "side": "grpo_api",
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        **grpo_figures(res.history, work.batch),
        "total_wall_s": round(time.perf_counter() - T_PROCESS_START, 3),
        "import_s": round(t_imports, 3),
        "train_wall_s": round(t_train, 3),
        "peak_rss_mb": round(max([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, res.peak_memory_mib]), 1),
        "prompt_tokens_mean": round(statistics.mean(prompt_lens), 3),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "settings": {**work_settings(work),
                     "overrides": args.extra, "python": sys.version.split()[0]},
    }
    emit(result, args.json_out)


if __name__ == "__main__":
    main()
