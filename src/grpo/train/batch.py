"""Which prompts a step draws and the batch it trains on: the resumable `PromptSampler`, and one
draw of prompts or DAPO's dynamic sampling.

Dynamic sampling (DAPO, arXiv 2503.14476 §3.2, `grpo.dynamic_sampling=true`): a group whose rewards
are all equal has advantage 0 everywhere and gives no policy gradient, so it is dropped, and more
prompts are drawn (`train.prompts_per_step` at a time, from the same `PromptSampler`) until the batch
holds `prompts_per_step` groups with a spread; extras of the last round are trimmed.

At the cap (`grpo.max_sampling_rounds` rounds) the step trains anyway, on the informative groups
collected plus, to keep the batch at its configured size, the first all-equal groups of the last
round (advantage 0: they add only the KL term's gradient). `sampling/kept_groups` < prompts_per_step
in metrics.jsonl shows it happened; a warning says so too. Keeping the size fixed keeps the loss
normalisers, micro-batches and (with several processes) every rank's share the same as usual.

With several processes each rank fills its own share (prompts_per_step / world_size groups) from its
slice of every round, and the rounds go on until every rank is full (so all ranks draw the same
prompts and stay in step).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from grpo.algorithm import informative_groups
from grpo.errors import UserError
from grpo.rollout.engine import Rollout
from grpo.train.distributed import Dist, all_gather_objects, all_min, all_sum

logger = logging.getLogger(__name__)


class PromptSampler:
    """Prompt indices for each step: shuffled passes over the training set, `k` at a time.

    A pass too short to fill a batch is dropped and a new one shuffled, so every batch has `k`
    distinct prompts. `state_dict()` is the exact position (permutation, cursor, RNG) for resuming.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.rng, self.perm, self.cursor = n, random.Random(seed), [], 0

    def next(self, k: int) -> list[int]:
        if self.cursor + k > len(self.perm):
            self.perm, self.cursor = self.rng.sample(range(self.n), self.n), 0
        self.cursor += k
        return self.perm[self.cursor - k:self.cursor]

    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"n": self.n, "perm": self.perm, "cursor": self.cursor,
                "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise UserError(f"cannot resume: the training set now has {self.n} prompts, the run had "
                            f"{state['n']}; restore the data (data.source) the run started with")
        version, internal, gauss = state["rng"]
        self.perm, self.cursor = list(state["perm"]), state["cursor"]
        self.rng.setstate((version, tuple(internal), gauss))


@dataclass
class Batch:
    """Scored rollouts of some prompts, groups contiguous (rows i*G .. i*G+G-1 answer prompt i)."""

    rows: list[dict]
    """The prompts' dataset rows. [P]"""
    rollout: Rollout
    """Token ids and masks. [P * G, ...]"""
    texts: list[str]
    """Decoded completions. [P * G]"""
    rewards: torch.Tensor
    """Summed rewards. [P * G]"""
    per_function: dict[str, list[float]]
    """Each reward function's raw scores (NaN: not applicable). name -> [P * G]"""
    num_errors: int = 0
    """Reward calls that raised while scoring (including groups later dropped)."""
    num_timeouts: int = 0
    """Reward calls that timed out while scoring."""
    episodes: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    """Multi-turn: per-trajectory statistics (grpo.train.episodes.EPISODE_COLUMNS); empty otherwise."""

    def groups(self, idx: list[int], G: int) -> Batch:
        """The batch restricted to the groups `idx`, in that order (error counts kept)."""
        rows = [g * G + j for g in idx for j in range(G)]
        pick = torch.tensor(rows, dtype=torch.long)  # [len(idx) * G]
        return dataclasses.replace(
            self, rows=[self.rows[g] for g in idx],
            rollout=self.rollout.select(pick.to(self.rollout.prompt_ids.device)),
            texts=[self.texts[i] for i in rows], rewards=self.rewards[pick],
            per_function={k: [v[i] for i in rows] for k, v in self.per_function.items()},
            episodes={k: [v[i] for i in rows] for k, v in self.episodes.items()})


class SamplingStats(NamedTuple):
    """Logged as `sampling/*` when dynamic sampling is on (docs/metrics.md)."""

    rounds: int
    """Draws of prompts_per_step prompts this step."""
    prompts_drawn: int
    """rounds * prompts_per_step (all ranks together)."""
    kept_groups: int
    """Groups with a reward spread in the trained batch (all ranks); prompts_per_step unless capped."""


def collect_batch(next_rows: Callable[[], list[dict]], score: Callable[[list[dict]], Batch], G: int,
                  prompts_per_step: int, max_rounds: int, pad_id: int,
                  dist: Dist) -> tuple[Batch, SamplingStats]:
    """DAPO's dynamic sampling: this rank's batch of prompts_per_step / world_size groups with a reward
    spread, drawn over at most max_rounds rounds; `next_rows()` draws this rank's slice of the next
    prompts_per_step prompts, `score(rows)` generates and rewards them."""
    target = prompts_per_step // dist.world_size
    kept: list[Batch] = []
    n_kept = 0
    for rounds in range(1, max_rounds + 1):
        batch = score(next_rows())
        spread = informative_groups(batch.rewards, G).nonzero().squeeze(1).tolist()
        take = spread[:target - n_kept]
        kept.append(batch.groups(take, G))
        n_kept += len(take)
        if all_min(n_kept, dist) >= target:  # every rank full (a collective: all ranks take the same branch)
            break
    if n_kept < target:  # at the cap: all-equal groups of the last round fill the rest (advantage 0)
        flat = [i for i in range(len(batch.rows)) if i not in set(spread)][:target - n_kept]
        kept.append(dataclasses.replace(batch.groups(flat, G), num_errors=0, num_timeouts=0))
    (kept_groups,) = all_sum([n_kept], dist)
    if kept_groups < prompts_per_step and dist.is_main:
        logger.warning("dynamic sampling: only %d of %d groups with a reward spread after "
                       "grpo.max_sampling_rounds=%d rounds; the rest of the batch is all-equal groups "
                       "(advantage 0)",
                       kept_groups, prompts_per_step, max_rounds)
    return cat_batches(kept, pad_id), SamplingStats(rounds, rounds * prompts_per_step, int(kept_groups))


def cat_batches(batches: list[Batch], pad_id: int) -> Batch:
    """One batch from several, rollouts padded to the widest (prompts on the
    left, completions on the right)."""
    if len(batches) == 1:
        return batches[0]
    names = batches[0].per_function
    return Batch(rows=[x for b in batches for x in b.rows],
                 rollout=cat_rollouts([b.rollout for b in batches], pad_id),
                 texts=[x for b in batches for x in b.texts], rewards=torch.cat([b.rewards for b in batches]),
                 per_function={k: [x for b in batches for x in b.per_function[k]] for k in names},
                 num_errors=sum(b.num_errors for b in batches),
                 num_timeouts=sum(b.num_timeouts for b in batches),
                 episodes={k: [x for b in batches for x in b.episodes[k]] for k in batches[0].episodes})


def cat_rollouts(rollouts: list[Rollout], pad_id: int) -> Rollout:
    """Rows of several rollouts stacked; prompts left-padded and completions
    right-padded to a common width."""
    P = max(r.prompt_ids.shape[1] for r in rollouts)
    T = max(r.completion_ids.shape[1] for r in rollouts)
    left = lambda t, v: F.pad(t, (P - t.shape[1], 0), value=v)  # noqa: E731
    right = lambda t, v: F.pad(t, (0, T - t.shape[1]), value=v)  # noqa: E731
    logp = policy = None
    if all(r.logp is not None for r in rollouts):
        logp = torch.cat([right(r.logp, 0.0) for r in rollouts])  # [N, T]
    if all(r.policy_mask is not None for r in rollouts):
        policy = torch.cat([right(r.policy_mask, 0) for r in rollouts])  # [N, T]
    return Rollout(prompt_ids=torch.cat([left(r.prompt_ids, pad_id) for r in rollouts]),  # [N, P]
                   prompt_mask=torch.cat([left(r.prompt_mask, 0) for r in rollouts]),  # [N, P]
                   completion_ids=torch.cat([right(r.completion_ids, pad_id) for r in rollouts]),  # [N, T]
                   completion_mask=torch.cat([right(r.completion_mask, 0) for r in rollouts]),  # [N, T]
                   truncated=torch.cat([r.truncated for r in rollouts]), logp=logp, policy_mask=policy)


class GlobalBatch(NamedTuple):
    """The whole step's batch as every rank sees it after `gather_batch` (rank order = prompt order)."""

    rows: list[dict]
    texts: list[str]
    rewards: torch.Tensor
    """[N] summed rewards of all ranks' completions."""
    per_function: dict[str, list[float]]
    lengths: torch.Tensor
    """[N] completion lengths in tokens (EOS included)."""
    truncated: torch.Tensor
    """[N] bool, no EOS within max_new_tokens."""
    num_errors: int
    num_timeouts: int
    episodes: dict[str, list[float]]
    """Multi-turn: every rank's per-trajectory statistics (`Batch.episodes`)."""

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())


def gather_batch(batch: Batch, dist: Dist) -> GlobalBatch:
    """Everything but the token ids, from every rank (one small all_gather_object): for advantages,
    metrics and samples. With one process it is the batch itself."""
    local = (batch.rows, batch.texts, batch.rewards.tolist(), batch.per_function,
             batch.rollout.lengths.tolist(),
             batch.rollout.truncated.tolist(), batch.num_errors, batch.num_timeouts, batch.episodes)
    parts = all_gather_objects(local, dist)
    cat = lambda i: [x for p in parts for x in p[i]]  # noqa: E731
    return GlobalBatch(rows=cat(0), texts=cat(1), rewards=torch.tensor(cat(2), dtype=batch.rewards.dtype),
                       per_function={k: [x for p in parts for x in p[3][k]] for k in batch.per_function},
                       lengths=torch.tensor(cat(4), dtype=torch.long),
                       truncated=torch.tensor(cat(5), dtype=torch.bool),
                       num_errors=sum(p[6] for p in parts), num_timeouts=sum(p[7] for p in parts),
                       episodes={k: [x for p in parts for x in p[8][k]] for k in batch.episodes})
