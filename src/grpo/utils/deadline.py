"""Run a Python call with a wall-clock limit, from any thread, in any process (rewards and tools use it).

math-verify's own timeouts use `signal.alarm`, which only works in the main thread of the main
interpreter: called from a trainer's worker thread it raises instead of checking. So every caller in
`grpo.rewards` disables those and uses `run_with_deadline`, which picks a mechanism that works where
it is called:

- main thread: a `SIGALRM` timer (`signal.setitimer`). It also interrupts `time.sleep` and blocking
  system calls. The previous handler and timer are restored afterwards.
- any other thread (or when a timer is already armed, e.g. nested calls): a watchdog thread raises
  the timeout inside the calling thread with `PyThreadState_SetAsyncExc`. That interrupts pure Python
  code (sympy is pure Python) but not a single long C call or a sleep; it fires again every 0.1 s
  until the call gives up.

Neither mechanism can stop a call stuck inside one C function. For hard isolation run the reward in
a process pool (`compute_rewards(..., pool=...)`), where the parent stops waiting after a grace period.

The timeout is raised as a fresh `BaseException` subclass per call, so `except Exception` blocks in
math-verify, sympy or user code cannot swallow it, and nested deadlines never catch each other's.
"""

from __future__ import annotations

import ctypes
import signal
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_REFIRE_INTERVAL_S = 0.1


class CallTimeout(Exception):
    """The call passed to `run_with_deadline` ran longer than its limit."""


class _Expired(BaseException):
    """Base of the per-call exception injected into the running code (never escapes this module)."""


def run_with_deadline(fn: Callable[[], T], timeout_s: float | None) -> T:
    """Return `fn()`, or raise `CallTimeout` once it has run `timeout_s` seconds (None: no limit).

    >>> run_with_deadline(lambda: 2 + 2, timeout_s=1.0)
    4
    """
    if timeout_s is None:
        return fn()
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
    expired = type("_ExpiredCall", (_Expired,), {})
    if _can_use_alarm():
        return _run_with_alarm(fn, timeout_s, expired)
    return _run_with_watchdog(fn, timeout_s, expired)


def _can_use_alarm() -> bool:
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        return False
    # A timer that is already armed belongs to someone else (or to an outer deadline): leave it alone.
    return signal.getitimer(signal.ITIMER_REAL)[0] == 0.0


def _run_with_alarm(fn: Callable[[], T], timeout_s: float, expired: type[_Expired]) -> T:
    def on_alarm(signum, frame):
        raise expired()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0.0)
    except expired:
        raise CallTimeout(f"call exceeded {timeout_s:g} s") from None
    finally:
        signal.signal(signal.SIGALRM, previous)


def _run_with_watchdog(fn: Callable[[], T], timeout_s: float, expired: type[_Expired]) -> T:
    target = threading.get_ident()
    lock = threading.Lock()
    done = threading.Event()
    fired = [False]

    def watch():
        wait_s = timeout_s
        while not done.wait(wait_s):
            with lock:
                if done.is_set():
                    return
                _set_async_exc(target, expired)
                fired[0] = True
            wait_s = _REFIRE_INTERVAL_S

    watchdog = threading.Thread(target=watch, name="grpo-deadline", daemon=True)
    try:
        watchdog.start()
        try:
            return fn()
        finally:
            with lock:
                done.set()
                if fired[0]:
                    # An exception set but not yet delivered must not escape into the caller's code.
                    _set_async_exc(target, None)
    except expired:
        raise CallTimeout(f"call exceeded {timeout_s:g} s") from None


def _set_async_exc(thread_id: int, exc_type: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type is not None else None
    )
