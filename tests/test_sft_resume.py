"""`grpo sft` checkpoints and resume: a run stopped after a checkpoint and resumed equals the run left alone,
bit for bit (final weights, every metric but the timings, the best step chosen on validation), and a run
with a CPU-seconds budget counts the seconds spent before the stop.

The run is small but exercises what a resume must restore: a best model chosen before the checkpoint (so
the final weights are that copy's, not the last step's), a data pass that ends and is reshuffled after the
stop (24 rows, 8 per step), a warm-up and a cosine decay, Adam's moments, and metrics.jsonl logged past the
checkpoint (cut back by the resume).
"""

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import grpo.train.sft as sft_module
from grpo.commands.cli import main
from grpo.config import SFTConfig, load_config
from grpo.train.checkpoint import TrainingInterrupted
from grpo.train.checkpoint_files import latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# letter_share: a graded validation score that moves as the random tiny model trains, so the best step is
# a real choice (evaluations at steps 2, 4, 6, 8)
SMALL = ["sft.max_steps=8", "sft.eval_every=2", "sft.batch_size=8", "sft.patience=0", "data.num_train=24",
         "data.num_heldout=0", "data.num_validation=4", "sampling.max_new_tokens=8",
         "model.tiny_hidden_size=32", "model.tiny_num_layers=1", "optim.lr=0.003", "optim.schedule=cosine",
         "optim.warmup_steps=3", "sft.threads=1", "sft.save_every=3",
         f"sft.eval_reward={ROOT / 'tests' / 'fixtures' / 'varied_reward.py'}:letter_share"]
LORA = ["model.lora={r: 4, alpha: 8}", "optim.lr=0.03"]  # adapters learn slower: best at step 4 too
TIMINGS = ("train_seconds", "train_cpu_seconds", "seconds")


class Crash(Exception):
    """Stands in for a kill: the process's state is gone, its files are as the kill left them."""


def crash() -> None:
    raise Crash


def run(out: Path, *extra: str):
    return sft_module.sft(load_config(SFTConfig, None, [*SMALL, f"sft.output_dir={out}", *extra]),
                          progress=False)


def stop_in_step(monkeypatch, n: int, stop) -> None:
    """Call `stop()` as the n-th training step starts."""
    real, calls = sft_module._train_step, []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            stop()
        return real(*args, **kwargs)

    monkeypatch.setattr(sft_module, "_train_step", step)


def metrics_with_timings(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def metrics(out: Path) -> list[dict]:
    return [{k: v for k, v in x.items() if k not in TIMINGS} for x in metrics_with_timings(out)]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def assert_same_run(a: Path, b: Path) -> None:
    assert metrics(a) == metrics(b)
    wa, wb = weights(a / "final"), weights(b / "final")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """straight(variant): the run left alone, full fine-tuning or LoRA: (output dir, SFTResult), run once."""
    runs = {}

    def get(variant: str):
        if variant not in runs:
            out = tmp_path_factory.mktemp(f"straight-{variant}")
            runs[variant] = out, run(out, *(LORA if variant == "lora" else []))
        return runs[variant]

    return get


@pytest.mark.parametrize("variant", ["full", pytest.param("lora", marks=pytest.mark.slow)])
def test_killed_after_a_checkpoint_and_resumed_equals_the_run_left_alone(tmp_path, straight, variant,
                                                                         monkeypatch):
    """Killed as step 8 starts: checkpoints of steps 3 and 6 are complete, metrics.jsonl holds 7 steps.
    The resume continues from step 6 and ends as the run left alone, the best model (chosen at an
    evaluation before step 6, kept in the checkpoint's extra.pt) included."""
    extra = LORA if variant == "lora" else []
    alone, first = straight(variant)
    assert first.best_step < 6 and first.steps == 8  # the best model was chosen before the checkpoint ...
    ckpt = alone / "checkpoints" / "step-000006"
    trained = "trainable.safetensors" if variant == "lora" else "model.safetensors"
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(["checksums.json", "config.yaml", "extra.pt",
                                                             "optimizer.pt", "rng.pt", trained,
                                                             "trainer_state.json"])
    if variant == "full":  # ... so the final weights are its copy, not those of a later step
        final, last = weights(alone / "final"), weights(ckpt)
        assert any(not torch.equal(final[k], last[k]) for k in final)

    out = tmp_path / "run"
    stop_in_step(monkeypatch, 8, crash)
    with pytest.raises(Crash):
        run(out, *extra)
    monkeypatch.undo()
    assert latest_checkpoint(out).name == "step-000006" and not (out / "final").exists()
    assert len(metrics(out)) == 7  # step 7 was logged after the checkpoint: the resume cuts it
    state = json.loads((out / "checkpoints" / "step-000006" / "trainer_state.json").read_text())
    assert (state["step"], state["best_step"]) == (6, first.best_step)

    resumed = run(out, *extra, "sft.resume=true")
    assert_same_run(alone, out)
    assert (resumed.best_step, resumed.best_accuracy, resumed.steps, resumed.rows_seen) == \
        (first.best_step, first.best_accuracy, 8, 64)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003", "step-000006"]


def test_sigterm_checkpoints_and_the_cli_resumes_or_refuses_with_one_line(tmp_path, straight, monkeypatch,
                                                                          capsys):
    """SIGTERM during step 5 of a run that writes no checkpoints of its own: the step finishes, a checkpoint
    of it is written and the run stops saying how to resume. A fresh run there, a resume with another
    config and a resume from a damaged checkpoint each stop with one line; `grpo sft --resume` ends as the
    run left alone (its cadence, save_every=3, changes nothing trained)."""
    out = tmp_path / "run"
    stop_in_step(monkeypatch, 5, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(TrainingInterrupted) as stopped:
        run(out, "sft.save_every=0")
    monkeypatch.undo()
    assert str(stopped.value) == (f"interrupted at step 5 (SIGTERM); checkpoint saved to {out}/checkpoints/"
                                  f"step-000005; resume with: grpo sft --resume {out}")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert latest_checkpoint(out).name == "step-000005" and len(metrics(out)) == 5

    capsys.readouterr()

    def error(argv) -> str:
        assert main(argv) == 2
        lines = [x for x in capsys.readouterr().err.splitlines() if x and not x.startswith("note:")]
        assert len(lines) == 1 and lines[0].startswith("grpo: error: "), lines
        return lines[0]

    assert (f"already holds checkpoints (newest: step-000005); continue that run with --resume {out}"
            in error(["sft", "-q", *SMALL, f"sft.output_dir={out}"]))
    changed = error(["sft", "-q", "--resume", str(out), "sft.patience=2"])
    assert ("the config differs from the run's in sft.patience (0 -> 2); resume with the run's own config "
            "(grpo sft --resume DIR reads it)" in changed)
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    best = damaged / "checkpoints" / "step-000005" / "extra.pt"
    best.write_bytes(best.read_bytes()[:-1])
    assert error(["sft", "-q", "--resume", str(damaged)]) == (
        f"grpo: error: checkpoint {damaged}/checkpoints/step-000005 is damaged: extra.pt does not match its "
        "checksum (truncated or altered); nothing was loaded. no older checkpoint is intact")
    assert main(["sft", "-q", "--resume", str(out)]) == 0, capsys.readouterr().err
    assert_same_run(straight("full")[0], out)
    assert latest_checkpoint(out).name == "step-000005"  # save_every=0: none of its own


BUDGETED = ["sft.max_steps=1000", "sft.eval_every=1000", "sft.clock=cpu", "sft.max_seconds=0.5",
            "optim.warmup_steps=0", "sft.save_every=4"]


def test_a_cpu_budget_counts_the_seconds_before_the_stop(tmp_path, monkeypatch):
    """sft.max_seconds=0.5 CPU seconds, killed as step 6 starts (checkpoint at step 4, step 5 logged): the
    resumed sitting's steps take less than the budget, and the run still ends at the budget because the
    CPU seconds of steps 1-4 are counted; the decay that follows the spent budget goes on from there."""
    out = tmp_path / "run"
    stop_in_step(monkeypatch, 6, crash)
    with pytest.raises(Crash):
        run(out, *BUDGETED)
    monkeypatch.undo()
    before = metrics_with_timings(out)[3]  # step 4, the checkpoint's
    assert before["step"] == 4 and 0 < before["train_cpu_seconds"] < 0.5

    real, own = sft_module._train_step, []  # the resumed sitting's steps, timed here

    def timed(*args, **kwargs):
        c0 = time.process_time()
        try:
            return real(*args, **kwargs)
        finally:
            own.append(time.process_time() - c0)

    monkeypatch.setattr(sft_module, "_train_step", timed)
    res = run(out, *BUDGETED, "sft.resume=true")
    lines = metrics_with_timings(out)
    steps = [x for x in lines if "loss" in x]
    assert [x["step"] for x in steps] == list(range(1, res.steps + 1)) and res.steps == 4 + len(own)
    # the total is both sittings' (steps 1-4 from the checkpoint, 5.. timed here), within timer overheads
    assert res.train_cpu_seconds == pytest.approx(before["train_cpu_seconds"] + sum(own), abs=0.02)
    assert sum(own) < 0.5 <= res.train_cpu_seconds == lines[-1]["train_cpu_seconds"]
    assert steps[-2]["train_cpu_seconds"] < 0.5  # it stopped at the step that reached the budget
    lrs = [x["lr"] for x in steps]
    # the decay follows the spent budget across the resume (restarting its count would send step 5's rate
    # back up near optim.lr), and ends at the budget
    assert all(b < a for a, b in zip(lrs, lrs[1:])) and lrs[-1] == 0.0

