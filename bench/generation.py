"""Generation alone on SmolLM2-135M-Instruct at the real bench's settings: the first 4 chat prompts of
data/word_problems_train.jsonl x G=8 = 32 rows, up to 64 new tokens at temperature 0.7, fp32, 2 threads,
through `HFEngine.generate` (the lean decoder). Prints one JSON line per run (seconds, tokens, a hash
of the tokens and log-probs, so two source trees can be checked for the same output) and the median.

    python bench/generation.py [--runs 5] [--seed 0]      # docs/performance.md, "Generation"
    python bench/generation.py --profile                  # torch.profiler table of one generate
    python bench/generation.py --gemms                    # a decode step's projections against a matmul
    python bench/generation.py --dtype bfloat16           # the bf16 sampler (rollout.dtype=bfloat16)
    python bench/generation.py --dtype both --runs 3      # fp32 and bf16 samplers, run by run
    git worktree add --detach /tmp/gen-base BASE_COMMIT
    python bench/generation.py --runs 7 --baseline /tmp/gen-base/src   # the two trees, run by run

--baseline SRC imports SRC's `grpo` package as well (copied to a temporary directory as `grpo_baseline`,
its imports renamed) and alternates the two trees' `HFEngine.generate` on the same model in the same
process, so that both see the same machine: the speed of this shared 2-core VM drifts by minutes.

Each round of runs also times a 2048^3 float32 matmul and a sum over 400 MB at the same thread count,
and prints the generation's floor from them: the larger of 2 x parameters x completion tokens at the
matmul rate and (decode steps) x weight bytes at the read bandwidth; the medians come with their ratio
to the median floor.
"""

import argparse
import collections
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from grpo.data.templates import encode_prompts  # noqa: E402
from grpo.models.convert import resolve_model_path  # noqa: E402
from grpo.rollout.engine import SamplingParams  # noqa: E402
from grpo.rollout.hf import HFEngine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def digest(r) -> str:
    """A short hash of the rollout's tokens, mask and log-prob bits."""
    h = hashlib.sha256()
    for t in (r.completion_ids, r.completion_mask, r.logp):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def baseline_engine(src: str):
    """HFEngine from the source tree `src`, imported as the package `grpo_baseline`."""
    tmp = Path(tempfile.mkdtemp(prefix="grpo-baseline-"))
    shutil.copytree(Path(src) / "grpo", tmp / "grpo_baseline")
    for f in (tmp / "grpo_baseline").rglob("*.py"):
        text = f.read_text()
        f.write_text(text.replace("from grpo.", "from grpo_baseline.").replace("import grpo.", "import grpo_baseline."))
    sys.path.insert(0, str(tmp))
    from grpo_baseline.rollout.hf import HFEngine as BaselineEngine

    return BaselineEngine


def rates(threads: int, repeats: int = 3) -> tuple[float, float]:
    """(FLOP/s of a 2048^3 float32 matmul, bytes/s of a sum over 400 MB): medians of `repeats`, the better
    of `threads` and one thread (on a busy machine one thread can be the faster, and the decode loop then
    runs on one: grpo.rollout.hf.DecodeThreads)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    big = torch.ones(100 * 2**20)
    best = (0.0, 0.0)
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        mm = [2 * 2048**3 / seconds(lambda: a @ b) for _ in range(repeats)]
        rd = [big.nbytes / seconds(big.sum) for _ in range(repeats)]
        best = max(best[0], statistics.median(mm)), max(best[1], statistics.median(rd))
    torch.set_num_threads(threads)
    return best


def seconds(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def gemms(model, rows: int, repeats: int = 20) -> None:
    """Each projection shape of a decode step at `rows` rows, as the lean decoder runs it (oneDNN, weights
    packed; q/k/v and gate/up fused), against a 2048^3 matmul: milliseconds and GFLOP/s, medians."""
    cfg = model.config
    h, kv = cfg.hidden_size, cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    shapes = {"qkv": (h + 2 * kv, h), "o": (h, h), "gate_up": (2 * cfg.intermediate_size, h),
              "down": (h, cfg.intermediate_size), "lm_head": (cfg.vocab_size, h)}
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    ref = 2 * 2048**3 / statistics.median(seconds(lambda: a @ b) for _ in range(5))
    print(f"2048^3 matmul: {ref / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    for name, (N, K) in shapes.items():
        w, x = torch.randn(N, K), torch.randn(rows, 1, K)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
        t = statistics.median(seconds(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""))
                              for _ in range(repeats))
        print(f"  {name:8s} [{rows}, {K}] x [{K}, {N}]: {t * 1e3:6.2f} ms, {2 * rows * N * K / t / 1e9:6.1f} GFLOP/s"
              f" ({2 * rows * N * K / t / ref:.0%})")


class Phases:
    """Seconds of one tree's generate by phase, through wrappers on its functions: the prefill, the decode
    steps (the first one also packs the weights for oneDNN), sampling (`sample_next`), and the rest of the
    loop (total minus those). `threads`: the thread counts sampling ran at (`DecodeThreads` picks one)."""

    def __init__(self, engine_cls):
        hf = sys.modules[engine_cls.__module__]
        self.seconds, self.threads = collections.Counter(), collections.Counter()
        self._wrap(hf, "sample_next", "sampling")
        self._wrap(hf.LeanDecoder, "prefill", "prefill")
        self._wrap(hf.LeanDecoder, "step", "decode steps")

    def _wrap(self, owner, name: str, phase: str) -> None:
        f = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - t0
                if phase == "sampling":
                    self.threads[torch.get_num_threads()] += 1

        setattr(owner, name, timed)

    def take(self, total: float) -> dict:
        out = {k: round(v, 3) for k, v in self.seconds.items()}
        out["rest"] = round(total - sum(self.seconds.values()), 3)
        out["threads"] = dict(self.threads)
        self.seconds.clear()
        self.threads.clear()
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "both"], default="float32",
                   help="sampling compute dtype (bfloat16: the engine's bf16 weight copies, rollout.dtype=bfloat16; "
                        "both: the two samplers alternating run by run, as two trees are with --baseline)")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of one generate")
    p.add_argument("--gemms", action="store_true", help="time a decode step's projection shapes (see gemms)")
    p.add_argument("--baseline", help="another tree's src/ to alternate with, run by run (see above)")
    args = p.parse_args()
    if args.dtype == "both" and (args.baseline or args.profile):
        p.error("--dtype both alternates the two samplers of this tree; it takes no --baseline or --profile")
    torch.set_num_threads(args.threads)
    path = resolve_model_path("smollm2")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = [json.loads(line) for line in open(ROOT / "data/word_problems_train.jsonl")][:args.prompts]
    ids = encode_prompts(tok, [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
                               for r in rows])
    if args.gemms:
        return gemms(model, args.prompts * args.G)
    dtypes = ["float32", "bfloat16"] if args.dtype == "both" else [args.dtype]
    engines = {"this" if len(dtypes) == 1 else name: HFEngine(model, [tok.eos_token_id], tok.pad_token_id,
                                                               dtype=getattr(torch, name)) for name in dtypes}
    if args.baseline:
        engines = {"baseline": baseline_engine(args.baseline)(model, [tok.eos_token_id], tok.pad_token_id,
                                                              dtype=getattr(torch, args.dtype)), **engines}
    # one Phases per source tree: its wrappers time every engine of that tree (--dtype both has two), and
    # each generate's phases are taken right after it
    by_tree: dict[str, Phases] = {}
    for engine in engines.values():
        if type(engine).__module__ not in by_tree:
            by_tree[type(engine).__module__] = Phases(type(engine))
    phases = {name: by_tree[type(engine).__module__] for name, engine in engines.items()}
    params = SamplingParams(args.max_new_tokens, 0.7, 1.0, args.G)

    def generate(engine):
        t0 = time.perf_counter()
        r = engine.generate(ids, params, torch.Generator().manual_seed(args.seed))
        return time.perf_counter() - t0, r

    for name, engine in engines.items():
        for _ in range(args.warmup):
            generate(engine)
        phases[name].take(0.0)
    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            generate(engines["this"])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        return
    n_params = sum(w.numel() for w in model.parameters())
    weight_bytes = sum(w.nbytes for w in model.parameters())
    times, floors = {name: [] for name in engines}, []
    for _ in range(args.runs):
        for name, engine in engines.items():
            s, r = generate(engine)
            times[name].append(s)
            print(json.dumps({"tree": name, "seconds": round(s, 3), "tokens": int(r.completion_mask.sum()),
                              "digest": digest(r), "load": round(os.getloadavg()[0], 2),
                              "phases": phases[name].take(s)}), flush=True)
        flops, bandwidth = rates(args.threads)
        tokens, steps = int(r.completion_mask.sum()), r.completion_ids.shape[1]
        floors.append(max(2 * n_params * tokens / flops, steps * weight_bytes / bandwidth))
        print(json.dumps({"matmul_gflops": round(flops / 1e9, 1), "read_gbps": round(bandwidth / 1e9, 1),
                          "floor_seconds": round(floors[-1], 3)}), flush=True)
    floor = statistics.median(floors)
    print(json.dumps({"floor_seconds": round(floor, 3), **{
        name: {"median_seconds": round(statistics.median(t), 3), "x_floor": round(statistics.median(t) / floor, 2),
               "runs": len(t)} for name, t in times.items()}}))


if __name__ == "__main__":
    main()
