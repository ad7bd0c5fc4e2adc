"""What a `grpo train` run writes besides metrics and checkpoints: sample completions, the final model
(and a retrained reward model), the training plot. Every write failure is one `UserError` line."""

from __future__ import annotations

import json
from pathlib import Path

from grpo.errors import UserError
from grpo.train.common import save_model


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
    from safetensors import SafetensorError

    try:
        save_model(model, tokenizer, out / "final", state_dict)
        if rm_trainer is not None:
            rm_trainer.rm.model.save_pretrained(out / "reward_model")
            rm_trainer.rm.tokenizer.save_pretrained(out / "reward_model")
    except (OSError, SafetensorError) as e:
        raise UserError(f"cannot write the final model to {out / 'final'}: {e}") from None


def plot(out: Path, history: list[dict]) -> None:
    from grpo.plotting import plot_training

    plot_training(history, out / "training.png")
