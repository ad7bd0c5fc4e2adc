"""A learned reward model: reward = the scalar output of a sequence-classification model.

Any local Hugging Face `AutoModelForSequenceClassification` checkpoint with `num_labels=1` (the
DeepSeekMath / R1 outcome reward model shape) scores the text `prompt + completion`. Inputs are padded
on the right, so with causal attention padding never changes a sample's score: batching does not
change the values. The text is tokenised as the policy's prompts are (`grpo.data.templates.
encode_prompts`: a prompt rendered with its BOS gets no second one). Texts longer than `max_length`
tokens keep their end (the completion), cut on the left after the BOS.

torch and transformers are imported on first use, so `import grpo.rewards` stays light.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from grpo.data.templates import encode_prompts
from grpo.errors import UserError

# torch, transformers and grpo.models are imported in the methods that use them: importing grpo.rewards
# does not import torch or transformers (the package docstring).


class RewardModel:
    """Callable reward function backed by a sequence-classification model.

    >>> rm = RewardModel("path/to/rm", device="cpu")                      # doctest: +SKIP
    >>> rm(["Q: 2+2?\\nA:"], [" 4"])                                      # doctest: +SKIP
    [0.8132]
    """

    in_process_only = True
    """`compute_rewards` never ships this to a process pool (it holds a model on the policy's device)."""

    def __init__(
        self,
        path: str | Path,
        device: Any = "cpu",
        batch_size: int = 16,
        max_length: int = 1024,
        dtype: Any = None,
    ):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"reward model: batch_size must be an integer >= 1; got {batch_size!r}")
        if not isinstance(max_length, int) or max_length < 2:
            raise UserError(f"reward model: max_length must be an integer >= 2; got {max_length!r}")
        path = Path(path).expanduser()
        if not path.is_dir() or not (path / "config.json").is_file():
            raise UserError(
                f"reward model not found: {path} must be a local directory with config.json "
                "(saved by save_pretrained)"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=dtype, output_loading_info=True
            )
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"reward model {path}: cannot load it as a sequence classifier: {exc}") from exc
        if model.config.num_labels != 1:
            raise UserError(
                f"reward model {path}: has num_labels={model.config.num_labels}; a reward model outputs one "
                "score (num_labels=1)"
            )
        untrained = [k for k in info.get("missing_keys", []) if "score" in k or "classifier" in k]
        if untrained:
            raise UserError(
                f"reward model {path}: the checkpoint has no trained classification head ({untrained[0]} is "
                "missing); it looks like a plain language model"
            )
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise UserError(f"reward model {path}: the tokenizer has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "left"
        # The classifier pools the last token that is not padding; it finds it by pad_token_id.
        model.config.pad_token_id = tokenizer.pad_token_id
        self.path, self.batch_size, self.max_length = path, batch_size, max_length
        self.device = torch.device(device)
        self.tokenizer = tokenizer
        self.model = model.to(self.device).eval()

    @classmethod
    def from_policy(cls, policy, tokenizer, batch_size: int = 16, max_length: int = 1024) -> "RewardModel":
        """A reward model to be trained: a copy of the causal LM `policy`'s body (its weights) with a new,
        zero score head, on the policy's device; the tokenizer is the policy's (padding on the right)."""
        import torch
        from transformers import AutoModelForSequenceClassification

        from grpo.models.loading import hf_weights, unwrap

        base = unwrap(policy)
        config = copy.deepcopy(base.config)
        config.num_labels, config.pad_token_id = 1, tokenizer.pad_token_id
        model = AutoModelForSequenceClassification.from_config(config)
        # under transformers' names; peft LoRA: the body as the policy computes it, adapters folded in
        body = {k: v for k, v in hf_weights(policy).items() if not k.startswith("lm_head.")}
        missing, _ = model.load_state_dict(body, strict=False)
        assert all(k.startswith("score.") for k in missing), missing
        torch.nn.init.zeros_(model.score.weight)
        rm = cls.__new__(cls)
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
        rm.path, rm.batch_size, rm.max_length, rm.tokenizer = None, batch_size, max_length, tokenizer
        rm.device = next(policy.parameters()).device
        rm.model = model.to(rm.device).eval()
        return rm

    def encode(self, texts: list[str]):
        """input_ids and attention_mask [B, L] on the device, padded on the right: each text's ids as
        `encode_prompts` gives them, cut to the last `max_length` tokens (a leading BOS is kept)."""
        bos = self.tokenizer.bos_token_id
        ids = []
        for x in encode_prompts(self.tokenizer, texts):
            if len(x) > self.max_length:
                head = x[:1] if bos is not None and x[0] == bos else []
                x = head + x[len(x) - self.max_length + len(head):]
            ids.append(x)
        return self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(self.device)

    def __call__(
        self, prompts: list[str], completions: list[str], completion_ids=None, **columns
    ) -> list[float]:
        """One score per (prompt, completion), computed batch_size texts at a time."""
        import torch

        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        scores: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                enc = self.encode(texts[start : start + self.batch_size])
                logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
                scores.extend(logits[:, 0].float().cpu().tolist())  # [B, 1] -> B floats
        return scores
