"""The code sandbox's processes and uid, seen from the parent (grpo.sandbox.run runs the child).

Finding what a run started (/proc), killing it in the order that leaves nothing behind, lending a
run a uid of its own when the parent is root, and removing what that uid left in the shared
temporary directories. docs/reliability.md describes each mechanism and its limits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

SANDBOX_UIDS = range(60700, 60764)
"""uids handed to concurrent sandboxes when running as root, one per run (locked with flock)."""


def has_exited(pid: int) -> bool:
    """Whether our child has exited, without reaping it (a zombie keeps its pid from reuse)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # Linux < 5.3, or not Linux
        return None


def kill_child(proc, uid: int | None) -> None:
    """Kill everything the run started.

    Order matters: the PID-namespace init first (its death kills the namespace), then the process
    group, both while the child is unreaped (so its pid cannot be reused), then every process of the
    sandbox uid, which also catches processes that left the group with setsid()."""
    if not has_exited(proc.pid):
        for pid, ppid, _, _ in _processes():
            if ppid == proc.pid:
                _signal(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if uid is not None:
        kill_uid(uid)
    # what is left of its session (setsid() escapes this; the uid above catches those): under bubblewrap
    # its PID-namespace init, root's, dies with the namespace but may still be exiting at this point
    _kill_until_gone(lambda sid, owner: sid == proc.pid, f"session {proc.pid}")


def kill_uid(uid: int) -> None:
    _kill_until_gone(lambda sid, owner: owner == uid, f"uid {uid}")


def _kill_until_gone(match, what: str) -> None:
    """SIGKILL every live process that `match(session, uid)` selects until none is left. A killed process
    cannot fork, and RLIMIT_NPROC bounds how many there are: a few rounds suffice."""
    for _ in range(200):
        pids = [pid for pid, _, sid, owner in _processes() if match(sid, owner)]
        if not pids:
            return
        for pid in pids:
            _signal(pid)
        time.sleep(0.01)
    raise RuntimeError(f"sandbox: processes of {what} survive SIGKILL")


def _signal(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def _processes():
    """(pid, parent pid, session id, real uid) of every live (not zombie) process, from /proc."""
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if not fields["State"].strip().startswith("Z"):
                first = [int(fields[key].split()[0]) for key in ("PPid", "NSsid", "Uid")]
                yield (int(name), *first)
        except (OSError, KeyError, ValueError, IndexError):  # not a process, or gone meanwhile
            continue


@contextlib.contextmanager
def sandbox_uid():
    """As root: a uid from SANDBOX_UIDS that no account and no concurrent sandbox uses; else None."""
    if os.geteuid() != 0:
        yield None
        return
    import fcntl  # Unix only: here, so that importing grpo (and its rewards) still works elsewhere

    lock_dir = Path(tempfile.gettempdir()) / "grpo-sandbox-uids"
    lock_dir.mkdir(mode=0o700, exist_ok=True)
    if lock_dir.is_symlink() or lock_dir.stat().st_uid != 0:
        raise RuntimeError(f"sandbox: {lock_dir} is not a directory owned by root; remove it")
    for uid in SANDBOX_UIDS:
        if _has_account(uid):
            continue
        fd = os.open(lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            kill_uid(uid)  # leftovers of a parent that died mid-run
            yield uid
        finally:
            os.close(fd)
        return
    raise RuntimeError(f"sandbox: all {len(SANDBOX_UIDS)} sandbox uids are in use")


def _has_account(uid: int) -> bool:
    import pwd  # Unix only, as fcntl above

    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def remove_files_of(uid: int) -> None:
    """Remove what the sandbox uid left in the shared temporary directories (top level only)."""
    for directory in {tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"}:
        with contextlib.suppress(OSError):
            for entry in os.scandir(directory):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_uid != uid:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, onerror=make_writable_and_retry)
                    else:
                        os.unlink(entry.path)


def make_writable_and_retry(function, path, _exc_info) -> None:
    # Code running as the parent's own uid may chmod its files read-only; root needs no help.
    with contextlib.suppress(OSError):
        os.chmod(os.path.dirname(path), 0o700)
        os.chmod(path, 0o700)
        function(path)
