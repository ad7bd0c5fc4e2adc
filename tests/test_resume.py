"""Checkpoints and resume: a stopped and resumed run equals an uninterrupted one, bit for bit (CPU).

"Equal" means: the final weights, the step-4 checkpoint's optimizer state, every metric except wall
times and memory, and samples.jsonl. The run below is small but exercises what a resume must restore:
sampled tokens (the sampling generator), a data pass that ends and is reshuffled after the stop (6
prompts, 2 per step), a warm-up schedule still rising at the stop, Adam's moments, the KL reference
(the initial weights, not the resumed policy) and a held-out evaluation after the stop.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from grpo.commands.cli import main
from grpo.config import TrainConfig, load_config
from grpo.errors import UserError
from grpo.train.checkpoint import TrainingInterrupted
from grpo.train.checkpoint_files import latest_checkpoint
from grpo.train.run_lock import LOCK_FILE, OutputDirLock
from grpo.train.grpo import train

# digit_share (the `reward_file` fixture, conftest.py) comes first, so held-out "accuracy" is a
# non-trivial number for the random tiny model; it varies within groups, so advantages and gradients
# are non-zero from the first step.
SMALL = ["train.steps=4", "train.prompts_per_step=2", "grpo.G=4", "train.micro_batch_size=4",
         "sampling.max_new_tokens=8", "data.num_train=6", "data.num_heldout=4", "train.eval_every=3",
         "train.sample_every=1", "train.save_every=1", "train.keep_checkpoints=2", "train.threads=1",
         "model.tiny_hidden_size=32", "model.tiny_num_layers=1", "optim.lr=0.01", "optim.warmup_steps=3",
         "grpo.beta=0.04"]
VOLATILE = ("time/", "tokens_per_s", "memory/")


def overrides(reward_file, out, *extra) -> list[str]:
    return [*SMALL, f"rewards.functions=[{{fn: '{reward_file}:digit_share'}}, {{fn: arithmetic_format}}]",
            f"train.output_dir={out}", *extra]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, reward_file):
    """The reference: 4 steps without a stop."""
    out = tmp_path_factory.mktemp("straight")
    train(load_config(TrainConfig, None, overrides(reward_file, out)), progress=False)
    return out


def metrics(out) -> list[str]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [json.dumps({k: v for k, v in x.items() if not k.startswith(VOLATILE)},
                       sort_keys=True) for x in lines]


def assert_same_run(a, b) -> None:
    assert metrics(a) == metrics(b)
    assert (a / "samples.jsonl").read_bytes() == (b / "samples.jsonl").read_bytes()
    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    oa = torch.load(a / "checkpoints" / "step-000004" / "optimizer.pt", weights_only=True)
    ob = torch.load(b / "checkpoints" / "step-000004" / "optimizer.pt", weights_only=True)
    for pa, pb in zip(oa["optimizer"]["state"].values(), ob["optimizer"]["state"].values()):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    assert oa["scheduler"] == ob["scheduler"]


@pytest.mark.slow
def test_straight_run_keeps_the_last_two_checkpoints_and_moves_the_weights(straight):
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == ["step-000003", "step-000004"]
    files = sorted(p.name for p in (straight / "checkpoints" / "step-000004").iterdir())
    assert files == ["checksums.json", "config.yaml", "model.safetensors", "optimizer.pt", "rng.pt",
                     "trainer_state.json"]
    state = json.loads((straight / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["skipped_updates"] == 0
    before, after = (
        load_file(straight / "tiny-init" / "model.safetensors"),
        load_file(straight / "final" / "model.safetensors"),
    )
    assert sum(not torch.equal(before[k], after[k]) for k in before) >= len(before) // 2
    steps = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    # warm-up 2/4, 3/4, 1, 1
    assert [x["lr"] for x in steps[:4]] == pytest.approx([0.005, 0.0075, 0.01, 0.01])
    assert "eval/accuracy" in steps[2] and steps[-1]["eval/accuracy_before"] > 0


@pytest.mark.slow
def test_sigterm_mid_step_then_resume_equals_the_straight_run(tmp_path, straight, reward_file, monkeypatch):
    """SIGTERM arrives during step 2 (as a scheduler's preemption notice would): the step finishes,
    a checkpoint of step 2 is written, TrainingInterrupted says where; resuming gives the straight run."""
    import grpo.train.advantages as estimators

    calls, real = [], estimators.compute_advantages

    def advantages_then_sigterm(rewards, cfg):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(rewards, cfg)

    monkeypatch.setattr(estimators, "compute_advantages", advantages_then_sigterm)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stopped:
        train(load_config(TrainConfig, None, overrides(reward_file, out)), progress=False)
    assert (stopped.value.step, stopped.value.signum) == (2, signal.SIGTERM)
    assert str(stopped.value) == ("interrupted at step 2 (SIGTERM); checkpoint saved to "
                                  f"{out}/checkpoints/step-000002; resume with: grpo train --resume {out}")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
    assert latest_checkpoint(out).name == "step-000002" and not (out / "final").exists()
    monkeypatch.undo()

    train(load_config(TrainConfig, None, overrides(reward_file, out, "train.resume=true")), progress=False)
    assert_same_run(straight, out)


def test_sigterm_during_the_first_heldout_evaluation_stops_before_step_1(tmp_path, reward_file, monkeypatch):
    """A signal during the evaluation before step 1 stops there, not after a step nobody asked for:
    nothing trained, no checkpoint; `grpo train` exits 143 with a line that says so, and the same
    output directory starts a fresh run."""
    import grpo.train.grpo as loop

    real, steps = loop.sharded_accuracy, []

    def evaluate_then_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "sharded_accuracy", evaluate_then_sigterm)
    monkeypatch.setattr(loop, "train_step", lambda *a, **k: steps.append(1))
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stopped:
        train(load_config(TrainConfig, None, overrides(reward_file, out)), progress=False)
    assert (stopped.value.step, stopped.value.signum, stopped.value.checkpoint) == (0, signal.SIGTERM, None)
    assert "before step 1 (SIGTERM)" in str(stopped.value) and "no checkpoint" in str(stopped.value)
    assert steps == [] and latest_checkpoint(out) is None and not (out / "final").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    # the CLI's exit status
    assert main(["train", "-q", *overrides(reward_file, out)]) == 128 + signal.SIGTERM
    assert steps == [] and latest_checkpoint(out) is None


@pytest.mark.slow
def test_a_lora_checkpoint_holds_the_trained_weights_only_and_resumes_exactly(tmp_path, reward_file):
    """With LoRA a checkpoint holds the adapters (trainable.safetensors), not
    the frozen base again (540 MB per
    checkpoint on SmolLM2); the resume takes the base from model.path and continues bit for bit."""
    lora = ["model.lora={r: 4, alpha: 8}", "train.steps=2", "train.eval_every=0"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(load_config(TrainConfig, None, overrides(reward_file, straight, *lora)), progress=False)
    ckpt = straight / "checkpoints" / "step-000001"
    assert sorted(p.name for p in ckpt.iterdir()) == ["checksums.json", "config.yaml", "optimizer.pt",
                                                      "rng.pt",
                                                      "trainable.safetensors", "trainer_state.json"]
    saved = load_file(ckpt / "trainable.safetensors")
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)
    shutil.copytree(straight, resumed, ignore=lambda d, names: {"step-000002", "final"} & set(names))
    train(load_config(TrainConfig, None, overrides(reward_file, resumed, *lora, "train.resume=true")),
          progress=False)
    assert metrics(resumed) == metrics(straight)
    a, b = (
        load_file(straight / "final" / "model.safetensors"),
        load_file(resumed / "final" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the adapters moved at step 2 (B starts at zero), so a resume that kept step 1's would differ
    after = load_file(straight / "checkpoints" / "step-000002" / "trainable.safetensors")
    assert any(not torch.equal(saved[k], after[k]) for k in saved)


@pytest.mark.slow
def test_cli_two_steps_then_resume_two_more_equals_four_steps(tmp_path, straight, reward_file, capsys):
    """The issue's recipe: N/2 steps, stop, `grpo train --resume DIR train.steps=N`: the same N-step run."""
    out = tmp_path / "run"
    assert main(["train", "-q", *overrides(reward_file, out, "train.steps=2")]) == 0
    assert main(["train", "-q", "--resume", str(out), "train.steps=4"]) == 0, capsys.readouterr().err
    assert_same_run(straight, out)


SIGKILL_DURING_SAVE = """
import os, sys, time
import torch
from grpo.commands.cli import main

marker, real_save, calls = sys.argv[1], torch.save, []

def save_then_hang(obj, f, *args, **kwargs):  # the 3rd torch.save is optimizer.pt of the 2nd checkpoint
    real_save(obj, f, *args, **kwargs)
    calls.append(f)
    if len(calls) == 3:
        os.truncate(f, os.path.getsize(f) // 2)  # half written, as when the kill lands inside the write
        open(marker, "w").close()
        time.sleep(600)

torch.save = save_then_hang
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_to_resume_from(
    tmp_path, straight, reward_file
):
    out, marker = tmp_path / "run", tmp_path / "writing"
    proc = subprocess.Popen([sys.executable, "-c", SIGKILL_DURING_SAVE, str(marker), "train", "-q",
                             *overrides(reward_file, out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), (
        proc.communicate(timeout=10)[1].decode()[-2000:] if proc.poll() is not None else "no save"
    )
    proc.kill()
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001", "step-000002.tmp"]
    assert latest_checkpoint(out).name == "step-000001"

    assert main(["train", "-q", "--resume", str(out)]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003", "step-000004"]
    assert_same_run(straight, out)  # even the run killed mid-save ends bit-identical to the straight one


def _until_first_step(proc: subprocess.Popen, out, terminal: int | None = None) -> None:
    """Wait (at most 180 s) until the run in `out` has logged a step or `proc` has exited, reading what
    it writes to the pseudo-terminal whose other end is `terminal`, if any."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 1:
            return
        if terminal is not None:
            try:
                os.read(terminal, 1 << 16)
            except OSError:
                pass
        time.sleep(0.05)


def _no_process_left(group: int) -> None:
    """Every process of the process group `group` is gone within 5 s."""
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.killpg(group, 0)
            time.sleep(0.1)


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_with_a_reward_pool_checkpoints_and_exits_130(
    tmp_path, reward_file, capsys
):
    """A terminal's Ctrl-C reaches the trainer and its reward workers; the workers ignore it, the
    trainer finishes the step, saves, prints how to resume and exits 130. Then the run resumes."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "grpo", "train", "-q",
                             *overrides(reward_file, out, "train.steps=500", "train.save_every=0",
                                        "rewards.workers=1")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _until_first_step(proc, out)
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    found = re.fullmatch(r"grpo: interrupted at step (\d+) \(SIGINT\); checkpoint saved to (\S+); "
                         r"resume with: grpo train --resume (\S+)", last)
    assert found, last
    step = int(found[1])
    assert found[2] == str(out / "checkpoints" / f"step-{step:06d}") and found[3] == str(out)
    assert sum("reward/mean" in x for x in (out / "metrics.jsonl").read_text().splitlines()) == step
    _no_process_left(proc.pid)  # no reward worker outlived the trainer

    assert main(["train", "-q", "--resume", str(out), f"train.steps={step + 1}", "rewards.workers=0"]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "reward/mean" in x] == list(range(1, step + 2))


@pytest.mark.slow
def test_a_closed_terminal_stops_the_run_with_a_checkpoint_unless_nohup_ignores_it(tmp_path, reward_file):
    """Closing the terminal: SIGHUP reaches the trainer and its reward workers, and every write to the
    terminal fails (EIO) from then on. The trainer stops writing to it, finishes the step, checkpoints and
    exits 129; the workers ignore the signal. Under `nohup` (SIGHUP ignored) the run goes on."""
    import pty

    def start(out, nohup: bool):
        master, slave = pty.openpty()
        # the disposition a terminal's shell gives (whatever this test runner's is: CI may run under nohup)
        hup = lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN if nohup else signal.SIG_DFL)  # noqa: E731
        proc = subprocess.Popen([sys.executable, "-m", "grpo", "train",
                                 *overrides(reward_file, out, "train.steps=500", "train.save_every=0",
                                            "rewards.workers=1")],
                                stdout=slave, stderr=slave, start_new_session=True, preexec_fn=hup)
        os.close(slave)
        _until_first_step(proc, out, master)  # draining the terminal's buffer, as a terminal would
        os.killpg(proc.pid, signal.SIGHUP)  # as the kernel does to the terminal's processes
        os.close(master)  # the terminal is gone: writes to it fail from here on
        return proc

    out = tmp_path / "run"
    proc = start(out, nohup=False)
    assert proc.wait(timeout=120) == 129
    ckpt = latest_checkpoint(out)
    step = int(ckpt.name.split("-")[1])
    assert sum("reward/mean" in x for x in (out / "metrics.jsonl").read_text().splitlines()) == step
    _no_process_left(proc.pid)  # no reward worker outlived the trainer
    assert main(["train", "-q", "--resume", str(out), f"train.steps={step + 1}", "rewards.workers=0"]) == 0

    ignored = start(tmp_path / "nohup", nohup=True)
    time.sleep(3)
    assert ignored.poll() is None  # it trains on
    os.killpg(ignored.pid, signal.SIGKILL)
    ignored.wait()


@pytest.fixture
def finished_copy(tmp_path, straight):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    return out


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    errors = [x for x in capsys.readouterr().err.splitlines() if not x.startswith("note:")]
    assert len(errors) == 1 and errors[0].startswith("grpo: error: "), errors
    return errors[0]


@pytest.mark.slow
def test_resume_refuses_a_changed_config_and_changes_nothing(finished_copy, capsys):
    """Nothing but the lock file, which the refused run held (its pid written) while it checked."""
    before = {p: p.stat().st_mtime_ns for p in finished_copy.rglob("*") if p.name != LOCK_FILE}
    err = _cli_error(capsys,
                     ["train", "-q", "--resume", str(finished_copy), "grpo.beta=0.1", "train.steps=6"])
    assert "the config differs from the run's in grpo.beta (0.04 -> 0.1)" in err
    assert {p: p.stat().st_mtime_ns for p in finished_copy.rglob("*") if p.name != LOCK_FILE} == before


@pytest.mark.slow
def test_a_fresh_run_into_a_directory_with_checkpoints_is_refused(finished_copy, reward_file, capsys):
    err = _cli_error(capsys, ["train", "-q", *overrides(reward_file, finished_copy)])
    assert (
        f"already holds checkpoints (newest: step-000004); continue that run with --resume {finished_copy}"
        in err
    )


def test_resume_without_a_checkpoint_or_a_run_directory(tmp_path, reward_file, capsys):
    err = _cli_error(capsys,
                     ["train", "-q", *overrides(reward_file, tmp_path / "empty", "train.resume=true")])
    assert "nothing to resume" in err and not (tmp_path / "empty").exists()
    err = _cli_error(capsys, ["train", "-q", "--resume", str(tmp_path / "nowhere")])
    assert "no config.yaml there" in err


# ---------------------------------------------------------------------------------------------------
# One run per output directory


def in_use(out, holder: str, section: str = "train") -> str:
    return (f"{out} is in use by another grpo train or grpo sft ({holder}); wait for it or choose another "
            f"{section}.output_dir")


def test_one_lock_per_output_directory_released_when_the_run_ends_or_fails(tmp_path, monkeypatch):
    out = tmp_path / "new" / "run"
    with OutputDirLock(out, enabled=True):  # entering creates the directory and locks it
        assert (out / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(UserError) as refused:  # another open file: flock refuses it, even in this process
            OutputDirLock(out, enabled=True).__enter__()
        assert str(refused.value) == in_use(out, f"pid {os.getpid()}")
        monkeypatch.setenv("RANK", "1")  # torchrun's other ranks write under rank 0's lock
        with OutputDirLock(out) as other_rank:
            assert not other_rank.enabled
        monkeypatch.delenv("RANK")
    # never committed (a run that failed before its first write): nothing is left, not even the parent
    assert not (tmp_path / "new").exists()
    with pytest.raises(RuntimeError), OutputDirLock(out, enabled=True) as second:
        second.commit()  # the run wrote: its directory and lock file stay when it fails
        raise RuntimeError("the run failed")
    assert (out / LOCK_FILE).is_file()
    with OutputDirLock(out, enabled=True):  # released by the failure; an existing file is not removed
        assert (out / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    assert (out / LOCK_FILE).is_file()
    (out / "keep.txt").write_text("mine")
    with OutputDirLock(tmp_path / "new" / "run2", enabled=True):
        pass
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["run"]


HOLD_LOCK = """
import fcntl, os, sys, time
from grpo.train.run_lock import LOCK_FILE, OutputDirLock
if sys.argv[2] == "hold":  # a run that has taken the lock
    lock = OutputDirLock(sys.argv[1], enabled=True).__enter__()
    lock.commit()
else:  # a run between its flock and writing its pid
    f = open(os.path.join(sys.argv[1], LOCK_FILE), "r+")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
time.sleep(600)
"""


def locking_process(out, move: str) -> subprocess.Popen:
    """A process holding `out`: "hold" as a run that has taken the lock, "flock" as one still starting."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out), move], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if proc.stdout.readline() != "locked\n":
        raise AssertionError(proc.communicate(timeout=30)[1][-2000:])
    return proc


def sigkill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


@pytest.mark.slow
def test_a_live_holder_refuses_and_a_sigkilled_one_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    holder = locking_process(out, "hold")
    try:
        with pytest.raises(UserError) as refused:
            OutputDirLock(out, enabled=True).__enter__()
        assert str(refused.value) == in_use(out, f"pid {holder.pid}")
    finally:
        sigkill(holder)
    # The file still names the killed holder; a run that locked it and has not written its pid yet:
    starting = locking_process(out, "flock")
    try:
        with pytest.raises(UserError) as refused:
            OutputDirLock(out, enabled=True).__enter__()
        assert str(refused.value) == in_use(out, "still starting: its pid is not written yet")
    finally:
        sigkill(starting)
    with OutputDirLock(out, enabled=True):  # both killed: the OS dropped their flocks
        assert (out / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def _refused_while_held_then_runs(capsys, out, argv: list[str], *section: str) -> None:
    """`argv` into `out` while a live process holds its lock: one error line, no file changed; once the
    holder is SIGKILLed (its lock file left behind, unlocked) it runs and takes the lock."""
    holder = locking_process(out, "hold")
    try:
        before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
        assert _cli_error(capsys, argv) == "grpo: error: " + in_use(out, f"pid {holder.pid}", *section)
        assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()} == before
    finally:
        sigkill(holder)
    assert main(argv) == 0
    assert (out / LOCK_FILE).read_text() == f"{os.getpid()}\n"


@pytest.mark.slow
def test_train_into_a_live_runs_directory_stops_and_after_a_sigkill_proceeds(tmp_path, reward_file, capsys):
    out = tmp_path / "run"
    fresh = ["train", "-q", *overrides(reward_file, out, "train.steps=1")]
    resume = ["train", "-q", "--resume", str(out), "train.steps=2"]
    for argv in (fresh, resume):
        _refused_while_held_then_runs(capsys, out, argv)
    assert latest_checkpoint(out).name == "step-000002" and (out / "final" / "model.safetensors").exists()


@pytest.mark.slow
def test_sft_into_a_live_runs_directory_stops_and_after_a_sigkill_proceeds(tmp_path, capsys):
    """`grpo sft` takes `grpo train`'s lock: fresh and `--resume`, refused while a live process holds the
    directory, and run once that process is SIGKILLed (its lock file left behind, unlocked)."""
    out = tmp_path / "run"
    fresh = ["sft", "-q", "sft.max_steps=2", "sft.save_every=1", "sft.batch_size=2", "data.num_train=4",
             "data.num_heldout=2", "sampling.max_new_tokens=4", "sft.threads=1", "model.tiny_hidden_size=32",
             "model.tiny_num_layers=1", f"sft.output_dir={out}"]
    resume = ["sft", "-q", "--resume", str(out)]
    for argv in (fresh, resume):
        _refused_while_held_then_runs(capsys, out, argv, "sft")
    # the fresh run's checkpoint (none at the last step) resumed from, and the final model written again
    assert latest_checkpoint(out).name == "step-000001" and (out / "final" / "model.safetensors").exists()
