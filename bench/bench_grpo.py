#!/usr/bin/env python3
"""`grpo` side of the side-by-side benchmark: the peer harness's GRPO run, through grpo's public API.

Usage:
    python bench/bench_grpo.py MODEL_DIR [--max-steps 20] [--prompts-per-step 8] [--max-new-tokens 32]
                               [--dtype float32|bfloat16] [--gradient-checkpointing] [--output-dir DIR]
                               [--json-out FILE] [--prompts-jsonl FILE --answer-position last]
                               [--temperature T] [--learning-rate LR] [--lora]

With --prompts-jsonl the rows of FILE (chat messages rendered by the model's template, answers as in
GSM8K) replace the A+B prompts, as the peer's option of the same name does; --answer-position last
compares the completion's last integer (bench/add_rewards.py:correctness_last); --lora trains LoRA
adapters (r 16, alpha 32, every projection, as bench/trl_lora_bench.py gives TRL).

Same work as /work/shared/peers/trl_grpo_bench.py: the 256 prompts "What is A+B? Answer:" of its
`make_dataset(256, seed=0)` (bench/add_prompts.jsonl), its two rewards (bench/add_rewards.py), G=8,
max_new_tokens completions at temperature 1, beta=0.04, lr=1e-4 (linear decay, no warm-up, AdamW
betas 0.9/0.999, grad clip 1.0: TRL's defaults), mu=1, one optimizer step per batch, fp32 unless
--dtype bfloat16 (bf16 autocast, fp32 master weights), 2 torch threads, no evaluation.

The last line printed is one JSON object with the peer's field names where they mean the same thing
(`sec_per_step_median_after_2`, `gen_completion_tok_per_s`, `peak_rss_mb`, ...) plus the median of
each phase of a step (generate, reward, advantages, reference, update) and the token counts the
FLOP figures of bench/compare.py need.
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

HERE = Path(__file__).resolve().parent
PHASES = ("generate", "reward", "advantages", "reference", "update")
SUB_PHASES = ("forward", "clip_grad", "optimizer")
"""Parts of `update` the loop times itself (`time/update/forward`, ...: the policy forward with gradients,
the gradient clipping, the optimizer step); what is left of `update` is the backward pass plus the loss
arithmetic."""


def build_config(args):
    from grpo.config import RewardEntry, TrainConfig

    cfg = TrainConfig()
    cfg.model.path, cfg.model.dtype, cfg.model.device = str(args.model_dir), args.dtype, "cpu"
    cfg.data.source = str(args.prompts_jsonl or HERE / "add_prompts.jsonl")
    cfg.data.max_prompt_length = args.max_prompt_length
    # TODO: an empty held-out set currently fails in load_task (tokenizer([])); 8 greedy prompts
    # before and after training cost ~0.1 s and are outside the timed steps.
    cfg.data.heldout_source, cfg.data.num_heldout = cfg.data.source, 8
    correctness = "correctness" if args.answer_position == "first" else "correctness_last"
    cfg.rewards.functions = [RewardEntry(f"{HERE / 'add_rewards.py'}:{correctness}", 1.0),
                             RewardEntry(f"{HERE / 'add_rewards.py'}:starts_with_int", 0.1)]
    cfg.sampling.max_new_tokens, cfg.sampling.temperature, cfg.sampling.top_p = args.max_new_tokens, args.temperature, 1.0
    if args.lora:
        from grpo.config import LoraConfig

        cfg.model.lora = LoraConfig(r=16, alpha=32)
    cfg.grpo.G, cfg.grpo.beta, cfg.grpo.mu = args.G, args.beta, 1
    cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.schedule = args.learning_rate, 0, "linear"
    cfg.optim.betas, cfg.optim.weight_decay, cfg.optim.grad_clip = [0.9, 0.999], 0.0, 1.0
    t = cfg.train
    t.steps, t.prompts_per_step, t.micro_batch_size = args.max_steps, args.prompts_per_step, args.prompts_per_step * args.G
    t.seed, t.output_dir, t.eval_every, t.sample_every, t.threads = args.seed, str(args.output_dir), 0, 0, 2
    t.gradient_checkpointing, t.micro_batch_tokens = args.gradient_checkpointing, args.micro_batch_tokens
    cfg.validate()
    return cfg


def median_after(values: list[float], skip: int = 2) -> float:
    return statistics.median(values[skip:] if len(values) > skip else values)


def _update_split(steps: list[dict], skip: int) -> dict:
    """Medians of the parts of `update`: policy forward, backward (+ loss arithmetic), clip, optimizer."""
    rows = []
    for h in steps:
        parts = {k: h.get(f"time/update/{k}", 0.0) for k in SUB_PHASES}
        parts["backward_and_loss"] = h.get("time/update", 0.0) - sum(parts.values())
        rows.append(parts)
    keys = (*SUB_PHASES, "backward_and_loss")
    return {k: round(median_after([r[k] for r in rows], skip), 4) for k in keys} if rows else {}


def main(timers=None):
    """timers: the loop's phase timers (bench/heap_by_phase.py passes its own, with hooks)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path)
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="train.gradient_checkpointing=true (the peer's --gradient-checkpointing)")
    p.add_argument("--micro-batch-tokens", type=int, default=None,
                   help="train.micro_batch_tokens (default: none, one forward/backward over the batch, as TRL)")
    p.add_argument("--prompts-jsonl", type=Path, default=None, help="prompts and answers (the peer's option)")
    p.add_argument("--answer-position", choices=["first", "last"], default="first")
    p.add_argument("--max-prompt-length", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lora", action="store_true", help="LoRA r 16, alpha 32 on every projection")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", type=Path, default=Path(".peers/runs/grpo"))
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args()

    import torch

    from grpo.train.grpo import train

    t_imports = time.perf_counter() - T_PROCESS_START
    cfg = build_config(args)
    t0 = time.perf_counter()
    res = train(cfg, progress=False, timers=timers, overwrite=True)  # a re-run replaces its run
    t_train = time.perf_counter() - t0

    from transformers import AutoTokenizer

    from grpo.data.templates import encode_prompts, render_prompt

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    prompts = [json.loads(line)["prompt"] for line in open(cfg.data.source, encoding="utf-8")]
    prompt_lens = [len(x) for x in encode_prompts(tokenizer, [render_prompt(x, tokenizer) for x in prompts])]
    steps = [h for h in res.history if "time/step" in h]
    n_rows = cfg.train.prompts_per_step * cfg.grpo.G
    tokens = [h["completion/len_mean"] * n_rows for h in steps]  # valid completion tokens, EOS included
    gen_s = [h["time/generate"] for h in steps]
    skip = 2
    result = {
        "bench": "grpo_cpu",
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "steps": len(steps),
        "total_wall_s": round(time.perf_counter() - T_PROCESS_START, 3),
        "import_s": round(t_imports, 3),
        "train_wall_s": round(t_train, 3),
        "sec_per_step_median_after_2": round(median_after([h["time/step"] for h in steps], skip), 4),
        "sec_per_step_all": [round(h["time/step"], 4) for h in steps],
        "gen_sec_per_step_median_after_2": round(median_after(gen_s, skip), 4),
        "completion_tokens_total": round(sum(tokens)),
        "completion_tokens_per_step_mean": round(sum(tokens) / max(len(tokens), 1), 2),
        "gen_completion_tok_per_s": round(sum(tokens[skip:]) / sum(gen_s[skip:]), 1),
        "e2e_completion_tok_per_s": round(sum(tokens) / t_train, 1),
        "peak_rss_mb": round(max([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, res.peak_memory_mib]), 1),
        "phase_sec_median_after_2": {k: round(median_after([h.get(f"time/{k}", 0.0) for h in steps], skip), 4)
                                     for k in PHASES},
        "update_split_sec_median_after_2": _update_split(steps, skip),
        "prompt_tokens_mean": round(statistics.mean(prompt_lens), 3),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "completion_len_mean": round(statistics.mean(h["completion/len_mean"] for h in steps), 2),
        "completion_len_max_mean": round(statistics.mean(h["completion/len_max"] for h in steps), 2),
        "mean_reward_first5": round(statistics.mean(h["reward/mean"] for h in steps[:5]), 4),
        "mean_reward_last5": round(statistics.mean(h["reward/mean"] for h in steps[-5:]), 4),
        "settings": {"prompts_per_step": cfg.train.prompts_per_step, "G": cfg.grpo.G,
                     "gradient_checkpointing": cfg.train.gradient_checkpointing,
                     "micro_batch_tokens": cfg.train.micro_batch_tokens,
                     "max_new_tokens": cfg.sampling.max_new_tokens, "beta": cfg.grpo.beta,
                     "lr": cfg.optim.lr, "mu": cfg.grpo.mu, "lora": args.lora,
                     "temperature": cfg.sampling.temperature, "model": str(args.model_dir), "python": sys.version.split()[0]},
    }
    line = json.dumps(result)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    print(line, flush=True)


if __name__ == "__main__":
    main()
