"""Code-execution reward: scoring against assert tests, and hostile programs contained and scored 0.

Every hostile program runs for real. Containment that depends on the machine (a uid of the sandbox's
own needs root; network and PID namespaces need a kernel that allows them) is checked through
`SandboxResult.isolation`, and a test that needs a mechanism that did not take effect is skipped
with the reason.
"""

import os
import socket
import sys
import tempfile
import threading
import time

import pytest

from grpo.errors import UserError
from grpo.rewards import compute_rewards, make_reward_pool, reward_spec
from grpo.rewards.code import CodeTests, code_tests, extract_code, make_code_tests
from grpo.sandbox import run as sandbox
from grpo.sandbox import run_python_sandboxed, split_tests

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the code sandbox uses Linux interfaces (/proc, namespaces)"
)

ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add('a', 'b') == 'ab'"]
# Limits small enough to keep the hostile runs quick on 2 cores.
FAST = {"timeout_s": 3.0, "memory_mb": 256}


@pytest.fixture(scope="module", params=["fsview", "no-fsview"], autouse=True)
def filesystem(request):
    """Every test runs twice: inside bubblewrap's filesystem view, and without one (today's sandbox where
    bwrap is missing). The first is skipped where bwrap is not installed or cannot run here."""
    saved = dict(sandbox._VIEW)
    if request.param == "fsview":
        sandbox._VIEW.clear()
        if sandbox.filesystem_view() is None:
            pytest.skip("bubblewrap (bwrap) is not installed or cannot build a view here")
    else:
        sandbox._VIEW["bwrap"] = None
    yield request.param
    sandbox._VIEW.clear()
    sandbox._VIEW.update(saved)


@pytest.fixture(scope="module")
def isolation(filesystem):
    return run_python_sandboxed("pass", ["assert True"]).isolation


def _needs(isolation, *mechanisms):
    if not any(m in isolation for m in mechanisms):
        pytest.skip(f"needs one of {mechanisms}; on this machine only {isolation or 'rlimits'} took effect")


def _leftover_pids(result) -> list[int]:
    """Live processes of the run's uid (when it had one) or of its session."""
    pids = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            with open(f"/proc/{name}/stat") as f:
                session = int(f.read().rsplit(")", 1)[1].split()[3])
        except (OSError, IndexError):
            continue
        if status["State"].strip().startswith("Z"):
            continue
        if int(status["Uid"].split()[0]) == result.uid or session == result.pid:
            pids.append(int(name))
    return pids


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


# --- scoring ---------------------------------------------------------------------------------


def test_correct_solution_passes_every_test():
    result = run_python_sandboxed(ADD, ADD_TESTS)
    assert (result.status, result.passed, result.total, result.score) == ("ok", 3, 3, 1.0)


def test_partially_correct_solution_scores_the_fraction_passed():
    # add() that ignores b: add(2, 3) = 2 (fails), add(-1, 1) = -1 (fails), add('a', 'b') = 'a' (fails);
    # add(0, 0) = 0 passes. 1 of 4.
    result = run_python_sandboxed("def add(a, b):\n    return a\n", ADD_TESTS + ["assert add(0, 0) == 0"])
    assert (result.status, result.passed, result.total) == ("ok", 1, 4)
    assert result.score == pytest.approx(0.25, abs=1e-12)
    assert "AssertionError" in result.stderr_tail


def test_each_test_runs_alone():
    # Test 1 raises NameError, test 2 assigns a name, test 3 must not see it: 2 of 3 pass.
    tests = ["assert undefined_name == 1", "x = 5\nassert x == 5", "assert 'x' not in dir()"]
    result = run_python_sandboxed("y = 1", tests)
    assert (result.status, result.passed) == ("ok", 2)


def test_program_errors_score_zero():
    result = run_python_sandboxed("def add(a, b)\n    return a + b\n", ADD_TESTS)
    assert (result.status, result.passed, result.score) == ("error", 0, 0.0)
    assert "SyntaxError" in result.stderr_tail
    assert run_python_sandboxed("raise ValueError('boom')", ADD_TESTS).status == "error"


def test_program_runs_as_a_module_with_empty_stdin():
    code = ADD + "if __name__ == '__main__':\n    input()\nimport collections, heapq, fractions\n"
    assert run_python_sandboxed(code, ADD_TESTS).score == 1.0
    assert run_python_sandboxed("import sys\ndata = sys.stdin.read()", ["assert data == ''"]).score == 1.0


def test_split_tests_and_extract_code():
    assert split_tests("assert f(1) == 2\n\nfor i in range(3):\n    assert f(i) == i + 1\n") == [
        "assert f(1) == 2",
        "for i in range(3):\n    assert f(i) == i + 1",
    ]
    assert split_tests(["assert True"]) == ["assert True"]
    assert split_tests('["assert f(1) == 2", "assert f(2) == 3"]') == ["assert f(1) == 2", "assert f(2) == 3"]
    with pytest.raises(ValueError, match="line 1"):
        split_tests("assert (")
    with pytest.raises(ValueError, match="does not parse"):
        split_tests(["assert ("])
    for vacuous in (["assert f(1) == 2", "'f(2) == 3'"], ["  "], "[1, 2]"):
        with pytest.raises(ValueError, match="checks nothing"):
            split_tests(vacuous)
    fenced = "First:\n```python\nx = 1\n```\nBetter:\n```python\nx = 2\n```\nThanks."
    assert extract_code(fenced) == "x = 2\n"
    assert extract_code("<think>hmm</think><answer>x = 3</answer>") == "x = 3"
    assert extract_code("<answer>\n```py\nx = 4\n```\n</answer>") == "x = 4\n"
    assert extract_code("```\nx = 5\n```") == "x = 5\n"
    assert extract_code("```bash\nrm -rf /\n```\nx = 6") == "```bash\nrm -rf /\n```\nx = 6"
    assert extract_code("```bash\nls\n```\nthen\n```python\nx = 7\n```") == "x = 7\n"
    assert extract_code("```python\nx = 8\n```\n```python\nunclosed = 1\n") == "x = 8\n"
    assert extract_code("x = 9") == "x = 9"


def test_code_tests_reward_per_row():
    completions = [
        f"Here you go:\n```python\n{ADD}```",  # 3 of 3
        "<answer>def add(a, b): return a - b</answer>",  # -1 != 5, -2 != 0, 'a' - 'b' raises: 0 of 3
        "def add(a, b): return a + b if isinstance(a, int) else None",  # the strings fail: 2 of 3
        "no tests for this row",
    ]
    tests = [ADD_TESTS, "\n".join(ADD_TESTS), ADD_TESTS, None]
    rewards = code_tests(["p"] * 4, completions, [[1]] * 4, tests=tests)
    assert rewards[:2] == [1.0, 0.0] and rewards[3] is None
    assert rewards[2] == pytest.approx(2 / 3, abs=1e-12)
    with pytest.raises(UserError, match="'tests' column"):
        code_tests(["p"], ["x"], [[1]])
    with pytest.raises(UserError, match="timeout_s"):
        make_code_tests(timeout_s=0)


def test_builtin_code_tests_runs_in_the_process_pool():
    spec = reward_spec("code_tests", options={"timeout_s": 2.0, "memory_mb": 256})
    assert isinstance(spec.fn, CodeTests) and spec.fn.timeout_s == 2.0
    completions = [ADD, "def add(a, b): return a", "while True: pass"]
    pool = make_reward_pool(num_workers=2)
    try:
        result = compute_rewards(
            [spec],
            ["p"] * 3,
            completions,
            [[1]] * 3,
            {"tests": [ADD_TESTS] * 3},
            on_error="zero",
            timeout_s=10.0,
            pool=pool,
        )
    finally:
        pool.shutdown()
    assert result.per_function["code_tests"] == [1.0, 0.0, 0.0]
    assert result.num_errors == result.num_timeouts == 0


def test_concurrent_runs_get_their_own_uid(isolation):
    _needs(isolation, "uid")
    uids = []

    def sleep_in_sandbox():
        uids.append(run_python_sandboxed("import time\ntime.sleep(0.5)", []).uid)

    threads = [threading.Thread(target=sleep_in_sandbox) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(uids)) == 3 and 0 not in uids


def test_a_sandbox_that_fails_to_set_itself_up_raises_instead_of_scoring_zero(monkeypatch):
    # E.g. setuid() refused: every run would score 0 silently; an error names the cause instead.
    monkeypatch.setattr(sandbox, "_CHILD_SOURCE", "import sys; sys.exit('setuid: Invalid argument')")
    with pytest.raises(RuntimeError, match="before the program ran(.|\n)*setuid: Invalid argument"):
        run_python_sandboxed(ADD, ADD_TESTS)


# --- hostile programs: contained, scored 0, the trainer unharmed ---------------------------------


def test_infinite_loop_times_out_and_its_directory_is_removed():
    code = "import os\nprint(os.getcwd(), flush=True)\nwhile True:\n    pass\n"
    result = run_python_sandboxed(code, ["assert True"], timeout_s=1.0)
    assert (result.status, result.score) == ("timeout", 0.0)
    assert 1.0 <= result.wall_s < 2.0
    workdir = result.stdout_tail.strip()
    assert os.path.basename(workdir).startswith("grpo-sandbox-") and not os.path.exists(workdir)
    assert _leftover_pids(result) == []


def test_files_left_in_shared_temporary_directories_are_removed(isolation):
    _needs(isolation, "uid")  # without a uid of its own, its files cannot be told from the trainer's
    code = (
        "import os, tempfile\n"
        "for d in ('/tmp', '/dev/shm'):\n"
        "    print(tempfile.mkdtemp(dir=d), tempfile.mkstemp(dir=d)[1])\n"
    )
    result = run_python_sandboxed(code, ["assert True"], **FAST)
    left = result.stdout_tail.split()
    assert result.status == "ok" and len(left) == 4
    assert not any(os.path.exists(path) for path in left)


def test_cpu_limit_stops_a_busy_program_before_the_wall_limit():
    start = time.monotonic()
    result = run_python_sandboxed("while True:\n    pass\n", ["assert True"], timeout_s=20.0, cpu_s=1)
    assert (result.status, result.score) == ("timeout", 0.0)
    assert time.monotonic() - start < 8.0  # 1 s of CPU; the slack is for a busy machine


@pytest.mark.parametrize(
    "code",
    [
        "x = bytearray(10 ** 11)",
        "blocks = []\nwhile True:\n    blocks.append(bytearray(10 ** 7))\n",
    ],
    ids=["one-huge-allocation", "growing-list"],
)
def test_memory_bomb_hits_the_memory_limit(code):
    result = run_python_sandboxed(code, ["assert True"], **FAST)
    assert (result.status, result.score) == ("memory", 0.0)


def test_fork_bomb_is_capped_and_leaves_no_process():
    result = run_python_sandboxed("import os\nwhile True:\n    os.fork()\n", ["assert True"], **FAST)
    assert (result.status, result.score) == ("process_limit", 0.0)
    assert _leftover_pids(result) == []


def test_daemon_that_leaves_the_session_is_killed(isolation):
    _needs(isolation, "uid", "pidns")
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
    result = run_python_sandboxed(code, ["assert True"], **FAST)
    assert result.status == "ok"  # a daemon is allowed; outliving the run is not
    assert _leftover_pids(result) == []


def test_huge_file_hits_the_file_size_limit():
    code = "with open('big', 'wb') as f:\n    for _ in range(1000):\n        f.write(b'x' * (1 << 20))\n"
    result = run_python_sandboxed(code, ["assert True"], max_file_mb=4, **FAST)
    assert (result.status, result.score) == ("file_limit", 0.0)
    assert "File too large" in result.stderr_tail


def test_reading_a_private_file_outside_its_directory_fails(isolation):
    _needs(isolation, "uid")
    fd, path = tempfile.mkstemp(prefix="grpo-secret-")  # mode 0600, owned by the test's uid
    try:
        os.write(fd, b"s3cr3t-token-123")
        os.close(fd)
        result = run_python_sandboxed(f"print(open({path!r}).read())", ["assert True"], **FAST)
    finally:
        os.unlink(path)
    assert (result.status, result.score) == ("error", 0.0)
    assert ("FileNotFoundError" if "fsview" in isolation else "PermissionError") in result.stderr_tail
    assert "s3cr3t" not in result.stdout_tail + result.stderr_tail


def test_a_world_readable_file_outside_the_view_cannot_be_read(isolation):
    """The sandbox's documented limit without bubblewrap: any world-readable file (here grpo's own source)
    can be read. In the filesystem view it is not there at all."""
    result = run_python_sandboxed(f"print(len(open({sandbox.__file__!r}).read()))", ["assert True"], **FAST)
    if "fsview" in isolation:
        assert (result.status, result.score) == ("error", 0.0) and "FileNotFoundError" in result.stderr_tail
    else:
        assert result.status == "ok" and int(result.stdout_tail) > 1000


def test_without_bwrap_one_notice_says_the_filesystem_is_not_isolated(monkeypatch, caplog):
    monkeypatch.setattr(sandbox, "_VIEW", {})
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    with caplog.at_level("WARNING", logger="grpo.sandbox.run"):
        assert run_python_sandboxed(ADD, ADD_TESTS).passed == 3
        assert run_python_sandboxed(ADD, ADD_TESTS).passed == 3
    notices = [r.getMessage() for r in caplog.records]
    assert (
        len(notices) == 1
        and "can read any world-readable file" in notices[0]
        and "not installed" in notices[0]
    )


def test_socket_to_a_loopback_port_reaches_no_listener(isolation):
    _needs(isolation, "netns")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'x')\n"
        result = run_python_sandboxed(code, ["assert True"], **FAST)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection is waiting
    assert (result.status, result.score) == ("error", 0.0)
    assert "unreachable" in result.stderr_tail


@pytest.mark.parametrize(
    "target, status",
    # os.getppid() is the sandbox's own supervisor (or 0 in a PID namespace, where kill(0) hits the
    # process group): the run dies with it. The trainer's pid is out of reach (EPERM, or no such pid).
    [("os.getppid()", "crashed"), ("TRAINER", "error")],
    ids=["its-parent", "the-trainer"],
)
def test_killing_the_parent_leaves_the_trainer_alive(isolation, target, status):
    _needs(isolation, "uid", "pidns")
    code = f"import os\nTRAINER = {os.getpid()}\nos.kill({target}, 9)\n"
    result = run_python_sandboxed(code, ["assert True"], **FAST)
    assert (result.status, result.score) == (status, 0.0)
    assert _leftover_pids(result) == []  # this test still runs, and nothing of the run does


def test_printing_gigabytes_is_cut_off():
    rss_before = _rss_mb()
    start = time.monotonic()
    result = run_python_sandboxed("while True:\n    print('x' * 10 ** 6)\n", ["assert True"], **FAST)
    assert (result.status, result.score) == ("output_limit", 0.0)
    assert time.monotonic() - start < 5.0  # 64 KiB take milliseconds; the slack is for a busy machine
    assert len(result.stdout_tail) <= 4096
    assert _rss_mb() - rss_before < 20
