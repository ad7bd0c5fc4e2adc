"""grpo from Python: a config object, then `train`, `sft` or `evaluate` (what the CLI commands call).

    from grpo.api import TrainConfig, load_config, train

    def brevity(prompts, completions, completion_ids, **columns):
        return [1.0 / (1 + len(ids)) for ids in completion_ids]

    cfg = load_config(TrainConfig, overrides=["train.steps=20", "train.output_dir=runs/api"])
    result = train(cfg, rewards=["arithmetic_accuracy", (brevity, 0.1)], quiet=True)

`load_config(cls, path=None, overrides=None)` builds and validates a config (defaults <- YAML file <-
`section.key=value` overrides; `grpo config train` lists the keys); the dataclasses can also be edited
in place (`cfg.train.steps = 20`) and are validated again by `train`/`sft`. Reward functions follow the
contract of docs/rewards.md, whether given by reference in the config or as callables to `train`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from grpo.config import DemoConfig, ModelConfig, RewardEntry, SFTConfig, TrainConfig
from grpo.config_io import load_config
from grpo.data import load_task
from grpo.errors import UserError
from grpo.rewards.loader import load_reward_function

__all__ = ["DemoConfig", "SFTConfig", "TrainConfig", "UserError", "evaluate", "load_config",
           "quiet_libraries",
           "sft", "train"]

Reward = str | Callable | tuple
"""A reward for `train(rewards=...)`: a reference as in the config ('math_accuracy', 'file.py:fn'), a
callable, or (either, weight)."""


def quiet_libraries() -> None:
    """No progress bars or notices from transformers, huggingface_hub and datasets, in this process from
    now on (and its subprocesses: through the environment). grpo's own bar is switched by `progress`."""
    for name in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ[name] = "1"  # read by datasets / huggingface_hub when they are imported
    # after the variables above are set, and not at the top: transformers is a
    # heavy import --help does not need
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    datasets = sys.modules.get("datasets")  # not imported yet: it reads the environment when it is
    if datasets is not None:
        datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.nn.modules.module")


def _reward_entries(rewards: Sequence[Reward]) -> tuple[list[RewardEntry], dict[str, Callable]]:
    """rewards.functions entries (callables by their __name__) and the callables by name."""
    entries, callables = [], {}
    for item in rewards:
        fn, weight = item if isinstance(item, tuple) else (item, 1.0)
        if callable(fn):
            name = getattr(fn, "__name__", None)
            if not name or name == "<lambda>" or name in callables:
                raise UserError("train(rewards=...): give each callable a distinct function name, got "
                                f"{name!r}")
            callables[name] = fn
            fn = name
        elif not isinstance(fn, str):
            raise UserError("train(rewards=...): expected a reference, a callable or (either, weight), got "
                            f"{item!r}")
        entries.append(RewardEntry(fn=fn, weight=weight))
    return entries, callables


def train(cfg: TrainConfig, rewards: Sequence[Reward] | None = None, quiet: bool = False,
          overwrite: bool = False):
    """GRPO (or cfg.algorithm's baseline) as configured -> `grpo.train.grpo.TrainResult` (accuracy before and
    after on the held-out set, steps, seconds, metrics history, output_dir with `final/` in it).

    rewards: replaces rewards.functions (the first one is also the held-out accuracy). Callables are
    recorded in config.yaml by their name and run in the training process (reference a module's function
    as 'module:fn' for rewards.workers and timeouts). quiet: no progress bars at all (`quiet_libraries`).
    overwrite: replace a run already in train.output_dir (else it is refused).
    """
    # imports torch: here, so that `import grpo.api` (the CLI imports it for every command) stays light
    from grpo.train.grpo import train as train_loop

    callables = {}
    if rewards is not None:
        cfg.rewards.functions, callables = _reward_entries(rewards)
    cfg.validate()
    if quiet:
        quiet_libraries()
    return train_loop(cfg, progress=not quiet, overwrite=overwrite, reward_fns=callables)


def sft(cfg: SFTConfig, quiet: bool = False, overwrite: bool = False):
    """Supervised fine-tuning until held-out accuracy plateaus -> `grpo.train.sft.SFTResult` (its
    model_dir is the best checkpoint, a Hugging Face directory to start `train` from: model.path)."""
    # imports torch: here, so that `import grpo.api` (the CLI imports it for every command) stays light
    from grpo.train.sft import sft as sft_loop

    cfg.validate()
    if quiet:
        quiet_libraries()
    return sft_loop(cfg, progress=not quiet, overwrite=overwrite)


def evaluate(model: str | Path, cfg: TrainConfig | None = None, n: int = 8, ks: Sequence[int] = (1, 2, 4, 8),
             num_prompts: int = 200, quiet: bool = False):
    """Greedy accuracy, pass@k and maj@k of `model` (a directory such as `result.output_dir / "final"`, or
    'tiny') on the held-out set of `cfg` (default: the built-in task's), judged by its first reward
    function, sampled with its sampling settings and seed -> `grpo.train.evaluation.EvalResult`."""
    # imports torch: here, so that `import grpo.api` (the CLI imports it for every command) stays light
    from grpo.train.evaluation import answer_equivalence, answer_extractor, evaluate_policy
    from grpo.models.loading import load_policy

    cfg = cfg or TrainConfig()
    if quiet:
        quiet_libraries()
    data = cfg.data
    if not (data.source.startswith("builtin:") or data.heldout_source):
        raise UserError(f"evaluate: {data.source} has no held-out set; set data.heldout_source")
    first = cfg.rewards.functions[0]
    checker = load_reward_function(first.fn, first.options)
    with tempfile.TemporaryDirectory() as tiny_dir:
        policy, tokenizer = load_policy(ModelConfig(path=str(model), device=cfg.model.device), Path(tiny_dir))
    task = load_task(dataclasses.replace(data,
                                         num_train=min(data.num_train, 1)
                                         if data.source.startswith("builtin:")
                                         else data.num_train, num_heldout=num_prompts), tokenizer,
                                         cfg.train.seed)
    s = cfg.sampling
    return evaluate_policy(policy.eval(), tokenizer, task.heldout, checker,
                           answer_extractor(first.fn, first.options),
                           n=n, ks=ks, temperature=s.temperature, top_p=s.top_p,
                           max_new_tokens=s.max_new_tokens,
                           seed=cfg.train.seed, equivalent=answer_equivalence(first.fn, first.options))
