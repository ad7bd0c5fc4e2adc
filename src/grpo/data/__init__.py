"""Datasets: the built-in synthetic task, or user files through `grpo.data.loading`.

`load_task` returns rows that all carry a `prompt` (already rendered to text) and, where the data
has one, an `answer`; every other column rides along to the reward functions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from grpo.config import DataConfig
from grpo.data import calculator
from grpo.data.loading import load_rows
from grpo.data.synthetic import VALIDATION_PERCENT, make_rows
from grpo.data.templates import TEMPLATES, check_prompt_lengths, encode_prompts, render_prompt
from grpo.errors import UserError

__all__ = ["Task", "load_task", "split_validation", "load_rows", "render_prompt", "encode_prompts"]


@dataclass
class Task:
    train: list[dict]
    heldout: list[dict]
    num_dropped: int = 0  # prompts dropped for being longer than max_prompt_length
    validation: list[dict] = field(default_factory=list)  # for choosing a checkpoint; disjoint from both


def _render(rows: list[dict], cfg: DataConfig, tokenizer, tools: list[dict] | None = None) -> list[dict]:
    template = TEMPLATES.get(cfg.template, cfg.template) if cfg.template else None
    return [{**r, "prompt": render_prompt(r["prompt"], tokenizer, template, tools)} for r in rows]


def _check_lengths(rows: list[dict], cfg: DataConfig, tokenizer, name: str) -> tuple[list[dict], int]:
    """Drop (or refuse) rows whose prompt is longer than max_prompt_length tokens as the model sees it,
    special tokens included: the ids `encode_prompts` gives the rollout."""
    ids = encode_prompts(tokenizer, [r["prompt"] for r in rows])
    check = check_prompt_lengths(ids, cfg.max_prompt_length, policy=cfg.on_long_prompt, source_name=name)
    return [rows[i] for i in check.kept], check.num_dropped


VALIDATION_SEED = 1234
"""Seeds the choice of the validation rows set aside from a training file: the same rows for every
`train.seed`/`sft.seed`, so every seed of a comparison chooses its checkpoints on the same problems."""


def split_validation(rows: list[dict], n: int, source: str) -> tuple[list[dict], list[dict]]:
    """(train, validation): `n` rows of a training file set aside for choosing checkpoints, never trained
    on. The rows are a fixed pseudo-random choice (`VALIDATION_SEED`), so a file sorted by difficulty
    or topic still gives a representative split; the rest keep their order.

    >>> split_validation([{"i": i} for i in range(5)], 2, "f")
    ([{'i': 1}, {'i': 2}, {'i': 4}], [{'i': 3}, {'i': 0}])
    """
    if n <= 0:
        return rows, []
    if n >= len(rows):
        raise UserError(f"data.num_validation={n}: {source} has only {len(rows)} rows; set aside fewer for "
                        "validation (or give data.validation_source)")
    chosen = random.Random(VALIDATION_SEED).sample(range(len(rows)), n)
    keep = set(chosen)
    return [r for i, r in enumerate(rows) if i not in keep], [rows[i] for i in chosen]


def load_task(cfg: DataConfig, tokenizer, seed: int = 0, tools: list[dict] | None = None) -> Task:
    """tools: function schemas rendered into chat prompts (rollout.tools)."""
    if cfg.source == "builtin:arithmetic":
        space = dict(num_steps=cfg.task_steps, max_value=cfg.task_max_value, max_delta=cfg.task_max_delta,
                     multiply=cfg.task_multiply,
                     validation_percent=VALIDATION_PERCENT if cfg.num_validation else 0)
        try:
            train = make_rows(cfg.num_train, "train", seed, cfg.direct_fraction, **space)
            validation = make_rows(cfg.num_validation, "validation", seed,
                                   **space) if cfg.num_validation else []
            heldout = make_rows(cfg.num_heldout, "heldout", seed, **space)
        except ValueError as e:
            raise UserError(f"data (builtin:arithmetic): {e}; lower data.num_train, num_validation or "
                            "num_heldout, or enlarge the task (data.task_steps, task_max_value, "
                            "task_max_delta)") from None
    elif cfg.source == "builtin:calculator":  # a task where a calculator tool pays (docs/tools.md)
        train = calculator.make_rows(cfg.num_train, "train", seed, cfg.direct_fraction)
        heldout = calculator.make_rows(cfg.num_heldout, "heldout", seed)
        validation = []
    elif cfg.source.startswith("builtin:"):
        raise UserError(f"data.source: unknown built-in task {cfg.source!r} (available: builtin:arithmetic, "
                        "builtin:calculator)")
    else:
        kw = dict(split=cfg.split, prompt_column=cfg.prompt_column, answer_column=cfg.answer_column)
        train = load_rows(cfg.source, **kw)
        heldout = load_rows(cfg.heldout_source, **kw)[: cfg.num_heldout] if cfg.heldout_source else []
        if cfg.validation_source:
            validation = load_rows(cfg.validation_source, **kw)[: cfg.num_validation or None]
        else:
            train, validation = split_validation(train, cfg.num_validation, cfg.source)
    train, dropped = _check_lengths(_render(train, cfg, tokenizer, tools), cfg, tokenizer, cfg.source)
    heldout, dropped_h = _check_lengths(_render(heldout, cfg, tokenizer, tools), cfg, tokenizer,
                                        cfg.heldout_source or cfg.source)
    validation, dropped_v = _check_lengths(_render(validation, cfg, tokenizer, tools), cfg, tokenizer,
                                           cfg.validation_source or cfg.source)
    if cfg.num_validation and not validation:
        raise UserError(f"data.num_validation={cfg.num_validation}: {cfg.source} has no validation split "
                        "(builtin:arithmetic makes one; for files set data.validation_source)")
    if not train:
        raise UserError(f"data.source {cfg.source}: no training prompts left after dropping {dropped} too "
                        "long")
    return Task(train, heldout, dropped + dropped_h + dropped_v, validation)
