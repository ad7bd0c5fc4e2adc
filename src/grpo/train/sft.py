"""Supervised fine-tuning on (prompt, target) pairs: the warm start that GRPO improves on.

The loss is the mean negative log-likelihood of the target tokens (and the EOS after them) only;
prompt tokens are context, not targets. Training runs until held-out greedy accuracy stops
improving (`patience` evaluations without a new best), `max_steps` are done or `max_seconds` of
training steps are spent, and the best model is the one saved: the plateau the paper's RL stage starts
from (DeepSeekMath §4.2 starts RL from the SFT model). With a validation split the checkpoint is chosen
there and the held-out (test) split is never read. With `sft.save_every` the run writes checkpoints, and
`sft.resume` (`grpo sft --resume DIR`) continues it from the newest exactly: the best model so far, the
seconds spent and the data order included (`grpo.train.sft_state`).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from grpo.config import SFTConfig
from grpo.data import load_task
from grpo.data.templates import encode_prompts
from grpo.errors import UserError
from grpo.models.loading import autocast, load_policy, resolve_device, stop_token_ids
from grpo.models.logprobs import completion_logprobs
from grpo.rewards import load_reward_function
from grpo.rollout.engine import Rollout, pad_left
from grpo.rollout.hf import HFEngine
from grpo.rollout.multiturn import encode_demonstrations
from grpo.train.checkpoint import StopSignals, TrainingInterrupted, weights_fingerprint
from grpo.train.episodes import Episodic
from grpo.train.evaluation import evaluate_accuracy
from grpo.train.metrics import MetricsLog
from grpo.train.optim import make_optimizer
from grpo.train.run_files import check_free_space, check_output_dir, prepare_output_dir, save_model
from grpo.train.run_lock import OutputDirLock
from grpo.train.sft_state import (SFTState, load_trained_weights, resume_sft, save_sft_checkpoint,
                                  trained_weights)
from grpo.train.update import micro_batches
from grpo.utils.seeding import seed_everything


@dataclass
class SFTResult:
    output_dir: Path
    model_dir: Path
    best_accuracy: float
    best_step: int
    steps: int
    seconds: float
    history: list[dict]
    train_seconds: float = 0.0
    """Seconds spent in training steps alone (evaluations, loading and saving excluded)."""
    train_cpu_seconds: float = 0.0
    """The same steps' CPU seconds (this process, all threads): robust to other work on the machine."""
    rows_seen: int = 0
    """Training rows consumed, `sft.start_row` included: where a continuation should start."""
    chose_on_validation: bool = False
    """The best checkpoint was chosen on the validation split (the held-out split was never read)."""


def encode_pairs(tokenizer, prompts: list[str], targets: list[str]):
    """Rollout layout for teacher forcing: left-padded prompts, right-padded target + EOS."""
    p_ids, p_mask = pad_left(encode_prompts(tokenizer, prompts), tokenizer.pad_token_id)  # [B, P]
    tgt = [
        ids + [tokenizer.eos_token_id] for ids in tokenizer(targets, add_special_tokens=False)["input_ids"]
    ]
    T = max(map(len, tgt))
    c_ids = torch.full((len(tgt), T), tokenizer.pad_token_id, dtype=torch.long)  # [B, T]
    c_mask = torch.zeros((len(tgt), T), dtype=torch.long)
    for i, ids in enumerate(tgt):
        c_ids[i, :len(ids)] = torch.tensor(ids)
        c_mask[i, :len(ids)] = 1
    return p_ids, p_mask, c_ids, c_mask


def _accumulate_nll(model, r: Rollout, s, ctx, optimizer) -> float:
    """Gradients of the mean NLL of the target tokens of batch `r`, micro-batched (s.micro_batch_size
    pairs, at most s.micro_batch_tokens padded tokens; the whole batch at once by default) and summed
    exactly: each micro-batch's sum is divided by the whole batch's token count. Returns the loss."""
    total = float(r.policy_tokens.sum())  # multi-turn demonstrations: the assistant's tokens only
    optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for mb in micro_batches(r, s.micro_batch_size or r.completion_ids.shape[0], s.micro_batch_tokens):
        with ctx():
            logp = completion_logprobs(model, mb.prompt(r.prompt_ids), mb.prompt(r.prompt_mask),
                                       mb.completion(r.completion_ids), mb.completion(r.completion_mask)).logp
        loss = -(logp.float() * mb.completion(r.policy_tokens)).sum() / total  # [n, t] -> its share
        loss.backward()
        loss_sum += float(loss.detach())
    return loss_sum


def matching_clock(device: str) -> str:
    """The clock compute-matched baselines count on: CPU seconds on a CPU (other processes on a shared
    machine then cost neither side anything), wall seconds on an accelerator (its work is not CPU time)."""
    return "cpu" if resolve_device(device).type == "cpu" else "wall"


CONTINUATION_DERIVED = ("model.path", "sft.start_row", "sft.max_seconds", "sft.max_steps", "sft.eval_every",
                        "optim.warmup_steps")
"""The settings `continuation_overrides` derives from the run it continues and the budget."""


def continuation_overrides(cfg: SFTConfig, first: SFTResult, seconds: float,
                           output_dir: str | Path, clock: str = "wall") -> list[str]:
    """`grpo sft` overrides (of `cfg`, the config `first` ran with) that continue `first` for `seconds` of
    training steps: from its best model, on the rows it did not reach (same seed and batch size), with its
    own warm-up and a decay that follows the budget spent (so it ends where the budget does, whatever a step
    of the new data costs), evaluations about every quarter of the horizon `first`'s seconds per step
    predict, the best of them kept. The compute-matched baseline of an RL stage that took `seconds`
    (`sft_more`), counted on `clock` ('wall' or 'cpu', as sft.clock)."""
    steps = continuation_steps(cfg, first, seconds, clock)
    return [f"model.path={first.model_dir}", f"sft.output_dir={output_dir}",
            f"sft.start_row={first.rows_seen}",  # max_steps: a bound only, the budget ends the run
            f"sft.max_seconds={seconds:.3f}", f"sft.clock={clock}", f"sft.max_steps={4 * steps}",
            f"sft.eval_every={max(1, -(-steps // 4))}", "sft.patience=0",
            f"optim.warmup_steps={min(cfg.optim.warmup_steps, steps // 5)}"]


def continuation_steps(cfg: SFTConfig, first: SFTResult, seconds: float, clock: str = "wall") -> int:
    """The steps `seconds` of training steps buy at `first`'s seconds per step on `clock` (at least 2;
    sft.max_steps where `first` measured no time): the horizon of `continuation_overrides`."""
    spent = first.train_cpu_seconds if clock == "cpu" else first.train_seconds
    per_step = spent / max(first.steps, 1)
    return max(2, round(seconds / per_step)) if per_step > 0 else cfg.sft.max_steps


def batch_order(n: int, batch_size: int, rng: random.Random):
    """Batches of indices of `n` training rows, epoch after epoch: each epoch a fresh shuffle from `rng`
    cut into whole batches (a remainder smaller than a batch is left out of that epoch)."""
    while True:
        perm = rng.sample(range(n), n)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i:i + batch_size]


def sft(cfg: SFTConfig, progress: bool = True, overwrite: bool = False) -> SFTResult:
    """Train until the chosen split's accuracy plateaus (or max_steps / max_seconds); the best model goes to
    OUTPUT/final. An sft.output_dir that holds a run is refused unless `overwrite` (the CLI's --overwrite);
    sft.resume continues the run there from its newest checkpoint (`grpo.train.sft_state`), exactly. One run
    per output directory, `grpo train`'s included (`OutputDirLock`, taken before the model loads).

    Checkpoints: every sft.save_every steps but the last, and after the step during which SIGINT or SIGTERM
    arrived (`TrainingInterrupted`); a signal during the step the run stops at lets it finish instead."""
    t_start = time.perf_counter()
    resume_from = check_output_dir(cfg.sft.output_dir, cfg.sft.resume, overwrite, section="sft")
    # on every RANK: SFT is not distributed, so any process running it writes the directory
    with OutputDirLock(cfg.sft.output_dir, enabled=True, section="sft") as lock:
        if resume_from is not None:
            lock.commit()  # the run's directory already holds its files
        return _sft(cfg, progress, overwrite, resume_from, lock, t_start)


def _sft(cfg: SFTConfig, progress: bool, overwrite: bool, resume_from: Path | None, lock: OutputDirLock,
         t_start: float) -> SFTResult:
    """`sft`'s run, inside its output directory's `lock` (committed once the directory is the run's)."""
    s = cfg.sft
    seed_everything(s.seed, s.threads)
    model, tokenizer, task, checker, out = _load(cfg, resume_from is None, overwrite, lock)
    fingerprint = weights_fingerprint(model)  # of the initial weights: a resume's frozen ones must match
    device = next(model.parameters()).device
    engine = HFEngine(model, stop_token_ids(model, tokenizer), tokenizer.pad_token_id)
    episodic = Episodic(cfg, tokenizer) if cfg.rollout.multi_turn else None  # tools run in-process here
    spent = {"wall": 0.0, "cpu": 0.0}  # the training steps' seconds so far, per clock
    optimizer, scheduler = make_optimizer(model, cfg.optim, s.max_steps, None if s.max_seconds is None else
                                          lambda: spent[s.clock] / s.max_seconds)
    state, best, history = SFTState(init_fingerprint=fingerprint), None, []  # best: the best model's weights
    if resume_from is not None:
        state, best, history = resume_sft(resume_from, out, cfg, model, optimizer, scheduler, fingerprint)
        spent.update(wall=state.train_seconds, cpu=state.train_cpu_seconds)
    earlier = state.seconds  # the earlier sittings' wall seconds, to their last checkpoint
    order = batch_order(len(task.train), s.batch_size, random.Random(s.seed))
    for _ in range(s.start_row // s.batch_size + state.step):  # a continuation or a resume skips what ran
        next(order)
    choice_rows = task.validation or task.heldout  # with a validation split, the held-out one is never read

    def accuracy(rows: list[dict]) -> float:
        if episodic is not None:
            return episodic.evaluate(engine, rows, checker, None)[0]
        return evaluate_accuracy(engine, tokenizer, rows, checker, cfg.sampling.max_new_tokens)[0]

    with contextlib.ExitStack() as stack:
        log = MetricsLog(out, s.tensorboard, resumed_at=state.step)
        stack.callback(log.close)
        stop = stack.enter_context(StopSignals())
        bar = tqdm(range(state.step + 1, s.max_steps + 1), initial=state.step, total=s.max_steps, desc="sft",
                   disable=not progress, dynamic_ncols=True)
        for step in bar:
            t0, c0 = time.perf_counter(), time.process_time()
            loss = _train_step(model, tokenizer, [task.train[i] for i in next(order)], cfg, optimizer,
                               device)
            spent["wall"] += time.perf_counter() - t0
            spent["cpu"] += time.process_time() - c0
            scheduler.step()  # with max_seconds: the decay follows the budget spent (make_optimizer)
            state.step, state.train_seconds, state.train_cpu_seconds = step, spent["wall"], spent["cpu"]
            out_of_time = s.max_seconds is not None and spent[s.clock] >= s.max_seconds
            record = {"step": step, "loss": loss, "lr": scheduler.get_last_lr()[0],
                      "train_seconds": spent["wall"], "train_cpu_seconds": spent["cpu"]}
            if step % s.eval_every == 0 or step == s.max_steps or out_of_time:
                record["eval/accuracy"] = acc = accuracy(choice_rows)
                if acc > state.best_accuracy:
                    state.best_accuracy, state.best_step, state.evals_since_best = acc, step, 0
                    best = trained_weights(model)
                else:
                    state.evals_since_best += 1
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", best=f"{state.best_accuracy:.3f}")
            log.write(record)
            history.append(record)
            plateau = s.patience and state.evals_since_best >= s.patience
            if out_of_time or plateau or step == s.max_steps:
                break
            if (s.save_every and step % s.save_every == 0) or stop.signum is not None:
                state.seconds = earlier + time.perf_counter() - t_start
                path = save_sft_checkpoint(out, cfg, state, model, optimizer, scheduler, best, log.path)
                if stop.signum is not None:
                    raise TrainingInterrupted(stop.signum, step, path, out, command="sft")
        if best is not None:
            load_trained_weights(model, best)
        rows_seen = s.start_row + state.step * s.batch_size
        log.write({"step": state.step, "best_step": state.best_step,
                   "eval/best_accuracy": state.best_accuracy, "train_seconds": spent["wall"],
                   "train_cpu_seconds": spent["cpu"], "rows_seen": rows_seen,
                   "chose_on_validation": bool(task.validation),
                   "seconds": earlier + time.perf_counter() - t_start})
    save_model(model, tokenizer, out / "final")
    return SFTResult(out, out / "final", state.best_accuracy, state.best_step, state.step,
                     earlier + time.perf_counter() - t_start, history, train_seconds=spent["wall"],
                     train_cpu_seconds=spent["cpu"], rows_seen=rows_seen,
                     chose_on_validation=bool(task.validation))


def _load(cfg: SFTConfig, fresh: bool, overwrite: bool, lock: OutputDirLock):
    """(model, tokenizer, task, checker, output directory), checked (free space included) before anything is
    written; a `fresh` run's directory then gets its config.yaml (and the tiny model's initial weights), and
    `lock` is committed: the directory is the run's."""
    s = cfg.sft
    with tempfile.TemporaryDirectory(prefix="grpo-") as staging:  # a mistake in model or data writes nothing
        tiny_dir = Path(staging) / "tiny-init"
        model, tokenizer = load_policy(cfg.model, tiny_dir)
        task = load_task(cfg.data, tokenizer, s.seed)
        if s.target_column not in task.train[0]:
            raise UserError(f"sft.target_column: {s.target_column!r} is not a column of {cfg.data.source} "
                            f"(columns: {', '.join(sorted(task.train[0]))})")
        if s.train_rows:  # a few demonstrations only: a fixed choice per seed
            task.train = [
                task.train[i]
                for i in random.Random(f"rows-{s.seed}").sample(
                    range(len(task.train)), min(s.train_rows, len(task.train))
                )
            ]
        checker = load_reward_function(s.eval_reward)
        check_free_space(s.output_dir, model, checkpoints=s.save_every > 0, section="sft")
        if not fresh:  # resumed: the directory holds the run's files already
            return model, tokenizer, task, checker, Path(s.output_dir)
        lock.commit()
        out = prepare_output_dir(s.output_dir, cfg, overwrite)
        if tiny_dir.exists():
            shutil.copytree(tiny_dir, out / "tiny-init", dirs_exist_ok=True)
    return model, tokenizer, task, checker, out


def _train_step(model, tokenizer, rows: list[dict], cfg: SFTConfig, optimizer, device) -> float:
    """One optimizer step on the mean NLL of the batch `rows`' targets; returns the loss."""
    s = cfg.sft
    targets = [r[s.target_column] for r in rows]
    if isinstance(targets[0], list):  # demonstrated episodes (chat messages with tool turns)
        prompts = encode_prompts(tokenizer, [r["prompt"] for r in rows])
        pairs = encode_demonstrations(tokenizer, prompts, targets, tokenizer.eos_token_id,
                                      tokenizer.pad_token_id).to(device)
    else:
        batch = [t.to(device) for t in encode_pairs(tokenizer, [r["prompt"] for r in rows], targets)]
        pairs = Rollout(*batch, truncated=torch.zeros(len(rows), dtype=torch.bool, device=device))
    model.train()
    loss = _accumulate_nll(model, pairs, s, lambda: autocast(cfg.model, device), optimizer)
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    optimizer.step()
    return loss
