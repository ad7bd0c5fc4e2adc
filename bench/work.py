"""The work a benchmark run does, described once for every side: TRL, `grpo train` and grpo's Python API.

`Work` holds the knobs (model, prompts, G, completion length, steps, LoRA, ...); `add_work_arguments`
gives bench/trl_grpo.py, bench/bench_grpo.py and bench/side_by_side.py the same flags for them, and
`grpo_overrides` turns a `Work` into the `section.key=value` overrides of `grpo train`. bench/bench_grpo.py
builds its config from the same overrides, so the command-line run and the API run cannot drift apart.

Plain Python, no torch: it is imported in TRL's virtual environment as well as in grpo's.

The settings both sides share beyond the knobs (TRL's defaults, given to grpo explicitly): the two rewards
of bench/add_rewards.py (1.0 if the completion's first, or with answer_position "last" its last, integer
is the answer; 0.1 if it starts with an integer), top_p 1, mu 1 (one optimizer step per batch, the
policy's own log-probs as pi_old), AdamW betas 0.9/0.999 without weight decay, linear decay from `lr`
with no warm-up, gradient clipping at 1.0, the whole batch of prompts_per_step x G completions in one
forward and backward, fp32 on the CPU, no held-out evaluation. LoRA: r 16, alpha 32, no dropout, on
every attention and MLP projection.
"""

import argparse
import json
import dataclasses
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REWARDS = HERE / "add_rewards.py"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_R, LORA_ALPHA = 16, 32
CHOICES = {"answer_position": ("first", "last")}


@dataclass
class Work:
    model_dir: Path
    """A local Hugging Face model directory (both sides load it with `from_pretrained`)."""
    prompts_jsonl: Path = HERE / "add_prompts.jsonl"
    """Rows {"prompt": text or chat messages, "answer": an integer, optionally after "####"}."""
    answer_position: str = "first"
    """Which integer of a completion the correctness reward compares: "first" or "last"."""
    max_prompt_length: int = 32
    """Longest prompt in tokens as the model sees it; a longer one stops the run on either side."""
    prompts_per_step: int = 8
    """Prompts per optimizer step; the batch is prompts_per_step x G completions."""
    G: int = 8
    """Completions per prompt (the group size)."""
    max_new_tokens: int = 32
    """Longest completion in tokens."""
    temperature: float = 1.0
    """Sampling temperature."""
    beta: float = 0.04
    """Weight of the KL penalty to the frozen reference."""
    learning_rate: float = 1e-4
    """Peak learning rate (linear decay to 0 over max_steps)."""
    max_steps: int = 20
    """Optimizer steps."""
    lora: bool = False
    """Train LoRA adapters instead of every weight."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (TRL's own default is on; this bench turns it off unless asked)."""
    threads: int = 2
    """torch CPU threads."""
    seed: int = 0
    """Seed of data order, sampling and initialisation."""

    @property
    def batch(self) -> int:
        """Completions per step, all in one forward and backward."""
        return self.prompts_per_step * self.G


def add_work_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per `Work` field (model_dir positional, booleans as switches), help from its docstring."""
    docs = _field_docs()
    for f in dataclasses.fields(Work):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "model_dir":
            p.add_argument("model_dir", type=Path, help=docs[f.name])
        elif f.name in CHOICES:
            p.add_argument(flag, choices=CHOICES[f.name], default=f.default, help=docs[f.name])
        elif f.type is bool:
            p.add_argument(flag, action="store_true", help=docs[f.name])
        else:
            p.add_argument(flag, type=f.type, default=f.default, help=f"{docs[f.name]} (default {f.default})")


def work_from_args(ns: argparse.Namespace) -> Work:
    return Work(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(Work)})


def work_flags(w: Work) -> list[str]:
    """The flags that give `w` to another process's `add_work_arguments` parser (model first)."""
    out = [str(w.model_dir)]
    for f in dataclasses.fields(Work)[1:]:
        value, flag = getattr(w, f.name), "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            out += [flag] if value else []
        else:
            out += [flag, str(value)]
    return out


def grpo_overrides(w: Work, output_dir: Path) -> list[str]:
    """`grpo train` overrides that run `w` with the settings both sides share (module docstring)."""
    correctness = "correctness" if w.answer_position == "first" else "correctness_last"
    rewards = (f'[{{fn: "{REWARDS}:{correctness}", weight: 1.0}}, '
               f'{{fn: "{REWARDS}:starts_with_int", weight: 0.1}}]')
    out = [f"model.path={w.model_dir}", "model.device=cpu", "model.dtype=float32",
           f"data.source={w.prompts_jsonl}", f"data.max_prompt_length={w.max_prompt_length}",
           f"rewards.functions={rewards}",
           f"sampling.max_new_tokens={w.max_new_tokens}", f"sampling.temperature={w.temperature}",
           "sampling.top_p=1.0",
           f"grpo.G={w.G}", f"grpo.beta={w.beta}", "grpo.mu=1",
           f"optim.lr={w.learning_rate}", "optim.warmup_steps=0", "optim.schedule=linear",
           "optim.betas=[0.9, 0.999]", "optim.weight_decay=0.0", "optim.grad_clip=1.0",
           f"train.steps={w.max_steps}", f"train.prompts_per_step={w.prompts_per_step}",
           f"train.micro_batch_size={w.batch}",
           f"train.gradient_checkpointing={str(w.gradient_checkpointing).lower()}",
           f"train.threads={w.threads}", f"train.seed={w.seed}",
           "train.eval_every=0", "train.sample_every=0", f"train.output_dir={output_dir}"]
    if w.lora:
        out.append(f"model.lora={{r: {LORA_R}, alpha: {LORA_ALPHA}, dropout: 0.0}}")
    return out


def work_settings(w: Work) -> dict:
    """The work's knobs as JSON values, for a side's result line."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(w).items()}


def emit(result: dict, json_out: Path | None) -> None:
    """A side's result: one JSON line on stdout, and in `json_out` when given (the driver reads either)."""
    line = json.dumps(result)
    if json_out:
        json_out.write_text(line + "\n")
    print(line, flush=True)


def _field_docs() -> dict[str, str]:
    """Each field's docstring (the string literal after it in this file's source)."""
    import ast

    tree = ast.parse(Path(__file__).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Work")
    docs, last = {}, None
    for node in cls.body:
        if isinstance(node, ast.AnnAssign):
            last = node.target.id
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and last:
            docs[last], last = node.value.value, None
    return docs
