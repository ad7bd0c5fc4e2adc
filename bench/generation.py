"""Generation alone on SmolLM2-135M-Instruct at the real bench's settings: the first 4 chat prompts of
data/word_problems_train.jsonl x G=8 = 32 rows, up to 64 new tokens at temperature 0.7, fp32, 2 threads,
through `HFEngine.generate` (the lean decoder). Prints one JSON line per run (seconds, tokens, a hash
of the tokens and log-probs, so two source trees can be checked for the same output) and the median.

    python bench/generation.py [--runs 5] [--seed 0]      # docs/performance.md, "Generation"
    python bench/generation.py --profile                  # torch.profiler table of one generate
    git worktree add --detach /tmp/gen-base BASE_COMMIT
    python bench/generation.py --runs 7 --baseline /tmp/gen-base/src   # the two trees, run by run

--baseline SRC imports SRC's `grpo` package as well (copied to a temporary directory as `grpo_baseline`,
its imports renamed) and alternates the two trees' `HFEngine.generate` on the same model in the same
process, so that both see the same machine: the speed of this shared 2-core VM drifts by minutes.
"""

import argparse
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of one generate")
    p.add_argument("--baseline", help="another tree's src/ to alternate with, run by run (see above)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    path = resolve_model_path("smollm2")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = [json.loads(line) for line in open(ROOT / "data/word_problems_train.jsonl")][:args.prompts]
    ids = encode_prompts(tok, [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
                               for r in rows])
    engines = {"this": HFEngine(model, [tok.eos_token_id], tok.pad_token_id)}
    if args.baseline:
        engines = {"baseline": baseline_engine(args.baseline)(model, [tok.eos_token_id], tok.pad_token_id),
                   **engines}
    params = SamplingParams(args.max_new_tokens, 0.7, 1.0, args.G)

    def generate(engine):
        t0 = time.perf_counter()
        r = engine.generate(ids, params, torch.Generator().manual_seed(args.seed))
        return time.perf_counter() - t0, r

    for engine in engines.values():
        for _ in range(args.warmup):
            generate(engine)
    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            generate(engines["this"])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        return
    times = {name: [] for name in engines}
    for _ in range(args.runs):
        for name, engine in engines.items():
            s, r = generate(engine)
            times[name].append(s)
            print(json.dumps({"tree": name, "seconds": round(s, 3), "tokens": int(r.completion_mask.sum()),
                              "digest": digest(r), "load": round(os.getloadavg()[0], 2)}), flush=True)
    print(json.dumps({name: {"median_seconds": round(statistics.median(t), 3), "runs": len(t)}
                      for name, t in times.items()}))


if __name__ == "__main__":
    main()
