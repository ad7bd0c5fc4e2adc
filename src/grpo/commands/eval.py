"""`grpo eval`: greedy accuracy, pass@k and maj@k of a model on a dataset (DeepSeekMath §5.2.2).

    grpo eval --model runs/demo/grpo/final                       # the built-in task's held-out split
    grpo eval --model /models/qwen --data test.jsonl --reward math_accuracy --n 16 --k 1,4,16
    grpo eval --config runs/grpo/config.yaml --model runs/grpo/final   # a run's data, sampling and reward

Correctness is decided by the reward function itself (`--reward`, the training accuracy reward); the
estimators and their definitions are in `grpo.train.evaluation` and docs/evaluation.md.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from grpo.config import DataConfig, ModelConfig, TrainConfig, load_config
from grpo.config_io import add_config_arguments
from grpo.errors import UserError
from grpo.utils.json_text import json_text



def parse_ks(text: str) -> list[int]:
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--k: expected comma-separated integers like 1,2,4,8, got {text!r}") from None
    if not ks:
        raise UserError("--k: give at least one k")
    return ks


def _load_rows(args, tokenizer) -> list[dict]:
    from grpo.data import load_task  # imports torch: not at module top, so that `grpo --help` stays light

    builtin = args.data.startswith("builtin:")
    cfg = DataConfig(source=args.data, split=args.split, prompt_column=args.prompt_column,
                     answer_column=args.answer_column, template=args.template,
                     max_prompt_length=args.max_prompt_length, num_train=1, num_heldout=args.num_prompts)
    try:
        task = load_task(cfg, tokenizer, args.seed)
    except UserError as e:  # the built-in task has a finite held-out split
        if not builtin:
            raise
        raise UserError(f"--num-prompts {args.num_prompts}: {e}") from None
    return task.heldout if builtin else task.train[:args.num_prompts]


CONFIG_FIELDS = {"model": "model.path", "device": "model.device", "data": "data.source",
                 "split": "data.split",
                 "prompt_column": "data.prompt_column", "answer_column": "data.answer_column",
                 "template": "data.template", "max_prompt_length": "data.max_prompt_length",
                 "max_new_tokens": "sampling.max_new_tokens", "temperature": "sampling.temperature",
                 "top_p": "sampling.top_p", "seed": "train.seed"}
"""The `grpo eval` flags a `grpo train` config (--config, overrides) supplies when they are left out."""


def apply_config(args) -> None:
    """Fill the flags left out from the `grpo train` config of --config and the overrides (defaults where
    neither is given), as `grpo train` resolves it; the reward is then the config's first reward function,
    the one training's held-out accuracy uses. --model is needed unless a config or override names a model."""

    given = args.config is not None or bool(args.overrides)
    cfg = load_config(TrainConfig, args.config, args.overrides)
    if args.model is None and not given:
        raise UserError("grpo eval: --model is required (or a config: --config FILE.yaml, model.path=DIR)")
    for flag, dotted in CONFIG_FIELDS.items():
        if getattr(args, flag) is None:
            section, key = dotted.split(".")
            setattr(args, flag, getattr(getattr(cfg, section), key))
    if given and args.reward is None:
        first = cfg.rewards.functions[0]
        args.reward = first.fn
        if args.reward_options is None and first.options:
            args.reward_options = yaml.safe_dump(first.options, default_flow_style=True).strip()


def _cmd_eval(args) -> None:
    # the library imports torch: here rather than at module top, so that `grpo --help` stays light
    from grpo.models.loading import load_policy
    from grpo.rewards.loader import load_reward_function
    from grpo.train.evaluation import (answer_equivalence, answer_extractor, evaluate_policy, format_result,
                                       result_to_json)

    apply_config(args)
    ks = parse_ks(args.k)
    if args.n < 1 or max(ks) > args.n or min(ks) < 1:
        raise UserError(f"--k {args.k}: every k must be between 1 and --n {args.n}")
    if args.num_prompts < 1:
        raise UserError("--num-prompts must be >= 1")
    reward = args.reward or ("arithmetic_accuracy" if args.data.startswith("builtin:") else "math_accuracy")
    options = yaml.safe_load(args.reward_options) if args.reward_options else {}
    if not isinstance(options, dict):
        raise UserError(
            f"--reward-options: expected a mapping like '{{gold_style: gsm8k}}', got {args.reward_options!r}"
        )
    checker = load_reward_function(reward, options)
    with tempfile.TemporaryDirectory() as tiny_dir:
        model, tokenizer = load_policy(ModelConfig(path=args.model, device=args.device), Path(tiny_dir))
    rows = _load_rows(args, tokenizer)
    if not rows:
        raise UserError(f"--data {args.data}: no prompts to evaluate")
    res = evaluate_policy(model.eval(), tokenizer, rows, checker, answer_extractor(reward, options), n=args.n,
                          ks=ks,
                          temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                          seed=args.seed, batch_size=args.batch_size,
                          equivalent=answer_equivalence(reward, options))
    title = (f"{args.model} on {args.data}: {res.num_prompts} prompts, reward {reward}, n={res.n} samples at "
             f"temperature {args.temperature:g}")
    print(format_result(res, title))
    if args.out is None:  # beside the model, where it is a directory; else here
        args.out = str(Path(args.model) / "eval.json") if Path(args.model).is_dir() else "eval.json"
    if args.out:
        settings = {k: v for k, v in vars(args).items() if k not in ("fn", "quiet")}
        settings.update(reward=reward, ks=ks)
        out = Path(args.out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json_text(result_to_json(res, settings)) + "\n", encoding="utf-8")
        except OSError as e:
            raise UserError(f"--out {out}: cannot write ({e.strerror or e})") from None
        print(f"wrote {out}")


def build_eval_parser(subparsers) -> None:
    """Add `grpo eval` to the CLI's subparsers; its `fn(args)` evaluates and prints the table."""
    p = subparsers.add_parser("eval", help="greedy accuracy, pass@k and maj@k of a model on a dataset",
                              description=__doc__.split("\n\n")[0])
    add_config_arguments(p,
                         "a `grpo train` YAML config (e.g. a run's config.yaml): model, data, sampling, seed "
                            "and reward come from it where their flags are left out")
    p.add_argument("--model", default=None,
                   help="a local Hugging Face model directory, or 'tiny' (model.path)")
    p.add_argument("--data", default=None,
                   help="builtin:arithmetic (its held-out split) or a .jsonl/.json/.parquet/.csv/datasets "
                        "directory (data.source; default builtin:arithmetic)")
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--k", default="1,2,4,8", help="comma-separated k for pass@k and maj@k (each <= n)")
    p.add_argument("--out", default=None,
                   help="JSON results (default: MODEL_DIR/eval.json, or ./eval.json for 'tiny'; '' to skip)")
    p.add_argument("--reward", default=None,
                   help="accuracy reward that judges correctness (default: arithmetic_accuracy for the "
                        "built-in task, math_accuracy otherwise; any reward reference works)")
    p.add_argument("--reward-options", default=None,
                   help="YAML mapping of the reward's options, e.g. '{gold_style: gsm8k}'")
    p.add_argument("--prompt-column", default=None, help="data.prompt_column (default prompt)")
    p.add_argument("--answer-column", default=None, help="data.answer_column (default answer)")
    p.add_argument("--template", default=None, help="'r1' or a string with {prompt} (data.template)")
    p.add_argument("--split", default=None, help="split of a dataset directory / JSON of splits (data.split)")
    p.add_argument("--num-prompts", type=int, default=200, help="evaluate the first this many prompts")
    p.add_argument("--max-prompt-length", type=int, default=None, help="data.max_prompt_length (default 256)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="sampling.max_new_tokens (default 32)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature of the n samples (sampling.temperature, default 1.0)")
    p.add_argument("--top-p", type=float, default=None, help="sampling.top_p (default 1.0)")
    p.add_argument("--seed", type=int, default=None,
                   help="seeds sampling and picks the built-in held-out problems (train.seed, default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="completions generated per call")
    p.add_argument("--device", default=None, help="model.device (default auto)")
    p.set_defaults(fn=_cmd_eval, quiet=True)
