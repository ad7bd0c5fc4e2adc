"""Output directories are never damaged by accident: a directory holding a run is refused unless
--overwrite (or --resume); a run that fails before its first step is done leaves nothing behind; the
lock is taken before the model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import grpo.train.run
import grpo.train.sft
from grpo.commands.cli import main
from grpo.errors import UserError
from grpo.train.run_lock import LOCK_FILE, OutputDirLock

REWARDS = """
def short(prompts, completions, completion_ids, **columns):
    return [1.0 / (1 + len(ids)) for ids in completion_ids]

def one_short(prompts, completions, completion_ids, **columns):
    return [0.5] * (len(completions) - 1)

def nan(prompts, completions, completion_ids, **columns):
    return [float("nan")] * len(completions)
"""
SFT_ONE_STEP = ["sft.max_steps=1", "sft.batch_size=2", "data.num_train=4", "data.num_heldout=2",
                "sampling.max_new_tokens=4", "sft.threads=1", "model.tiny_hidden_size=32",
                "model.tiny_num_layers=1"]
ONE_STEP = ["train.steps=1", "train.prompts_per_step=2", "grpo.G=2", "sampling.max_new_tokens=4",
            "data.num_train=4", "data.num_heldout=2", "train.threads=1", "model.tiny_hidden_size=32",
            "model.tiny_num_layers=1"]


@pytest.fixture
def rewards(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARDS)
    return path


def run(capsys, argv) -> tuple[int, str]:
    code = main(argv)
    err = [x for x in capsys.readouterr().err.splitlines() if not x.startswith("note:")]
    return code, "\n".join(err)


def snapshot(out) -> dict:
    return {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def test_a_finished_run_is_refused_and_replaced_only_with_overwrite(tmp_path, rewards, capsys):
    out = tmp_path / "run"
    argv = ["train", "-q", *ONE_STEP, f"rewards.functions=[{{fn: '{rewards}:short'}}]",
            f"train.output_dir={out}"]
    assert run(capsys, argv)[0] == 0
    first = snapshot(out)
    assert {"config.yaml", "metrics.jsonl", "samples.jsonl"} <= {p.name for p in first}
    assert (out / "final" / "model.safetensors").is_file()

    code, err = run(capsys, [*argv, "train.seed=1"])
    assert code == 2
    assert err == (f"grpo: error: train.output_dir {out} already holds a finished run (config.yaml, "
                   "metrics.jsonl, final); replace it with --overwrite (Python: overwrite=True), or choose "
                   "another train.output_dir")
    assert snapshot(out) == first  # not a byte changed

    code, err = run(capsys, ["train", "--resume", str(out), "--overwrite"])
    assert code == 2 and "not both" in err

    assert run(capsys, [*argv, "train.seed=1", "--overwrite"])[0] == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # the new run's step and its final evaluation: nothing appended
    assert [x["step"] for x in lines] == [1, 1]
    assert "seed: 1" in (out / "config.yaml").read_text()
    samples = (out / "samples.jsonl").read_text().splitlines()
    # 2 groups, seed 1's
    assert len(samples) == 2 and samples != first[out / "samples.jsonl"].decode().splitlines()


@pytest.mark.parametrize("fn,message", [("one_short", "returned 3 values for 4 completions"),
                                        ("nan", "returned nan at index 0")])
def test_a_failing_reward_leaves_no_output_directory(tmp_path, rewards, capsys, fn, message):
    """The first batch is scored before anything is written: nothing is left, not even the lock file or
    the parents the run created; a directory that existed stays as it was."""
    for out in (tmp_path / "new" / "run", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        argv = ["train", "-q", *ONE_STEP, f"rewards.functions=[{{fn: '{rewards}:{fn}'}}]",
                f"train.output_dir={out}"]
        code, err = run(capsys, argv)
        assert code == 2 and err.startswith("grpo: error: ") and len(err.splitlines()) == 1, err
        assert message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "my_rewards.py"]
    assert list((tmp_path / "empty").iterdir()) == []


def test_the_lock_is_taken_before_the_model_loads(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    seen = []

    def load_policy(*args, **kwargs):
        with pytest.raises(UserError, match="is in use by another grpo train or grpo sft") as refused:
            OutputDirLock(out, enabled=True).__enter__()  # a second run, started now, stops at once
        seen.append(str(refused.value))
        raise UserError("stop here")

    monkeypatch.setattr(grpo.train.run, "load_policy", load_policy)
    assert run(capsys, ["train", "-q", f"train.output_dir={out}"]) == (2, "grpo: error: stop here")
    assert seen == [f"{out} is in use by another grpo train or grpo sft (pid {os.getpid()}); wait for it or "
                    "choose another train.output_dir"]
    assert not out.exists()


def test_sft_takes_the_lock_before_the_model_loads(tmp_path, monkeypatch, capsys):
    """The lock `grpo train` takes: a second `grpo sft`, or a `grpo train`, into the directory stops at once;
    an SFT run that fails before writing leaves nothing."""
    out = tmp_path / "new" / "sft"
    seen = []

    def load_policy(*args, **kwargs):
        for section in ("sft", "train"):
            with pytest.raises(UserError) as refused:
                OutputDirLock(out, enabled=True, section=section).__enter__()
            seen.append(str(refused.value))
        raise UserError("stop here")

    monkeypatch.setattr(grpo.train.sft, "load_policy", load_policy)
    assert run(capsys, ["sft", "-q", f"sft.output_dir={out}"]) == (2, "grpo: error: stop here")
    assert seen == [f"{out} is in use by another grpo train or grpo sft (pid {os.getpid()}); wait for it or "
                    f"choose another {section}.output_dir" for section in ("sft", "train")]
    assert not (tmp_path / "new").exists()


def test_sft_into_a_held_directory_is_refused_and_a_dead_runs_lock_is_taken(tmp_path, monkeypatch, capsys):
    """A directory a live process holds (here a lock of this process, as a `grpo train` would hold it):
    refused with one line naming the holder, nothing written. The lock file of a run that died (unlocked,
    naming a pid that is gone): taken, and the run trains."""
    out = tmp_path / "run"
    argv = ["sft", "-q", *SFT_ONE_STEP, f"sft.output_dir={out}"]
    with OutputDirLock(out, enabled=True) as held:
        held.commit()
        assert run(capsys, argv) == (2, f"grpo: error: {out} is in use by another grpo train or grpo sft "
                                        f"(pid {os.getpid()}); wait for it or choose another sft.output_dir")
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (out / LOCK_FILE).write_text(f"{dead}\n")
    assert run(capsys, argv)[0] == 0
    assert (out / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    assert (out / "final" / "model.safetensors").is_file()


def test_sft_and_demo_refuse_a_directory_holding_a_run(tmp_path, monkeypatch, capsys):
    def load_policy(*args, **kwargs):
        raise AssertionError("refused after loading the model")

    monkeypatch.setattr(grpo.train.sft, "load_policy", load_policy)
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "config.yaml").write_text("sft: {}\n")
    code, err = run(capsys, ["sft", "-q", f"sft.output_dir={tmp_path / 'sft'}"])
    assert code == 2 and err == (f"grpo: error: sft.output_dir {tmp_path / 'sft'} already holds a run "
                                 "(config.yaml); replace it with --overwrite (Python: overwrite=True), or "
                                 "choose another sft.output_dir")
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "summary.json").write_text("{}")
    code, err = run(capsys, ["demo", "-q", f"output_dir={tmp_path / 'demo'}"])
    assert code == 2 and err == (f"grpo: error: output_dir {tmp_path / 'demo'} already holds a demo "
                                 "(summary.json); replace it with --overwrite, or choose another output_dir")
    with pytest.raises(AssertionError, match="after loading the model"):  # --overwrite goes on to the SFT run
        main(["demo", "-q", "--overwrite", f"output_dir={tmp_path / 'demo'}"])
