"""Seeding the global generators that training, SFT and the commands draw from."""

from __future__ import annotations

import random

import torch


def seed_everything(seed: int, threads: int = 0) -> None:
    """Seed Python's and torch's global generators (initialisation, data);
    threads > 0: torch's CPU threads."""
    random.seed(seed)
    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)
