"""What a step's rollouts say: reward and length metrics, whether the groups carry any signal, and for
multi-turn episodes (`grpo.train.episodes.episode_columns` of every row):

    tools/calls          tool calls per trajectory (mean over the batch)
    tools/errors         failed calls per trajectory (each answered with an error observation)
    tools/error_frac     tools/errors / tools/calls (0 without calls)
    turns/mean           policy turns per trajectory
    turns/max_turns_hit  share of trajectories cut by rollout.max_turns
    reward/environment   (rollout.environment) mean of the summed per-turn rewards
"""

from __future__ import annotations

import logging

import torch

from grpo.algorithm import expected_zero_std_fraction, zero_std_fraction
from grpo.config import TrainConfig
from grpo.rollout.engine import Rollout
from grpo.train.batch import GlobalBatch

logger = logging.getLogger("grpo.train.grpo")  # the loop's logger: its warnings read as the loop's


def batch_metrics(everyone: GlobalBatch, cfg: TrainConfig, accuracy: str | None = None) -> dict:
    """The gathered batch's reward and length metrics, its multi-turn episode metrics (none for single-turn
    rollouts) and its reward errors and timeouts."""
    return {**rollout_metrics(everyone, everyone.rewards, everyone.per_function, cfg, accuracy),
            **episode_metrics(everyone.episodes, bool(cfg.rollout.environment)),
            "reward/errors": everyone.num_errors, "reward/timeouts": everyone.num_timeouts}


def rollout_metrics(r: Rollout, rewards, per_function: dict, cfg: TrainConfig,
                    accuracy: str | None = None) -> dict:
    """This batch's reward and length metrics; `accuracy` names the reward whose mean is the pass rate."""
    lengths = r.lengths.float()
    out = {
        "reward/mean": float(torch.nanmean(rewards)),
        "reward/std": float(rewards[~rewards.isnan()].std()) if (~rewards.isnan()).sum() > 1 else 0.0,
        "reward/zero_std_groups": float(zero_std_fraction(rewards, cfg.grpo.G)),
        "completion/len_mean": float(lengths.mean()),
        "completion/len_max": float(lengths.max()),
        "completion/truncated": float(r.truncated.float().mean()),
    }
    for name, values in per_function.items():
        out[f"reward/{name}"] = float(torch.tensor(values, dtype=torch.float64).nanmean())
    pass_rate = out.get(f"reward/{accuracy}")
    # the share a pass rate alone would leave without signal
    if pass_rate is not None and pass_rate == pass_rate:
        out["reward/zero_std_expected"] = expected_zero_std_fraction(
            min(max(pass_rate, 0.0), 1.0), cfg.grpo.G
        )
    return out


def episode_metrics(columns: dict[str, list[float]], environment: bool) -> dict:
    """The batch's tools/* and turns/* metrics (module docstring) from `episode_columns` of every row."""
    if not columns:
        return {}
    mean = lambda k: sum(columns[k]) / max(1, len(columns[k]))  # noqa: E731
    calls, errors = sum(columns["tool_calls"]), sum(columns["tool_errors"])
    out = {"tools/calls": mean("tool_calls"), "tools/errors": mean("tool_errors"),
           "tools/error_frac": errors / calls if calls else 0.0, "turns/mean": mean("turns"),
           "turns/max_turns_hit": mean("max_turns_hit")}
    if environment:
        out["reward/environment"] = mean("env_reward")
    return out


NO_SIGNAL_SHARE = 0.5
"""Warn once when more than this share of a step's groups have all-equal rewards (no gradient)."""


def warn_if_no_signal(record: dict, cfg: TrainConfig, accuracy: str, warned: bool) -> bool:
    """One warning line, the first time most of a step's groups carry no signal; returns whether warned."""
    share = record.get("reward/zero_std_groups", 0.0)
    if warned or share <= NO_SIGNAL_SHARE or cfg.algorithm != "grpo":
        return warned
    p = record.get(f"reward/{accuracy}", float("nan"))
    expected = record.get("reward/zero_std_expected", float("nan"))
    logger.warning(
        "grpo: warning: step %d: %.0f%% of the groups have all-equal rewards and give no gradient (%.0f%% "
        "expected from the pass rate %s = %.1f%% at grpo.G=%d); for more signal try a larger grpo.G, a "
        "sampling.temperature nearer where the model is most often right, a warm start (grpo sft) or easier "
        "prompts",
        record["step"], 100 * share, 100 * expected, accuracy, 100 * p, cfg.grpo.G)
    return True
