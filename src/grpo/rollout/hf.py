"""A lean sampling loop over any Hugging Face causal LM, with its KV cache.

One prefill forward over the (left-padded) prompts, then one forward per new token for all rows at
once. Rows that emitted EOS keep producing pad tokens that are masked out; the loop stops as soon
as every row is finished. It shares the policy's weights, so `sync_weights` has nothing to do.
"""

from __future__ import annotations

import torch

from grpo.rollout.engine import Rollout, SamplingParams
from grpo.train.logprobs import position_ids_from_mask


def _pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), P), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, P - len(s):] = torch.tensor(s)
            mask[i, P - len(s):] = 1
    return ids, mask


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token per row and its log-prob under the distribution it was drawn from. logits [N, V]."""
    logits = logits.float()
    if temperature == 0.0:
        logp = logits.log_softmax(-1)  # [N, V]
        tok = logp.argmax(-1)  # [N]
        return tok, logp.gather(-1, tok[:, None]).squeeze(-1)
    logp = (logits / temperature).log_softmax(-1)  # [N, V]
    if top_p < 1.0:
        sorted_logp, order = logp.sort(-1, descending=True)  # [N, V]
        cum = sorted_logp.exp().cumsum(-1)
        drop = (cum - sorted_logp.exp()) > top_p  # keep the smallest prefix with mass >= top_p
        sorted_logp = sorted_logp.masked_fill(drop, float("-inf"))
        logp = torch.full_like(logp, float("-inf")).scatter(-1, order, sorted_logp).log_softmax(-1)
    tok = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)  # [N]
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


class HFEngine:
    """Rollouts from a `transformers` causal LM (the policy itself, weights shared)."""

    def __init__(self, model, eos_token_id: int | list[int], pad_token_id: int):
        self.model = model
        eos = eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
        self.eos = torch.tensor(eos)
        self.pad_id = pad_token_id
        self._cache_kw: str | None = None

    def sync_weights(self, model) -> None:
        self.model = model

    def _forward(self, cache, **kw):
        """One forward with the KV cache, under the keyword this transformers version uses."""
        if self._cache_kw is None:
            import inspect
            params = inspect.signature(self.model.forward).parameters
            self._cache_kw = "cache" if "cache" in params else "past_key_values"
        if cache is not None:
            kw[self._cache_kw] = cache
        out = self.model(use_cache=True, **kw)
        return out.logits[:, -1], getattr(out, "cache", None) or out.past_key_values

    @torch.no_grad()  # not inference_mode: the outputs feed autograd later
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams,
                 generator: torch.Generator | None = None) -> Rollout:
        model, G = self.model, params.G
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        ids, mask = _pad_left(prompt_ids, self.pad_id)
        ids, mask = ids.repeat_interleave(G, 0).to(device), mask.repeat_interleave(G, 0).to(device)  # [N, P]
        N, eos = ids.shape[0], self.eos.to(device)
        pos = position_ids_from_mask(mask)  # [N, P]
        logits, cache = self._forward(None, input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)
        next_pos = pos[:, -1:] + 1  # [N, 1]
        full_mask = mask
        finished = torch.zeros(N, dtype=torch.bool, device=device)
        toks, logps, live = [], [], []
        for _ in range(params.max_new_tokens):
            tok, lp = sample_next(logits, params.temperature, params.top_p, generator)  # [N]
            tok = tok.masked_fill(finished, self.pad_id)
            toks.append(tok)
            logps.append(lp)
            live.append(~finished)
            finished = finished | torch.isin(tok, eos)
            if bool(finished.all()):
                break
            full_mask = torch.cat([full_mask, torch.ones_like(full_mask[:, :1])], dim=1)  # [N, P+t]
            logits, cache = self._forward(cache, input_ids=tok[:, None], attention_mask=full_mask,
                                          position_ids=next_pos)
            next_pos = next_pos + 1
        completion_mask = torch.stack(live, 1).long()  # [N, T]
        if was_training:
            model.train()
        return Rollout(
            prompt_ids=ids, prompt_mask=mask,
            completion_ids=torch.stack(toks, 1), completion_mask=completion_mask,
            truncated=~finished,
            logp=torch.stack(logps, 1).masked_fill(completion_mask == 0, 0.0),
        )
