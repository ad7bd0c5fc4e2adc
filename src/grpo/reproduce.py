"""`grpo reproduce`: the paper's comparative claims, in miniature, with error bars over seeds.

DeepSeekMath (§4-5) claims that RL with GRPO adds points over the SFT model it starts from, that
GRPO matches or beats PPO while holding fewer models in memory (no value model), that process
supervision beats outcome supervision, that online methods with a graded signal beat
rejection-sampling fine-tuning (§5.2.1), that iterative GRPO adds to a single run, and that RL lifts
maj@K more than pass@K (§5.2.2). On the built-in task and the tiny model this command, for each of
`--seeds` seeds:

1. trains the SFT warm start (its checkpoint chosen on a validation split when the data has one);
2. trains each method (GRPO with outcome supervision, GRPO with process supervision, PPO, online RFT,
   iterative GRPO) from that seed's SFT model with the same sampling budget, each in its own process
   so that each one's peak memory is its own (`--jobs` of them at a time);
3. evaluates every model on one fixed test split (greedy accuracy, pass@k, maj@k);

then writes `results.md` with each figure's mean and spread over the seeds, a verdict per claim from
the paired per-seed differences (`grpo.stats`), and PNG plots with error bars. `--reuse` keeps every
finished run already in the output directory whose configuration is the one this invocation would
train (an interrupted reproduce continues; a deleted run directory is trained again).

    grpo reproduce --config configs/reproduce.yaml --seeds 3 --jobs 2 --docs docs
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from grpo.config import DemoConfig, SFTConfig, TrainConfig, load_config, save_config, to_dict
from grpo.errors import UserError
from grpo.plotting import plot_reproduce
from grpo.stats import binomial_ci, mean_ci, mean_std, verdict

METHODS = {
    "grpo": ["algorithm=grpo"],
    "grpo_process": ["algorithm=grpo", "grpo.advantage=process", "rewards.step_fn=arithmetic_steps"],
    "ppo": ["algorithm=ppo"],
    "rft": ["algorithm=rft"],
    "iterative": ["algorithm=grpo", "train.iterations=2"],
}
"""Method name -> the overrides of the shared RL config that select it."""

LABELS = {"sft": "SFT", "grpo": "GRPO (outcome)", "grpo_process": "GRPO (process)", "ppo": "PPO", "rft": "Online RFT",
          "iterative": "Iterative GRPO"}
MODELS_HELD = {"sft": "policy", "grpo": "policy, reference", "grpo_process": "policy, reference",
               "ppo": "policy, reference, value (+ its optimizer)", "rft": "policy",
               "iterative": "policy, reference (reset each iteration)"}
CLAIMS = [("RL adds points over SFT (GRPO outcome − SFT)", "grpo", "sft"),
          ("GRPO matches or beats PPO at equal budget (GRPO − PPO)", "grpo", "ppo"),
          ("process supervision beats outcome supervision (process − outcome)", "grpo_process", "grpo"),
          ("GRPO beats online RFT (GRPO − RFT)", "grpo", "rft"),
          ("iterative GRPO adds to one run (iterative − GRPO)", "iterative", "grpo")]
"""The paper's claims that compare two models' accuracy: (claim, model a, model b), held when a - b > 0."""
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "LRU_CACHE_CAPACITY": "1", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}
"""Freed tensors go back to the OS at once, so a process's peak RSS follows its live memory
(docs/memory.md), and oneDNN keeps no per-shape buffers (as in the planner's validation)."""


@dataclass
class Job:
    name: str
    cmd: list[str]
    log: Path

    @property
    def record(self) -> Path:
        """Written when the job succeeds: its wall seconds (read again by --reuse)."""
        return self.log.with_suffix(".json")


def _run_jobs(jobs: list[Job], parallel: int) -> dict[str, float]:
    """Run the commands, `parallel` at a time; name -> wall seconds. The first failure stops the others
    and raises with the tail of its log (every job's output is in its log file)."""
    pending, running, seconds = list(jobs), {}, {}
    env = {**os.environ, **MEMORY_ENV}
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                with open(job.log, "w") as log:
                    proc = subprocess.Popen(job.cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                running[job.name] = (job, proc, time.perf_counter())
            for name, (job, proc, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                if proc.returncode != 0:
                    tail = job.log.read_text(errors="replace")[-2000:]
                    raise UserError(f"{name} failed (exit {proc.returncode}); log: {job.log}\n{tail}")
                seconds[name] = time.perf_counter() - t0
                job.record.write_text(json.dumps({"seconds": seconds[name]}))
                print(f"      finished {name} in {seconds[name]:.0f} s", flush=True)
            time.sleep(0.2)
    finally:
        for _, proc, _ in running.values():
            proc.terminate()
        for _, proc, _ in running.values():
            proc.wait()
    return seconds


_IGNORED = ("threads",)
"""Settings that do not change what a run computes (`--jobs` sets them): --reuse ignores them."""


def _settings(tree: dict, prefix: str = "") -> dict:
    """A config's dict as {"section.key": value}, without the `_IGNORED` keys."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _settings(value, f"{prefix}{key}.")
        elif key not in _IGNORED:
            out[f"{prefix}{key}"] = value
    return out


def _reusable(job: Job, run_dir: Path, cls, config: Path, overrides: list[str]) -> float | None:
    """--reuse: the wall seconds of a finished run in `run_dir` (its final model, its config.yaml and
    the job's record) when its configuration is the one `config` + `overrides` give; None when there
    is no finished run; UserError when there is one with another configuration."""
    if not ((run_dir / "final" / "config.json").is_file() and (run_dir / "config.yaml").is_file()
            and job.record.is_file()):
        return None
    want = _settings(to_dict(load_config(cls, config, overrides)))
    have = _settings(to_dict(load_config(cls, run_dir / "config.yaml")))
    differ = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    if differ:
        key = differ[0]
        raise UserError(f"--reuse: {run_dir} was trained with {key}={have.get(key)!r}, this reproduce asks for "
                        f"{want.get(key)!r}; delete {run_dir} to train it again, or drop --reuse")
    return json.loads(job.record.read_text())["seconds"]


def _read_run(out: Path, seconds: float) -> dict:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "reward/mean" in x]
    return {"seconds": seconds, "peak_mib": max(x["memory/peak_mib"] for x in steps),
            "run_peak_mib": max(x["memory/peak_mib"] - x["memory/baseline_mib"] for x in steps),
            "state_mib": max(x["memory/state_mib"] for x in steps), "history": lines, "model": out / "final"}


def _evaluate_job(path: str, rows: list[dict], reward_fn: str, reward_options: dict, n: int, ks: list[int],
                  max_new_tokens: int, seed: int, threads: int):
    """One model's evaluation, in a worker process when --jobs > 1 (arguments are plain data)."""
    import torch

    from grpo.evaluate import answer_equivalence, answer_extractor, evaluate
    from grpo.rewards import load_reward_function

    if threads:
        torch.set_num_threads(threads)
    return evaluate(path, rows, load_reward_function(reward_fn, reward_options),
                    answer_extractor(reward_fn, reward_options), n=n, ks=ks, max_new_tokens=max_new_tokens, seed=seed,
                    equivalent=answer_equivalence(reward_fn, reward_options))


def _evaluate_all(todo: dict, jobs: int, threads: int, **kw) -> dict:
    """key -> EvalResult for every (model path, sampling seed) in `todo`, `jobs` processes at a time."""
    if jobs == 1:
        return {key: _evaluate_job(str(path), seed=seed, threads=threads, **kw) for key, (path, seed) in todo.items()}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {key: pool.submit(_evaluate_job, str(path), seed=seed, threads=threads, **kw)
                   for key, (path, seed) in todo.items()}
        return {key: f.result() for key, f in futures.items()}


def run_reproduce(config: str | None, overrides: list[str], n: int = 16, ks=(1, 2, 4, 8, 16),
                  docs_dir: str | None = None, methods=tuple(METHODS), progress: bool = True,
                  sft_dir: str | None = None, seeds: int = 1, jobs: int = 1, reuse: bool = False) -> dict:
    from grpo.data import load_task
    from grpo.models.tiny import build_tokenizer

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"--methods: unknown method {unknown[0]!r} (known: {', '.join(METHODS)})")
    ks = sorted(set(ks))
    if n < 1 or not ks or ks[0] < 1 or ks[-1] > n:
        raise UserError(f"--k: every k must be in 1..--n ({n})")
    if seeds < 1 or jobs < 1:
        raise UserError(f"--seeds and --jobs must be >= 1, got {seeds} and {jobs}")
    t_start = time.perf_counter()
    cfg = load_config(DemoConfig, config, overrides)
    if config is None and not any(o.startswith("output_dir=") for o in overrides):
        cfg.output_dir = "runs/reproduce"  # not the demo's directory
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    # one torch thread per core when jobs share the machine, unless the config sets threads
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
    if threads and not cfg.sft.sft.threads:
        cfg.sft.sft.threads = threads
    if threads and not cfg.rl.train.threads:
        cfg.rl.train.threads = threads
    save_config(cfg.sft, out / "sft.yaml")
    save_config(cfg.rl, out / "rl.yaml")
    offsets = list(range(seeds))  # seed i: sft.seed and train.seed are the config's + i
    py = [sys.executable, "-m", "grpo"]

    sfts, sft_jobs = {}, []
    for i in offsets:
        if sft_dir:
            sfts[i] = _reused_sft(Path(sft_dir), i, seeds)
            print(f"[1/3] SFT warm start, seed {i}: reusing {sfts[i].model_dir} "
                  f"(best at step {sfts[i].best_step} of {sfts[i].steps})")
        else:
            d = out / f"seed{i}" / "sft"
            args = [f"sft.seed={cfg.sft.sft.seed + i}", f"sft.output_dir={d}"]
            job = Job(f"SFT seed {i}", [*py, "sft", "-q", "--overwrite", "--config", str(out / "sft.yaml"), *args],
                      d.parent / "sft.log")
            if reuse and _reusable(job, d, SFTConfig, out / "sft.yaml", args) is not None:
                sfts[i] = _finished_sft(d)
                print(f"[1/3] SFT warm start, seed {i}: reusing {d}", flush=True)
            else:
                sft_jobs.append(job)
    if sft_jobs:
        print(f"[1/3] SFT warm start, {len(sft_jobs)} run(s), {jobs} at a time -> {out}/seed*/sft", flush=True)
        _run_jobs(sft_jobs, jobs)
        sfts = {i: _finished_sft(out / f"seed{i}" / "sft") for i in offsets}

    rl = cfg.rl
    print(f"[2/3] {', '.join(LABELS[m] for m in methods)} from each SFT model ({rl.train.steps} steps, "
          f"{rl.train.prompts_per_step} prompts x G={rl.grpo.G}), {jobs} at a time", flush=True)
    rl_args = {(i, m): [*METHODS[m], f"model.path={sfts[i].model_dir}", f"train.output_dir={out / f'seed{i}' / m}",
                        f"train.seed={rl.train.seed + i}"] for i in offsets for m in methods}
    rl_jobs = {(i, m): Job(f"{LABELS[m]} seed {i}",
                           [*py, "train", "-q", "--overwrite", "--config", str(out / "rl.yaml"), *args],
                           out / f"seed{i}" / f"{m}.log") for (i, m), args in rl_args.items()}
    seconds = {}
    for key, job in rl_jobs.items() if reuse else ():
        reused = _reusable(job, out / f"seed{key[0]}" / key[1], TrainConfig, out / "rl.yaml", rl_args[key])
        if reused is not None:
            seconds[job.name] = reused
            print(f"      reusing {job.name} ({out / f'seed{key[0]}' / key[1]})", flush=True)
    seconds |= _run_jobs([job for job in rl_jobs.values() if job.name not in seconds], jobs)
    runs = {key: _read_run(out / f"seed{key[0]}" / key[1], seconds[job.name]) for key, job in rl_jobs.items()}

    print("[3/3] evaluating every model on the test split", flush=True)
    rows = load_task(rl.data, build_tokenizer(), rl.train.seed).heldout  # the same test problems for every seed
    first = rl.rewards.functions[0]
    models = {(i, "sft"): sfts[i].model_dir for i in offsets} | {key: run["model"] for key, run in runs.items()}
    todo = {key: (path, rl.train.seed + key[0]) for key, path in models.items()}  # sampling seeded per seed
    evals = _evaluate_all(todo, jobs, threads, rows=rows, reward_fn=first.fn, reward_options=first.options, n=n,
                          ks=ks, max_new_tokens=rl.sampling.max_new_tokens)
    per_seed = {i: {name: _row(evals[(i, name)], runs.get((i, name)), sfts[i] if name == "sft" else None)
                    for name in ("sft", *methods)} for i in offsets}
    (out / "results.json").write_text(json.dumps({"seeds": offsets, "per_seed": per_seed}, indent=2))
    plots = plot_reproduce(out, runs, sfts, evals, offsets, methods, ks, LABELS)
    command = " ".join(["grpo reproduce", *(["--config", config] if config else []), f"--seeds {seeds}",
                        f"--jobs {jobs}", f"--n {n}", f"--k {','.join(map(str, ks))}",
                        f"--methods {','.join(methods)}", *([f"--sft {sft_dir}"] if sft_dir else []),
                        *(["--reuse"] if reuse else []), *overrides])
    text = _markdown(per_seed, cfg, sfts, plots, n, ks, command, time.perf_counter() - t_start, len(rows))
    (out / "results.md").write_text(text)
    if docs_dir:
        _publish(out, Path(docs_dir), plots)
    print(text)
    return per_seed


def _row(e, run: dict | None, s) -> dict:
    row = {"greedy_accuracy": e.greedy_accuracy, "sample_accuracy": e.sample_accuracy, "num_prompts": e.num_prompts,
           "pass_at_k": e.pass_at_k, "maj_at_k": e.maj_at_k}
    if run is not None:
        row.update({k: run[k] for k in ("peak_mib", "run_peak_mib", "state_mib", "seconds")})
    else:
        row.update(seconds=s.seconds, steps=s.steps, best_step=s.best_step, selection_accuracy=s.best_accuracy)
    return row


def _pct(values: list[float]) -> str:
    mean, sd = mean_std([100 * v for v in values])
    return f"{mean:.1f}%" if len(values) == 1 else f"{mean:.1f} ± {sd:.1f}%"


def _mean(values: list[float], fmt: str = ".0f") -> str:
    return f"{mean_std(values)[0]:{fmt}}"


def _claim_rows(per_seed: dict, kmax: int, test_n: int) -> tuple[list[str], list[str]]:
    """The claims table (difference, interval, verdict) and the notes under it."""
    seeds = list(per_seed)
    names = list(per_seed[seeds[0]])
    acc = lambda m: [per_seed[i][m]["greedy_accuracy"] for i in seeds]  # noqa: E731
    claims = [(text, a, b) for text, a, b in CLAIMS if a in names and b in names]
    rows = ["| claim (DeepSeekMath) | difference, points | 95% interval | verdict |", "|---|---|---|---|"]
    for text, a, b in claims:
        diffs = [100 * (x - y) for x, y in zip(acc(a), acc(b))]
        rows.append(claim_row(text, diffs, mean_std(acc(a) + acc(b))[0], test_n))
    if "grpo" in names:  # §5.2.2: maj@K rises more than pass@K
        s = lambda m, key: [per_seed[i][m][key][kmax] for i in seeds]  # noqa: E731
        diffs = [100 * ((gm - sm) - (gp - sp)) for gm, sm, gp, sp in
                 zip(s("grpo", "maj_at_k"), s("sft", "maj_at_k"), s("grpo", "pass_at_k"), s("sft", "pass_at_k"))]
        rows.append(claim_row(f"RL lifts maj@{kmax} more than pass@{kmax} (GRPO's maj@{kmax} gain − its "
                               f"pass@{kmax} gain)", diffs, 0.5, test_n))
    notes = []
    if "grpo" in names:
        gain = mean_std([100 * (x - y) for x, y in zip(acc("grpo"), acc("sft"))])[0]
        notes.append(f"- The paper-sized gain of +15 points over SFT is {'met' if gain >= 15 else 'NOT met'} "
                     f"on average ({gain:+.1f}).")
    if "ppo" in names and "grpo" in names:
        g = [per_seed[i]["grpo"]["run_peak_mib"] for i in seeds]
        p = [per_seed[i]["ppo"]["run_peak_mib"] for i in seeds]
        ratios = [x / y for x, y in zip(g, p)]
        gs, ps = (mean_std([per_seed[i][m]["state_mib"] for i in seeds])[0] for m in ("grpo", "ppo"))
        notes.append(f"- Less memory without a value model: GRPO's peak memory is {min(ratios):.2f}-"
                     f"{max(ratios):.2f}x PPO's over the seeds ({_mean(g)} vs {_mean(p)} MiB above the runtime, "
                     f"mean; {'holds on every seed' if max(ratios) <= 0.75 else 'NOT met on every seed'}: the "
                     f"target is <= 0.75x). Model state alone (weights, gradients, Adam moments, reference, value "
                     f"model): {gs:.1f} vs {ps:.1f} MiB ({gs / ps:.2f}x). At 7B parameters `grpo plan` gives "
                     f"{_plan_line()}.")
    notes.append(f"- Noise: the test split has {test_n} problems (one problem = {100 / test_n:.2f} points); "
                 + ("the interval is the 95% Student-t interval of the mean of the per-seed differences, so it "
                    "carries the spread of training (SFT and RL) and of the test set's sampling together."
                    if len(seeds) > 1 else
                    "with one seed the interval is the test set's binomial noise only (training's own spread is "
                    "not measured: run more --seeds)."))
    return rows, notes


def claim_row(text: str, diffs: list[float], p: float, test_n: int) -> str:
    """One row of the claims table: mean difference (per seed), 95% interval, verdict."""
    if len(diffs) > 1:
        mean, lo, hi = mean_ci(diffs)
    else:
        mean, lo, hi = (100 * x for x in binomial_ci(diffs[0] / 100, min(max(p, 0.05), 0.95), test_n))
    per_seed = ", ".join(f"{d:+.1f}" for d in diffs)
    return f"| {text} | {mean:+.1f} ({per_seed}) | [{lo:+.1f}, {hi:+.1f}] | {verdict(lo, hi)} |"


def _markdown(per_seed: dict, cfg: DemoConfig, sfts: dict, plots: list[str], n: int, ks, command: str,
              seconds: float, test_n: int) -> str:
    kmax, seeds = max(ks), list(per_seed)
    names = list(per_seed[seeds[0]])
    col = lambda name, key, k=None: [per_seed[i][name][key] if k is None else per_seed[i][name][key][k]  # noqa: E731
                                     for i in seeds]
    rows = [f"| model | greedy acc. | sampled acc. | maj@{kmax} | pass@{kmax} | peak memory of the run | model state "
            "| wall time | models held |", "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        mib = lambda key, f=".0f": f"{_mean(col(name, key), f)} MiB" if key in per_seed[seeds[0]][name] else "-"  # noqa: E731
        rows.append(f"| {LABELS[name]} | {_pct(col(name, 'greedy_accuracy'))} | {_pct(col(name, 'sample_accuracy'))} | "
                    f"{_pct(col(name, 'maj_at_k', kmax))} | {_pct(col(name, 'pass_at_k', kmax))} | "
                    f"{mib('run_peak_mib')} | {mib('state_mib', '.1f')} | {_mean(col(name, 'seconds'))} s | "
                    f"{MODELS_HELD[name]} |")
    by_seed = ["| model | " + " | ".join(f"seed {i}" for i in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for name in names:
        by_seed.append(f"| {LABELS[name]} | " + " | ".join(f"{100 * v:.1f}%" for v in col(name, "greedy_accuracy")) + " |")
    curve = ["| model | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for name in names:
        curve.append(f"| {LABELS[name]} maj@k | " + " | ".join(_pct(col(name, "maj_at_k", k)) for k in ks) + " |")
        curve.append(f"| {LABELS[name]} pass@k | " + " | ".join(_pct(col(name, "pass_at_k", k)) for k in ks) + " |")
    claims, notes = _claim_rows(per_seed, kmax, test_n)
    rl, sd, s0 = cfg.rl, cfg.rl.data, cfg.sft
    spread = "mean ± standard deviation over the seeds" if len(seeds) > 1 else "one seed: no spread measured"
    task = (f"{sd.task_steps} operations per problem, values in 0..{sd.task_max_value}, steps of 1..{sd.task_max_delta}"
            + (", doubling and tripling" if sd.task_multiply else ""))
    chose = (f"chosen on a validation split of {s0.data.num_validation} problems (disjoint from train and test)"
             if s0.data.num_validation else "chosen on the test split itself (no validation split configured)")
    best = ", ".join(f"{sfts[i].best_step}" for i in seeds)
    return "\n".join([
        "# Results: SFT, GRPO, PPO, online RFT and iterative GRPO on the built-in task", "",
        f"Produced by `{command}` in {seconds / 60:.0f} min on this project's 2-core CPU, {len(seeds)} seed(s) "
        f"({', '.join(map(str, seeds))}); `results.json` beside it has every number. Each seed trains its own SFT "
        f"model and every method from it; figures are {spread}.", "",
        *rows, "",
        "Greedy test accuracy per seed:", "", *by_seed, "",
        "## The paper's claims", "",
        "Each difference is taken per seed (the same SFT model and data under both methods) and then averaged; "
        "the verdict says whether the 95% interval excludes zero.", "",
        *claims, "", *notes, "",
        f"maj@k and pass@k against k (n={n} samples per problem at temperature {rl.sampling.temperature:g}):", "",
        *curve, "",
        "## Setup", "",
        f"Task: builtin:arithmetic with {task}; test split: {test_n} problems, the same for every seed and "
        f"disjoint from training. Greedy accuracy is one completion at temperature 0; sampled accuracy, maj@k and "
        f"pass@k use n={n} samples per problem. SFT: up to {s0.sft.max_steps} steps of {s0.sft.batch_size} "
        f"demonstrations ({100 * s0.data.direct_fraction:.0f}% bare answers without working), lr {s0.optim.lr} with "
        f"a {s0.optim.schedule} schedule after {s0.optim.warmup_steps} warm-up steps, "
        f"{'no early stop' if not s0.sft.patience else f'stopped after {s0.sft.patience} evaluations without a new best'}; "
        f"its checkpoint {chose}, every {s0.sft.eval_every} steps (best at step {best}). Every RL method starts "
        f"from its seed's SFT checkpoint with the same budget: {rl.train.steps} steps x {rl.train.prompts_per_step} "
        f"prompts x {rl.grpo.G} samples, lr={rl.optim.lr}, beta={rl.grpo.beta} (PPO: folded into the per-token "
        f"reward; RFT: no KL), max_new_tokens={rl.sampling.max_new_tokens}. PPO: value model = a copy of the "
        f"policy's body with a scalar head, value lr={rl.ppo.value_lr}, GAE gamma={rl.ppo.gamma} lambda={rl.ppo.lam}. "
        "Process supervision scores each line of working and the final answer (`arithmetic_steps`). Iterative GRPO: "
        "the same steps in 2 iterations, the reference reset to the policy at the second's start. Peak memory is "
        "each training process's peak resident set size during its training steps (evaluations excluded) above "
        "its resident size before any model was built, with glibc's mmap threshold at 64 KiB so that freed tensors "
        "leave the resident set and oneDNN's per-shape caches off, as in the planner's validation (docs/memory.md). "
        "Wall times are per process, with the --jobs processes sharing the 2 cores.", "",
        *[f"![{p}]({p})" for p in plots], ""])


def _finished_sft(path: Path):
    """The result of an earlier `grpo sft` run in `path` (its final model and metrics.jsonl)."""
    from grpo.train.sft import SFTResult

    try:
        lines = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
        last = lines[-1]
        steps = max(x["step"] for x in lines if "loss" in x)
        result = SFTResult(path, path / "final", last["eval/best_accuracy"], last["best_step"], steps,
                           last.get("seconds", float("nan")), lines, last.get("eval/best_test_accuracy"))
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise UserError(f"--sft {path}: not a finished `grpo sft` run ({e})") from None
    if not (result.model_dir / "config.json").is_file():
        raise UserError(f"--sft {path}: no final model in {result.model_dir}")
    return result


def _reused_sft(path: Path, i: int, seeds: int):
    """--sft DIR: an earlier `grpo reproduce` output (its seed<i>/sft) or, with one seed, a `grpo sft` run."""
    if (path / f"seed{i}" / "sft").is_dir():
        return _finished_sft(path / f"seed{i}" / "sft")
    if seeds == 1:
        return _finished_sft(path)
    raise UserError(f"--sft {path}: no seed{i}/sft in it (with --seeds > 1, pass an earlier `grpo reproduce` "
                    "output directory)")


def _plan_line() -> str:
    from grpo.plan import Architecture, PlanInput, plan_memory

    arch = Architecture(num_layers=32, hidden_size=4096, intermediate_size=11008, num_heads=32, num_kv_heads=32,
                        head_dim=128, vocab_size=32000)  # Llama-2-7B's shape
    gib = {a: plan_memory(PlanInput(arch=arch, algorithm=a, precision="bf16")).total_bytes / 2**30 for a in ("grpo", "ppo")}
    return f"{gib['grpo']:.0f} GiB for GRPO vs {gib['ppo']:.0f} GiB for PPO (bf16, AdamW, no LoRA)"


def _publish(out: Path, docs: Path, plots: list[str]) -> None:
    import shutil

    img = docs / "img"
    img.mkdir(parents=True, exist_ok=True)
    for p in plots:
        shutil.copy(out / p, img / p)
    text = (out / "results.md").read_text()
    for p in plots:
        text = text.replace(f"]({p})", f"](img/{p})")
    (docs / "results.md").write_text(text)
