"""The rollout interface: prompts in, G sampled completions per prompt out.

The training loop only sees `RolloutEngine` (`generate`, and the stepwise calls that multi-turn rollouts
drive) and the `Rollout` it returns, so another engine (vLLM on a GPU, say) can be added without
touching the loop.

Layout of a rollout (N = num_prompts * G rows, groups contiguous: rows i*G .. i*G+G-1 answer prompt i):

    prompt_ids      [N, P]  left-padded with pad_id        prompt_mask      [N, P]
    completion_ids  [N, T]  right-padded with pad_id       completion_mask  [N, T]  (EOS included)
    truncated       [N]     True where no EOS came within max_new_tokens
    logp            [N, T]  log-probs of the sampled tokens under the sampling distribution, or None
    policy_mask     [N, T]  multi-turn only: 1 on the policy's own tokens, 0 on environment (tool) tokens,
                            which completion_mask also marks (the forward attends to them) but the loss,
                            KL and entropy skip; None: every completion token is the policy's
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
    min_new_tokens: int = 0  # no stop token before this many tokens of a completion


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # [N, P]
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, T]
    completion_mask: torch.Tensor  # [N, T]
    truncated: torch.Tensor  # [N] bool
    logp: torch.Tensor | None = None  # [N, T]
    policy_mask: torch.Tensor | None = None  # [N, T]

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)  # [N]

    def completion_lists(self) -> list[list[int]]:
        """Each row's completion token ids without padding (EOS included), what reward functions get."""
        return [ids[m.bool()].tolist() for ids, m in zip(self.completion_ids, self.completion_mask)]

    @property
    def policy_tokens(self) -> torch.Tensor:
        """[N, T] the tokens the loss, KL and entropy are taken over: the policy's own (policy_mask), which
        for a single-turn rollout are all its completion tokens (completion_mask)."""
        return self.completion_mask if self.policy_mask is None else self.policy_mask

    def to(self, device) -> "Rollout":
        return Rollout(**{k: None if v is None else v.to(device) for k, v in vars(self).items()})

    def select(self, rows: torch.Tensor) -> "Rollout":
        """The rollout restricted to `rows` (an index tensor)."""
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return Rollout(*(pick(getattr(self, f)) for f in
                         ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "truncated",
                          "logp",
                          "policy_mask")))


def pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) [n, P] of token lists left-padded with pad_id to the longest, P: the prompt layout above.

    >>> pad_left([[5, 6], [7]], pad_id=0)
    (tensor([[5, 6],
            [0, 7]]), tensor([[1, 1],
            [0, 1]]))
    """
    P = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), P), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, P - len(s):] = torch.tensor(s)
            mask[i, P - len(s):] = 1
    return ids, mask


class RolloutEngine(Protocol):
    """`generate` samples whole completions. The stepwise calls below are what multi-turn rollouts drive
    (`grpo.rollout.multiturn.generate_episodes`, the only contract it relies on):

        engine.prefill(prompt_ids, params)             # every prompt run once, G rows each
        while engine.step(generator):                  # one token for every running row
            for row, turn in engine.ended_turns().items():
                engine.append(row, observation_ids)    # the environment answers: the row goes on
        rollout = engine.finish()

    Each row's sequence is only ever extended, never re-run: an appended observation follows the row's
    cached keys, and the row samples again after it. An engine that samples whole completions only (vLLM)
    raises a UserError from the stepwise calls.
    """

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams,
                 generator: torch.Generator | None = None) -> Rollout: ...

    def sync_weights(self, model) -> None:
        """Make the engine sample from `model`'s current weights (a no-op when it shares them)."""

    def prefill(self, prompt_ids: list[list[int]], params: SamplingParams) -> None:
        """Start a stepwise decode of params.G rows per prompt (N rows, the layout above): run the prompts."""

    def step(self, generator: torch.Generator | None = None) -> bool:
        """Give every running row its next token: the next of its appended environment tokens, else one
        sampled (temperature, top_p). False, with nothing done, once the decode is over: every row stopped,
        or params.max_new_tokens tokens (policy and environment) per row."""

    def ended_turns(self) -> dict[int, list[int]]:
        """The rows whose policy turn ended at the last step (sampled a stop token), each with the tokens
        it sampled in that turn (stop token included). Such a row stops unless `append` answers it."""

    def append(self, row: int, ids: list[int]) -> None:
        """Queue environment tokens after `row`'s just-ended turn (fed as its next tokens: logp 0, policy
        mask 0); the row samples again after them. ids may be empty (the row just goes on)."""

    def finish(self) -> Rollout:
        """End the decode: the rollout with policy_mask; truncated marks the rows still running (their
        episode was cut by max_new_tokens). Call it also after a failure midway: it restores the model."""
