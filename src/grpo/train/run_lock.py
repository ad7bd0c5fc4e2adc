"""One `grpo train` or `grpo sft` per output directory: an exclusive flock on OUT/.grpo-train.lock
(`OutputDirLock`)."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from grpo.errors import UserError

logger = logging.getLogger(__name__)


LOCK_FILE = ".grpo-train.lock"
"""In train.output_dir or sft.output_dir: flock-ed by the process writing the directory, and holding that
process's pid. One name for both commands, so that a `grpo train` and a `grpo sft` exclude each other too."""


class OutputDirLock:
    """One `grpo train` or `grpo sft` per output directory: an exclusive `fcntl.flock` on LOCK_FILE in it.

    Taken on entering, before the model loads, so that a second run into the directory stops at once.
    Entering creates the directory (and its parents) when needed, locks the lock file and writes this
    process's pid in it, for the message of the runs it refuses. The OS drops a flock when its process
    dies, however it dies (SIGKILL, the OOM killer), so a killed run leaves no stale lock: its file
    stays, unlocked, and the next run or `--resume` takes it. Leaving releases it, whether the run
    ended or failed; a run that never `commit`ted (it failed before its first write) also removes the
    lock file and the directories it created, so that it leaves nothing behind. Under torchrun only
    rank 0 locks (torch.distributed is not up yet: torchrun's RANK says which process is rank 0); the
    other ranks write into the directory under rank 0's lock. `section`: the config section of the
    locking run's output_dir ('train' or 'sft'), named in the refusal.
    """

    def __init__(self, path: str | Path, enabled: bool | None = None, section: str = "train"):
        self.out, self.section, self._file, self.committed = Path(path), section, None, False
        self.enabled = os.environ.get("RANK", "0") == "0" if enabled is None else enabled
        self._created: list[Path] = []  # directories this lock made, the deepest first
        self._made_file = False

    def __enter__(self) -> OutputDirLock:
        if not self.enabled:
            return self
        missing = [p for p in [self.out, *self.out.parents] if not p.exists()]
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"output directory {self.out} is not writable: {e.strerror or e}") from None
        self._created = missing
        try:
            self._lock()
        except BaseException:
            self._clean_up()
            raise
        return self

    def commit(self) -> None:
        """The run has written its first files: its directory and lock file stay when it ends."""
        self.committed = True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # its only descriptor: closing it drops the flock
            self._file = None

    def __exit__(self, *exc) -> None:
        if self.committed:
            self.release()
        else:  # removed while still locked: no other run can have taken the file meanwhile
            self._clean_up()

    def _clean_up(self) -> None:
        """Remove the lock file and the empty directories this lock created (none: a directory with anything
        else in it stays as it is)."""
        if self._made_file and self._file is not None:
            try:
                os.unlink(self.out / LOCK_FILE)
            except OSError:
                pass
        self.release()
        for d in self._created:
            try:
                d.rmdir()
            except OSError:
                break

    def _lock(self) -> None:
        path = self.out / LOCK_FILE
        for _ in range(10):  # a failing run may unlink the file between our open and our flock: open again
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                made = True
            except FileExistsError:
                try:
                    fd, made = os.open(path, os.O_RDWR), False
                except FileNotFoundError:
                    continue
            except OSError as e:
                raise UserError(f"cannot open {path}: {e.strerror or e}") from None
            f = os.fdopen(fd, "r+", encoding="utf-8")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # held by another process
                holder = _live_pid(f.read())
                f.close()
                who = f"pid {holder}" if holder else "still starting: its pid is not written yet"
                raise UserError(f"{self.out} is in use by another grpo train or grpo sft ({who}); wait for "
                                f"it or choose another {self.section}.output_dir") from None
            except OSError as e:  # ENOLCK, EOPNOTSUPP...: some network filesystems have no flock
                f.close()
                logger.warning("cannot lock %s (%s); running without the one-run-per-directory guard", path,
                               e.strerror or e)
                self.enabled = False
                return
            try:
                same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # unlinked by the run that held it: lock the file that is there now
                f.close()
                continue
            self._file, self._made_file = f, made
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            return
        raise UserError(f"cannot lock {path}: it keeps being removed")


def _live_pid(text: str) -> int | None:
    """The pid written in a lock file, if that process is alive (else: a dead run's, not the holder's)."""
    try:
        pid = int(text.strip())
        if pid <= 0:
            return None
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return None
    except PermissionError:  # alive, another user's
        pass
    return pid
