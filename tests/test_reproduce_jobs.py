"""`grpo reproduce`'s jobs: --reuse keeps, resumes or retrains each run; evaluations are cached; a signal
or a failure stops the running jobs once, each with a checkpoint."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from grpo.commands import reproduce_jobs
from grpo.commands.reproduce_jobs import (Job, JobsInterrupted, cached_evaluation, checkpoint_every,
                                          continue_command, evaluation_key, reuse_or_resume, run_jobs,
                                          save_evaluation, start_key)
from grpo.errors import UserError
from grpo.config import DemoConfig, SFTConfig, TrainConfig, load_config, save_config, to_dict
from grpo.commands import reproduce
from grpo.commands.reproduce import (_rl_cpu_timed, _sft_cpu_timed, evaluate_models, job_configs, ood_tests,
                                     sft_best_job, sft_more_job)
from grpo.train.evaluation import EvalResult
from grpo.train.sft import SFTResult


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


def test_a_later_stages_run_with_another_setting_is_refused_before_the_first_stage_trains(tmp_path,
                                                                                          monkeypatch):
    """--reuse checks every stage's runs before anything trains, but the settings an earlier stage decides:
    a stale sft_more (another sft.clock) stops the grid at once, not after sft_best and GRPO have trained."""
    def no_training(jobs, *_):
        raise AssertionError(f"trained {[job.name for job in jobs]}")

    monkeypatch.setattr(reproduce, "run_jobs", no_training)
    out = tmp_path / "grid"
    args = dict(config=None, overrides=[f"output_dir={out}", "sft.data.num_validation=20"],
                methods=["grpo", "sft_more"], n=2, ks=[1, 2], progress=False, seeds=2, reuse=True)
    with pytest.raises(AssertionError, match="trained \\['SFT seed 0', 'SFT seed 1'\\]"):
        reproduce.run_reproduce(**args)  # nothing there yet: stage 1 would train
    cfg = load_config(DemoConfig, out / "config.yaml")
    first = SFTResult(out, out / "seed1" / "sft" / "final", 0.5, 8, 8, 60.0, [], 50.0, 80.0, rows_seen=128)
    more = sft_more_job(cfg, out, 1, first, 900.0, "cpu", True)  # as stage 3 made it, after 900 CPU s of GRPO
    more.run_dir.mkdir(parents=True)
    stale = load_config(SFTConfig, more.config, [*more.args, "sft.clock=wall"])
    save_config(stale, more.run_dir / "config.yaml")
    (more.run_dir / "final").mkdir()
    (more.run_dir / "final" / "config.json").write_text("{}")
    more.record.write_text('{"seconds": 1.0}')
    with pytest.raises(UserError, match="seed1/sft_more was trained with sft.clock='wall', this reproduce "
                                        "asks for 'cpu'"):
        reproduce.run_reproduce(**args)
    # the settings stage 3 derives from sft_best and GRPO's budget differ from the placeholders': not refused
    save_config(load_config(SFTConfig, more.config, more.args), more.run_dir / "config.yaml")
    with pytest.raises(AssertionError, match="trained"):
        reproduce.run_reproduce(**args)
    grpo = reproduce._rl_jobs(cfg, out, [0], ["grpo"], {0: first}, True)[(0, "grpo")]
    _checkpoint(grpo, 3, "grpo.G=3")  # an unfinished GRPO run of another G: refused before stage 1 too
    with pytest.raises(UserError, match="seed0/grpo was trained with grpo.G=3"):
        reproduce.run_reproduce(**args)


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


def test_ood_evaluations_are_kept_by_the_files_content_and_adding_ood_keeps_the_test_splits(tmp_path, capsys,
                                                                                          monkeypatch):
    """A finished grid run again with --reuse --ood: only the --ood file is evaluated (greedy, all of its
    problems); the test split's evaluations keep their keys and are not run again. An --ood evaluation is kept
    while its file's content is the same, whatever the sampling settings of the test split."""
    models = {}
    for name in ("sft", "grpo"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(name.encode())
        models[(0, name)] = tmp_path / name
    ood = tmp_path / "ood_numbers.jsonl"
    ood.write_text("".join(json.dumps({"prompt": f"{a} and {a}?", "answer": str(2 * a)}) + "\n"
                           for a in (40, 50, 60, 70)))
    calls = []

    def evaluate_job(path, data, n, sample_prompts, **kw):
        calls.append((Path(path).name, Path(data["source"]).name, data["num_heldout"], sample_prompts))
        return EvalResult(greedy_accuracy=0.5, pass_at_k={}, maj_at_k={}, sample_accuracy=float("nan"), n=0,
                          num_prompts=data["num_heldout"])

    monkeypatch.setattr(reproduce, "_evaluate_job", evaluate_job)
    rl = load_config(TrainConfig, None, ["data.num_heldout=8"])

    def evaluate(files: list[str], n: int = 4) -> dict:
        calls.clear()
        return evaluate_models(models, rl, tmp_path / "rl.yaml", tmp_path, n, [1, n], None,
                               ood_tests(files, rl.data), 1, 0, reuse=True)[1]

    evaluate([])  # the finished grid, without --ood
    assert calls == [("sft", "builtin:arithmetic", 8, None), ("grpo", "builtin:arithmetic", 8, None)]
    kept = lambda: {p: (p.stat().st_mtime_ns, p.read_text())  # noqa: E731
                    for p in (tmp_path / "seed0" / "sft.eval.json", tmp_path / "seed0" / "grpo.eval.json")}
    test_split = kept()
    results = evaluate([str(ood)])
    assert calls == [("sft", "ood_numbers.jsonl", 4, 0), ("grpo", "ood_numbers.jsonl", 4, 0)]  # greedy only
    assert "reusing the evaluations of sft seed 0, grpo seed 0\n" in capsys.readouterr().out
    assert kept() == test_split
    saved = tmp_path / "seed0" / "grpo.ood-ood_numbers.eval.json"
    key = json.loads(saved.read_text())["key"]
    saved_result = cached_evaluation(saved, key)
    assert (saved_result.greedy_accuracy, saved_result.num_prompts) == (0.5, 4) == \
        (results["ood_numbers"][(0, "grpo")].greedy_accuracy, results["ood_numbers"][(0, "grpo")].num_prompts)
    evaluate([str(ood)])  # nothing left to evaluate
    assert calls == [] and ("reusing the evaluations of sft seed 0, grpo seed 0, sft seed 0 on ood_numbers, "
                            "grpo seed 0 on ood_numbers") in capsys.readouterr().out
    evaluate([str(ood)], n=2)  # other sampling for the test split: the greedy --ood evaluations are kept
    assert calls == [("sft", "builtin:arithmetic", 8, None), ("grpo", "builtin:arithmetic", 8, None)]
    ood.write_text(ood.read_text().replace('"140"', '"141"'))  # the same file name, another answer
    evaluate([str(ood)], n=2)
    assert calls == [("sft", "ood_numbers.jsonl", 4, 0), ("grpo", "ood_numbers.jsonl", 4, 0)]
    assert json.loads(saved.read_text())["key"] != key
    with pytest.raises(UserError, match="two files named 'ood_numbers'"):
        ood_tests([str(ood), str(tmp_path / "seed0" / ".." / "ood_numbers.jsonl")], rl.data)
    with pytest.raises(UserError, match="--ood missing.jsonl: no such file"):
        ood_tests(["missing.jsonl"], rl.data)


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


KILLED_PARENT = """
import subprocess, sys
from pathlib import Path
from grpo.commands import reproduce_jobs
tmp, fake = Path(sys.argv[1]), sys.argv[2]
popen = subprocess.Popen
log = tmp / "a.log"
reproduce_jobs.subprocess.Popen = lambda cmd, **kw: popen([sys.executable, "-c", fake, str(log), ""], **kw)
job = reproduce_jobs.Job("a", "train", tmp / "rl.yaml", [f"train.output_dir={tmp / 'a'}"], tmp / "a", log)
reproduce_jobs.run_jobs([job], 1, "again")
"""
"""A `grpo reproduce` stand-in: run_jobs on one FAKE_JOB (arguments: the directory, FAKE_JOB's text)."""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_job_of_a_killed_reproduce_gets_one_sigint_and_does_not_train_on_alone(tmp_path):
    save_config(load_config(TrainConfig, None, []), tmp_path / "rl.yaml")
    parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT, str(tmp_path), FAKE_JOB])
    job_pid = None
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "a.sid").exists():
            assert parent.poll() is None and time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        job_pid = int((tmp_path / "a.sid").read_text().split()[1])
        parent.kill()  # SIGKILL: reproduce stops nothing itself
        parent.wait()
        deadline = time.monotonic() + 10
        while not (tmp_path / "a.signals").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "a.signals").read_text() == "SIGINT"  # one: it checkpoints and exits (130)
    finally:
        parent.kill()
        if job_pid is not None:  # without the fix it would wait for a signal for ever
            try:
                os.kill(job_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


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
