"""The code sandbox, shared by the `code_tests` reward and sandboxed tools: `run_python_sandboxed` runs a
program and its tests in a contained subprocess (`grpo.sandbox.run`, whose docstring says how)."""

from grpo.sandbox.run import STATUSES, SandboxResult, filesystem_view, run_python_sandboxed, split_tests

__all__ = ["STATUSES", "SandboxResult", "filesystem_view", "run_python_sandboxed", "split_tests"]
