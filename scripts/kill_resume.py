"""Kill a training run with SIGKILL in every phase and at a random moment, resume it each time with
`grpo train --resume` (`--command sft`: `grpo sft --resume`), and compare it with the same run left alone:
the final weights (or adapters) and every logged metric must be bit-identical, timings and memory aside.

    python scripts/kill_resume.py --out runs/kills --kills generate:3,update:3,checkpoint:2,random \
        --random-min 60 --random-max 200 -- --config configs/smollm2_gsm8k_lora.yaml train.steps=30 \
        train.save_every=2 data.num_heldout=20 train.prompts_per_step=2 grpo.G=4      # SmolLM2, LoRA
    python scripts/kill_resume.py --out runs/kills_ddp --nproc 2 -- model.tiny_hidden_size=32 \
        train.steps=8 train.save_every=1 train.prompts_per_step=2                    # tiny, 2 ranks
    python scripts/kill_resume.py --out runs/kills_sft --command sft --kills step:5,checkpoint:2,random \
        -- sft.max_steps=40 sft.save_every=2 model.tiny_hidden_size=32               # SFT, tiny

A kill is `PHASE:N`: SIGKILL the process as it enters its N-th `PHASE` (a phase timer of the GRPO loop:
generate, reward, reference, advantages, update; `step` for SFT: its N-th training step), `checkpoint:N`
while its N-th checkpoint is being written (its files written, not yet renamed into place), or `random`: at
a uniformly random moment between `--random-min` and `--random-max` seconds after the process starts. Each
kill is its own process, started fresh (the first) or with `--resume` (the rest); a last `--resume` runs
to the end. The report (JSON and markdown, in OUT) lists each kill, where the run stood, the resume count
and the comparison. Used by tests/test_reliability_kills.py (shrunk) and docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

VARYING = ("time/", "memory/", "tokens_per_s", "seconds", "train_seconds", "train_cpu_seconds")
"""Metric keys that measure the machine, not the training: left out of the comparison."""


def child(spec: str, argv: list[str]) -> int:
    """Run `grpo` (its CLI's main) in this process, SIGKILLing it where `spec` says."""
    import grpo.train.checkpoint_files as checkpoint_files
    import grpo.train.metrics as metrics
    import grpo.train.sft as sft
    from grpo.commands.cli import main

    phase, _, count = spec.partition(":")
    seen = {"n": 0}

    def hit(name: str) -> None:
        if name == phase:
            seen["n"] += 1
            if seen["n"] == int(count):
                os.kill(os.getpid(), signal.SIGKILL)

    if phase == "checkpoint":  # mid-write: every file fsynced but the rename not done
        real = checkpoint_files._fsync
        checkpoint_files._fsync = lambda path: (hit("checkpoint") if Path(path).name.endswith(".tmp") else None,
                                                real(path))
    elif phase == "step":  # SFT's training step
        step = sft._train_step
        sft._train_step = lambda *args, **kwargs: (hit("step"), step(*args, **kwargs))[1]
    elif phase:
        init = metrics.Timers.__init__
        metrics.Timers.__init__ = lambda self, on_start=None, on_end=None: init(self, on_start or hit, on_end)
    return main(argv)


def _launch(out: Path, nproc: int, spec: str, argv: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--child", spec, "--", *argv]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", __file__,
               "--child", spec, "--", *argv]
    return subprocess.Popen(cmd, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)


def _metrics(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in x.items() if not k.startswith(VARYING)} for x in lines]


def _final_files(run: Path) -> dict[str, bytes]:
    final = run / "final"
    return {p.relative_to(final).as_posix(): p.read_bytes() for p in sorted(final.rglob("*.safetensors"))}


def _stood_at(run: Path) -> int:
    ckpts = sorted((run / "checkpoints").glob("step-*[0-9]"))
    return int(ckpts[-1].name[5:]) if ckpts else 0


def run_kills(out: Path, train_args: list[str], kills: list[str], nproc: int = 1, random_min: float = 2.0,
              random_max: float = 20.0, seed: int = 0, command: str = "train") -> dict:
    """`command`: 'train' or 'sft' (its config section holds output_dir too)."""
    out.mkdir(parents=True, exist_ok=True)
    straight, killed, log = out / "straight", out / "killed", out / "log.txt"
    base = [command, "-q", *train_args]
    t0 = time.perf_counter()
    done = _launch(out, nproc, "", [*base, f"{command}.output_dir={straight}"], log).wait()
    if done != 0:
        raise SystemExit(f"the uninterrupted run failed (exit {done}); see {log}")
    straight_s = time.perf_counter() - t0
    rng, events = random.Random(seed), []
    for i, spec in enumerate(kills):
        resume = [command, "-q", "--resume", str(killed)]
        argv = [*base, f"{command}.output_dir={killed}"] if i == 0 else resume
        before = _stood_at(killed)
        proc = _launch(out, nproc, "" if spec == "random" else spec, argv, log)
        if spec == "random":
            delay = rng.uniform(random_min, random_max)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            spec = f"random ({delay:.1f} s)"
        code = proc.wait()
        events.append({"kill": spec, "exit": code, "checkpoint_before": before, "checkpoint_after": _stood_at(killed),
                       "partial_left": sorted(p.name for p in (killed / "checkpoints").glob("*.tmp"))
                       if (killed / "checkpoints").is_dir() else []})
    code = _launch(out, nproc, "", [command, "-q", "--resume", str(killed)], log).wait()
    if code != 0:
        raise SystemExit(f"the last resume failed (exit {code}); see {log}")
    a, b = _final_files(straight), _final_files(killed)
    ma, mb = _metrics(straight), _metrics(killed)
    report = {"command": command, "train_args": train_args, "nproc": nproc, "kills": events,
              "resumes": len(kills),
              "final_files": sorted(a), "final_identical": a == b and bool(a), "metrics_lines": len(ma),
              "metrics_identical": ma == mb, "straight_seconds": straight_s}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(_markdown(report))
    return report


def _markdown(r: dict) -> str:
    rows = ["| kill | exit status | newest checkpoint before -> after |", "|---|---|---|"]
    rows += [f"| {e['kill']} | {e['exit']} | step {e['checkpoint_before']} -> {e['checkpoint_after']} |"
             for e in r["kills"]]
    verdict = "bit-identical" if r["final_identical"] and r["metrics_identical"] else "DIFFERENT"
    return "\n".join([f"`grpo {r['command']} {' '.join(r['train_args'])}` on {r['nproc']} process(es): "
                      f"{len(r['kills'])} kills, "
                      f"{r['resumes']} resumes; final weights ({', '.join(r['final_files'])}) and "
                      f"{r['metrics_lines']} metrics lines against the uninterrupted run: **{verdict}**.", "",
                      *rows, ""])


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        argv = sys.argv[3:]
        sys.exit(child(sys.argv[2], argv[1:] if argv[:1] == ["--"] else argv))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for the two runs, the log and the report")
    p.add_argument("--kills", default="generate:2,update:2,checkpoint:2,random",
                   help="comma-separated PHASE:N or random, in order")
    p.add_argument("--nproc", type=int, default=1, help="processes (torchrun) per run")
    p.add_argument("--command", choices=["train", "sft"], default="train",
                   help="the run: grpo train or grpo sft")
    p.add_argument("--random-min", type=float, default=2.0, help="earliest moment of the random kill, seconds")
    p.add_argument("--random-max", type=float, default=20.0, help="latest moment of the random kill, seconds")
    p.add_argument("--seed", type=int, default=0, help="seeds the random kill's moment")
    p.add_argument("train_args", nargs="*",
                   help="`grpo train` (`grpo sft`) arguments after --: --config FILE and overrides")
    args = p.parse_args()
    report = run_kills(Path(args.out), args.train_args, args.kills.split(","), args.nproc, args.random_min,
                       args.random_max, args.seed, args.command)
    print(_markdown(report))
    sys.exit(0 if report["final_identical"] and report["metrics_identical"] else 1)


if __name__ == "__main__":
    main()
