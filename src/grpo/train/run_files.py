"""What a run writes besides metrics and checkpoints: its directory (checked before anything is written:
writable, free space, agreeing with --resume) and resolved config, sample completions, the final model (and a
retrained reward model), the training plot. Every write failure is one `UserError` line."""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors import SafetensorError

from grpo.config import save_config
from grpo.errors import UserError
from grpo.models.loading import is_lora, unsharded_copy
from grpo.plotting import plot_training
from grpo.train.checkpoint_files import CHECKPOINTS, latest_checkpoint


RUN_FILES = ("config.yaml", "metrics.jsonl", "samples.jsonl", "checkpoints", "final", "final.tmp",
             "tiny-init",
             "tensorboard", "wandb", "training.png", "reward_model")
"""What `grpo train` and `grpo sft` write in their output directory (besides the lock file): what --overwrite
removes, and what marks a directory as holding a run."""
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints", "final")
"""Any of these in a directory: it holds a run (finished, stopped or resumable)."""


def run_files_in(path: str | Path) -> list[str]:
    """The RUN_MARKERS present in `path` (none for a directory that does not exist)."""
    out = Path(path)
    return [name for name in RUN_MARKERS if (out / name).exists()] if out.is_dir() else []


def refuse_existing_run(path: str | Path, overwrite: bool, key: str) -> None:
    """A directory holding a run is not written into unless `overwrite` (the CLI's --overwrite) says so."""
    found = run_files_in(path)
    if found and not overwrite:
        kind = "finished run" if "final" in found else "run"
        raise UserError(f"{key} {path} already holds a {kind} ({', '.join(found)}); replace it with "
                        f"--overwrite (Python: overwrite=True), or choose another {key}")


def prepare_output_dir(path: str | Path, cfg, overwrite: bool = False) -> Path:
    """Create the run directory (checked writable up front) and save the resolved config in it.
    overwrite: first remove the RUN_FILES an earlier run left there (nothing else in the directory)."""
    out = Path(path)
    try:
        for name in RUN_FILES if overwrite else ():
            old = out / name
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            elif old.exists() or old.is_symlink():
                old.unlink()
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output directory {out} is not writable: {e.strerror or e}") from None
    save_config(cfg, out / "config.yaml")
    return out


def check_output_dir(path: str | Path, resume: bool, overwrite: bool = False,
                     section: str = "train") -> Path | None:
    """Check that `path` can be written (without creating it) and agrees with `resume`.

    Returns the newest complete checkpoint when resuming. A fresh run into a directory that already
    holds a run (checkpoints, a final model, metrics or a config) is refused unless `overwrite`: its
    checkpoints would be mixed with (and pruned by) the new run's, its metrics appended to. `section`:
    the config section of the run's output_dir, save_every and resume ('train' or 'sft'), and its command.
    """
    out, key = Path(path), f"{section}.output_dir"
    probe_dir = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not probe_dir.is_dir():
        raise UserError(f"{key} {out}: {probe_dir} exists and is not a directory")
    try:
        with tempfile.TemporaryFile(dir=probe_dir):
            pass
    except OSError as e:
        raise UserError(f"{key} {out} is not writable ({probe_dir}: {e.strerror or e})") from None
    latest = latest_checkpoint(out)
    if resume and latest is None:
        raise UserError(f"nothing to resume: {out / CHECKPOINTS} holds no complete checkpoint ({section}."
                        "save_every > 0 writes them; an interrupted run writes one when it stops)")
    if not resume and latest is not None and not overwrite:
        raise UserError(f"{key} {out} already holds checkpoints (newest: {latest.name}); continue that run "
                        f"with --resume {out} (or {section}.resume=true), replace it with --overwrite, or "
                        f"choose another {key}")
    if not resume:
        refuse_existing_run(out, overwrite, key)
    return latest if resume else None


def check_free_space(path: str | Path, model, checkpoints: bool, section: str = "train") -> None:
    """The final model and, when checkpoints are on, one checkpoint (weights +
    Adam's two moments) must fit. `section`: the config section of the run's output_dir ('train' or 'sft')."""
    out = Path(path)
    existing = out if out.exists() else next(p for p in out.parents if p.exists())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    need = weights * (4 if checkpoints else 1)
    free = shutil.disk_usage(existing).free
    if free < need:
        raise UserError(f"{section}.output_dir {out}: {free / 2**20:.1f} MiB free on its disk, but the final "
                        f"model{' and one checkpoint' if checkpoints else ''} need about {need / 2**20:.1f} "
                        "MiB")


def save_model(model, tokenizer, path: Path, state_dict: dict | None = None) -> None:
    """save_pretrained into a temporary directory, then rename: a crash never leaves half a model.

    state_dict: the weights to write instead of the model's own (FSDP: the gathered full weights)."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if is_lora(model):  # the adapter alone, and the merged model that plain transformers loads
        if state_dict is not None:  # FSDP: this process holds shards; an unsharded copy from the full weights
            model = unsharded_copy(model, state_dict)
        model.save_pretrained(tmp / "adapter")
        (model if state_dict is not None else copy.deepcopy(model)).merge_and_unload().save_pretrained(tmp)
    else:
        model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def write_samples(samples, step: int, rows: list[dict], texts: list[str], rewards, G: int) -> None:
    """The first completion of each group, with its prompt and reward, as JSON lines."""
    try:
        for i in range(0, len(texts), G):
            samples.write(json.dumps({"step": step, "prompt": rows[i // G]["prompt"], "completion": texts[i],
                                      "reward": rewards[i].item()}) + "\n")
        samples.flush()
    except OSError as e:
        raise UserError(f"cannot write {samples.name}: {e.strerror or e}") from None


def save_final(model, tokenizer, out: Path, rm_trainer=None, state_dict: dict | None = None) -> None:
    """OUT/final (the policy; `state_dict`: its full weights where the model holds FSDP shards) and, with a
    retrained reward model, OUT/reward_model (loadable as rewards.model.path)."""
    try:
        save_model(model, tokenizer, out / "final", state_dict)
        if rm_trainer is not None:
            rm_trainer.rm.model.save_pretrained(out / "reward_model")
            rm_trainer.rm.tokenizer.save_pretrained(out / "reward_model")
    except (OSError, SafetensorError) as e:
        raise UserError(f"cannot write the final model to {out / 'final'}: {e}") from None


def plot(out: Path, history: list[dict]) -> None:
    plot_training(history, out / "training.png")
