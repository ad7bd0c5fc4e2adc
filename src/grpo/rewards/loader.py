"""Resolve reward references: built-in names, "path/to/file.py:function", "package.module:function".

References to files and modules are loaded by `grpo.utils.references` (a function from a file comes back
as a `FileRewardFunction`, which pickles as (path, name) and reloads in worker processes); this module
adds the built-in rewards and a reward's options. Every mistake is a `UserError` naming the reference,
the file (and line, for syntax errors) or the function.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from grpo.data import synthetic
from grpo.errors import UserError
from grpo.rewards.code import make_code_tests
from grpo.rewards.format import (
    make_length_penalty,
    make_repetition_penalty,
    make_soft_overlong_penalty,
    r1_format_lenient,
    gsm8k_format,
    r1_format_strict,
)
from grpo.rewards.math import make_math_accuracy
from grpo.utils.references import FileFunction, load_function

FileRewardFunction = FileFunction
"""A reward function loaded from a .py file (`grpo.utils.references.FileFunction`)."""

RewardFn = Callable[..., Sequence[Any]]

BUILTIN_REWARDS: dict[str, Callable[..., RewardFn]] = {
    "math_accuracy": make_math_accuracy,
    "r1_format_strict": lambda: r1_format_strict,
    "r1_format_lenient": lambda: r1_format_lenient,
    "gsm8k_format": lambda: gsm8k_format,
    "soft_overlong_penalty": make_soft_overlong_penalty,
    "length_penalty": make_length_penalty,
    "repetition_penalty": make_repetition_penalty,
    "code_tests": make_code_tests,
    "arithmetic_accuracy": lambda: synthetic.arithmetic_accuracy,
    "arithmetic_format": lambda: synthetic.arithmetic_format,
    "arithmetic_steps": lambda: synthetic.arithmetic_steps,  # per-step rewards: rewards.step_fn only
}
"""Built-in reward names -> factory; a config's `options` are passed to the factory as keywords."""

RESERVED_ARGUMENTS = ("prompts", "completions", "completion_ids")


def load_reward_function(ref: str, options: dict | None = None) -> RewardFn:
    """Resolve a reward reference: a built-in name, "path/to/file.py:func" or "package.module:func".

    File paths are relative to the current directory (or absolute). `options` go to a built-in's
    factory, or are bound as keyword arguments of a user function (functools.partial).
    """
    options = dict(options or {})
    if not isinstance(ref, str) or not ref.strip():
        raise UserError(f"reward function reference must be a non-empty string; got {ref!r}")
    ref = ref.strip()
    if ref in BUILTIN_REWARDS:
        return _build_builtin(ref, options)
    if ":" not in ref:
        raise UserError(
            f"unknown reward {ref!r}: use a built-in ({', '.join(BUILTIN_REWARDS)}), "
            "'path/to/file.py:function' or 'package.module:function'"
        )
    fn = load_function(ref, "reward")
    if options:
        _check_options(ref, inspect.signature(fn), options)
        fn = functools.partial(fn, **options)
    return fn


def _build_builtin(name: str, options: dict) -> RewardFn:
    factory = BUILTIN_REWARDS[name]
    _check_options(name, inspect.signature(factory), options)
    return factory(**options)


def _check_options(ref: str, signature: inspect.Signature, options: dict) -> None:
    params = signature.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p in params if p not in RESERVED_ARGUMENTS]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserError(
            f"reward {ref!r}: unknown option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    missing = [
        p.name
        for p in params.values()
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in options
        and p.name not in RESERVED_ARGUMENTS
    ]
    if missing and ref in BUILTIN_REWARDS:
        raise UserError(f"reward {ref!r}: missing required option(s) {', '.join(missing)}")
