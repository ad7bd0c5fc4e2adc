"""Tools: schemas from plain functions, the call parser, and every failure as an error observation."""

import concurrent.futures
import concurrent.futures.process
import json
import time

import pytest

from grpo.config import ToolEntry
from grpo.errors import UserError
from grpo.tools.calculator import calculator
from grpo.tools.environment import ToolEnvironment, ToolRunner, Turn
from grpo.tools.functions import Tool, load_tools, tool_schema
from grpo.tools.parser import ToolCall, load_parser, parse_json_tags

TOOLS = '''
import time


def add(a: int, b: int = 1) -> int:
    """Add two integers."""
    return a + b


def boom(x: str) -> str:
    """Always fails."""
    raise ValueError(f"cannot handle {x}")


def slow(seconds: float) -> str:
    """Sleep, then answer."""
    time.sleep(seconds)
    return "woke"


def big(n: int) -> str:
    """A long output."""
    return "x " * n


def lines(n: int) -> str:
    """n lines of output."""
    return "\\n".join(f"line {i}" for i in range(n))
'''


@pytest.fixture(scope="module")
def tool_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tools") / "my_tools.py"
    path.write_text(TOOLS)
    return path


def call(name: str, **arguments) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def make_env(tool_file, pool=None, timeout_s=1.0, max_tokens=20, sandbox=False,
             count=lambda s: len(s.split()),
             names=("add", "boom", "slow", "big")):
    tools = load_tools([ToolEntry(f"{tool_file}:{n}", sandbox=sandbox) for n in names])
    return ToolEnvironment(ToolRunner(tools, timeout_s, pool), parse_json_tags, count, max_tokens)


def test_schema_from_signature_and_docstring(tool_file):
    (tool,) = load_tools([ToolEntry(f"{tool_file}:add")])
    assert tool.name == "add" and tool.source == str(tool_file.resolve())
    assert tool.schema == {"type": "function", "function": {
        "name": "add", "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a"]}}}

    def f(x: list[int], mode: "str | None" = None, *, flag: bool = False, **rest) -> str:
        """Line one.

        More."""

    params = tool_schema(f)["function"]
    assert params["description"] == "Line one.\n\nMore."
    assert params["parameters"]["properties"] == {"x": {"type": "array"}, "mode": {"type": "string"},
                                                  "flag": {"type": "boolean"}}
    assert params["parameters"]["required"] == ["x"]


def test_builtin_calculator_and_bad_references(tool_file):
    (tool,) = load_tools([ToolEntry("calculator")])
    assert tool.name == "calculator" and tool.fn("347*29") == "10063" and tool.fn("(2+3)**2/4") == "6.25"
    with pytest.raises(ValueError, match="unsupported"):
        calculator("__import__('os')")
    with pytest.raises(ValueError, match="too large"):
        calculator("2**100000")
    with pytest.raises(UserError, match="unknown tool 'abacus'"):
        load_tools([ToolEntry("abacus")])
    with pytest.raises(UserError, match="has no function 'nope'"):
        load_tools([ToolEntry(f"{tool_file}:nope")])
    with pytest.raises(UserError, match="two tools are named 'add'"):
        load_tools([ToolEntry(f"{tool_file}:add"), ToolEntry(f"{tool_file}:add")])


def test_parser_reads_calls_in_order_and_reports_malformed_ones():
    text = ("think <tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 2}}</tool_call> then "
            "<tool_call>{\"name\": \"add\", \"arguments\": \"{\\\"a\\\": 5}\"}</tool_call>")
    assert parse_json_tags(text) == [ToolCall("add", {"a": 2}), ToolCall("add", {"a": 5})]
    assert parse_json_tags("no call here") == []
    assert parse_json_tags('<tool_call>{"name": 3}</tool_call>')[0].error.startswith(
        "malformed tool call: " "expected"
    )
    assert (
        parse_json_tags('<tool_call>{"name": "a"')[0].error == "malformed tool call: no closing </tool_call>"
    )
    assert parse_json_tags("<tool_call>{\"name\": \"a\", \"arguments\": [1]}</tool_call>")[0].error == \
        'malformed tool call: "arguments" must be a JSON object'
    assert load_parser("json_tags") is parse_json_tags


def test_a_turn_without_a_call_ends_the_episode(tool_file):
    assert make_env(tool_file).step("<answer>7</answer>") == Turn(None)


def test_results_and_each_failure_become_observations(tool_file):
    env = make_env(tool_file)
    turn = env.step(call("add", a=2, b=40) + call("add", a=1))
    assert [m["content"] for m in turn.messages] == ["42", "2"] and (turn.tool_calls, turn.tool_errors) == (
        2,
        0,
    )
    assert turn.messages[0] == {"role": "tool", "name": "add", "content": "42"}
    cases = {
        "<tool_call>{\"name\": add}</tool_call>": "error: malformed tool call: not JSON (Expecting value at "
                                                  "char 9)",
        call("abacus", x=1): "error: unknown tool 'abacus' (available: add, boom, slow, big)",
        call("boom", x="it"): "error: boom raised ValueError: cannot handle it",
        call("add", c=1): "error: add raised TypeError: add() got an unexpected keyword argument 'c'",
        call("slow", seconds=5): "error: slow timed out after 1 s",
        call("big", n=25): "error: big returned 25 tokens, more than rollout.max_observation_tokens=20",
    }
    for text, expected in cases.items():
        t0 = time.perf_counter()
        turn = env.step(text)
        assert [m["content"] for m in turn.messages] == [expected]
        assert (turn.tool_calls, turn.tool_errors) == (1, 1)
        assert time.perf_counter() - t0 < 3
    assert env.step(call("big", n=20)).messages[0]["content"] == "x " * 20  # at the cap: kept


@pytest.mark.slow
def test_tools_in_the_reward_worker_pool_time_out_without_blocking(tool_file):
    from grpo.rewards import make_reward_pool

    pool = make_reward_pool(2)
    try:
        env = make_env(tool_file, pool=pool)
        t0 = time.perf_counter()
        turn = env.step(call("slow", seconds=30) + call("add", a=1, b=2) + call("boom", x="y"))
        assert [m["content"] for m in turn.messages] == ["error: slow timed out after 1 s", "3",
                                                         "error: boom raised ValueError: cannot handle y"]
        assert time.perf_counter() - t0 < 10
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


@pytest.mark.slow
def test_a_sandboxed_tool_runs_in_a_fresh_process(tool_file):
    # generous: a loaded CI machine starts Python slowly
    env = make_env(tool_file, timeout_s=5.0, sandbox=True)
    turn = env.step(call("add", a=2, b=3) + call("boom", x="z") + call("slow", seconds=60))
    assert [m["content"] for m in turn.messages] == ["5", "error: boom raised ValueError: cannot handle z",
                                                     "error: slow timed out after 5 s"]


def test_a_dead_worker_is_an_error_observation():
    class Broken(concurrent.futures.Executor):
        def submit(self, fn, *args, **kwargs):
            future = concurrent.futures.Future()
            future.set_exception(concurrent.futures.process.BrokenProcessPool("a worker died"))
            return future

    env = ToolEnvironment(ToolRunner([Tool("add", lambda a: a, {})], 1.0, Broken()), parse_json_tags)
    assert env.step(call("add",
                         a=1)).messages[0]["content"] == "error: add raised BrokenProcessPool: a worker died"


def test_error_observations_are_held_to_max_observation_tokens(tool_file):
    env = make_env(tool_file)  # 20 tokens, a token per word
    text = env.step(call("boom", x=" ".join(["word"] * 50))).messages[0]["content"]
    # "error: boom raised ValueError: cannot handle" (6 words), then 14 of the 50, the last with "..."
    assert text == "error: boom raised ValueError: cannot handle " + "word " * 13 + "word..."
    by_chars = make_env(tool_file, max_tokens=64, count=lambda s: (len(s) + 3) // 4)  # ~4 characters a token
    text = by_chars.step(call("a" * 3000, x=1)).messages[0]["content"]
    assert text == "error: unknown tool '" + "a" * (256 - 24) + "..." and len(text) == 256


@pytest.mark.slow
def test_a_sandboxed_tool_returns_every_line_and_refuses_an_oversized_result(tool_file):
    env = make_env(tool_file, timeout_s=5.0, sandbox=True, names=("lines", "big"))
    turn = env.step(call("lines", n=3) + call("big", n=2100))  # 4,200 characters: over the 4,000 bytes
    assert [m["content"] for m in turn.messages] == [
        "line 0\nline 1\nline 2", "error: big raised ValueError: result longer than 4000 bytes as JSON"]


@pytest.mark.slow
def test_time_queued_for_a_pooled_worker_does_not_count_against_the_timeout(tool_file):
    """One worker, 16 rows each calling a 0.4 s tool at once: the last call finishes 6.4 s after submission,
    past the 1 s timeout plus the 5 s grace, yet it ran for 0.4 s, so every call answers."""
    from grpo.rewards import make_reward_pool
    from grpo.rollout.multiturn import step_environments

    pool = make_reward_pool(1)
    try:
        envs = [make_env(tool_file, pool=pool) for _ in range(16)]
        turns = step_environments(envs, list(range(16)), [call("slow", seconds=0.4)] * 16, parallel=True)
        assert [t.messages[0]["content"] for t in turns] == ["woke"] * 16
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
