"""`grpo demo`: the whole story on the built-in task, in minutes on a laptop CPU.

1. SFT warm start of the tiny model on the demonstrations, until held-out accuracy plateaus.
2. GRPO from that plateau, with the rule-based accuracy + format rewards.
3. Held-out greedy accuracy before and after, on problems neither stage trained on; plots.
4. With `sft_more: true`, the compute-matched baseline: SFT continued from step 1's model for as long as
   GRPO's training steps took, and whether GRPO beat it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

from grpo.config import DemoConfig, SFTConfig, load_config, save_config
from grpo.data import load_task
from grpo.errors import UserError
from grpo.models.loading import load_policy, stop_token_ids
from grpo.rewards import load_reward_function
from grpo.rollout.hf import HFEngine
from grpo.train.episodes import tool_use_report
from grpo.train.evaluation import evaluate_accuracy
from grpo.train.grpo import train
from grpo.train.sft import continuation_overrides, matching_clock, sft


def run_demo(config: str | None, overrides: list[str], progress: bool = True,
             overwrite: bool = False) -> dict:
    """The demo into output_dir (refused if it holds an earlier demo, unless `overwrite`: then its SFT and
    GRPO runs are replaced too). Its config.yaml is written once the SFT stage has trained."""
    t0 = time.perf_counter()
    cfg = load_config(DemoConfig, config, overrides)
    out = Path(cfg.output_dir)
    found = [name for name in ("config.yaml", "summary.json", "sft", "grpo", "sft_more")
             if (out / name).exists()]
    if found and not overwrite:
        raise UserError(f"output_dir {out} already holds a demo ({', '.join(found)}); replace it with "
                        "--overwrite, or choose another output_dir")
    resolved = copy.deepcopy(cfg)  # config.yaml: as given
    cfg.sft.sft.output_dir = str(out / "sft")
    cfg.rl.train.output_dir = str(out / "grpo")
    stages = 3 if cfg.sft_more else 2
    print(f"[1/{stages}] SFT warm start -> {cfg.sft.sft.output_dir}")
    s = sft(cfg.sft, progress=progress, overwrite=overwrite)
    save_config(resolved, out / "config.yaml")
    chosen = f"{'validation' if s.chose_on_validation else 'held-out'} accuracy {100 * s.best_accuracy:.1f}%"
    print(f"      best checkpoint: {chosen} (step {s.best_step} of {s.steps}, {s.seconds:.0f} s)")
    cfg.rl.model.path = str(s.model_dir)
    print(f"[2/{stages}] GRPO from the SFT model -> {cfg.rl.train.output_dir}")
    r = train(cfg.rl, progress=progress, overwrite=overwrite)
    summary = {
        "sft_accuracy": s.best_accuracy, "grpo_accuracy_before": r.accuracy_before,
        "grpo_accuracy": r.accuracy_after,
        "gain_points": 100 * (r.accuracy_after - r.accuracy_before), "sft_steps": s.steps,
        "sft_best_step": s.best_step,
        "grpo_steps": r.steps, "sft_seconds": s.seconds, "grpo_seconds": r.seconds,
        "total_seconds": time.perf_counter() - t0, "heldout_size": cfg.rl.data.num_heldout,
    }
    if cfg.rl.rollout.multi_turn:  # tool use before and after, per kind of problem (docs/tools.md)
        summary["tools"] = {"sft": tool_use_report(s.model_dir, cfg.rl),
                            "grpo": tool_use_report(r.output_dir / "final", cfg.rl)}
        for stage, report in summary["tools"].items():
            print(f"{stage:>4}: " + "; ".join(f"{k} accuracy {100 * v['accuracy']:.1f}%, calls the tool "
                                              f"{100 * v['called']:.1f}%" for k, v in report.items()))
    if cfg.sft_more:
        clock = matching_clock(cfg.sft.model.device)
        key = "time/step_cpu" if clock == "cpu" else "time/step"
        more = _sft_more(cfg, s, sum(h[key] for h in r.history if key in h), out, progress, overwrite, clock)
        summary.update(more)
        verdict = "beats" if r.accuracy_after > more["sft_more_accuracy"] else "does not beat"
        print(f"compute-matched baseline: SFT continued for GRPO's {more['grpo_train_seconds']:.0f} "
              f"{clock} s of training steps reaches {100 * more['sft_more_accuracy']:.1f}% held-out; GRPO "
              f"({100 * r.accuracy_after:.1f}%) {verdict} it (one seed; docs/real-model.md has the "
              "comparison over seeds)")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(_markdown(summary, cfg))
    print(f"held-out accuracy: SFT {100 * r.accuracy_before:.1f}% -> GRPO {100 * r.accuracy_after:.1f}% "
          f"({summary['gain_points']:+.1f} points) in {summary['total_seconds']:.0f} s; "
          f"plot: {r.output_dir / 'training.png'}")
    return summary


def _sft_more(cfg: DemoConfig, first, seconds: float, out: Path, progress: bool, overwrite: bool,
              clock: str) -> dict:
    """SFT continued from the SFT model for `seconds` (on `clock`) of training steps
    (`continuation_overrides`), and its greedy accuracy on GRPO's held-out problems, as GRPO's own figure
    is measured."""
    print(f"[3/3] more SFT from the SFT model for GRPO's {seconds:.0f} {clock} s -> {out / 'sft_more'}")
    more_cfg = load_config(SFTConfig, first.output_dir / "config.yaml",
                           [*continuation_overrides(cfg.sft, first, seconds, out / "sft_more", clock),
                            "sft.train_rows=null",
                            *([f"data.source={cfg.sft_more_data}"] if cfg.sft_more_data else [])])
    m = sft(more_cfg, progress=progress, overwrite=overwrite)
    if cfg.rl.rollout.multi_turn:
        accuracy = tool_use_report(m.model_dir, cfg.rl)["all"]["accuracy"]
    else:
        model, tokenizer = load_policy(dataclasses.replace(cfg.rl.model, path=str(m.model_dir), lora=None),
                                       None)
        engine = HFEngine(model.eval(), stop_token_ids(model, tokenizer), tokenizer.pad_token_id)
        rows = load_task(cfg.rl.data, tokenizer, cfg.rl.train.seed).heldout
        first_reward = cfg.rl.rewards.functions[0]
        accuracy = evaluate_accuracy(engine, tokenizer, rows,
                                     load_reward_function(first_reward.fn, first_reward.options),
                                     cfg.rl.sampling.max_new_tokens)[0]
    spent = m.train_cpu_seconds if clock == "cpu" else m.train_seconds
    return {"sft_more_accuracy": accuracy, "sft_more_train_seconds": spent, "clock": clock,
            "sft_more_steps": m.steps,
            "sft_more_best_step": m.best_step, "grpo_train_seconds": seconds}


def _markdown(s: dict, cfg: DemoConfig) -> str:
    rl = cfg.rl
    return "\n".join(
        [
            "| stage | held-out greedy accuracy | steps | wall time |",
            "|---|---|---|---|",
            f"| SFT warm start (best checkpoint, plateau) | {100 * s['sft_accuracy']:.1f}% | "
            f"{s['sft_steps']} (best at {s.get('sft_best_step', '?')}) | {s['sft_seconds']:.0f} s |",
            f"| + GRPO | {100 * s['grpo_accuracy']:.1f}% ({s['gain_points']:+.1f} points) | "
            f"{s['grpo_steps']} | {s['grpo_seconds']:.0f} s |",
            *(
                [
                    f"| SFT continued instead, for GRPO's {s['grpo_train_seconds']:.0f} "
                    f"{s.get('clock', 'wall')} s of training steps "
                    f"(the compute-matched baseline) | {100 * s['sft_more_accuracy']:.1f}% | "
                    f"{s['sft_more_steps']} (best at {s['sft_more_best_step']}) | "
                    f"{s['sft_more_train_seconds']:.0f} {s.get('clock', 'wall')} s |"
                ]
                if "sft_more_accuracy" in s
                else []
            ),
            "",
            f"Held-out problems: {s['heldout_size']} (disjoint from both stages' training problems). "
            f"GRPO: {rl.train.prompts_per_step} prompts x G={rl.grpo.G} per step, beta={rl.grpo.beta}, "
            f"lr={rl.optim.lr}, max_new_tokens={rl.sampling.max_new_tokens}. Total {s['total_seconds']:.0f} "
            "s.",
            "",
        ]
    )
