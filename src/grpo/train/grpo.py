"""The GRPO loop (DeepSeekMath §4.1, Algorithm 1 with one iteration), top to bottom.

Each step: sample prompts -> generate G completions each -> score them -> group-relative advantages
-> reference log-probs (once, no grad) -> mu policy updates with the clipped surrogate and the k3 KL
penalty, accumulated over micro-batches -> one optimizer step per update. The phase names are also
the timer names in metrics.jsonl (`time/generate`, ...).

With mu = 1 the "old" policy is the current one: old_logp = logp.detach(), the ratio is exactly 1
and its gradient is grad log pi. The loss printed is then ~0 by construction (advantages are
centred per group), which is expected; watch the reward and the held-out accuracy instead.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from grpo.algorithm import (
    leave_one_out_advantages,
    mask_truncated,
    masked_mean,
    outcome_advantages,
    policy_loss,
    zero_std_fraction,
)
from grpo.config import TrainConfig
from grpo.data import load_task
from grpo.models.loading import Reference, autocast, load_policy
from grpo.rewards import compute_rewards, reward_spec
from grpo.rollout.engine import Rollout, SamplingParams
from grpo.rollout.hf import HFEngine
from grpo.train.common import (
    MetricsLog,
    Timers,
    decode,
    encode_prompts,
    evaluate_accuracy,
    make_optimizer,
    peak_memory_mib,
    prepare_output_dir,
    save_model,
    seed_everything,
)
from grpo.train.logprobs import completion_logprobs


@dataclass
class TrainResult:
    output_dir: Path
    accuracy_before: float
    accuracy_after: float
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)


def _micro_batches(n: int, size: int):
    return [slice(i, i + size) for i in range(0, n, size)]


@torch.no_grad()
def _logprobs_no_grad(model, r: Rollout, cfg: TrainConfig, ctx) -> torch.Tensor:
    """Log-probs of the sampled tokens, micro-batched, without building a graph. [N, T]"""
    out = []
    for mb in _micro_batches(r.completion_ids.shape[0], cfg.train.micro_batch_size):
        with ctx():
            out.append(completion_logprobs(model, r.prompt_ids[mb], r.prompt_mask[mb], r.completion_ids[mb],
                                           r.completion_mask[mb], cfg.sampling.temperature).logp.float())
    return torch.cat(out)


def compute_advantages(rewards: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    g = cfg.grpo
    if g.advantage == "rloo":
        return leave_one_out_advantages(rewards, g.G)
    return outcome_advantages(rewards, g.G, scale=g.scale, std=g.std, eps=g.adv_eps)  # [N]


def update_policy(model, optimizer, r: Rollout, adv, ref_logp, old_logp, cfg: TrainConfig, ctx) -> dict:
    """One optimizer step on the whole batch: micro-batched forward/backward, summed exactly."""
    g = cfg.grpo
    mask = mask_truncated(r.completion_mask, r.truncated) if g.mask_truncated else r.completion_mask  # [N, T]
    totals = dict(total_tokens=float(mask.sum().clamp(min=1)), total_sequences=float(mask.shape[0]))
    stats: dict[str, float] = {}
    optimizer.zero_grad(set_to_none=True)
    for mb in _micro_batches(mask.shape[0], cfg.train.micro_batch_size):
        with ctx():
            lp = completion_logprobs(model, r.prompt_ids[mb], r.prompt_mask[mb], r.completion_ids[mb],
                                     r.completion_mask[mb], cfg.sampling.temperature, with_entropy=True)
        logp = lp.logp.float()  # [n, T]
        loss, m = policy_loss(
            logp, logp.detach() if old_logp is None else old_logp[mb], adv[mb], mask[mb],
            eps_low=g.eps_low, eps_high=g.eps_high, aggregation=g.aggregation,
            ref_logp=None if ref_logp is None else ref_logp[mb], beta=g.beta, ratio_level=g.ratio_level,
            max_completion_length=cfg.sampling.max_new_tokens, **totals)
        loss.backward()
        # loss and pg_loss already carry the whole batch's normaliser: they add up; the token means
        # (clip fractions, ratio, KL, entropy) are weighted by this micro-batch's share of tokens.
        share = float(mask[mb].sum()) / totals["total_tokens"]
        for k, v in {**m, "entropy": masked_mean(lp.entropy, mask[mb]), "loss": loss.detach()}.items():
            stats[k] = stats.get(k, 0.0) + float(v) * (1.0 if k in ("loss", "pg_loss") else share)
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
    optimizer.step()
    stats["grad_norm"] = float(grad_norm)
    return stats


def rollout_metrics(r: Rollout, rewards, per_function: dict, cfg: TrainConfig) -> dict:
    lengths = r.lengths.float()
    out = {
        "reward/mean": float(torch.nanmean(rewards)),
        "reward/std": float(rewards[~rewards.isnan()].std()) if (~rewards.isnan()).sum() > 1 else 0.0,
        "reward/zero_std_groups": float(zero_std_fraction(rewards, cfg.grpo.G)),
        "completion/len_mean": float(lengths.mean()),
        "completion/len_max": float(lengths.max()),
        "completion/truncated": float(r.truncated.float().mean()),
    }
    for name, values in per_function.items():
        out[f"reward/{name}"] = float(torch.tensor(values, dtype=torch.float64).nanmean())
    return out


def train(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    """Run GRPO as configured; returns accuracies before/after and the metrics history."""
    t_start = time.perf_counter()
    seed_everything(cfg.train.seed, cfg.train.threads)
    out = prepare_output_dir(cfg.train.output_dir, cfg)
    model, tokenizer = load_policy(cfg.model, out / "tiny-init")
    device = next(model.parameters()).device
    ctx = lambda: autocast(cfg.model, device)  # noqa: E731
    # the frozen pi_ref: a copy of the initial policy (LoRA: the adapter switched off); none when beta = 0
    ref = Reference(model) if cfg.grpo.beta > 0 else None
    task = load_task(cfg.data, tokenizer, cfg.train.seed)
    specs = [reward_spec(e.fn, e.weight, options=e.options) for e in cfg.rewards.functions]
    checker = specs[0].fn  # held-out accuracy reuses the first (accuracy) reward: they cannot drift apart
    engine = HFEngine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    optimizer, scheduler = make_optimizer(model, cfg.optim, cfg.train.steps * cfg.grpo.mu)
    sampling = SamplingParams(cfg.sampling.max_new_tokens, cfg.sampling.temperature, cfg.sampling.top_p, cfg.grpo.G)
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed)
    order = random.Random(cfg.train.seed)
    log, samples = MetricsLog(out), open(out / "samples.jsonl", "a", encoding="utf-8")
    timers, history, cursor, perm = Timers(), [], 0, []

    acc_before, _ = evaluate_accuracy(engine, tokenizer, task.heldout, checker, cfg.sampling.max_new_tokens)
    bar = tqdm(range(cfg.train.steps), desc="grpo", disable=not progress, dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        if cursor + cfg.train.prompts_per_step > len(perm):  # a fresh shuffled pass over the prompts
            perm, cursor = order.sample(range(len(task.train)), len(task.train)), 0
        rows = [task.train[i] for i in perm[cursor:cursor + cfg.train.prompts_per_step]]
        cursor += cfg.train.prompts_per_step

        with timers("generate"):
            r = engine.generate(encode_prompts(tokenizer, [x["prompt"] for x in rows]), sampling, gen)
        with timers("reward"):
            texts = decode(tokenizer, r.completion_ids, r.completion_mask)
            G = cfg.grpo.G
            columns = {k: [x.get(k) for x in rows for _ in range(G)] for k in rows[0] if k != "prompt"}
            scored = compute_rewards(specs, [x["prompt"] for x in rows for _ in range(G)], texts,
                                     [ids[m.bool()].tolist() for ids, m in zip(r.completion_ids, r.completion_mask)],
                                     columns, on_error=cfg.rewards.on_error, timeout_s=cfg.rewards.timeout_s)
            rewards = torch.tensor(scored.total, dtype=torch.float32)  # [N]
        with timers("advantages"):
            adv = compute_advantages(rewards, cfg).to(device)  # [N]
        with timers("reference"):
            ref_logp = None
            if ref is not None:
                with ref.context():
                    ref_logp = _logprobs_no_grad(ref.model, r, cfg, ctx)
            old_logp = _logprobs_no_grad(model, r, cfg, ctx) if cfg.grpo.mu > 1 else None
        with timers("update"):
            for _ in range(cfg.grpo.mu):
                stats = update_policy(model, optimizer, r, adv, ref_logp, old_logp, cfg, ctx)
                scheduler.step()

        record = {"step": step + 1, **rollout_metrics(r, rewards, scored.per_function, cfg), **stats,
                  "lr": scheduler.get_last_lr()[0], "reward/errors": scored.num_errors,
                  "reward/timeouts": scored.num_timeouts}
        dt = time.perf_counter() - t0
        record.update(timers.pop(), **{"time/step": dt, "tokens_per_s": float(r.lengths.sum()) / dt,
                                       "memory/peak_mib": peak_memory_mib(device)})
        if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < cfg.train.steps:
            record["eval/accuracy"], _ = evaluate_accuracy(engine, tokenizer, task.heldout, checker,
                                                           cfg.sampling.max_new_tokens)
        if cfg.train.sample_every and step % cfg.train.sample_every == 0:
            for i in range(0, len(texts), G):
                samples.write(f'{{"step": {step + 1}, "prompt": {_js(rows[i // G]["prompt"])}, '
                              f'"completion": {_js(texts[i])}, "reward": {rewards[i].item()}}}\n')
            samples.flush()
        log.write(record)
        history.append(record)
        bar.set_postfix(reward=f"{record['reward/mean']:.3f}", kl=f"{record.get('kl', 0.0):.4f}")

    acc_after, _ = evaluate_accuracy(engine, tokenizer, task.heldout, checker, cfg.sampling.max_new_tokens)
    final = {"step": cfg.train.steps, "eval/accuracy": acc_after, "eval/accuracy_before": acc_before}
    log.write(final)
    history.append(final)
    log.close()
    samples.close()
    save_model(model, tokenizer, out / "final")
    _plot(out, history)
    return TrainResult(out, acc_before, acc_after, cfg.train.steps, time.perf_counter() - t_start, history)


def _js(s) -> str:
    import json

    return json.dumps(s)


def _plot(out: Path, history: list[dict]) -> None:
    from grpo.plotting import plot_training

    plot_training(history, out / "training.png")
