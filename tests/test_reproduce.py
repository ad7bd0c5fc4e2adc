"""`grpo reproduce` on a minute's budget: methods train over two seeds, are evaluated, and results.md says
so with spreads and verdicts."""

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from grpo.commands import reproduce_jobs
from grpo.commands.cli import main
from grpo.commands.reproduce_jobs import (Job, JobsInterrupted, cached_evaluation, checkpoint_every,
                                          continue_command, evaluation_key, reuse_or_resume, run_jobs,
                                          save_evaluation, start_key)
from grpo.errors import UserError
from grpo.config import DemoConfig, SFTConfig, TrainConfig, load_config, save_config, to_dict
from grpo.commands.reproduce import (METHODS, _reused_sft, _rl_cpu_timed, _sft_cpu_timed, job_configs,
                                     run_reproduce, sft_best_job, sft_more_job)
from grpo.stats import mean_ci, mean_std, verdict
from grpo.train.checkpoint_files import checkpoint_problem, latest_checkpoint
from grpo.train.evaluation import EvalResult
from grpo.train.sft import SFTResult

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


def _job(tmp_path: Path, *args: str) -> Job:
    config = tmp_path / "rl.yaml"
    save_config(load_config(TrainConfig, None, ["train.steps=4"]), config)
    run = tmp_path / "run"
    return Job("GRPO seed 0", "train", config, [f"train.output_dir={run}", *args], run, tmp_path / "grpo.log")


def _checkpoint(job: Job, step: int, *overrides: str) -> Path:
    """A checkpoint directory as `save_checkpoint` leaves it, as far as --reuse reads one: its config and
    checksums (here of no file)."""
    path = job.run_dir / "checkpoints" / f"step-{step:06d}"
    path.mkdir(parents=True)
    cls = TrainConfig if job.command == "train" else SFTConfig
    save_config(load_config(cls, job.config, [*job.args, *overrides]), path / "config.yaml")
    (path / "checksums.json").write_text("{}")
    return path


def test_reuse_resumes_a_grpo_run_from_its_newest_intact_checkpoint_of_the_same_config(tmp_path, capsys):
    job = _job(tmp_path)
    assert reuse_or_resume([job]) == {} and job.resume_from is None  # nothing there: a fresh run
    assert "--overwrite" in job.cmd
    _checkpoint(job, 2)
    # another cadence, thread count or a resume does not change what the run computes
    newest = _checkpoint(job, 4, "train.save_every=1", "train.threads=3", "train.resume=true")
    assert reuse_or_resume([job]) == {} and job.resume_from == newest
    assert job.cmd[job.cmd.index("train"):][:4] == ["train", "-q", "--resume", str(job.run_dir)]
    assert "resuming GRPO seed 0 from step-000004" in capsys.readouterr().out
    # a damaged checkpoint: trained again from the start
    (newest / "checksums.json").write_text('{"model.safetensors": "0"}')
    job.resume_from = None
    assert reuse_or_resume([job]) == {} and job.resume_from is None
    assert "model.safetensors is missing); training it again" in capsys.readouterr().out
    # another configuration: refused, naming the setting
    with pytest.raises(UserError, match=r"was trained with grpo.beta=0.04, this reproduce asks for 0.1"):
        reuse_or_resume([_job(tmp_path, "grpo.beta=0.1")])
    # reproduce's cadence for an RL config without one: about ten checkpoints a run
    assert [checkpoint_every(s) for s in (5, 10, 12, 30, 50)] == [1, 1, 2, 3, 5]


def test_reuse_resumes_an_sft_job_and_keeps_one_finished_before_sft_had_checkpoints(tmp_path, capsys):
    """An SFT job (sft_best, sft_more) resumes as an RL job does (`grpo sft --resume`), its cadence and
    resume flag aside; a finished SFT run whose config.yaml has no sft.save_every, sft.keep_checkpoints or
    sft.resume (written before `grpo sft` had them) is kept, its scratch checkpoints removed."""
    config, run = tmp_path / "sft.yaml", tmp_path / "sft"
    save_config(load_config(SFTConfig, None, ["sft.max_steps=40"]), config)
    sft = Job("SFT seed 0", "sft", config, [f"sft.output_dir={run}", "sft.save_every=4"], run,
              tmp_path / "sft.log", scratch_checkpoints=True)
    assert reuse_or_resume([sft]) == {} and sft.resume_from is None and "--overwrite" in sft.cmd
    newest = _checkpoint(sft, 8, "sft.save_every=2", "sft.keep_checkpoints=3", "sft.threads=2",
                         "sft.resume=true")
    assert reuse_or_resume([sft]) == {} and sft.resume_from == newest
    assert sft.cmd[sft.cmd.index("sft"):][:4] == ["sft", "-q", "--resume", str(run)]
    assert "resuming SFT seed 0 from step-000008" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"was trained with sft.patience=4, this reproduce asks for 0"):
        reuse_or_resume([Job("SFT seed 0", "sft", config, [f"sft.output_dir={run}", "sft.patience=0"], run,
                             tmp_path / "sft.log")])

    # finished, by the code before SFT checkpoints: its config.yaml without the keys they brought
    saved = yaml.safe_load(yaml.safe_dump(to_dict(load_config(SFTConfig, config, sft.args))))
    for key in ("save_every", "keep_checkpoints", "resume"):
        del saved["sft"][key]
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    (run / "final").mkdir()
    (run / "final" / "config.json").write_text("{}")
    sft.record.write_text(json.dumps({"seconds": 12.5}))
    sft.resume_from = None
    assert reuse_or_resume([sft]) == {"SFT seed 0": 12.5} and sft.resume_from is None
    assert not (run / "checkpoints").exists()  # reproduce's own, left by a stop before it removed them


def test_a_finished_run_without_cpu_seconds_is_trained_again_when_the_budget_counts_them(tmp_path, capsys):
    """Runs finished before GRPO logged `time/step_cpu` and SFT `train_cpu_seconds` cannot size a CPU-second
    sft_more budget: --reuse trains them again instead of passing a NaN budget on."""
    job = _job(tmp_path)
    d = job.run_dir
    d.mkdir(parents=True, exist_ok=True)
    save_config(load_config(TrainConfig, job.config, job.args), d / "config.yaml")
    (d / "final").mkdir()
    (d / "final" / "config.json").write_text("{}")
    job.record.write_text(json.dumps({"seconds": 30.0}))
    steps = [{"step": k, "reward/mean": 0.5, "time/step": 2.0} for k in (1, 2)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in steps))
    assert not _rl_cpu_timed(d)
    assert reuse_or_resume([job], _rl_cpu_timed) == {}
    assert "lacks the CPU seconds the budget is counted in; training it again" in capsys.readouterr().out
    assert reuse_or_resume([job]) == {"GRPO seed 0": 30.0}  # on the wall clock it is kept
    for x in steps:
        x["time/step_cpu"] = 1.5
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in steps))
    assert _rl_cpu_timed(d) and reuse_or_resume([job], _rl_cpu_timed) == {"GRPO seed 0": 30.0}

    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "metrics.jsonl").write_text(json.dumps({"step": 4, "best_step": 2, "train_seconds": 3.0}) + "\n")
    assert not _sft_cpu_timed(sft)
    (sft / "metrics.jsonl").write_text(json.dumps({"step": 4, "train_cpu_seconds": 2.5}) + "\n")
    assert _sft_cpu_timed(sft)


def test_reproduce_gives_every_job_a_checkpoint_cadence_unless_its_config_has_one(tmp_path):
    """About CHECKPOINTS_PER_JOB checkpoints a job: over the RL steps, over sft_best's max_steps, and over the
    steps sft_more's time budget should buy (its max_steps is 4x that, a bound only)."""
    cfg = load_config(DemoConfig, None, ["rl.train.steps=30", "sft.sft.max_steps=50"])
    assert job_configs(cfg, tmp_path, jobs=1) == (0, True, True)
    rl, sft = (yaml.safe_load((tmp_path / f"{n}.yaml").read_text()) for n in ("rl", "sft"))
    assert (rl["train"]["save_every"], rl["train"]["keep_checkpoints"]) == (3, 1)
    assert (sft["sft"]["save_every"], sft["sft"]["keep_checkpoints"]) == (5, 1)
    assert sft_best_job(cfg, tmp_path, 1, True).scratch_checkpoints
    # sft_best took 8 steps in 80 CPU seconds: a 200 CPU-second budget buys 20 steps, a checkpoint every 2
    first = SFTResult(tmp_path, tmp_path / "final", 0.5, 4, 8, 100.0, [], train_seconds=40.0,
                      train_cpu_seconds=80.0, rows_seen=512)
    more = dict(a.split("=", 1) for a in sft_more_job(cfg, tmp_path, 0, first, 200.0, "cpu", True).args)
    assert (more["sft.save_every"], more["sft.max_steps"], more["sft.max_seconds"]) == ("2", "80", "200.000")
    assert "sft.save_every" not in str(sft_more_job(cfg, tmp_path, 0, first, 200.0, "cpu", False).args)
    cfg = load_config(DemoConfig, None, ["rl.train.save_every=7", "sft.sft.save_every=9"])
    assert job_configs(cfg, tmp_path, jobs=2)[1:] == (False, False)
    sft = yaml.safe_load((tmp_path / "sft.yaml").read_text())["sft"]
    assert (sft["save_every"], sft["keep_checkpoints"], sft["threads"]) == (9, 2, max(1, os.cpu_count() // 2))


def test_a_saved_evaluation_is_kept_only_for_the_same_model_files_and_settings(tmp_path):
    model = tmp_path / "final"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "tokenizer.json").write_text("{}")
    options = {"n": 4, "ks": [1, 2, 4], "seed": 0}
    key = evaluation_key(model, options)
    result = EvalResult(greedy_accuracy=0.5, pass_at_k={1: 0.25, 4: 0.75}, maj_at_k={1: 0.25, 4: 0.5},
                        sample_accuracy=0.25, n=4, num_prompts=8, greedy_by_checker={"lenient": 0.625},
                        num_sampled_prompts=8)
    save_evaluation(tmp_path / "grpo.eval.json", key, result)
    assert cached_evaluation(tmp_path / "grpo.eval.json", key) == result  # k back as int
    assert cached_evaluation(tmp_path / "missing.eval.json", key) is None
    assert evaluation_key(model, {**options, "seed": 1}) != key
    assert evaluation_key(model, {"ks": [1, 2, 4], "seed": 0, "n": 4}) == key  # the order of keys aside
    (model / "model.safetensors").write_bytes(b"weightz")  # another model: its evaluation is not kept
    assert cached_evaluation(tmp_path / "grpo.eval.json", evaluation_key(model, options)) is None


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


FAKE_JOB = """
import os, signal, sys, time
from pathlib import Path
log, fail_after = Path(sys.argv[1]), sys.argv[2]
signals = []
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, lambda signum, _: signals.append(signal.Signals(signum).name))
log.with_suffix(".sid").write_text(f"{os.getsid(0)} {os.getpid()}")
if fail_after:  # fail once the other job runs
    while not Path(fail_after).exists():
        time.sleep(0.05)
    sys.exit(3)
while not signals:
    time.sleep(0.05)
time.sleep(0.5)  # a second signal would come by now
log.with_suffix(".signals").write_text(" ".join(signals))
sys.exit(130)
"""
"""A job's stand-in (arguments: its log file; the file to wait for before failing, or ''): records its session
and the signals it got, and exits as `grpo train` does when stopped (130)."""


def _fake_jobs(tmp_path: Path, monkeypatch, *names: str, fail: str = "", waits_for: str = "") -> list[Job]:
    """Jobs whose processes run FAKE_JOB (`fail`: the job that fails once `waits_for` has started)."""
    config = tmp_path / "rl.yaml"
    save_config(load_config(TrainConfig, None, []), config)
    popen = subprocess.Popen

    def start(cmd, **kw):
        log = Path(kw["stdout"].name)
        after = str(tmp_path / f"{waits_for}.sid") if log.stem == fail else ""
        return popen([sys.executable, "-c", FAKE_JOB, str(log), after], **kw)

    monkeypatch.setattr(reproduce_jobs.subprocess, "Popen", start)
    return [Job(n, "train", config, [f"train.output_dir={tmp_path / n}"], tmp_path / n, tmp_path / f"{n}.log")
            for n in names]


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals: main thread")
def test_a_signal_to_reproduce_stops_each_running_job_with_one_sigint_and_names_how_to_continue(
        tmp_path, monkeypatch):
    jobs = _fake_jobs(tmp_path, monkeypatch, "a", "b", "c")

    def ctrl_c():  # once both running jobs are up, as a terminal's Ctrl-C would reach reproduce
        while not all((tmp_path / f"{n}.sid").exists() for n in "ab"):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c, daemon=True).start()
    again = continue_command(["reproduce", "-q", "--seeds", "2", "rl.rewards.functions=[{fn: f}]"])
    assert again == "grpo reproduce --reuse -q --seeds 2 'rl.rewards.functions=[{fn: f}]'"
    with pytest.raises(JobsInterrupted) as e:
        run_jobs(jobs, 2, again)
    assert e.value.signum == signal.SIGINT
    message = str(e.value)
    assert message.startswith("interrupted (SIGINT); ") and message.endswith(f"; continue with: {again}")
    for n in "ab":
        sid, pid = (tmp_path / f"{n}.sid").read_text().split()
        assert sid == pid != str(os.getsid(0))  # its own session: a terminal's signals do not reach it
        assert (tmp_path / f"{n}.signals").read_text() == "SIGINT"  # one signal: it checkpoints, then exits
        assert json.loads((tmp_path / f"{n}.partial.json").read_text())["seconds"] >= 0.5  # tallied
    assert not (tmp_path / "c.log").exists() and not (tmp_path / "a.json").exists()  # none started, none done
    assert continue_command(["reproduce", "--reuse", "--seeds", "2"]) == "grpo reproduce --reuse --seeds 2"


def test_a_failed_job_stops_the_others_with_one_sigint_each(tmp_path, monkeypatch):
    jobs = _fake_jobs(tmp_path, monkeypatch, "a", "b", "c", fail="a", waits_for="b")
    with pytest.raises(UserError, match="a failed \\(exit 3\\); log: "):
        run_jobs(jobs, 2, "again")
    assert (tmp_path / "b.signals").read_text() == "SIGINT" and (tmp_path / "b.partial.json").is_file()
    assert not (tmp_path / "c.log").exists()


def test_reuse_trains_again_a_run_whose_starting_model_changed_and_keeps_one_recorded_before_the_key(
        tmp_path, monkeypatch, capsys):
    """A finished GRPO run's record holds the SHA-256 of its sft_best model's files; once that model has
    changed, --reuse trains the run again (its checkpoints deleted) and keeps a run that started elsewhere.
    A record without the key (from before it was kept) is kept as it was; an unfinished run is resumed only
    when its tally's key is its start's."""
    sft = tmp_path / "sft" / "final"
    sft.mkdir(parents=True)
    (sft / "model.safetensors").write_bytes(b"weights")
    config = tmp_path / "rl.yaml"
    save_config(load_config(TrainConfig, None, []), config)

    def job(name: str, *args: str) -> Job:
        run = tmp_path / name
        j = Job(name, "train", config, [f"train.output_dir={run}", *args], run, tmp_path / f"{name}.log")
        run.mkdir()
        save_config(load_config(TrainConfig, config, j.args), run / "config.yaml")
        (run / "final").mkdir()
        (run / "final" / "config.json").write_text("{}")
        return j

    grpo, base = job("grpo", f"model.path={sft}"), job("base")  # base: model.path=tiny, no directory
    assert grpo.start_model == sft and base.start_model is None and start_key(base) is None
    popen = subprocess.Popen
    monkeypatch.setattr(reproduce_jobs.subprocess, "Popen",
                        lambda cmd, **kw: popen([sys.executable, "-c", "pass"], **kw))
    seconds = run_jobs([grpo, base], 2, "again")  # a finished job records its start's key
    assert json.loads(grpo.record.read_text())["start"] == start_key(grpo) == evaluation_key(sft, {})
    assert reuse_or_resume([grpo, base]) == seconds
    capsys.readouterr()

    (sft / "model.safetensors").write_bytes(b"weightz")  # sft_best trained again, to other weights
    _checkpoint(grpo, 2)
    assert reuse_or_resume([grpo, base]) == {"base": seconds["base"]} and grpo.resume_from is None
    printed = capsys.readouterr().out
    assert f"grpo: the model it started from ({sft}) has changed since; training it again" in printed
    assert "reusing base" in printed and not (grpo.run_dir / "checkpoints").exists()
    grpo.record.write_text(json.dumps({"seconds": 30.0}))  # recorded before the key was kept
    assert reuse_or_resume([grpo]) == {"grpo": 30.0}

    # unfinished: resumed from its checkpoint only when it started from the model there now
    grpo.record.unlink()
    ckpt = _checkpoint(grpo, 2)
    grpo.tally.write_text(json.dumps({"seconds": 5.0, "start": "0" * 64}))  # another model's
    assert reuse_or_resume([grpo]) == {} and grpo.resume_from is None
    assert not ckpt.exists()
    ckpt = _checkpoint(grpo, 2)
    grpo.tally.write_text(json.dumps({"seconds": 5.0, "start": start_key(grpo)}))
    assert reuse_or_resume([grpo]) == {} and grpo.resume_from == ckpt
