"""Code-execution reward: run model-written Python against assert tests in a sandboxed subprocess.

DeepSeek-R1 (arXiv 2501.12948, section 2.2.2) scores LeetCode-style answers by running them
against predefined test cases. Here the reward is the fraction of tests passed:

    code_tests[i] = passed_i / total_i    if the run ended normally (status "ok")
                  = 0.0                   on any containment event (timeout, memory, ...)
                  = None                  if row i has no tests

Tests are Python statements, usually `assert` lines (`assert add(2, 3) == 5`); `grpo.sandbox`
runs the program and then each test in a contained subprocess (its docstring says how).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from grpo.errors import UserError
from grpo.sandbox import run_python_sandboxed, split_tests

_PYTHON_LABELS = ("python", "py", "python3", "")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_code(completion: str) -> str:
    """The program in a completion: the last ```python (or unlabelled) fenced block, else the last
    <answer>...</answer> block (or the last such fence inside it), else the whole text.

    >>> extract_code("Idea first.\\n```python\\ndef f(x):\\n    return x\\n```\\nDone.")
    'def f(x):\\n    return x\\n'
    """
    blocks = _python_blocks(completion)
    if blocks:
        return blocks[-1]
    answers = _ANSWER_TAG.findall(completion)
    if answers:
        inner = _python_blocks(answers[-1])
        return inner[-1] if inner else answers[-1]
    return completion


def _python_blocks(text: str) -> list[str]:
    """Closed fenced blocks labelled python, py, python3 or nothing, read line by line so that the
    end of a ```bash block is never taken for the start of the next block."""
    blocks, label, body = [], "", None
    for line in text.splitlines(keepends=True):
        fence = line.strip().startswith("```")
        if body is None and fence:
            label, body = line.strip()[3:].strip().lower(), []
        elif fence:
            if label in _PYTHON_LABELS:
                blocks.append("".join(body))
            body = None
        elif body is not None:
            body.append(line)
    return blocks


@dataclass
class CodeTests:
    """Reward passed / total tests of the row's `tests` column (a list of statements or a string);
    0.0 on any containment event; None for rows without tests. A dataclass so that it pickles into
    reward worker processes. Rows run `max_workers` at a time (each run is its own process)."""

    timeout_s: float = 5.0
    memory_mb: int = 512
    max_output_kb: int = 64
    max_workers: int = 2

    def __post_init__(self):
        for field in ("timeout_s", "memory_mb", "max_output_kb", "max_workers"):
            if not getattr(self, field) > 0:
                raise UserError(f"code_tests: {field} must be > 0; got {getattr(self, field)!r}")

    def __call__(
        self, prompts, completions, completion_ids=None, tests=None, **columns
    ) -> list[float | None]:
        if tests is None:
            raise UserError(
                "code_tests needs a 'tests' column (assert statements per row); columns here: "
                f"{', '.join(sorted(columns)) or 'none'}"
            )
        rows = list(zip(completions, tests, strict=True))
        if len(rows) == 1:
            return [self.score(*rows[0])]
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return list(pool.map(lambda row: self.score(*row), rows))

    def score(self, completion: str, row_tests) -> float | None:
        row_tests = split_tests(row_tests) if row_tests is not None else []
        if not row_tests:
            return None
        result = run_python_sandboxed(
            extract_code(completion),
            row_tests,
            timeout_s=self.timeout_s,
            memory_mb=self.memory_mb,
            max_output_kb=self.max_output_kb,
        )
        return result.score


def make_code_tests(
    timeout_s: float = 5.0, memory_mb: int = 512, max_output_kb: int = 64, max_workers: int = 2
) -> CodeTests:
    """Build a `code_tests` reward with the given sandbox limits."""
    return CodeTests(
        timeout_s=timeout_s, memory_mb=memory_mb, max_output_kb=max_output_kb, max_workers=max_workers
    )


code_tests = CodeTests()
"""The default code reward: 5 s, 512 MiB, 64 KiB of output per run."""
