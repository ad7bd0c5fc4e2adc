"""Group-relative advantages: hand-worked numbers, float64 references written as plain loops over
lists (using `statistics`, which computes in exact fractions), and invariance properties."""

import math
import random
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo.algorithm import (
    leave_one_out_advantages,
    outcome_advantages,
    process_advantages,
    zero_std_fraction,
)

NAN = float("nan")
TOL = {torch.float64: {"atol": 1e-12, "rtol": 0.0}, torch.float32: {"atol": 1e-6, "rtol": 1e-6}}


def tolerance(dtype: torch.dtype, divisor: float = 1.0) -> dict[str, float]:
    """float32 holds rewards to ~1e-7, so r - mean is good to ~1e-6 and an advantage (r - mean) /
    divisor to ~1e-6 / divisor: a group of close rewards is ill-conditioned in float32 by nature."""
    return dict(TOL[dtype], atol=TOL[dtype]["atol"] / min(1.0, divisor))


# ---------------------------------------------------------------- references (lists, loops, exact std)


def _spread(values: list[float], std: str) -> float:
    if len(values) < 2:
        return 0.0
    return statistics.stdev(values) if std == "unbiased" else statistics.pstdev(values)


def _groups(rewards: list[float], group_size: int) -> list[list[float]]:
    return [rewards[start : start + group_size] for start in range(0, len(rewards), group_size)]


def reference_outcome(rewards, group_size, scale="group", std="unbiased", eps=1e-4):
    """Returns the advantages and the smallest divisor used (for the float32 tolerance)."""
    batch_spread = _spread([r for r in rewards if not math.isnan(r)], std)
    out, divisors = [], [1.0]
    for group in _groups(rewards, group_size):
        valid = [r for r in group if not math.isnan(r)]
        if len(set(valid)) <= 1:
            out.extend([0.0] * len(group))
            continue
        mean = statistics.fmean(valid)
        divisor = {"group": _spread(valid, std) + eps, "batch": batch_spread + eps, "none": 1.0}[scale]
        out.extend(0.0 if math.isnan(r) else (r - mean) / divisor for r in group)
        divisors.append(divisor)
    return out, min(divisors)


def reference_leave_one_out(rewards, group_size) -> list[float]:
    out = []
    for group in _groups(rewards, group_size):
        valid = [r for r in group if not math.isnan(r)]
        for r in group:
            if math.isnan(r) or len(set(valid)) <= 1:
                out.append(0.0)
            else:
                others = list(valid)
                others.remove(r)
                out.append(r - sum(others) / len(others))
    return out


def reference_process(step_rewards, step_end_index, group_size, mask, eps=1e-4, std="unbiased"):
    """Loops over outputs, steps and tokens (nested lists); also returns the smallest std + eps."""
    out, divisors = [], [1.0]
    for start in range(0, len(step_rewards), group_size):
        rows = range(start, start + group_size)
        valid = [r for i in rows for r in step_rewards[i] if not math.isnan(r)]
        flat = len(set(valid)) <= 1
        mean, spread = (statistics.fmean(valid), _spread(valid, std)) if valid else (0.0, 0.0)
        divisors.append(1.0 if flat else spread + eps)
        for i in rows:
            row = []
            for t, keep in enumerate(mask[i]):
                total = 0.0
                for r, end in zip(step_rewards[i], step_end_index[i]):
                    if keep and not flat and not math.isnan(r) and end >= t:
                        total += (r - mean) / (spread + eps)
                row.append(total)
            out.append(row)
    return out, min(divisors)


# ---------------------------------------------------------------- random inputs


def random_rewards(rng: random.Random, num_prompts: int, group_size: int) -> list[float]:
    """Groups of every kind: continuous, 0/1, all equal (0.1 is inexact in binary), with NaN."""
    rewards = []
    for _ in range(num_prompts):
        kind = rng.choice(["uniform", "binary", "equal", "nan", "one_valid"])
        if kind == "uniform":
            group = [rng.uniform(-1.0, 2.0) for _ in range(group_size)]
        elif kind == "binary":
            group = [float(rng.random() < 0.5) for _ in range(group_size)]
        elif kind == "equal":
            group = [rng.choice([0.1, 0.7, 1.0, 1000.1])] * group_size
        elif kind == "nan":
            group = [NAN if rng.random() < 0.4 else rng.uniform(0.0, 1.0) for _ in range(group_size)]
        else:
            group = [NAN] * group_size
            group[rng.randrange(group_size)] = rng.uniform(0.0, 1.0)
        rewards.extend(group)
    return rewards


# ---------------------------------------------------------------- the seed article's example


SEED_REWARDS = [0.9, 0.3, 0.8, 0.2]


def test_seed_example_each_std_convention():
    """The seed article's G = 4 group: mean 0.55, deviations [0.35, -0.25, 0.25, -0.35].

    Sum of squares = 2 * 0.35^2 + 2 * 0.25^2 = 0.37, so the population std is sqrt(0.37 / 4) =
    0.30414 and the unbiased (sample) std is sqrt(0.37 / 3) = 0.35119. The article prints
    "std = 0.32" and A = [+1.09, -0.78, +0.78, -1.09] (0.35 / 0.32 = 1.09, 0.25 / 0.32 = 0.78):
    its 0.32 is the rounding of neither convention, so its advantages match neither exactly; they
    sit between the two. Signs and ordering (A_1 > A_3 > A_2 > A_4) agree with all three.
    """
    rewards = torch.tensor(SEED_REWARDS, dtype=torch.float64)
    population_std, unbiased_std = math.sqrt(0.37 / 4), math.sqrt(0.37 / 3)
    assert population_std == pytest.approx(0.304138, abs=1e-6)
    assert unbiased_std == pytest.approx(0.351188, abs=1e-6)
    deviations = torch.tensor([0.35, -0.25, 0.25, -0.35], dtype=torch.float64)

    unbiased = outcome_advantages(rewards, 4, std="unbiased", eps=1e-4)
    population = outcome_advantages(rewards, 4, std="population", eps=1e-4)
    # 0.35 / (0.351188 + 1e-4) = 0.99634, 0.25 / 0.351288 = 0.71167
    torch.testing.assert_close(unbiased, deviations / (unbiased_std + 1e-4), atol=1e-12, rtol=0)
    torch.testing.assert_close(
        unbiased, torch.tensor([0.99634, -0.71167, 0.71167, -0.99634], dtype=torch.float64), atol=1e-5, rtol=0
    )
    # 0.35 / (0.304138 + 1e-4) = 1.15041, 0.25 / 0.304238 = 0.82172
    torch.testing.assert_close(population, deviations / (population_std + 1e-4), atol=1e-12, rtol=0)
    torch.testing.assert_close(
        population,
        torch.tensor([1.15041, -0.82172, 0.82172, -1.15041], dtype=torch.float64),
        atol=1e-5,
        rtol=0,
    )

    article = [1.09, -0.78, 0.78, -1.09]
    for ours in (unbiased, population):
        assert torch.equal(torch.sign(ours), torch.sign(torch.tensor(article, dtype=torch.float64)))
        assert ours.argsort().tolist() == [3, 1, 2, 0] == sorted(range(4), key=article.__getitem__)
    # The article's magnitudes lie strictly between the two conventions and equal neither (to 0.01).
    for ours_unbiased, ours_population, theirs in zip(unbiased.abs(), population.abs(), article):
        assert ours_unbiased < abs(theirs) < ours_population
        assert abs(ours_unbiased - abs(theirs)) > 0.05 and abs(ours_population - abs(theirs)) > 0.03


def test_seed_example_other_scales():
    rewards = torch.tensor(SEED_REWARDS + SEED_REWARDS[::-1], dtype=torch.float64)  # two prompts
    # "none" (Dr. GRPO): only the group mean 0.55 is removed.
    expected_none = [0.35, -0.25, 0.25, -0.35, -0.35, 0.25, -0.25, 0.35]
    torch.testing.assert_close(
        outcome_advantages(rewards, 4, scale="none"),
        torch.tensor(expected_none, dtype=torch.float64),
        atol=1e-12,
        rtol=0,
    )
    # "batch": both groups have the same mean, so the batch std over 8 rewards is sqrt(0.74 / 7).
    expected_batch = torch.tensor(expected_none, dtype=torch.float64) / (math.sqrt(0.74 / 7) + 1e-4)
    torch.testing.assert_close(
        outcome_advantages(rewards, 4, scale="batch"), expected_batch, atol=1e-12, rtol=0
    )


# ---------------------------------------------------------------- hand-worked edge cases


def test_equal_groups_nan_and_single_reward_give_zero():
    # group 0: three 0.1 (their float mean is not exactly 0.1); group 1: NaN, 1.0, 3.0;
    # group 2: one valid reward; group 3: no valid reward.
    rewards = torch.tensor([0.1, 0.1, 0.1, NAN, 1.0, 3.0, NAN, 5.0, NAN, NAN, NAN, NAN])
    for scale in ("group", "batch", "none"):
        adv = outcome_advantages(rewards, 3, scale=scale)
        assert not torch.isnan(adv).any()
        assert adv[[0, 1, 2, 3, 6, 7, 8, 9, 10, 11]].eq(0).all()
    # group 1: mean 2, unbiased std sqrt(((-1)^2 + 1^2) / 1) = sqrt(2)
    adv = outcome_advantages(rewards, 3)
    torch.testing.assert_close(adv[4:6], torch.tensor([-1.0, 1.0]) / (math.sqrt(2) + 1e-4), atol=1e-6, rtol=0)
    assert zero_std_fraction(rewards, 3).item() == 0.75  # groups 0, 2, 3 of 4


def test_large_equal_rewards_in_float32_give_exactly_zero():
    # The float32 mean of three 1000.1 is off by an ulp (6.1e-5); the deviations then have a "std" of
    # 7.5e-5, far above ZERO_STD, and would give advantages of 6.1e-5 / (7.5e-5 + 1e-4) = 0.35.
    rewards = torch.full((3,), 1000.1, dtype=torch.float32)
    assert (rewards - rewards.sum() / 3).abs().max().item() > 6e-5  # the rounding this test is about
    assert outcome_advantages(rewards, 3).eq(0).all()
    assert leave_one_out_advantages(rewards, 3).eq(0).all()
    assert zero_std_fraction(rewards, 3).item() == 1.0


def test_group_size_two():
    # G = 2: mean (a+b)/2, deviations -+(b-a)/2, unbiased std |b-a|/sqrt(2) -> A = -+1/sqrt(2)
    # (up to eps), population std |b-a|/2 -> A = -+1.
    rewards = torch.tensor([0.0, 1.0, 3.0, 1.0], dtype=torch.float64)
    eps = 1e-4
    expected_unbiased = [
        -0.5 / (1 / math.sqrt(2) + eps),
        0.5 / (1 / math.sqrt(2) + eps),
        1.0 / (math.sqrt(2) + eps),
        -1.0 / (math.sqrt(2) + eps),
    ]
    torch.testing.assert_close(
        outcome_advantages(rewards, 2),
        torch.tensor(expected_unbiased, dtype=torch.float64),
        atol=1e-12,
        rtol=0,
    )
    torch.testing.assert_close(
        outcome_advantages(rewards, 2, std="population", eps=0.0),
        torch.tensor([-1.0, 1.0, 1.0, -1.0], dtype=torch.float64),
        atol=1e-12,
        rtol=0,
    )
    # RLOO with G = 2: each output against the other one: [0-1, 1-0, 3-1, 1-3].
    torch.testing.assert_close(
        leave_one_out_advantages(rewards, 2),
        torch.tensor([-1.0, 1.0, 2.0, -2.0], dtype=torch.float64),
        atol=1e-12,
        rtol=0,
    )


def test_leave_one_out_hand_example():
    # [1, 0, 0, 0]: 1 - 0 = 1 and 0 - 1/3; equals G/(G-1) * (r - mean) = 4/3 * [0.75, -0.25, ...].
    # [2, NaN, 4, 4]: valid n = 3 -> 2 - mean(4, 4) = -2, NaN -> 0, 4 - mean(2, 4) = 1.
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, NAN, 4.0, 4.0], dtype=torch.float64)
    adv = leave_one_out_advantages(rewards, 4)
    expected = [1.0, -1 / 3, -1 / 3, -1 / 3, -2.0, 0.0, 1.0, 1.0]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)


def test_dtype_is_kept_and_ints_become_float():
    assert outcome_advantages(torch.tensor([1.0, 0.0], dtype=torch.float32), 2).dtype == torch.float32
    assert outcome_advantages(torch.tensor([1.0, 0.0], dtype=torch.float64), 2).dtype == torch.float64
    ints = outcome_advantages(torch.tensor([1, 0, 0, 1]), 2, std="population", eps=0.0)
    assert ints.dtype == torch.get_default_dtype()
    assert ints.tolist() == [1.0, -1.0, -1.0, 1.0]


@pytest.mark.parametrize("bad", [{"scale": "global"}, {"std": "sample"}])
def test_unknown_options_raise(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        outcome_advantages(torch.zeros(4), 2, **bad)


def test_rewards_not_a_multiple_of_group_size_raise():
    with pytest.raises(ValueError, match="group_size=4"):
        outcome_advantages(torch.zeros(6), 4)


# ---------------------------------------------------------------- against the float64 references


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("group_size", [2, 3, 8])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("std", ["unbiased", "population"])
def test_outcome_matches_reference(dtype, group_size, scale, std):
    rng = random.Random(f"outcome-{group_size}-{scale}-{std}")
    for _ in range(5):
        rewards = random_rewards(rng, num_prompts=rng.randint(1, 6), group_size=group_size)
        rewards = torch.tensor(rewards, dtype=dtype).tolist()  # the values the function really sees
        expected, divisor = reference_outcome(rewards, group_size, scale, std)
        actual = outcome_advantages(torch.tensor(rewards, dtype=dtype), group_size, scale=scale, std=std)
        torch.testing.assert_close(actual, torch.tensor(expected, dtype=dtype), **tolerance(dtype, divisor))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("group_size", [2, 5])
def test_leave_one_out_and_zero_std_fraction_match_reference(dtype, group_size):
    rng = random.Random(f"rloo-{group_size}")
    for _ in range(5):
        rewards = random_rewards(rng, num_prompts=rng.randint(1, 6), group_size=group_size)
        rewards = torch.tensor(rewards, dtype=dtype).tolist()
        actual = leave_one_out_advantages(torch.tensor(rewards, dtype=dtype), group_size)
        torch.testing.assert_close(
            actual, torch.tensor(reference_leave_one_out(rewards, group_size), dtype=dtype), **TOL[dtype]
        )
        groups = _groups(rewards, group_size)
        flat = sum(len({r for r in g if not math.isnan(r)}) <= 1 for g in groups) / len(groups)
        assert zero_std_fraction(torch.tensor(rewards, dtype=dtype), group_size).item() == pytest.approx(flat)


# ---------------------------------------------------------------- process supervision


def test_process_hand_example_two_outputs_three_steps():
    # One group, G = 2, T = 6. Output 0 (5 tokens): steps rewarded [1, 0, 1] ending at tokens 1, 2, 4.
    # Output 1 (6 tokens): steps rewarded [0, 1, 0] ending at tokens 0, 3, 5.
    # All 6 step rewards: mean 0.5, every deviation +-0.5, population std 0.5 -> with eps = 0 the
    # normalised rewards are output 0: [+1, -1, +1], output 1: [-1, +1, -1].
    # Output 0: t=0,1: +1-1+1 = 1; t=2: -1+1 = 0; t=3,4: +1; t=5 is padding -> 0.
    # Output 1: t=0: -1+1-1 = -1; t=1..3: +1-1 = 0; t=4,5: -1.
    step_rewards = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    step_end_index = torch.tensor([[1, 2, 4], [0, 3, 5]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    adv = process_advantages(step_rewards, step_end_index, 2, mask, eps=0.0, std="population")
    expected = [[1.0, 1.0, 0.0, 1.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0, -1.0, -1.0]]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)
    # The defaults (unbiased std sqrt(1.5 / 5) = 0.5477, eps 1e-4) only rescale: +-1 -> +-0.5 / 0.5478.
    default = process_advantages(step_rewards, step_end_index, 2, mask)
    torch.testing.assert_close(default, adv * 0.5 / (math.sqrt(0.3) + 1e-4), atol=1e-12, rtol=0)


def test_process_missing_steps_are_ignored():
    # Output 1 has only two steps: its third reward is NaN and its end index (-1) is ignored.
    # Valid rewards [1, 0, 1, 0, 1]: mean 0.6, population std sqrt(1.2 / 5) = 0.4899.
    step_rewards = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, NAN]], dtype=torch.float64)
    step_end_index = torch.tensor([[0, 1, 2], [1, 2, -1]])
    mask = torch.ones(2, 3)
    adv = process_advantages(step_rewards, step_end_index, 2, mask, eps=0.0, std="population")
    hi, lo = 0.4 / math.sqrt(0.24), -0.6 / math.sqrt(0.24)
    expected = [[hi + lo + hi, lo + hi, hi], [lo + hi, lo + hi, hi]]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)


def random_process_inputs(rng: random.Random, num_prompts: int, group_size: int, max_steps: int, T: int):
    step_rewards, step_end_index, mask = [], [], []
    for _ in range(num_prompts):
        equal = rng.random() < 0.2
        for _ in range(group_size):
            length = rng.randint(1, T)
            num_steps = rng.randint(0, max_steps)
            ends = sorted(rng.randint(-1, T + 1) for _ in range(num_steps))  # may miss every token
            rewards = [0.5 if equal else rng.choice([0.0, 1.0, rng.uniform(0, 1)]) for _ in ends]
            step_rewards.append(rewards + [NAN] * (max_steps - num_steps))
            step_end_index.append(ends + [rng.randint(-5, 50)] * (max_steps - num_steps))
            mask.append([1] * length + [0] * (T - length))
    return step_rewards, step_end_index, mask


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("group_size", [2, 4])
@pytest.mark.parametrize("std", ["unbiased", "population"])
def test_process_matches_reference(dtype, group_size, std):
    rng = random.Random(f"process-{group_size}-{std}")
    for _ in range(5):
        step_rewards, step_end_index, mask = random_process_inputs(rng, rng.randint(1, 4), group_size, 4, 7)
        step_rewards = torch.tensor(step_rewards, dtype=dtype).tolist()
        expected, divisor = reference_process(step_rewards, step_end_index, group_size, mask, std=std)
        actual = process_advantages(
            torch.tensor(step_rewards, dtype=dtype),
            torch.tensor(step_end_index),
            group_size,
            torch.tensor(mask),
            std=std,
        )
        torch.testing.assert_close(actual, torch.tensor(expected, dtype=dtype), **tolerance(dtype, divisor))


# ---------------------------------------------------------------- invariances (hypothesis)

# Rewards on a grid of quarters and integer shifts keep float64 arithmetic exact, so any difference
# comes from the implementation, not from rounding the inputs.
quarter = st.integers(-8, 8).map(lambda k: k / 4)
reward_groups = st.integers(2, 5).flatmap(
    lambda g: st.tuples(
        st.just(g), st.lists(st.lists(quarter, min_size=g, max_size=g), min_size=1, max_size=4)
    )
)


@settings(max_examples=60, deadline=None)
@given(
    reward_groups, st.lists(st.integers(-20, 20), min_size=4, max_size=4), st.sampled_from(["group", "none"])
)
def test_shifting_a_group_leaves_advantages_unchanged(groups, shifts, scale):
    group_size, rows = groups
    rewards = torch.tensor(rows, dtype=torch.float64)  # [P, G]
    shifted = rewards + torch.tensor(shifts[: len(rows)], dtype=torch.float64)[:, None]  # [P, G]
    for fn in (partial_outcome(scale), leave_one_out_advantages):
        torch.testing.assert_close(
            fn(shifted.reshape(-1), group_size), fn(rewards.reshape(-1), group_size), atol=1e-12, rtol=0
        )


@settings(max_examples=40, deadline=None)
@given(reward_groups, st.integers(-20, 20))
def test_shifting_the_batch_leaves_batch_scaled_advantages_unchanged(groups, shift):
    group_size, rows = groups
    rewards = torch.tensor(rows, dtype=torch.float64).reshape(-1)
    torch.testing.assert_close(
        outcome_advantages(rewards + shift, group_size, scale="batch"),
        outcome_advantages(rewards, group_size, scale="batch"),
        atol=1e-12,
        rtol=0,
    )


@settings(max_examples=60, deadline=None)
@given(
    reward_groups,
    st.sampled_from([0.5, 3.0, 8.0, 1000.0]),
    st.sampled_from(["group", "batch"]),
    st.sampled_from(["unbiased", "population"]),
)
def test_scaling_rewards_leaves_std_scaled_advantages_unchanged(groups, factor, scale, std):
    # Exact only with eps = 0: (k * dev) / (k * std + eps) differs from dev / (std + eps) by eps terms.
    group_size, rows = groups
    rewards = torch.tensor(rows, dtype=torch.float64).reshape(-1)
    torch.testing.assert_close(
        outcome_advantages(rewards * factor, group_size, scale=scale, std=std, eps=0.0),
        outcome_advantages(rewards, group_size, scale=scale, std=std, eps=0.0),
        atol=1e-12,
        rtol=0,
    )


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(quarter, min_size=3, max_size=3), min_size=2, max_size=2), st.integers(-20, 20))
def test_shifting_step_rewards_leaves_process_advantages_unchanged(rows, shift):
    step_rewards = torch.tensor(rows, dtype=torch.float64)  # [2, 3], one group of G = 2
    step_end_index, mask = torch.tensor([[0, 2, 3], [1, 1, 4]]), torch.ones(2, 5)
    torch.testing.assert_close(
        process_advantages(step_rewards + shift, step_end_index, 2, mask),
        process_advantages(step_rewards, step_end_index, 2, mask),
        atol=1e-12,
        rtol=0,
    )


def partial_outcome(scale):
    return lambda rewards, group_size: outcome_advantages(rewards, group_size, scale=scale)
