"""Load a function named by a reference: "path/to/file.py:function" or "package.module:function".

Rewards (`grpo.rewards.loader`), tools, tool-call parsers and environments (`grpo.tools`) are all named
this way. Files are executed once per process and registered in `sys.modules` under a private name.
Functions from files come back wrapped in `FileFunction`, which pickles as (path, name) so that a worker
process of any start method (fork, spawn, forkserver) reloads the file instead of failing to import a
module that only exists in the parent. Every mistake is a `UserError` naming the reference, the file (and
line, for syntax errors) or the function; `kind` ("reward", "tool", ...) says what was being loaded.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grpo.errors import UserError


def load_function(ref: str, kind: str = "reward") -> Callable:
    """The function `ref` names: "path/to/file.py:func" (relative to the current directory, or absolute)
    or "package.module:func"."""
    where, func_name = ref.rsplit(":", 1)
    if not func_name.isidentifier():
        raise UserError(f"{kind} {ref!r}: {func_name!r} after ':' is not a valid function name")
    if where.endswith(".py") or "/" in where or os.sep in where:
        return load_file_function(where, func_name, kind)
    return _load_from_module(where, func_name, kind)


class FileFunction:
    """A function loaded from a .py file; pickles as (path, name) and reloads in workers."""

    def __init__(self, path: str, func_name: str, fn: Callable, kind: str = "reward"):
        self.path, self.func_name, self._fn, self.kind = path, func_name, fn, kind
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def __reduce__(self):
        return (load_file_function, (self.path, self.func_name, self.kind))

    def __repr__(self) -> str:
        return f"<{self.kind} function {self.func_name} from {self.path}>"


_FILE_MODULES: dict[str, Any] = {}


def load_file_function(where: str, func_name: str, kind: str = "reward") -> FileFunction:
    """The function `func_name` of the Python file `where`, executed once per process."""
    path = Path(where).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if not path.is_file():
        raise UserError(
            f"{kind} function file not found: {where} (looked for {path}; relative paths start "
            "at the current directory)"
        )
    key = str(path.resolve())
    module = _FILE_MODULES.get(key)
    if module is None:
        module = _exec_file(path, key, kind)
        _FILE_MODULES[key] = module
    fn = _get_callable(module, func_name, where=str(path))
    return FileFunction(key, func_name, fn, kind)


def _exec_file(path: Path, key: str, kind: str):
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    module_name = f"grpo_user_functions_{path.stem}_{digest}"
    try:
        source = path.read_text(encoding="utf-8")
        code = compile(source, str(path), "exec")
    except SyntaxError as exc:
        raise UserError(f"{path}:{exc.lineno}: syntax error in {kind} function file: {exc.msg}") from exc
    except (UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{path}: cannot read {kind} function file: {exc}") from exc
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # lets dataclasses, pickle and typing find the module
    try:
        exec(code, module.__dict__)
    except Exception as exc:
        del sys.modules[module_name]
        raise UserError(
            f"{path}: running the {kind} function file failed: {describe_exception(exc)}"
        ) from exc
    return module


def _load_from_module(module_name: str, func_name: str, kind: str) -> Callable:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise UserError(
                f"{kind} module {module_name!r} not found (for '{module_name}:{func_name}'); is it installed "
                "or on PYTHONPATH? For a file, write 'path/to/file.py:function'"
            ) from exc
        raise UserError(f"importing {kind} module {module_name!r} failed: {describe_exception(exc)}") from exc
    except Exception as exc:
        raise UserError(f"importing {kind} module {module_name!r} failed: {describe_exception(exc)}") from exc
    return _get_callable(module, func_name, where=module_name)


def _get_callable(module, func_name: str, where: str) -> Callable:
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
