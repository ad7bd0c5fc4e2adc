"""The GRPO loop (DeepSeekMath §4.1, Algorithm 1), top to bottom.

`train_step` is the paper's step: sample G completions of each prompt, score them, standardise the
rewards within each group into advantages, and update the policy mu times on the clipped surrogate
minus beta * KL to the reference (grpo.train.update, micro-batched; the formulas are grpo.algorithm's).
The phase names are also the timer names in metrics.jsonl (`time/generate`, ...). `_train` runs the steps;
with train.iterations = I they are split into I iterations, and the reference is reset to the policy
(and a learned reward model retrained) at the start of each.

The variants and baselines share this step. What each changes lives in one small unit with one
signature, chosen once from the config when the run is set up (grpo.train.variants.choose_variant): the
advantage estimator (RLOO, process supervision, online RFT, PPO's GAE over a value model:
grpo.train.advantages), the batch collection (DAPO's dynamic sampling) and the tokens the loss keeps
(forking tokens). Multi-turn rollouts sample with their environments (grpo.train.episodes). Building and
checking a run, and saving it between steps, is grpo.train.run.

With mu = 1 the "old" policy is the current one: old_logp = logp.detach(), the ratio is exactly 1
and its gradient is grad log pi. The loss printed is then ~0 by construction (advantages are
centred per group), which is expected; watch the reward and the held-out accuracy instead.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm

from grpo.config import TrainConfig
from grpo.data.templates import decode_completions, encode_prompts
from grpo.models.loading import autocast, resolve_device
from grpo.rewards import compute_rewards, reward_inputs
from grpo.rollout.engine import SamplingParams
from grpo.train.batch import Batch, gather_batch
from grpo.train.checkpoint import StopSignals, TrainingInterrupted
from grpo.train.distributed import agreed_signal, full_state_dict, full_weights, sharded_accuracy
from grpo.train.episodes import add_environment_reward, episode_columns
from grpo.train.evaluation import evaluate_accuracy
from grpo.train.metrics import (Timers, current_memory_mib, peak_memory_mib, release_free_heap,
                                reset_peak_memory)
from grpo.train.reward_pool import reward_pool
from grpo.train.rollout_metrics import batch_metrics, warn_if_no_signal
from grpo.train.run import Run, checkpoint_or_stop, count_fault, finish, open_logs, setup_run, start_writing
from grpo.train.run_files import check_output_dir, write_samples
from grpo.train.run_lock import OutputDirLock
from grpo.train.update import step_logprobs, update_policy


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
        if lock.committed:  # resumed: the directory is the run's already
            log, samples = open_logs(run, cfg, stack)
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
                log, samples = open_logs(run, cfg, stack)
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
    finish(run)
    return TrainResult(run.out, state.accuracy_before, acc_after, cfg.train.steps,
                       time.perf_counter() - t_start,
                       run.history, max(run_peak, peak_memory_mib(device)))


def train_step(run: Run, cfg: TrainConfig, pool, timers: Timers) -> StepOutput:
    """One step: sample G completions of each prompt and score them, turn the rewards into advantages,
    then mu policy updates on the clipped surrogate minus beta * KL to the reference.

    `run.variant` holds the parts a configured variant replaces (grpo.train.variants); with the defaults
    this is the paper's step. With several processes this rank samples and trains on its slice of the
    prompts; `everyone` is the batch gathered from every rank, which advantages and metrics are computed on.
    """
    v, dist, device = run.variant, run.dist, next(run.model.parameters()).device
    ctx = lambda: autocast(cfg.model, device)  # noqa: E731
    # this rank's prompts, G scored completions each (dynamic sampling: drawn until the batch is full)
    batch, sampling_metrics = v.collect(lambda: run.draw_prompts(cfg.train.prompts_per_step),
                                        lambda rows: generate_and_score(run, cfg, pool, timers, rows))
    r, everyone = batch.rollout, gather_batch(batch, dist)
    with timers("reference"):  # no grad: pi_ref's log-probs for the KL, pi_old's where the variant needs them
        logp = step_logprobs(run.model, run.ref, r, cfg, ctx, dist, old=v.old_logp, entropy=v.entropy)
    with timers("advantages"):
        # GRPO: A_i = (r_i - mean(r_group)) / std(r_group) for every token of o_i; a variant: its estimator
        advantages = v.advantages(batch, everyone, logp)
        adv = advantages.adv.to(device)  # [N] per completion, or [N, T] per token
        keep, keep_metrics = v.select_tokens(logp.entropy, r.policy_tokens)  # [N, T] bool, None: every token
    with timers("update"):
        release_free_heap(device)  # the update's peak then holds no freed sampling buffers
        beta, critic_metrics = cfg.grpo.beta if advantages.kl_in_loss else 0.0, {}
        for _ in range(cfg.grpo.mu):
            update = update_policy(run.model, run.optimizer, r, adv, logp.ref, logp.old, cfg, ctx, beta=beta,
                                   dist=dist, keep=keep, timers=timers)
            run.scheduler.step()
            count_fault(run.state, update.applied, cfg.train.max_bad_steps)
            if advantages.critic_update is not None and update.applied:  # PPO: the value model learns too
                critic_metrics = advantages.critic_update()
        run.engine.sync_weights(run.model)  # vLLM: its copy of the weights; the HF engine shares them
    record = {**batch_metrics(everyone, cfg, run.specs[0].name), **update.stats, **keep_metrics,
              **advantages.metrics, **critic_metrics, "lr": run.scheduler.get_last_lr()[0],
              "faults/skipped_updates": run.state.skipped_updates, **sampling_metrics}
    return StepOutput(record, everyone.rows, everyone.texts, everyone.rewards, everyone.num_tokens)


def generate_and_score(run: Run, cfg: TrainConfig, pool, timers: Timers, rows: list[dict]) -> Batch:
    """G completions of each prompt in `rows`, decoded and rewarded. Multi-turn (`run.episodic`): each
    completion is an episode with its environment (grpo.train.episodes), scored on its whole text."""
    G, episodes = cfg.grpo.G, None
    with timers("generate"), full_weights(run.model, run.dist):
        sampling = SamplingParams(cfg.sampling.max_new_tokens, cfg.sampling.temperature, cfg.sampling.top_p,
                                  G, cfg.sampling.min_new_tokens)
        if run.episodic is None:
            r = run.engine.generate(encode_prompts(run.tokenizer, [x["prompt"] for x in rows]), sampling,
                                    run.gen)
        else:  # multi-turn: the policy's turns and its environment's answers
            r, episodes = run.episodic.generate(run.engine, rows, sampling, run.gen, pool)
    with timers("reward"):
        # multi-turn: the whole trajectory, the environment's turns included
        texts = decode_completions(run.tokenizer, r.completion_ids, r.completion_mask)
        scored = compute_rewards(run.specs, *reward_inputs(rows, texts, r.completion_lists(), G),
                                 on_error=cfg.rewards.on_error, timeout_s=cfg.rewards.timeout_s, pool=pool)
        rewards = torch.tensor(scored.total, dtype=torch.float32)  # [N]
        if episodes is not None and cfg.rollout.environment:
            rewards = add_environment_reward(rewards, scored.per_function, episodes)
    return Batch(rows, r, texts, rewards, scored.per_function, scored.num_errors, scored.num_timeouts,
                 episodes=episode_columns(episodes) if episodes is not None else {})
