"""Math answer checking: extract the gold and predicted answers, compare them with math-verify.

This is the one checker for math: the `math_accuracy` reward and evaluation both call
`extract_gold`, `extract_prediction` and `answers_match`, so the training signal and the reported
accuracy cannot drift apart (DeepSeek-R1's accuracy reward: 1 if the final answer equals the ground
truth, else 0).

Gold answers come in three styles:
    gsm8k   reasoning text, then `#### 1,234`          -> "1,234"
    boxed   MATH solutions ending in `\\boxed{\\frac{1}{2}}` -> "\\frac{1}{2}" (nested braces kept)
    plain   the whole column is the answer (a string or a number)

Predictions come from the last `<answer>...</answer>` block, the last `\\boxed{...}`, or the last
number in the completion (with a variable or command written onto it: `3y`, `2\\pi`).

Comparison: both strings are parsed by `math_verify.parse` and compared by
`math_verify.verify(gold, pred)`, in that order (verify is not symmetric). Only unit words are dropped
(`is_unit_word`): "24 cards" and "$1,234.50" are read as bare numbers, but a letter that is not a unit
word is a variable or constant and stays (`3x`, `2i`, `3e`, `2 pi`); for such an answer math-verify's
own unit removal, which would read `3t` or `5 m` as units, is switched off. math-verify's signal-based
timeouts are switched off (`parsing_timeout=None`, `timeout_seconds=None`) because they fail outside
the main thread; `answers_match` enforces its own limit with `run_with_deadline`, which works in
threads and worker processes alike; the one-time import and set-up of math-verify runs before the
deadline starts.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from dataclasses import dataclass
from string import ascii_letters
from typing import Any

from grpo.errors import UserError
from grpo.utils.deadline import CallTimeout, run_with_deadline

# math_verify is imported in the functions that call it: importing grpo.rewards stays light (0.3 s here,
# and sympy behind it), as the package docstring promises.

logger = logging.getLogger(__name__)

GOLD_STYLES = ("auto", "gsm8k", "boxed", "plain")
PRED_SOURCES = ("auto", "answer_tag", "boxed", "last_number", "gsm8k")

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_GSM8K_ANSWER = re.compile(r"####[ \t]*([^\n]*)")
_BOXED = re.compile(r"\\(?:boxed|fbox)\b")
# A number, optionally with thousands separators, a decimal part, or as a simple fraction a/b.
_NUMBER = r"[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|[-+\u2212]?\.\d+"
# The last number of a completion keeps letters or a command written onto it: in "x = 3y" the answer is
# 3y, not 3 (a coefficient is not an answer).
_LAST_NUMBER_RE = re.compile(r"(?:" + _NUMBER + r")(?:[A-Za-z]+|\\[A-Za-z]+)?")
# "12", "$1,234.50", "12 dollars", "3 cm.", "5kg": a number with an optional currency sign and words,
# which are dropped when every one is a unit word. (Each word ends at a non-letter: no backtracking.)
_NUMBER_WITH_WORDS = re.compile(
    r"^\s*(?:\\?\$\s*)?(?P<num>" + _NUMBER + r")(?P<words>(?:\s*[A-Za-z]+(?![A-Za-z]))*)\s*\.?\s*$"
)
UNIT_ABBREVIATIONS = frozenset(
    "mm cm km ft yd mi ml mg kg lb lbs oz hr hrs min mins sec secs mph kph kmh usd "
    "st nd rd th".split()  # and ordinal suffixes: "3rd" is 3
)
"""Short unit words: dropped after a number even when written onto it ("5kg")."""
MATH_WORDS = frozenset(
    "sin cos tan cot csc log exp sqrt inf infty alpha beta gamma delta epsilon zeta eta theta iota "
    "kappa lambda rho sigma tau phi chi psi omega".split()
)
"""Words of three or more letters that are mathematics, never units ("3 theta" is 3θ)."""


def extract_gold(text: Any, style: str = "auto") -> str | None:
    """Return the gold answer string from a dataset's answer column, or None if there is none.

    >>> extract_gold("She has 3 + 4 = 7 apples.\\n#### 7")
    '7'
    >>> extract_gold("so the answer is $\\\\boxed{\\\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    >>> extract_gold(42, style="plain")
    '42'
    """
    if style not in GOLD_STYLES:
        raise UserError(f"extract_gold: style must be one of {', '.join(GOLD_STYLES)}; got {style!r}")
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        return None
    if style == "auto":
        style = "gsm8k" if "####" in text else "boxed" if _BOXED.search(text) else "plain"
    if style == "gsm8k":
        if "####" not in text:
            return None
        answer = text.rsplit("####", 1)[1].strip()
    elif style == "boxed":
        answer = last_boxed(text)
    else:
        answer = text.strip()
    return answer or None


def extract_prediction(text: str, source: str = "auto") -> str | None:
    """Return the model's final answer from a completion, or None if it gave none.

    source: "answer_tag" (last <answer>...</answer>), "boxed" (last \\boxed{...}), "last_number",
    "gsm8k" (what follows the last `####` on its line: GSM8K's answer format, read strictly), or "auto"
    (the first of answer_tag, boxed and last_number that finds something).

    >>> extract_prediction("<think>2+2</think><answer>4</answer>", source="answer_tag")
    '4'
    >>> extract_prediction("... so it costs $1,234.50 in total", source="last_number")
    '1234.50'
    >>> extract_prediction("so x = 3y", source="last_number")  # a coefficient keeps its variable
    '3y'
    >>> extract_prediction("3 + 4 = 7\\n#### 7", source="gsm8k")
    '7'
    >>> extract_prediction("it is 7", source="gsm8k") is None
    True
    """
    if source not in PRED_SOURCES:
        raise UserError(
            f"extract_prediction: source must be one of {', '.join(PRED_SOURCES)}; got {source!r}"
        )
    if not isinstance(text, str):
        return None
    sources = ("answer_tag", "boxed", "last_number") if source == "auto" else (source,)
    for src in sources:
        if src == "answer_tag":
            tags = _ANSWER_TAG.findall(text)
            answer = tags[-1].strip() if tags else None
        elif src == "boxed":
            answer = last_boxed(text)
        elif src == "gsm8k":
            found = _GSM8K_ANSWER.findall(text)
            answer = found[-1].strip() if found else None
        else:
            numbers = _LAST_NUMBER_RE.findall(text)
            answer = numbers[-1].replace(",", "") if numbers else None
        if answer:
            return answer
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, nested braces included.

    >>> last_boxed("\\\\boxed{1} then \\\\boxed{\\\\frac{a}{b^{2}}}")
    '\\\\frac{a}{b^{2}}'
    """
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        i = start
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] != "{":
            # `\boxed 5`: the argument runs to the next space or `$`.
            return re.split(r"[\s$]", text[i:], maxsplit=1)[0] or None
        depth = 0
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j].strip() or None
        # Unbalanced braces (e.g. a truncated completion): try an earlier box.
    return None


def answers_match(gold: str | None, pred: str | None, timeout_s: float | None = 5.0) -> bool:
    """True if `pred` is mathematically equal to `gold` (math-verify), within `timeout_s` seconds.

    Safe in any thread or worker process. A missing answer, an unparsable one, or a check that runs
    out of time counts as no match.

    >>> answers_match("1,234", "1234"), answers_match("\\\\frac{3}{4}", "0.75"), answers_match("-2", "2")
    (True, True, False)
    """
    if not gold or not pred:
        return False
    _warm_up_math_verify()
    try:
        return run_with_deadline(lambda: _verify(gold, pred), timeout_s)
    except CallTimeout:
        logger.warning("answers_match: gave up after %s s comparing %.80r with %.80r", timeout_s, gold, pred)
        return False


def _verify(gold: str, pred: str) -> bool:
    from math_verify import verify

    gold_parsed, pred_parsed = _parse(gold), _parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def is_unit_word(word: str, spaced: bool = True) -> bool:
    """True if `word`, following a number, is a unit to drop rather than a variable or constant.

    A unit word is a short unit (`UNIT_ABBREVIATIONS`), or, when a space separates it from the number,
    any word of three or more letters that is not mathematics (`MATH_WORDS`): GSM8K answers count
    "cards" and "apples" as well as "dollars". One or two other letters are variables (`x`, `ab`), the
    imaginary unit `i` or the constants `e` and `pi`.

    >>> [is_unit_word(w) for w in ["cards", "cm", "x", "i", "pi", "xy", "theta"]]
    [True, True, False, False, False, False, False]
    >>> is_unit_word("kg", spaced=False), is_unit_word("apples", spaced=False)
    (True, False)
    """
    word = word.lower()
    return word in UNIT_ABBREVIATIONS or (spaced and len(word) >= 3 and word not in MATH_WORDS)


def _unit_free_number(answer: str) -> str | None:
    """The bare number of an answer whose only other parts are a currency sign and unit words, else None.

    >>> _unit_free_number("$1,234.50"), _unit_free_number("24 cards."), _unit_free_number("3x")
    ('1234.50', '24', None)
    """
    m = _NUMBER_WITH_WORDS.match(answer)
    if not m:
        return None
    attached = m["words"][:1].isalpha()  # "5kg": the first word is written onto the number
    if not all(is_unit_word(w, spaced=i > 0 or not attached) for i, w in enumerate(m["words"].split())):
        return None
    return m["num"].replace(",", "").replace("\u2212", "-")


def _may_drop_units(answer: str) -> bool:
    """False when `answer` ends in a word that is not a unit word (`3t`, `2ab`, `5 m`): math-verify's
    own unit list includes such letters (t, m, s, h, ab, ...) and would drop the variable."""
    core = (last_boxed(answer) or answer).rstrip(" .$")
    before = core.rstrip(ascii_letters)
    if before == core or before.endswith("\\"):  # no trailing word, or a command such as \pi
        return True
    return is_unit_word(core[len(before):], spaced=before[-1:].isspace())


@functools.lru_cache(maxsize=2)
def _extraction_configs(drop_units: bool) -> tuple:
    """math-verify's default extraction (LaTeX, then plain expressions), its unit removal on or off."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    latex = LatexExtractionConfig()
    if not drop_units:
        normalization = dataclasses.replace(latex.normalization_config, units=False)
        latex = dataclasses.replace(latex, normalization_config=normalization)
    return (latex, ExprExtractionConfig())


def _parse(answer: str) -> list:
    """math_verify.parse of one extracted answer, trying a bare number (unit words dropped) first."""
    from math_verify import parse

    _silence_math_verify_timeout_warning()
    answer = _unit_free_number(answer) or answer
    configs = _extraction_configs(_may_drop_units(answer))
    # Wrapped in $...$ the LaTeX extractor reads the whole string as math (\dfrac, \sqrt, tuples);
    # a bare parse is the fallback for prose such as "x is 5".
    parsed = parse(f"${answer}$", extraction_config=configs, parsing_timeout=None)
    return parsed or parse(answer, extraction_config=configs, parsing_timeout=None)


@functools.cache
def _warm_up_math_verify() -> None:
    # The first comparisons in a process import sympy and math-verify, build the LaTeX parsers and
    # import sympy's simplification on first use (10-30 s on a loaded 2-core machine). Done once,
    # outside the deadline, so that `timeout_s` limits one comparison and a correct answer is not
    # scored 0 for being among the first; a number pair and a symbolic pair cover both paths.
    from math_verify import verify

    for gold, pred in (("\\frac{1}{2}", "0.5"), ("2x", "3x")):
        verify(_parse(gold), _parse(pred), timeout_seconds=None)


def _silence_math_verify_timeout_warning() -> None:
    # math-verify warns once that its timeouts are off; we enforce our own (see module docstring).
    import math_verify.grader
    import math_verify.parser

    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True


@dataclass(frozen=True)
class MathAccuracy:
    """Reward 1.0 if the completion's answer matches the row's gold answer, else 0.0.

    Rows whose gold answer cannot be extracted get None ("not applicable"). A dataclass rather than
    a closure so that it pickles into reward worker processes.
    """

    gold_style: str = "auto"
    pred_source: str = "auto"
    timeout_s: float | None = 5.0

    def __post_init__(self):
        for field, value, allowed in (
            ("gold_style", self.gold_style, GOLD_STYLES),
            ("pred_source", self.pred_source, PRED_SOURCES),
        ):
            if value not in allowed:
                raise UserError(f"math_accuracy: {field} must be one of {', '.join(allowed)}; got {value!r}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise UserError(f"math_accuracy: timeout_s must be > 0 or null; got {self.timeout_s!r}")

    def __call__(
        self, prompts, completions, completion_ids=None, answer=None, **columns
    ) -> list[float | None]:
        if answer is None:
            raise UserError(
                "math_accuracy needs an 'answer' column with the gold answers; set answer_column in the "
                f"data config (columns here: {', '.join(sorted(columns)) or 'none'})"
            )
        rewards: list[float | None] = []
        for completion, gold_text in zip(completions, answer, strict=True):
            gold = extract_gold(gold_text, self.gold_style)
            if gold is None:
                rewards.append(None)
                continue
            pred = extract_prediction(completion, self.pred_source)
            rewards.append(1.0 if answers_match(gold, pred, self.timeout_s) else 0.0)
        return rewards


def make_math_accuracy(
    gold_style: str = "auto", pred_source: str = "auto", timeout_s: float | None = 5.0
) -> MathAccuracy:
    """Build a `math_accuracy` reward with the given answer styles (see module docstring)."""
    return MathAccuracy(gold_style=gold_style, pred_source=pred_source, timeout_s=timeout_s)


math_accuracy = MathAccuracy()
"""The default math accuracy reward: gold and prediction styles detected automatically."""
