"""pass@k against exact binomial fractions, majority voting, and DAPO's overlong handling."""

import math
from fractions import Fraction

import pytest
import torch

from grpo.algorithm import majority_vote, mask_truncated, pass_at_k, soft_overlong_penalty
from grpo.algorithm.evaluation import answer_classes


def test_pass_at_k_hand_examples():
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5, abs=1e-15)
    # n=10, c=3, k=1: pass@1 is the plain success rate 3/10
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-15)
    # n=5, c=2, k=4: 1 - C(3,4)/C(5,4) = 1 - 0 (any 4 of 5 samples include a correct one)
    assert pass_at_k(5, 2, 4) == 1.0
    assert pass_at_k(5, 0, 3) == 0.0
    assert isinstance(pass_at_k(5, 2, 2), float)


def test_pass_at_k_matches_exact_binomials():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    # C(1000, 500) overflows a float; the product form does not. Exact value via integers:
    exact = 1 - Fraction(math.comb(990, 500), math.comb(1000, 500))
    assert pass_at_k(1000, 10, 500) == pytest.approx(float(exact), abs=1e-12)


@pytest.mark.parametrize("n, c, k", [(3, 1, 4), (3, 1, 0), (3, 4, 1), (3, -1, 1)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_majority_vote():
    assert majority_vote(["4", None, "5", "5", "4"]) == "4"  # tie 2-2: "4" was seen first
    assert majority_vote(["5", "4", "4", "5"]) == "5"
    assert majority_vote([None, "7", "3", "3"]) == "3"
    assert majority_vote([None, None, None, "9", "9", "1"]) == "9"  # None never wins
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
    assert majority_vote([2, 1, 1]) == 1


def _same_value(a, b):
    return Fraction(a) == Fraction(b)


def test_majority_vote_counts_equivalent_answers_as_one():
    # 0.5, 1/2 and 2/4 are one answer with 3 votes; "2" has 2 and loses. The class is reported by its
    # first-seen answer.
    assert majority_vote(["0.5", "2", "1/2", "2", "2/4"], _same_value) == "0.5"
    assert majority_vote(["0.5", "2", "1/2", "2", "2/4"]) == "2"  # by string: 2 votes against 1, 1, 1
    # Ties and None behave as without an equivalence: 2 votes each, the class seen first wins.
    assert majority_vote([None, "2", "1/2", "0.5", "2.0"], _same_value) == "2"
    assert majority_vote([None, None], _same_value) is None


def test_answer_classes_compare_with_the_first_seen_answer_once_per_distinct_answer():
    calls = []

    def equivalent(first, answer):
        calls.append((first, answer))
        return _same_value(first, answer)

    answers = ["0.5", None, "2", "1/2", "0.5", "1/2", "4/2"]
    assert answer_classes(answers, equivalent) == [0, None, 1, 0, 0, 0, 1]
    # Repeated strings reuse their class; "4/2" is tried against 0.5 (no) then 2 (yes), first-seen first.
    assert calls == [("0.5", "2"), ("0.5", "1/2"), ("0.5", "4/2"), ("2", "4/2")]
    assert answer_classes(["b", "a", "b"]) == [0, 1, 0]


def test_soft_overlong_penalty_hand_example():
    # max_len 20, cache 4: the ramp starts after 16 tokens and reaches -1 at 20.
    # 10 -> 0; 16 -> 0; 17 -> (16 - 17) / 4 = -0.25; 18 -> -0.5; 20 -> -1; 21 and 40 -> -1
    lengths = torch.tensor([10, 16, 17, 18, 20, 21, 40])
    penalty = soft_overlong_penalty(lengths, max_len=20, cache_len=4)
    assert penalty.dtype == torch.get_default_dtype()
    assert penalty.tolist() == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0, -1.0]
    as_float64 = soft_overlong_penalty(lengths.to(torch.float64), 20, 4)
    assert as_float64.dtype == torch.float64 and as_float64.tolist() == penalty.tolist()


def test_soft_overlong_penalty_matches_the_piecewise_definition():
    max_len, cache_len = 37, 9
    for length in range(50):
        if length <= max_len - cache_len:
            expected = 0.0
        elif length <= max_len:
            expected = ((max_len - cache_len) - length) / cache_len
        else:
            expected = -1.0
        actual = soft_overlong_penalty(torch.tensor([length], dtype=torch.float64), max_len, cache_len)
        assert actual.item() == pytest.approx(expected, abs=1e-15), length
    with pytest.raises(ValueError):
        soft_overlong_penalty(torch.tensor([1]), max_len=10, cache_len=0)


def test_mask_truncated_zeroes_whole_rows():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.float32)
    truncated = torch.tensor([False, True, False])
    masked = mask_truncated(mask, truncated)
    assert masked.dtype == torch.float32
    assert masked.tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 0]]
    assert mask.tolist()[1] == [1, 1, 1]  # the input is not modified
