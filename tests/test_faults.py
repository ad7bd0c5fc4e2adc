"""Injected faults: NaN/inf updates, hanging reward functions, a full disk, an unwritable output dir.

Each fault is injected into a short real run on the tiny model; the run must either carry on with
the fault counted, or stop with one clear line and a last good checkpoint that resumes.
"""

import errno
import json
import multiprocessing
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from grpo.commands.cli import main
from grpo.config import TrainConfig, load_config
from grpo.errors import UserError
from grpo.train import checkpoint
from grpo.train.checkpoint import TrainerState, load_checkpoint, save_checkpoint
from grpo.train.optim import make_optimizer
from grpo.train.grpo import train

SMALL = ["train.prompts_per_step=2", "grpo.G=4", "train.micro_batch_size=8", "sampling.max_new_tokens=8",
         "data.num_train=8", "data.num_heldout=2", "train.eval_every=0", "train.sample_every=0",
         "train.threads=1", "model.tiny_hidden_size=32", "model.tiny_num_layers=1", "optim.lr=0.01",
         "optim.warmup_steps=0"]
DIGITS = """
def digit_share(prompts, completions, completion_ids, **columns):
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]
"""


def args(tmp_path, *extra, reward=DIGITS, second=None, out=None) -> list[str]:
    """CLI arguments of a small run whose rewards come from `reward` (digit_share, then `second`)."""
    path = tmp_path / "my_rewards.py"
    path.write_text(reward)
    functions = [f"{{fn: '{path}:digit_share'}}"] + ([f"{{fn: '{path}:{second}'}}"] if second else [])
    return [*SMALL, f"rewards.functions=[{', '.join(functions)}]",
            f"train.output_dir={out or tmp_path / 'run'}",
            *extra]


def steps(out) -> list[dict]:
    return [x for x in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "reward/mean" in x]


def weights(ckpt) -> dict:
    return load_file(ckpt / "model.safetensors")


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def one_error_line(capsys) -> str:
    lines = [x for x in capsys.readouterr().err.splitlines() if x and not x.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("grpo: error: "), lines
    return lines[0]


class InfGrad(torch.autograd.Function):
    """Identity forward (the loss stays finite), infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def inject(monkeypatch, at_calls, fault):
    """Make grpo's policy_loss give a faulty loss on the given calls (one call per step here)."""
    import grpo.train.update as loop

    real, calls = loop.policy_loss, []

    def faulty(*a, **k):
        loss, m = real(*a, **k)
        calls.append(1)
        return (fault(loss) if len(calls) in at_calls else loss), m

    monkeypatch.setattr(loop, "policy_loss", faulty)


@pytest.mark.slow
def test_a_nan_loss_skips_that_update_counts_it_and_logs_it(tmp_path, monkeypatch, caplog):
    inject(monkeypatch, {2}, lambda loss: loss * float("nan"))
    cfg = load_config(TrainConfig, None,
                      args(tmp_path, "train.steps=3", "train.save_every=1", "train.keep_checkpoints=5"))
    train(cfg, progress=False)
    out = tmp_path / "run"
    logged = steps(out)
    assert [x["faults/skipped_updates"] for x in logged] == [0, 1, 1]
    assert logged[1]["loss"] != logged[1]["loss"] and logged[0]["grad_norm"] > 0  # NaN at step 2 only
    w = [weights(out / "checkpoints" / f"step-00000{i}") for i in (1, 2, 3)]
    assert same(w[0], w[1]) and not same(w[1], w[2])  # step 2 left the weights alone; step 3 updated them
    assert "step 2: the loss or the gradient norm is not finite; update skipped (1 in a row" in caplog.text


@pytest.mark.slow
def test_infinite_gradients_in_a_row_stop_with_the_last_good_state_which_resumes(
    tmp_path, monkeypatch, capsys
):
    inject(monkeypatch, {2, 3, 4, 5, 6}, InfGrad.apply)
    assert main(["train", "-q",
                 *args(tmp_path, "train.steps=6", "train.save_every=1", "train.max_bad_steps=2",
                                      "train.keep_checkpoints=5")]) == 2
    out = tmp_path / "run"
    err = one_error_line(capsys)
    assert err == ("grpo: error: stopped at step 3: 2 updates in a row had a non-finite loss or gradient "
                   f"norm (train.max_bad_steps=2); they were skipped, so {out}/checkpoints/step-000003 holds "
                   "the last good weights and optimizer state. Lower optim.lr or check model.dtype and the "
                   f"rewards, then resume with --resume {out}")
    assert [x["loss"] == x["loss"] for x in steps(out)] == [True, True, True]  # the loss itself stayed finite
    assert same(weights(out / "checkpoints" / "step-000001"), weights(out / "checkpoints" / "step-000003"))

    monkeypatch.undo()  # the cause is fixed; the run continues from the last good state
    assert main(["train", "-q", "--resume", str(out)]) == 0
    assert [x["step"] for x in steps(out)] == [1, 2, 3, 4, 5, 6]
    assert [x["faults/skipped_updates"] for x in steps(out)] == [0, 1, 2, 2, 2, 2]


HANG = DIGITS + """
import time

def hang(prompts, completions, completion_ids, **columns):
    time.sleep(3600)
"""
HANG_IN_C = DIGITS + """
import signal, time

def hang(prompts, completions, completion_ids, **columns):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # the worker's own alarm cannot stop it
    time.sleep(3600)
"""


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "pool"])
def test_a_hanging_reward_is_cut_off_scored_zero_and_counted(tmp_path, workers):
    cfg = load_config(TrainConfig, None, args(tmp_path, "train.steps=1", "rewards.timeout_s=0.3",
                                              "rewards.on_error=zero", f"rewards.workers={workers}",
                                              reward=HANG, second="hang"))
    res = train(cfg, progress=False)
    logged = steps(tmp_path / "run")
    assert [x["reward/timeouts"] for x in logged] == [8]  # every (function, sample) pair of the hung one
    assert all(x["reward/hang"] == 0.0 and 0 < x["reward/digit_share"] < 1 for x in logged)
    assert res.steps == 1 and multiprocessing.active_children() == []


@pytest.mark.slow
def test_a_reward_hung_where_its_own_timer_cannot_reach_is_abandoned_and_its_worker_ended(
    tmp_path, monkeypatch
):
    """Inside the pool worker, SIGALRM is blocked: the parent stops waiting (timeout_s + a grace period,
    5 s, here 0.5 s), scores the samples 0, and kills the stuck worker when the run closes its pool."""
    monkeypatch.setattr("grpo.rewards.combine._POOL_GRACE_S", 0.5)
    cfg = load_config(TrainConfig, None, args(tmp_path, "train.steps=1", "rewards.timeout_s=0.3",
                                              "rewards.on_error=zero", "rewards.workers=1", "grpo.G=2",
                                              "train.micro_batch_size=4", reward=HANG_IN_C, second="hang"))
    train(cfg, progress=False)
    assert steps(tmp_path / "run")[0]["reward/timeouts"] == 4
    assert multiprocessing.active_children() == []


def test_a_hanging_reward_with_on_error_raise_stops_naming_it(tmp_path, capsys):
    assert main(["train", "-q", *args(tmp_path, "train.steps=1", "rewards.timeout_s=0.3", reward=HANG,
                                      second="hang")]) == 2
    err = capsys.readouterr().err
    assert "grpo: error: reward function 'hang' timed out after 0.3 s" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------
# The disk


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs (needs root and CAP_SYS_ADMIN; skipped where the machine does not allow it)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


FILL_AT_STEP_2 = DIGITS + """
import os

calls = []

def fill_disk(prompts, completions, completion_ids, **columns):
    calls.append(1)
    if DISK and len(calls) == 2:  # step 2: leave 64 KiB, enough for a metrics line, not for a checkpoint
        st = os.statvfs(DISK)
        with open(os.path.join(DISK, "filler"), "wb") as f:
            f.write(bytes(st.f_bavail * st.f_frsize - 64 * 1024))
    return [0.0] * len(completions)
"""


@pytest.mark.slow
def test_a_disk_that_fills_up_stops_the_run_at_the_save_and_the_last_checkpoint_resumes(tmp_path, small_disk,
                                                                                          capsys):
    out = small_disk / "run"
    reward = FILL_AT_STEP_2.replace("DISK", repr(str(small_disk)))
    assert main(["train", "-q", *args(tmp_path, "train.steps=3", "train.save_every=1", reward=reward,
                                      second="fill_disk", out=out)]) == 2
    err = one_error_line(capsys)
    assert err.startswith(f"grpo: error: cannot write checkpoint {out}/checkpoints/step-000002: ")
    assert "No space left on device" in err
    assert err.endswith("MiB free on its disk); the last complete checkpoint, "
                        f"{out}/checkpoints/step-000001, is untouched")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001"]  # no half-written .tmp

    (small_disk / "filler").unlink()
    assert main(["train", "-q", "--resume", str(out)]) == 0
    assert [x["step"] for x in steps(out)] == [1, 2, 3]
    # ... exactly: the same run on a disk that never filled up (the same rewards, no filler written)
    straight = tmp_path / "straight"
    assert main(["train", "-q", *args(tmp_path, "train.steps=3", "train.save_every=1",
                                      reward=FILL_AT_STEP_2.replace("DISK", "None"), second="fill_disk",
                                      out=straight)]) == 0
    assert same(weights(out / "final"), weights(straight / "final"))
    machine = ("time/", "memory/", "tokens_per_s")
    assert [{k: v for k, v in x.items() if not k.startswith(machine)} for x in steps(out)] == \
        [{k: v for k, v in x.items() if not k.startswith(machine)} for x in steps(straight)]


def test_a_failed_checkpoint_write_removes_its_partial_files_and_keeps_the_previous(tmp_path, monkeypatch):
    """Works without a mountable disk: the second save's weights file is cut short by ENOSPC."""
    cfg = TrainConfig()
    model = torch.nn.Linear(4, 4)
    optimizer, scheduler = make_optimizer(model, cfg.optim, 10)
    gen = torch.Generator().manual_seed(0)
    save_checkpoint(tmp_path, cfg, TrainerState(step=1), model, optimizer, scheduler, gen, keep=2)
    real = checkpoint.save_model

    def full_disk(model, filename, *a, **k):
        real(model, filename, *a, **k)
        os.truncate(filename, 10)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(checkpoint, "save_model", full_disk)  # the name the checkpoint writer calls
    saved = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(UserError,
                       match=r"cannot write checkpoint .*step-000002: No space left on device \(.* MiB "
                                        r"free on its disk\); the last complete checkpoint, .*step-000001, "
                                        r"is untouched"):
        save_checkpoint(tmp_path, cfg, TrainerState(step=2), model, optimizer, scheduler, gen, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000001"]
    fresh = torch.nn.Linear(4, 4)
    opt2, sched2 = make_optimizer(fresh, cfg.optim, 10)
    state = load_checkpoint(tmp_path / "checkpoints" / "step-000001", cfg, fresh, opt2, sched2, gen, 0.0)
    assert state.step == 1 and torch.equal(fresh.weight, saved)


def _two_checkpoints(tmp_path):
    cfg = TrainConfig()
    model = torch.nn.Linear(4, 4)
    optimizer, scheduler = make_optimizer(model, cfg.optim, 10)
    gen = torch.Generator().manual_seed(0)
    for step in (1, 2):
        save_checkpoint(tmp_path, cfg, TrainerState(step=step), model, optimizer, scheduler, gen, keep=2)
    return lambda: load_checkpoint(tmp_path / "checkpoints" / "step-000002", cfg, model, optimizer, scheduler,
                                   gen, 0.0)


def _flip_a_byte(f):
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, problem", [
    (_flip_a_byte, "optimizer.pt does not match its checksum (truncated or altered)"),
    (lambda f: os.truncate(f, f.stat().st_size - 1),
     "optimizer.pt does not match its checksum (truncated or altered)"),
    (lambda f: f.unlink(), "optimizer.pt is missing"),
], ids=["flipped-byte", "truncated", "missing"])
def test_a_damaged_checkpoint_is_caught_before_anything_is_loaded_and_the_intact_one_named(tmp_path, damage,
                                                                                           problem):
    load = _two_checkpoints(tmp_path)
    ckpt = tmp_path / "checkpoints" / "step-000002"
    assert set(json.loads((ckpt / "checksums.json").read_text())) == {
        "model.safetensors", "optimizer.pt", "rng.pt", "trainer_state.json", "config.yaml"}
    assert load().step == 2  # intact: loads
    damage(ckpt / "optimizer.pt")
    with pytest.raises(UserError) as e:
        load()
    assert str(e.value) == (f"checkpoint {ckpt} is damaged: {problem}; nothing was loaded. "
                            f"{tmp_path / 'checkpoints' / 'step-000001'} is intact: move {ckpt} (and any "
                            f"newer checkpoint) out of {tmp_path / 'checkpoints'}, then resume with grpo "
                            f"train --resume {tmp_path}")
    _flip_a_byte(tmp_path / "checkpoints" / "step-000001" / "model.safetensors")
    with pytest.raises(UserError, match="is damaged: .*; nothing was loaded. no older checkpoint is intact$"):
        load()


@pytest.mark.slow
def test_a_resume_from_a_damaged_checkpoint_stops_with_one_line_and_the_older_one_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "-q",
                 *args(tmp_path, "train.steps=2", "train.save_every=1", "train.keep_checkpoints=2",
                                      out=out)]) == 0
    _flip_a_byte(out / "checkpoints" / "step-000002" / "model.safetensors")
    assert main(["train", "-q", "--resume", str(out), "train.steps=3"]) == 2
    err = one_error_line(capsys)
    assert f"checkpoint {out}/checkpoints/step-000002 is damaged: model.safetensors does not match" in err
    assert f"{out}/checkpoints/step-000001 is intact" in err
    (out / "checkpoints" / "step-000002").rename(tmp_path / "set-aside")
    assert main(["train", "-q", "--resume", str(out), "train.steps=3"]) == 0
    assert [x["step"] for x in steps(out)] == [1, 2, 3]


@pytest.mark.parametrize("where", ["under-a-file", "read-only"])
def test_an_unwritable_output_dir_is_refused_before_anything_is_loaded(tmp_path, capsys, where):
    if where == "under-a-file":
        (tmp_path / "file").write_text("x")
        out, reason = tmp_path / "file" / "run", "exists and is not a directory"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                              capture_output=True)
        if done.returncode:
            if os.geteuid() == 0:
                pytest.skip("cannot mount a read-only tmpfs, and root ignores directory permissions")
            ro.chmod(0o500)
        out, reason = ro / "run", "is not writable"
    try:
        assert main(["train", "-q", *args(tmp_path, "train.steps=1", out=out)]) == 2
        err = one_error_line(capsys)
        assert err.startswith(f"grpo: error: train.output_dir {out}") and reason in err, err
        assert not out.exists()
    finally:
        if where == "read-only":
            subprocess.run(["umount", "-l", str(tmp_path / "ro")], capture_output=True)


def test_too_little_free_space_is_refused_at_start(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    import grpo.train.run_files as rf

    monkeypatch.setattr(rf.shutil, "disk_usage", lambda path: SimpleNamespace(free=2**19))
    assert main(["train", "-q", *args(tmp_path, "train.steps=1", "train.save_every=1")]) == 2
    err = one_error_line(capsys)
    assert err.startswith(f"grpo: error: train.output_dir {tmp_path / 'run'}: 0.5 MiB free on its disk, but "
                          "the final model and one checkpoint need about ")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("save_every,need", [(1, "the final model and one checkpoint need"),
                                             (0, "the final model need")])
def test_too_little_free_space_is_refused_before_sft_trains(tmp_path, monkeypatch, capsys, save_every, need):
    from types import SimpleNamespace

    import grpo.train.run_files as rf
    import grpo.train.sft as sft_module

    def train_step(*args, **kwargs):
        raise AssertionError("trained on a disk without room")

    monkeypatch.setattr(rf.shutil, "disk_usage", lambda path: SimpleNamespace(free=2**10))  # 1 KiB
    monkeypatch.setattr(sft_module, "_train_step", train_step)
    out = tmp_path / "new" / "sft"
    assert main(["sft", "-q", "sft.max_steps=1", "sft.batch_size=2", "data.num_train=4", "data.num_heldout=2",
                 "sft.threads=1", "model.tiny_hidden_size=32", "model.tiny_num_layers=1",
                 f"sft.save_every={save_every}", f"sft.output_dir={out}"]) == 2
    err = one_error_line(capsys)
    assert err.startswith(f"grpo: error: sft.output_dir {out}: 0.0 MiB free on its disk, but {need} "
                          "about "), err
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_a_file_size_limit_stops_the_run_with_one_line_not_a_signal(tmp_path):
    """`ulimit -f` (RLIMIT_FSIZE) below a checkpoint's size: by default the kernel kills the writer with
    SIGXFSZ; grpo ignores that signal, so the write fails with EFBIG and the run stops with one line."""
    import resource
    import sys

    limit = 768 * 1024  # above the tiny model's weights (494 KB), below its optimizer state (997 KB)

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "grpo", "train", "-q",
                           *args(tmp_path, "train.steps=2", "train.save_every=1", out=out)],
                          preexec_fn=limited, capture_output=True, text=True)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    err = [x for x in done.stderr.splitlines() if x.startswith("grpo: error:")]
    assert len(err) == 1 and "Traceback" not in done.stderr  # torch's writer words EFBIG its own way
    assert err[0].startswith(f"grpo: error: cannot write checkpoint {out}/checkpoints/step-000001: ")
    assert err[0].endswith("no earlier checkpoint exists")
    assert not list((out / "checkpoints").glob("*.tmp"))  # nothing half-written left
