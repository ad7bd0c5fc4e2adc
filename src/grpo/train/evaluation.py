"""Evaluating a policy on held-out prompts: training's greedy accuracy (`evaluate_accuracy`, the first
reward function applied to greedy completions, so that the metric and the reward cannot drift apart) and
`grpo eval`'s greedy accuracy, pass@k and maj@k (DeepSeekMath §5.2.2; the command is `grpo.commands.eval`).

For every prompt the model answers once greedily and n times by sampling (temperature, top_p).
Correctness is decided by the reward function itself (the training accuracy reward), so the metric and
the training signal cannot drift apart: a completion is correct when the reward returns 1.0 (None,
"not applicable", counts as wrong, as in training's held-out accuracy).

    greedy accuracy   mean over prompts of the reward of the greedy completion (the same function
                      as training's `eval/accuracy`)
    pass@k            mean over prompts of 1 - C(n-c, k) / C(n, k), c = correct samples of n
                      (unbiased, Chen et al. 2021; `grpo.algorithm.pass_at_k`)
    maj@k             mean over prompts of the expected correctness of the majority answer of k
                      samples drawn without replacement from the n (see `maj_at_k`); answers the
                      reward's own comparison calls equal vote together (`answer_equivalence`)

docs/evaluation.md states the estimators with worked examples.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import random
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import torch

from grpo.algorithm.evaluation import answer_classes, majority_vote, pass_at_k
from grpo.config import ModelConfig
from grpo.data.synthetic import parse_answer
from grpo.data.templates import decode_completions, encode_prompts
from grpo.errors import UserError
from grpo.models.loading import load_policy, stop_token_ids
from grpo.rewards.combine import reward_inputs
from grpo.rewards.loader import load_reward_function
from grpo.rewards.math import answers_match, extract_prediction, make_math_accuracy
from grpo.rollout.engine import RolloutEngine, SamplingParams
from grpo.rollout.hf import HFEngine

MAX_SUBSETS = 1000
"""maj@k enumerates every k-subset of the n samples when there are at most this many, else draws this many."""

_NUMBER = re.compile(r"^[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?$|^[-+\u2212]?\.\d+$")


@dataclass
class EvalResult:
    """What `evaluate` measured; every rate is in [0, 1]."""

    greedy_accuracy: float
    """Mean reward-checker verdict of the greedy (temperature 0) completions."""
    pass_at_k: dict[int, float]
    """k -> mean over prompts of the unbiased pass@k estimate from n samples."""
    maj_at_k: dict[int, float]
    """k -> mean over prompts of the expected majority-vote correctness of k of the n samples."""
    sample_accuracy: float
    """Fraction of all sampled completions that are correct (= pass@1)."""
    n: int
    """Samples per prompt."""
    num_prompts: int
    """Prompts evaluated."""
    correct_counts: list[int] = field(default_factory=list)
    """Per prompt: how many of its n samples were correct (c in the pass@k formula)."""
    majority_answers: list[str | None] = field(default_factory=list)
    """Per prompt: the majority answer of all n samples, as its class's first-seen normalised answer
    (None: no sample gave an answer)."""
    greedy_by_checker: dict[str, float] = field(default_factory=dict)
    """Greedy accuracy under each extra checker (`greedy_checkers`), e.g. strict (the answer where the
    format puts it) and lenient (the last number anywhere), on the same greedy completions."""
    num_sampled_prompts: int = 0
    """Prompts that were sampled n times (the first this many; pass@k, maj@k and sampled accuracy)."""
    greedy_scores: list[float] = field(default_factory=list)
    """Per prompt, in order: the checker's score of its greedy completion (`greedy_accuracy` is their mean);
    with `greedy_scores_by_checker`, what a paired comparison of two models over the same problems reads
    (`grpo.stats.paired_ci`). Empty in evaluations saved before it was kept."""
    greedy_scores_by_checker: dict[str, list[float]] = field(default_factory=dict)
    """Per extra checker, per prompt: 1.0 where it judged the greedy completion correct, else 0.0 (the means
    are `greedy_by_checker`)."""


def normalize_answer(answer: str | None) -> str | None:
    """Canonical form for voting, so that equal values vote together.

    Numbers lose thousands separators, a leading '+', trailing zeros and a trailing '.'; '$' signs and
    surrounding whitespace go; anything else is compared as written (whitespace collapsed).

    >>> [normalize_answer(x) for x in ["1,234", " 3.50 ", "$7", "+4.", "x = 2", ""]]
    ['1234', '3.5', '7', '4', 'x = 2', None]
    """
    if answer is None:
        return None
    text = " ".join(answer.replace("$", "").split()).rstrip(".")
    if not text:
        return None
    if _NUMBER.match(text):
        try:
            value = Decimal(text.replace(",", "").replace("\u2212", "-").lstrip("+"))
        except InvalidOperation:
            return text
        value = value.normalize()
        return "0" if value.is_zero() else format(value, "f")
    return text


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int, rng: random.Random | None = None,
             max_subsets: int = MAX_SUBSETS, equivalent: Callable[[str, str], bool] | None = None) -> float:
    """Expected correctness of the majority answer of k samples drawn without replacement from n.

    Answers vote by class (`grpo.algorithm.evaluation.answer_classes`): with `equivalent`, the
    reward's comparison (`answer_equivalence`), 0.5, 1/2 and \\frac{1}{2} are one answer; without it
    only equal strings are. The classes are formed once over all n answers. The exact mean over all
    C(n, k) subsets when there are at most `max_subsets` of them, else the mean over `max_subsets`
    uniformly drawn subsets (`rng`). A voted class is correct when at least half of the samples in it
    were judged correct by the reward (for a reward that only looks at the answer, all of them or
    none). Ties go to the class seen first (`majority_vote`); samples are i.i.d., so their order is
    random. A subset in which no sample gave an answer is wrong.

    Example: answers ["4", "4", "5", None], correct [1, 1, 0, 0] (gold 4). k=2: of the 6 pairs only
    {"5", None} votes "5", so maj@2 = 5/6. k=1 -> 2/4 = 0.5 (maj@1 is the sample accuracy).
    """
    n = len(answers)
    if not 1 <= k <= n:
        raise ValueError(f"maj_at_k needs 1 <= k <= n, got n={n}, k={k}")
    classes = answer_classes(answers, equivalent)
    votes: dict[int, list[bool]] = {}
    for c, ok in zip(classes, correct):
        if c is not None:
            votes.setdefault(c, []).append(bool(ok))
    class_ok = {c: 2 * sum(oks) >= len(oks) for c, oks in votes.items()}
    if math.comb(n, k) <= max_subsets:
        subsets = itertools.combinations(range(n), k)
    else:
        rng = rng or random.Random(0)
        subsets = (sorted(rng.sample(range(n), k)) for _ in range(max_subsets))
    hits = [class_ok.get(majority_vote([classes[i] for i in s]), False) for s in subsets]
    return sum(hits) / len(hits)


def answer_extractor(reward: str, options: dict | None = None) -> Callable[[str], str | None]:
    """How to read the final answer out of a completion for voting, matching the reward's own parser:
    `arithmetic_accuracy` -> the <answer> tag (`grpo.data.synthetic.parse_answer`); anything else ->
    `grpo.rewards.math.extract_prediction` (answer tag, then \\boxed{}, then the last number)."""
    if reward == "arithmetic_accuracy":
        return parse_answer
    return functools.partial(extract_prediction, source=(options or {}).get("pred_source", "auto"))


def answer_equivalence(reward: str, options: dict | None = None) -> Callable[[str, str], bool]:
    """When two voted answers are the same answer, by the reward's own comparison (the partner of
    `answer_extractor`): `arithmetic_accuracy` compares strings, so equality; anything else ->
    `grpo.rewards.math.answers_match(a, b)` with the reward's `timeout_s` (0.5 = 1/2 = \\frac{1}{2})."""
    if reward == "arithmetic_accuracy":
        return operator.eq
    return functools.partial(answers_match, timeout_s=(options or {}).get("timeout_s", 5.0))


def accuracy_checkers(reward_fn: str, options: dict) -> dict:
    """Extra greedy checkers beside the reward's own: `strict` reads the answer only where the format puts
    it (GSM8K's `#### N` line, MATH's last box; the built-in task's answer tag, its reward itself) and
    `lenient` takes the last number anywhere, so that a format gain is not read as a reasoning gain."""
    if reward_fn == "arithmetic_accuracy":
        return {"strict": load_reward_function(reward_fn, options),
                "lenient": make_math_accuracy(gold_style="plain", pred_source="last_number")}
    if reward_fn != "math_accuracy":
        return {}
    gold = options.get("gold_style", "auto")
    timeout = options.get("timeout_s", 5.0)
    out = {"lenient": make_math_accuracy(gold_style=gold, pred_source="last_number", timeout_s=timeout)}
    strict = {"gsm8k": "gsm8k", "boxed": "boxed"}.get(gold)
    if strict:
        out["strict"] = make_math_accuracy(gold_style=gold, pred_source=strict, timeout_s=timeout)
    return out


def _score(checker, rows: list[dict], texts: list[str], completion_ids: list[list[int]],
           repeat: int) -> list[bool]:
    """The reward's verdict per completion (rows[i] repeated `repeat` times); 1.0 counts as correct."""
    values = checker(**reward_inputs(rows, texts, completion_ids, repeat).kwargs())
    return [v is not None and float(v) >= 1.0 for v in values]


def evaluate_policy(model, tokenizer, rows: list[dict], checker, answer_fn: Callable[[str], str | None],
                    n: int = 8, ks: Sequence[int] = (1, 2, 4, 8), temperature: float = 1.0,
                    top_p: float = 1.0,
                    max_new_tokens: int = 32, seed: int = 0, batch_size: int = 256, engine=None,
                    equivalent: Callable[[str, str], bool] | None = None, sample_prompts: int | None = None,
                    greedy_checkers: dict | None = None) -> EvalResult:
    """`evaluate` on a loaded model (rows carry a rendered `prompt` and the checker's columns).
    Greedy accuracy is measured on every row; the n samples on the first `sample_prompts` rows (None: all;
    0: none, greedy only: no pass@k or maj@k, sampled accuracy NaN). `greedy_checkers` (name -> reward
    function) score the same greedy completions again."""
    ks = sorted(set(ks))
    if not rows:
        raise UserError("eval: no prompts to evaluate")
    if n < 1 or not ks or ks[0] < 1 or ks[-1] > n:
        raise UserError(f"eval: every k must be in 1..n (n={n} samples per prompt), got "
                        f"k={','.join(map(str, ks))}")
    if temperature <= 0:
        raise UserError("eval: --temperature must be > 0 for the n samples (greedy accuracy is always "
                        "measured)")
    engine = engine or HFEngine(model, stop_token_ids(model, tokenizer), tokenizer.pad_token_id)
    torch.manual_seed(seed)
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    gen = torch.Generator(device=device).manual_seed(seed)
    extra = {name: [] for name in greedy_checkers or {}}

    def checking(**inputs):  # the main checker's verdicts, and each extra checker's on the same completions
        for name, fn in (greedy_checkers or {}).items():
            extra[name] += [v is not None and float(v) >= 1.0 for v in fn(**inputs)]
        return checker(**inputs)

    greedy, _, scores = evaluate_accuracy(engine, tokenizer, rows, checking, max_new_tokens, batch_size)
    per_problem = dict(greedy_scores=scores,
                       greedy_scores_by_checker={name: [float(x) for x in v] for name, v in extra.items()},
                       greedy_by_checker={name: sum(v) / len(v) for name, v in extra.items()})
    num_prompts, rows = len(rows), rows if sample_prompts is None else rows[:sample_prompts]
    if not rows:  # greedy only
        return EvalResult(greedy_accuracy=greedy, pass_at_k={}, maj_at_k={}, sample_accuracy=float("nan"),
                          n=0, num_prompts=num_prompts, **per_problem)

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, G=n)
    per_call = max(1, batch_size // n)  # prompts per generate call: about batch_size completions
    correct, answers = [], []
    for i in range(0, len(rows), per_call):
        chunk = rows[i:i + per_call]
        r = engine.generate(encode_prompts(tokenizer, [x["prompt"] for x in chunk]), params, gen)
        texts = decode_completions(tokenizer, r.completion_ids, r.completion_mask)
        ids = [row[m.bool()].tolist() for row, m in zip(r.completion_ids, r.completion_mask)]
        verdicts = _score(checker, chunk, texts, ids, n)
        for j in range(len(chunk)):
            correct.append(verdicts[j * n:(j + 1) * n])
            answers.append([normalize_answer(answer_fn(t)) for t in texts[j * n:(j + 1) * n]])

    rng = random.Random(seed)
    counts = [sum(c) for c in correct]
    # Per prompt, the class of each sample's answer: formed once (it costs checker calls), voted on per k.
    votes = [answer_classes(a, equivalent) for a in answers]
    winners = [majority_vote(v) for v in votes]
    return EvalResult(
        greedy_accuracy=greedy,
        pass_at_k={k: sum(pass_at_k(n, c, k) for c in counts) / len(counts) for k in ks},
        maj_at_k={k: sum(maj_at_k(v, c, k, rng) for v, c in zip(votes, correct)) / len(correct) for k in ks},
        sample_accuracy=sum(counts) / (n * len(counts)), n=n, num_prompts=num_prompts, correct_counts=counts,
        majority_answers=[None if w is None else a[v.index(w)] for a, v, w in zip(answers, votes, winners)],
        num_sampled_prompts=len(rows), **per_problem,
    )


def evaluate(model_path: str | Path, rows: list[dict], checker, answer_fn: Callable[[str], str | None],
             n: int = 8,
             ks: Sequence[int] = (1, 2, 4, 8), temperature: float = 1.0, max_new_tokens: int = 32,
             seed: int = 0,
             batch_size: int = 256, device: str = "auto", top_p: float = 1.0,
             equivalent: Callable[[str, str], bool] | None = None, sample_prompts: int | None = None,
             greedy_checkers: dict | None = None) -> EvalResult:
    """Greedy accuracy, pass@k and maj@k of the model at `model_path` ('tiny' or a local HF directory).

    `rows` are dicts with a rendered `prompt` plus the columns the checker reads (e.g. `answer`);
    `checker` is a reward function (the accuracy reward used in training); `answer_fn` extracts the
    answer that is voted on (`answer_extractor`) and `equivalent` says when two answers vote together
    (`answer_equivalence`; None: only equal normalised strings do).
    """
    with tempfile.TemporaryDirectory() as tiny_dir:
        model, tokenizer = load_policy(ModelConfig(path=str(model_path), device=device), Path(tiny_dir))
    return evaluate_policy(model.eval(), tokenizer, rows, checker, answer_fn, n=n, ks=ks,
                           temperature=temperature,
                           top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
                           equivalent=equivalent, sample_prompts=sample_prompts,
                           greedy_checkers=greedy_checkers)


def format_result(res: EvalResult, title: str = "") -> str:
    """A small aligned table: greedy and sample accuracy, then pass@k and maj@k per k."""
    ks = sorted(res.pass_at_k)
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    cells = [[f"k={k}" for k in ks], [pct(res.pass_at_k[k]) for k in ks], [pct(res.maj_at_k[k]) for k in ks]]
    w = max(len(c) for row in cells for c in row)
    lines = [title] if title else []
    lines += [f"greedy accuracy        {pct(res.greedy_accuracy):>7}",
              f"sampled accuracy       {pct(res.sample_accuracy):>7}   (mean over {res.n} samples x "
              f"{res.num_sampled_prompts or res.num_prompts} prompts)", ""]
    for name, row in zip(["", "pass@k", "maj@k"], cells):
        lines.append(f"{name:<8}" + "  ".join(f"{c:>{w}}" for c in row))
    return "\n".join(lines)


def result_to_json(res: EvalResult, settings: dict) -> dict:
    d = asdict(res)
    d["pass_at_k"] = {str(k): v for k, v in res.pass_at_k.items()}
    d["maj_at_k"] = {str(k): v for k, v in res.maj_at_k.items()}
    return {"settings": settings, **d}


def evaluate_accuracy(engine: RolloutEngine, tokenizer, rows: list[dict], checker, max_new_tokens: int,
                      batch_size: int = 128) -> tuple[float, list[str], list[float]]:
    """Greedy held-out accuracy: the mean of `checker` (the accuracy reward itself) over `rows`; the greedy
    completions; each row's score (None counted as 0.0). The checker gets what training's rewards get: the
    completion texts and their unpadded ids (EOS included)."""
    if not rows:
        return float("nan"), [], []
    texts, per_row = [], []
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, G=1)
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        r = engine.generate(encode_prompts(tokenizer, [x["prompt"] for x in chunk]), params)
        batch_texts = decode_completions(tokenizer, r.completion_ids, r.completion_mask)
        values = checker(**reward_inputs(chunk, batch_texts, r.completion_lists()).kwargs())
        per_row += [0.0 if v is None else float(v) for v in values]
        texts += batch_texts
    return sum(per_row) / len(per_row), texts, per_row
