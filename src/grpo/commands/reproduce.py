"""`grpo reproduce`: the paper's comparative claims, in miniature, with error bars over seeds.

DeepSeekMath (§4-5) claims that RL with GRPO adds points over the SFT model it starts from, that
GRPO matches or beats PPO while holding fewer models in memory (no value model), that process
supervision beats outcome supervision, that online methods with a graded signal beat
rejection-sampling fine-tuning (§5.2.1), that iterative GRPO adds to a single run, and that RL lifts
maj@K more than pass@K (§5.2.2). On the built-in task and the tiny model this command, for each of
`--seeds` seeds:

1. trains `sft_best`, the SFT warm start: a fixed horizon (a decaying schedule), its checkpoint chosen
   on a validation split;
2. trains each method (GRPO with outcome supervision, GRPO with process supervision, PPO, online RFT,
   iterative GRPO) from that seed's SFT model with the same sampling budget, each in its own process
   so that each one's peak memory is its own (`--jobs` of them at a time); `grpo_base` is GRPO from the
   model SFT started from;
3. `sft_more` (with `grpo`): SFT continued from `sft_best` for as long as the GRPO stage's training steps
   took (the sum of its `time/step`; evaluation and loading not counted), on the training rows
   `sft_best` did not reach, with its own warm-up and decay, its checkpoint chosen on validation: the
   baseline GRPO must beat at equal compute;
4. evaluates every model on one fixed test split, its prompts rendered with that model's own tokenizer
   (greedy accuracy on every test problem, also strict and lenient for math answers; pass@k and maj@k on
   the first `--sample-prompts` of them); with `--ood FILE[,FILE...]` also on each out-of-distribution test
   file (JSONL or Parquet in the task's format), greedy only (one completion at temperature 0; strict and
   lenient too) on every problem, its prompts rendered the same way.

No training job reads the test split or an --ood file: each runs with `data.num_heldout=0`, and
checkpoints are chosen on the validation split (`sft.data.num_validation` is required).

then writes `results.md` (`reproduce_report`) with each figure's mean and spread over the seeds, a
verdict per claim from the paired per-seed differences (`grpo.stats`), the same greedy figures and claims
on each --ood file, and PNG plots with error bars.
`--reuse` keeps every finished run already in the output directory whose configuration is the one this
invocation would train, continues an unfinished run from its newest checkpoint (`grpo train --resume`,
`grpo sft --resume`: exact, so the grid ends as if never stopped; `sft_more`'s time budget counts the
seconds before the stop) and keeps every evaluation of an unchanged model (an --ood file's while the file's
content is the same; --ood leaves the test split's evaluations as they were, so adding it to a finished grid
with --reuse evaluates the --ood files only); a run without a checkpoint and
a deleted run directory are trained again, as is a run whose starting model (its seed's `sft_best`) changed
since (`grpo.commands.reproduce_jobs`). Ctrl-C (SIGINT) or SIGTERM stops every running job with a checkpoint
and names the command that continues: the same with `--reuse`.
`--first-seed K` trains seeds K .. K + --seeds - 1 only, each configured as in the full grid, so a grid too
long for one machine's sitting can be finished elsewhere and its results.json files read together.

    grpo reproduce --config configs/reproduce.yaml --seeds 3 --jobs 2 --docs docs
    grpo reproduce --config configs/smollm2_vs_sft.yaml --methods grpo,sft_more --seeds 3 --n 4 --k 1,2,4 \
      --sample-prompts 200 --reuse \
      --ood data/word_problems_ood_numbers.jsonl,data/word_problems_ood_steps.jsonl
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import NamedTuple

import torch

from grpo.commands.reproduce_jobs import (Job, cached_evaluation, check_before_training, checkpoint_every,
                                          evaluation_key, reuse_or_resume, run_jobs, save_evaluation,
                                          settings)
from grpo.commands.reproduce_report import BUDGET, EXTRA_KEYS, LABELS, SFT_MORE, results_markdown
from grpo.config import (DataConfig, DemoConfig, ModelConfig, TrainConfig, load_config,
                         save_config, to_dict)
from grpo.data import load_rows, load_task
from grpo.errors import UserError
from grpo.models.loading import load_policy
from grpo.plotting import plot_reproduce
from grpo.rewards import load_reward_function
from grpo.train.checkpoint_files import sha256_file
from grpo.train.episodes import tool_use_report
from grpo.train.evaluation import (EvalResult, accuracy_checkers, answer_equivalence, answer_extractor,
                                   evaluate_policy)
from grpo.train.sft import (CONTINUATION_DERIVED, SFTResult, continuation_overrides, continuation_steps,
                            matching_clock)
from grpo.utils.json_text import json_text

METHODS = {
    "grpo": ["algorithm=grpo"],
    "grpo_process": ["algorithm=grpo", "grpo.advantage=process", "rewards.step_fn=arithmetic_steps"],
    "ppo": ["algorithm=ppo"],
    "rft": ["algorithm=rft"],
    "iterative": ["algorithm=grpo", "train.iterations=2"],
    "grpo_base": ["algorithm=grpo"],
}
"""Method name -> the overrides of the shared RL config that select it (`grpo_base` starts from the model
SFT started from, every other one from its seed's SFT model)."""
NO_TEST = ["data.num_heldout=0"]
"""Added to every training job: the test split is never read during training or checkpoint selection."""
def _read_run(out: Path, seconds: float) -> dict:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "reward/mean" in x]
    return {"seconds": seconds, "train_seconds": sum(x["time/step"] for x in steps),
            "train_cpu_seconds": sum(x.get("time/step_cpu", float("nan")) for x in steps),
            "peak_mib": max(x["memory/peak_mib"] for x in steps),
            "run_peak_mib": max(x["memory/peak_mib"] - x["memory/baseline_mib"] for x in steps),
            "state_mib": max(x["memory/state_mib"] for x in steps), "history": lines, "model": out / "final"}


def _evaluate_episodes(path: str, rl_config: str, seed: int):
    """A multi-turn task's evaluation: greedy episodes on the test split (`tool_use_report`), the tool-call
    share beside the accuracy; no sampled completions, so no pass@k or maj@k."""
    report = tool_use_report(path, load_config(TrainConfig, rl_config, [f"train.seed={seed}"]))["all"]
    return EvalResult(greedy_accuracy=report["accuracy"], pass_at_k={}, maj_at_k={},
                      sample_accuracy=float("nan"),
                      n=0, num_prompts=report["rows"], greedy_by_checker={"tool_calls": report["called"]})


def _evaluate_job(path: str, data: dict, reward_fn: str, reward_options: dict, n: int, ks: list[int],
                  max_new_tokens: int, seed: int, threads: int, data_seed: int, sample_prompts: int | None,
                  rl_config: str | None = None):
    """One model's evaluation, in a worker process when --jobs > 1 (arguments are plain data). The test
    prompts are rendered with this model's own tokenizer (its chat template, its special tokens)."""
    if threads:
        torch.set_num_threads(threads)
    if rl_config is not None:  # multi-turn: greedy episodes with the tools (no sampled completions)
        return _evaluate_episodes(path, rl_config, seed)
    with tempfile.TemporaryDirectory() as tiny_dir:
        model, tokenizer = load_policy(ModelConfig(path=path), Path(tiny_dir))
    rows = load_task(DataConfig(**data), tokenizer, data_seed).heldout
    return evaluate_policy(model.eval(), tokenizer, rows, load_reward_function(reward_fn, reward_options),
                           answer_extractor(reward_fn, reward_options), n=n, ks=ks,
                           max_new_tokens=max_new_tokens,
                           seed=seed, equivalent=answer_equivalence(reward_fn, reward_options),
                           sample_prompts=sample_prompts,
                           greedy_checkers=accuracy_checkers(reward_fn, reward_options))


class OODTest(NamedTuple):
    """An out-of-distribution test file (--ood): every model is scored greedy on all of its problems."""

    file: str
    """Its path, as given."""
    name: str
    """Its stem: names its evaluations (<model>.ood-<name>.eval.json) and its part of results.md."""
    rows: int
    """Its problems."""
    sha256: str
    """Its content's SHA-256, part of its evaluations' cache key."""


def ood_tests(files: list[str], data: DataConfig) -> list[OODTest]:
    """--ood: each file read as the task's data is (`data`'s columns), so that a bad one stops reproduce
    before anything trains."""
    tests = []
    for f in files:
        if not Path(f).is_file():
            raise UserError(f"--ood {f}: no such file (a JSONL or Parquet test set in the task's format)")
        rows = load_rows(f, split=data.split, prompt_column=data.prompt_column,
                         answer_column=data.answer_column)
        if not rows:
            raise UserError(f"--ood {f}: no problems in it")
        tests.append(OODTest(f, Path(f).stem, len(rows), sha256_file(Path(f))))
    names = [t.name for t in tests]
    twice = [x for x in names if names.count(x) > 1]
    if twice:
        raise UserError(f"--ood: two files named {twice[0]!r}; their evaluations would share a name")
    return tests


def ood_data(data: dict, test: OODTest) -> dict:
    """The RL data config (`to_dict`) with `test`'s file as its test split, all of its problems, and nothing
    set aside for validation."""
    return {**data, "source": test.file, "heldout_source": test.file, "num_heldout": test.rows,
            "validation_source": None, "num_validation": 0}


def _evaluate_all(todo: dict, jobs: int, threads: int, saved: dict, reuse: bool) -> dict:
    """key -> EvalResult for every key -> (model path, settings, key settings) in `todo`, `jobs` processes
    at a time: `settings` are `_evaluate_job`'s keyword arguments, `key settings` what the evaluation is kept
    for (with the model's files: `evaluation_key`). Each evaluation is saved at saved[key] as it finishes;
    with `reuse`, one saved there under the same key is kept instead (`cached_evaluation`). A key is (seed,
    model, None) for the test split, (seed, model, name) for the --ood file `name`."""
    ids = {key: evaluation_key(path, options) for key, (path, _, options) in todo.items()}
    evals = {key: cached_evaluation(saved[key], ids[key]) for key in todo} if reuse else {}
    evals = {key: e for key, e in evals.items() if e is not None}
    if evals:
        print("      reusing the evaluations of "
              + ", ".join(f"{name} seed {i}" + (f" on {ood}" if ood else "") for i, name, ood in evals),
              flush=True)
    left = {key: v for key, v in todo.items() if key not in evals}
    if jobs == 1:
        for key, (path, kw, _) in left.items():
            evals[key] = _evaluate_job(str(path), threads=threads, **kw)
            save_evaluation(saved[key], ids[key], evals[key])
    else:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_evaluate_job, str(path), threads=threads, **kw): key
                       for key, (path, kw, _) in left.items()}
            for f in as_completed(futures):
                key = futures[f]
                evals[key] = f.result()
                save_evaluation(saved[key], ids[key], evals[key])
    return {key: evals[key] for key in todo}


def evaluate_models(models: dict, rl: TrainConfig, rl_config: Path, out: Path, n: int, ks: list[int],
                    sample_prompts: int | None, ood: list[OODTest], jobs: int, threads: int,
                    reuse: bool) -> tuple[dict, dict]:
    """Stage 4: (seed, model) -> its `EvalResult` on the test split, and each --ood file's name -> (seed,
    model) -> its greedy `EvalResult` on that file. `models`: (seed, model) -> model directory; `rl`: the
    RL config (data, first reward, max_new_tokens), saved at `rl_config`. Saved as
    OUT/seed<i>/<model>.eval.json and <model>.ood-<name>.eval.json, each kept by --reuse under its own key:
    an --ood file's adds its content's SHA-256 and leaves the test split's as it was, so that adding --ood to
    a finished grid evaluates the --ood files only."""
    first = rl.rewards.functions[0]
    multi_turn = str(rl_config) if rl.rollout.multi_turn else None
    test = dict(data=to_dict(rl.data), reward_fn=first.fn, reward_options=first.options, n=n, ks=ks,
                max_new_tokens=rl.sampling.max_new_tokens, data_seed=rl.train.seed,
                sample_prompts=sample_prompts, rl_config=multi_turn)
    test_key = {**test, "rl_config": multi_turn and settings(to_dict(load_config(TrainConfig, multi_turn)))}
    seed = {i: rl.train.seed + i for i, _ in models}  # sampling seeded per seed
    todo = {(i, name, None): (path, {**test, "seed": seed[i]}, {**test_key, "seed": seed[i]})
            for (i, name), path in models.items()}
    saved = {(i, name, None): out / f"seed{i}" / f"{name}.eval.json" for i, name in models}
    for t in ood:  # greedy only: one completion per problem, nothing sampled
        for (i, name), path in models.items():
            kw = {**test, "data": ood_data(test["data"], t), "n": 1, "ks": [1], "sample_prompts": 0,
                  "rl_config": None, "seed": seed[i]}
            todo[(i, name, t.name)] = (path, kw, {**kw, "ood_sha256": t.sha256})
            saved[(i, name, t.name)] = out / f"seed{i}" / f"{name}.ood-{t.name}.eval.json"
    evals = _evaluate_all(todo, jobs, threads, saved, reuse)
    return ({(i, name): evals[(i, name, None)] for i, name in models},
            {t.name: {(i, name): evals[(i, name, t.name)] for i, name in models} for t in ood})


def run_reproduce(config: str | None, overrides: list[str], n: int = 16, ks=(1, 2, 4, 8, 16),
                  docs_dir: str | None = None, methods=tuple(m for m in METHODS if m != "grpo_base"),
                  progress: bool = True, sft_dir: str | None = None, seeds: int = 1, jobs: int = 1,
                  first_seed: int = 0, reuse: bool = False, sample_prompts: int | None = None,
                  ood: tuple[str, ...] = (),
                  again: str = "the same command with --reuse") -> dict:
    """The grid above, seeds `first_seed` .. `first_seed + seeds - 1`; `ood`: the --ood files; `again`: the
    command that continues it, named when a signal stops it (`JobsInterrupted`)."""
    known = (*METHODS, SFT_MORE)
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise UserError(f"--methods: unknown method {unknown[0]!r} (known: {', '.join(known)})")
    if SFT_MORE in methods and "grpo" not in methods:
        raise UserError(f"--methods: {SFT_MORE} trains for as long as the grpo stage did; add grpo to "
                        "--methods")
    ks = sorted(set(ks))
    if n < 1 or not ks or ks[0] < 1 or ks[-1] > n:
        raise UserError(f"--k: every k must be in 1..--n ({n})")
    if seeds < 1 or jobs < 1:
        raise UserError(f"--seeds and --jobs must be >= 1, got {seeds} and {jobs}")
    if first_seed < 0:
        raise UserError(f"--first-seed must be >= 0, got {first_seed}")
    if sample_prompts is not None and sample_prompts < 1:
        raise UserError(f"--sample-prompts must be >= 1, got {sample_prompts}")
    t_start = time.perf_counter()
    cfg = load_config(DemoConfig, config, overrides)
    if not cfg.sft.data.num_validation and not sft_dir:
        raise UserError("grpo reproduce: sft_best chooses its checkpoint on a validation split and never "
                        "reads the test split; set sft.data.num_validation (and rl.data.num_validation, so "
                        "that GRPO does not train on those rows either)")
    if ood and cfg.rl.rollout.multi_turn:
        raise UserError("--ood: a multi-turn task is scored by greedy episodes on its own test split; --ood "
                        "takes single-turn tasks only")
    ood_tests(ood, cfg.rl.data)  # a missing or empty file stops reproduce before anything trains
    if config is None and not any(o.startswith("output_dir=") for o in overrides):
        cfg.output_dir = "runs/reproduce"  # not the demo's directory
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    threads, scratch, sft_scratch = job_configs(cfg, out, jobs)
    # seed i: sft.seed and train.seed are the config's + i (--first-seed: a grid's later seeds, run elsewhere)
    offsets = list(range(first_seed, first_seed + seeds))

    clock = matching_clock(cfg.sft.model.device)
    # sft_more's budget is GRPO's seconds on `clock` (sized by sft_best's): runs timed before CPU seconds
    # were logged are trained again rather than reused
    cpu_budget = SFT_MORE in methods and clock == "cpu"
    sfts, sft_jobs = {}, {}
    for i in offsets:
        if sft_dir:
            sfts[i] = _reused_sft(Path(sft_dir), i, seeds)
            print(f"[1/4] SFT warm start, seed {i}: reusing {sfts[i].model_dir} "
                  f"(best at step {sfts[i].best_step} of {sfts[i].steps})")
        else:
            sft_jobs[i] = sft_best_job(cfg, out, i, sft_scratch)
    rl, rl_methods = cfg.rl, [m for m in methods if m in METHODS]
    if reuse:  # a later stage's run that --reuse would refuse stops the grid now, not hours from now
        first = SFTResult(out, out / "sft_best", 0.0, 0, 0, 0.0, [])  # placeholders: not yet trained
        check_before_training(list(_rl_jobs(cfg, out, offsets, rl_methods, {}, scratch).values()),
                              later=("model.path",))
        check_before_training([sft_more_job(cfg, out, i, first, 1.0, clock, sft_scratch) for i in offsets
                               if SFT_MORE in methods], later=CONTINUATION_DERIVED)
    if sft_jobs:
        print(f"[1/4] SFT warm start (sft_best), {len(sft_jobs)} run(s), {jobs} at a time -> {out}/seed*/sft",
              flush=True)
        timed = _sft_cpu_timed if cpu_budget else None
        done = reuse_or_resume(list(sft_jobs.values()), timed) if reuse else {}
        run_jobs([job for job in sft_jobs.values() if job.name not in done], jobs, again)
        sfts = {i: _finished_sft(job.run_dir) for i, job in sft_jobs.items()}

    print(f"[2/4] {', '.join(LABELS[m] for m in rl_methods)} ({rl.train.steps} steps, "
          f"{rl.train.prompts_per_step} prompts x G={rl.grpo.G}), {jobs} at a time", flush=True)
    rl_jobs = _rl_jobs(cfg, out, offsets, rl_methods, sfts, scratch)
    seconds = reuse_or_resume(list(rl_jobs.values()), _rl_cpu_timed if cpu_budget else None) if reuse else {}
    seconds |= run_jobs([job for job in rl_jobs.values() if job.name not in seconds], jobs, again)
    runs = {key: _read_run(job.run_dir, seconds[job.name]) for key, job in rl_jobs.items()}

    more = {}
    if SFT_MORE in methods:
        print(f"[3/4] {LABELS[SFT_MORE]}: SFT from sft_best for as long as each seed's GRPO training steps "
              f"took ({clock} seconds)", flush=True)
        more_jobs = {(i, SFT_MORE): sft_more_job(cfg, out, i, sfts[i], runs[(i, "grpo")][BUDGET[clock]],
                                                 clock, sft_scratch) for i in offsets}
        done = reuse_or_resume(list(more_jobs.values())) if reuse else {}
        done |= run_jobs([job for job in more_jobs.values() if job.name not in done], jobs, again)
        more = {key: _finished_sft(job.run_dir) for key, job in more_jobs.items()}
        for key, job in more_jobs.items():
            more[key].seconds = done[job.name]

    print("[4/4] evaluating every model on the test split"
          + (f" and, greedy, on {', '.join(ood)}" if ood else ""), flush=True)
    models = ({(i,
                "sft"): sfts[i].model_dir for i in offsets} | {key: run["model"] for key, run in runs.items()}
              | {key: r.model_dir for key, r in more.items()})
    tests = ood_tests(ood, rl.data)  # read again: the files' hashes as they are evaluated
    evals, ood_evals = evaluate_models(models, rl, out / "rl.yaml", out, n, ks, sample_prompts, tests, jobs,
                                       threads, reuse)
    names = ("sft", *rl_methods, *([SFT_MORE] if more else []))
    per_seed = {i: {name: _row(evals[(i, name)], runs.get((i, name)),
                               sfts[i] if name == "sft" else more.get((i, name)))
                    for name in names} for i in offsets}
    ood_results = {t.name: {"file": t.file, "num_prompts": ood_evals[t.name][(offsets[0], "sft")].num_prompts,
                            "per_seed": {i: {name: _greedy_row(ood_evals[t.name][(i, name)])
                                             for name in names} for i in offsets}} for t in tests}
    (out / "results.json").write_text(json_text({"seeds": offsets, "per_seed": per_seed,
                                                 **({"ood": ood_results} if ood else {})}))
    plots = plot_reproduce(out, runs, sfts, evals, offsets, rl_methods, ks, LABELS, names)
    command = " ".join(["grpo reproduce", *(["--config", config] if config else []), f"--seeds {seeds}",
                        *([f"--first-seed {first_seed}"] if first_seed else []),
                        f"--jobs {jobs}", f"--n {n}", f"--k {','.join(map(str, ks))}",
                        *([f"--sample-prompts {sample_prompts}"] if sample_prompts else []),
                        f"--methods {','.join(methods)}", *([f"--sft {sft_dir}"] if sft_dir else []),
                        *([f"--ood {','.join(ood)}"] if ood else []),
                        *(["--reuse"] if reuse else []), *overrides])
    test_n = evals[(offsets[0], "sft")].num_prompts
    text = results_markdown(per_seed, cfg, sfts, plots, n, ks, command, time.perf_counter() - t_start,
                            test_n, evals[(offsets[0], "sft")].num_sampled_prompts, more, ood_results)
    (out / "results.md").write_text(text)
    if docs_dir:
        _publish(out, Path(docs_dir), plots)
    print(text)
    return per_seed


def job_configs(cfg: DemoConfig, out: Path, jobs: int) -> tuple[int, bool, bool]:
    """Write OUT/sft.yaml and OUT/rl.yaml, the configs every job starts from: `cfg`'s, with one torch thread
    per core when `jobs` share the machine and a checkpoint cadence (`checkpoint_every`), unless the config
    sets them. Returns (threads, whether the RL jobs' checkpoints are reproduce's own, the SFT jobs')."""
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
    if threads and not cfg.sft.sft.threads:
        cfg.sft.sft.threads = threads
    if threads and not cfg.rl.train.threads:
        cfg.rl.train.threads = threads
    # every job checkpoints, so that --reuse can continue one that was stopped
    scratch, sft_scratch = not cfg.rl.train.save_every, not cfg.sft.sft.save_every
    if scratch:
        cfg.rl.train.save_every, cfg.rl.train.keep_checkpoints = checkpoint_every(cfg.rl.train.steps), 1
    if sft_scratch:
        cfg.sft.sft.save_every, cfg.sft.sft.keep_checkpoints = checkpoint_every(cfg.sft.sft.max_steps), 1
    save_config(cfg.sft, out / "sft.yaml")
    save_config(cfg.rl, out / "rl.yaml")
    return threads, scratch, sft_scratch


def _rl_jobs(cfg: DemoConfig, out: Path, offsets: list[int], rl_methods: list[str], sfts: dict,
             scratch: bool) -> dict:
    """(seed, method) -> its RL job, from seed i's sft_best `sfts[i]` (missing: a placeholder model.path)."""
    start = lambda i, m: cfg.sft.model.path if m == "grpo_base" or i not in sfts else sfts[i].model_dir  # noqa: E731
    return {(i, m): Job(f"{LABELS[m]} seed {i}", "train", out / "rl.yaml",
                        [*METHODS[m], f"model.path={start(i, m)}", f"train.output_dir={out / f'seed{i}' / m}",
                         f"train.seed={cfg.rl.train.seed + i}", *NO_TEST],
                        out / f"seed{i}" / m, out / f"seed{i}" / f"{m}.log", scratch_checkpoints=scratch)
            for i in offsets for m in rl_methods}


def sft_best_job(cfg: DemoConfig, out: Path, i: int, scratch: bool) -> Job:
    """Seed `i`'s SFT warm start, OUT/seed<i>/sft (`scratch`: its checkpoints are reproduce's own)."""
    d = out / f"seed{i}" / "sft"
    return Job(f"SFT seed {i}", "sft", out / "sft.yaml",
               [f"sft.seed={cfg.sft.sft.seed + i}", f"sft.output_dir={d}", *NO_TEST], d, d.parent / "sft.log",
               scratch_checkpoints=scratch)


def sft_more_job(cfg: DemoConfig, out: Path, i: int, first: SFTResult, budget: float, clock: str,
                 scratch: bool) -> Job:
    """Seed `i`'s `sft_more`: SFT continued from `first` (its sft_best) for `budget` seconds on `clock`.
    `scratch`: reproduce sets its checkpoint cadence, about CHECKPOINTS_PER_JOB checkpoints over the steps
    the budget should buy (its max_steps is a bound only), and removes them once it finishes."""
    every = checkpoint_every(continuation_steps(cfg.sft, first, budget, clock))
    d = out / f"seed{i}" / SFT_MORE
    return Job(f"{LABELS[SFT_MORE]} seed {i}", "sft", out / "sft.yaml", [
        *continuation_overrides(cfg.sft, first, budget, d, clock),
        f"sft.seed={cfg.sft.sft.seed + i}",
        "sft.train_rows=null",
        *([f"data.source={cfg.sft_more_data}"] if cfg.sft_more_data else []),
        *([f"sft.save_every={every}"] if scratch else []),
        *NO_TEST,
    ], d, out / f"seed{i}" / f"{SFT_MORE}.log", scratch_checkpoints=scratch)


def _row(e, run: dict | None, s) -> dict:
    row = {**_greedy_row(e), "sample_accuracy": e.sample_accuracy,
           "num_sampled_prompts": e.num_sampled_prompts, "pass_at_k": e.pass_at_k, "maj_at_k": e.maj_at_k}
    if run is not None:
        row.update({k: run[k] for k in ("peak_mib", "run_peak_mib", "state_mib", "seconds", "train_seconds",
                                         "train_cpu_seconds")})
    else:
        row.update(seconds=s.seconds, train_seconds=s.train_seconds, train_cpu_seconds=s.train_cpu_seconds,
                   steps=s.steps, best_step=s.best_step,
                   selection_accuracy=s.best_accuracy)
    return row


def _greedy_row(e: EvalResult) -> dict:
    """A model's greedy figures (an --ood file's row; `_row` adds the rest): greedy accuracy, its strict and
    lenient readings, and, where the evaluation kept them, each one's per-problem scores (`per_problem`)."""
    row = {"greedy_accuracy": e.greedy_accuracy, "num_prompts": e.num_prompts,
           **{EXTRA_KEYS[name]: v for name, v in e.greedy_by_checker.items()}}
    if e.greedy_scores:
        row["per_problem"] = {"greedy_accuracy": e.greedy_scores,
                              **{EXTRA_KEYS[name]: v for name, v in e.greedy_scores_by_checker.items()}}
    return row


def _rl_cpu_timed(run_dir: Path) -> bool:
    """Whether every step of the GRPO run in `run_dir` logged its CPU seconds (`time/step_cpu`)."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return all("time/step_cpu" in x for x in lines if "reward/mean" in x)


def _sft_cpu_timed(run_dir: Path) -> bool:
    """Whether the SFT run in `run_dir` logged its training steps' CPU seconds (`train_cpu_seconds`)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return bool(lines) and "train_cpu_seconds" in json.loads(lines[-1])


def _finished_sft(path: Path):
    """The result of an earlier `grpo sft` run in `path` (its final model and metrics.jsonl)."""
    try:
        lines = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
        last = lines[-1]
        steps = max(x["step"] for x in lines if "loss" in x)
        result = SFTResult(path, path / "final", last["eval/best_accuracy"], last["best_step"], steps,
                           last.get("seconds", float("nan")), lines,
                           train_seconds=last.get("train_seconds", float("nan")),
                           train_cpu_seconds=last.get("train_cpu_seconds", float("nan")),
                           rows_seen=last.get("rows_seen", 0),
                           chose_on_validation=last.get("chose_on_validation", False))
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


def _publish(out: Path, docs: Path, plots: list[str]) -> None:
    img = docs / "img"
    img.mkdir(parents=True, exist_ok=True)
    for p in plots:
        shutil.copy(out / p, img / p)
    text = (out / "results.md").read_text()
    for p in plots:
        text = text.replace(f"]({p})", f"](img/{p})")
    (docs / "results.md").write_text(text)
