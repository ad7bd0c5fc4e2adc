"""What a `grpo sft` checkpoint holds beyond the weights, and how the run resumes from one exactly.

    OUTPUT/checkpoints/step-000010/
        model.safetensors    the weights now (trainable.safetensors instead with LoRA: the adapters)
        optimizer.pt         AdamW's moments and the learning-rate schedule's position
        rng.pt               torch's CPU and CUDA RNGs, python's `random`
        extra.pt             `best`: the trained weights of the best evaluation so far (absent before one)
        trainer_state.json   `SFTState`: step, training seconds per clock, best accuracy and step, evaluations
                             since, metrics.jsonl's length, the initial weights' fingerprint
        config.yaml          the resolved config
        checksums.json       SHA-256 of every other file

The files, their atomic writing and their verification are `grpo train`'s (`grpo.train.checkpoint`). The
data order needs no state of its own: it is the seed's (`batch_order`), and a resume skips the batches the
steps before the checkpoint consumed. The training seconds make `sft.max_seconds` count every sitting and
keep a budget-following decay (`make_optimizer(spent=...)`) where it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from grpo.train.checkpoint import ResumeRules, load_checkpoint, load_extra, restore_logs, save_checkpoint
from grpo.train.checkpoint_files import CHECKPOINTS, remove_partial_checkpoints

logger = logging.getLogger(__name__)


@dataclass
class SFTState:
    """The SFT loop's own state; trainer_state.json in every checkpoint."""

    step: int = 0
    """Steps done (a resume skips sft.start_row // sft.batch_size + step batches of the data order)."""
    train_seconds: float = 0.0
    """Wall seconds of the training steps so far (evaluations, loading and saving excluded)."""
    train_cpu_seconds: float = 0.0
    """Their CPU seconds (this process, all threads)."""
    seconds: float = 0.0
    """Wall seconds of the run's sittings up to this checkpoint, loading and evaluations included."""
    best_accuracy: float = -1.0
    """The best evaluation so far (-1: none yet); its weights are extra.pt's `best`."""
    best_step: int = 0
    """The step it was measured at (0: none yet)."""
    evals_since_best: int = 0
    """Evaluations since the best one (the run stops at sft.patience)."""
    metrics_bytes: int = 0
    """Length of metrics.jsonl when the checkpoint was written; a resume cuts the file back to it."""
    init_fingerprint: float = 0.0
    """Sum of squares of the initial weights (float64): the frozen weights reloaded on resume (LoRA's base)
    must match."""


MAY_CHANGE_ON_SFT_RESUME = frozenset({
    "sft.resume", "sft.output_dir", "sft.save_every", "sft.keep_checkpoints", "sft.threads",
    "sft.tensorboard", "model.device", "sft.micro_batch_size", "sft.micro_batch_tokens",
})
"""Keys whose value may change between an SFT run and its resume: checkpoint cadence, logging, resources,
and the micro-batching (the same sums, up to float rounding). Not max_steps, eval_every or patience: they
shape the schedule and the choice of the best model."""
SFT_RESUME = ResumeRules("sft", SFTState, MAY_CHANGE_ON_SFT_RESUME)


def trained_weights(model) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters by name (LoRA: the adapters): the best model kept in memory."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trained_weights(model, weights: dict[str, torch.Tensor]) -> None:
    """`trained_weights` back into the model (the frozen weights never changed)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(w)


def save_sft_checkpoint(out: Path, cfg, state: SFTState, model, optimizer, scheduler,
                        best: dict[str, torch.Tensor] | None, metrics: Path) -> Path:
    """OUTPUT/checkpoints/step-NNNNNN (atomic; all but the newest sft.keep_checkpoints deleted), with the
    best weights so far and the current length of `metrics` (metrics.jsonl)."""
    state.metrics_bytes = metrics.stat().st_size
    return save_checkpoint(out, cfg, state, model, optimizer, scheduler, None, keep=cfg.sft.keep_checkpoints,
                           extra={"best": best} if best is not None else None)


class Resumed(NamedTuple):
    state: SFTState
    best: dict[str, torch.Tensor] | None
    """The best evaluation's trained weights (None: no evaluation before the checkpoint)."""
    history: list[dict]
    """metrics.jsonl's lines up to the checkpoint."""


def resume_sft(path: Path, out: Path, cfg, model, optimizer, scheduler, init_fingerprint: float) -> Resumed:
    """Restore the checkpoint at `path` (verified; its config must match `cfg` but for
    MAY_CHANGE_ON_SFT_RESUME) into the model, optimizer, schedule and RNGs, remove checkpoints whose
    writing was cut off and cut metrics.jsonl back to its length at the checkpoint."""
    state = load_checkpoint(path, cfg, model, optimizer, scheduler, None, init_fingerprint, rules=SFT_RESUME)
    best = load_extra(path).get("best")
    for name in remove_partial_checkpoints(out):
        logger.warning("removed %s: a checkpoint whose writing was cut off", out / CHECKPOINTS / name)
    history = restore_logs(out, state.step, {"metrics.jsonl": state.metrics_bytes}, "sft")
    return Resumed(state, best, history)
