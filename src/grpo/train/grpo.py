"""The GRPO loop (DeepSeekMath §4.1, Algorithm 1), top to bottom.

Each step: sample prompts -> generate G completions each -> score them -> reference log-probs
(once, no grad) -> group-relative advantages -> mu policy updates with the clipped surrogate and the
k3 KL penalty, accumulated over micro-batches -> one optimizer step per update. The phase names are
also the timer names in metrics.jsonl (`time/generate`, ...); the update itself is in
`grpo.train.update`. With train.iterations = I the steps are split into I iterations and the
reference is reset to the policy at the start of each.

The baselines share this loop and differ only in the advantages (and PPO's critic update):
`algorithm=ppo` takes token advantages from GAE over a learned value model, with the KL to the
reference folded into the per-token reward (grpo.train.ppo); `algorithm=rft` (online rejection
sampling fine-tuning) gives coefficient 1 to correct samples and 0 to the rest, without KL.
Process supervision (`grpo.advantage=process`) takes per-token advantages from per-step rewards.

With mu = 1 the "old" policy is the current one: old_logp = logp.detach(), the ratio is exactly 1
and its gradient is grad log pi. The loss printed is then ~0 by construction (advantages are
centred per group), which is expected; watch the reward and the held-out accuracy instead.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm import tqdm

from grpo.config import TrainConfig, to_dict
from grpo.data import Task, load_task
from grpo.errors import UserError
from grpo.models.convert import resolve_model_path
from grpo.models.loading import (
    Reference,
    autocast,
    compute_dtype,
    disable_dropout,
    enable_checkpointing,
    load_policy,
    resolve_device,
    stop_token_ids,
)
from grpo.data.templates import decode_completions, encode_prompts
from grpo.rewards import (
    RewardModel,
    RewardSpec,
    compute_rewards,
    load_reward_function,
    reward_inputs,
    reward_spec,
)
from grpo.rewards.loader import RESERVED_ARGUMENTS
from grpo.rollout.engine import RolloutEngine, SamplingParams
from grpo.rollout.hf import HFEngine
from grpo.rollout.vllm_engine import VLLMEngine
from grpo.train.checkpoint import (
    CHECKPOINTS,
    StopSignals,
    TrainerState,
    TrainingInterrupted,
    check_free_space,
    check_output_dir,
    load_checkpoint,
    load_extra,
    remove_partial_checkpoints,
    restore_logs,
    save_checkpoint,
    weights_fingerprint,
)
from grpo.train.batch import Batch, PromptSampler, collect_batch, gather_batch
from grpo.train.episodes import Episodic, add_environment_reward, episode_columns, trajectory_texts
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
    full_weights,
    init_distributed,
    my_rows,
    sampling_seed,
    shard,
    shard_model,
    sharded_accuracy,
)
from grpo.train.evaluation import evaluate_accuracy
from grpo.train.metrics import (
    MetricsLog,
    Timers,
    current_memory_mib,
    held_state_mib,
    peak_memory_mib,
    reset_peak_memory,
)
from grpo.train.optim import make_optimizer
from grpo.train.ppo import Critic
from grpo.train.reward_pool import reward_pool
from grpo.train.rollout_metrics import episode_metrics, rollout_metrics, warn_if_no_signal
from grpo.train.run_files import plot, prepare_output_dir, save_final, write_samples
from grpo.train.run_lock import OutputDirLock
from grpo.train.advantages import compute_advantages, rft_advantages, step_advantages
from grpo.train.reward_model import RewardModelTrainer
from grpo.train.update import forking_tokens, logprobs_no_grad, update_policy
from grpo.utils.seeding import seed_everything

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    accuracy_before: float
    accuracy_after: float
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    peak_memory_mib: float = 0.0
    """The whole run's peak memory (`peak_memory_mib` read before each per-step reset and at the end)."""


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
    step_fn: Any = None
    """Process supervision's step reward function (rewards.step_fn)."""
    rm_trainer: RewardModelTrainer | None = None
    """Retrains the learned reward model at each iteration's start (rewards.model.retrain)."""
    episodic: Episodic | None = None
    """Multi-turn rollouts' environments (rollout.tools / rollout.environment; None: single turn)."""

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
    history = restore_logs(out, state) if dist.is_main and resume_from is not None else []
    run = Run(out=out, model=model, tokenizer=tokenizer, ref=ref, engine=engine, task=task, specs=specs,
              optimizer=optimizer, scheduler=scheduler, gen=gen, sampler=sampler, state=state,
              history=history,
              dist=dist, critic=critic, step_fn=step_fn, rm_trainer=rm_trainer, episodic=episodic)
    run.load_extra_state(extra)
    return run


def make_engine(cfg: TrainConfig, model, tokenizer, model_dir: Path, dist: Dist) -> RolloutEngine:
    """The rollout engine `rollout.engine` names. vLLM is built here, before the run writes anything, so
    that a missing vLLM or GPU stops it with one line; it loads `model_dir` (the policy's starting weights)
    and is kept in step by `sync_weights` after every update. Both stop at `stop_token_ids`."""
    stop = stop_token_ids(model, tokenizer)
    if cfg.rollout.engine == "hf":  # model.dtype=bfloat16: samples from bf16 copies of the weights
        return HFEngine(model, stop, tokenizer.pad_token_id, dtype=compute_dtype(cfg.model))
    if dist.fsdp:
        raise UserError("rollout.engine=vllm cannot run with train.strategy=fsdp (each rank's vLLM would "
                        "need the whole weights after every update); use train.strategy=ddp or "
                        "rollout.engine=hf")

    return VLLMEngine(str(model_dir), stop, tokenizer.pad_token_id,
                      gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
                      dtype="bfloat16" if cfg.model.dtype == "bfloat16" else "float32",
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


class StepOutput(NamedTuple):
    record: dict
    """This step's metrics (docs/metrics.md), without the timings."""
    rows: list[dict]
    """The prompts' dataset rows (all ranks')."""
    texts: list[str]
    """The N = prompts_per_step * G completions, grouped by prompt."""
    rewards: torch.Tensor
    """Their summed rewards. [N]"""
    num_tokens: int
    """Completion tokens generated."""


def generate_and_score(run: Run, cfg: TrainConfig, pool, timers: Timers, rows: list[dict]) -> Batch:
    """G completions of each prompt in `rows`, decoded and rewarded."""
    G, episodes = cfg.grpo.G, None
    with timers("generate"), full_weights(run.model, run.dist):
        sampling = SamplingParams(cfg.sampling.max_new_tokens, cfg.sampling.temperature, cfg.sampling.top_p,
                                  G)
        if run.episodic is None:
            r = run.engine.generate(encode_prompts(run.tokenizer, [x["prompt"] for x in rows]), sampling,
                                    run.gen)
        else:  # multi-turn: the policy's turns and its environment's answers (grpo.train.episodes)
            r, episodes = run.episodic.generate(run.engine, rows, sampling, run.gen, pool)
    with timers("reward"):
        texts = decode_completions(run.tokenizer, r.completion_ids, r.completion_mask) if episodes is None \
            else trajectory_texts(run.tokenizer, r)
        scored = compute_rewards(run.specs, *reward_inputs(rows, texts, r.completion_lists(), G),
                                 on_error=cfg.rewards.on_error, timeout_s=cfg.rewards.timeout_s, pool=pool)
        rewards = torch.tensor(scored.total, dtype=torch.float32)  # [N]
        if episodes is not None and cfg.rollout.environment:
            rewards = add_environment_reward(rewards, scored.per_function, episodes)
    return Batch(rows, r, texts, rewards, scored.per_function, scored.num_errors, scored.num_timeouts,
                 episodes=episode_columns(episodes) if episodes is not None else {})


def train_step(run: Run, cfg: TrainConfig, pool, timers: Timers) -> StepOutput:
    """generate -> reward (-> more prompts: dynamic sampling) -> advantages -> reference -> update.

    With several processes this rank generates for its slice of the prompts; `everyone` is the
    gathered global batch that advantages and metrics are computed on.
    """
    G, device, dist = cfg.grpo.G, next(run.model.parameters()).device, run.dist
    ctx = lambda: autocast(cfg.model, device)  # noqa: E731
    next_rows = lambda: [run.task.train[i]  # noqa: E731
                         for i in shard(run.sampler.next(cfg.train.prompts_per_step), dist)]
    batch, sampling = collect_batch(next_rows, lambda rows: generate_and_score(run, cfg, pool, timers, rows),
                                    G,
                                    cfg.train.prompts_per_step, cfg.grpo.dynamic_sampling,
                                    cfg.grpo.max_sampling_rounds, run.tokenizer.pad_token_id, dist)
    r, everyone = batch.rollout, gather_batch(batch, dist)
    with timers("reference"):
        ref_logp = None
        if run.ref is not None:
            with run.ref.context():
                ref_logp = logprobs_no_grad(run.ref.model, r, cfg, ctx, dist).logp
        # pi_old: needed for the ratio when mu > 1, by PPO's KL reward, and for the batch's entropies
        fraction, keep = cfg.grpo.top_entropy_quantile, None
        old = logprobs_no_grad(run.model, r, cfg, ctx, dist, with_entropy=fraction < 1) \
            if cfg.grpo.mu > 1 or run.critic or fraction < 1 else None
        old_logp = None if old is None else old.logp
    with timers("advantages"):
        beta, extra = cfg.grpo.beta, {}
        if fraction < 1:  # forking tokens: the loss keeps the batch's highest-entropy policy tokens
            keep, threshold = forking_tokens(old.entropy, r.policy_tokens, fraction, dist)
            extra.update({"entropy/threshold": threshold,
                          "entropy/kept_frac": float(keep.sum()) / max(1.0, float(r.policy_tokens.sum()))})
        if run.critic is not None:  # PPO: GAE over the value model; the KL is in the reward, not the loss
            ppo = run.critic.advantages(r, batch.rewards, old_logp, ref_logp, cfg.grpo.beta)
            adv, beta, extra = ppo.advantages, 0.0, {"ppo/kl_reward": ppo.kl_reward}  # [N, T]
        elif cfg.algorithm == "rft":
            adv, beta = rft_advantages(batch.per_function[run.specs[0].name]), 0.0  # [N]
        elif cfg.grpo.advantage == "process":  # groups are whole on each rank: this rank's steps suffice
            adv = step_advantages(run.step_fn, run.tokenizer, r, batch.rows, batch.texts, cfg)  # [N, T]
        else:  # over the gathered batch (grpo.scale=batch needs all of it), then this rank's rows
            adv = my_rows(compute_advantages(everyone.rewards, cfg), dist)  # [N / world_size]
        adv = adv.to(device)
    with timers("update"):
        for _ in range(cfg.grpo.mu):
            update = update_policy(run.model, run.optimizer, r, adv, ref_logp, old_logp, cfg, ctx, beta=beta,
                                   dist=dist,
                                   keep=keep, timers=timers)
            run.scheduler.step()
            _count_fault(run.state, update.applied, cfg.train.max_bad_steps)
            if run.critic is not None and update.applied:
                extra.update(run.critic.update(r, ppo))
        run.engine.sync_weights(run.model)  # vLLM: its copy of the weights; the HF engine shares them
    record = {**rollout_metrics(everyone, everyone.rewards, everyone.per_function, cfg, run.specs[0].name),
              **episode_metrics(everyone.episodes, bool(cfg.rollout.environment)), **update.stats, **extra,
              "lr": run.scheduler.get_last_lr()[0], "reward/errors": everyone.num_errors,
              "reward/timeouts": everyone.num_timeouts, "faults/skipped_updates": run.state.skipped_updates}
    if sampling is not None:
        record.update({"sampling/rounds": sampling.rounds, "sampling/prompts_drawn": sampling.prompts_drawn,
                       "sampling/kept_groups": sampling.kept_groups})
    return StepOutput(record, everyone.rows, everyone.texts, everyone.rewards, everyone.num_tokens)


def _count_fault(state: TrainerState, applied: bool, max_bad: int) -> None:
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


def train(cfg: TrainConfig, progress: bool = True, timers: Timers | None = None, overwrite: bool = False,
          reward_fns: dict | None = None) -> TrainResult:
    """Run GRPO as configured (train.resume: continue the run in train.output_dir); returns accuracies
    before/after and the metrics history. timers: the phase timers (a bench may pass its own, with hooks).

    A train.output_dir that holds a run (finished, stopped or resumable) is refused unless `overwrite`
    (the CLI's --overwrite), which replaces that run's files once the new run writes. One run per output
    directory (`OutputDirLock`, taken before the model loads). A run that fails before its first step is
    done leaves nothing behind: its files are first written after that step (`start_writing`).
    reward_fns: name -> callable, for rewards.functions entries that name a function given here (`grpo.api`).
    """
    t_start = time.perf_counter()
    # the runtime, before any model is built
    baseline_mib = current_memory_mib(resolve_device(cfg.model.device))
    resume_from = check_output_dir(cfg.train.output_dir, cfg.train.resume, overwrite)
    with OutputDirLock(cfg.train.output_dir) as lock, tempfile.TemporaryDirectory(prefix="grpo-") as staging:
        if resume_from is not None:
            lock.commit()  # the run's directory already holds its files
        run = setup_run(cfg, resume_from, Path(staging), reward_fns)
        return _train(run, cfg, progress, timers or Timers(), t_start, baseline_mib, Path(staging), lock,
                      overwrite)


def start_writing(run: Run, cfg: TrainConfig, lock: OutputDirLock, staging: Path, overwrite: bool) -> None:
    """After a fresh run's first step: its directory (an earlier run's files removed under `overwrite`), its
    config.yaml and the tiny model's initial weights. Until then it has written nothing."""
    lock.commit()
    if not run.dist.is_main:
        return
    prepare_output_dir(run.out, cfg, overwrite)
    if (staging / "tiny-init").exists():
        shutil.copytree(staging / "tiny-init", run.out / "tiny-init", dirs_exist_ok=True)


def _train(run: Run, cfg: TrainConfig, progress: bool, timers: Timers, t_start: float, baseline_mib: float,
           staging: Path, lock: OutputDirLock, overwrite: bool) -> TrainResult:
    state, device, run_peak = run.state, next(run.model.parameters()).device, 0.0
    I = cfg.train.iterations
    # steps where an iteration begins
    iteration_starts = {round(i * cfg.train.steps / I) for i in range(1, I)}
    # held-out accuracy is judged by the accuracy reward itself: no drift
    evaluate = lambda rows: evaluate_accuracy(run.engine, run.tokenizer, rows, run.specs[0].fn,  # noqa: E731
                                              cfg.sampling.max_new_tokens)[0] if run.episodic is None else \
        run.episodic.evaluate(run.engine, rows, run.specs[0].fn, pool)[0]
    heldout = lambda: sharded_accuracy(evaluate, run.task.heldout, run.model, run.dist)  # noqa: E731
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(reward_pool(cfg.rewards.workers))
        log, samples = None, None  # opened at the first write: after the first step of a fresh run

        def open_files():
            t = cfg.train
            log = MetricsLog(run.out, t.tensorboard or "tensorboard" in t.report_to, resumed_at=state.step,
                             wandb_project=t.wandb_project if "wandb" in t.report_to else None,
                             config=to_dict(cfg)) if run.dist.is_main else NullLog()
            stack.callback(log.close)
            return log, stack.enter_context(open(run.out / "samples.jsonl" if run.dist.is_main
                                                 else os.devnull, "a",
                                                 encoding="utf-8"))

        if lock.committed:  # resumed: the directory is the run's already
            log, samples = open_files()
        stop = stack.enter_context(StopSignals())
        warned = False
        if state.step == 0:
            state.accuracy_before = heldout()
            # a signal during it: stop now, nothing to save
            stop.signum = agreed_signal(stop.signum, run.dist)
            if stop.signum is not None:
                raise TrainingInterrupted(stop.signum, 0, None, run.out)
        bar = tqdm(range(state.step, cfg.train.steps), initial=state.step, total=cfg.train.steps, desc="grpo",
                   disable=not (progress and run.dist.is_main), dynamic_ncols=True)
        for step in bar:
            rm_stats = {}
            if step in iteration_starts and run.ref is not None:  # iterative GRPO: pi_ref <- pi_theta
                # FSDP: gathered
                run.ref.reset(run.model, full_state_dict(run.model, run.dist, every_rank=True))
            if (step == 0 or step in iteration_starts) and run.rm_trainer is not None:
                # fresh labelled policy samples (+ replay) -> reward model;
                # FSDP: sampled from the full weights
                with timers("reward_model"), full_weights(run.model, run.dist):
                    rm_stats = run.rm_trainer.update(run.engine, run.tokenizer, run.task.train, cfg,
                                                     iteration=sum(s <= step for s in iteration_starts))
            run_peak = max(run_peak, peak_memory_mib(device))
            reset_peak_memory(device)  # memory/peak_mib: this step's peak, evaluations excluded
            t0, c0 = time.perf_counter(), time.process_time()
            out = train_step(run, cfg, pool, timers)
            dt = time.perf_counter() - t0
            if log is None:  # a fresh run's first step is done: its rewards were fine, its update applied
                start_writing(run, cfg, lock, staging, overwrite)
                log, samples = open_files()
            record = {"step": step + 1, **out.record, **rm_stats, **timers.pop(), "time/step": dt,
                      "time/step_cpu": time.process_time() - c0,
                      "tokens_per_s": out.num_tokens / dt, "memory/peak_mib": peak_memory_mib(device),
                      "memory/state_mib": run.state_mib(), "memory/baseline_mib": baseline_mib}
            if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < cfg.train.steps:
                record["eval/accuracy"] = heldout()
            if cfg.train.sample_every and step % cfg.train.sample_every == 0:
                write_samples(samples, step + 1, out.rows, out.texts, out.rewards, cfg.grpo.G)
            log.write(record)
            run.history.append(record)
            if run.dist.is_main:
                warned = warn_if_no_signal(record, cfg, run.specs[0].name, warned)
            every = cfg.train.log_every
            if (every and (step + 1) % every == 0) or step + 1 == cfg.train.steps:
                bar.set_postfix(reward=f"{record['reward/mean']:.3f}", kl=f"{record.get('kl', 0.0):.4f}")
            state.step = step + 1
            checkpoint_or_stop(run, cfg, log, samples, stop)
        acc_after = heldout()
        final = {"step": cfg.train.steps, "eval/accuracy": acc_after,
                 "eval/accuracy_before": state.accuracy_before}
        log.write(final)
        run.history.append(final)
    weights = full_state_dict(run.model, run.dist)  # FSDP: gathered from every rank
    if run.dist.is_main:
        save_final(run.model, run.tokenizer, run.out, run.rm_trainer, weights)
        plot(run.out, run.history)
    close_distributed(run.dist)
    return TrainResult(run.out, state.accuracy_before, acc_after, cfg.train.steps,
                       time.perf_counter() - t_start,
                       run.history, max(run_peak, peak_memory_mib(device)))
