"""The policy update of the GRPO loop (and of its PPO / RFT baselines): log-probs without a graph for
the reference and pi_old, and one optimizer step on a batch, micro-batched and summed exactly.

Micro-batches (`micro_batches`) hold rows of similar completion length, each cut to its own longest
prompt and completion, so padding costs little: the G rows of a prompt stay together (the forward runs
their prompt once, grpo.models.logprobs) and groups are ordered by their longest completion.
`train.micro_batch_tokens` also caps the padded tokens of a micro-batch, so memory follows tokens
rather than rows.

Functions of a model, an optimizer and a rollout; the step (`grpo.train.grpo.train_step`) decides when
to call them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from grpo.algorithm import importance_weights, mask_truncated, masked_mean, mismatch_metrics, policy_loss
from grpo.config import TrainConfig
from grpo.models.logprobs import completion_logprobs, prompt_groups
from grpo.rollout.engine import Rollout
from grpo.train.distributed import (
    SINGLE,
    Dist,
    all_max,
    all_min,
    all_reduce_grads,
    global_totals,
    reduce_update_stats,
)
from grpo.train.metrics import Timers
from grpo.train.optim import clip_gradients


class MicroBatch(NamedTuple):
    """Rows of a batch that one forward/backward takes, and the columns it keeps."""

    rows: torch.Tensor
    """[n] indices into the batch; the rows of one prompt are consecutive."""
    prompt_len: int
    """The last prompt_len prompt columns (prompts are left-padded): these rows'
    longest prompt (at least 1)."""
    completion_len: int
    """The first completion_len completion columns: these rows' longest completion (at least 1)."""

    def prompt(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.rows, x.shape[1] - self.prompt_len:]  # [n, prompt_len]

    def completion(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, T] (or [N]: rows only) cut to this micro-batch."""
        return x[self.rows] if x.dim() == 1 else x[self.rows, :self.completion_len]

    def select(self, r: Rollout) -> Rollout:
        """The rows and columns of `r` this micro-batch takes."""
        return Rollout(self.prompt(r.prompt_ids), self.prompt(r.prompt_mask),
                       self.completion(r.completion_ids),
                       self.completion(r.completion_mask), r.truncated[self.rows])

    @property
    def tokens(self) -> int:
        """Padded tokens of the micro-batch: rows x (prompt + completion columns)."""
        return len(self.rows) * (self.prompt_len + self.completion_len)


def micro_batches(r: Rollout, size: int, max_tokens: int | None = None,
                  dist: Dist = SINGLE) -> list[MicroBatch]:
    """Split the batch `r` into micro-batches of at most `size` rows (and, with max_tokens, at most that
    many padded tokens, rows x (prompt + completion columns); a row longer than that goes alone).

    Rows are ordered by their group's longest completion, then by group (a run of rows with the same
    prompt), then by length, longest first, and cut in that order: micro-batches of similar lengths,
    whose rows of one prompt stay consecutive, so the forward still runs that prompt once. Longest
    first: the largest micro-batch comes first, so later ones fit in the memory it freed (the heap grows
    less) and a batch too large for memory fails at once. Each micro-batch keeps only the columns its
    rows use; a batch that fits in one micro-batch keeps its own row order. The split depends on the
    lengths only, so it is the same in every pass over a batch (reference, pi_old, update). With several
    processes and max_tokens, every rank makes the same number of micro-batches (FSDP's collectives run
    once per forward and backward): a rank with fewer halves its largest until the counts agree.
    """
    lens = r.completion_mask.sum(1).tolist()  # [N]
    prompt_lens = r.prompt_mask.sum(1).tolist()  # [N]
    widths = lambda rows: (max(1, max(prompt_lens[i] for i in rows)),  # noqa: E731
                           max(1, max(lens[i] for i in rows)))
    group = prompt_groups(r.prompt_ids, r.prompt_mask)[1].tolist()  # [N] run of identical prompts
    longest = {}
    for g, n in zip(group, lens):
        longest[g] = max(longest.get(g, 0), n)
    order = sorted(range(len(lens)), key=lambda i: (-longest[group[i]], group[i], -lens[i]))  # longest first
    cuts, current, P, T = [], [], 1, 1  # P, T: the current micro-batch's longest prompt and completion
    for i in order:
        p, t = max(P, prompt_lens[i]), max(T, lens[i])
        if current and (len(current) == size
                        or (max_tokens is not None and (len(current) + 1) * (p + t) > max_tokens)):
            cuts.append(current)
            current, p, t = [], max(1, prompt_lens[i]), max(1, lens[i])
        current.append(i)
        P, T = p, t
    if current:
        cuts.append(current)
    if len(cuts) == 1:
        cuts = [sorted(cuts[0])]  # one forward over the whole batch: its rows in their own order
    if max_tokens is not None and dist.enabled:
        wanted = -all_min(-len(cuts), dist)
        while len(cuts) < wanted:
            splittable = [c for c in cuts if len(c) > 1]
            if not splittable:
                raise RuntimeError(f"rank {dist.rank}: {len(order)} rows cannot make the {wanted} "
                                   "micro-batches another rank needs (every rank should hold the same number "
                                   "of rows)")
            big = max(splittable, key=lambda c: len(c) * sum(widths(c)))
            k = cuts.index(big)
            cuts[k:k + 1] = [big[:len(big) // 2], big[len(big) // 2:]]
    device = r.completion_ids.device
    return [MicroBatch(torch.tensor(c, dtype=torch.long, device=device), *widths(c)) for c in cuts]


class NoGradLogProbs(NamedTuple):
    logp: torch.Tensor
    """[N, T] log-probs of the sampled tokens (0 past a row's end)."""
    entropy: torch.Tensor | None
    """[N, T] the policy's entropy at each position (0 past a row's end), if asked."""


@torch.no_grad()
def logprobs_no_grad(model, r: Rollout, cfg: TrainConfig, ctx, dist: Dist = SINGLE,
                     with_entropy: bool = False) -> NoGradLogProbs:
    """Log-probs of the sampled tokens (and the entropy), micro-batched, without building a graph."""
    out = torch.zeros(r.completion_ids.shape, dtype=torch.float32, device=r.completion_ids.device)  # [N, T]
    ent = torch.zeros_like(out) if with_entropy else None  # [N, T]
    for mb in micro_batches(r, cfg.train.micro_batch_size, cfg.train.micro_batch_tokens, dist):
        with ctx():
            lp = completion_logprobs(model, mb.prompt(r.prompt_ids), mb.prompt(r.prompt_mask),
                                     mb.completion(r.completion_ids), mb.completion(r.completion_mask),
                                     cfg.sampling.temperature, with_entropy=with_entropy)
        pad = mb.completion(r.completion_mask) == 0
        out[mb.rows, :mb.completion_len] = lp.logp.float().masked_fill(pad, 0.0)
        if with_entropy:
            ent[mb.rows, :mb.completion_len] = lp.entropy.float().masked_fill(pad, 0.0)
    return NoGradLogProbs(out, ent)


class StepLogProbs(NamedTuple):
    """A step's log-probs of the sampled tokens, taken without gradients before the update (0 past a row's
    end)."""

    ref: torch.Tensor | None
    """[N, T] pi_ref's, for the KL (None without a reference: beta = 0, or RFT)."""
    old: torch.Tensor | None
    """[N, T] pi_old's (None: not computed; the update takes its own logp.detach(), exact for mu = 1)."""
    entropy: torch.Tensor | None
    """[N, T] pi_old's entropy at each position, if asked (forking tokens)."""


def step_logprobs(model, ref, r: Rollout, cfg: TrainConfig, ctx, dist: Dist = SINGLE, old: bool = False,
                  entropy: bool = False) -> StepLogProbs:
    """The reference's log-probs (`ref`: a grpo.models.loading.Reference, or None), then, if `old`, the
    policy's own before the update (with its entropy, if `entropy`)."""
    ref_logp = None
    if ref is not None:
        with ref.context():
            ref_logp = logprobs_no_grad(ref.model, r, cfg, ctx, dist).logp
    pi_old = logprobs_no_grad(model, r, cfg, ctx, dist, with_entropy=entropy) if old else None
    return StepLogProbs(ref_logp, None if pi_old is None else pi_old.logp,
                        None if pi_old is None else pi_old.entropy)


def correction_mode(cfg: TrainConfig) -> str:
    """rollout.correction with 'auto' resolved: 'tis' where the sampler's numbers are not the trainer's
    (vLLM's kernels; bf16 on either side: the built-in engine's bf16 weight copies under rollout.dtype or
    model.dtype=bfloat16, or the trainer's bf16 autocast, which rounds otherwise than those copies even
    when both are bf16), else 'none': fp32 sampling by the built-in engine under an fp32 trainer, equal to
    rounding."""
    mode = cfg.rollout.correction
    if mode != "auto":
        return mode
    same = cfg.rollout.engine == "hf" and cfg.model.dtype == cfg.sampler_dtype == "float32"
    return "none" if same else "tis"


def sampler_correction(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                       cfg: TrainConfig) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """(weights [n, T] or None, metrics) for the rows of one micro-batch: `grpo.algorithm.correction` with
    the rollout.correction* settings. trainer_logp is pi_old's (no grad), sampler_logp the engine's."""
    c = cfg.rollout
    metrics = mismatch_metrics(trainer_logp, sampler_logp, mask, low=c.correction_low, high=c.correction_high)
    mode = correction_mode(cfg)
    if mode == "none":
        return None, metrics
    weights = importance_weights(trainer_logp, sampler_logp, mask, mode=mode, level=c.correction_level,
                                 low=c.correction_low, high=c.correction_high)  # [n, T]
    metrics["correction/weight_mean"] = masked_mean(weights, mask)
    metrics["correction/dropped_frac"] = masked_mean((weights == 0).to(weights.dtype), mask)
    return weights, metrics


class UpdateResult(NamedTuple):
    stats: dict
    """loss, pg_loss, kl, clip fractions, entropy, grad_norm, mismatch/* (docs/metrics.md)."""
    applied: bool
    """False: the loss or the gradient norm was not finite, and the optimizer step was skipped."""


def update_policy(model, optimizer, r: Rollout, adv, ref_logp, old_logp, cfg: TrainConfig, ctx,
                  dist: Dist = SINGLE, beta: float | None = None, keep: torch.Tensor | None = None,
                  timers: Timers | None = None) -> UpdateResult:
    """One optimizer step on the whole batch: micro-batched forward/backward, summed exactly.

    `adv` is [N] or [N, T]; `beta` overrides grpo.beta (PPO folds the KL into its reward instead);
    `keep` [N, T] bool: the tokens the loss keeps (grpo.top_entropy_quantile; None: every policy token).
    With several processes `r` is this rank's share: the loss normalisers are the global batch's and the
    gradients and statistics are summed over ranks (grpo.train.distributed), so every rank takes the
    step a single process would take on the whole batch.

    When the engine gave its log-probs (`r.logp`), the sampler/trainer mismatch is measured against pi_old
    on every micro-batch and, per rollout.correction, the surrogate is weighted (`sampler_correction`).

    A non-finite loss or gradient norm skips the step (gradients dropped, weights and optimizer state
    unchanged); the caller counts it. `timers` times the sub-phases forward (the policy's forward with
    gradients), clip_grad and optimizer (docs/metrics.md).
    """
    g, timers = cfg.grpo, timers or Timers()
    beta = g.beta if beta is None else beta
    # the policy's own tokens (multi-turn: not the environment's, which the forward still attends to)
    mask = mask_truncated(r.policy_tokens, r.truncated) if g.mask_truncated else r.policy_tokens  # [N, T]
    loss_mask = mask if keep is None else mask * keep.to(mask.dtype)  # [N, T]
    totals = global_totals(loss_mask, dist)
    policy_tokens = totals["total_tokens"] if keep is None else global_totals(mask, dist)["total_tokens"]
    stats: dict[str, float] = {}
    maxima: dict[str, float] = {}
    optimizer.zero_grad(set_to_none=True)
    for mb in micro_batches(r, cfg.train.micro_batch_size, cfg.train.micro_batch_tokens, dist):
        with timers("forward"), ctx():
            lp = completion_logprobs(model, mb.prompt(r.prompt_ids), mb.prompt(r.prompt_mask),
                                     mb.completion(r.completion_ids), mb.completion(r.completion_mask),
                                     cfg.sampling.temperature, with_entropy=True,
                                     entropy_grad=g.entropy_coef != 0)
        logp, mb_mask, mb_policy = lp.logp.float(), mb.completion(loss_mask), mb.completion(mask)  # [n, t]
        old = logp.detach() if old_logp is None else mb.completion(old_logp)  # [n, t]
        weights, sampler = (None, {}) if r.logp is None else \
            sampler_correction(old, mb.completion(r.logp), mb_policy, cfg)
        loss, m = policy_loss(
            logp, old, mb.completion(adv), mb_mask,
            eps_low=g.eps_low, eps_high=g.eps_high, aggregation=g.aggregation,
            ref_logp=None if ref_logp is None else mb.completion(ref_logp), beta=beta,
            ratio_level=g.ratio_level,
            max_completion_length=cfg.sampling.max_new_tokens, token_weights=weights,
            entropy=lp.entropy.float(), entropy_coef=g.entropy_coef, **totals)
        loss.backward()
        # loss and pg_loss already carry the whole batch's normaliser: they add up; the token means are
        # weighted by this micro-batch's share of the tokens they average over (clip fractions, ratio and
        # KL: the tokens the loss keeps; entropy and the mismatch: every policy token).
        share = float(mb_mask.sum()) / totals["total_tokens"]
        policy_share = float(mb_policy.sum()) / policy_tokens
        means = {**{k: (v, 1.0 if k in ("loss", "pg_loss") else share) for k, v in m.items()},
                 "loss": (loss.detach(), 1.0),
                 "entropy": (masked_mean(lp.entropy.detach(), mb_policy), policy_share)}
        for k, v in sampler.items():
            if k.endswith("_max"):
                maxima[k] = max(maxima.get(k, 0.0), float(v))
            else:
                means[k] = (v, policy_share)
        for k, (v, w) in means.items():
            stats[k] = stats.get(k, 0.0) + float(v) * w
    params = [p for p in model.parameters() if p.requires_grad]
    stats = reduce_update_stats(stats, dist)
    stats.update(zip(sorted(maxima), all_max([maxima[k] for k in sorted(maxima)], dist)))
    all_reduce_grads(params, dist)
    with timers("clip_grad"):
        stats["grad_norm"] = float(clip_gradients(params, cfg.optim))
    applied = math.isfinite(stats["loss"]) and math.isfinite(stats["grad_norm"])
    if applied:
        with timers("optimizer"):
            optimizer.step()
    # dropped either way: a NaN or inf must reach neither the weights nor Adam's moments, and a gradient
    # kept until the next update would hold a copy of the weights' size through generation
    optimizer.zero_grad(set_to_none=True)
    return UpdateResult(stats, applied)
