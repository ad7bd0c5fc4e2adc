"""`grpo reproduce` on a minute's budget: methods train over two seeds, are evaluated, and results.md says
so with spreads and verdicts."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from grpo.commands import reproduce_jobs
from grpo.commands.cli import main
from grpo.commands.reproduce_jobs import (checkpoint_every)
from grpo.errors import UserError
from grpo.config import TrainConfig, load_config
from grpo.data.synthetic import make_rows
from grpo.commands.reproduce import (METHODS, _reused_sft, run_reproduce)
from grpo.stats import mean_ci, mean_std, verdict
from grpo.train.checkpoint_files import checkpoint_problem, latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]

TINY = ["sft.sft.max_steps=4", "sft.sft.eval_every=2", "sft.sft.batch_size=8", "sft.data.num_heldout=4",
        "sft.data.num_validation=4",
        "sft.data.num_train=64", "sft.sampling.max_new_tokens=12", "rl.train.steps=2",
        "rl.train.prompts_per_step=2",
        "rl.grpo.G=4", "rl.train.micro_batch_size=8", "rl.sampling.max_new_tokens=12",
        "rl.data.num_heldout=4",
        "rl.data.num_train=64", "rl.train.eval_every=1", "sft.model.tiny_hidden_size=32",
        "sft.model.tiny_num_layers=1"]


def test_every_method_is_a_valid_training_config_that_selects_it():
    """The overrides each method adds to the shared RL config (the end-to-end test below trains three)."""
    cfg = {m: load_config(TrainConfig, None, overrides) for m, overrides in METHODS.items()}
    assert [cfg[m].algorithm for m in METHODS] == ["grpo", "grpo", "ppo", "rft", "grpo", "grpo"]
    assert (
        cfg["grpo_process"].grpo.advantage == "process"
        and cfg["grpo_process"].rewards.step_fn == "arithmetic_steps"
    )
    assert cfg["iterative"].train.iterations == 2 and cfg["grpo"].train.iterations == 1


@pytest.mark.slow
def test_reproduce_trains_methods_over_seeds_and_writes_results_with_plots(tmp_path, capsys):
    """SFT, then GRPO, PPO and online RFT from it, over two seeds (8 training processes, 2 at a time)."""
    docs, out = tmp_path / "docs", tmp_path / "out"
    assert main(["reproduce", "-q", "--seeds", "2", "--jobs", "2", "--n", "4", "--k", "1,2,4", "--docs",
                 str(docs),
                 "--methods", "grpo,ppo,rft", f"output_dir={out}", *TINY]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1]
    per_seed = results["per_seed"]
    for i in ("0", "1"):
        assert list(per_seed[i]) == ["sft", "grpo", "ppo", "rft"]
        for name, v in per_seed[i].items():
            assert 0 <= v["greedy_accuracy"] <= 1 and set(v["pass_at_k"]) == {"1", "2", "4"}
            # pass@k never falls as k grows; pass@1 is the sampled accuracy
            p = [v["pass_at_k"][k] for k in ("1", "2", "4")]
            assert p == sorted(p) and p[0] == pytest.approx(v["sample_accuracy"])
        assert all(per_seed[i][m]["peak_mib"] > 50 for m in ("grpo", "ppo", "rft"))
        # value model; reference
        assert (
            per_seed[i]["ppo"]["state_mib"]
            > per_seed[i]["grpo"]["state_mib"]
            > per_seed[i]["rft"]["state_mib"]
        )
        # each method ran the configured algorithm with its seed's SFT model and seed
        run = out / f"seed{i}"
        assert "ppo/value_loss" in (run / "ppo" / "metrics.jsonl").read_text()
        assert "algorithm: rft" in (run / "rft" / "config.yaml").read_text()
        assert f"seed: {i}" in (run / "grpo" / "config.yaml").read_text()
        assert f"path: {run / 'sft' / 'final'}" in (run / "grpo" / "config.yaml").read_text()
        assert f"seed: {i}" in (run / "sft" / "config.yaml").read_text()
        assert "threads: 1" in (run / "sft" / "config.yaml").read_text()  # 2 jobs on 2 cores
        # `python -m grpo sft` and `train` ran as processes and said what they did
        assert "best validation accuracy" in (run / "sft.log").read_text()
        assert (
            "held-out accuracy" in (run / "grpo.log").read_text()
            and (run / "grpo" / "final" / "model.safetensors").is_file()
        )
    # each seed trained its own SFT model on its own data order
    assert (out / "seed0" / "sft" / "metrics.jsonl").read_text() != (
        out / "seed1" / "sft" / "metrics.jsonl"
    ).read_text()
    text = (docs / "results.md").read_text()
    # the table gives mean +- sd over the seeds, and each claim its per-seed differences and verdict
    acc = {m: [per_seed[i][m]["greedy_accuracy"] for i in ("0", "1")] for m in per_seed["0"]}
    mean, sd = mean_std([100 * a for a in acc["grpo"]])
    assert f"| GRPO (outcome) | {mean:.1f} ± {sd:.1f}% |" in text
    diffs = [100 * (g - s) for g, s in zip(acc["grpo"], acc["sft"])]
    m, lo, hi = mean_ci(diffs)
    assert (f"| RL adds points over SFT (GRPO outcome − SFT) | {m:+.1f} ({diffs[0]:+.1f}, {diffs[1]:+.1f}) | "
            f"[{lo:+.1f}, {hi:+.1f}] | {verdict(lo, hi)} |") in text
    for claim in ("GRPO matches or beats PPO", "GRPO beats online RFT", "RL lifts maj@4 more than pass@4"):
        assert f"| {claim}" in text
    # methods not trained
    for claim in ("process supervision beats outcome", "iterative GRPO adds to one run"):
        assert claim not in text
    assert "grpo reproduce --seeds 2 --jobs 2 --n 4 --k 1,2,4 --methods grpo,ppo,rft" in text
    assert "](img/curves.png)" in text
    for png in ("curves.png", "maj_pass_at_k.png", "sft.png"):
        assert (docs / "img" / png).stat().st_size > 10_000
    assert "Out of distribution" not in text

    # --reuse --ood on the finished grid: nothing trained, the test split's evaluations kept, each model
    # scored greedy on the --ood file (four problems with four steps and bigger numbers) and saved beside them
    ood = tmp_path / "four_steps.jsonl"
    rows = make_rows(4, "heldout", 0, num_steps=4, max_value=40)
    ood.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test_split = {p: p.stat().st_mtime_ns for p in out.glob("seed*/*.eval.json")}
    first = ["reproduce", "-q", "--seeds", "2", "--jobs", "2", "--n", "4", "--k", "1,2,4", "--docs",
             str(docs), "--methods", "grpo,ppo,rft", "--reuse", "--ood", str(ood), f"output_dir={out}", *TINY]
    capsys.readouterr()
    assert main(first) == 0
    printed = capsys.readouterr().out
    assert "finished" not in printed and "resuming" not in printed
    assert ("reusing the evaluations of sft seed 0, sft seed 1, grpo seed 0, ppo seed 0, rft seed 0, "
            "grpo seed 1, ppo seed 1, rft seed 1\n") in printed
    assert {p: p.stat().st_mtime_ns for p in test_split} == test_split
    assert sorted(p.name for p in out.glob("seed1/*.ood-*")) == [f"{m}.ood-four_steps.eval.json"
                                                                 for m in ("grpo", "ppo", "rft", "sft")]
    with_ood = json.loads((out / "results.json").read_text())
    assert with_ood["per_seed"]["1"]["grpo"]["greedy_accuracy"] == per_seed["1"]["grpo"]["greedy_accuracy"]
    ood_seed = with_ood["ood"]["four_steps"]["per_seed"]
    assert with_ood["ood"]["four_steps"]["num_prompts"] == 4
    assert list(ood_seed["1"]) == ["sft", "grpo", "ppo", "rft"]
    assert all(4 * v[key] in range(5) for v in ood_seed["1"].values()
               for key in ("greedy_accuracy", "strict_accuracy", "lenient_accuracy"))
    section = (docs / "results.md").read_text().split("## Out of distribution")[1].split("## Setup")[0]
    diffs = [100 * (ood_seed[i]["grpo"]["greedy_accuracy"] - ood_seed[i]["sft"]["greedy_accuracy"])
             for i in ("0", "1")]
    m, lo, hi = mean_ci(diffs)
    assert f"### four_steps (`{ood}`, 4 problems)" in section and "| GRPO matches or beats PPO" in section
    assert (f"| RL adds points over SFT (GRPO outcome − SFT) | {m:+.1f} ({diffs[0]:+.1f}, {diffs[1]:+.1f}) | "
            f"[{lo:+.1f}, {hi:+.1f}] | {verdict(lo, hi)} |") in section
    # the same again: nothing evaluated
    evals = {p: p.stat().st_mtime_ns for p in out.glob("seed*/*.eval.json")}
    assert main(first) == 0
    assert "sft seed 0 on four_steps, sft seed 1 on four_steps" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("seed*/*.eval.json")} == evals
    assert json.loads((out / "results.json").read_text())["ood"] == with_ood["ood"]

    # --first-seed 1 --seeds 1: seed 1 alone, its jobs configured as the two-seed grid's (else --reuse would
    # refuse them), so a grid can be extended with seeds run on another machine
    capsys.readouterr()
    assert main(["reproduce", "-q", "--seeds", "1", "--first-seed", "1", "--jobs", "2", "--n", "4", "--k",
                 "1,2,4", "--methods", "grpo,ppo,rft", "--reuse", f"output_dir={out}", *TINY]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reusing") == 5 and "seed 0" not in printed  # its SFT, 3 RL runs, the evaluations
    assert "reusing the evaluations of sft seed 1, grpo seed 1, ppo seed 1, rft seed 1\n" in printed
    alone = json.loads((out / "results.json").read_text())
    assert alone["seeds"] == [1] and alone["per_seed"]["1"] == per_seed["1"]
    assert "grpo reproduce --seeds 1 --first-seed 1 --jobs 2" in (out / "results.md").read_text()
    assert main(["reproduce", "-q", "--first-seed", "-1", f"output_dir={out}", *TINY]) == 2
    assert "--first-seed must be >= 0, got -1" in capsys.readouterr().err

    # --reuse: the finished runs in the output directory are kept, only the evaluation runs again
    logs = {p: p.stat().st_mtime_ns for p in out.glob("seed*/*/metrics.jsonl")}
    capsys.readouterr()
    assert main(["reproduce", "-q", "--seeds", "2", "--n", "2", "--k", "1,2", "--methods", "rft,grpo",
                 "--reuse", f"output_dir={out}", *TINY]) == 0  # one job: evaluated in this process
    printed = capsys.readouterr().out
    assert printed.count("reusing") == 6 and "finished" not in printed  # 2 SFT + 2 x 2 RL runs, none trained
    assert {p: p.stat().st_mtime_ns for p in out.glob("seed*/*/metrics.jsonl")} == logs
    again = json.loads((out / "results.json").read_text())["per_seed"]
    assert list(again["1"]) == ["sft", "rft", "grpo"]
    assert [again[i][m]["greedy_accuracy"] for i in ("0", "1") for m in again["0"]] == \
        [per_seed[i][m]["greedy_accuracy"] for i in ("0", "1") for m in again["0"]]
    assert "Out of distribution" not in (out / "results.md").read_text()  # no --ood this time
    # the first invocation's wall time
    assert again["1"]["grpo"]["seconds"] == per_seed["1"]["grpo"]["seconds"]
    # ... unless the configuration differs: then it says which setting and what to do
    assert main(["reproduce", "-q", "--seeds", "2", "--methods", "rft", "--reuse", f"output_dir={out}", *TINY,
                 "rl.train.seed=7"]) == 2
    err = capsys.readouterr().err
    assert (
        f"--reuse: {out / 'seed0' / 'rft'} was trained with train.seed=0, this reproduce asks for 7; delete"
        in err
    )

    # --sft DIR: another reproduce output's SFT models, seed by seed (the same plumbing as --reuse's)
    reused = _reused_sft(out, 1, seeds=2)
    assert (
        reused.model_dir == out / "seed1" / "sft" / "final"
        and reused.best_step == per_seed["1"]["sft"]["best_step"]
    )
    with pytest.raises(UserError, match="no seed2/sft in it"):
        _reused_sft(out, 2, seeds=3)


def test_reproduce_refuses_unknown_methods_and_bad_k(tmp_path):
    with pytest.raises(UserError, match="unknown method 'dpo'"):
        run_reproduce(None, [f"output_dir={tmp_path}"], methods=["grpo", "dpo"])
    with pytest.raises(UserError, match="every k must be in 1..--n"):
        run_reproduce(None, [f"output_dir={tmp_path}"], n=4, ks=[1, 8])
    assert not any(tmp_path.iterdir())  # nothing written
    with pytest.raises(UserError, match="--seeds and --jobs must be >= 1"):
        run_reproduce(None, [f"output_dir={tmp_path}"], seeds=0)
    # a bad --ood file stops it before anything trains; a multi-turn task is scored by episodes only
    with pytest.raises(UserError, match="--ood missing.jsonl: no such file"):
        run_reproduce(None, [f"output_dir={tmp_path}", "sft.data.num_validation=4"], ood=("missing.jsonl",))
    with pytest.raises(UserError, match="--ood: a multi-turn task"):
        run_reproduce(str(ROOT / "configs" / "smollm2_tools_vs_sft.yaml"), [f"output_dir={tmp_path}"],
                      ood=(str(ROOT / "data" / "calculator_test.jsonl"),))
    assert not any(tmp_path.iterdir())


VARYING = ("time/", "memory/", "tokens_per_s")
"""Metric keys that measure the machine, not the training (as scripts/kill_resume.py)."""


def _steps(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_reuse_resumes_killed_grpo_and_sft_more_jobs_and_keeps_finished_evaluations(tmp_path, capsys,
                                                                                    monkeypatch):
    """GRPO is SIGKILLed while writing its second checkpoint (reproduce has it checkpoint every 2 of its 12
    steps); --reuse continues it from step 2 instead of step 0, it ends bit-identical to a run never
    stopped, and sft_more gets the CPU seconds of the final run's 12 steps, each once. sft_more is SIGKILLed
    while writing its second checkpoint; a second --reuse continues it from its first, and its CPU-seconds
    budget counts the seconds spent before the kill. A third --reuse keeps every run and every evaluation."""
    out = tmp_path / "out"
    argv = ["reproduce", "-q", "--n", "2", "--k", "1,2", "--methods", "grpo,sft_more", f"output_dir={out}",
            *TINY, "rl.train.steps=12", "rl.train.eval_every=0", "rl.optim.lr=0.01",
            "rl.rewards.functions=[{fn: arithmetic_accuracy}, "
            "{fn: 'tests/fixtures/varied_reward.py:letter_share', weight: 0.5}]"]
    reuse = [*argv[:1], "--reuse", *argv[1:]]
    popen = subprocess.Popen

    def killed_in_second_checkpoint(command: str):
        def start(cmd, **kw):  # scripts/kill_resume.py runs `grpo COMMAND`, then SIGKILLs it
            if cmd[1:4] == ["-m", "grpo", command]:
                cmd = [cmd[0], str(ROOT / "scripts" / "kill_resume.py"), "--child", "checkpoint:2", "--",
                       *cmd[3:]]
            return popen(cmd, **kw)
        return start

    monkeypatch.setattr(reproduce_jobs.subprocess, "Popen", killed_in_second_checkpoint("train"))
    assert main(argv) == 2
    assert "GRPO (outcome) seed 0 failed (exit -9)" in capsys.readouterr().err
    monkeypatch.undo()
    run = out / "seed0" / "grpo"
    rl = yaml.safe_load((out / "rl.yaml").read_text())["train"]
    assert (rl["save_every"], rl["keep_checkpoints"]) == (checkpoint_every(12), 1) == (2, 1)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004.tmp"]
    killed = (run / "metrics.jsonl").read_text().splitlines()
    assert len(killed) == 4  # steps 1-4 logged; 3 and 4 are past the checkpoint
    first_sitting = json.loads((out / "seed0" / "grpo.partial.json").read_text())["seconds"]
    # sft_best checkpointed every step of its 4 (reproduce's cadence) and removed them once finished
    assert yaml.safe_load((out / "sft.yaml").read_text())["sft"]["save_every"] == checkpoint_every(4) == 1
    assert not (out / "seed0" / "sft" / "checkpoints").exists()

    monkeypatch.setattr(reproduce_jobs.subprocess, "Popen", killed_in_second_checkpoint("sft"))
    assert main(reuse) == 2
    captured = capsys.readouterr()
    monkeypatch.undo()
    printed = captured.out
    assert "more SFT (sft_more) seed 0 failed (exit -9)" in captured.err
    assert "reusing SFT seed 0" in printed and "resuming GRPO (outcome) seed 0 from step-000002" in printed
    assert printed.count("finished") == 1  # GRPO's last sitting
    log = (out / "seed0" / "grpo.log").read_text()
    assert "resuming from" in log and "held-out accuracy" in log
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines[:2] == killed[:2]  # kept as logged, timings included: steps 1-2 were not run again
    assert lines[2:4] != killed[2:4]  # steps 3-4 were (the same numbers, other timings)
    steps = [x for x in _steps(run) if "reward/mean" in x]
    assert [x["step"] for x in steps] == list(range(1, 13))
    # bit-identical to the same run never stopped (and never checkpointed)
    straight = tmp_path / "straight"
    subprocess.run([sys.executable, "-m", "grpo", "train", "-q", "--config", str(run / "config.yaml"),
                    f"train.output_dir={straight}", "train.save_every=0"], check=True, capture_output=True)
    assert (run / "final" / "model.safetensors").read_bytes() == \
        (straight / "final" / "model.safetensors").read_bytes()
    same = lambda path: [{k: v for k, v in x.items() if not k.startswith(VARYING)} for x in _steps(path)]  # noqa
    assert same(run) == same(straight)
    assert steps[0]["reward/std"] > 0 and "eval/accuracy_before" in same(run)[-1]  # a gradient; the last line
    # the checkpoints were reproduce's own: gone
    assert not (run / "checkpoints").exists() and not (out / "seed0" / "grpo.partial.json").exists()
    # sft_more's budget: the CPU seconds of the final run's 12 steps, each counted once
    cpu = sum(x["time/step_cpu"] for x in steps)
    more_run = out / "seed0" / "sft_more"
    more = yaml.safe_load((more_run / "config.yaml").read_text())["sft"]
    assert (more["max_seconds"], more["clock"]) == (round(cpu, 3), "cpu")
    # its checkpoints: about ten over the steps the budget should buy (a quarter of its max_steps)
    every = more["save_every"]
    assert every == checkpoint_every(more["max_steps"] // 4) and more["keep_checkpoints"] == 1
    assert sorted(p.name for p in (more_run / "checkpoints").iterdir()) == \
        [f"step-{every:06d}", f"step-{2 * every:06d}.tmp"]
    cut = [json.loads(x) for x in (more_run / "metrics.jsonl").read_text().splitlines()]
    assert len(cut) == 2 * every  # killed in the checkpoint of step 2 * every, written after its line
    before = cut[every - 1]["train_cpu_seconds"]  # the seconds the checkpoint holds
    more_first = json.loads((out / "seed0" / "sft_more.partial.json").read_text())["seconds"]

    assert main(reuse) == 0
    printed = capsys.readouterr().out
    assert "reusing SFT seed 0" in printed and "reusing GRPO (outcome) seed 0" in printed
    assert f"resuming more SFT (sft_more) seed 0 from step-{every:06d}" in printed
    assert printed.count("finished") == 1  # sft_more's last sitting
    assert "resuming from" in (out / "seed0" / "sft_more.log").read_text()
    more_steps = [x for x in _steps(more_run) if "loss" in x]
    assert [x["step"] for x in more_steps] == list(range(1, len(more_steps) + 1))
    assert more_steps[:every] == cut[:every]  # kept as logged
    # the budget counted the first sitting's seconds: they go on from the checkpoint's, and it stopped at the
    # budget (or at max_steps), not later
    last = _steps(more_run)[-1]
    assert more_steps[every]["train_cpu_seconds"] > before > 0
    assert last["train_cpu_seconds"] >= more["max_seconds"] or last["step"] == more["max_steps"]
    assert more_steps[-2]["train_cpu_seconds"] < more["max_seconds"]
    assert not (more_run / "checkpoints").exists() and not (out / "seed0" / "sft_more.partial.json").exists()
    results = json.loads((out / "results.json").read_text())["per_seed"]["0"]
    assert results["grpo"]["seconds"] > first_sitting > 0  # the wall time is both sittings'
    assert results["sft_more"]["seconds"] > more_first > 0
    assert results["grpo"]["train_cpu_seconds"] == pytest.approx(cpu, rel=1e-12)
    assert results["sft_more"]["train_cpu_seconds"] == last["train_cpu_seconds"]

    # a third --reuse: every run and every evaluation kept, nothing trained or evaluated
    evals = {p: p.stat().st_mtime_ns for p in out.glob("seed0/*.eval.json")}
    assert len(evals) == 3
    assert main(reuse) == 0
    printed = capsys.readouterr().out
    assert "reusing the evaluations of sft seed 0, grpo seed 0, sft_more seed 0" in printed
    assert "finished" not in printed and "resuming" not in printed
    assert {p: p.stat().st_mtime_ns for p in out.glob("seed0/*.eval.json")} == evals
    assert json.loads((out / "results.json").read_text())["per_seed"]["0"] == results


@pytest.mark.slow
def test_ctrl_c_stops_reproduce_with_a_checkpoint_and_its_reuse_command_continues_from_it(tmp_path):
    """A terminal's Ctrl-C during GRPO reaches reproduce alone (its jobs run in their own sessions); it
    sends GRPO one SIGINT, on which GRPO finishes its step, checkpoints and exits; reproduce exits 130 naming
    the command that continues, and that command resumes GRPO from the checkpoint and finishes the grid."""
    out = tmp_path / "out"
    args = ["reproduce", "-q", "--n", "2", "--k", "1,2", "--methods", "grpo", f"output_dir={out}", *TINY,
            "rl.train.steps=40", "rl.train.eval_every=0"]
    proc = subprocess.Popen([sys.executable, "-m", "grpo", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    run = out / "seed0" / "grpo"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 1:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal would: reproduce's process group
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("grpo: interrupted (SIGINT); the running jobs stopped, each with a checkpoint")
    again = shlex.split(last.split("continue with: ")[1])
    assert again == ["grpo", "reproduce", "--reuse", *args[1:]]
    # GRPO got one signal: it finished its step, checkpointed it and stopped there
    log = (out / "seed0" / "grpo.log").read_text()
    assert log.count("SIGINT received") == 1
    ckpt = latest_checkpoint(run)
    step = int(ckpt.name.split("-")[1])
    assert f"interrupted at step {step} (SIGINT); checkpoint saved to {ckpt}" in log
    assert checkpoint_problem(ckpt) is None and 1 <= step < 40
    assert len((run / "metrics.jsonl").read_text().splitlines()) == step
    assert json.loads((out / "seed0" / "grpo.partial.json").read_text())["seconds"] > 0

    done = subprocess.run([sys.executable, "-m", "grpo", *again[1:]], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "reusing SFT seed 0" in done.stdout
    assert f"resuming GRPO (outcome) seed 0 from {ckpt.name}" in done.stdout
    assert "resuming from" in (out / "seed0" / "grpo.log").read_text()
    assert [x["step"] for x in _steps(run) if "reward/mean" in x] == list(range(1, 41))
    assert (run / "final" / "model.safetensors").is_file() and (out / "results.md").is_file()
