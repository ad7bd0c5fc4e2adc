"""The child side of the code sandbox (`grpo.sandbox.run`): isolate, limit, run, report.

Not imported at run time: `grpo.sandbox.run` passes this file's text to
`python -I -S -c <text>`, so it uses the standard library only. The parent writes one JSON object
to stdin (the code, the tests and the limits, see `run_python_sandboxed`); this process then

1. moves into new network and PID namespaces when the kernel lets it (as root directly, otherwise
   inside a new user namespace),
2. when root, drops to the sandbox uid (a uid no account and no other sandbox uses), with no
   supplementary groups and `PR_SET_NO_NEW_PRIVS`,
3. sets the resource limits (CPU, address space, processes, file size, open files, no core dumps),
4. writes `{"isolation": [...]}` as the first line of the report pipe, before any untrusted code runs,
5. runs the program, then each test in turn, in a fork that is PID 1 of the new PID namespace (its
   exit kills everything it started), or in this process when there is no PID namespace,
6. writes `{"status": ..., "passed": [...]}` as the last report line and exits.

The program runs as the module `solution` (so `if __name__ == "__main__":` blocks do not run) and
each test is executed in a copy of that module's namespace. The program runs in the same
interpreter as the tests, so it could forge its own report; see docs/reliability.md.
"""

import contextlib
import ctypes
import errno
import gc
import json
import os
import resource
import signal
import stat
import sys
import traceback
import types

CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38
_MAX_OPEN_FILES = 64

_libc = ctypes.CDLL(None, use_errno=True)


def main() -> None:
    config = json.loads(sys.stdin.buffer.read())
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the program reads an empty stdin
    report_fd = config["report_fd"]
    isolation = _isolate(config)
    _limit(config, uid_dropped="uid" in isolation)
    _report(report_fd, {"isolation": isolation})
    if "pidns" not in isolation:
        _run_and_report(config, report_fd)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()  # the first process forked after unshare(CLONE_NEWPID) is PID 1 there
    if pid == 0:
        _run_and_report(config, report_fd)
    _, wait_status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(wait_status)
    if code == -signal.SIGKILL and usage.ru_utime + usage.ru_stime >= config["cpu_s"]:
        code = -signal.SIGXCPU  # the program replaced the SIGXCPU handler; the hard limit ended it
    os._exit(128 - code if code < 0 else code)  # killed by signal S -> exit code 128 + S


def _isolate(config: dict) -> list[str]:
    """Enter namespaces and drop privileges; return the mechanisms that took effect."""
    isolation = []
    if os.geteuid() != 0 and _unshare(CLONE_NEWUSER):
        _map_own_ids()
        isolation.append("userns")
    if not config["network"] and _unshare(CLONE_NEWNET):
        isolation.append("netns")  # a new namespace has only a loopback device, and it is down
    if _unshare(CLONE_NEWPID):
        isolation.append("pidns")
    uid = config["uid"]
    if os.geteuid() == 0 and uid is not None:
        prefix_fd = _keep_stdlib_reachable()
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)  # from root to a non-zero uid: every capability is dropped
        if prefix_fd is not None:
            _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # setuid cleared it; /proc/self/fd needs it
        isolation.append("uid")
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries (su, sudo) gain nothing
    return isolation


def _unshare(flag: int) -> bool:
    return _libc.unshare(flag) == 0


def _map_own_ids() -> None:
    """Map our own uid and gid into the new user namespace; unmapped ids cannot create files."""
    uid, gid = os.geteuid(), os.getegid()
    for name, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _keep_stdlib_reachable() -> int | None:
    """If the sandbox uid cannot reach the standard library (Python installed under /root, mode 0700),
    keep a handle on its directory opened while still root, and import through /proc/self/fd/N."""
    prefix = sys.base_prefix
    path = prefix
    while True:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            break
        if path == os.path.dirname(path):
            return None  # every directory down to the prefix is searchable by others
        path = os.path.dirname(path)
    fd = os.open(prefix, os.O_PATH | os.O_DIRECTORY)
    alias = f"/proc/self/fd/{fd}"

    def remap(p):
        return alias + p[len(prefix) :] if p == prefix or p.startswith(prefix + os.sep) else p

    sys.path[:] = [remap(p) for p in sys.path]
    for module in list(sys.modules.values()):  # packages import their submodules via __path__
        if isinstance(getattr(module, "__path__", None), list):
            module.__path__[:] = [remap(p) for p in module.__path__]
    sys.path_importer_cache.clear()
    return fd


def _limit(config: dict, uid_dropped: bool) -> None:
    # RLIMIT_NPROC counts every task of the real uid. A dropped uid is ours alone; otherwise the
    # user's existing tasks count too, so the limit is set that far above them.
    nproc = config["max_procs"] if uid_dropped else _count_tasks(os.getuid()) + config["max_procs"]
    cpu_s = config["cpu_s"]
    for limit, value in (
        (resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)),  # SIGXCPU at the soft limit, SIGKILL at the hard
        (resource.RLIMIT_AS, (config["memory_mb"] << 20,) * 2),
        (resource.RLIMIT_NPROC, (nproc, nproc)),
        (resource.RLIMIT_FSIZE, (config["max_file_mb"] << 20,) * 2),
        (resource.RLIMIT_NOFILE, (_MAX_OPEN_FILES, _MAX_OPEN_FILES)),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(limit, value)


def _count_tasks(uid: int) -> int:
    count = 0
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields["Threads"])
        except (OSError, ValueError, KeyError):
            continue
    return count


def _run_and_report(config: dict, report_fd: int) -> None:
    """Run the program and then every test; report; exit. Never returns."""
    me = os.getpid()
    # A PID-namespace init ignores signals it has no handler for, SIGXCPU included.
    signal.signal(signal.SIGXCPU, lambda *_: os._exit(128 + signal.SIGXCPU))
    solution = types.ModuleType("solution")
    sys.modules["solution"] = solution
    status = _run_source(config["code"], "<solution>", solution.__dict__, me)
    passed = []
    if status == "ok":
        for i, test in enumerate(config["tests"]):
            test_status = _run_source(test, f"<test {i}>", dict(solution.__dict__), me)
            passed.append(test_status == "ok")
            if test_status in ("memory", "file_limit", "process_limit"):
                status = test_status
                break
    if status == "memory":
        solution.__dict__.clear()  # free the bomb so that the report can be written
        gc.collect()
    with contextlib.suppress(BaseException):  # the program may have closed or replaced them
        sys.stdout.flush()
        sys.stderr.flush()
    _report(report_fd, {"status": status, "passed": passed})
    os._exit(0)


def _run_source(source: str, filename: str, namespace: dict, me: int) -> str:
    """exec one source text; return "ok", "error" or the limit that stopped it."""
    try:
        exec(compile(source, filename, "exec"), namespace)  # noqa: S102  (running it is the point)
        status = "ok"
    except SystemExit as exc:
        status = "ok" if exc.code in (None, 0) and filename == "<solution>" else "error"
    except BaseException as exc:  # noqa: BLE001  (whatever the program raises is its result)
        if os.getpid() != me:
            os._exit(0)
        status = _classify(exc)
        if status != "memory":  # printing a traceback needs memory the bomb may still hold
            traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)  # from the program's frame
    if os.getpid() != me:
        os._exit(0)  # a process the program forked has finished the program: it must not report
    return status


def _classify(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:  # Python ignores SIGXFSZ
        return "file_limit"
    if isinstance(exc, BlockingIOError) or "can't start new thread" in str(exc):
        return "process_limit"  # fork() or a new thread hit RLIMIT_NPROC
    return "error"


def _report(fd: int, message: dict) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


if __name__ == "__main__":
    main()
