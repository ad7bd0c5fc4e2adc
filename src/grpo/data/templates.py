"""Turn dataset prompts into the text the policy sees, and enforce max_prompt_length.

Chat prompts (a list of {"role", "content"} messages) go through the tokenizer's own chat template
with the generation prompt appended. Plain-string prompts go through a text template with one
`{prompt}` placeholder; `R1_TEMPLATE` is the DeepSeek-R1 style one, in which the assistant reasons
inside <think></think> and answers inside <answer></answer> (pair it with the r1_format rewards and
math_accuracy's "answer_tag" predictions).

`encode_prompts` turns rendered texts into the token ids the policy sees, everywhere a prompt is
tokenised (rollouts, SFT, evaluation, the reward model, the max_prompt_length check), so that the
special tokens are added once: a chat template that renders `{{ bos_token }}` has already written
the BOS, and the tokenizer's own post-processor must not add a second.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any, NamedTuple

from grpo.errors import UserError

R1_TEMPLATE = (
    "This is a dialogue between a User and an Assistant. The User poses a problem and the Assistant "
    "solves it. The Assistant first works through the problem step by step inside <think> </think> "
    "tags, then states only the final result inside <answer> </answer> tags, like this: "
    "<think> step-by-step reasoning </think> <answer> final result </answer>.\n"
    "User: {prompt}\n"
    "Assistant:"
)
"""DeepSeek-R1 style plain-text template (our wording); `{prompt}` is replaced by the question."""

TEMPLATES = {"r1": R1_TEMPLATE}
"""Built-in templates by name."""


def check_template(template: str) -> None:
    """Raise `UserError` unless `template` has exactly the placeholder `{prompt}` (literal braces: {{ }})."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise UserError(f"prompt template: {exc}; write literal braces as {{{{ and }}}}") from None
    others = sorted({f for f in fields if f != "prompt"})
    if others:
        raise UserError(
            f"prompt template has placeholder(s) {', '.join('{' + f + '}' for f in others)}; only {{prompt}} "
            "is filled in (write literal braces as {{ and }})"
        )
    if "prompt" not in fields:
        raise UserError("prompt template has no {prompt} placeholder, so the question would be left out")


def render_prompt(prompt: str | list[dict], tokenizer: Any = None, template: str | None = None,
                  tools: list[dict] | None = None) -> str:
    """The text given to the policy for one dataset prompt. `tools`: function schemas the chat template
    renders for chat prompts (rollout.tools, docs/tools.md).

    >>> render_prompt("What is 2+3?", template="Q: {prompt}\\nA:")
    'Q: What is 2+3?\\nA:'
    """
    if isinstance(prompt, str):
        if template is None:
            return prompt
        check_template(template)
        return template.format(prompt=prompt)
    if isinstance(prompt, list):
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UserError(
                "the dataset's prompts are chat messages but the tokenizer has no chat template; use a "
                "tokenizer with one, or give plain-string prompts with a text template"
            )
        kw = {"tools": tools} if tools else {}
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True, **kw)
    raise UserError(f"a prompt must be a string or a list of messages; got {type(prompt).__name__}")


def encode_prompts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """The token ids the model sees for each rendered prompt text, special tokens included.

    A text that starts with the tokenizer's BOS string was rendered by a chat template that wrote
    the special tokens it needs, so it is tokenised as written (add_special_tokens=False); any other
    text gets the tokenizer's own special tokens (a plain-text prompt gets the BOS the tokenizer adds).
    With the tiny tokenizer (BOS "<bos>", id 1, added by its post-processor; "h" = 56, "i" = 57):

        "<bos>user: hi\nassistant: " -> [1, ...]      (one BOS, the template's)
        "hi"                          -> [1, 56, 57]   (the tokenizer's BOS)
    """
    bos = getattr(tokenizer, "bos_token", None)
    rendered = [i for i, t in enumerate(texts) if bos and t.startswith(bos)]
    plain = sorted(set(range(len(texts))) - set(rendered))
    ids: list[list[int]] = [[] for _ in texts]
    for rows, special in ((rendered, False), (plain, True)):
        if rows:  # fast tokenizers fail on an empty batch
            encoded = tokenizer([texts[i] for i in rows], add_special_tokens=special)["input_ids"]
            for i, x in zip(rows, encoded):
                ids[i] = list(x)
    return ids


class PromptLengthCheck(NamedTuple):
    """Result of `check_prompt_lengths`."""

    kept: list[int]
    """Indices of the prompts that fit, in order."""
    num_dropped: int
    """How many prompts were longer than max_prompt_length (policy "drop")."""


def check_prompt_lengths(
    prompt_ids_list: Sequence[Sequence[int] | int],
    max_prompt_length: int,
    policy: str = "error",
    source_name: str = "dataset",
) -> PromptLengthCheck:
    """Find prompts longer than `max_prompt_length` tokens; raise on the first ("error") or drop them.

    Items are token id lists or plain lengths. Row indices in messages count from 0.

    >>> check_prompt_lengths([[1, 2], [1, 2, 3, 4], [5]], max_prompt_length=3, policy="drop")
    PromptLengthCheck(kept=[0, 2], num_dropped=1)
    """
    if policy not in ("error", "drop"):
        raise UserError(f"too-long prompt policy must be 'error' or 'drop'; got {policy!r}")
    if not isinstance(max_prompt_length, int) or max_prompt_length < 1:
        raise UserError(f"max_prompt_length must be an integer >= 1; got {max_prompt_length!r}")
    kept = []
    for i, item in enumerate(prompt_ids_list):
        length = item if isinstance(item, int) else len(item)
        if length <= max_prompt_length:
            kept.append(i)
        elif policy == "error":
            raise UserError(
                f"{source_name}: row {i} (counting from 0) has a prompt of {length} tokens, longer than "
                f"max_prompt_length={max_prompt_length}; raise max_prompt_length or drop such rows "
                "(policy 'drop')"
            )
    num_dropped = len(prompt_ids_list) - len(kept)
    if not kept and num_dropped:
        raise UserError(
            f"{source_name}: all {num_dropped} prompts are longer than max_prompt_length={max_prompt_length}"
        )
    return PromptLengthCheck(kept=kept, num_dropped=num_dropped)


def decode_completions(tokenizer, ids, mask) -> list[str]:
    """Completion texts of ids/mask [N, T]: each row's masked tokens, special tokens (EOS, pad) removed."""
    return tokenizer.batch_decode([row[m.bool()].tolist() for row, m in zip(ids, mask)],
                                  skip_special_tokens=True)
