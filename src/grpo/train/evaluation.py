"""Held-out greedy accuracy during training: the first reward function, applied to greedy completions,
so that the metric and the reward cannot drift apart."""

from __future__ import annotations

from grpo.data.templates import decode_completions, encode_prompts
from grpo.rewards.combine import reward_inputs
from grpo.rollout.engine import RolloutEngine, SamplingParams


def evaluate_accuracy(engine: RolloutEngine, tokenizer, rows: list[dict], checker, max_new_tokens: int,
                      batch_size: int = 128) -> tuple[float, list[str]]:
    """Greedy held-out accuracy: mean of `checker` (the accuracy reward itself) over `rows`. The checker
    gets what training's rewards get: the completion texts and their unpadded ids (EOS included)."""
    if not rows:
        return float("nan"), []
    texts, scores = [], []
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, G=1)
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        r = engine.generate(encode_prompts(tokenizer, [x["prompt"] for x in chunk]), params)
        batch_texts = decode_completions(tokenizer, r.completion_ids, r.completion_mask)
        values = checker(**reward_inputs(chunk, batch_texts, r.completion_lists()).kwargs())
        scores += [0.0 if v is None else float(v) for v in values]
        texts += batch_texts
    return sum(scores) / len(scores), texts
