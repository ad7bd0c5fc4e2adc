"""Loading reward functions by reference, the weighted sum, errors, timeouts and the process pool."""

import math
import pickle
import sys
import threading
import time

import pytest

from grpo.errors import UserError
from grpo.rewards import (
    CallTimeout,
    FileRewardFunction,
    MathAccuracy,
    RewardSpec,
    compute_rewards,
    load_reward_function,
    make_reward_pool,
    r1_format_strict,
    reward_spec,
    run_with_deadline,
)

USER_REWARDS = '''
import time

def exclaim(prompts, completions, completion_ids, **columns):
    """1.0 per exclamation mark, None when the row's kind is 'skip'."""
    kinds = columns.get("kind", ["any"] * len(completions))
    return [None if k == "skip" else float(c.count("!")) for c, k in zip(completions, kinds)]

def scaled(prompts, completions, completion_ids, factor=1.0, **columns):
    return [factor * len(ids) for ids in completion_ids]

def sleepy(prompts, completions, completion_ids, **columns):
    if "hang" in completions[0]:
        time.sleep(60)
    return [1.0 for _ in completions]

def fragile(prompts, completions, completion_ids, **columns):
    return [1.0 / len(c) for c in completions]

NOT_A_FUNCTION = 3
'''


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_REWARDS)
    return path


def batch(texts, **columns):
    n = len(texts)
    return dict(
        prompts=[f"prompt {i}" for i in range(n)],
        completions=texts,
        completion_ids=[[1] * (i + 1) for i in range(n)],
        columns=columns,
    )


# ---- loading ------------------------------------------------------------------------------------


def test_load_user_function_from_file_by_absolute_and_relative_path(user_file, monkeypatch):
    fn = load_reward_function(f"{user_file}:exclaim")
    assert isinstance(fn, FileRewardFunction) and fn.__name__ == "exclaim"
    assert fn(["p", "p"], ["hi!", "ok"], [[1], [2]]) == [1.0, 0.0]
    monkeypatch.chdir(user_file.parent)
    relative = load_reward_function("./my_rewards.py:exclaim")
    assert relative(["p"], ["!!"], [[1]]) == [2.0]


def test_file_function_pickles_by_path(user_file):
    fn = load_reward_function(f"{user_file}:exclaim")
    clone = pickle.loads(pickle.dumps(fn))
    assert clone.path == str(user_file.resolve()) and clone(["p"], ["!"], [[1]]) == [1.0]


def test_load_from_module_and_builtins_and_options(user_file):
    assert load_reward_function("grpo.rewards.format:r1_format_strict") is r1_format_strict
    assert load_reward_function("r1_format_strict") is r1_format_strict
    acc = load_reward_function("math_accuracy", {"gold_style": "gsm8k", "timeout_s": 2.0})
    assert acc == MathAccuracy(gold_style="gsm8k", pred_source="auto", timeout_s=2.0)
    scaled = load_reward_function(f"{user_file}:scaled", {"factor": 0.5})
    assert scaled(["p"], ["x"], [[1, 2, 3, 4]]) == [2.0]


def test_reward_spec_names(user_file):
    assert reward_spec("r1_format_lenient").name == "r1_format_lenient"
    spec = reward_spec(f"{user_file}:exclaim", weight=2)
    assert (spec.name, spec.weight) == ("exclaim", 2.0)
    with pytest.raises(UserError, match="reward 'exclaim': weight must be a finite number; got 'high'"):
        reward_spec(f"{user_file}:exclaim", weight="high")


def test_load_errors_name_the_file_or_function(user_file, tmp_path):
    with pytest.raises(UserError, match=r"reward function file not found: missing\.py"):
        load_reward_function("missing.py:fn")
    with pytest.raises(
        UserError, match=r"my_rewards\.py has no function 'nope'; it defines: exclaim, fragile"
    ):
        load_reward_function(f"{user_file}:nope")
    with pytest.raises(UserError, match=r"my_rewards\.py:NOT_A_FUNCTION is a int, not a function"):
        load_reward_function(f"{user_file}:NOT_A_FUNCTION")
    broken = tmp_path / "broken.py"
    broken.write_text("def reward(prompts, completions, **kw):\n    return [1.0 for c in completions\n")
    with pytest.raises(UserError, match=r"broken\.py:2: syntax error in reward function file"):
        load_reward_function(f"{broken}:reward")
    failing = tmp_path / "failing.py"
    failing.write_text("import not_a_real_module_xyz\n")
    with pytest.raises(
        UserError, match=r"failing\.py: running the reward function file failed: ModuleNotFound"
    ):
        load_reward_function(f"{failing}:reward")
    with pytest.raises(UserError, match="reward module 'no_such_pkg.rewards' not found"):
        load_reward_function("no_such_pkg.rewards:fn")
    with pytest.raises(UserError, match="unknown reward 'accuracy': use a built-in"):
        load_reward_function("accuracy")
    with pytest.raises(
        UserError, match="reward 'math_accuracy': unknown option.*colour; accepted: gold_style"
    ):
        load_reward_function("math_accuracy", {"colour": "red"})
    with pytest.raises(
        UserError, match="reward 'soft_overlong_penalty': missing required option.*max_len, cache_len"
    ):
        load_reward_function("soft_overlong_penalty")


# ---- weighted sum -------------------------------------------------------------------------------


def test_weighted_sum_with_a_none_returning_function(user_file):
    exclaim = reward_spec(f"{user_file}:exclaim", weight=0.5)
    strict = RewardSpec("format", r1_format_strict, weight=2.0)
    completions = ["<think>a</think><answer>1</answer>", "Yes!!", "Hm!"]
    result = compute_rewards([exclaim, strict], **batch(completions, kind=["any", "any", "skip"]))
    # exclaim: [0, 2, None]; format: [1, 0, 0]
    # total: [0.5*0 + 2*1, 0.5*2 + 2*0, 2*0 (None ignored)] = [2.0, 1.0, 0.0]
    assert result.total == [2.0, 1.0, 0.0]
    assert result.per_function["exclaim"][:2] == [0.0, 2.0] and math.isnan(result.per_function["exclaim"][2])
    assert result.per_function["format"] == [1.0, 0.0, 0.0]
    assert (result.num_errors, result.num_timeouts) == (0, 0)


def test_total_is_nan_when_every_function_says_none(user_file):
    exclaim = reward_spec(f"{user_file}:exclaim")
    result = compute_rewards([exclaim], **batch(["a!", "b!"], kind=["skip", "any"]))
    assert math.isnan(result.total[0]) and result.total[1] == 1.0


def test_columns_reach_the_function():
    seen = {}

    def spy(prompts, completions, completion_ids, **columns):
        seen.update(columns, prompts=prompts, completion_ids=completion_ids)
        return [0.0] * len(completions)

    compute_rewards([RewardSpec("spy", spy)], **batch(["a", "b"], answer=["1", "2"], level=[3, 4]))
    assert seen == {
        "answer": ["1", "2"],
        "level": [3, 4],
        "prompts": ["prompt 0", "prompt 1"],
        "completion_ids": [[1], [1, 1]],
    }


@pytest.mark.parametrize(
    "returned, message",
    [
        (lambda n: [1.0] * (n + 1), "reward function 'bad' returned 3 values for 2 completions"),
        (lambda n: 1.0, "reward function 'bad' returned a float; it must return a list of 2 floats"),
        (lambda n: ["1.0"] * n, r"reward function 'bad' returned a str \('1.0'\) at index 0"),
        (lambda n: [float("nan")] * n, "reward function 'bad' returned nan at index 0; return None"),
    ],
)
def test_wrong_return_values_are_user_errors(returned, message):
    spec = RewardSpec("bad", lambda prompts, completions, **kw: returned(len(completions)))
    with pytest.raises(UserError, match=message):
        compute_rewards([spec], **batch(["a", "b"]), on_error="zero")


def test_bad_arguments():
    spec = RewardSpec("format", r1_format_strict)
    with pytest.raises(UserError, match="on_error must be 'raise' or 'zero'; got 'skip'"):
        compute_rewards([spec], **batch(["a"]), on_error="skip")
    with pytest.raises(UserError, match="reward names must be unique; repeated: format"):
        compute_rewards([spec, spec], **batch(["a"]))
    with pytest.raises(UserError, match="dataset column.*completions clash"):
        compute_rewards([spec], **batch(["a"], completions=["x"]))


# ---- errors and timeouts ------------------------------------------------------------------------


def test_on_error_raise_names_function_prompt_completion_and_cause(user_file):
    fragile = reward_spec(f"{user_file}:fragile")  # 1 / len(completion): fails on ""
    with pytest.raises(UserError) as err:
        compute_rewards([fragile], **batch(["ok", "", "fine"]))
    message = str(err.value)
    assert "reward function 'fragile' raised ZeroDivisionError: float division by zero" in message
    assert "my_rewards.py:18)" in message  # the line in the user's file
    assert "prompt:     'prompt 1'" in message and "completion: ''" in message
    assert "on_error='zero'" in message


def test_on_error_zero_scores_only_the_failing_sample(user_file):
    fragile = reward_spec(f"{user_file}:fragile")
    result = compute_rewards([fragile], **batch(["ok", "", "four"]), on_error="zero")
    # The batched call raised; per-sample retries keep the good samples' rewards.
    assert result.per_function["fragile"] == [0.5, 0.0, 0.25]
    assert (result.num_errors, result.num_timeouts) == (1, 0)
    assert result.failures_per_function == {"fragile": 1}


def test_long_prompts_are_truncated_in_the_message():
    def boom(prompts, completions, **kw):
        raise RuntimeError("bad state")

    data = batch(["x" * 5000])
    data["prompts"] = ["p" * 5000]
    with pytest.raises(UserError, match=r"RuntimeError: bad state") as err:
        compute_rewards([RewardSpec("boom", boom)], **data)
    assert "(5002 chars)" in str(err.value) and len(str(err.value)) < 1000


def test_user_error_inside_a_reward_is_never_swallowed():
    def misconfigured(prompts, completions, **kw):
        raise UserError("reward 'x': needs column 'tests'")

    with pytest.raises(UserError, match="needs column 'tests'"):
        compute_rewards([RewardSpec("x", misconfigured)], **batch(["a"]), on_error="zero")


def spin(prompts, completions, **kw):
    if "hang" in completions[0]:
        while True:
            pass
    return [1.0] * len(completions)


def test_in_process_timeout_main_thread():
    result = compute_rewards([RewardSpec("spin", spin)], **batch(["hang"]), on_error="zero", timeout_s=0.2)
    assert result.per_function["spin"] == [0.0] and result.num_timeouts == 1
    with pytest.raises(UserError, match="reward function 'spin' timed out after 0.2 s"):
        compute_rewards([RewardSpec("spin", spin)], **batch(["hang"]), timeout_s=0.2)


def test_in_process_timeout_in_a_worker_thread():
    out = {}
    thread = threading.Thread(
        target=lambda: out.update(
            r=compute_rewards(
                [RewardSpec("spin", spin)], **batch(["hang", "ok"]), on_error="zero", timeout_s=0.2
            )
        )
    )
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    # A timed-out batched call scores every sample of the batch.
    assert out["r"].per_function["spin"] == [0.0, 0.0] and out["r"].num_timeouts == 2


def test_run_with_deadline_nested_and_returns_values():
    assert run_with_deadline(lambda: run_with_deadline(lambda: 5, 1.0), 2.0) == 5
    with pytest.raises(CallTimeout):
        run_with_deadline(lambda: run_with_deadline(lambda: spin(None, ["hang"]), 5.0), 0.2)
    start = time.monotonic()
    with pytest.raises(CallTimeout):
        run_with_deadline(lambda: time.sleep(30), 0.2)  # main thread: the alarm interrupts sleep
    assert time.monotonic() - start < 2.0


def test_process_pool_timeout_scored_zero_and_counted(user_file):
    sleepy = reward_spec(f"{user_file}:sleepy")  # sleeps 60 s on "hang"
    local = RewardSpec("format", r1_format_strict, in_pool=False)
    pool = make_reward_pool(2)  # spawned workers reload the user's file by path
    try:
        start = time.monotonic()
        result = compute_rewards(
            [sleepy, local], **batch(["ok", "hang", "ok"]), on_error="zero", timeout_s=1.0, pool=pool
        )
        elapsed = time.monotonic() - start
        assert result.per_function["sleepy"] == [1.0, 0.0, 1.0]
        assert result.per_function["format"] == [0.0, 0.0, 0.0]
        assert (result.num_timeouts, result.num_errors) == (1, 0)
        assert elapsed < 15.0
        # The worker freed itself: the pool still answers.
        again = compute_rewards([sleepy], **batch(["ok"]), timeout_s=1.0, pool=pool)
        assert again.total == [1.0]
        with pytest.raises(UserError, match="reward function 'sleepy' timed out after 1 s"):
            compute_rewards([sleepy], **batch(["hang"]), timeout_s=1.0, pool=pool)
        with pytest.raises(UserError, match="'closure' cannot run in a process pool"):
            compute_rewards([RewardSpec("closure", lambda **kw: [1.0])], **batch(["a"]), pool=pool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def test_process_pool_error_in_worker(user_file):
    fragile = reward_spec(f"{user_file}:fragile")
    pool = make_reward_pool(1)
    try:
        result = compute_rewards([fragile], **batch(["ab", ""]), on_error="zero", pool=pool)
        assert result.per_function["fragile"] == [0.5, 0.0] and result.num_errors == 1
        with pytest.raises(UserError, match="'fragile' raised ZeroDivisionError"):
            compute_rewards([fragile], **batch([""]), pool=pool)
    finally:
        pool.shutdown(wait=True)


def test_importing_rewards_does_not_import_torch_or_math_verify():
    import subprocess

    code = (
        "import sys, grpo.rewards; "
        "print(sorted(m for m in ('torch', 'transformers', 'math_verify') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
