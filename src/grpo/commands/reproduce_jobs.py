"""`grpo reproduce`'s jobs: its training runs as processes, `--jobs` at a time, and what `--reuse` keeps of
earlier work in the output directory.

With `--reuse`, for each job, under the configuration this invocation would train (the same settings but
`IGNORED`):

    finished run (final model + the job's record)   kept; its recorded wall seconds are reported (trained
                                                    again when its starting model changed: `start_key`)
    unfinished run with a checkpoint                continued with `grpo train --resume` (`grpo sft
                                                    --resume`) from its newest checkpoint (resume is exact:
                                                    the run ends as if never stopped, metrics.jsonl
                                                    included; an SFT run's time budget counts the seconds
                                                    before the stop)
    anything else                                   trained again from the start (`--overwrite`)
    evaluation of an unchanged model                kept (`cached_evaluation`): keyed by the model's files
                                                    and every evaluation setting

A run or checkpoint with another configuration stops reproduce with the setting that differs, before the
first stage trains (`check_before_training`; the settings an earlier stage decides are checked when it has).
Jobs write a checkpoint every `checkpoint_every(steps)` steps when their config (rl.train.save_every,
sft.sft.save_every) writes none (`sft_more`: over the steps its time budget should buy), only the newest
kept and removed once the job finishes: a checkpoint reads no random numbers and changes nothing trained
(nor an SFT run's clock: its seconds are the training steps').
A job's wall seconds are the sum of its sittings since its last fresh start (`Job.tally`, written every
`TALLY_EVERY_S` while it runs, so a killed reproduce loses at most that much of a sitting).

A run is kept or resumed only while the model it started from is the same: its record and tally hold the
SHA-256 of that model's files (`start_key`), and a run whose starting model changed since (a retrained
sft_best) is trained again, its checkpoints discarded. Records written before the key existed are kept.

Stopping: `grpo train` and `grpo sft` take a first SIGINT or SIGTERM as "finish the step, write a checkpoint,
exit" and a second as "stop at once, without one" (`StopSignals`). So each job runs in its own session
(`start_new_session`): a terminal's Ctrl-C reaches reproduce alone, and reproduce signals every job exactly
once, with SIGINT (before its loop a job takes it as a KeyboardInterrupt and exits cleanly, where SIGTERM's
default would kill it). It does so when it gets SIGINT, SIGTERM or SIGHUP (`stop_signals`) itself and when
a job fails, then waits for the jobs (`STOP_WAIT_S`) and names the command that continues (`--reuse`).
A reproduce that is killed outright (SIGKILL, the OOM killer) cannot do that; on Linux each job asks the
kernel for a SIGINT when its parent dies (`stop_with_parent`), so it still stops with a checkpoint rather
than training on alone, holding its output directory's lock against the `--reuse` that continues it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from grpo.config import SFTConfig, TrainConfig, load_config, to_dict
from grpo.errors import UserError
from grpo.train.checkpoint import StopSignals
from grpo.train.checkpoint_files import CHECKPOINTS, checkpoint_problem, latest_checkpoint, sha256_file
from grpo.train.evaluation import EvalResult

MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "LRU_CACHE_CAPACITY": "1",
              "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}
"""Freed tensors go back to the OS at once, so a process's peak RSS follows its live memory
(docs/memory.md), and oneDNN keeps no per-shape buffers (as in the planner's validation)."""
IGNORED = ("threads", "save_every", "keep_checkpoints", "resume")
"""Settings that do not change what a run computes (`--jobs` sets the threads, reproduce the checkpoint
cadence, a resume sets `train.resume` or `sft.resume`), by key name in any section: --reuse ignores them, so
runs made before SFT had checkpoints (no sft.save_every in their config.yaml) are kept as well."""
CHECKPOINTS_PER_JOB = 10
"""A job whose config writes no checkpoints writes about this many: a kill costs at most a tenth of it."""
TALLY_EVERY_S = 5.0
"""How often a running job's wall seconds so far are written to its tally."""
STOP_WAIT_S = 1800.0
"""How long a job told to stop (SIGINT: it finishes its step first, held-out evaluation included) may take
before it is killed; a second signal to reproduce kills the jobs at once."""


@dataclass
class Job:
    """One `grpo train` or `grpo sft` process of reproduce."""

    name: str
    command: str
    """'train' or 'sft'."""
    config: Path
    args: list[str]
    """Overrides of `config` (the run's output directory among them)."""
    run_dir: Path
    log: Path
    resume_from: Path | None = None
    """The checkpoint this sitting continues from (`grpo train|sft --resume`); None: a fresh run."""
    scratch_checkpoints: bool = False
    """Its checkpoints are reproduce's own (`checkpoint_every`): removed once the job has finished."""
    start: str | None = None
    """`start_key` when this sitting was launched (set by `run_jobs`; written to its tally and record)."""

    @property
    def cmd(self) -> list[str]:
        how = ["--resume", str(self.run_dir)] if self.resume_from else ["--overwrite"]
        return [sys.executable, "-m", "grpo", self.command, "-q", *how, "--config", str(self.config),
                *self.args]

    @property
    def record(self) -> Path:
        """Written when the job succeeds: {"seconds": its wall seconds, "start": its `start_key`} (read again
        by --reuse)."""
        return self.log.with_suffix(".json")

    @property
    def tally(self) -> Path:
        """Kept while the job is unfinished: the wall seconds of its sittings so far (a resume adds to them)
        and its `start_key`."""
        return self.log.with_suffix(".partial.json")

    @property
    def start_model(self) -> Path | None:
        """The model directory the job starts from (its model.path: a seed's sft_best for every method but
        sft_best and grpo_base); None when model.path names no directory (`tiny`, a Hub id)."""
        path = Path(self.settings()["model.path"])
        return path if path.is_dir() else None

    def settings(self, saved: Path | None = None) -> dict:
        """The configuration this job trains (or the one saved at `saved`), as `settings` gives it."""
        cls = TrainConfig if self.command == "train" else SFTConfig
        cfg = load_config(cls, saved) if saved else load_config(cls, self.config, self.args)
        return settings(to_dict(cfg))


def checkpoint_every(steps: int) -> int:
    """The checkpoint cadence reproduce gives a job of `steps` steps whose config sets none: about
    `CHECKPOINTS_PER_JOB` checkpoints."""
    return max(1, -(-steps // CHECKPOINTS_PER_JOB))


def start_key(job: Job) -> str | None:
    """SHA-256 of the files of the model `job` starts from (`evaluation_key` without options); None when it
    starts from no directory (`Job.start_model`)."""
    start = job.start_model
    return None if start is None else evaluation_key(start, {})


def continue_command(argv: list[str]) -> str:
    """The command line that continues the `grpo reproduce` invocation whose arguments (after `grpo`) are
    `argv`: the same, with --reuse."""
    at = argv.index("reproduce") + 1
    return "grpo " + shlex.join(argv if "--reuse" in argv else [*argv[:at], "--reuse", *argv[at:]])


class JobsInterrupted(KeyboardInterrupt):
    """A stop signal (`stop_signals`) stopped reproduce after its running jobs had stopped (`run_jobs`)."""

    def __init__(self, signum: int, again: str):
        self.signum = signum  # the CLI exits with 128 + signum, as a TrainingInterrupted does
        name = signal.Signals(signum).name
        super().__init__(f"interrupted ({name}); the running jobs stopped, each with a checkpoint of its "
                         f"last step (see its log); continue with: {again}")


def run_jobs(jobs: list[Job], parallel: int, again: str) -> dict[str, float]:
    """Run the jobs, `parallel` at a time; name -> wall seconds (of every sitting since the run's fresh
    start). Every job's output is in its log file (a resumed sitting appends to it).

    A stop signal to reproduce (`StopSignals`) and a job's failure both stop the running jobs
    (`stop_jobs`: one SIGINT each, so that each writes a checkpoint) and start no more; then a signal raises
    `JobsInterrupted`, naming `again`, the command that continues, and a failure UserError with the tail of
    its log."""
    pending, running, seconds, failed = list(jobs), {}, {}, None
    env = {**os.environ, **MEMORY_ENV}
    last_tally = time.perf_counter()
    with StopSignals() as stop:
        try:
            while (pending or running) and failed is None and stop.signum is None:
                while pending and len(running) < parallel:
                    job = pending.pop(0)
                    before = _tallied(job)
                    running[job.name] = (job, _launch(job, env, before), time.perf_counter() - before)
                for name, (job, proc, t0) in list(running.items()):
                    if proc.poll() is not None:
                        del running[name]
                        seconds |= _ended(job, proc, time.perf_counter() - t0)
                        if proc.returncode != 0 and failed is None:
                            failed = job, proc.returncode
                if time.perf_counter() - last_tally >= TALLY_EVERY_S:
                    last_tally = time.perf_counter()
                    for job, _, t0 in running.values():
                        _write_tally(job, last_tally - t0)
                time.sleep(0.2)
        except KeyboardInterrupt:  # a second signal before the jobs were told to stop: they are now, once
            pass
        finally:
            if running:  # a signal, a failure, or an error in this loop
                print(f"      stopping {', '.join(running)}: each finishes its step and writes a checkpoint",
                      flush=True)
            seconds |= stop_jobs(running)
    if failed:
        job, code = failed
        tail = job.log.read_text(errors="replace")[-2000:]
        raise UserError(f"{job.name} failed (exit {code}); log: {job.log}\n{tail}")
    if stop.signum is not None:
        raise JobsInterrupted(stop.signum, again)
    return seconds


def stop_jobs(running: dict) -> dict[str, float]:
    """Stop the running jobs ({name: (job, process, start time)}), each with one SIGINT: `grpo train` and
    `grpo sft` finish the step, write a checkpoint and exit (one that finishes instead is a finished job:
    name -> seconds). A job still running after `STOP_WAIT_S`, or when a second signal reaches reproduce,
    is killed; its newest checkpoint stays."""
    for _, proc, _ in running.values():
        proc.send_signal(signal.SIGINT)
    deadline = time.perf_counter() + STOP_WAIT_S
    try:
        for _, proc, _ in running.values():
            try:
                proc.wait(max(0.0, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                proc.kill()
    except KeyboardInterrupt:
        for _, proc, _ in running.values():
            proc.kill()
    seconds = {}
    for job, proc, t0 in running.values():
        proc.wait()
        seconds |= _ended(job, proc, time.perf_counter() - t0)
    return seconds


def _launch(job: Job, env: dict, before: float) -> subprocess.Popen:
    """Start `job` (`before`: its earlier sittings' seconds) in its own session: a terminal's Ctrl-C reaches
    reproduce only, which signals the job once (`stop_jobs`)."""
    job.log.parent.mkdir(parents=True, exist_ok=True)
    job.start = start_key(job)
    _write_tally(job, before)
    with open(job.log, "a" if job.resume_from else "w") as log:
        if job.resume_from:
            log.write(f"\n--- grpo reproduce --reuse: resuming from {job.resume_from} ---\n")
            log.flush()
        return subprocess.Popen(job.cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, preexec_fn=stop_with_parent(os.getpid()))


def stop_with_parent(parent: int):
    """On Linux, a function for Popen's `preexec_fn` (it runs in the child between fork and exec): the child
    gets SIGINT when its parent dies (prctl PR_SET_PDEATHSIG, kept across exec), and exits before it runs
    anything if `parent` has died already. Elsewhere None."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, in the parent: the child only calls it
    PR_SET_PDEATHSIG = 1

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGINT)
        if os.getppid() != parent:  # it died between the fork and prctl
            os._exit(1)

    return arm


def _ended(job: Job, proc: subprocess.Popen, seconds: float) -> dict[str, float]:
    """Book a job whose process has exited: {name: seconds} when it succeeded (its record written, its tally
    and scratch checkpoints removed), else {} (its tally kept for a resume)."""
    if proc.returncode != 0:
        _write_tally(job, seconds)
        return {}
    job.record.write_text(json.dumps({"seconds": seconds, "start": job.start}))
    job.tally.unlink(missing_ok=True)
    if job.scratch_checkpoints:
        shutil.rmtree(job.run_dir / CHECKPOINTS, ignore_errors=True)
    print(f"      finished {job.name} in {seconds:.0f} s", flush=True)
    return {job.name: seconds}


def _tallied(job: Job) -> float:
    """The wall seconds of the job's earlier sittings: 0 for a fresh start."""
    if job.resume_from is None:
        return 0.0
    try:
        return float(json.loads(job.tally.read_text())["seconds"])
    except (OSError, ValueError, KeyError):
        return 0.0


def _write_tally(job: Job, seconds: float) -> None:
    job.tally.write_text(json.dumps({"seconds": seconds, "start": job.start}))


def settings(tree: dict, prefix: str = "") -> dict:
    """A config's dict as {"section.key": value}, without the `IGNORED` keys."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= settings(value, f"{prefix}{key}.")
        elif key not in IGNORED:
            out[f"{prefix}{key}"] = value
    return out


def _check_same(job: Job, saved: Path, later: tuple[str, ...] = ()) -> None:
    """UserError naming the first setting in which the config at `saved` differs from the job's, but the
    settings in `later`."""
    want, have = job.settings(), job.settings(saved)
    differ = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k) and k not in later)
    if differ:
        key = differ[0]
        raise UserError(f"--reuse: {job.run_dir} was trained with {key}={have.get(key)!r}, this reproduce "
                        f"asks for {want.get(key)!r}; delete {job.run_dir} to train it again, or drop "
                        "--reuse")


def check_before_training(jobs: list[Job], later: tuple[str, ...]) -> None:
    """--reuse, before the first stage trains: UserError for a job whose run (finished, or its newest
    checkpoint) has another configuration than the job, the settings in `later` aside: those an earlier
    stage decides (the model it starts from; sft_more's budget and what follows from it), which the jobs
    here were made with placeholders for. `reuse_or_resume` checks every setting when the stage comes;
    this stops a grid whose later stage would be refused before hours of the earlier ones are spent."""
    for job in jobs:
        saved = _saved_config(job)
        if saved is not None:
            _check_same(job, saved, later)


def _saved_config(job: Job) -> Path | None:
    """The config --reuse holds the job to: its finished run's, else its newest checkpoint's (None: neither,
    the job trains from the start)."""
    d = job.run_dir
    if (d / "final" / "config.json").is_file() and (d / "config.yaml").is_file() and job.record.is_file():
        return d / "config.yaml"
    ckpt = latest_checkpoint(d)
    return None if ckpt is None else ckpt / "config.yaml"


def reuse_or_resume(jobs: list[Job], timed: Callable[[Path], bool] | None = None) -> dict[str, float]:
    """--reuse: job name -> wall seconds of every job whose finished run (its final model, its config.yaml
    and the job's record) has this invocation's configuration; every other job whose run holds an intact
    checkpoint of it is set to resume from it (`Job.resume_from`). UserError when a run or a checkpoint has
    another configuration. A run whose record (tally) holds another `start_key` than the job's (its starting
    model changed since) is trained again, its checkpoints deleted; so is a finished run for which
    `timed(run_dir)` is False (it predates the timing the compute budget is counted in)."""
    seconds = {}
    for job in jobs:
        d, saved = job.run_dir, _saved_config(job)
        if saved is None:
            continue
        _check_same(job, saved)
        if saved == d / "config.yaml":  # a finished run
            if _start_changed(job, job.record):
                continue
            if timed is not None and not timed(d):
                print(f"      {job.name}: its run ({d}) lacks the CPU seconds the budget is counted in; "
                      "training it again", flush=True)
                continue
            seconds[job.name] = json.loads(job.record.read_text())["seconds"]
            if job.scratch_checkpoints:  # left by a reproduce stopped before it removed them
                shutil.rmtree(d / CHECKPOINTS, ignore_errors=True)
            print(f"      reusing {job.name} ({d})", flush=True)
            continue
        ckpt = saved.parent
        if _start_changed(job, job.tally):
            continue
        problem = checkpoint_problem(ckpt)
        if problem is not None:
            print(f"      {job.name}: its checkpoint {ckpt} is damaged ({problem}); training it again",
                  flush=True)
            continue
        job.resume_from = ckpt
        print(f"      resuming {job.name} from {ckpt.name} ({d})", flush=True)
    return seconds


def _start_changed(job: Job, saved: Path) -> bool:
    """Whether the start key in `saved` (the job's record or tally) is not the job's `start_key`: then its run
    is to be trained again, and its checkpoints, of the old start, are deleted (a later --reuse must not
    resume from them). A record or tally without the key (written before it was kept) is not checked."""
    try:
        before = json.loads(saved.read_text()).get("start")
    except (OSError, ValueError):
        return False
    if before is None or before == start_key(job):
        return False
    print(f"      {job.name}: the model it started from ({job.start_model}) has changed since; training it "
          "again", flush=True)
    shutil.rmtree(job.run_dir / CHECKPOINTS, ignore_errors=True)
    return True


# ---------------------------------------------------------------------------------------------------
# Evaluations


def evaluation_key(model_dir: Path, options: dict) -> str:
    """SHA-256 of the model's files (names and contents) and of the evaluation's `options` (plain data):
    an evaluation is kept only for the same weights, tokenizer and settings (and, without options, a run
    only while the model it started from is the same: `start_key`)."""
    h = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    for f in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(model_dir).as_posix()}:{sha256_file(f)}".encode())
    return h.hexdigest()


def cached_evaluation(path: Path, key: str) -> EvalResult | None:
    """The evaluation saved at `path` (`save_evaluation`) when it was made under `key`, else None."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if saved.get("key") != key:
        return None
    r = saved["result"]
    return EvalResult(**{**r, "pass_at_k": {int(k): v for k, v in r["pass_at_k"].items()},
                         "maj_at_k": {int(k): v for k, v in r["maj_at_k"].items()}})


def save_evaluation(path: Path, key: str, result: EvalResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"key": key, "result": dataclasses.asdict(result)}))
    os.replace(tmp, path)
