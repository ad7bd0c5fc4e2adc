"""Checkpoint directories on disk, written so that no crash can corrupt one and verified before one is read.

    OUTPUT/checkpoints/step-000010/        complete: every file there, fsynced, checksummed
    OUTPUT/checkpoints/step-000012.tmp/    being written (or left by a kill): never read

Atomicity: a checkpoint is written into `step-000010.tmp/`, every file and the directory are
fsynced, then a single `os.replace` gives it its name (under torchrun: once every rank has
written its part; if any rank failed, none goes on as if saved), and only then are checkpoints beyond the
newest `train.keep_checkpoints` (`sft.keep_checkpoints`) deleted. A directory named `step-NNNNNN` is
therefore complete; a `.tmp` left by a kill or a full disk is never read, and is removed when the run starts
again.

Corruption: a complete checkpoint can still be damaged afterwards (a flipped bit on disk, a copy cut
short, a file deleted by hand). `verify_checkpoint` recomputes every file's SHA-256 against
checksums.json before a resume reads anything; a missing, truncated or altered file stops the resume
with one line naming the file and the newest older checkpoint that verifies.

What a checkpoint holds, and how it is written and read back, is `grpo.train.checkpoint`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from grpo.errors import UserError

CHECKPOINTS = "checkpoints"
CHECKSUMS = "checksums.json"
"""In every checkpoint: {relative path: SHA-256} of every other file in it."""


def latest_checkpoint(out: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    steps = complete_checkpoints(Path(out) / CHECKPOINTS)
    return steps[-1] if steps else None


def complete_checkpoints(root: Path) -> list[Path]:
    """The `step-NNNNNN` directories in `root`, oldest step first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def remove_partial_checkpoints(out: Path) -> list[str]:
    """Delete `.tmp`/`.old` directories left by a save that was killed; returns their names."""
    root = out / CHECKPOINTS
    partial = [p for p in root.iterdir() if p.suffix in (".tmp", ".old")] if root.is_dir() else []
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in partial]


def start_checkpoint(root: Path, tmp: Path) -> None:
    """An empty `tmp` to write a checkpoint's files into (one left by an earlier attempt is removed)."""
    root.mkdir(exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()


def finish_checkpoint(tmp: Path, final: Path, old: Path, root: Path) -> None:
    """Every file in `tmp` written: checksum them, fsync everything, then the rename that names it `final`."""
    (tmp / CHECKSUMS).write_text(json.dumps(_checksums(tmp), indent=1, sort_keys=True), encoding="utf-8")
    for f in sorted(tmp.rglob("*"), reverse=True):  # files before the directories that hold them
        _fsync(f)
    _fsync(tmp)
    if final.exists():  # the same step saved before (a resumed run stopped again at once)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(root)


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read a MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checksums(root: Path) -> dict[str, str]:
    """{path relative to root: SHA-256} of every file below root (FSDP's shards included), but CHECKSUMS."""
    return {f.relative_to(root).as_posix(): sha256_file(f) for f in sorted(root.rglob("*"))
            if f.is_file() and f.name != CHECKSUMS}


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be trusted (a missing, truncated or altered file, or no
    checksums.json), or None when every file matches the checksums written with it."""
    try:
        want = json.loads((path / CHECKSUMS).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{CHECKSUMS} is missing"
    except (OSError, ValueError) as e:
        return f"{CHECKSUMS} is unreadable ({e})"
    for name, digest in sorted(want.items()):
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if sha256_file(f) != digest:
            return f"{name} does not match its checksum (truncated or altered)"
    return None


def verify_checkpoint(path: Path, command: str = "train") -> None:
    """Raise UserError naming the damaged file when the checkpoint at `path` fails `checkpoint_problem`,
    and the newest older checkpoint that verifies (and how to resume from it with `grpo COMMAND`)."""
    problem = checkpoint_problem(path)
    if problem is None:
        return
    older = [p for p in complete_checkpoints(path.parent) if int(p.name[5:]) < int(path.name[5:])]
    intact = next((p for p in reversed(older) if checkpoint_problem(p) is None), None)
    hint = (f"{intact} is intact: move {path} (and any newer checkpoint) out of {path.parent}, then resume "
            f"with grpo {command} --resume {path.parent.parent}" if intact
            else "no older checkpoint is intact")
    raise UserError(f"checkpoint {path} is damaged: {problem}; nothing was loaded. {hint}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
