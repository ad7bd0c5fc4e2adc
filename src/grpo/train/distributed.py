"""Several processes (`torchrun --nproc_per_node N -m grpo train ...`): the same run, data-parallel.

    torchrun --standalone --nproc_per_node 2 -m grpo train --config configs/demo.yaml

What changes with N = WORLD_SIZE > 1 processes (docs/distributed.md has the full account):

- Prompts: every rank draws the same global batch of `train.prompts_per_step` prompts from its own
  copy of the `PromptSampler` (same seed, so same sequence) and keeps its contiguous slice
  (`shard`). A group of G completions stays whole on one rank.
- Sampling: rank r's generator is seeded with `train.seed + r` (rank 0 samples as a 1-process run).
- Advantages: the rewards are gathered, advantages computed on the global batch, and each rank takes
  its rows back (`my_rows`), so `grpo.scale=batch` sees the whole batch's std.
- Loss: the aggregation's normaliser is global (`global_totals`): token_mean divides by the global
  token count, the seq modes by the global number of sequences (x max length for Dr. GRPO). Each
  rank's loss is then its share of the global loss and the global gradient is the SUM over ranks of
  the local gradients (`all_reduce_grads`), taken before clipping, so every rank clips the same
  global norm and applies the same step: the weights stay identical without DDP's broadcast.
- Metrics are computed on the gathered batch; only rank 0 writes files (logs, samples, plots,
  checkpoints, the final model), except that under FSDP every rank writes its own shard of a
  checkpoint (`save_shards`). Held-out evaluation is sharded and summed.

With one process every helper here is a no-op, and torch.distributed is never initialised.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as td

from grpo.errors import UserError
from grpo.models.loading import resolve_device

# torch.distributed.fsdp and torch.distributed.checkpoint are imported where they are used: 0.6 s each
# (measured here, after torch), which a run without train.strategy=fsdp does not need.


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the job."""

    rank: int = 0
    """0 .. world_size - 1; rank 0 writes every file."""
    world_size: int = 1
    """Number of processes (torchrun's WORLD_SIZE)."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Where collective buffers live (the model's device: gloo on CPU, nccl on CUDA)."""
    fsdp: bool = False
    """The policy is sharded with fully_shard (train.strategy=fsdp): FSDP reduces the gradients itself."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE = Dist()


def init_distributed(device_name: str) -> Dist:
    """Join the torchrun job when WORLD_SIZE > 1 (env:// rendezvous); else `SINGLE`.

    On CUDA each rank takes the GPU cuda:LOCAL_RANK and uses nccl; on CPU, gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE

    device = resolve_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not td.is_initialized():  # a long held-out evaluation on one rank must not time the others out
        td.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=60))
    return Dist(td.get_rank(), td.get_world_size(), device)


def close_distributed(dist: Dist) -> None:
    if dist.enabled:
        td.barrier()
        td.destroy_process_group()


def check_divisible(prompts_per_step: int, dist: Dist) -> None:
    if prompts_per_step % dist.world_size:
        raise UserError(f"train.prompts_per_step={prompts_per_step} must be a multiple of the number of "
                        f"processes ({dist.world_size}): each process takes an equal share of the prompts")


def shard(items: list, dist: Dist) -> list:
    """This rank's contiguous slice of a list whose length is a multiple of world_size.

    Example: 4 prompts on 2 ranks -> rank 0 gets items[0:2], rank 1 items[2:4].
    """
    k = len(items) // dist.world_size
    return items[dist.rank * k:(dist.rank + 1) * k]


def my_rows(x: torch.Tensor, dist: Dist) -> torch.Tensor:
    """This rank's rows of a tensor gathered in rank order (the inverse of `all_gather_objects`). [n, ...]"""
    k = x.shape[0] // dist.world_size
    return x[dist.rank * k:(dist.rank + 1) * k]


def all_sum(values: list[float], dist: Dist) -> list[float]:
    """Element-wise sum of a few numbers over ranks, in float64 (one collective)."""
    return _all_reduce(values, dist, "SUM")


def all_max(values: list[float], dist: Dist) -> list[float]:
    """Element-wise maximum of a few numbers over ranks, in float64 (one collective)."""
    return _all_reduce(values, dist, "MAX")


def _all_reduce(values: list[float], dist: Dist, op: str) -> list[float]:
    if not dist.enabled:
        return [float(v) for v in values]

    buf = torch.tensor([float(v) for v in values], dtype=torch.float64, device=dist.device)
    td.all_reduce(buf, op=getattr(td.ReduceOp, op))
    return buf.tolist()


def all_min(value: int, dist: Dist) -> int:
    if not dist.enabled:
        return value

    buf = torch.tensor([value], dtype=torch.int64, device=dist.device)
    td.all_reduce(buf, op=td.ReduceOp.MIN)
    return int(buf.item())


def all_gather_objects(obj, dist: Dist) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (pickled; for small per-step summaries)."""
    if not dist.enabled:
        return [obj]

    out = [None] * dist.world_size
    td.all_gather_object(out, obj)
    return out


def global_totals(mask: torch.Tensor, dist: Dist) -> dict[str, float]:
    """The loss normalisers of the whole (global) batch: valid tokens, and sequences with at least one
    valid token (a row masked out entirely does not count, as in `grpo.algorithm.losses.aggregate_loss`),
    over all ranks.

    Passed to `policy_loss(total_tokens=..., total_sequences=...)`, they make each rank's loss its
    share of the global loss: summed over ranks (and micro-batches) it is the 1-process loss.
    """
    tokens, sequences = all_sum([float(mask.sum()), float(mask.bool().any(-1).sum())], dist)
    return dict(total_tokens=max(tokens, 1.0), total_sequences=sequences)


def all_reduce_grads(params: list[torch.Tensor], dist: Dist) -> None:
    """Sum the gradients over ranks in place (one flat buffer, one collective).

    A SUM, not a mean: each rank's loss already carries the global normaliser (`global_totals`).
    A parameter without a gradient on this rank contributes zeros, so every rank sends the same layout.
    """
    if not dist.enabled:
        return
    if dist.fsdp:  # FSDP's reduce-scatter has averaged them (gloo has no pre-scaled sum): undo the 1/world
        for p in params:
            if p.grad is not None:
                p.grad.mul_(dist.world_size)
        return

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])  # [sum of numels]
    td.all_reduce(flat, op=td.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads):
        summed = flat[offset:offset + g.numel()].view_as(p)
        if p.grad is None:
            p.grad = summed.clone()
        else:
            p.grad.copy_(summed)
        offset += g.numel()


def reduce_update_stats(stats: dict[str, float], dist: Dist) -> dict[str, float]:
    """Sum `update_policy`'s per-rank statistics over ranks.

    Each rank's `loss`/`pg_loss` is its share of the global loss, and its token means are weighted by
    its share of the global tokens, so the sums are the global values.
    """
    keys = sorted(stats)
    return dict(zip(keys, all_sum([stats[k] for k in keys], dist)))


def broadcast_parameters(model, dist: Dist) -> None:
    """Rank 0's weights on every rank (the tiny model and LoRA are built from the seed anyway)."""
    if not dist.enabled:
        return

    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            td.broadcast(t.data, src=0)


def agreed_signal(signum: int | None, dist: Dist) -> int | None:
    """A stop signal any rank received (torchrun forwards SIGINT/SIGTERM, not always at the same step)."""
    if not dist.enabled:
        return signum

    buf = torch.tensor([signum or 0], dtype=torch.int64, device=dist.device)
    td.all_reduce(buf, op=td.ReduceOp.MAX)
    return int(buf.item()) or None


def barrier(dist: Dist) -> None:
    if dist.enabled:
        td.barrier()


def sharded_accuracy(evaluate, rows: list[dict], model, dist: Dist) -> float:
    """Held-out accuracy with the rows split over ranks: `evaluate(rows) -> mean score`, summed back.

    Rank r scores rows[r::world_size]; the result is the mean over all rows, on every rank.
    """
    mine = rows[dist.rank::dist.world_size]
    with full_weights(model, dist):
        score = evaluate(mine) * len(mine) if mine else 0.0
    total, count = all_sum([score, len(mine)], dist)
    return total / count if count else float("nan")


def sampling_seed(seed: int, dist: Dist) -> int:
    """Rank r samples with seed + r: distinct streams, and rank 0 samples as a 1-process run would."""
    return seed + dist.rank


class NullLog:
    """What ranks other than 0 log to: nothing."""

    path = None

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def shard_model(model, strategy: str, dist: Dist):
    """(model, dist): with train.strategy=fsdp and several ranks, the policy fully_shard-ed (each decoder
    layer, then the root; weights, gradients and AdamW state split over ranks). Call before building
    the optimizer: fully_shard replaces the parameters."""
    if not dist.enabled or strategy != "fsdp":
        return model, dist

    from torch.distributed.fsdp import fully_shard

    blocks = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)
    return model, dataclasses.replace(dist, fsdp=True)


@contextmanager
def full_weights(model, dist: Dist):
    """Under FSDP: every weight gathered once for the block (generation, evaluation, saving), so that
    the forwards inside are local; ranks may then run different numbers of them (EOS, uneven shards)."""
    if not dist.fsdp:
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    # unshard() is per module, not recursive
    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    model.set_reshard_after_forward(False)
    for m in sharded:
        m.unshard()
    try:
        yield
    finally:
        for m in sharded:
            m.reshard()
        model.set_reshard_after_forward(True)


def full_state_dict(model, dist: Dist, every_rank: bool = False) -> dict | None:
    """Under FSDP: the whole model's weights (a collective: every rank calls it), gathered to rank 0's CPU
    (other ranks get {}), or with `every_rank` to every rank, on the model's device; else None."""
    if not dist.fsdp:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model,
                                options=StateDictOptions(full_state_dict=True, cpu_offload=not every_rank))


def first_error(error: str | None, dist: Dist) -> str | None:
    """The lowest rank's error among every rank's (None: no rank failed). A collective: a step that may
    fail on some ranks only ends with every rank knowing, so none waits on a rank that gave up."""
    if not dist.enabled:
        return error
    return next((e for e in all_gather_objects(error, dist) if e is not None), None)


def save_shards(path, model, optimizer) -> None:
    """Every rank writes its own shard of the weights and the optimizer state into the directory `path`
    (torch.distributed.checkpoint: one file per rank and a `.metadata` written by rank 0; each file is
    fsynced). A collective under FSDP: nothing is gathered, so no rank ever holds the whole state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim = get_state_dict(model, optimizer)
    try:
        dcp.save({"model": weights, "optimizer": optim}, storage_writer=dcp.FileSystemWriter(str(path)))
    except dcp.api.CheckpointException as e:
        raise _plain(e) from None


def load_shards(path, model, optimizer) -> None:
    """What `save_shards` wrote into a model and optimizer laid out any way: FSDP-sharded over any number
    of ranks (torch.distributed.checkpoint reshards), DDP, or one process without torch.distributed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    weights, optim = get_state_dict(model, optimizer)  # the targets (an empty optimizer's state is created)
    single = not (td.is_available() and td.is_initialized())
    try:
        with warnings.catch_warnings():  # one process is meant here: no warning that it assumes so
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp.load({"model": weights, "optimizer": optim}, storage_reader=dcp.FileSystemReader(str(path)),
                     no_dist=single)
    except dcp.api.CheckpointException as e:
        raise _plain(e) from None
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim)


def _plain(e) -> RuntimeError:
    """torch.distributed.checkpoint's CheckpointException (a BaseException, holding each failed rank's
    exception and traceback) as one ordinary exception naming each rank and its reason, e.g.
    "rank 1: No space left on device"."""
    def reason(exc: BaseException) -> str:
        return exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())[:300]

    return RuntimeError("; ".join(f"rank {r}: {reason(exc)}" for r, (exc, _) in sorted(e.failures.items())))


def load_full_state(model, optimizer, weights: dict | None, optim: dict | None, strict: bool = True) -> None:
    """Full (unsharded, name-keyed) weights and optimizer state into a model that may be FSDP-sharded;
    every rank passes the same dicts (each reads the checkpoint). strict=False: `weights` may hold some
    of the model's weights only (the trained ones of a LoRA checkpoint)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, strict=strict)
    if weights is not None:
        set_model_state_dict(model, weights, options=options)
    if optim is not None:
        set_optimizer_state_dict(model, optimizer, optim, options=options)
