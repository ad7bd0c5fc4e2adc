"""The loop's side of multi-turn rollouts (`rollout.tools` or `rollout.environment`, docs/tools.md).

`Episodic` builds one environment per trajectory from its dataset row, runs the engine's multi-turn
sampling (grpo.rollout.multiturn), and turns the episodes into per-row columns (`episode_columns`), from
which `grpo.train.rollout_metrics.episode_metrics` computes the tools/* and turns/* metrics.

Rewards see the whole trajectory's text (policy and tool turns, as decoded), so an accuracy reward
reads the final answer after the tool's result; advantages are per trajectory.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from grpo.config import TrainConfig
from grpo.data import load_task
from grpo.data.templates import decode_completions, encode_prompts
from grpo.models.loading import load_policy, stop_token_ids
from grpo.rewards import load_reward_function
from grpo.rewards.combine import reward_inputs
from grpo.rollout.engine import Rollout, SamplingParams
from grpo.rollout.hf import HFEngine
from grpo.rollout.multiturn import Episodes, generate_episodes
from grpo.tools.environment import ToolEnvironment, ToolRunner, load_environment
from grpo.tools.functions import load_tools
from grpo.tools.parser import load_parser

EPISODE_COLUMNS = ("turns", "tool_calls", "tool_errors", "max_turns_hit", "env_reward")
"""Per-trajectory columns a `Batch` carries for the metrics (`Batch.episodes`)."""


class Episodic:
    """Environments for a run, and multi-turn generation and evaluation with them."""

    def __init__(self, cfg: TrainConfig, tokenizer):
        r = cfg.rollout
        self.cfg, self.tokenizer = cfg, tokenizer
        self.tools = load_tools(r.tools) if r.tools else []
        self.parse = load_parser(r.tool_parser) if r.tools else None
        self.factory = load_environment(r.environment) if r.environment else None

    def make_env(self, row: dict, pool) -> Any:
        """A fresh environment for one trajectory of `row`."""
        if self.factory is not None:
            return self.factory(row)
        r = self.cfg.rollout
        count = lambda text: len(self.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        return ToolEnvironment(ToolRunner(self.tools, r.tool_timeout_s, pool), self.parse, count,
                               r.max_observation_tokens)

    def generate(
        self, engine, rows: list[dict], params: SamplingParams, generator, pool
    ) -> tuple[Rollout, Episodes]:
        envs = [self.make_env(row, pool) for row in rows for _ in range(params.G)]
        prompt_ids = encode_prompts(self.tokenizer, [x["prompt"] for x in rows])
        return generate_episodes(engine, self.tokenizer, prompt_ids, envs, params, self.cfg.rollout.max_turns,
                                 generator, parallel=pool is not None or any(t.sandbox for t in self.tools))

    def evaluate(self, engine, rows: list[dict], checker, pool, batch_size: int = 128) -> tuple[float, dict]:
        """Greedy held-out accuracy over whole episodes (the checker reads the trajectory's text), and the
        episodes' means (tool_calls, called: share of rows with a call, turns)."""
        if not rows:
            return float("nan"), {}
        scores, calls, turns = [], [], []
        params = SamplingParams(self.cfg.sampling.max_new_tokens, 0.0, 1.0, 1)
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            r, ep = self.generate(engine, chunk, params, None, pool)
            texts = decode_completions(self.tokenizer, r.completion_ids, r.completion_mask)  # env turns too
            values = checker(**reward_inputs(chunk, texts, r.completion_lists()).kwargs())
            scores += [0.0 if v is None else float(v) for v in values]
            calls += ep.tool_calls
            turns += ep.turns
        n = len(scores)
        return sum(scores) / n, {"tool_calls": sum(calls) / n, "called": sum(c > 0 for c in calls) / n,
                                 "turns": sum(turns) / n}


def episode_columns(ep: Episodes) -> dict[str, list[float]]:
    return {"turns": [float(x) for x in ep.turns], "tool_calls": [float(x) for x in ep.tool_calls],
            "tool_errors": [float(x) for x in ep.tool_errors],
            "max_turns_hit": [float(x) for x in ep.max_turns_hit], "env_reward": list(ep.reward)}


def add_environment_reward(rewards: torch.Tensor, per_function: dict, ep: Episodes) -> torch.Tensor:
    """The environment's per-turn rewards, summed per trajectory, join the total as 'environment'."""
    env = torch.tensor(ep.reward, dtype=rewards.dtype)  # [N]
    per_function["environment"] = list(ep.reward)
    return torch.where(rewards.isnan(), env, rewards + env)


def tool_use_report(model_dir, cfg: TrainConfig) -> dict:
    """Greedy held-out accuracy, tool-call share and turns of the model in `model_dir` on cfg's held-out
    rows, overall and per value of a `kind` column (builtin:calculator: 'hard' and 'easy')."""
    model, tokenizer = load_policy(dataclasses.replace(cfg.model, path=str(model_dir), lora=None), None)
    rows = load_task(cfg.data, tokenizer, cfg.train.seed,
                     tools=[t.schema for t in Episodic(cfg, tokenizer).tools]).heldout
    engine = HFEngine(model, stop_token_ids(model, tokenizer), tokenizer.pad_token_id)
    episodic, checker = Episodic(cfg, tokenizer), load_reward_function(cfg.rewards.functions[0].fn)
    report = {}
    for kind in [None] + sorted({r["kind"] for r in rows if "kind" in r}):
        part = [r for r in rows if kind is None or r.get("kind") == kind]
        accuracy, stats = episodic.evaluate(engine, part, checker, None)
        report[kind or "all"] = {"accuracy": accuracy, "rows": len(part), **stats}
    return report
