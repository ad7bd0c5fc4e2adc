"""Checkpoints that let a GRPO run (or an SFT run) continue bit-for-bit, written so that no crash can corrupt
one.

    OUTPUT/checkpoints/step-000010/
        model.safetensors    the policy's weights (tied weights stored once)
        trainable.safetensors  instead, when some weights are frozen (LoRA): the trained ones only; the
                             frozen ones are model.path's, checked by the fingerprint below
        optimizer.pt         AdamW moments and the learning-rate schedule's position
        rng.pt               torch CPU and CUDA RNGs, the sampling generator, python's `random`
        trainer_state.json   step, data-sampler position, held-out accuracy before training, fault
                             counters, lengths of metrics.jsonl and samples.jsonl at this step
        config.yaml          the resolved config the run was started with
        checksums.json       SHA-256 of every other file: a resume verifies them before reading any
        shards/              under FSDP instead of model.safetensors and the moments: every rank's
                             shard of both, written by that rank (torch.distributed.checkpoint)

The frozen reference model is not saved: it is the initial policy, loaded again from `model.path`
on resume. A fingerprint of those initial weights is saved, so a model directory that changed in
between stops the resume instead of silently giving another reference. A reward model is never
trained by this loop, so it has no state to save.

Writing is atomic and a resume first verifies every file's checksum (`grpo.train.checkpoint_files`).
`grpo sft` writes the same files with its own state (`grpo.train.sft_state`): no sampling generator, its
best model so far in extra.pt; `ResumeRules` says what differs between the two commands' resumes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, load_model, save_file, save_model

from grpo.config import save_config, to_dict
from grpo.errors import UserError
from grpo.train.checkpoint_files import (CHECKPOINTS, complete_checkpoints, finish_checkpoint,
                                         latest_checkpoint, start_checkpoint, verify_checkpoint)
from grpo.train.distributed import (SINGLE, Dist, first_error, load_full_state, load_shards, sampling_seed,
                                    save_shards)

logger = logging.getLogger(__name__)

SHARDS = "shards"
"""Inside a checkpoint written under FSDP: torch.distributed.checkpoint's files, one per rank."""
TRAINABLE = "trainable.safetensors"
"""Instead of model.safetensors when some weights are frozen (LoRA): the trained weights only."""
# Keys whose value may change between a run and its resume without changing the training itself
# (logging and checkpoint cadence, resources), or that extend it on purpose (train.steps). The
# micro-batching, checkpointing and strategy keys change how an update is computed, not what it is
# (the same sums, up to float rounding), and the rollout keys which engine samples from the same policy:
# a run that ran out of memory may resume with smaller micro-batches, activation checkpointing or FSDP;
# a DDP checkpoint loads into FSDP shards and back; a run may move to a GPU with vLLM.
MAY_CHANGE_ON_RESUME = {
    "train.steps", "train.resume", "train.output_dir", "train.log_every", "train.eval_every",
    "train.sample_every", "train.save_every", "train.keep_checkpoints", "train.max_bad_steps",
    "train.threads", "rewards.workers", "rewards.timeout_s", "model.device",
    "train.micro_batch_size", "train.micro_batch_tokens", "train.gradient_checkpointing", "train.strategy",
    "rollout.engine", "rollout.gpu_memory_utilization", "train.report_to", "train.wandb_project",
}


@dataclass
class TrainerState:
    """The loop's own state; trainer_state.json in every checkpoint."""

    step: int = 0
    """Steps done (each: one batch of rollouts, grpo.mu optimizer updates)."""
    accuracy_before: float = math.nan
    """Held-out accuracy of the initial policy, measured once at the start of the run."""
    skipped_updates: int = 0
    """Updates skipped over the whole run because the loss or the gradient norm was not finite."""
    bad_in_a_row: int = 0
    """Skipped updates since the last good one (the run stops at train.max_bad_steps)."""
    sampler: dict = field(default_factory=dict)
    """The prompt sampler's position (`PromptSampler.state_dict()`)."""
    metrics_bytes: int = 0
    """Length of metrics.jsonl when the checkpoint was written; a resume cuts the file back to it."""
    samples_bytes: int = 0
    """Same for samples.jsonl."""
    init_fingerprint: float = 0.0
    """Sum of squares of the initial weights (float64): the reference model reloaded on resume must match."""


@dataclass(frozen=True)
class ResumeRules:
    """What differs between resuming a `grpo train` run and a `grpo sft` run."""

    command: str = "train"
    """The command, also the config section holding output_dir ('train' or 'sft'): named in messages."""
    state_type: type = TrainerState
    """The loop's state dataclass, trainer_state.json in every checkpoint (it has `step` and
    `init_fingerprint`)."""
    may_change: frozenset = frozenset(MAY_CHANGE_ON_RESUME)
    """Config keys that may differ between the run and its resume."""


class TrainingInterrupted(KeyboardInterrupt):
    """A stop signal (`stop_signals`) stopped the run after a step; a checkpoint of that step was saved.
    Before the first step (during the first held-out evaluation) nothing was trained: no checkpoint,
    `checkpoint` is None. `command`: the one to resume with ('train' or 'sft')."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, output_dir: Path,
                 command: str = "train"):
        self.signum, self.step, self.checkpoint, self.output_dir = signum, step, checkpoint, output_dir
        name = signal.Signals(signum).name
        if checkpoint is None:
            super().__init__(f"interrupted before step 1 ({name}), during the first held-out evaluation; "
                             f"nothing was trained and no checkpoint was written (run again to start over)")
        else:
            super().__init__(f"interrupted at step {step} ({name}); checkpoint saved to {checkpoint}; resume "
                             f"with: grpo {command} --resume {output_dir}")


def weights_fingerprint(model) -> float:
    return math.fsum(float(p.detach().double().square().sum()) for p in model.parameters())


# ---------------------------------------------------------------------------------------------------
# Writing


def save_checkpoint(out: Path, cfg, state, model, optimizer, scheduler,
                    gen: torch.Generator | None, keep: int, extra: dict | None = None, dist: Dist = SINGLE,
                    sampling: list[torch.Tensor] | None = None) -> Path:
    """Write OUTPUT/checkpoints/step-NNNNNN atomically, then delete all but the newest `keep`.

    Under torchrun every rank calls it: rank 0 writes every file, except under FSDP the weights and
    optimizer state, which every rank writes its own shard of into the same temporary directory
    (`shards/`, `save_shards`); a failure on any rank fails the save on every rank alike (the same
    error), and the temporary directory is removed. `extra`: further state dicts of the run (PPO's value
    model and its optimizer, iterative GRPO's reset reference), saved as extra.pt and given back by
    `load_extra`. `sampling`: every rank's sampling-generator state, by rank. `state`: the loop's state
    dataclass (`TrainerState`, or SFT's), with its `step`; `gen`: None where the loop samples nothing (SFT).
    """
    root = out / CHECKPOINTS
    final = root / f"step-{state.step:06d}"
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    try:
        # Each stage ends with every rank knowing whether any rank failed in it (first_error, a collective).
        error = first_error(_attempt(lambda: start_checkpoint(root, tmp)) if dist.is_main else None, dist)
        if error is None and dist.fsdp:
            error = first_error(_attempt(lambda: save_shards(tmp / SHARDS, model, optimizer)), dist)
        if error is None and dist.is_main:
            error = _attempt(lambda: _finish(tmp, final, old, root, cfg, state, model, optimizer, scheduler,
                                             gen, extra, dist, sampling))
        error = first_error(error, dist)
    except BaseException:
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if error is not None:
        message = None
        if dist.is_main:  # rank 0 words it, so that every rank raises the same message
            shutil.rmtree(tmp, ignore_errors=True)
            previous = latest_checkpoint(out)
            kept = (
                f"the last complete checkpoint, {previous}, is untouched"
                if previous
                else "no earlier checkpoint exists"
            )
            message = (f"cannot write checkpoint {final}: {error} ({shutil.disk_usage(out).free / 2**20:.1f} "
                       f"MiB free on its disk); {kept}")
        raise UserError(first_error(message, dist))
    if dist.is_main:
        shutil.rmtree(old, ignore_errors=True)
        for stale in complete_checkpoints(root)[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def _attempt(write) -> str | None:
    """None if write() succeeded, else why it failed, in one line."""
    try:
        write()
    except Exception as e:
        return e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())[:500]
    return None


def _finish(tmp: Path, final: Path, old: Path, root: Path, cfg, state, model, optimizer,
            scheduler, gen: torch.Generator | None, extra: dict | None, dist: Dist, sampling) -> None:
    """Rank 0: the files besides the shards, everything fsynced, then the rename that completes it."""
    rng = _rng_states(gen)
    if not dist.fsdp:  # under FSDP the shards hold the weights and the optimizer state
        trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if len(trained) < len(list(model.parameters())):  # LoRA: 20 MB of adapters, not the 540 MB base
            save_file({n: p.detach().contiguous() for n, p in trained.items()}, str(tmp / TRAINABLE))
        else:
            save_model(model, str(tmp / "model.safetensors"))
    opt = {} if dist.fsdp else {"optimizer": optimizer.state_dict()}
    torch.save({**opt, "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    if sampling is not None and len(sampling) > 1:
        rng["sampling_by_rank"] = sampling
    torch.save(rng, tmp / "rng.pt")
    if extra:
        torch.save(extra, tmp / "extra.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(asdict(state)), encoding="utf-8")
    save_config(cfg, tmp / "config.yaml")
    finish_checkpoint(tmp, final, old, root)


def _rng_states(gen: torch.Generator | None) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "sampling": gen.get_state() if gen is not None else None,
        "python": _json_rng(random.getstate()),
    }


def _json_rng(state: tuple) -> list:
    """`random.getstate()` as plain lists (JSON and torch's weights-only loader both take those)."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _from_json_rng(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


# ---------------------------------------------------------------------------------------------------
# Reading


def load_checkpoint(path: Path, cfg, model, optimizer, scheduler, gen: torch.Generator | None,
                    init_fingerprint: float, dist: Dist = SINGLE, rules: ResumeRules = ResumeRules()):
    """Restore everything `save_checkpoint` wrote into the given objects; returns the loop's state (a
    `rules.state_type`).

    `init_fingerprint` is that of the freshly loaded initial weights (the reference model). Every
    rank reads the checkpoint: an FSDP-sharded model and optimizer take their shards of the full state;
    each rank continues its own sampling stream where the checkpoint has one for it.
    """
    verify_checkpoint(path, rules.command)
    _check_same_config(path, cfg, rules)
    part = "trainer_state.json"
    try:
        state = rules.state_type(**json.loads((path / part).read_text(encoding="utf-8")))
        sharded = (path / SHARDS).is_dir()  # written under FSDP: weights and optimizer state in the shards
        part = SHARDS if sharded else TRAINABLE if (path / TRAINABLE).is_file() else "model.safetensors"
        if sharded:  # into FSDP shards over any number of ranks, or a whole model
            load_shards(path / SHARDS, model, optimizer)
        elif part == TRAINABLE:  # the frozen weights are model.path's (the fingerprint below checks them)
            _load_trainable(model, load_file(str(path / part)), dist)
        elif dist.fsdp:
            load_full_state(model, optimizer, load_file(str(path / part)), None)
        else:
            load_model(model, str(path / part), device=str(next(model.parameters()).device))
        part = "optimizer.pt"
        opt = torch.load(path / part, weights_only=True)
        if not sharded and dist.fsdp:  # written by one process or DDP, resumed under FSDP: by name
            load_full_state(model, optimizer, None, _by_name(model, opt["optimizer"]))
        elif not sharded:
            optimizer.load_state_dict(opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
        part = "rng.pt"
        rng = torch.load(path / part, weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} cannot be loaded ({part}: {' '.join(str(e).split())[:300]}); "
                        "delete that directory to resume from the one before it") from None
    if not math.isclose(state.init_fingerprint, init_fingerprint, rel_tol=1e-9):
        why = "the KL reference" if rules.command == "train" else "the frozen weights"
        raise UserError(
            f"cannot resume from {path}: the initial weights in model.path={cfg.model.path} are "
            f"not those the run started from, so {why} would change; restore that model"
        )
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if gen is not None:  # None: the loop samples nothing (SFT)
        _restore_sampling(gen, rng, cfg, state.step, dist)
    random.setstate(_from_json_rng(rng["python"]))
    return state


def _restore_sampling(gen: torch.Generator, rng: dict, cfg, step: int, dist: Dist) -> None:
    """This rank's sampling stream as saved; a fresh one where the checkpoint was written by another
    number of processes."""
    by_rank = rng.get("sampling_by_rank") or []
    if len(by_rank) == dist.world_size:
        gen.set_state(by_rank[dist.rank])
    elif dist.rank == 0:
        gen.set_state(rng["sampling"])
    else:  # saved by another number of processes: a fresh stream, distinct per rank and step
        gen.manual_seed(sampling_seed(cfg.train.seed, dist) + 1_000_003 * step)


def _by_name(model, optim: dict) -> dict:
    """An `optimizer.state_dict()` (parameters numbered in `make_optimizer`'s order: the model's trainable
    parameters) keyed by parameter name instead, as torch.distributed.checkpoint's full state dict is."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return {"state": {names[i]: s for i, s in optim["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in optim["param_groups"]]}


def load_extra(path: Path) -> dict:
    """The `extra` state dicts saved with the checkpoint at `path` ({} if none)."""
    f = path / "extra.pt"
    if not f.exists():
        return {}
    try:
        return torch.load(f, weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} cannot be loaded (extra.pt: {' '.join(str(e).split())[:300]}); "
                        "delete that directory to resume from the one before it") from None


def _load_trainable(model, weights: dict, dist: Dist) -> None:
    """A checkpoint's trained weights (`TRAINABLE`) into the model; they must be
    exactly its trainable ones."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != trainable:
        missing, extra = sorted(trainable - set(weights)), sorted(set(weights) - trainable)
        raise ValueError(f"its trained weights are not this model's (missing {missing[:2]}, unexpected "
                         f"{extra[:2]}); was model.lora changed?")
    if dist.fsdp:
        load_full_state(model, None, weights, None, strict=False)
    else:
        with torch.no_grad():
            params = dict(model.named_parameters())
            for n, w in weights.items():
                params[n].copy_(w)


def _check_same_config(path: Path, cfg, rules: ResumeRules) -> None:
    """A resume continues the same run: only `rules.may_change` keys may differ."""
    try:
        saved = _flatten(yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"checkpoint {path} cannot be loaded (config.yaml: {e})") from None
    now = _flatten(yaml.safe_load(yaml.safe_dump(to_dict(cfg))))
    diffs = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)
             and k not in rules.may_change]
    if diffs:
        shown = ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in diffs[:3])
        more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        raise UserError(f"cannot resume from {path}: the config differs from the run's in {shown}{more}; "
                        f"resume with the run's own config (grpo {rules.command} --resume DIR reads it), or "
                        f"start a new {rules.command}.output_dir")


def _flatten(tree: dict, prefix: str = "") -> dict:
    """{"grpo": {"beta": 0.04}, "algorithm": "grpo"} -> {"grpo.beta": 0.04, "algorithm": "grpo"}"""
    flat = {}
    for k, v in tree.items():
        flat.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return flat


def restore_logs(out: Path, step: int, sizes: dict[str, int], command: str = "train") -> list[dict]:
    """Cut each log file in `sizes` (metrics.jsonl, samples.jsonl: their lengths in bytes when the
    checkpoint of `step` was written) back to that length, so that a resumed run's files equal an
    uninterrupted run's; returns the metrics.jsonl lines kept."""
    for name, size in sizes.items():
        f = out / name
        have = f.stat().st_size if f.exists() else 0
        if have < size:
            raise UserError(f"{f} is shorter than when the checkpoint of step {step} was written "
                            f"({have} < {size} bytes); restore it, or start a new {command}.output_dir")
        with open(f, "ab") as fh:
            fh.truncate(size)
    text = (out / "metrics.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


# ---------------------------------------------------------------------------------------------------
# Stopping cleanly


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop a run with a checkpoint: SIGINT (Ctrl-C), SIGTERM, and SIGHUP (the terminal
    closed) unless it is ignored (`nohup`: the run is meant to outlive its terminal)."""
    hangup = getattr(signal, "SIGHUP", None)
    keep = hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN
    return (signal.SIGINT, signal.SIGTERM, *((hangup,) if keep else ()))


class StopSignals:
    """While active, the `stop_signals` set `signum` instead of killing the process.

    The loop reads it after each step, saves a checkpoint and stops (`TrainingInterrupted`). A second
    signal raises KeyboardInterrupt at once: stop now, without a checkpoint. On SIGHUP the terminal is
    gone, and writing to it would fail (EIO) in the middle of the step: stdout and stderr are sent to
    /dev/null first. Handlers can only be set from the main thread; elsewhere this does nothing.
    """

    def __enter__(self) -> StopSignals:
        self.signum: int | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for s in stop_signals():
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        if signum == getattr(signal, "SIGHUP", None):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            os.close(null)
        # A signal handler must not take locks (logging does): write directly.
        sys.stderr.write(f"\ngrpo: {signal.Signals(signum).name} received; stopping after this step with a "
                         "checkpoint (send it again to stop at once, without one)\n")

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
