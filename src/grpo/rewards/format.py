"""Shape rewards: the DeepSeek-R1 output format, and penalties on length and repetition.

Format (DeepSeek-R1, §2.2.2): the reasoning goes in <think>...</think>, then the answer in
<answer>...</answer>.
    r1_format_strict   1.0 if the completion is exactly one non-empty think block followed by one
                       non-empty answer block, only whitespace around and between them; else 0.0
    r1_format_lenient  1.0 if a <think>...</think> block appears somewhere before an
                       <answer>...</answer> block, whatever else surrounds them; else 0.0

Format (GSM8K): the solution ends with one line `#### N`, N a number.
    gsm8k_format       1.0 for worked text, then `#### N` (N a number) as the last non-empty line and
                       the only `####`; 0.5 for a `#### N` line anywhere else (more text or more such
                       lines after it, as pretrained models often write, or no working before it: a
                       bare `#### N` must not be the easiest way to the full format reward); else 0.0

Soft overlong punishment (DAPO, arXiv 2503.14476, eq. 13): `grpo.algorithm.soft_overlong_penalty`
of the completion's length in tokens, L_max = max_len, L_cache = cache_len.
Length penalty: -min(max_penalty, per_token * max(0, L - target_len)).
Repetition penalty: -scale * (1 - distinct n-grams / n-grams), over token ids or words.

Every factory returns a frozen dataclass instance (not a closure) so rewards pickle into worker
processes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from grpo.errors import UserError

_TAG = r"</?(?:think|answer)>"
_STRICT = re.compile(
    r"\s*<think>(?P<think>(?:(?!" + _TAG + r").)*)</think>"
    r"\s*<answer>(?P<answer>(?:(?!" + _TAG + r").)*)</answer>\s*",
    re.DOTALL,
)
_LENIENT = re.compile(r"<think>.*?</think>.*?<answer>.*?</answer>", re.DOTALL)
_GSM8K_LINE = re.compile(r"####\s*\$?\s*[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?\s*")


def r1_format_strict(prompts, completions, completion_ids=None, **columns) -> list[float]:
    """1.0 for exactly `<think>reasoning</think><answer>answer</answer>` (whitespace allowed), else 0.0.

    >>> r1_format_strict(["q"] * 3, ["<think>a</think>\\n<answer>1</answer>",
    ...                               "Sure! <think>a</think><answer>1</answer>",
    ...                               "<think></think><answer>1</answer>"])
    [1.0, 0.0, 0.0]
    """
    rewards = []
    for completion in completions:
        m = _STRICT.fullmatch(completion)
        ok = m is not None and m["think"].strip() != "" and m["answer"].strip() != ""
        rewards.append(1.0 if ok else 0.0)
    return rewards


def r1_format_lenient(prompts, completions, completion_ids=None, **columns) -> list[float]:
    """1.0 if a <think>...</think> block comes before an <answer>...</answer> block anywhere, else 0.0.

    >>> r1_format_lenient(["q"] * 2, ["Sure! <think>a</think> so <answer>1</answer> done",
    ...                               "<answer>1</answer><think>a</think>"])
    [1.0, 0.0]
    """
    return [1.0 if _LENIENT.search(completion) else 0.0 for completion in completions]


def gsm8k_format(prompts, completions, completion_ids=None, **columns) -> list[float]:
    """1.0 for working followed by one final `#### N` line (N a number); 0.5 for a `#### N` line with more
    after it or no working before it; else 0.0.

    >>> gsm8k_format(["q"] * 6, ["3 + 4 = 7\\n#### 7", "7\\n#### 7\\n#### 7", "so 7\\n#### 7 apples",
    ...                          "3 + 4 = 7\\n#### 7\\n\\n", "#### 7", "7"])
    [1.0, 0.5, 0.0, 1.0, 0.5, 0.0]
    """
    rewards = []
    for completion in completions:
        lines = [line.strip() for line in completion.strip().splitlines()]
        answer_lines = [i for i, line in enumerate(lines) if _GSM8K_LINE.fullmatch(line)]
        worked = any(lines[:-1])
        if completion.count("####") == 1 and answer_lines == [len(lines) - 1] and worked:
            rewards.append(1.0)
        else:
            rewards.append(0.5 if answer_lines else 0.0)
    return rewards


def _lengths(fn_name: str, completions, completion_ids) -> list[int]:
    if completion_ids is None:
        raise UserError(f"{fn_name}: needs completion_ids (the completion token ids) to measure length")
    return [len(ids) for ids in completion_ids]


@dataclass(frozen=True)
class SoftOverlongPenalty:
    """DAPO soft overlong punishment (see module docstring); `make_soft_overlong_penalty` builds it."""

    max_len: int
    cache_len: int

    def __post_init__(self):
        if not (isinstance(self.max_len, int) and isinstance(self.cache_len, int)):
            raise UserError("soft_overlong_penalty: max_len and cache_len must be integers (token counts)")
        if not 0 < self.cache_len <= self.max_len:
            raise UserError(
                f"soft_overlong_penalty: need 0 < cache_len <= max_len; got max_len={self.max_len}, "
                f"cache_len={self.cache_len}"
            )

    def __call__(self, prompts, completions, completion_ids=None, **columns) -> list[float]:
        # on first use: importing the rewards package stays light (grpo.algorithm imports torch)
        import torch

        from grpo.algorithm.overlong import soft_overlong_penalty

        lengths = torch.tensor(_lengths("soft_overlong_penalty", completions, completion_ids),
                               dtype=torch.float64)
        # float64, as Python's floats
        return soft_overlong_penalty(lengths, self.max_len, self.cache_len).tolist()


def make_soft_overlong_penalty(max_len: int, cache_len: int) -> SoftOverlongPenalty:
    """DAPO soft overlong punishment; e.g. max_len=20, cache_len=4: L=16 -> 0, L=18 -> -0.5, L=21 -> -1.

    >>> make_soft_overlong_penalty(20, 4)(None, [""] * 4, [[0] * 16, [0] * 18, [0] * 20, [0] * 21])
    [0.0, -0.5, -1.0, -1.0]
    """
    return SoftOverlongPenalty(max_len=max_len, cache_len=cache_len)


@dataclass(frozen=True)
class LengthPenalty:
    """-min(max_penalty, per_token * max(0, L - target_len)), L in tokens or characters."""

    target_len: int
    per_token: float
    max_penalty: float = 1.0
    unit: str = "tokens"

    def __post_init__(self):
        if self.unit not in ("tokens", "chars"):
            raise UserError(f"length_penalty: unit must be 'tokens' or 'chars'; got {self.unit!r}")
        if self.target_len < 0 or self.per_token < 0 or self.max_penalty < 0:
            raise UserError(
                "length_penalty: target_len, per_token and max_penalty must be >= 0; got "
                f"target_len={self.target_len}, per_token={self.per_token}, max_penalty={self.max_penalty}"
            )

    def __call__(self, prompts, completions, completion_ids=None, **columns) -> list[float]:
        if self.unit == "chars":
            lengths = [len(c) for c in completions]
        else:
            lengths = _lengths("length_penalty", completions, completion_ids)
        return [0.0 - min(self.max_penalty, self.per_token * max(0, n - self.target_len)) for n in lengths]


def make_length_penalty(
    target_len: int, per_token: float, max_penalty: float = 1.0, unit: str = "tokens"
) -> LengthPenalty:
    """Linear penalty on length beyond `target_len`, capped at `max_penalty` (a positive number).

    >>> make_length_penalty(10, 0.25)(None, [""] * 3, [[0] * 8, [0] * 13, [0] * 40])
    [0.0, -0.75, -1.0]
    """
    return LengthPenalty(target_len=target_len, per_token=per_token, max_penalty=max_penalty, unit=unit)


@dataclass(frozen=True)
class RepetitionPenalty:
    """-scale * (1 - distinct n-grams / total n-grams); 0 for completions shorter than n."""

    ngram_size: int = 3
    scale: float = 1.0
    unit: str = "tokens"

    def __post_init__(self):
        if self.unit not in ("tokens", "words"):
            raise UserError(f"repetition_penalty: unit must be 'tokens' or 'words'; got {self.unit!r}")
        if self.ngram_size < 1 or self.scale < 0:
            raise UserError(
                f"repetition_penalty: need ngram_size >= 1 and scale >= 0; got ngram_size={self.ngram_size}, "
                f"scale={self.scale}"
            )

    def __call__(self, prompts, completions, completion_ids=None, **columns) -> list[float]:
        if self.unit == "words":
            sequences = [c.split() for c in completions]
        else:
            if completion_ids is None:
                raise UserError("repetition_penalty: unit='tokens' needs completion_ids")
            sequences = [list(ids) for ids in completion_ids]
        rewards = []
        for seq in sequences:
            ngrams = [tuple(seq[i : i + self.ngram_size]) for i in range(len(seq) - self.ngram_size + 1)]
            if not ngrams:
                rewards.append(0.0)
                continue
            rewards.append(self.scale * (len(set(ngrams)) / len(ngrams) - 1.0))
        return rewards


def make_repetition_penalty(
    ngram_size: int = 3, scale: float = 1.0, unit: str = "tokens"
) -> RepetitionPenalty:
    """Penalise repeated n-grams; "a b a b a b" in words with n=2: 5 bigrams, 2 distinct -> -0.6.

    >>> make_repetition_penalty(ngram_size=2, unit="words")(None, ["a b a b a b", "a b c"])
    [-0.6, 0.0]
    """
    return RepetitionPenalty(ngram_size=ngram_size, scale=scale, unit=unit)
