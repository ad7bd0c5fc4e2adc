"""What a step measures about itself: wall time per phase (`Timers`), memory, and the metrics file."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import secrets
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from grpo.errors import UserError


class Timers:
    """Wall time per named phase of a step: `with timers("update"): ...`, logged as `time/update`. A phase
    opened inside another is its sub-phase (`with timers("forward")` inside "update": `time/update/forward`).

    on_start / on_end: called with the phase's full name ("update/forward") as it starts and ends; a bench
    hooks its own measurements there (bench/heap_by_phase.py) instead of patching the loop.
    """

    def __init__(self, on_start: Callable[[str], None] | None = None,
                 on_end: Callable[[str], None] | None = None):
        self.seconds: dict[str, float] = {}
        self.open: list[str] = []
        self.on_start, self.on_end = on_start, on_end

    @contextmanager
    def __call__(self, name: str):
        self.open.append(name)
        key = "/".join(self.open)
        if self.on_start is not None:
            self.on_start(key)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0
            self.open.pop()
            if self.on_end is not None:
                self.on_end(key)

    def pop(self) -> dict[str, float]:
        """The seconds of every phase since the last pop, as `time/<phase>` metrics; then start afresh."""
        out, self.seconds = {f"time/{k}": v for k, v in self.seconds.items()}, {}
        return out



def current_memory_mib(device: torch.device) -> float:
    """Memory in use now: allocated accelerator memory, else the process's resident set size (Linux)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def held_state_mib(held: list) -> float:
    """MiB of the weights, gradients and optimizer state of (model, optimizer or None) pairs, each
    storage counted once (an FSDP-sharded parameter counts its local shard)."""
    sizes = {}
    for model, optimizer in held:
        params = list(model.parameters())
        tensors = params + [p.grad for p in params if p.grad is not None]
        if optimizer is not None:
            tensors += [t for st in optimizer.state.values() for t in st.values() if torch.is_tensor(t)]
        for t in tensors:
            t = t.to_local() if hasattr(t, "to_local") else t
            try:
                sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            except RuntimeError:  # a storage Python cannot look into: count the tensor itself
                sizes[id(t)] = t.numel() * t.element_size()
    return sum(sizes.values()) / 2**20


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's peak allocation, or (Linux) the resident set's high-water mark."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set size
    except OSError:
        pass  # not Linux, or not permitted: the peak is then the process's peak so far


def release_free_heap(device: torch.device) -> bool:
    """On the CPU under glibc: hand the heap's free pages back to the kernel (`malloc_trim(0)`). Between a
    step's phases, generation's and the reference's freed buffers otherwise stay in the heap in pieces the
    update's larger tensors do not fit, and the resident set's peak holds both. True if it ran."""
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(ctypes.c_size_t(0))
    except (OSError, AttributeError):  # musl or another libc: nothing to do
        return False
    return True


def peak_memory_mib(device: torch.device) -> float:
    """Peak accelerator memory if on one, else the peak resident set size (since the last
    `reset_peak_memory`, where the OS allows resetting it)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


class MetricsLog:
    """metrics.jsonl (one JSON object per step) and, when asked, TensorBoard scalars
    and a Weights & Biases run."""

    def __init__(self, out_dir: Path, tensorboard: bool = False, name: str = "metrics.jsonl",
                 resumed_at: int = 0, wandb_project: str | None = None, config: dict | None = None):
        """resumed_at: the step of the checkpoint a resumed run continues from; TensorBoard then hides
        the events of later steps a stopped run had logged (as metrics.jsonl is cut back to it).
        wandb_project: also log to Weights & Biases (`start_wandb`), with `config` as the run's config."""
        self.path = out_dir / name
        self.tb = None
        self.wandb = start_wandb(out_dir, wandb_project, config or {}) if wandb_project else None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError(
                    "TensorBoard logging needs the tensorboard package: pip install tensorboard"
                ) from None
            self.tb = SummaryWriter(str(out_dir / "tensorboard"),
                                    purge_step=resumed_at + 1 if resumed_at else None)
        self.file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as e:  # a full disk: one clear line, and the last checkpoint stays as it was
            raise UserError(f"cannot write {self.path}: {e.strerror or e}") from None
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, record["step"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


WANDB_ID = "grpo-run-id"
"""In OUTPUT/wandb: the id of the run's Weights & Biases run, so that a resumed run logs into the same one."""


def start_wandb(out_dir: Path, project: str, config: dict):
    """A Weights & Biases run writing its files under OUTPUT/wandb, named after the output directory; the
    same run again when resuming (its id is kept in OUTPUT/wandb/grpo-run-id). WANDB_MODE and the other
    WANDB_* variables apply (offline: nothing leaves the machine)."""
    import wandb  # optional dependency (grpo[wandb]): config.py checks it is installed when asked for

    (out_dir / "wandb").mkdir(parents=True, exist_ok=True)
    id_file = out_dir / "wandb" / WANDB_ID
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    id_file.write_text(run_id)
    return wandb.init(project=project, name=out_dir.resolve().name, id=run_id, resume="allow",
                      dir=str(out_dir),
                      config=config, settings=wandb.Settings(console="off", silent=True))
