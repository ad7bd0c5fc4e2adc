"""`grpo reproduce`: the paper's comparative claims, in miniature, from one command.

DeepSeekMath (§4-5) claims that RL with GRPO adds points over the SFT model it starts from, that
GRPO matches or beats PPO while holding fewer models in memory (no value model), that online
methods with a graded signal beat rejection-sampling fine-tuning (§5.2.1), and that RL lifts maj@K
more than pass@K (§5.2.2). On the built-in task and the tiny model this command:

1. warm-starts the tiny model with SFT until held-out accuracy plateaus (as `grpo demo`);
2. trains each method (GRPO with outcome supervision, GRPO with process supervision, PPO, online
   RFT) from that checkpoint with the same sampling budget and seed, each in its own process so
   that each one's peak memory is its own;
3. evaluates every model on the held-out split (greedy accuracy, pass@k, maj@k);
4. writes `results.md` plus PNG plots (reward and accuracy curves, pass@k / maj@k versus k).

    grpo reproduce --docs docs          # ~25 min on a 2-core CPU; also copies results.md into docs/
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from grpo.config import DemoConfig, load_config, save_config
from grpo.errors import UserError

METHODS = {
    "grpo": ["algorithm=grpo"],
    "grpo_process": ["algorithm=grpo", "grpo.advantage=process", "rewards.step_fn=arithmetic_steps"],
    "ppo": ["algorithm=ppo"],
    "rft": ["algorithm=rft"],
}
"""Method name -> the overrides of the shared RL config that select it."""

LABELS = {"sft": "SFT", "grpo": "GRPO (outcome)", "grpo_process": "GRPO (process)", "ppo": "PPO", "rft": "Online RFT"}
MODELS_HELD = {"sft": "policy", "grpo": "policy, reference", "grpo_process": "policy, reference",
               "ppo": "policy, reference, value (+ its optimizer)", "rft": "policy"}


def _train_in_subprocess(rl_config: Path, method: str, out: Path, sft_model: Path) -> dict:
    cmd = [sys.executable, "-m", "grpo", "train", "-q", "--config", str(rl_config), *METHODS[method],
           f"model.path={sft_model}", f"train.output_dir={out}"]
    t0 = time.perf_counter()
    # freed tensors go back to the OS at once, so the process's peak RSS follows its live memory (docs/memory.md)
    # and oneDNN keeps no per-shape buffers (as in the planner's validation, tests/test_plan.py)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "LRU_CACHE_CAPACITY": "1",
           "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise UserError(f"{method} training failed:\n{proc.stderr[-2000:]}")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "reward/mean" in x]
    return {"seconds": time.perf_counter() - t0, "peak_mib": max(x["memory/peak_mib"] for x in steps),
            "run_peak_mib": max(x["memory/peak_mib"] - x["memory/baseline_mib"] for x in steps),
            "state_mib": max(x["memory/state_mib"] for x in steps),
            "history": lines, "model": out / "final"}


def run_reproduce(config: str | None, overrides: list[str], n: int = 16, ks=(1, 2, 4, 8, 16),
                  docs_dir: str | None = None, methods=tuple(METHODS), progress: bool = True,
                  sft_dir: str | None = None) -> dict:
    from grpo.data import load_task
    from grpo.evaluate import answer_equivalence, answer_extractor, evaluate
    from grpo.models.tiny import build_tokenizer
    from grpo.rewards import load_reward_function
    from grpo.train.sft import sft

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"--methods: unknown method {unknown[0]!r} (known: {', '.join(METHODS)})")
    ks = sorted(set(ks))
    if n < 1 or not ks or ks[0] < 1 or ks[-1] > n:
        raise UserError(f"--k: every k must be in 1..--n ({n})")
    t_start = time.perf_counter()
    cfg = load_config(DemoConfig, config, overrides)
    if config is None and not any(o.startswith("output_dir=") for o in overrides):
        cfg.output_dir = "runs/reproduce"  # not the demo's directory
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    cfg.sft.sft.output_dir = str(out / "sft")
    if sft_dir:
        s = _finished_sft(Path(sft_dir))
        print(f"[1/3] SFT warm start: reusing {s.model_dir} (best at step {s.best_step} of {s.steps})")
    else:
        print(f"[1/3] SFT warm start -> {cfg.sft.sft.output_dir}")
        s = sft(cfg.sft, progress=progress)
    rl_config = out / "rl.yaml"
    save_config(cfg.rl, rl_config)
    runs = {}
    for method in methods:
        print(f"[2/3] {LABELS[method]} from the SFT model ({cfg.rl.train.steps} steps, "
              f"{cfg.rl.train.prompts_per_step} prompts x G={cfg.rl.grpo.G})", flush=True)
        runs[method] = _train_in_subprocess(rl_config, method, out / method, s.model_dir)
    print("[3/3] evaluating on the held-out split")
    rows = load_task(cfg.rl.data, build_tokenizer(), cfg.rl.train.seed).heldout
    first = cfg.rl.rewards.functions[0]
    checker = load_reward_function(first.fn, first.options)
    answer_fn, equivalent = answer_extractor(first.fn, first.options), answer_equivalence(first.fn, first.options)
    models = {"sft": s.model_dir, **{m: runs[m]["model"] for m in methods}}
    evals = {name: evaluate(path, rows, checker, answer_fn, n=n, ks=ks,
                            max_new_tokens=cfg.rl.sampling.max_new_tokens, seed=cfg.rl.train.seed,
                            equivalent=equivalent)
             for name, path in models.items()}
    summary = {
        name: {"greedy_accuracy": e.greedy_accuracy, "sample_accuracy": e.sample_accuracy, "num_prompts": e.num_prompts,
               "pass_at_k": e.pass_at_k, "maj_at_k": e.maj_at_k,
               **({k: runs[name][k] for k in ("peak_mib", "run_peak_mib", "state_mib", "seconds")} if name in runs else
                  {"seconds": s.seconds, "steps": s.steps})}
        for name, e in evals.items()}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    plots = _plots(out, runs, evals, ks)
    command = " ".join(["grpo reproduce", *(["--config", config] if config else []), f"--n {n}",
                        f"--k {','.join(map(str, ks))}", f"--methods {','.join(methods)}",
                        *([f"--sft {sft_dir}"] if sft_dir else []), *overrides])
    text = _markdown(summary, cfg, s, plots, n, ks, command, time.perf_counter() - t_start)
    (out / "results.md").write_text(text)
    if docs_dir:
        _publish(out, Path(docs_dir), plots)
    print(text)
    return summary


def _markdown(summary: dict, cfg: DemoConfig, s, plots: list[str], n: int, ks, command: str, seconds: float) -> str:
    kmax = max(ks)
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    rows = [f"| model | greedy acc. | sampled acc. | maj@{kmax} | pass@{kmax} | peak memory of the run | model state "
            "| peak RSS | wall time | models held |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in summary.items():
        mib = lambda key, f=".0f": f"{v[key]:{f}} MiB" if key in v else "-"  # noqa: E731
        rows.append(f"| {LABELS[name]} | {pct(v['greedy_accuracy'])} | {pct(v['sample_accuracy'])} | "
                    f"{pct(v['maj_at_k'][kmax])} | {pct(v['pass_at_k'][kmax])} | {mib('run_peak_mib')} | "
                    f"{mib('state_mib', '.1f')} | {mib('peak_mib')} | {v['seconds']:.0f} s | {MODELS_HELD[name]} |")
    curve = ["| model | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for name, v in summary.items():
        curve.append(f"| {LABELS[name]} maj@k | " + " | ".join(pct(v["maj_at_k"][k]) for k in ks) + " |")
        curve.append(f"| {LABELS[name]} pass@k | " + " | ".join(pct(v["pass_at_k"][k]) for k in ks) + " |")
    rl = cfg.rl
    return "\n".join([
        "# Results: SFT vs GRPO vs PPO vs online RFT on the built-in task", "",
        f"Produced by `{command}` in {seconds / 60:.0f} min on this project's 2-core CPU (one run, seed "
        f"{rl.train.seed}); `results.json` beside it has every number.", "",
        *rows, "", *_claims(summary, kmax), "",
        f"maj@k and pass@k against k (n={n} samples per problem at temperature {rl.sampling.temperature:g}):", "",
        *curve, "",
        f"Held-out: {rl.data.num_heldout} problems disjoint from training. Greedy accuracy is one completion at "
        f"temperature 0; sampled accuracy, maj@k and pass@k use n={n} samples per problem. SFT stopped at step "
        f"{s.steps} (best checkpoint at {s.best_step}, kept). Every RL method starts from that checkpoint with the "
        f"same budget: {rl.train.steps} steps x {rl.train.prompts_per_step} prompts x {rl.grpo.G} samples, "
        f"lr={rl.optim.lr}, beta={rl.grpo.beta} (PPO: folded into the per-token reward; RFT: no KL), "
        f"max_new_tokens={rl.sampling.max_new_tokens}. PPO: value model = a copy of the policy's body with a "
        f"scalar head, value lr={rl.ppo.value_lr}, GAE gamma={rl.ppo.gamma} lambda={rl.ppo.lam}. Process "
        "supervision scores each line of working and the final answer (`arithmetic_steps`). Peak memory is each "
        "training process's peak resident set size during its training steps (evaluations excluded) above its "
        "resident size before any model was built (the imported Python/PyTorch runtime is the same for every "
        "method), with glibc's mmap threshold at 64 KiB so that freed tensors leave the resident set and "
        "oneDNN's per-shape caches off, as in the planner's validation (docs/memory.md); peak RSS is the raw "
        "figure of the steps.", "",
        *[f"![{p}]({p})" for p in plots], ""])


def _finished_sft(path: Path):
    """The result of an earlier `grpo sft` run in `path` (its final model and metrics.jsonl)."""
    from grpo.train.sft import SFTResult

    try:
        lines = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
        last = lines[-1]
        steps = max(x["step"] for x in lines if "loss" in x)
        result = SFTResult(path, path / "final", last["eval/best_accuracy"], last["best_step"], steps,
                           last.get("seconds", float("nan")), lines)
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise UserError(f"--sft {path}: not a finished `grpo sft` run ({e})") from None
    if not (result.model_dir / "config.json").is_file():
        raise UserError(f"--sft {path}: no final model in {result.model_dir}")
    return result


def _plan_line() -> str:
    from grpo.plan import Architecture, PlanInput, plan_memory

    arch = Architecture(num_layers=32, hidden_size=4096, intermediate_size=11008, num_heads=32, num_kv_heads=32,
                        head_dim=128, vocab_size=32000)  # Llama-2-7B's shape
    gib = {a: plan_memory(PlanInput(arch=arch, algorithm=a, precision="bf16")).total_bytes / 2**30 for a in ("grpo", "ppo")}
    return f"{gib['grpo']:.0f} GiB for GRPO vs {gib['ppo']:.0f} GiB for PPO (bf16, AdamW, no LoRA)"


def _claims(summary: dict, kmax: int) -> list[str]:
    """The paper's claims, checked against this run's numbers (a claim not met is said so)."""
    acc = {m: v["greedy_accuracy"] for m, v in summary.items()}
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    out = ["What the numbers say about the paper's claims:", ""]
    if "grpo" in acc:
        gain = 100 * (acc["grpo"] - acc["sft"])
        out.append(f"- RL adds points over SFT: GRPO {gain:+.1f} points over the SFT model it starts from "
                   f"({met(gain >= 15)}: the target is +15).")
    if "grpo" in acc and "ppo" in acc:
        d = 100 * (acc["grpo"] - acc["ppo"])
        out.append(f"- GRPO matches or beats PPO at equal budget: {d:+.1f} points "
                   f"({met(d >= 0)}).")
        g, p = summary["grpo"]["run_peak_mib"], summary["ppo"]["run_peak_mib"]
        gs, ps = summary["grpo"]["state_mib"], summary["ppo"]["state_mib"]
        out.append(f"- Less memory without a value model: GRPO's peak memory is {g / p:.2f}x PPO's ({g:.0f} vs "
                   f"{p:.0f} MiB above the runtime; {met(g <= 0.75 * p)}: the target is <= 0.75x). "
                   f"Model state alone (weights, gradients, Adam moments, reference, value model): {gs:.1f} vs "
                   f"{ps:.1f} MiB ({gs / ps:.2f}x). At 7B parameters `grpo plan` gives {_plan_line()}.")
    if "grpo_process" in acc and "grpo" in acc:
        d = 100 * (acc["grpo_process"] - acc["grpo"])
        out.append(f"- Process vs outcome supervision: {d:+.1f} points for process supervision (the paper finds "
                   f"process supervision better; {met(d >= 0)} here).")
    if "rft" in acc and "grpo" in acc:
        d = 100 * (acc["grpo"] - acc["rft"])
        out.append(f"- Online RFT (coefficient 1 on correct samples, none on wrong ones) vs GRPO: GRPO "
                   f"{d:+.1f} points ({met(d >= 0)}).")
    if "grpo" in acc and len(acc) > 2:
        n, p = summary["grpo"]["num_prompts"], acc["grpo"]
        se = 100 * (2 * p * (1 - p) / n) ** 0.5  # standard error of a difference of two such accuracies
        out.append(f"- Noise: with {n} held-out problems and one seed, the difference of two accuracies near GRPO's has "
                   f"a standard error of about {se:.1f} points, so differences between the RL methods smaller than "
                   f"~{2 * se:.0f} points are not evidence either way.")
    rl = [m for m in ("grpo", "grpo_process", "ppo") if m in summary]
    if rl:
        s = summary["sft"]
        lines = []
        for m in rl:
            dm = 100 * (summary[m]["maj_at_k"][kmax] - s["maj_at_k"][kmax])
            dp = 100 * (summary[m]["pass_at_k"][kmax] - s["pass_at_k"][kmax])
            lines.append(f"{LABELS[m]} maj@{kmax} {dm:+.1f} / pass@{kmax} {dp:+.1f}")
        out.append(f"- RL lifts maj@K more than pass@K (§5.2.2), in points over SFT: {'; '.join(lines)}.")
    return out


def _plots(out: Path, runs: dict, evals: dict, ks) -> list[str]:
    import matplotlib

    from grpo.plotting import plot_comparison

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_comparison({LABELS[method]: run["history"] for method, run in runs.items()}, out / "curves.png")

    fig, (b1, b2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, e in evals.items():
        b1.plot(list(ks), [100 * e.maj_at_k[k] for k in ks], "o-", label=LABELS[name])
        b2.plot(list(ks), [100 * e.pass_at_k[k] for k in ks], "o-", label=LABELS[name])
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
