"""Multi-turn environments: a dataset row starts one, each policy turn steps it.

    env = make_env(row)              # one fresh environment per trajectory (row: the dataset row)
    turn = env.step(completion)      # completion: the text of the policy's last turn
    turn.messages                    # what comes back, as chat messages; None: the episode is over
    turn.reward                      # optional per-turn reward, summed into the trajectory's reward

Any object with that `step` is an environment (`rollout.environment: my_env.py:MyEnv`, called with the
row). `ToolEnvironment` is the built-in one for function calling: it parses the turn's calls
(`grpo.tools.parser`), runs each tool, and answers with one `tool` message per call; a turn without a
call ends the episode (the model has answered). Every failure becomes the text of that tool message,
which the model reads on its next turn, never an exception:

    malformed call   error: malformed tool call: not JSON (Expecting value at char 9)
    unknown tool     error: unknown tool 'calc' (available: calculator)
    raised           error: calculator raised ValueError: not an arithmetic expression: '2+'
    timeout          error: calculator timed out after 5 s
    oversized        error: calculator returned 812 tokens, more than rollout.max_observation_tokens=64

An error message is held to `rollout.max_observation_tokens` too: one that is longer (a tool that raises
with a long message, a 3,000-character unknown tool name) is cut to that many tokens (`fit_tokens`).

Calls run where `ToolRunner` says: in the reward worker pool (`rewards.workers > 0`: separate spawned
processes, each call limited to the timeout inside the worker; the parent gives up on a call only when
the pool has finished nothing for the timeout plus a grace period, so time spent queued behind other
calls does not count against `tool_timeout_s`), in the training process under the same deadline
(`rewards.workers = 0`), or, for a
tool with `sandbox: true`, in the code sandbox (grpo.sandbox: a fresh process with rlimits and,
where the kernel allows, no network); a sandboxed tool's result comes back whole (any number of lines,
JSON-encoded on one marked line of its output), or, past `SANDBOX_RESULT_BYTES`, as an error saying so.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from grpo.errors import UserError
from grpo.sandbox import run_python_sandboxed
from grpo.tools.functions import Tool
from grpo.tools.parser import ToolCall
from grpo.utils.deadline import CallTimeout, run_with_deadline
from grpo.utils.references import load_function

POOL_GRACE_S = 5.0
"""Extra seconds the parent waits for a pooled call beyond the worker's own limit."""

SANDBOX_RESULT_BYTES = 4000
"""The most bytes of a sandboxed tool's JSON-encoded result (the sandbox keeps the last 4 KiB of output)."""

_RESULT_MARK = "GRPO_TOOL_RESULT:"


@dataclass
class Turn:
    """What an environment answers to one policy turn."""

    messages: list[dict] | None
    """Chat messages ({role, content}) appended after the policy's turn; None: the episode is over."""
    reward: float = 0.0
    """This turn's reward (summed over the turns into the trajectory's `environment` reward)."""
    tool_calls: int = 0
    """Tool calls the turn made (metrics tools/calls)."""
    tool_errors: int = 0
    """Of which failed: malformed, unknown tool, raised, timed out, oversized (metrics tools/errors)."""


class Environment(Protocol):
    def step(self, completion: str) -> Turn: ...


def load_environment(ref: str) -> Callable[[dict], Environment]:
    """The environment factory `ref` names ('file.py:Factory' or 'module:Factory'), called with each row."""
    if ":" not in ref:
        raise UserError(f"rollout.environment: {ref!r} is not a reference: write 'path/to/file.py:Factory' "
                        "or 'package.module:Factory'")
    return load_function(ref, "environment")


def call_tool(fn: Callable[..., Any], arguments: dict, timeout_s: float | None) -> tuple[str, str]:
    """(status, text) of fn(**arguments) under a deadline: ('ok', result as text), ('timeout', ''), or
    ('error', 'ValueError: ...'). Runs in a pool worker or in-process; nothing in it raises."""
    try:
        out = run_with_deadline(lambda: fn(**arguments), timeout_s)
        return "ok", out if isinstance(out, str) else json.dumps(out, default=str)
    except CallTimeout:
        return "timeout", ""
    except Exception as e:  # noqa: BLE001 (the model sees what went wrong)
        return "error", f"{type(e).__name__}: {e}"


def _call_sandboxed(tool: Tool, arguments: dict, timeout_s: float | None) -> tuple[str, str]:
    """The call in the code sandbox: the tool's file, then one line printing the result as JSON."""
    if tool.source is None:
        return "error", "RuntimeError: a sandboxed tool must come from a .py file"
    with open(tool.source, encoding="utf-8") as f:
        code = f.read()
    code += (
        f"\nimport json as _json\n_out = {tool.fn.__name__}(**_json.loads({json.dumps(arguments)!r}))\n"
        "_out = _json.dumps(_out if isinstance(_out, str) else _json.dumps(_out, default=str))\n"
        f"print({_RESULT_MARK!r} + (_out if len(_out.encode()) <= {SANDBOX_RESULT_BYTES} else 'null'))\n"
    )
    r = run_python_sandboxed(code, ["pass"], timeout_s=timeout_s or 5.0)
    if r.status == "timeout":
        return "timeout", ""
    if r.status != "ok":
        last = (r.stderr_tail.strip().splitlines() or [r.status])[-1]
        return "error", last
    return sandboxed_result(r.stdout_tail)


def sandboxed_result(stdout: str) -> tuple[str, str]:
    """(status, text) from a sandboxed call's output: the JSON string on its last marked line, whole; an
    error where the result was over SANDBOX_RESULT_BYTES (marked `null`) or the mark is missing.

    >>> sandboxed_result('noise\\nGRPO_TOOL_RESULT:"a\\\\nb"\\n')
    ('ok', 'a\\nb')
    """
    line = next((x for x in reversed(stdout.splitlines()) if x.startswith(_RESULT_MARK)), None)
    if line is None:
        return "error", "RuntimeError: the sandboxed tool's result line is missing from its output"
    text = json.loads(line[len(_RESULT_MARK):])
    if text is None:
        return "error", f"ValueError: result longer than {SANDBOX_RESULT_BYTES} bytes as JSON"
    return "ok", text


_LAST_DONE: "weakref.WeakKeyDictionary[concurrent.futures.Executor, float]" = weakref.WeakKeyDictionary()
"""Per pool: when a call it ran last finished (time.monotonic); the clock of `ToolRunner.result`."""
_LOCK = threading.Lock()


def _mark_done(pool, _future) -> None:
    with _LOCK:
        _LAST_DONE[pool] = time.monotonic()


class ToolRunner:
    """Runs tool calls: in `pool` (a process pool, the reward workers) or in-process, or in the sandbox."""

    def __init__(self, tools: list[Tool], timeout_s: float | None,
                 pool: concurrent.futures.Executor | None = None):
        self.tools = {t.name: t for t in tools}
        self.timeout_s, self.pool = timeout_s, pool

    def submit(self, tool: Tool, arguments: dict) -> concurrent.futures.Future:
        if tool.sandbox:
            return _immediate(lambda: _call_sandboxed(tool, arguments, self.timeout_s))
        if self.pool is not None:
            future = self.pool.submit(call_tool, tool.fn, arguments, self.timeout_s)
            future.submitted = time.monotonic()
            future.add_done_callback(lambda f, pool=self.pool: _mark_done(pool, f))
            return future
        return _immediate(lambda: call_tool(tool.fn, arguments, self.timeout_s))

    def result(self, future: concurrent.futures.Future) -> tuple[str, str]:
        """The call's (status, text). A pooled call limits itself to timeout_s inside its worker; the parent
        gives up on it (a hung worker) only once neither it was submitted nor any call of the pool has
        finished for timeout_s + POOL_GRACE_S: a call queued behind others is not timed out for waiting."""
        try:
            if self.timeout_s is None or not hasattr(future, "submitted"):
                return future.result()
            while True:
                with _LOCK:
                    since = max(future.submitted, _LAST_DONE.get(self.pool, 0.0))
                left = since + self.timeout_s + POOL_GRACE_S - time.monotonic()
                try:
                    return future.result(timeout=max(left, 0.0))
                except concurrent.futures.TimeoutError:
                    with _LOCK:
                        progressed = _LAST_DONE.get(self.pool, 0.0) > since
                    if not progressed:
                        future.cancel()
                        return "timeout", ""
        except Exception as e:  # noqa: BLE001 (a worker died, or the arguments did not pickle)
            return "error", f"{type(e).__name__}: {e}"


def _immediate(fn) -> concurrent.futures.Future:
    future = concurrent.futures.Future()
    future.set_result(fn())
    return future


@dataclass
class ToolEnvironment:
    """Function calling: each policy turn's calls are run and answered with one `tool` message each; a turn
    without a call ends the episode."""

    runner: ToolRunner
    parse: Callable[[str], list[ToolCall]]
    count_tokens: Callable[[str], int] = len
    """Length of a result in tokens (for max_observation_tokens)."""
    max_observation_tokens: int | None = None

    def step(self, completion: str) -> Turn:
        calls = self.parse(completion)
        if not calls:
            return Turn(None)
        pending = []
        for call in calls:  # submitted together: pooled calls run in parallel
            tool = self.runner.tools.get(call.name)
            if call.error is None and tool is not None:
                pending.append(self.runner.submit(tool, call.arguments))
            else:
                pending.append(None)
        messages, errors = [], 0
        for call, future in zip(calls, pending):
            text, failed = self.answer(call, future)
            errors += failed
            messages.append({"role": "tool", "name": call.name, "content": text})
        return Turn(messages, tool_calls=len(calls), tool_errors=errors)

    def answer(self, call: ToolCall, future) -> tuple[str, bool]:
        """(text, failed): the tool message's text for one call, its result or the error the model reads
        (held to max_observation_tokens like a result: `fit_tokens`)."""
        if call.error is not None:
            return self.fit(f"error: {call.error}"), True
        if future is None:
            available = ", ".join(self.runner.tools) or "none"
            return self.fit(f"error: unknown tool {call.name!r} (available: {available})"), True
        status, text = self.runner.result(future)
        if status == "timeout":
            return self.fit(f"error: {call.name} timed out after {self.runner.timeout_s:g} s"), True
        if status == "error":
            return self.fit(f"error: {call.name} raised {text}"), True
        if self.max_observation_tokens is not None:
            n = self.count_tokens(text)
            if n > self.max_observation_tokens:
                return (f"error: {call.name} returned {n} tokens, more than "
                        f"rollout.max_observation_tokens={self.max_observation_tokens}"), True
        return text, False

    def fit(self, text: str) -> str:
        """An error message cut to max_observation_tokens (`fit_tokens`)."""
        return fit_tokens(text, self.count_tokens, self.max_observation_tokens)


def fit_tokens(text: str, count_tokens: Callable[[str], int], limit: int | None) -> str:
    """The longest prefix of `text` (ending in "...") that count_tokens holds to `limit` tokens; `text`
    itself if it fits. A binary search over the prefix length, so log2(len(text)) counts.

    >>> fit_tokens("error: unknown tool 'a b c d'", lambda s: len(s.split()), 4)
    "error: unknown tool 'a..."
    """
    if limit is None or count_tokens(text) <= limit:
        return text
    lo, hi = 0, len(text)  # text[:lo] + "..." fits; text[:hi] + "..." does not (or hi is the whole text)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count_tokens(text[:mid] + "...") <= limit else (lo, mid)
    return text[:lo] + "..." if count_tokens(text[:lo] + "...") <= limit else ""
