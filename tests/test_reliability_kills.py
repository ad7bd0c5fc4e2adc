"""scripts/kill_resume.py, shrunk to the tiny model: SIGKILL in generation, in the update, in the middle of
a checkpoint write and at a random moment, each followed by `grpo train --resume` (and the same for `grpo
sft --resume`); the final weights and every logged metric equal the uninterrupted run's, bit for bit."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.prompts_per_step=2", "grpo.G=4", "train.micro_batch_size=8", "sampling.max_new_tokens=8",
        "data.num_train=16", "data.num_heldout=2", "train.eval_every=0", "train.threads=1",
        "model.tiny_hidden_size=32",
        "model.tiny_num_layers=1", "optim.lr=0.01", "optim.warmup_steps=0", "train.steps=8",
        "train.save_every=1",
        "rewards.functions=[{fn: 'tests/fixtures/varied_reward.py:letter_share'}]"]


@pytest.mark.slow
def test_sigkill_in_every_phase_then_resume_equals_the_run_left_alone(tmp_path):
    done = subprocess.run([sys.executable, "scripts/kill_resume.py", "--out", str(tmp_path), "--random-min",
                           "6",
                           "--random-max", "9", "--", *TINY], cwd=ROOT, capture_output=True, text=True)
    report = json.loads((tmp_path / "report.json").read_text())
    assert done.returncode == 0, (done.stdout, (tmp_path / "log.txt").read_text()[-2000:])
    assert report["final_identical"] and report["metrics_identical"] and report["metrics_lines"] == 9
    kills = report["kills"]
    assert [k["kill"].split(" ")[0] for k in kills] == ["generate:2", "update:2", "checkpoint:2", "random"]
    assert all(k["exit"] == -9 for k in kills[:3])  # SIGKILL, where the kill spec said
    # each phase kill came after one more step and its checkpoint; the checkpoint kill left a partial write
    assert [(k["checkpoint_before"], k["checkpoint_after"]) for k in kills[:3]] == [(0, 1), (1, 2), (2, 3)]
    assert kills[2]["partial_left"] == ["step-000004.tmp"] and report["resumes"] == 4


@pytest.mark.slow
def test_memory_does_not_grow_over_a_run_with_fixed_shapes(tmp_path):
    """bench/leak_check.py, shrunk: 60 tiny-model steps with gradients every step; each step's peak resident
    memory after the first 10% of steps stays within 5% of its value there (docs/reliability.md has 300)."""
    subprocess.run([sys.executable, "bench/leak_check.py", "--out", str(tmp_path / "run"), "--",
                    *[a for a in TINY if not a.startswith(("train.steps", "train.save_every"))],
                    "train.steps=60",
                    "sampling.max_new_tokens=16"], cwd=ROOT, check=True, capture_output=True)
    result = json.loads((tmp_path / "run" / "leak.json").read_text())
    assert result["steps"] == 60 and result["warmup_steps"] == 6 and result["growth"] < 0.05


SFT = ["sft.max_steps=60", "sft.eval_every=10", "sft.batch_size=8", "sft.patience=0", "data.num_train=24",
       "data.num_heldout=0", "data.num_validation=4", "sampling.max_new_tokens=8",
       "model.tiny_hidden_size=32", "model.tiny_num_layers=1", "optim.lr=0.003", "optim.schedule=cosine",
       "optim.warmup_steps=3", "sft.threads=1", "sft.save_every=2",
       "sft.eval_reward=tests/fixtures/varied_reward.py:letter_share"]


@pytest.mark.slow
def test_sft_sigkilled_in_a_step_in_a_checkpoint_write_and_at_random_resumes_to_the_run_left_alone(tmp_path):
    """The same for `grpo sft --resume`: SIGKILL as its 5th step starts, while its 2nd checkpoint is written
    and at a random moment; the final (best) weights and every metric but the timings are the uninterrupted
    run's, bit for bit."""
    done = subprocess.run([sys.executable, "scripts/kill_resume.py", "--out", str(tmp_path), "--command",
                           "sft", "--kills", "step:5,checkpoint:2,random", "--random-min", "5",
                           "--random-max", "8", "--", *SFT], cwd=ROOT, capture_output=True, text=True)
    report = json.loads((tmp_path / "report.json").read_text())
    assert done.returncode == 0, (done.stdout, (tmp_path / "log.txt").read_text()[-2000:])
    assert report["final_identical"] and report["metrics_identical"] and report["metrics_lines"] == 61
    kills = report["kills"]
    assert [k["exit"] for k in kills[:2]] == [-9, -9]
    assert [(k["checkpoint_before"], k["checkpoint_after"]) for k in kills[:2]] == [(0, 4), (4, 6)]
    assert kills[1]["partial_left"] == ["step-000008.tmp"]
