"""The process pool reward functions run in (rewards.workers), started and shut down with the run."""

from __future__ import annotations

import concurrent.futures
import signal
import threading
from contextlib import contextmanager

from grpo.rewards import make_reward_pool
from grpo.train.checkpoint import stop_signals


@contextmanager
def reward_pool(workers: int):
    """The reward process pool for `compute_rewards(pool=...)` (None when workers = 0), closed on exit.

    Ctrl-C in a terminal (or closing it) signals the whole process group. The workers are started with
    the `stop_signals` ignored (spawned children inherit that), so that only the trainer reacts: it finishes
    the step, checkpoints and stops, instead of losing the step to a broken pool.
    """
    if workers == 0:
        yield None
        return

    pool = make_reward_pool(workers)
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in stop_signals()} if main else {}
    try:
        concurrent.futures.wait([pool.submit(int) for _ in range(workers)])  # start every worker now
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    processes = list(getattr(pool, "_processes", {}).values())
    try:
        yield pool
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:  # a worker stuck in a hung reward call would otherwise block the exit
            p.join(timeout=1)
            if p.is_alive():
                p.kill()  # SIGKILL: the workers ignore SIGTERM (above)
                p.join()
