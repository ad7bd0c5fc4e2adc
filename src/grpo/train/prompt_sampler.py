"""Seeding, and the order in which training prompts are drawn (exactly resumable)."""

from __future__ import annotations

import random

import torch

from grpo.errors import UserError


def seed_everything(seed: int, threads: int = 0) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)


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
        return {"n": self.n, "perm": self.perm, "cursor": self.cursor, "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise UserError(f"cannot resume: the training set now has {self.n} prompts, the run had {state['n']}; "
                            "restore the data (data.source) the run started with")
        version, internal, gauss = state["rng"]
        self.perm, self.cursor = list(state["perm"]), state["cursor"]
        self.rng.setstate((version, tuple(internal), gauss))
