"""R1 format rewards (strict, lenient) and the length, repetition and DAPO overlong penalties."""

import pickle

import pytest

from grpo.errors import UserError
from grpo.rewards import (
    make_length_penalty,
    make_repetition_penalty,
    make_soft_overlong_penalty,
    r1_format_lenient,
    r1_format_strict,
)

# completion -> (strict, lenient)
FORMAT_CASES = {
    "<think>\n7 * 6 = 42\n</think>\n<answer>\n42\n</answer>": (1.0, 1.0),
    "<think>a</think><answer>42</answer>": (1.0, 1.0),
    "  <think>a</think>   <answer>42</answer>\n": (1.0, 1.0),
    "Let me see. <think>a</think><answer>42</answer>": (0.0, 1.0),  # text before
    "<think>a</think><answer>42</answer> Done!": (0.0, 1.0),  # text after
    "<think>a</think> so <answer>42</answer>": (0.0, 1.0),  # text between
    "<think> </think><answer>42</answer>": (0.0, 1.0),  # empty reasoning
    "<think>a</think><answer></answer>": (0.0, 1.0),  # empty answer
    "<think>a</think><answer>4</answer><answer>2</answer>": (0.0, 1.0),  # two answers
    "<think>a <think> b</think><answer>42</answer>": (0.0, 1.0),  # nested tag
    "<answer>42</answer><think>a</think>": (0.0, 0.0),  # wrong order
    "<think>a</think>": (0.0, 0.0),
    "<answer>42</answer>": (0.0, 0.0),
    "<think>a<answer>42</answer>": (0.0, 0.0),  # think never closed
    "42": (0.0, 0.0),
    "": (0.0, 0.0),
}


def test_r1_format_strict_and_lenient():
    completions = list(FORMAT_CASES)
    prompts = ["q"] * len(completions)
    strict = r1_format_strict(prompts, completions, [[0]] * len(completions))
    lenient = r1_format_lenient(prompts, completions, [[0]] * len(completions))
    assert list(zip(strict, lenient, strict=True)) == list(FORMAT_CASES.values())


def test_soft_overlong_penalty_hand_computed():
    # max_len=20, cache_len=4: free up to 16 tokens, then (16 - L) / 4, then -1 beyond 20.
    reward = make_soft_overlong_penalty(max_len=20, cache_len=4)
    lengths = [0, 10, 16, 17, 18, 19, 20, 21, 100]
    expected = [0.0, 0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0]
    got = reward(["q"] * len(lengths), [""] * len(lengths), [[7] * n for n in lengths])
    assert got == pytest.approx(expected, abs=1e-12)


def test_soft_overlong_penalty_whole_budget_soft():
    # cache_len == max_len: the penalty ramps from the first token: L=3 of 8 -> -3/8.
    reward = make_soft_overlong_penalty(max_len=8, cache_len=8)
    assert reward(None, ["", ""], [[1, 2, 3], []]) == [-0.375, 0.0]


@pytest.mark.parametrize("max_len, cache_len", [(10, 0), (10, 11), (10, -1), (10.0, 2)])
def test_soft_overlong_penalty_bad_arguments(max_len, cache_len):
    with pytest.raises(UserError, match="soft_overlong_penalty"):
        make_soft_overlong_penalty(max_len, cache_len)


def test_length_penalty():
    tokens = make_length_penalty(target_len=10, per_token=0.25, max_penalty=1.0)
    assert tokens(None, [""] * 4, [[0] * 5, [0] * 10, [0] * 12, [0] * 50]) == [0.0, 0.0, -0.5, -1.0]
    chars = make_length_penalty(target_len=3, per_token=0.5, max_penalty=2.0, unit="chars")
    assert chars(None, ["abc", "abcd", "abcdefghij"], None) == [0.0, -0.5, -2.0]
    with pytest.raises(UserError, match="length_penalty: unit must be 'tokens' or 'chars'"):
        make_length_penalty(3, 0.5, unit="words")


def test_repetition_penalty():
    # Token trigrams of [1,2,3,1,2,3,1]: 5 trigrams, 3 distinct -> -(1 - 3/5) = -0.4.
    reward = make_repetition_penalty(ngram_size=3, scale=1.0)
    got = reward(None, [""] * 3, [[1, 2, 3, 1, 2, 3, 1], [1, 2, 3, 4], [1, 2]])
    assert got == pytest.approx([-0.4, 0.0, 0.0], abs=1e-12)
    # Word bigrams of "x y x y x y": 5 bigrams, 2 distinct -> -0.5 * (1 - 2/5) = -0.3.
    words = make_repetition_penalty(ngram_size=2, scale=0.5, unit="words")
    assert words(None, ["x y x y x y"], None) == pytest.approx([-0.3], abs=1e-12)


def test_penalties_pickle_for_worker_processes():
    for reward in (make_soft_overlong_penalty(20, 4), make_length_penalty(5, 0.1), make_repetition_penalty()):
        assert pickle.loads(pickle.dumps(reward)) == reward


def test_docstring_examples_of_the_reward_modules():
    import doctest

    import grpo.utils.deadline
    import grpo.rewards.format
    import grpo.rewards.math

    for module in (grpo.rewards.format, grpo.rewards.math, grpo.utils.deadline):
        failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert attempted > 0 and failed == 0, module.__name__
