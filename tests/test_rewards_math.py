"""Math answer checking: gold extraction, prediction extraction, math-verify matching, timeouts."""

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from grpo.errors import UserError
from grpo.rewards import answers_match, extract_gold, extract_prediction, make_math_accuracy, math_accuracy
from grpo.rewards.math import last_boxed

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize(
    "text, style, gold",
    [
        ("3 + 4 = 7\n#### 7", "gsm8k", "7"),
        ("48 * 26 = 1,248 seats.\n#### 1,248", "auto", "1,248"),
        ("It fell to -7.\n#### -7", "auto", "-7"),
        ("first #### 3 then #### 5", "gsm8k", "5"),  # the last marker wins
        ("no marker here", "gsm8k", None),
        ("so $x = \\boxed{-5}$.", "boxed", "-5"),
        ("thus \\boxed{\\frac{3}{4}}.", "auto", "\\frac{3}{4}"),
        ("nested \\boxed{\\frac{\\sqrt{2}}{2}}", "auto", "\\frac{\\sqrt{2}}{2}"),
        ("two boxes \\boxed{1} and \\boxed{a^{2}}", "boxed", "a^{2}"),
        ("\\boxed 5 apples", "boxed", "5"),
        ("truncated \\boxed{\\frac{1}{2}", "boxed", None),
        ("no box", "boxed", None),
        ("  42 ", "plain", "42"),
        (42, "auto", "42"),
        (-0.5, "plain", "-0.5"),
        (None, "auto", None),
        ("   ", "plain", None),
    ],
)
def test_extract_gold(text, style, gold):
    assert extract_gold(text, style) == gold


@pytest.mark.parametrize(
    "text, source, pred",
    [
        ("<think>7*6</think><answer>42</answer>", "answer_tag", "42"),
        ("<answer>1</answer> then <answer> 2 </answer>", "answer_tag", "2"),
        ("<answer></answer>", "answer_tag", None),
        ("the result is \\boxed{\\dfrac{3}{4}}", "boxed", "\\dfrac{3}{4}"),
        ("it costs 1,234 dollars, not 12", "last_number", "12"),
        ("so the total is 1,234", "last_number", "1234"),
        ("the change is -3.5 degrees", "last_number", "-3.5"),
        ("a ratio of 3/4", "last_number", "3/4"),
        ("so x = 3y", "last_number", "3y"),  # a coefficient keeps its variable
        ("the area is 2\\pi", "last_number", "2\\pi"),
        ("it took 45min.", "last_number", "45min"),
        ("it took 45 min.", "last_number", "45"),
        ("<answer>7</answer> and \\boxed{8} and 9", "auto", "7"),
        ("\\boxed{8} and 9", "auto", "8"),
        ("just 9 left", "auto", "9"),
        ("I do not know.", "auto", None),
        ("", "auto", None),
    ],
)
def test_extract_prediction(text, source, pred):
    assert extract_prediction(text, source) == pred


@pytest.mark.parametrize(
    "gold, pred, match",
    [
        # fractions, as LaTeX, slash and decimal; math-verify compares values
        ("\\frac{3}{4}", "0.75", True),
        ("\\frac{3}{4}", "3/4", True),
        ("\\dfrac{3}{4}", "\\frac34", True),
        ("\\frac{3}{4}", "\\frac{4}{3}", False),
        ("-\\frac{3}{2}", "-1.5", True),
        # negatives
        ("-7", "-7", True),
        ("-7", "7", False),
        ("-7", "\u22127", True),  # Unicode minus sign
        # LaTeX expressions
        ("5\\sqrt{2}", "\\sqrt{50}", True),
        ("9\\pi", "9 \\pi", True),
        ("\\left(2, \\frac{\\pi}{2}\\right)", "(2, \\frac{\\pi}{2})", True),
        # thousands separators
        ("1,248", "1248", True),
        ("22,375", "22,375", True),
        ("1234567", "1,234,567", True),
        ("1,248", "1,284", False),
        # units and currency
        ("12", "12 dollars", True),
        ("12", "$12", True),
        ("18.5", "18.5 km.", True),
        ("12", "13 dollars", False),
        # decimals
        ("0.42", "0.420", True),
        ("12", "12.5", False),
        # no answer at all
        ("7", None, False),
        ("7", "", False),
        (None, "7", False),
    ],
)
def test_answers_match(gold, pred, match):
    assert answers_match(gold, pred) is match


@pytest.mark.parametrize(
    "gold, pred, match",
    [
        # variables, with or without a coefficient, are never dropped as units
        ("3x", "3", False),
        ("3", "3x", False),
        ("3x", "3y", False),
        ("5n", "5", False),
        ("2", "2 x", False),
        ("3xy", "3", False),
        ("2ab", "2", False),
        ("\\frac{1}{2}t", "\\frac{1}{2}", False),
        # single letters math-verify itself would read as units (t, m, h, s, g): still variables
        ("3t", "3", False),
        ("5m", "5", False),
        ("2", "2h", False),
        ("3", "3 s", False),
        ("5", "5 m", False),
        ("3x", "3x", True),
        ("2x+3", "3+2x", True),
        # imaginary unit and constants
        ("2i", "2", False),
        ("2", "2i", False),
        ("3 + 2i", "3", False),
        ("1+i", "1+i", True),
        ("3e", "3", False),
        ("2\\pi", "2", False),
        ("2", "2\\pi", False),
        ("2", "2 pi", False),
        ("2", "2 \\pi", False),
        ("2\\pi", "2 \\pi", True),
        ("3", "3 theta", False),
        # unit words, on either side, with or without a space or a full stop
        ("12", "12 dollars", True),
        ("12 dollars", "12", True),
        ("24", "24 cards", True),
        ("24 cards", "24", True),
        ("24", "24 cards.", True),
        ("3", "3 cm.", True),
        ("45", "45 minutes", True),
        ("5", "5kg", True),
        ("7", "7 days.", True),
        ("10", "10 square meters", True),
        ("50", "50 percent", True),
        ("5", "5 \\text{ cm}", True),
        ("5\\text{ cm}", "5", True),
        ("12", "13 dollars", False),
        ("24", "25 cards", False),
        # currency and thousands separators
        ("1234.5", "$1,234.50", True),
        ("1,234.50", "\\$1234.5", True),
        ("1,234", "1234 dollars", True),
        ("1,234", "$1,243", False),
    ],
)
def test_only_unit_words_are_dropped_never_variables_or_constants(gold, pred, match):
    # No deadline: a cold math-verify import under load can take longer than the default 5 s; the
    # deadline has its own tests below.
    assert answers_match(gold, pred, timeout_s=None) is match


@pytest.mark.parametrize(
    "completion, gold, reward",
    [
        ("so x = 3y", "3", 0.0),  # the last number is the coefficient of y, not an answer of 3
        ("so x = 3y", "3x", 0.0),
        ("the roots are 1 and 2i", "2", 0.0),
        ("so it is 3y", "3y", 1.0),
        ("the pen costs 3 dollars", "3", 1.0),
        ("the trip takes 45min.", "45", 1.0),
    ],
)
def test_last_number_keeps_an_attached_variable(completion, gold, reward):
    check = make_math_accuracy(gold_style="plain", pred_source="last_number", timeout_s=None)
    assert check(["q"], [completion], [[0]], answer=[gold]) == [reward]


def test_answers_match_prose_answer():
    assert answers_match("7", extract_prediction("<answer>The answer is 7.</answer>"))


def test_math_accuracy_end_to_end():
    completions = [
        "<think>48*26</think><answer>1248</answer>",
        "<think>cold</think><answer>-7 degrees</answer>",
        "<think>hmm</think><answer>0.5</answer>",
        "<think>I give up</think>",
        "<think>fine</think><answer>3</answer>",
    ]
    golds = ["#### 1,248", "#### -7", "\\boxed{\\frac{1}{2}}", "#### 4", "no gold here ####"]
    rewards = math_accuracy(["q"] * 5, completions, [[0]] * 5, answer=golds)
    # The last gold has a marker but nothing after it: not applicable.
    assert rewards == [1.0, 1.0, 1.0, 0.0, None]


def test_math_accuracy_on_fixtures_scores_gold_as_correct():
    rows = [json.loads(line) for line in (FIXTURES / "gsm8k_style.jsonl").read_text().splitlines()]
    golds = [r["answer"] for r in rows]
    completions = [f"<think>...</think><answer>{extract_gold(g)}</answer>" for g in golds]
    assert math_accuracy(["q"] * len(rows), completions, [[0]] * len(rows), answer=golds) == [1.0] * 16

    rows = [json.loads(line) for line in (FIXTURES / "math_style.jsonl").read_text().splitlines()]
    reward = make_math_accuracy(gold_style="boxed", pred_source="boxed")
    solutions = [r["solution"] for r in rows]
    completions = [f"so it is \\boxed{{{last_boxed(s)}}}" for s in solutions]
    assert reward(["q"] * 16, completions, [[0]] * 16, answer=solutions) == [1.0] * 16
    wrong = ["\\boxed{123456}"] * 16
    assert reward(["q"] * 16, wrong, [[0]] * 16, answer=solutions) == [0.0] * 16


def test_math_accuracy_without_answer_column_is_a_user_error():
    with pytest.raises(UserError, match="needs an 'answer' column.*columns here: level"):
        math_accuracy(["q"], ["<answer>1</answer>"], [[0]], level=[1])


def test_bad_styles_are_user_errors():
    with pytest.raises(UserError, match="gold_style must be one of auto, gsm8k, boxed, plain; got 'latex'"):
        make_math_accuracy(gold_style="latex")
    with pytest.raises(UserError, match="extract_prediction: source must be one of"):
        extract_prediction("1", source="first_number")


def test_answers_match_works_outside_the_main_thread():
    # math-verify's own signal-based timeout raises outside the main thread; ours must not.
    pairs = [("\\frac{1}{2}", "0.5"), ("1,234", "1234"), ("-7", "7")]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda p: answers_match(*p), pairs))
    assert results == [True, True, False]


@pytest.mark.parametrize("in_thread", [False, True], ids=["main-thread", "worker-thread"])
def test_answers_match_gives_up_after_timeout(monkeypatch, in_thread):
    def endless_verify(gold, pred):
        while True:  # pure Python, like a runaway sympy simplification
            pass

    monkeypatch.setattr("grpo.rewards.math._verify", endless_verify)
    result = {}

    def check():
        start = time.monotonic()
        result["match"] = answers_match("1", "1", timeout_s=0.2)
        result["seconds"] = time.monotonic() - start

    if in_thread:
        thread = threading.Thread(target=check)
        thread.start()
        thread.join(timeout=10)
        assert not thread.is_alive()
    else:
        check()
    assert result["match"] is False
    assert result["seconds"] < 3.0


@pytest.mark.slow
def test_the_first_comparison_in_a_process_is_not_timed_out_by_math_verify_imports():
    # A fresh interpreter: importing sympy and math-verify and building the LaTeX parser takes seconds,
    # which must not count against the deadline of the first comparison.
    code = ("from grpo.rewards import answers_match\n"
            "assert answers_match('\\\\frac{1}{2}', '0.5', timeout_s=2.0)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
