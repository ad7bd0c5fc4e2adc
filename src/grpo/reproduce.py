"""`grpo reproduce`: the paper's comparative claims, in miniature, from one command.

DeepSeekMath (§4-5) claims that RL with GRPO adds points over the SFT model it starts from, that
GRPO matches or beats PPO while holding fewer models in memory (no value model), and that RL lifts
maj@K more than pass@K. On the built-in task and the tiny model this command:

1. warm-starts the tiny model with SFT until held-out accuracy plateaus (as `grpo demo`);
2. trains GRPO and PPO from that checkpoint with the same sampling budget and seed, each in its own
   process so that each one's peak memory is its own;
3. evaluates SFT, GRPO and PPO on the held-out split (greedy accuracy, pass@k, maj@k);
4. writes `results.md` plus PNG plots (reward and accuracy curves, pass@k / maj@k versus k).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from grpo.config import DemoConfig, load_config, save_config
from grpo.errors import UserError

METHODS = ("grpo", "ppo")


def _train_in_subprocess(rl_config: Path, method: str, out: Path, sft_model: Path) -> dict:
    cmd = [sys.executable, "-m", "grpo", "train", "-q", "--config", str(rl_config), f"algorithm={method}",
           f"model.path={sft_model}", f"train.output_dir={out}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"{method} training failed:\n{proc.stderr[-2000:]}")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "reward/mean" in x]
    return {"seconds": time.perf_counter() - t0, "peak_mib": max(x["memory/peak_mib"] for x in steps),
            "history": lines, "model": out / "final"}


def run_reproduce(config: str | None, overrides: list[str], n: int = 8, ks=(1, 2, 4, 8),
                  docs_dir: str | None = None, progress: bool = True) -> dict:
    from grpo.data import load_task
    from grpo.evaluate import answer_extractor, evaluate
    from grpo.models.tiny import build_tokenizer
    from grpo.rewards import load_reward_function
    from grpo.train.sft import sft

    cfg = load_config(DemoConfig, config, overrides)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    cfg.sft.sft.output_dir = str(out / "sft")
    print(f"[1/3] SFT warm start -> {cfg.sft.sft.output_dir}")
    s = sft(cfg.sft, progress=progress)
    rl_config = out / "rl.yaml"
    save_config(cfg.rl, rl_config)
    runs = {}
    for i, method in enumerate(METHODS):
        print(f"[2/3] {method.upper()} from the SFT model ({cfg.rl.train.steps} steps, "
              f"{cfg.rl.train.prompts_per_step} prompts x G={cfg.rl.grpo.G})")
        runs[method] = _train_in_subprocess(rl_config, method, out / method, s.model_dir)
    print("[3/3] evaluating on the held-out split")
    rows = load_task(cfg.rl.data, build_tokenizer(), cfg.rl.train.seed).heldout
    first = cfg.rl.rewards.functions[0]
    checker = load_reward_function(first.fn, first.options)
    answer_fn = answer_extractor(first.fn, first.options)
    models = {"sft": s.model_dir, **{m: runs[m]["model"] for m in METHODS}}
    evals = {name: evaluate(path, rows, checker, answer_fn, n=n, ks=ks,
                            max_new_tokens=cfg.rl.sampling.max_new_tokens, seed=cfg.rl.train.seed)
             for name, path in models.items()}
    summary = {
        name: {"greedy_accuracy": e.greedy_accuracy, "sample_accuracy": e.sample_accuracy,
               "pass_at_k": e.pass_at_k, "maj_at_k": e.maj_at_k,
               **({"peak_mib": runs[name]["peak_mib"], "seconds": runs[name]["seconds"]} if name in runs else
                  {"seconds": s.seconds, "steps": s.steps})}
        for name, e in evals.items()}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    plots = _plots(out, runs, evals, ks)
    text = _markdown(summary, cfg, s, plots, n, ks)
    (out / "results.md").write_text(text)
    if docs_dir:
        _publish(out, Path(docs_dir), plots)
    print(text)
    return summary


MODELS_HELD = {"grpo": "policy, reference", "ppo": "policy, reference, value (+ its optimizer)"}


def _markdown(summary: dict, cfg: DemoConfig, s, plots: list[str], n: int, ks) -> str:
    kmax = max(ks)
    rows = ["| model | greedy acc. | sampled acc. | maj@%d | pass@%d | peak memory | wall time | models held |" % (kmax, kmax),
            "|---|---|---|---|---|---|---|---|"]
    for name, v in summary.items():
        mem = f"{v['peak_mib']:.0f} MiB" if "peak_mib" in v else "-"
        rows.append(f"| {name.upper()} | {100 * v['greedy_accuracy']:.1f}% | {100 * v['sample_accuracy']:.1f}% | "
                    f"{100 * v['maj_at_k'][kmax]:.1f}% | {100 * v['pass_at_k'][kmax]:.1f}% | {mem} | "
                    f"{v['seconds']:.0f} s | {MODELS_HELD.get(name, 'policy')} |")
    rl = cfg.rl
    return "\n".join([
        "# Results: SFT vs GRPO vs PPO on the built-in task", "",
        "Produced by `grpo reproduce` (see the command line below); numbers from one run on a 2-core CPU.", "",
        *rows, "",
        f"Held-out: {rl.data.num_heldout} problems disjoint from training. Sampled accuracy, maj@k and "
        f"pass@k use n={n} samples per problem at temperature 1. SFT stopped at step {s.steps} "
        f"(best at {s.best_step}). GRPO and PPO: {rl.train.steps} steps x {rl.train.prompts_per_step} prompts "
        f"x {rl.grpo.G} samples, beta={rl.grpo.beta}, lr={rl.optim.lr}; PPO value lr={rl.ppo.value_lr}, "
        f"GAE gamma={rl.ppo.gamma} lambda={rl.ppo.lam}. Peak memory is each training process's peak RSS.", "",
        *[f"![{p}]({p})" for p in plots], ""])


def _plots(out: Path, runs: dict, evals: dict, ks) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for method, run in runs.items():
        hist = run["history"]
        steps = [h for h in hist if "reward/mean" in h]
        a1.plot([h["step"] for h in steps], [h["reward/mean"] for h in steps], label=method.upper(), alpha=0.8)
        ev = [(h["step"], h["eval/accuracy"]) for h in hist if "eval/accuracy" in h]
        before = hist[-1].get("eval/accuracy_before")
        if before is not None:
            ev.insert(0, (0, before))
        a2.plot([x for x, _ in ev], [100 * y for _, y in ev], "o-", label=method.upper())
    a1.set(xlabel="step", ylabel="reward", title="training reward")
    a2.set(xlabel="step", ylabel="accuracy (%)", title="held-out greedy accuracy", ylim=(0, 100))
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)

    fig, (b1, b2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, e in evals.items():
        b1.plot(list(ks), [100 * e.maj_at_k[k] for k in ks], "o-", label=name.upper())
        b2.plot(list(ks), [100 * e.pass_at_k[k] for k in ks], "o-", label=name.upper())
    b1.set(xlabel="k", ylabel="%", title="maj@k", xscale="log", ylim=(0, 100))
    b2.set(xlabel="k", ylabel="%", title="pass@k", xscale="log", ylim=(0, 100))
    for ax in (b1, b2):
        ax.set_xticks(list(ks), [str(k) for k in ks])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "maj_pass_at_k.png", dpi=110)
    plt.close(fig)
    return ["curves.png", "maj_pass_at_k.png"]


def _publish(out: Path, docs: Path, plots: list[str]) -> None:
    import shutil

    img = docs / "img"
    img.mkdir(parents=True, exist_ok=True)
    for p in plots:
        shutil.copy(out / p, img / p)
    text = (out / "results.md").read_text()
    for p in plots:
        text = text.replace(f"]({p})", f"](img/{p})")
    (docs / "results.md").write_text(text)
