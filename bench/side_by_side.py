#!/usr/bin/env python3
"""grpo and TRL's GRPOTrainer on the same work, runs alternating in one invocation; medians and ratios.

    python bench/side_by_side.py MODEL_DIR [the work's flags, bench/work.py] --out DIR
        [--sides trl,grpo,grpo_api] [--modes full,lora] [--repeats 3] [--num-prompts 64]
        [--variant NAME OVERRIDE ...] [--trl-python .peers/trl-venv/bin/python]

bench/run_bench.sh and bench/run_real_bench.sh call it with their work. Sides, each run in its own process:

  trl       bench/trl_grpo.py in TRL's virtual environment (`bash bench/setup_trl.sh` makes it)
  grpo      the command line, `grpo train` with the work's overrides (`work.grpo_overrides`): the run a user
            reproduces. Its figures come from the run's metrics.jsonl
  grpo_api  bench/bench_grpo.py: the same config through grpo's Python API, `grpo.train.grpo.train` (the
            loop the command runs, timed in the same place)
  NAME      `--variant NAME OVERRIDE` (repeatable): the command line with extra overrides, e.g.
            `--variant grpo_bf16 model.dtype=bfloat16`

Every repeat runs each mode (full fine-tuning, LoRA) and in it each side once, in that order. A LoRA
mode's sides are named with `_lora` (trl_lora, grpo_lora, ...).

The figures, one formula for every side (`run_figures`): a run's s/step is the median of its steps after
the first WARMUP (all of them in a run of WARMUP steps or fewer), its completion tokens per step the mean
over all its steps (valid tokens, EOS included), its peak RSS the process's `ru_maxrss` as the parent
reads it from `os.wait4` (the same measurement for every side). Over the repeats: medians. Ratios of each
side against trl from those medians: steps/s, completion tokens/s (tokens per step / s per step; the two
sides sample different completions) and peak RSS.

A run that exits non-zero is a result, not the end of the invocation: "out of memory" (killed by
SIGKILL, as the kernel's OOM killer does, or a MemoryError in its output) or "failed (rc N)", with the
peak RSS it had reached; the other runs go on, the medians leave it out, a side none of whose runs
finished is shown as that failure, and the script exits with status 1 at the end.

Before each run it waits up to --quiet-wait s for the 1-minute load average to fall below --quiet-load
and records the load. Writes OUT/SIDE-REPEAT.json (one run each: the per-step lists, the figures, the
command; or the failure and its log), OUT/side_by_side.json (medians and ratios) and OUT/table.txt (the
table printed last).
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from work import Work, add_work_arguments, grpo_overrides, work_flags, work_from_args  # noqa: E402

WARMUP = 2
"""Steps left out of a run's s/step: the first steps also allocate (AdamW moments, the allocator's heap)
and, in grpo, probe the decode threads."""
PHASES = ("generate", "reward", "advantages", "reference", "update")
SUB_PHASES = ("forward", "clip_grad", "optimizer")
"""Parts of grpo's `update` the loop times itself (`time/update/forward`, ...); the rest of `update` is the
backward pass plus the loss arithmetic."""


def after_warmup(values: list[float], warmup: int = WARMUP) -> list[float]:
    return values[warmup:] if len(values) > warmup else values


def run_figures(step_s: list[float], gen_s: list[float], tokens: list[float]) -> dict:
    """One run's figures from its per-step wall seconds, generation seconds and completion tokens.

    >>> run_figures([9.0, 5.0, 4.0, 6.0], [3.0, 2.0, 2.0, 2.0], [100, 120, 80, 100])["sec_per_step_median_after_2"]
    5.0
    """
    steady_s, steady_gen, steady_tok = after_warmup(step_s), after_warmup(gen_s), after_warmup(tokens)
    return {"steps": len(step_s),
            "sec_per_step_all": [round(x, 4) for x in step_s],
            "gen_sec_per_step_all": [round(x, 4) for x in gen_s],
            "completion_tokens_per_step_all": [round(x) for x in tokens],
            "sec_per_step_median_after_2": round(statistics.median(steady_s), 4),
            "sec_per_step_mean": round(statistics.mean(step_s), 4),
            "gen_sec_per_step_median_after_2": round(statistics.median(steady_gen), 4),
            "completion_tokens_per_step_mean": round(statistics.mean(tokens), 2),
            "gen_completion_tok_per_s": round(sum(steady_tok) / sum(steady_gen), 1)}


def grpo_figures(history: list[dict], batch: int) -> dict:
    """`run_figures` of a grpo run from its step records (metrics.jsonl, or `TrainResult.history`), plus
    the median of each phase and of the update's parts."""
    steps = [h for h in history if "time/step" in h]
    figures = run_figures([h["time/step"] for h in steps], [h["time/generate"] for h in steps],
                          [h["completion/len_mean"] * batch for h in steps])
    median = lambda key: round(statistics.median(after_warmup([h.get(key, 0.0) for h in steps])), 4)  # noqa: E731
    figures["phase_sec_median_after_2"] = {k: median(f"time/{k}") for k in PHASES}
    split = {k: median(f"time/update/{k}") for k in SUB_PHASES}
    split["backward_and_loss"] = round(figures["phase_sec_median_after_2"]["update"] - sum(split.values()), 4)
    figures["update_split_sec_median_after_2"] = split
    figures["reward_per_step"] = [h["reward/mean"] for h in steps]
    return figures


def side_command(side: str, work: Work, run_dir: Path, json_out: Path, args) -> list[str]:
    """The command that runs one side on `work`, writing into run_dir."""
    if side == "trl":
        return [args.trl_python, str(HERE / "trl_grpo.py"), *work_flags(work), "--output-dir", str(run_dir),
                "--json-out", str(json_out)]
    if side == "grpo_api":
        return [sys.executable, str(HERE / "bench_grpo.py"), *work_flags(work), "--output-dir", str(run_dir),
                "--json-out", str(json_out)]
    extra = [o for name, o in args.variant or [] if name == side]
    return [sys.executable, "-m", "grpo", "train", "--quiet", "--overwrite", *grpo_overrides(work, run_dir), *extra]


def failure(rc: int, log: str) -> str:
    """What a run that exited with status rc (negative: killed by that signal) and wrote log failed of.

    >>> failure(-9, ""), failure(1, "torch.OutOfMemoryError: ..."), failure(2, "usage: ...")
    ('out of memory', 'out of memory', 'failed (rc 2)')
    """
    if rc in (-9, 137) or "MemoryError" in log or "not enough memory" in log:  # 137: a shell's 128 + SIGKILL
        return "out of memory"
    return f"failed (rc {rc})"


def wait_quiet(max_load: float, max_wait: float) -> float:
    """Wait up to max_wait s for the 1-minute load average to fall below max_load; the load then."""
    waited = 0.0
    while os.getloadavg()[0] >= max_load and waited < max_wait:
        time.sleep(5)
        waited += 5
    return os.getloadavg()[0]


def run_side(side: str, base: str, work: Work, repeat: int, args) -> dict:
    """Run one side once in its own process; its figures, or its failure, with the peak RSS the parent read."""
    run_dir, json_out, log = (args.out / "runs" / f"{side}-{repeat}", args.out / f"{side}-{repeat}.json",
                              args.out / f"{side}-{repeat}.log")
    json_out.unlink(missing_ok=True)
    cmd = side_command(base, work, run_dir, json_out, args)
    env = dict(os.environ)
    if base == "trl":
        env.pop("PYTHONPATH", None)  # TRL's environment imports nothing of grpo's
    load = wait_quiet(args.quiet_load, args.quiet_wait)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        run = {"side": base, "failed": failure(proc.returncode, log.read_text(errors="replace")),
               "rc": proc.returncode, "log": str(log)}
    elif base in ("trl", "grpo_api"):
        run = json.loads(json_out.read_text())
    else:
        history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
        run = {"side": base, **grpo_figures(history, work.batch),
               "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(work).items()}}
    run["peak_rss_mb_self"] = run.get("peak_rss_mb")  # what the process read of itself, where it does
    run.update(peak_rss_mb=round(usage.ru_maxrss / 1024, 1), wall_s=round(wall, 1), load_before=round(load, 2),
               command=shlex.join(cmd), repeat=repeat)  # Linux: ru_maxrss in KiB
    json_out.write_text(json.dumps(run) + "\n")
    return run


def summarise(runs: list[dict]) -> dict:
    """Medians over one side's runs that finished; where none did, the first failure and the median peak RSS
    the runs had reached when they stopped."""
    failures = [r["failed"] for r in runs if "failed" in r]
    if len(failures) == len(runs):
        return {"runs": 0, "failed": failures[0], "failures": failures,
                "peak_rss_mib": statistics.median(r["peak_rss_mb"] for r in runs)}
    runs = [r for r in runs if "failed" not in r]
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    s, tokens = med("sec_per_step_median_after_2"), med("completion_tokens_per_step_mean")
    return {"runs": len(runs), "sec_per_step": s, "steps_per_s": 1 / s, "completion_tokens_per_step": tokens,
            "completion_tok_per_s": tokens / s, "gen_sec_per_step": med("gen_sec_per_step_median_after_2"),
            "sec_per_step_all_steps": med("sec_per_step_mean"),
            "peak_rss_mib": med("peak_rss_mb"),
            "sec_per_step_each_run": [r["sec_per_step_median_after_2"] for r in runs],
            "peak_rss_mib_each_run": [r["peak_rss_mb"] for r in runs], "failures": failures}


def ratios(summary: dict) -> dict:
    """Each side against TRL in its mode (trl for full fine-tuning, trl_lora for LoRA); none where either
    side has no finished run."""
    out = {}
    for side, s in summary.items():
        peer = "trl_lora" if side.endswith("_lora") else "trl"
        if side == peer or peer not in summary or "failed" in s or "failed" in summary[peer]:
            continue
        t = summary[peer]
        out[side] = {"vs": peer, "steps_per_s": s["steps_per_s"] / t["steps_per_s"],
                     "completion_tok_per_s": s["completion_tok_per_s"] / t["completion_tok_per_s"],
                     "peak_rss": s["peak_rss_mib"] / t["peak_rss_mib"]}
    return out


def format_table(summary: dict, rat: dict) -> str:
    """The table of medians (each run's s/step and peak RSS in brackets; "all steps": the median of the
    runs' mean over every step, warm-up included), then the ratios."""
    lines = [f"{'side':14} {'s/step':>8} {'(each run)':24} {'all steps':>9} {'tok/step':>8} {'tok/s':>7} "
             f"{'gen s':>7} {'peak RSS MiB':>12} {'(each run)':20}"]
    for side, s in summary.items():
        if "failed" in s:
            lines.append(f"{side:14} {s['failed']} (peak RSS {s['peak_rss_mib']:,.0f} MiB when it stopped)")
            continue
        each = ", ".join(f"{x:.3g}" for x in s["sec_per_step_each_run"])
        rss = ", ".join(f"{x:.0f}" for x in s["peak_rss_mib_each_run"])
        lines.append(f"{side:14} {s['sec_per_step']:8.3g} {'(' + each + ')':24} {s['sec_per_step_all_steps']:9.3g} "
                     f"{s['completion_tokens_per_step']:8.0f} {s['completion_tok_per_s']:7.1f} "
                     f"{s['gen_sec_per_step']:7.3g} {s['peak_rss_mib']:12,.0f} {'(' + rss + ')':20}")
    for side, r in rat.items():
        lines.append(f"{side} / {r['vs']}: steps/s x{r['steps_per_s']:.2f}, completion tokens/s "
                     f"x{r['completion_tok_per_s']:.2f}, peak RSS x{r['peak_rss']:.2f}")
    lines += [f"{side}: {len(s['failures'])} run(s) left out of the medians: {', '.join(s['failures'])}"
              for side, s in summary.items() if s["failures"] and "failed" not in s]
    return "\n".join(line.rstrip() for line in lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_work_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="where the runs and the summary go")
    p.add_argument("--sides", default="trl,grpo,grpo_api", help="comma-separated: trl, grpo, grpo_api, variants")
    p.add_argument("--modes", default="full", help="comma-separated: full, lora")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-prompts", type=int, default=0,
                   help="train on the first N rows of --prompts-jsonl only (written to OUT/prompts.jsonl); 0: all")
    p.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "OVERRIDE"),
                   help="a further side: `grpo train` with this extra override (repeat for more overrides)")
    p.add_argument("--trl-python", default=str(HERE.parent / ".peers" / "trl-venv" / "bin" / "python"))
    p.add_argument("--quiet-load", type=float, default=1.0)
    p.add_argument("--quiet-wait", type=float, default=60.0)
    args = p.parse_args(argv)
    args.sides, args.modes = args.sides.split(","), args.modes.split(",")
    if args.lora:  # the work's --lora flag here means: the LoRA mode alone
        args.modes = ["lora"]
    unknown = set(args.sides) - {"trl", "grpo", "grpo_api"} - {name for name, _ in args.variant or []}
    if unknown or not set(args.modes) <= {"full", "lora"}:
        p.error(f"unknown side or mode: {sorted(unknown) or args.modes}")
    return args


def main(argv=None) -> dict:
    """Run the sides; what it writes to OUT/side_by_side.json (the work, the summary, the ratios)."""
    args = parse_args(argv)
    args.out = args.out.resolve()  # the runs write where this process reads, wherever they start
    args.out.mkdir(parents=True, exist_ok=True)
    work = work_from_args(args)
    work = replace(work, model_dir=work.model_dir.resolve(), prompts_jsonl=work.prompts_jsonl.resolve())
    if args.num_prompts:
        rows = [line for line in work.prompts_jsonl.read_text().splitlines() if line.strip()][: args.num_prompts]
        (args.out / "prompts.jsonl").write_text("\n".join(rows) + "\n")
        work = replace(work, prompts_jsonl=(args.out / "prompts.jsonl").resolve())
    print(f"work: {work.prompts_per_step} prompts x G={work.G} from {work.prompts_jsonl}, up to {work.max_new_tokens} "
          f"new tokens at T={work.temperature}, beta {work.beta}, lr {work.learning_rate}, {work.max_steps} steps, "
          f"{work.threads} threads; modes {','.join(args.modes)}; sides {','.join(args.sides)}; "
          f"{args.repeats} alternating repeats", flush=True)
    print("grpo's command line: " + shlex.join(["grpo", "train", *grpo_overrides(work, Path("OUT/runs/SIDE-N"))]),
          flush=True)
    runs: dict[str, list[dict]] = {}
    for repeat in range(1, args.repeats + 1):
        for mode in args.modes:
            for base in args.sides:
                side = base + ("_lora" if mode == "lora" else "")
                r = run_side(side, base, replace(work, lora=mode == "lora"), repeat, args)
                runs.setdefault(side, []).append(r)
                if "failed" in r:
                    print(f"run {repeat}  {side:14} {r['failed']} after {r['wall_s']:.0f} s at {r['peak_rss_mb']:,.0f} "
                          f"MiB, see {r['log']}", flush=True)
                    continue
                print(f"run {repeat}  {side:14} {r['sec_per_step_median_after_2']:8.3g} s/step  "
                      f"{r['completion_tokens_per_step_mean']:6.0f} tokens/step  {r['peak_rss_mb']:8,.0f} MiB  "
                      f"(load {r['load_before']:.2f} before)", flush=True)
    summary = {side: summarise(r) for side, r in runs.items()}
    rat = ratios(summary)
    table = format_table(summary, rat)
    print(f"\nmedians over {args.repeats} runs each; s/step: each run's median step after its first {WARMUP}\n{table}")
    (args.out / "table.txt").write_text(table + "\n")
    result = {"work": {k: str(v) for k, v in vars(work).items()}, "summary": summary, "ratios": rat}
    (args.out / "side_by_side.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(1 if any(s["failures"] for s in main()["summary"].values()) else 0)
