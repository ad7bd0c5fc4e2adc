"""One `grpo train` per output directory: an exclusive flock on OUT/.grpo-train.lock (`OutputDirLock`)."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from grpo.errors import UserError

logger = logging.getLogger(__name__)



LOCK_FILE = ".grpo-train.lock"
"""In train.output_dir: flock-ed by the process writing the directory, and holding that process's pid."""


class OutputDirLock:
    """One `grpo train` per output directory: an exclusive `fcntl.flock` on OUT/.grpo-train.lock.

    The OS drops a flock when its process dies, however it dies (SIGKILL, the OOM killer), so a killed
    run leaves no stale lock: its file stays, unlocked, and the next run or `--resume` takes it. The
    holder writes its pid in the file for the message of the runs it refuses. Taken in two moves so that
    a refused run writes nothing: entering locks an existing lock file without writing to it (a second
    run stops there, before loading anything); `hold()`, just before the run's first write, creates the
    directory and the file when needed, locks, and writes the pid (two fresh runs into a new directory
    meet there). Leaving releases it, whether the run ended or failed. Under torchrun only rank 0 locks
    (torch.distributed is not up yet at the first move: torchrun's RANK says which process is rank 0);
    the other ranks write into the directory under rank 0's lock.
    """

    def __init__(self, path: str | Path, enabled: bool | None = None):
        self.out, self._file = Path(path), None
        self.enabled = os.environ.get("RANK", "0") == "0" if enabled is None else enabled

    def __enter__(self) -> OutputDirLock:
        try:
            exists = (self.out / LOCK_FILE).is_file()
        except OSError:  # e.g. a directory that cannot be searched: check_output_dir words it
            exists = False
        if self.enabled and exists:
            self._lock(os.O_RDWR)
        return self

    def hold(self) -> None:
        """Before the run's first write: hold the directory (creating it) and write this process's pid."""
        if not self.enabled:
            return
        if self._file is None:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"output directory {self.out} is not writable: {e.strerror or e}") from None
            self._lock(os.O_RDWR | os.O_CREAT)
        if self._file is not None:  # None: a filesystem without flock (warned)
            self._file.seek(0)
            self._file.truncate()
            self._file.write(f"{os.getpid()}\n")
            self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # its only descriptor: closing it drops the flock
            self._file = None

    def __exit__(self, *exc) -> None:
        self.release()

    def _lock(self, flags: int) -> None:
        path = self.out / LOCK_FILE
        try:
            f = os.fdopen(os.open(path, flags, 0o644), "r+", encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot open {path}: {e.strerror or e}") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by another process
            holder = _live_pid(f.read())
            f.close()
            who = f"pid {holder}" if holder else "still starting: its pid is not written yet"
            raise UserError(f"{self.out} is in use by another grpo train ({who}); wait for it or choose "
                            "another train.output_dir") from None
        except OSError as e:  # ENOLCK, EOPNOTSUPP...: some network filesystems have no flock
            f.close()
            logger.warning("cannot lock %s (%s); running without the one-run-per-directory guard", path,
                           e.strerror or e)
            self.enabled = False
            return
        self._file = f


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
