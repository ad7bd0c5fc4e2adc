"""Iterative GRPO's reward-model update (DeepSeekMath §4.2, Algorithm 1, line 11).

In the paper, after each iteration the reward model is trained further on the new policy's samples,
labelled, with a replay mechanism that keeps 10% of historical data. Here, at the start of every
iteration (so the first iteration gets a reward model fitted to the initial policy too):

1. sample `prompts_per_iteration` training prompts x G completions from the current policy
   (a generator seeded by the run's seed and the iteration, so a resumed run draws the same);
2. label each completion with the rule reward `labeller` (e.g. the accuracy checker);
3. add `replay` x (number of fresh samples) samples drawn from all earlier ones;
4. take `train_steps` AdamW steps (the `optim` section's betas, weight decay and clipping) on the mean squared
error between the score and the label, so the
   score estimates the probability that the answer is right.

Logged on the first step of each iteration: `rm/loss_before` (the old model on the new samples, with
the replay), `rm/loss_after`, `rm/accuracy_before` (score > 0.5 agrees with the label, fresh samples
only: how well the old model judged the new policy), `rm/samples`, `rm/replayed`.
"""

from __future__ import annotations

import random

import torch

from grpo.config import OptimConfig, RewardModelConfig
from grpo.data.templates import decode_completions, encode_prompts
from grpo.rewards import RewardModel, load_reward_function
from grpo.rewards.combine import reward_inputs
from grpo.rollout.engine import SamplingParams
from grpo.train.optim import adamw, clip_gradients


class RewardModelTrainer:
    def __init__(self, rm: RewardModel, cfg: RewardModelConfig, seed: int, optim: OptimConfig | None = None):
        """optim: the betas, weight decay and gradient clipping of the reward model's AdamW (the run's
        `optim` section; its learning rate is rewards.model.lr)."""
        self.rm, self.cfg, self.seed, self.optim = rm, cfg, seed, optim or OptimConfig()
        self.labeller = load_reward_function(cfg.labeller)
        self.optimizer = adamw(rm.model.parameters(), cfg.lr, self.optim)
        self.history: list[list] = []
        """Every labelled sample so far, [prompt, completion, label]: the replay pool."""

    def scores(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """The score with gradients, batch_size texts at a time. [n]"""
        enc = self.rm.encode([p + c for p, c in zip(prompts, completions)])
        return (
            self.rm.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            .logits[:, 0]
            .float()
        )

    def sample(self, engine, tokenizer, rows: list[dict], G: int, max_new_tokens: int, temperature: float,
               iteration: int) -> list[list]:
        """Fresh labelled samples of the current policy: [prompt, completion, label] each."""
        rng = random.Random(f"{self.seed}:rm:{iteration}")
        picked = [rows[i] for i in rng.sample(range(len(rows)),
                                              min(self.cfg.prompts_per_iteration, len(rows)))]
        gen = torch.Generator(device=self.rm.device).manual_seed(rng.randrange(2**31))  # the policy's device
        r = engine.generate(encode_prompts(tokenizer, [x["prompt"] for x in picked]),
                            SamplingParams(max_new_tokens, temperature, 1.0, G), gen)
        texts = decode_completions(tokenizer, r.completion_ids, r.completion_mask)
        inputs = reward_inputs(picked, texts, r.completion_lists(), G)
        labels = self.labeller(**inputs.kwargs())
        return [[p, c, float(y)] for p, c, y in zip(inputs.prompts, texts, labels) if y is not None]

    def update(self, engine, tokenizer, rows: list[dict], cfg, iteration: int) -> dict:
        """The iteration's update (0-based `iteration`): sample and label, then retrain; its metrics."""
        s = cfg.sampling
        fresh = self.sample(engine, tokenizer, rows, cfg.grpo.G, s.max_new_tokens, s.temperature, iteration)
        return {**self.retrain(fresh, iteration), "iteration": iteration + 1}

    def retrain(self, fresh: list[list], iteration: int) -> dict:
        rng = random.Random(f"{self.seed}:rm-replay:{iteration}")
        replayed = rng.sample(self.history, min(len(self.history), round(self.cfg.replay * len(fresh))))
        data = fresh + replayed
        before, accuracy = self._loss(data), self._accuracy(fresh)
        self.rm.model.train()
        for _ in range(self.cfg.train_steps):
            batch = rng.sample(data, min(self.cfg.train_batch_size, len(data)))
            labels = torch.tensor([y for _, _, y in batch], device=self.rm.device)
            loss = torch.nn.functional.mse_loss(
                self.scores([p for p, _, _ in batch], [c for _, c, _ in batch]), labels
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(list(self.rm.model.parameters()), self.optim)
            self.optimizer.step()
        self.rm.model.eval()
        self.history.extend(fresh)
        return {"rm/loss_before": before, "rm/loss_after": self._loss(data), "rm/accuracy_before": accuracy,
                "rm/samples": len(fresh), "rm/replayed": len(replayed)}

    @torch.no_grad()
    def _loss(self, data: list[list]) -> float:
        s = torch.tensor(self.rm([p for p, _, _ in data], [c for _, c, _ in data]))
        return float(((s - torch.tensor([y for _, _, y in data])) ** 2).mean())

    @torch.no_grad()
    def _accuracy(self, data: list[list]) -> float:
        s = self.rm([p for p, _, _ in data], [c for _, c, _ in data])
        return sum((v > 0.5) == (y >= 0.5) for v, (_, _, y) in zip(s, data)) / max(1, len(data))

    def state_dict(self) -> dict:
        return {"model": self.rm.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.rm.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = [list(x) for x in state["history"]]
