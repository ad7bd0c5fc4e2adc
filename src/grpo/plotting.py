"""PNG plots of metrics (matplotlib, headless): one run, runs side by side, `grpo reproduce`'s figures."""

from __future__ import annotations

import json
from pathlib import Path

from grpo.stats import mean_std

# matplotlib is imported in each function (the Agg backend chosen first): 0.5 s here that `grpo --help` and
# the commands that draw nothing do not need.


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_training(history: list[dict], out_png: str | Path, title: str = "GRPO") -> Path:
    """Reward per step (with a moving average) and held-out accuracy, on two panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history if "reward/mean" in h]
    reward = [h["reward/mean"] for h in history if "reward/mean" in h]
    evals = eval_curve(history)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(steps, reward, color="tab:blue", alpha=0.35, label="batch mean")
    k = max(1, len(reward) // 10)
    smooth = [
        sum(reward[max(0, i - k + 1) : i + 1]) / len(reward[max(0, i - k + 1) : i + 1])
        for i in range(len(reward))
    ]
    ax1.plot(steps, smooth, color="tab:blue", label=f"moving mean ({k})")
    ax1.set(xlabel="step", ylabel="reward", title=f"{title}: training reward")
    ax1.legend(loc="lower right")
    if evals:
        ax2.plot([s for s, _ in evals], [100 * a for _, a in evals], "o-", color="tab:green")
    ax2.set(xlabel="step", ylabel="accuracy (%)", title="held-out greedy accuracy", ylim=(0, 100))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


def eval_curve(history: list[dict]) -> list[tuple[int, float]]:
    """(step, held-out accuracy) of a run, with the accuracy before training at step 0 when logged."""
    evals = [(h["step"], h["eval/accuracy"]) for h in history if "eval/accuracy" in h]
    if history and "eval/accuracy_before" in history[-1]:
        evals.insert(0, (0, history[-1]["eval/accuracy_before"]))
    return evals


def plot_comparison(histories: dict[str, list[dict]], out_png: str | Path, title: str = "") -> Path:
    """Several runs on the same axes: training reward per step and held-out accuracy, one line per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, history in histories.items():
        steps = [h for h in history if "reward/mean" in h]
        ax1.plot([h["step"] for h in steps], [h["reward/mean"] for h in steps], label=label, alpha=0.8)
        evals = eval_curve(history)
        ax2.plot([s for s, _ in evals], [100 * a for _, a in evals], "o-", label=label)
    prefix = f"{title}: " if title else ""
    ax1.set(xlabel="step", ylabel="reward", title=f"{prefix}training reward")
    ax2.set(xlabel="step", ylabel="accuracy (%)", title="held-out greedy accuracy", ylim=(0, 100))
    _finish(fig, (ax1, ax2), Path(out_png), legend_size=None)
    return Path(out_png)


def _band(ax, xs: list, series: list[list[float]], label: str, fmt: str = "-") -> None:
    """Mean over seeds as a line, ± one standard deviation as a band (nothing more with one seed)."""
    stats = [mean_std(v) for v in zip(*series)]
    mean = [m for m, _ in stats]
    line, = ax.plot(xs, mean, fmt, label=label)
    if len(series) > 1:
        ax.fill_between(xs, [m - s for m, s in stats], [m + s for m, s in stats], color=line.get_color(),
                        alpha=0.2)


def plot_reproduce(out: Path, runs: dict, sfts: dict, evals: dict, seeds: list[int], methods, ks,
                   labels: dict[str, str], models=None) -> list[str]:
    """`grpo reproduce`'s figures in `out` (training reward per RL method and every model's test accuracy,
    maj@k and pass@k, the SFT warm start's validation curve), each mean ± sd over the seeds; returns their
    file names. models: the evaluated models' names (default: sft and the methods)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(models or ("sft", *methods))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for m in methods:
        histories = [[h for h in runs[(i, m)]["history"] if "reward/mean" in h] for i in seeds]
        _band(a1, [h["step"] for h in histories[0]], [[h["reward/mean"] for h in hs] for hs in histories],
              labels[m])
    a1.set(xlabel="step", ylabel="reward", title="training reward (mean ± sd over seeds)")
    kinds = [("greedy", lambda e: e.greedy_accuracy)] + [
        (k, lambda e, k=k: e.greedy_by_checker[k]) for k in ("strict", "lenient")
        if k in evals[(seeds[0], models[0])].greedy_by_checker]
    width = 0.8 / len(kinds)
    for j, (kind, get) in enumerate(kinds):
        stats = [mean_std([100 * get(evals[(i, name)]) for i in seeds]) for name in models]
        a2.bar([x + j * width for x in range(len(models))], [m for m, _ in stats], width,
               yerr=[s for _, s in stats], capsize=3, label=kind)
    a2.set_xticks([x + width * (len(kinds) - 1) / 2 for x in range(len(models))],
                  [labels[name] for name in models], rotation=20, ha="right", fontsize=7)
    a2.set(ylabel="accuracy (%)", title="test greedy accuracy (mean ± sd over seeds)", ylim=(0, 100))
    _finish(fig, (a1, a2), out / "curves.png")

    names = ["curves.png", "sft.png"]
    if evals[(seeds[0], models[0])].pass_at_k:  # a multi-turn task is scored by greedy episodes only
        names.insert(1, "maj_pass_at_k.png")
        fig, (b1, b2) = plt.subplots(1, 2, figsize=(10, 3.6))
        for name in models:
            for ax, key in ((b1, "maj_at_k"), (b2, "pass_at_k")):
                stats = [mean_std([100 * getattr(evals[(i, name)], key)[k] for i in seeds]) for k in ks]
                ax.errorbar(list(ks), [m for m, _ in stats], yerr=[s for _, s in stats], fmt="o-", capsize=3,
                            label=labels[name])
        b1.set(xlabel="k", ylabel="%", title="maj@k (mean ± sd over seeds)", xscale="log", ylim=(0, 100))
        b2.set(xlabel="k", ylabel="%", title="pass@k (mean ± sd over seeds)", xscale="log", ylim=(0, 100))
        for ax in (b1, b2):
            ax.set_xticks(list(ks), [str(k) for k in ks])
        _finish(fig, (b1, b2), out / "maj_pass_at_k.png")

    fig, c1 = plt.subplots(1, 1, figsize=(6, 3.6))
    curves = [[(h["step"], h["eval/accuracy"]) for h in sfts[i].history
               if "eval/accuracy" in h] for i in seeds]
    if curves[0]:
        _band(c1, [s for s, _ in curves[0]], [[100 * a for _, a in c] for c in curves],
              "validation (chooses the checkpoint)", "o-")
    for i in seeds:
        c1.axvline(sfts[i].best_step, color="grey", alpha=0.4, lw=1)
    c1.set(xlabel="step", ylabel="greedy accuracy (%)", title="SFT warm start (grey: chosen checkpoints)",
           ylim=(0, 100))
    _finish(fig, (c1,), out / "sft.png")
    return names


def _finish(fig, axes, path: Path, legend_size=8) -> None:
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
