"""The weighted sum of reward functions (DeepSeek-R1: reward = sum of rewards), errors, timeouts.

References ("path/to/file.py:function", built-in names) are resolved by `grpo.rewards.loader`;
`load_reward_function` is re-exported here.

Contract for every reward function (TRL-like keyword call):

    fn(prompts: list[str], completions: list[str], completion_ids: list[list[int]], **columns)
        -> list[float | None]

`columns` holds every dataset column for these rows as lists (e.g. `answer=[...]`). None means "not
applicable to this sample". For sample i:

    total[i] = sum over functions f with r_f[i] not None of  weight_f * r_f[i]
             = NaN if every function returned None for sample i

A function that raises: with on_error="raise" a `UserError` names the function, the sample's prompt
and completion and the original error; with on_error="zero" the sample scores 0.0 for that function
and is counted in `RewardResult.num_errors`. A timeout (`timeout_s`) is handled the same way and
counted in `num_timeouts`. When a batched call raises, the function is called again one sample at a
time to find the sample(s) at fault, so one bad sample never costs the others their reward.

With a process pool (`make_reward_pool`), functions run in worker processes, one call per sample
(lists of length 1), each limited to `timeout_s` inside the worker.

`reward_inputs` is the one builder of these arguments for G completions of each dataset row (every
per-row value repeated G times, so that position i of every list describes completion i): training,
held-out accuracy, `grpo eval`, process supervision and the reward model's labeller all use it.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import math
import multiprocessing
import numbers
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from grpo.errors import UserError
from grpo.rewards.loader import BUILTIN_REWARDS, RESERVED_ARGUMENTS, RewardFn, load_reward_function
from grpo.utils.deadline import CallTimeout, run_with_deadline
from grpo.utils.references import describe_exception

logger = logging.getLogger(__name__)

_SHOWN_CHARS = 200
# Extra seconds the parent waits for a pooled call beyond the worker's own limit (see _collect_from_pool).
_POOL_GRACE_S = 5.0


@dataclass
class RewardSpec:
    """One reward function in the weighted sum."""

    name: str
    """Label in metrics and error messages (unique among the specs)."""
    fn: RewardFn
    """Callable following the reward-function contract (module docstring)."""
    weight: float = 1.0
    """Multiplier of this function's rewards in the total."""
    in_pool: bool = True
    """Run in the process pool when `compute_rewards` is given one (False: always in-process)."""


@dataclass
class RewardResult:
    """Rewards for one batch of completions."""

    per_function: dict[str, list[float]]
    """Spec name -> reward per sample, NaN where the function returned None."""
    total: list[float]
    """Weighted sum over functions, ignoring None; NaN if every function returned None."""
    num_errors: int = 0
    """(function, sample) pairs scored 0.0 because the function raised (on_error="zero")."""
    num_timeouts: int = 0
    """(function, sample) pairs scored 0.0 because the call ran past timeout_s (on_error="zero")."""
    failures_per_function: dict[str, int] = field(default_factory=dict)
    """Spec name -> errors + timeouts of that function in this batch."""


class RewardInputs(NamedTuple):
    """The arguments of reward-function calls for a batch of completions (the contract above)."""

    prompts: list[str]
    """The prompt of each completion."""
    completions: list[str]
    """The completion texts (special tokens removed)."""
    completion_ids: list[list[int]]
    """Each completion's token ids, unpadded (EOS included)."""
    columns: dict[str, list]
    """Every other dataset column, one value per completion."""

    def kwargs(self) -> dict:
        """The keyword arguments of one reward-function call."""
        return {"prompts": self.prompts, "completions": self.completions,
                "completion_ids": self.completion_ids,
                **self.columns}


def reward_inputs(rows: list[dict], completions: list[str], completion_ids: list[list[int]],
                  G: int = 1) -> RewardInputs:
    """The inputs for `G` consecutive completions of each row of `rows`.

    >>> reward_inputs([{"prompt": "1+1=", "answer": "2"}], ["2", "3"], [[7, 0], [8, 0]], G=2).kwargs()
    {'prompts': ['1+1=', '1+1='], 'completions': ['2', '3'], 'completion_ids': [[7, 0],
    [8, 0]], 'answer': ['2', '2']}
    """
    columns = {k: [x.get(k) for x in rows for _ in range(G)] for k in rows[0]
               if k != "prompt"} if rows else {}
    return RewardInputs([x["prompt"] for x in rows for _ in range(G)], completions, completion_ids, columns)


def reward_spec(
    ref: str, weight: float = 1.0, name: str | None = None, options: dict | None = None
) -> RewardSpec:
    """Build a `RewardSpec` from a config entry; `name` defaults to the built-in or function name."""
    fn = load_reward_function(ref, options)
    if name is None:
        name = ref if ref in BUILTIN_REWARDS else ref.rsplit(":", 1)[-1]
    if not isinstance(weight, numbers.Real) or isinstance(weight, bool) or not math.isfinite(weight):
        raise UserError(f"reward {name!r}: weight must be a finite number; got {weight!r}")
    return RewardSpec(name=name, fn=fn, weight=float(weight))


def make_reward_pool(num_workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A process pool for `compute_rewards(pool=...)`. Spawned workers: safe next to torch threads."""
    if not isinstance(num_workers, int) or num_workers < 1:
        raise UserError(f"reward pool: number of workers must be an integer >= 1; got {num_workers!r}")
    return concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=multiprocessing.get_context("spawn")
    )


def compute_rewards(
    specs: Sequence[RewardSpec],
    prompts: list[str],
    completions: list[str],
    completion_ids: list[list[int]],
    columns: dict[str, list],
    on_error: str = "raise",
    timeout_s: float | None = None,
    pool: concurrent.futures.Executor | None = None,
) -> RewardResult:
    """Score every completion with every reward function and sum them with their weights.

    Worked example, weights 1.0 (accuracy) and 0.5 (format), accuracy says None for sample 1:
        accuracy [1.0, None], format [1.0, 0.0] -> total [1.0 + 0.5, 0.5 * 0.0] = [1.5, 0.0]
    """
    n = len(completions)
    _check_batch(specs, prompts, completions, completion_ids, columns, on_error, timeout_s)
    batch = _Batch(prompts, completions, completion_ids, columns)
    tally = _Tally(on_error=on_error, timeout_s=timeout_s)
    pooled = [
        s for s in specs if pool is not None and s.in_pool and not getattr(s.fn, "in_process_only", False)
    ]
    # Submit the pooled functions first so they run while the in-process ones are computed.
    futures = {s.name: _submit_to_pool(pool, s, batch, timeout_s) for s in pooled}
    raw: dict[str, list[float | None]] = {}
    try:
        for spec in specs:
            if spec.name not in futures:
                raw[spec.name] = _score_in_process(spec, batch, tally)
        for spec in pooled:
            raw[spec.name] = _collect_from_pool(spec, futures[spec.name], batch, tally, pool)
    except BaseException:
        for pending in futures.values():
            for future in pending:
                future.cancel()  # do not leave queued calls of an aborted batch in the pool
        raise

    total = []
    for i in range(n):
        terms = [spec.weight * raw[spec.name][i] for spec in specs if raw[spec.name][i] is not None]
        total.append(math.fsum(terms) if terms else math.nan)
    per_function = {spec.name: [math.nan if v is None else v for v in raw[spec.name]] for spec in specs}
    return RewardResult(
        per_function=per_function,
        total=total,
        num_errors=tally.num_errors,
        num_timeouts=tally.num_timeouts,
        failures_per_function={spec.name: tally.failures.get(spec.name, 0) for spec in specs},
    )


@dataclass
class _Batch:
    prompts: list[str]
    completions: list[str]
    completion_ids: list[list[int]]
    columns: dict[str, list]

    def kwargs(self, rows: range | list[int] | None = None) -> dict[str, list]:
        if rows is None:
            return dict(
                self.columns,
                prompts=self.prompts,
                completions=self.completions,
                completion_ids=self.completion_ids,
            )
        pick = lambda values: [values[i] for i in rows]  # noqa: E731
        kwargs = {k: pick(v) for k, v in self.columns.items()}
        kwargs.update(
            prompts=pick(self.prompts),
            completions=pick(self.completions),
            completion_ids=pick(self.completion_ids),
        )
        return kwargs


@dataclass
class _Tally:
    """Counts failures and turns them into a 0.0 score or a UserError, per on_error."""

    on_error: str
    timeout_s: float | None
    num_errors: int = 0
    num_timeouts: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def error(self, spec: RewardSpec, batch: _Batch, i: int, description: str, cause=None) -> float:
        if self.on_error == "raise":
            raise UserError(
                f"reward function {spec.name!r} raised {description}\n"
                f"  prompt:     {_shorten(batch.prompts[i])}\n"
                f"  completion: {_shorten(batch.completions[i])}\n"
                "  (with on_error='zero' such a sample scores 0 and is counted in the metrics)"
            ) from cause
        self.num_errors += 1
        self.failures[spec.name] = self.failures.get(spec.name, 0) + 1
        return 0.0

    def timeout(self, spec: RewardSpec, batch: _Batch, i: int) -> float:
        if self.on_error == "raise":
            raise UserError(
                f"reward function {spec.name!r} timed out after {self.timeout_s:g} s\n"
                f"  prompt:     {_shorten(batch.prompts[i])}\n"
                f"  completion: {_shorten(batch.completions[i])}\n"
                "  (with on_error='zero' such a sample scores 0 and is counted in the metrics)"
            )
        self.num_timeouts += 1
        self.failures[spec.name] = self.failures.get(spec.name, 0) + 1
        return 0.0


def _check_batch(specs, prompts, completions, completion_ids, columns, on_error, timeout_s) -> None:
    if on_error not in ("raise", "zero"):
        raise UserError(f"reward on_error must be 'raise' or 'zero'; got {on_error!r}")
    if timeout_s is not None and not timeout_s > 0:
        raise UserError(f"reward timeout_s must be > 0 or null; got {timeout_s!r}")
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"reward names must be unique; repeated: {', '.join(duplicates)}")
    clashes = sorted(set(columns) & set(RESERVED_ARGUMENTS))
    if clashes:
        raise UserError(
            f"dataset column(s) {', '.join(clashes)} clash with reward-function arguments; rename them"
        )
    n = len(completions)
    lengths = {"prompts": len(prompts), "completion_ids": len(completion_ids)}
    lengths.update({f"column {k!r}": len(v) for k, v in columns.items()})
    wrong = {k: v for k, v in lengths.items() if v != n}
    if wrong:
        raise ValueError(f"compute_rewards: {n} completions but lengths {wrong}")


def _score_in_process(spec: RewardSpec, batch: _Batch, tally: _Tally) -> list[float | None]:
    n = len(batch.completions)
    try:
        values = run_with_deadline(lambda: spec.fn(**batch.kwargs()), tally.timeout_s)
        return _check_values(spec.name, values, n)
    except UserError:
        raise
    except CallTimeout:
        return [tally.timeout(spec, batch, i) for i in range(n)]
    except Exception as exc:
        if n == 1:
            return [tally.error(spec, batch, 0, describe_exception(exc), exc)]
    # The batched call raised: call once per sample to find the sample(s) at fault.
    scores: list[float | None] = []
    for i in range(n):
        try:
            values = run_with_deadline(functools.partial(spec.fn, **batch.kwargs([i])), tally.timeout_s)
            scores.extend(_check_values(spec.name, values, 1))
        except UserError:
            raise
        except CallTimeout:
            scores.append(tally.timeout(spec, batch, i))
        except Exception as exc:
            scores.append(tally.error(spec, batch, i, describe_exception(exc), exc))
    return scores


def _submit_to_pool(pool, spec: RewardSpec, batch: _Batch, timeout_s: float | None) -> list:
    try:
        pickle.dumps(spec.fn)
    except Exception as exc:
        raise UserError(
            f"reward function {spec.name!r} cannot run in a process pool because it does not pickle ({exc}); "
            "define it at module level (not a lambda or closure), or run it in-process"
        ) from exc
    return [
        pool.submit(_call_in_worker, spec.fn, batch.kwargs([i]), timeout_s)
        for i in range(len(batch.completions))
    ]


def _collect_from_pool(
    spec: RewardSpec, futures: list, batch: _Batch, tally: _Tally, pool
) -> list[float | None]:
    # The worker enforces timeout_s itself; the parent only stops waiting if a worker is stuck where
    # the worker's alarm cannot reach (inside a C call). Calls queue behind each other, so the
    # parent's wait covers every round of max_workers calls.
    wait_s = None
    if tally.timeout_s is not None:
        workers = getattr(pool, "_max_workers", 1) or 1
        rounds = math.ceil(len(futures) / workers)
        wait_s = rounds * tally.timeout_s + _POOL_GRACE_S
    done, _ = concurrent.futures.wait(futures, timeout=wait_s)
    scores: list[float | None] = []
    for i, future in enumerate(futures):
        if future not in done:
            future.cancel()
            logger.warning("reward function %r: a pool worker did not return within %s s", spec.name, wait_s)
            scores.append(tally.timeout(spec, batch, i))
            continue
        try:
            status, payload = future.result()
        except Exception as exc:  # the worker died, or the arguments did not pickle
            scores.append(tally.error(spec, batch, i, f"in the process pool: {describe_exception(exc)}", exc))
            continue
        if status == "ok":
            scores.extend(_check_values(spec.name, payload, 1))
        elif status == "timeout":
            scores.append(tally.timeout(spec, batch, i))
        elif status == "user_error":
            raise UserError(payload)
        else:
            scores.append(tally.error(spec, batch, i, payload))
    return scores


def _call_in_worker(fn: RewardFn, kwargs: dict, timeout_s: float | None) -> tuple[str, Any]:
    """Runs in a pool worker; returns a tagged result so that no exception object must pickle."""
    try:
        values = run_with_deadline(lambda: fn(**kwargs), timeout_s)
        return ("ok", values.tolist() if hasattr(values, "tolist") else values)
    except CallTimeout:
        return ("timeout", None)
    except UserError as exc:
        return ("user_error", str(exc))
    except Exception as exc:
        return ("error", describe_exception(exc))


def _check_values(name: str, values: Any, n: int) -> list[float | None]:
    """Validate a reward function's return value: n numbers or None."""
    if hasattr(values, "tolist"):  # numpy array or torch tensor
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise UserError(
            f"reward function {name!r} returned a {type(values).__name__}; it must return a list of "
            f"{n} floats (or None for 'not applicable')"
        )
    if len(values) != n:
        raise UserError(f"reward function {name!r} returned {len(values)} values for {n} completions")
    checked: list[float | None] = []
    for i, value in enumerate(values):
        if value is None:
            checked.append(None)
        elif isinstance(value, numbers.Real) and math.isfinite(value):
            checked.append(float(value))
        elif isinstance(value, numbers.Real):
            raise UserError(
                f"reward function {name!r} returned {value} at index {i}; return None for 'not applicable'"
            )
        else:
            raise UserError(
                f"reward function {name!r} returned a {type(value).__name__} ({_shorten(value, 40)}) "
                f"at index {i}; rewards must be numbers or None"
            )
    return checked


def _shorten(value: Any, limit: int = _SHOWN_CHARS) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 15] + f"... ({len(text)} chars)"
