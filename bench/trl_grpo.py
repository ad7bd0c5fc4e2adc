#!/usr/bin/env python3
"""TRL's side of the benchmark: Hugging Face TRL's `GRPOTrainer` on the work of bench/work.py.

    bash bench/setup_trl.sh                                       # once: .peers/trl-venv, bench/requirements-trl.txt
    .peers/trl-venv/bin/python bench/trl_grpo.py MODEL_DIR [the flags of bench/work.py] [--json-out FILE]

What this sets on `GRPOConfig` (everything else is TRL 1.16's default): the knobs of `Work`, with
`per_device_train_batch_size` = prompts_per_step x G (TRL counts completions) and one gradient
accumulation step, so that one generation and one forward/backward cover the step's whole batch;
`reward_weights` 1.0 and 0.1 on bench/add_rewards.py's two functions (the same functions grpo calls);
`num_iterations` 1; linear decay from `learning_rate` without warm-up (TRL's default scheduler);
`activation_checkpointing` off unless `--gradient-checkpointing` (TRL's own default is on);
`disable_dropout` (grpo trains without dropout too); fp32 on the CPU (`use_cpu`, no bf16, the model
loaded in float32, TRL's default for a path); LoRA through `peft_config`, the reference then being the
base model with the adapter disabled, as in grpo. TRL's default loss aggregation is "dapo" (grpo's
bench runs its own default, the paper's per-sequence mean: the same cost).

Measured: each optimizer step's wall time (between successive `on_step_end` events, the first from
`on_train_begin`: generation, rewards, reference and policy forwards, backward, optimizer, logging), the
seconds inside each generation call and the completion tokens it returned (up to and including EOS),
and the process's peak resident set. The last line printed is one JSON object, with the per-step lists
and the figures `side_by_side.run_figures` derives from them.
"""

import os
import time

T_START = time.perf_counter()
for _name, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                      "WANDB_DISABLED": "true", "CUDA_VISIBLE_DEVICES": ""}.items():
    os.environ.setdefault(_name, _value)  # offline, CPU only: every model and dataset is local

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import add_rewards  # noqa: E402
from side_by_side import run_figures  # noqa: E402
from work import emit, work_settings, LORA_ALPHA, LORA_R, LORA_TARGETS, Work, add_work_arguments, work_from_args  # noqa: E402


def as_text(completion) -> str:
    """TRL passes conversational completions as message lists; the rewards read the assistant's text."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def text_reward(fn):
    """bench/add_rewards.py's function `fn` (grpo's reward contract) as a TRL reward function."""

    def reward(prompts, completions, completion_ids, **columns):
        return fn(prompts, [as_text(c) for c in completions], completion_ids, **columns)

    reward.__name__ = fn.__name__  # TRL logs rewards/<name>
    return reward


def load_rows(work: Work, tokenizer) -> tuple[list[dict], list[int]]:
    """The prompt file's rows and each prompt's length in tokens as the model sees it (chat prompts
    rendered by the model's template with the generation prompt); a prompt over max_prompt_length stops
    the run, as `grpo train` does by default."""
    rows = [json.loads(line) for line in work.prompts_jsonl.read_text().splitlines() if line.strip()]
    lengths = []
    for r in rows:
        if isinstance(r["prompt"], str):
            ids = tokenizer(r["prompt"])["input_ids"]
        else:
            ids = tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"]
        if len(ids) > work.max_prompt_length:
            raise SystemExit(f"a prompt of {len(ids)} tokens is over --max-prompt-length {work.max_prompt_length}: "
                             f"{r['prompt']!r}")
        lengths.append(len(ids))
    return [{"prompt": r["prompt"], "answer": str(r["answer"])} for r in rows], lengths


def grpo_config(work: Work, output_dir: Path):
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(output_dir), max_steps=work.max_steps, seed=work.seed,
        per_device_train_batch_size=work.batch, gradient_accumulation_steps=1, num_generations=work.G,
        max_completion_length=work.max_new_tokens, temperature=work.temperature, top_p=1.0,
        beta=work.beta, learning_rate=work.learning_rate, num_iterations=1, reward_weights=[1.0, 0.1],
        activation_checkpointing=work.gradient_checkpointing, disable_dropout=True,
        use_cpu=True, bf16=False, fp16=False, use_vllm=False, model_init_kwargs={"dtype": "float32"},
        logging_steps=1, disable_tqdm=True, report_to="none", save_strategy="no", log_completions=False,
        dataloader_num_workers=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_work_arguments(p)
    p.add_argument("--output-dir", type=Path, default=Path(".peers/runs/trl"), help="TRL's output directory")
    p.add_argument("--json-out", type=Path, default=None, help="also write the JSON line here")
    args = p.parse_args()
    work = work_from_args(args)

    import torch

    torch.set_num_threads(work.threads)
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    class StepClock(TrainerCallback):
        """Wall seconds of each optimizer step: from the previous step's end (the first: from the start
        of training) to this one's."""

        def __init__(self):
            self.seconds, self.last = [], None

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.seconds.append(now - self.last)
            self.last = now

    class TimedGRPOTrainer(GRPOTrainer):
        """GRPOTrainer that times each generation call and counts the completion tokens it returns
        (TRL cuts each completion after its first EOS)."""

        def __init__(self, *a, **kw):
            self.gen_seconds, self.gen_tokens = [], []
            super().__init__(*a, **kw)

        def _generate_single_turn(self, prompt_ids, *rest, **kwargs):
            t0 = time.perf_counter()
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *rest, **kwargs)
            self.gen_seconds.append(time.perf_counter() - t0)
            self.gen_tokens.append(sum(len(c) for c in completion_ids))
            return completion_ids, logprobs

    tokenizer = AutoTokenizer.from_pretrained(work.model_dir, padding_side="left")
    rows, prompt_lengths = load_rows(work, tokenizer)
    correctness = add_rewards.correctness if work.answer_position == "first" else add_rewards.correctness_last
    peft_config = None
    if work.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=LORA_TARGETS,
                                 task_type="CAUSAL_LM")
    clock = StepClock()
    config = grpo_config(work, args.output_dir)
    t0 = time.perf_counter()
    trainer = TimedGRPOTrainer(
        model=str(work.model_dir), reward_funcs=[text_reward(correctness), text_reward(add_rewards.starts_with_int)],
        args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=[clock],
        peft_config=peft_config)
    init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0

    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    result = {
        "side": "trl",
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
                     "python": sys.version.split()[0]},
        "torch_threads": torch.get_num_threads(),
        **run_figures(clock.seconds, trainer.gen_seconds, trainer.gen_tokens),
        "init_s": round(init_s, 3),
        "train_wall_s": round(train_s, 3),
        "total_wall_s": round(time.perf_counter() - T_START, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
        "prompt_tokens_mean": round(statistics.mean(prompt_lengths), 3),
        "reward_per_step": rewards,
        "settings": {**work_settings(work),
                     "num_generations": config.num_generations,
                     "per_device_train_batch_size": config.per_device_train_batch_size,
                     "generation_batch_size": config.generation_batch_size,
                     "max_completion_length": config.max_completion_length,
                     "loss_type": config.loss_type, "scale_rewards": config.scale_rewards,
                     "activation_checkpointing": config.activation_checkpointing,
                     "model_dtype": str(trainer.model.dtype), "device": str(trainer.accelerator.device)},
    }
    emit(result, args.json_out)


if __name__ == "__main__":
    main()
