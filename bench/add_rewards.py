"""The benchmark's two rewards, called by both sides: `grpo train` loads them by path, bench/trl_grpo.py
hands them to TRL. Under grpo's reward contract, plain Python, so that this file loads without TRL.

1.0 if the completion's first integer (`correctness`) or its last one (`correctness_last`, for answers
after reasoning; the gold may be GSM8K style, after "####") equals the answer; and a shaping reward,
`starts_with_int` (weighted 0.1), if the completion starts (after whitespace) with an integer.
"""

import re

FIRST_INT = re.compile(r"-?\d+")
STARTS_WITH_INT = re.compile(r"\s*-?\d+")


def correctness(prompts, completions, completion_ids, answer, **columns):
    """1.0 if the first integer in the completion equals the gold answer, else 0.0."""
    out = []
    for text, gold in zip(completions, answer):
        m = FIRST_INT.search(text)
        out.append(1.0 if m is not None and m.group(0) == gold else 0.0)
    return out


def starts_with_int(prompts, completions, completion_ids, **columns):
    """1.0 if the completion starts with an integer (weighted 0.1 on both sides)."""
    return [1.0 if STARTS_WITH_INT.match(text) else 0.0 for text in completions]


def correctness_last(prompts, completions, completion_ids, answer, **columns):
    """1.0 if the last integer in the completion equals the gold answer (the part after "####" in a
    GSM8K-style answer, commas dropped), else 0.0: the work's answer_position "last"."""
    out = []
    for text, gold in zip(completions, answer):
        found = FIRST_INT.findall(text)
        out.append(1.0 if found and found[-1] == str(gold).split("####")[-1].strip().replace(",", "") else 0.0)
    return out
