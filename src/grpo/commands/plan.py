"""The `grpo plan` command: its arguments, the architecture they describe, and the printed plan.

The formulas are in grpo.plan; this module turns the command line into a `PlanInput`. As every command,
`grpo plan` takes a `grpo train` YAML config (`--config FILE.yaml`) and `section.key=value` overrides: the
run's model, precision, LoRA, algorithm and batch sizes then come from them, and a flag given overrides.

    grpo plan --config configs/smollm2_gsm8k.yaml --gpu-gib 24
    grpo plan --model /models/qwen2.5-7b --precision bf16 --G 64 --gpu-gib 80
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import grpo.plan
from grpo.config import TrainConfig, load_config
from grpo.config_io import add_config_arguments
from grpo.errors import UserError
from grpo.models.convert import resolve_model_path
from grpo.plan import (OPTIMIZER_STATE_BYTES, PRECISIONS, Architecture, PlanInput, architecture_from_config,
                       format_plan, plan_memory, tiny_architecture)


def _default_intermediate(h: int) -> int:
    return int(math.ceil(8 * h / 3 / 256) * 256)  # Llama's SwiGLU width rule


RUN_FLAGS = {"algorithm": "grpo", "precision": "fp32", "lora_rank": 0, "lora_targets": "all-linear",
             "beta": 0.04,
             "G": 8, "prompts_per_step": 16, "micro_batch": 64, "prompt_length": 256, "completion_length": 32}
"""The run flags a config fills when they are left out, and their defaults without one."""


def apply_config(args) -> None:
    """Fill the flags left out from the `grpo train` config of --config and the overrides: its model (unless
    --params describes one), precision, LoRA, algorithm, KL weight and batch
    shape, and whether its sampler is grpo's own (rollout.engine); else the flags' defaults."""
    args.lean_decoder = None  # as grpo's built-in engine decides for the model (`PlanInput.lean_decoder`)
    if args.config is None and not args.overrides:
        for flag, default in RUN_FLAGS.items():
            if getattr(args, flag) is None:
                setattr(args, flag, default)
        return
    cfg = load_config(TrainConfig, args.config, args.overrides)
    m, lora = cfg.model, cfg.model.lora
    attention_only = lora is not None and set(lora.target_modules) <= {"q_proj", "k_proj", "v_proj", "o_proj"}
    values = {"algorithm": "ppo" if cfg.algorithm == "ppo" else "grpo",
              "precision": "bf16-autocast" if m.dtype == "bfloat16" else "fp32",
              "lora_rank": lora.r if lora is not None else 0,
              "lora_targets": "attention" if attention_only else "all-linear",
              "beta": 0.0 if cfg.algorithm == "rft" else cfg.grpo.beta, "G": cfg.grpo.G,
              "prompts_per_step": cfg.train.prompts_per_step, "micro_batch": cfg.train.micro_batch_size,
              "prompt_length": cfg.data.max_prompt_length, "completion_length": cfg.sampling.max_new_tokens}
    for flag, value in values.items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    if args.micro_batch_tokens is None:
        args.micro_batch_tokens = cfg.train.micro_batch_tokens
    args.gradient_checkpointing = args.gradient_checkpointing or cfg.train.gradient_checkpointing
    if cfg.rollout.engine == "vllm":  # vLLM's cache, not the lean decoder's
        args.lean_decoder = False
    if args.model is None and args.params is None:
        if m.path == "tiny":
            args.model, args.hidden, args.layers = (
                "tiny",
                args.hidden or m.tiny_hidden_size,
                args.layers or m.tiny_num_layers,
            )
        else:
            args.model = str(resolve_model_path(m.path))


def architecture_from_args(args) -> Architecture:
    if args.model is not None and args.params is not None:
        raise UserError("grpo plan: give one of --model tiny, --model DIR, --params N")
    if args.model == "tiny":
        arch = tiny_architecture(args.hidden or 160, args.layers or 4)
    elif args.model is not None:
        arch = architecture_from_config(args.model)
    elif args.params is not None:
        if not (args.layers and args.hidden):
            raise UserError("--params needs the architecture too: --layers and --hidden (optionally --heads, "
                            "--kv-heads, --intermediate, --vocab)")
        arch = Architecture(num_layers=args.layers, hidden_size=args.hidden,
                            intermediate_size=_default_intermediate(args.hidden),
                            num_heads=max(1, args.hidden // 128),
                            num_kv_heads=0, head_dim=0, vocab_size=32000)
    else:
        raise UserError("grpo plan: which model? --model tiny, --model DIR (a local config.json), --params N "
                        "or --config FILE.yaml (a grpo train config)")
    over = {k: v for k, v in dict(num_layers=args.layers, hidden_size=args.hidden,
                                  intermediate_size=args.intermediate,
                                  num_heads=args.heads, num_kv_heads=args.kv_heads,
                                  vocab_size=args.vocab).items()
            if v is not None}
    arch = replace(arch, **over)
    if "hidden_size" in over or "num_heads" in over or not arch.head_dim:
        arch = replace(arch, head_dim=arch.hidden_size // arch.num_heads)
    return replace(arch, num_kv_heads=arch.num_kv_heads or arch.num_heads)


def _cmd_plan(args) -> None:
    apply_config(args)
    arch = architecture_from_args(args)
    inp = PlanInput(arch=arch, num_params=int(args.params) if args.params is not None else None,
                    algorithm=args.algorithm, precision=args.precision, optimizer=args.optimizer,
                    lora_rank=args.lora_rank, lora_targets=args.lora_targets, beta=args.beta, G=args.G,
                    prompts_per_step=args.prompts_per_step, micro_batch_size=args.micro_batch,
                    micro_batch_tokens=args.micro_batch_tokens,
                    prompt_length=args.prompt_length, completion_length=args.completion_length,
                    generation_batch=args.generation_batch, lean_decoder=args.lean_decoder,
                    gradient_checkpointing=args.gradient_checkpointing,
                    shared_prompts=args.shared_prompts,
                    attention=args.attention, reward_model_params=int(args.reward_model_params),
                    value_model_params=int(args.value_params) if args.value_params else None)
    plan = plan_memory(inp)
    print(format_plan(plan, args.gpu_gib))
    if args.out:
        Path(args.out).write_text(json.dumps(plan.to_dict(), indent=2) + "\n", encoding="utf-8")


def _count(text: str) -> float:
    """'7e9', '7B', '500M', '1.5b' -> a number."""
    t = text.strip().lower()
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}.get(t[-1:], 1)
    try:
        return float(t[:-1] if scale != 1 else t) * scale
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None


def build_plan_parser(subparsers) -> None:
    """Add `grpo plan` to the CLI's subparsers; its `fn(args)` prints the plan."""
    p = subparsers.add_parser("plan", help="memory needed by a GRPO/PPO run, per component",
                              description=grpo.plan.__doc__.split("\n\n")[0])
    add_config_arguments(p, "a `grpo train` YAML config: the model and the run's settings come from it where "
                            "their flags are left out")
    m = p.add_argument_group("model (one of --model, --params, or the config's model.path)")
    m.add_argument("--model",
                   help="'tiny': the built-in model (width/depth from --hidden/--layers), or a local "
                                   "Hugging Face model directory or config.json")
    m.add_argument("--params", type=_count,
                   help="total parameters, e.g. 7e9 or 7B (needs --layers, --hidden)")
    for flag in ("layers", "hidden", "intermediate", "heads", "kv-heads", "vocab"):
        m.add_argument(f"--{flag}", type=int, help="override the architecture's " + flag.replace("-", " "))
    r = p.add_argument_group("run")
    r.add_argument("--algorithm", choices=["grpo", "ppo"], default=None, help="default grpo")
    r.add_argument("--precision", choices=PRECISIONS, default=None, help="default fp32")
    r.add_argument("--optimizer", choices=list(OPTIMIZER_STATE_BYTES), default="adamw")
    r.add_argument("--lora-rank", type=int, default=None, help="0 (default): full fine-tuning")
    r.add_argument("--lora-targets", choices=["all-linear", "attention"], default=None,
                   help="default all-linear")
    r.add_argument("--beta", type=float, default=None,
                   help="KL weight (default 0.04); 0 holds no reference model")
    r.add_argument("--G", type=int, default=None, help="completions per prompt (default 8)")
    r.add_argument("--prompts-per-step", type=int, default=None, help="default 16")
    r.add_argument("--micro-batch", type=int, default=None,
                   help="completions per forward/backward (default 64)")
    r.add_argument("--micro-batch-tokens", type=int, default=None,
                   help="train.micro_batch_tokens: padded tokens per forward/backward (default: no cap)")
    r.add_argument("--prompt-length", type=int, default=None, help="P, tokens (default 256)")
    r.add_argument("--completion-length", type=int, default=None,
                   help="T, tokens (max_new_tokens; default 32)")
    r.add_argument("--generation-batch", type=int, default=None,
                   help="completions generated at once (default all)")
    r.add_argument("--gradient-checkpointing", action="store_true",
                   help="plan per-layer activation checkpointing (grpo train's train.gradient_checkpointing)")
    r.add_argument("--no-shared-prompts", dest="shared_prompts", action="store_false",
                   help="plan a plain forward over P+T tokens per completion (not grpo's shared-prompt "
                        "forward)")
    r.add_argument(
        "--attention",
        choices=["sdpa", "sdpa-gqa", "flash", "eager"],
        default="sdpa",
        help="sdpa-gqa: grpo on CPU with grouped-query attention (keys and values kept unrepeated)",
    )
    r.add_argument("--reward-model-params", type=_count, default=0,
                   help="learned reward model size (0: none)")
    r.add_argument("--value-params", type=_count, default=None,
                   help="PPO value model size (default: the policy's)")
    p.add_argument("--gpu-gib", type=float, default=None, help="say whether the total fits in this many GiB")
    p.add_argument("--out", default=None, help="also write the plan as JSON here")
    p.set_defaults(fn=_cmd_plan, quiet=True)
