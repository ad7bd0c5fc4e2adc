"""Pieces the GRPO and SFT loops share: seeding, optimizer and schedule, metrics files, evaluation."""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import random
import resource
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from grpo.config import OptimConfig, save_config
from grpo.data.templates import encode_prompts
from grpo.errors import UserError
from grpo.rollout.engine import SamplingParams


def seed_everything(seed: int, threads: int = 0) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)


def prepare_output_dir(path: str | Path, cfg) -> Path:
    """Create the run directory (checked writable up front) and save the resolved config in it."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output directory {out} is not writable: {e.strerror or e}") from None
    save_config(cfg, out / "config.yaml")
    return out


def make_optimizer(model, cfg: OptimConfig, total_steps: int):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)

    def factor(step: int) -> float:  # step counts optimizer steps already taken
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if cfg.schedule == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


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
    """metrics.jsonl (one JSON object per step) and, when asked, TensorBoard scalars."""

    def __init__(self, out_dir: Path, tensorboard: bool = False, name: str = "metrics.jsonl",
                 resumed_at: int = 0):
        """resumed_at: the step of the checkpoint a resumed run continues from; TensorBoard then hides
        the events of later steps a stopped run had logged (as metrics.jsonl is cut back to it)."""
        self.path = out_dir / name
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("TensorBoard logging needs the tensorboard package: pip install tensorboard") from None
            self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resumed_at + 1 if resumed_at else None)
        self.file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as e:  # a full disk: one clear line, and the last checkpoint stays as it was
            raise UserError(f"cannot write {self.path}: {e.strerror or e}") from None
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


class PromptSampler:
    """Prompt indices for each step: shuffled passes over the training set, `k` at a time.

    A pass too short to fill a batch is dropped and a new one shuffled, so every batch has `k`
    distinct prompts. `state_dict()` is the exact position (permutation, cursor, RNG) for resuming.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.rng, self.perm, self.cursor = n, random.Random(seed), [], 0

    def next(self, k: int) -> list[int]:
        if self.cursor + k > len(self.perm):
            self.perm, self.cursor = self.rng.sample(range(self.n), self.n), 0
        self.cursor += k
        return self.perm[self.cursor - k:self.cursor]

    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"n": self.n, "perm": self.perm, "cursor": self.cursor, "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise UserError(f"cannot resume: the training set now has {self.n} prompts, the run had {state['n']}; "
                            "restore the data (data.source) the run started with")
        version, internal, gauss = state["rng"]
        self.perm, self.cursor = list(state["perm"]), state["cursor"]
        self.rng.setstate((version, tuple(internal), gauss))


@contextmanager
def reward_pool(workers: int):
    """The reward process pool for `compute_rewards(pool=...)` (None when workers = 0), closed on exit.

    Ctrl-C in a terminal signals the whole process group. The workers are started with SIGINT and
    SIGTERM ignored (spawned children inherit that), so that only the trainer reacts: it finishes
    the step, checkpoints and stops, instead of losing the step to a broken pool.
    """
    if workers == 0:
        yield None
        return
    from grpo.rewards import make_reward_pool

    pool = make_reward_pool(workers)
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        concurrent.futures.wait([pool.submit(int) for _ in range(workers)])  # start every worker now
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    processes = list(getattr(pool, "_processes", {}).values())
    try:
        yield pool
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:  # a worker stuck in a hung reward call would otherwise block the exit
            p.join(timeout=1)
            if p.is_alive():
                p.kill()  # SIGKILL: the workers ignore SIGTERM (above)
                p.join()


class Timers:
    """Wall time per named phase of a step (`with timers("generate"): ...`)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def pop(self) -> dict[str, float]:
        out, self.seconds = {f"time/{k}": v for k, v in self.seconds.items()}, {}
        return out


def decode(tokenizer, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Completion texts: the masked tokens, special tokens (EOS, pad) removed."""
    return tokenizer.batch_decode([row[m.bool()].tolist() for row, m in zip(ids, mask)], skip_special_tokens=True)


def evaluate_accuracy(engine, tokenizer, rows: list[dict], checker, max_new_tokens: int,
                      batch_size: int = 128) -> tuple[float, list[str]]:
    """Greedy held-out accuracy: mean of `checker` (the accuracy reward itself) over `rows`. The checker
    gets what training's rewards get: the completion texts and their unpadded ids (EOS included)."""
    if not rows:
        return float("nan"), []
    texts, scores = [], []
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, G=1)
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        r = engine.generate(encode_prompts(tokenizer, [x["prompt"] for x in chunk]), params)
        batch_texts = decode(tokenizer, r.completion_ids, r.completion_mask)
        columns = {k: [x.get(k) for x in chunk] for k in chunk[0] if k != "prompt"}
        ids = [row[m.bool()].tolist() for row, m in zip(r.completion_ids, r.completion_mask)]
        values = checker(prompts=[x["prompt"] for x in chunk], completions=batch_texts, completion_ids=ids,
                         **columns)
        scores += [0.0 if v is None else float(v) for v in values]
        texts += batch_texts
    return sum(scores) / len(scores), texts


def save_model(model, tokenizer, path: Path, state_dict: dict | None = None) -> None:
    """save_pretrained into a temporary directory, then rename: a crash never leaves half a model.

    state_dict: the weights to write instead of the model's own (FSDP: the gathered full weights)."""
    import shutil

    from grpo.models.lora import is_lora, unsharded_copy

    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if is_lora(model):  # the adapter alone, and the merged model that plain transformers loads
        import copy

        if state_dict is not None:  # FSDP: this process holds shards; an unsharded copy from the full weights
            model = unsharded_copy(model, state_dict)
        model.save_pretrained(tmp / "adapter")
        (model if state_dict is not None else copy.deepcopy(model)).merge_and_unload().save_pretrained(tmp)
    else:
        model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
