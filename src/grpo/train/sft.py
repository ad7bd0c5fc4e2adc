"""Supervised fine-tuning on (prompt, target) pairs: the warm start that GRPO improves on.

The loss is the mean negative log-likelihood of the target tokens (and the EOS after them) only;
prompt tokens are context, not targets. Training runs until held-out greedy accuracy stops
improving (`patience` evaluations without a new best), and the best model is the one saved: the
plateau the paper's RL stage starts from (DeepSeekMath §4.2 starts RL from the SFT model).
"""

from __future__ import annotations

import copy
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
from grpo.models.loading import autocast, load_policy, stop_token_ids
from grpo.models.logprobs import completion_logprobs
from grpo.rewards import load_reward_function
from grpo.rollout.engine import Rollout, pad_left
from grpo.rollout.hf import HFEngine
from grpo.rollout.multiturn import encode_demonstrations
from grpo.train.episodes import Episodic
from grpo.train.evaluation import evaluate_accuracy
from grpo.train.metrics import MetricsLog
from grpo.train.optim import make_optimizer
from grpo.train.batch import seed_everything
from grpo.train.run_files import prepare_output_dir, refuse_existing_run, save_model
from grpo.train.update import micro_batches


@dataclass
class SFTResult:
    output_dir: Path
    model_dir: Path
    best_accuracy: float
    best_step: int
    steps: int
    seconds: float
    history: list[dict]
    test_accuracy: float | None = None
    """Held-out accuracy of the best checkpoint when it was chosen on a validation split (else None:
    best_accuracy is the held-out figure)."""


def encode_pairs(tokenizer, prompts: list[str], targets: list[str]):
    """Rollout layout for teacher forcing: left-padded prompts, right-padded target + EOS."""
    p_ids, p_mask = pad_left(encode_prompts(tokenizer, prompts), tokenizer.pad_token_id)  # [B, P]
    tgt = [ids + [tokenizer.eos_token_id] for ids in tokenizer(targets, add_special_tokens=False)["input_ids"]]
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


def sft(cfg: SFTConfig, progress: bool = True, overwrite: bool = False) -> SFTResult:
    """Train until held-out accuracy plateaus; the best model goes to OUTPUT/final. An sft.output_dir that
    holds a run is refused unless `overwrite` (the CLI's --overwrite)."""
    t_start = time.perf_counter()
    s = cfg.sft
    refuse_existing_run(s.output_dir, overwrite, "sft.output_dir")
    seed_everything(s.seed, s.threads)
    with tempfile.TemporaryDirectory(prefix="grpo-") as staging:  # a mistake in model or data writes nothing
        tiny_dir = Path(staging) / "tiny-init"
        model, tokenizer = load_policy(cfg.model, tiny_dir)
        task = load_task(cfg.data, tokenizer, s.seed)
        if s.target_column not in task.train[0]:
            raise UserError(f"sft.target_column: {s.target_column!r} is not a column of {cfg.data.source} "
                            f"(columns: {', '.join(sorted(task.train[0]))})")
        checker = load_reward_function(s.eval_reward)
        out = prepare_output_dir(s.output_dir, cfg, overwrite)
        if tiny_dir.exists():
            shutil.copytree(tiny_dir, out / "tiny-init", dirs_exist_ok=True)
    device = next(model.parameters()).device
    engine = HFEngine(model, stop_token_ids(model, tokenizer), tokenizer.pad_token_id)
    episodic = Episodic(cfg, tokenizer) if cfg.rollout.multi_turn else None  # tools run in-process here
    optimizer, scheduler = make_optimizer(model, cfg.optim, s.max_steps)
    log, rng = MetricsLog(out, s.tensorboard), random.Random(s.seed)
    best = (-1.0, 0, None)  # (accuracy, step, state_dict)
    evals_since_best, history, perm, cursor = 0, [], [], 0
    best_test = None  # held-out accuracy of the best checkpoint, when the choice is made on validation

    def accuracy(rows: list[dict]) -> float:
        if episodic is not None:
            return episodic.evaluate(engine, rows, checker, None)[0]
        return evaluate_accuracy(engine, tokenizer, rows, checker, cfg.sampling.max_new_tokens)[0]

    bar = tqdm(range(1, s.max_steps + 1), desc="sft", disable=not progress, dynamic_ncols=True)
    for step in bar:
        if cursor + s.batch_size > len(perm):
            perm, cursor = rng.sample(range(len(task.train)), len(task.train)), 0
        rows = [task.train[i] for i in perm[cursor:cursor + s.batch_size]]
        cursor += s.batch_size
        targets = [r[s.target_column] for r in rows]
        if isinstance(targets[0], list):  # demonstrated episodes (chat messages with tool turns)
            pairs = encode_demonstrations(tokenizer, encode_prompts(tokenizer, [r["prompt"] for r in rows]), targets,
                                          tokenizer.eos_token_id, tokenizer.pad_token_id).to(device)
        else:
            batch = [t.to(device) for t in encode_pairs(tokenizer, [r["prompt"] for r in rows], targets)]
            pairs = Rollout(*batch, truncated=torch.zeros(len(rows), dtype=torch.bool, device=device))
        model.train()
        loss = _accumulate_nll(model, pairs, s, lambda: autocast(cfg.model, device), optimizer)
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        record = {"step": step, "loss": loss, "lr": scheduler.get_last_lr()[0]}
        if step % s.eval_every == 0 or step == s.max_steps:
            acc = accuracy(task.validation or task.heldout)
            record["eval/accuracy"] = acc
            if task.validation:
                record["eval/test_accuracy"] = accuracy(task.heldout)
            if acc > best[0]:
                best, evals_since_best = (acc, step, copy.deepcopy(model.state_dict())), 0
                best_test = record.get("eval/test_accuracy")
            else:
                evals_since_best += 1
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", best=f"{best[0]:.3f}")
        log.write(record)
        history.append(record)
        if s.patience and evals_since_best >= s.patience:
            break
    if best[2] is not None:
        model.load_state_dict(best[2])
    log.write({"step": step, "best_step": best[1], "eval/best_accuracy": best[0],
               **({"eval/best_test_accuracy": best_test} if best_test is not None else {}),
               "seconds": time.perf_counter() - t_start})
    log.close()
    save_model(model, tokenizer, out / "final")
    return SFTResult(out, out / "final", best[0], best[1], step, time.perf_counter() - t_start, history, best_test)
