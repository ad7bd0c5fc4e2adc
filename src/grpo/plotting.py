"""PNG plots of a run's metrics (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path


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
    smooth = [sum(reward[max(0, i - k + 1):i + 1]) / len(reward[max(0, i - k + 1):i + 1]) for i in range(len(reward))]
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
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
