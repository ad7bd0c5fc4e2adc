"""The rollout interface: prompts in, G sampled completions per prompt out.

The training loop only sees `RolloutEngine.generate` and the `Rollout` it returns, so another engine
(vLLM on a GPU, say) can be added without touching the loop.

Layout of a rollout (N = num_prompts * G rows, groups contiguous: rows i*G .. i*G+G-1 answer prompt i):

    prompt_ids      [N, P]  left-padded with pad_id        prompt_mask      [N, P]
    completion_ids  [N, T]  right-padded with pad_id       completion_mask  [N, T]  (EOS included)
    truncated       [N]     True where no EOS came within max_new_tokens
    logp            [N, T]  log-probs of the sampled tokens under the sampling distribution, or None
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    G: int = 1  # completions per prompt


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # [N, P]
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, T]
    completion_mask: torch.Tensor  # [N, T]
    truncated: torch.Tensor  # [N] bool
    logp: torch.Tensor | None = None  # [N, T]

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)  # [N]

    def select(self, rows: torch.Tensor) -> "Rollout":
        """The rollout restricted to `rows` (an index tensor)."""
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return Rollout(*(pick(getattr(self, f)) for f in
                         ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "truncated", "logp")))


class RolloutEngine(Protocol):
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams,
                 generator: torch.Generator | None = None) -> Rollout: ...

    def sync_weights(self, model) -> None:
        """Make the engine sample from `model`'s current weights (a no-op when it shares them)."""
