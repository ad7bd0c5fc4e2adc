"""Resolve reward references: built-in names, "path/to/file.py:function", "package.module:function".

Files are executed once per process and registered in `sys.modules` under a private name. Functions
from files come back wrapped in `FileRewardFunction`, which pickles as (path, name) so that a worker
process of any start method (fork, spawn, forkserver) reloads the file instead of failing to import
a module that only exists in the parent. Every mistake is a `UserError` naming the reference, the file
(and line, for syntax errors) or the function.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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
    "arithmetic_accuracy": lambda: _synthetic().arithmetic_accuracy,
    "arithmetic_format": lambda: _synthetic().arithmetic_format,
    "arithmetic_steps": lambda: _synthetic().arithmetic_steps,  # per-step rewards: rewards.step_fn only
}
"""Built-in reward names -> factory; a config's `options` are passed to the factory as keywords."""

RESERVED_ARGUMENTS = ("prompts", "completions", "completion_ids")


def _synthetic():
    from grpo.data import synthetic

    return synthetic


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
    where, func_name = ref.rsplit(":", 1)
    if not func_name.isidentifier():
        raise UserError(f"reward {ref!r}: {func_name!r} after ':' is not a valid function name")
    if where.endswith(".py") or "/" in where or os.sep in where:
        fn = _load_from_file(where, func_name)
    else:
        fn = _load_from_module(where, func_name)
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


class FileRewardFunction:
    """A reward function loaded from a .py file; pickles as (path, name) and reloads in workers."""

    def __init__(self, path: str, func_name: str, fn: RewardFn):
        self.path, self.func_name, self._fn = path, func_name, fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def __reduce__(self):
        return (_load_from_file, (self.path, self.func_name))

    def __repr__(self) -> str:
        return f"<reward function {self.func_name} from {self.path}>"


_FILE_MODULES: dict[str, Any] = {}


def _load_from_file(where: str, func_name: str) -> FileRewardFunction:
    path = Path(where).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if not path.is_file():
        raise UserError(
            f"reward function file not found: {where} (looked for {path}; relative paths start "
            "at the current directory)"
        )
    key = str(path.resolve())
    module = _FILE_MODULES.get(key)
    if module is None:
        module = _exec_file(path, key)
        _FILE_MODULES[key] = module
    fn = _get_callable(module, func_name, where=str(path))
    return FileRewardFunction(key, func_name, fn)


def _exec_file(path: Path, key: str):
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    module_name = f"grpo_user_rewards_{path.stem}_{digest}"
    try:
        source = path.read_text(encoding="utf-8")
        code = compile(source, str(path), "exec")
    except SyntaxError as exc:
        raise UserError(f"{path}:{exc.lineno}: syntax error in reward function file: {exc.msg}") from exc
    except (UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{path}: cannot read reward function file: {exc}") from exc
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # lets dataclasses, pickle and typing find the module
    try:
        exec(code, module.__dict__)
    except Exception as exc:
        del sys.modules[module_name]
        raise UserError(
            f"{path}: running the reward function file failed: {describe_exception(exc)}"
        ) from exc
    return module


def _load_from_module(module_name: str, func_name: str) -> RewardFn:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise UserError(
                f"reward module {module_name!r} not found (for '{module_name}:{func_name}'); is it installed "
                "or on PYTHONPATH? For a file, write 'path/to/file.py:function'"
            ) from exc
        raise UserError(f"importing reward module {module_name!r} failed: {describe_exception(exc)}") from exc
    except Exception as exc:
        raise UserError(f"importing reward module {module_name!r} failed: {describe_exception(exc)}") from exc
    return _get_callable(module, func_name, where=module_name)


def _get_callable(module, func_name: str, where: str) -> RewardFn:
    if not hasattr(module, func_name):
        defined = sorted(
            k
            for k, v in vars(module).items()
            if callable(v) and not k.startswith("_") and getattr(v, "__module__", None) == module.__name__
        )
        raise UserError(
            f"{where} has no function {func_name!r}; it defines: {', '.join(defined) or 'nothing callable'}"
        )
    fn = getattr(module, func_name)
    if not callable(fn):
        raise UserError(f"{where}:{func_name} is a {type(fn).__name__}, not a function")
    return fn


def describe_exception(exc: BaseException) -> str:
    """'ValueError: message (at file.py:12)', naming the innermost frame of the traceback."""
    text = f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        text += f" (at {frames[-1].filename}:{frames[-1].lineno})"
    return text
