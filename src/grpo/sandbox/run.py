"""The code sandbox: run model-written Python, then assert tests, in a contained subprocess.

`run_python_sandboxed` is the checker that the `code_tests` reward (`grpo.rewards.code`) and sandboxed
tools (`grpo.tools.environment`) call. Every run gets a fresh temporary directory (removed afterwards,
also after a timeout), a minimal environment, its own session, wall and CPU time limits, memory, process,
file-size and open-file limits, and, where the kernel allows, new network and PID namespaces and (as
root) a uid of its own. Where bubblewrap (`bwrap`) is installed and works, the run also gets a filesystem
view of its own: the interpreter and the system's libraries read-only, its working directory, a private
/tmp and /dev, its own /proc, and nothing else of the machine ("fsview" in `SandboxResult.isolation`);
without it, one notice line says that the filesystem is not isolated. What took effect is in
`SandboxResult.isolation`; docs/reliability.md explains each mechanism and its limits.

Tests are Python statements, usually `assert` lines (`assert add(2, 3) == 5`). A string of tests is
split into its top-level statements; each statement is one test, run after the program in a copy
of the program's namespace, so one failing test does not stop or change the others.

The child side is `grpo/sandbox/child.py`, passed as text to `python -I -S -c`; the processes and uid
seen from the parent are `grpo.sandbox.processes`.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from grpo.errors import UserError
from grpo.sandbox.processes import (has_exited, kill_child, make_writable_and_retry, open_pidfd,
                                    remove_files_of,
                                    sandbox_uid)

logger = logging.getLogger(__name__)

STATUSES = ("ok", "error", "timeout", "memory", "process_limit", "file_limit", "output_limit", "crashed")
"""`SandboxResult.status` values: every one but "ok" scores 0."""

_CHILD_SOURCE = (Path(__file__).parent / "child.py").read_text(encoding="utf-8")
_TAIL_BYTES = 4096
_MAX_REPORT_BYTES = 1 << 20


@dataclass
class SandboxResult:
    """What one sandboxed run did."""

    passed: int
    """Tests passed (counted only when status is "ok")."""
    total: int
    """Tests given."""
    status: str
    """One of STATUSES: "ok" (program and tests ran; some tests may have failed), "error" (the
    program raised before any test ran), or the containment event that ended the run."""
    stdout_tail: str
    """The last 4 KiB of the program's standard output."""
    stderr_tail: str
    """The last 4 KiB of its standard error (tracebacks of the program and of failing tests)."""
    wall_s: float
    """Seconds from start until the child exited or was killed."""
    isolation: tuple[str, ...]
    """Mechanisms beyond rlimits that took effect: "fsview" (bubblewrap), "uid",
    "netns", "pidns", "userns"."""
    returncode: int | None
    """Exit status of the child (negative: killed by that signal)."""
    pid: int
    """The child's pid, which is also its session and process-group id."""
    uid: int | None
    """The uid the code ran as when the parent is root; None otherwise (it ran as the parent's uid)."""

    @property
    def score(self) -> float:
        """The reward: passed / total for status "ok", else 0.0."""
        return self.passed / self.total if self.status == "ok" and self.total else 0.0


def run_python_sandboxed(
    code: str,
    tests: list[str] | str,
    *,
    timeout_s: float = 5.0,
    cpu_s: int | None = None,
    memory_mb: int = 512,
    max_procs: int = 16,
    max_file_mb: int = 16,
    max_output_kb: int = 64,
    network: bool = False,
) -> SandboxResult:
    """Run `code` and then each test in a sandboxed Python process; see the module docstring.

    cpu_s defaults to ceil(timeout_s). max_procs counts processes and threads, the sandbox's own
    two included. max_output_kb caps stdout and stderr together: past it the run is killed.
    network=True skips the new network namespace.

    >>> tests = ["assert add(2, 3) == 5", "assert add(1, 1) == 3"]
    >>> r = run_python_sandboxed("def add(a, b): return a + b", tests)
    >>> (r.status, r.passed, r.total, r.score)
    ('ok', 1, 2, 0.5)
    """
    if not sys.platform.startswith("linux"):
        raise UserError(
            "the code sandbox needs Linux: its process limit, cleanup and namespaces use Linux "
            "interfaces (/proc, unshare); run code rewards in a Linux machine or container"
        )
    tests = split_tests(tests)
    config = {
        "code": code,
        "tests": tests,
        "network": network,
        "cpu_s": cpu_s or max(1, math.ceil(timeout_s)),
        "memory_mb": memory_mb,
        "max_procs": max_procs,
        "max_file_mb": max_file_mb,
    }
    with sandbox_uid() as uid:
        workdir = tempfile.mkdtemp(prefix="grpo-sandbox-")
        try:
            if uid is not None:
                os.chown(workdir, uid, uid)
            return _run_child(config | {"uid": uid}, workdir, timeout_s, max_output_kb << 10)
        finally:
            shutil.rmtree(workdir, onerror=make_writable_and_retry)
            if uid is not None:
                remove_files_of(uid)


def split_tests(tests: list[str] | str) -> list[str]:
    """Tests as a list of sources: a list is kept; a string is split into its top-level statements,
    and a string holding a list literal of strings (a JSON-encoded column) is decoded.

    A statement that is only a literal (`[...]`, `"..."`, `1`) would pass whatever the program does,
    so it is an error rather than a test.

    >>> split_tests("assert f(1) == 2\\nassert f(2) == 3")
    ['assert f(1) == 2', 'assert f(2) == 3']
    >>> split_tests('["assert f(1) == 2"]')
    ['assert f(1) == 2']
    """
    if isinstance(tests, str):
        try:
            tree = ast.parse(tests)
        except SyntaxError as exc:
            raise ValueError(f"tests do not parse as Python (line {exc.lineno}: {exc.msg})") from exc
        if len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr):
            with contextlib.suppress(ValueError, SyntaxError):
                decoded = ast.literal_eval(tests.strip())
                if isinstance(decoded, (list, tuple)) and all(isinstance(t, str) for t in decoded):
                    return split_tests(list(decoded))
        tests = [ast.get_source_segment(tests, node) for node in tree.body]
    if not all(isinstance(t, str) for t in tests):
        raise ValueError(f"tests must be strings; got {[type(t).__name__ for t in tests]}")
    for test in tests:
        try:
            body = ast.parse(test).body
        except SyntaxError as exc:
            raise ValueError(f"test {test!r} does not parse as Python: {exc.msg}") from exc
        if not body or all(isinstance(node, ast.Expr) and _is_literal(node.value) for node in body):
            raise ValueError(f"test {test!r} checks nothing: use assert statements")
    return list(tests)


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except ValueError:
        return False


SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""Read-only in the filesystem view (those that exist), with the interpreter's own prefix."""
_VIEW: dict = {}
"""The filesystem view's state, settled at the first run: {"bwrap": path or None}."""


def filesystem_view() -> str | None:
    """bubblewrap's path when it is installed and can build the view here (checked once, by running the
    interpreter inside it), else None after one notice line saying why the filesystem is not isolated."""
    if "bwrap" not in _VIEW:
        bwrap, why = shutil.which("bwrap"), "bubblewrap (bwrap) is not installed"
        if bwrap:
            with tempfile.TemporaryDirectory(prefix="grpo-sandbox-") as d:
                done = subprocess.run([bwrap, *_view_args(d, network=False), os.path.realpath(sys.executable),
                                       "-I", "-S", "-c", "pass"], capture_output=True, text=True, timeout=30)
            why = f"bwrap failed here: {' '.join(done.stderr.split())[:200]}" if done.returncode else ""
        _VIEW["bwrap"] = bwrap if not why else None
        if why:
            logger.warning("notice: the code sandbox's programs can read any world-readable file on this "
                           "machine (no filesystem view of their own: %s; apt-get install bubblewrap)", why)
    return _VIEW["bwrap"]


def _view_args(workdir: str, network: bool) -> list[str]:
    """bwrap's arguments: system directories and the interpreter read-only, the run's directory writable,
    private /tmp, /dev and /proc, new PID, IPC and UTS (and network) namespaces; ends with "--"."""
    prefix = os.path.realpath(sys.base_prefix)
    binds = [d for d in SYSTEM_DIRS if os.path.isdir(d)]
    if not any(prefix == d or prefix.startswith(d + "/") for d in binds):
        binds.append(prefix)  # e.g. /root/.pyenv/versions/3.11.7
    args = [a for d in binds for a in ("--ro-bind", d, d)]
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp", "--perms", "1777",
             "--tmpfs",
             "/dev/shm", "--bind", workdir, workdir, "--chdir", workdir,
             "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent"]
    return args + ([] if network else ["--unshare-net"]) + ["--"]


def _run_child(config: dict, workdir: str, timeout_s: float, max_output: int) -> SandboxResult:
    report_r, report_w = os.pipe()
    bwrap = filesystem_view()
    python = [sys.executable, "-I", "-S", "-c", _CHILD_SOURCE]
    if bwrap:  # the interpreter by its real path: the virtual environment's directory is not in the view
        python = [bwrap, *_view_args(workdir, config["network"]), os.path.realpath(sys.executable),
                  *python[1:]]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            python,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir},
            start_new_session=True,  # its own session and process group, killed as a whole
            pass_fds=(report_w,),
        )
    except BaseException:
        os.close(report_r)
        raise
    finally:
        os.close(report_w)
    try:
        try:
            proc.stdin.write(json.dumps(config | {"report_fd": report_w}).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the child died at once; its exit status tells
        outcome, streams = _collect(proc, report_r, start + timeout_s, max_output)
        wall_s = time.monotonic() - start
    finally:
        kill_child(proc, config["uid"])
        os.close(report_r)
        proc.stdout.close()
        proc.stderr.close()
    # First line: the child's isolation, written before the program ran. Last line: the result,
    # believed only if the child exited normally (the program can kill the child after reporting).
    lines = _parse_report(streams["report"])
    if not lines and outcome is None:
        tail = streams["stderr"].decode(errors="replace").strip()[-1000:]
        raise RuntimeError(
            f"sandbox: the child failed while setting up, before the program ran (exit status "
            f"{proc.returncode}); is every uid in SANDBOX_UIDS usable here?\n{tail}"
        )
    isolation = (("fsview",) if bwrap else ()) + (tuple(lines[0].get("isolation", ())) if lines else ())
    final = lines[-1] if len(lines) > 1 and proc.returncode == 0 and not outcome else {}
    status = outcome or final.get("status") or _status_from_exit(proc.returncode)
    return SandboxResult(
        passed=sum(1 for p in final.get("passed", []) if p is True),
        total=len(config["tests"]),
        status=status if status in STATUSES else "crashed",
        stdout_tail=streams["stdout"].decode(errors="replace"),
        stderr_tail=streams["stderr"].decode(errors="replace"),
        wall_s=wall_s,
        isolation=isolation,
        returncode=proc.returncode,
        pid=proc.pid,
        uid=config["uid"],
    )


def _collect(proc, report_r: int, deadline: float, max_output: int) -> tuple[str | None, dict]:
    """Read stdout, stderr and the report pipe until the child exits, the deadline passes or the
    output passes max_output bytes; keep only the tails. Returns (outcome, streams): outcome is
    "timeout", "output_limit" or None (the child exited by itself)."""
    streams = {"stdout": bytearray(), "stderr": bytearray(), "report": bytearray()}
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
    selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
    selector.register(report_r, selectors.EVENT_READ, "report")
    pidfd = open_pidfd(proc.pid)
    if pidfd is not None:
        selector.register(pidfd, selectors.EVENT_READ, "exit")  # readable once the child exits
    output, exited = 0, False
    try:
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return (None if exited else "timeout"), streams
            # Grandchildren may hold the pipes open after the child exits: once it has, take what is
            # already there (timeout 0) and stop. Without a pidfd, poll the child every 50 ms.
            wait = 0 if exited else remaining if pidfd is not None else min(remaining, 0.05)
            events = selector.select(timeout=wait)
            if not events and exited:
                break
            for key, _ in events:
                if key.data == "exit":
                    exited = True
                    selector.unregister(key.fileobj)
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffer = streams[key.data]
                buffer += chunk
                if key.data == "report":
                    if len(buffer) > _MAX_REPORT_BYTES:
                        return "output_limit", streams
                    continue
                del buffer[:-_TAIL_BYTES]
                output += len(chunk)
                if output > max_output:
                    return "output_limit", streams
            exited = exited or (pidfd is None and has_exited(proc.pid))
        return None, streams
    finally:
        selector.close()
        if pidfd is not None:
            os.close(pidfd)


def _status_from_exit(returncode: int | None) -> str:
    # The child forwards a PID-1 death by signal S as exit code 128 + S.
    sig = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else None
    return {signal.SIGXCPU: "timeout", signal.SIGXFSZ: "file_limit"}.get(sig, "crashed")


def _parse_report(data: bytes) -> list[dict]:
    lines = []
    for line in data.splitlines():
        with contextlib.suppress(ValueError):
            message = json.loads(line)
            if isinstance(message, dict):
                lines.append(message)
    return lines
