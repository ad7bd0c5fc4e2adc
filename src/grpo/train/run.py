"""A GRPO run's parts and its life around the steps; the loop itself is `grpo.train.grpo`.

`setup_run` builds and checks everything a run needs (model, reference, data, rewards, engine, optimizer,
the variant's parts, a checkpoint to resume from) into a `Run`, before anything is written;
`start_writing` and `open_logs` write a fresh run's files once its first step is done; `count_fault` and
`checkpoint_or_stop` follow each step (a checkpoint when one is due, a stop when updates keep failing or
a signal came); `finish` saves the final model.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from grpo.config import TrainConfig, to_dict
from grpo.data import Task, load_task
from grpo.errors import UserError
from grpo.models.convert import resolve_model_path
from grpo.models.loading import (
    Reference,
    disable_dropout,
    enable_checkpointing,
    load_policy,
    stop_token_ids,
)
from grpo.rewards import RewardModel, RewardSpec, load_reward_function, reward_spec
from grpo.rewards.loader import RESERVED_ARGUMENTS
from grpo.rollout.engine import RolloutEngine
from grpo.rollout.hf import HFEngine
from grpo.rollout.vllm_engine import VLLMEngine
from grpo.train.batch import PromptSampler
from grpo.train.checkpoint import (
    StopSignals,
    TrainerState,
    TrainingInterrupted,
    load_checkpoint,
    load_extra,
    restore_logs,
    save_checkpoint,
    weights_fingerprint,
)
from grpo.train.checkpoint_files import CHECKPOINTS, remove_partial_checkpoints
from grpo.train.distributed import (
    SINGLE,
    Dist,
    NullLog,
    agreed_signal,
    all_gather_objects,
    broadcast_parameters,
    check_divisible,
    close_distributed,
    full_state_dict,
    init_distributed,
    sampling_seed,
    shard,
    shard_model,
)
from grpo.train.episodes import Episodic
from grpo.train.metrics import MetricsLog, held_state_mib
from grpo.train.optim import make_optimizer
from grpo.train.ppo import Critic
from grpo.train.reward_model import RewardModelTrainer
from grpo.train.run_files import check_free_space, plot, prepare_output_dir, save_final
from grpo.train.run_lock import OutputDirLock
from grpo.train.variants import Variant, choose_variant
from grpo.utils.seeding import seed_everything

logger = logging.getLogger("grpo.train.grpo")  # the loop's logger: its warnings read as the loop's


@dataclass
class Run:
    """What the loop works with; built by `setup_run`."""

    out: Path
    model: Any
    tokenizer: Any
    ref: Reference | None
    """The frozen pi_ref (None when beta = 0, and for RFT)."""
    engine: RolloutEngine
    task: Task
    specs: list[RewardSpec]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    gen: torch.Generator
    """Draws every sampled token."""
    sampler: PromptSampler
    state: TrainerState
    history: list[dict]
    """metrics.jsonl so far (when resuming: the lines up to the checkpoint)."""
    dist: Dist = SINGLE
    """This process's rank among torchrun's processes (rank 0 writes the files)."""
    critic: Critic | None = None
    """PPO's value model and its optimizer (None for GRPO and RFT)."""
    rm_trainer: RewardModelTrainer | None = None
    """Retrains the learned reward model at each iteration's start (rewards.model.retrain)."""
    episodic: Episodic | None = None
    """Multi-turn rollouts' environments (rollout.tools / rollout.environment; None: single turn)."""
    variant: Variant | None = None
    """What the config changes in the step: its estimator, batch collection, token selection."""

    def draw_prompts(self, k: int) -> list[dict]:
        """This rank's slice of the next `k` training prompts (dataset rows)."""
        return [self.task.train[i] for i in shard(self.sampler.next(k), self.dist)]

    def extra_state(self, cfg: TrainConfig) -> dict:
        """What a checkpoint needs beyond the policy: the critic, and a reference that was reset."""
        extra = {}
        if self.critic is not None:
            extra.update(critic=self.critic.model.state_dict(),
                         critic_optimizer=self.critic.optimizer.state_dict())
        if self.ref is not None and cfg.train.iterations > 1:
            extra["reference"] = self.ref.model.state_dict()
        if self.rm_trainer is not None:
            extra["reward_model"] = self.rm_trainer.state_dict()
        return extra

    def state_mib(self) -> float:
        """Memory held by model state between steps (metric memory/state_mib): the policy's weights,
        gradients and optimizer moments, the reference's weights, PPO's value model with its own."""
        held = [(self.model, self.optimizer)]
        if self.ref is not None and not self.ref.shares_policy:
            held.append((self.ref.model, None))
        if self.critic is not None:
            held.append((self.critic.model, self.critic.optimizer))
        return held_state_mib(held)

    def load_extra_state(self, extra: dict) -> None:
        if self.critic is not None and "critic" in extra:
            self.critic.model.load_state_dict(extra["critic"])
            self.critic.optimizer.load_state_dict(extra["critic_optimizer"])
        if self.ref is not None and "reference" in extra:
            self.ref.model.load_state_dict(extra["reference"])
        if self.rm_trainer is not None and "reward_model" in extra:
            self.rm_trainer.load_state_dict(extra["reward_model"])



def setup_run(cfg: TrainConfig, resume_from: Path | None, staging: Path,
              reward_fns: dict | None = None) -> Run:
    """Load and check the model, data, reward functions and free space; write nothing (a fresh run's
    files are written once its first step is done: `start_writing`).

    When resuming from `resume_from`, the newest checkpoint is loaded into the freshly built objects (the
    reference stays the initial weights) and the logs are cut back to it. staging: a directory that
    outlives the setup (the built-in tiny model's initial weights go there, copied into the run later).
    reward_fns: callables for the rewards.functions entries that name them (run in this process).
    """
    seed_everything(cfg.train.seed, cfg.train.threads)
    tiny_dir = Path(staging) / "tiny-init"
    model, tokenizer = load_policy(cfg.model, tiny_dir)
    if not cfg.model.keep_dropout:  # sampler, pi_old and update: one function, no dropout noise in the ratio
        disable_dropout(model)
    # joined only now: once torch.distributed is up, transformers' save_pretrained writes on rank 0 only
    dist = init_distributed(cfg.model.device)
    check_divisible(cfg.train.prompts_per_step, dist)
    if dist.world_size > 1 and cfg.algorithm == "ppo" and cfg.train.strategy == "fsdp" \
            and cfg.ppo.value_model == "head":
        raise UserError("algorithm=ppo with ppo.value_model=head cannot run under train.strategy=fsdp (the "
                        "head reads the policy's sharded body outside the policy's forward); use "
                        "ppo.value_model=copy or train.strategy=ddp")
    broadcast_parameters(model, dist)
    episodic = Episodic(cfg, tokenizer) if cfg.rollout.multi_turn else None
    task = load_task(cfg.data, tokenizer, cfg.train.seed,
                     tools=episodic and [t.schema for t in episodic.tools])
    given = reward_fns or {}
    specs = [RewardSpec(e.fn, functools.partial(given[e.fn], **e.options) if e.options else given[e.fn],
                        e.weight,
                        in_pool=False) if e.fn in given else reward_spec(e.fn, e.weight, options=e.options)
             for e in cfg.rewards.functions]
    rm_trainer = None
    if cfg.rewards.model is not None:  # a learned reward model, on the policy's device
        c = cfg.rewards.model
        rm = RewardModel.from_policy(model, tokenizer, c.batch_size, c.max_length) if c.path == "init" else \
            RewardModel(c.path, next(model.parameters()).device, c.batch_size, c.max_length)
        specs.append(RewardSpec("reward_model", rm, c.weight, in_pool=False))
        rm_trainer = RewardModelTrainer(rm, c, cfg.train.seed, cfg.optim) if c.retrain else None
    _check_rewards(specs, task, cfg)
    step_fn = load_reward_function(cfg.rewards.step_fn, cfg.rewards.step_options) \
        if cfg.grpo.advantage == "process" else None
    # the frozen pi_ref: a copy of the initial policy (LoRA: the adapter switched off); none when beta = 0
    ref = Reference(model) if cfg.grpo.beta > 0 and cfg.algorithm != "rft" else None
    critic = Critic(model, cfg, dist) if cfg.algorithm == "ppo" else None
    fingerprint = weights_fingerprint(model)  # of the whole initial weights, the same on every rank
    if cfg.train.gradient_checkpointing:  # the policy's update only: copies made above keep their activations
        enable_checkpointing(model)
    model, dist = shard_model(model, cfg.train.strategy, dist)
    optimizer, scheduler = make_optimizer(model, cfg.optim, cfg.train.steps * cfg.grpo.mu)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(
        sampling_seed(cfg.train.seed, dist)
    )
    sampler = PromptSampler(len(task.train), cfg.train.seed)
    state = TrainerState(init_fingerprint=fingerprint)
    extra = {}
    if resume_from is not None:
        state = load_checkpoint(resume_from, cfg, model, optimizer, scheduler, gen, fingerprint, dist)
        sampler.load_state_dict(state.sampler)
        extra = load_extra(resume_from)
    engine = make_engine(cfg, model, tokenizer,
                         tiny_dir if tiny_dir.exists() else resolve_model_path(cfg.model.path),
                         dist)
    if resume_from is not None:
        engine.sync_weights(model)  # vLLM started from model.path, the policy from the checkpoint
    check_free_space(cfg.train.output_dir, model, checkpoints=cfg.train.save_every > 0)
    out = Path(cfg.train.output_dir)
    for name in remove_partial_checkpoints(out) if dist.is_main and resume_from is not None else []:
        logger.warning("removed %s: a checkpoint whose writing was cut off", out / CHECKPOINTS / name)
    history = restore_logs(out, state.step, {"metrics.jsonl": state.metrics_bytes,
                                             "samples.jsonl": state.samples_bytes}) \
        if dist.is_main and resume_from is not None else []
    variant = choose_variant(cfg, critic=critic, step_fn=step_fn, tokenizer=tokenizer, accuracy=specs[0].name,
                             pad_id=tokenizer.pad_token_id, dist=dist)
    run = Run(out=out, model=model, tokenizer=tokenizer, ref=ref, engine=engine, task=task, specs=specs,
              optimizer=optimizer, scheduler=scheduler, gen=gen, sampler=sampler, state=state,
              history=history,
              dist=dist, critic=critic, rm_trainer=rm_trainer, episodic=episodic, variant=variant)
    run.load_extra_state(extra)
    return run


def make_engine(cfg: TrainConfig, model, tokenizer, model_dir: Path, dist: Dist) -> RolloutEngine:
    """The rollout engine `rollout.engine` names. vLLM is built here, before the run writes anything, so
    that a missing vLLM or GPU stops it with one line; it loads `model_dir` (the policy's starting weights)
    and is kept in step by `sync_weights` after every update. Both stop at `stop_token_ids`."""
    stop = stop_token_ids(model, tokenizer)
    if cfg.rollout.engine == "hf":  # rollout.dtype bfloat16 (or auto under model.dtype=bfloat16): bf16 copies
        return HFEngine(model, stop, tokenizer.pad_token_id,
                        dtype=torch.bfloat16 if cfg.sampler_dtype == "bfloat16" else None)
    if dist.fsdp:
        raise UserError("rollout.engine=vllm cannot run with train.strategy=fsdp (each rank's vLLM would "
                        "need the whole weights after every update); use train.strategy=ddp or "
                        "rollout.engine=hf")

    return VLLMEngine(str(model_dir), stop, tokenizer.pad_token_id,
                      gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
                      dtype=cfg.sampler_dtype,
                      seed=sampling_seed(cfg.train.seed, dist), device=str(next(model.parameters()).device))


def _check_rewards(specs: list[RewardSpec], task: Task, cfg: TrainConfig) -> None:
    """What `compute_rewards` would refuse at the first step, refused before anything is written."""
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"rewards.functions: two functions are named {repeated[0]!r}; give each function "
                        "once (a weight scales it)")
    clashes = sorted(set(task.train[0]) & set(RESERVED_ARGUMENTS))
    if clashes:
        raise UserError(f"data.source {cfg.data.source}: column {clashes[0]!r} clashes with a "
                        f"reward-function argument ({', '.join(RESERVED_ARGUMENTS)}); rename it")


def start_writing(run: Run, cfg: TrainConfig, lock: OutputDirLock, staging: Path, overwrite: bool) -> None:
    """After a fresh run's first step: its directory (an earlier run's files removed under `overwrite`), its
    config.yaml and the tiny model's initial weights. Until then it has written nothing."""
    lock.commit()
    if not run.dist.is_main:
        return
    prepare_output_dir(run.out, cfg, overwrite)
    if (staging / "tiny-init").exists():
        shutil.copytree(staging / "tiny-init", run.out / "tiny-init", dirs_exist_ok=True)


def count_fault(state: TrainerState, applied: bool, max_bad: int) -> None:
    """Count an update skipped for a non-finite loss or gradient norm (and the run of them), with a warning;
    an applied update ends the run of them."""
    if applied:
        state.bad_in_a_row = 0
        return
    state.skipped_updates += 1
    state.bad_in_a_row += 1
    logger.warning("step %d: the loss or the gradient norm is not finite; update skipped (%d in a row, the "
                   "run stops at train.max_bad_steps=%d)", state.step + 1, state.bad_in_a_row, max_bad)


def checkpoint_or_stop(run: Run, cfg: TrainConfig, log: MetricsLog, samples, stop: StopSignals) -> None:
    """After a step: a checkpoint when one is due; a checkpoint and a stop after train.max_bad_steps
    skipped updates in a row, or when SIGINT/SIGTERM arrived."""
    t, state = cfg.train, run.state
    due = t.save_every > 0 and (state.step % t.save_every == 0 or state.step == t.steps)
    too_many_faults = state.bad_in_a_row >= t.max_bad_steps
    stop.signum = agreed_signal(stop.signum, run.dist)
    if not (due or too_many_faults or stop.signum is not None):
        return
    sampling = all_gather_objects(run.gen.get_state(), run.dist)  # each rank resumes its own stream
    if run.dist.is_main:
        state.sampler = run.sampler.state_dict()
        state.metrics_bytes, state.samples_bytes = log.path.stat().st_size, os.fstat(samples.fileno()).st_size
    # every rank
    path = save_checkpoint(run.out, cfg, state, run.model, run.optimizer, run.scheduler, run.gen,
                           keep=t.keep_checkpoints, extra=run.extra_state(cfg), dist=run.dist,
                           sampling=sampling)
    if too_many_faults:
        raise UserError(f"stopped at step {state.step}: {state.bad_in_a_row} updates in a row had a "
                        f"non-finite loss or gradient norm (train.max_bad_steps={t.max_bad_steps}); they "
                        f"were skipped, so {path} holds the last good weights and optimizer state. Lower "
                        f"optim.lr or check model.dtype and the rewards, then resume with --resume {run.out}")
    if stop.signum is not None:
        raise TrainingInterrupted(stop.signum, state.step, path, run.out)


def open_logs(run: Run, cfg: TrainConfig, stack: contextlib.ExitStack) -> tuple[MetricsLog | NullLog, IO]:
    """metrics.jsonl (with TensorBoard and W&B where train.report_to asks) and samples.jsonl, appended to
    and closed with `stack`; on ranks other than 0, logs that write nothing."""
    t = cfg.train
    log = MetricsLog(run.out, t.tensorboard or "tensorboard" in t.report_to, resumed_at=run.state.step,
                     wandb_project=t.wandb_project if "wandb" in t.report_to else None,
                     config=to_dict(cfg)) if run.dist.is_main else NullLog()
    stack.callback(log.close)
    return log, stack.enter_context(open(run.out / "samples.jsonl" if run.dist.is_main
                                         else os.devnull, "a",
                                         encoding="utf-8"))


def finish(run: Run) -> None:
    """After the last step: OUT/final (FSDP: gathered from every rank) and the plot; torch.distributed
    closed."""
    weights = full_state_dict(run.model, run.dist)
    if run.dist.is_main:
        save_final(run.model, run.tokenizer, run.out, run.rm_trainer, weights)
        plot(run.out, run.history)
    close_distributed(run.dist)
