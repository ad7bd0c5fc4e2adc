"""A lean sampling loop over a Hugging Face causal LM, with a KV cache.

One prefill forward over the (left-padded) distinct prompts, whose KV cache the G completions of a
group then share a copy of, and one forward per new token for the rows still running. A row that emits EOS
stops: its later slots are pad tokens, masked out; once a
quarter of the rows in the cache have finished they are dropped from it, so the tail of a batch of
mixed lengths costs only the rows still running. The loop stops when every row has finished.

Models with the "lean_decoder" fast path (`grpo.models.fast_paths`) run on
`LeanDecoder`: the same arithmetic as
the Hugging Face modules over a pre-allocated cache, with few calls per token. Any other model runs
through its own `forward` with the library's dynamic cache. Both share the policy's weights, so
`sync_weights` has nothing to do, and both give the same tokens and log-probs as a full forward of
the model (tests/test_rollout.py).
"""

from __future__ import annotations

import contextlib
import time

import torch

from grpo.models.logprobs import cache_kwarg, output_cache, position_ids_from_mask
from grpo.rollout.engine import Rollout, SamplingParams, pad_left
from grpo.rollout.lean import LeanDecoder


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token per row and its log-prob under the distribution it was drawn from. logits [N, V]."""
    logits = logits.float()
    if temperature == 0.0:
        logp = logits.log_softmax(-1)  # [N, V]
        tok = logp.argmax(-1)  # [N]
        return tok, logp.gather(-1, tok[:, None]).squeeze(-1)
    logp = (logits if temperature == 1.0 else logits / temperature).log_softmax(-1)  # [N, V]
    if top_p < 1.0:
        sorted_logp, order = logp.sort(-1, descending=True)  # [N, V]
        cum = sorted_logp.exp().cumsum(-1)
        drop = (cum - sorted_logp.exp()) > top_p  # keep the smallest prefix with mass >= top_p
        sorted_logp = sorted_logp.masked_fill(drop, float("-inf"))
        logp = torch.full_like(logp, float("-inf")).scatter(-1, order, sorted_logp).log_softmax(-1)
    tok = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)  # [N]
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


class HFStepper:
    """The generic path: the model's own forward with its dynamic KV cache."""

    def __init__(self, model, dtype: torch.dtype | None):
        self.model = model
        self.cache_kw = cache_kwarg(model)
        device = next(model.parameters()).device
        cast = dtype is not None and dtype != next(model.parameters()).dtype
        self.ctx = (lambda: torch.autocast(device.type, dtype=dtype)) if cast else contextlib.nullcontext

    def _forward(self, **kw) -> torch.Tensor:
        with self.ctx():
            out = self.model(use_cache=True, **kw)
        self.cache = output_cache(out)
        return out.logits[:, -1].float()  # [B, V]

    def prefill(self, ids, mask, positions, max_new_tokens: int, repeats: int = 1) -> torch.Tensor:
        self.mask = torch.ones(ids.shape[0], ids.shape[1] + max_new_tokens, dtype=mask.dtype,
                               device=mask.device)
        self.mask[:, :ids.shape[1]] = mask  # [B, P + max_new_tokens]; grows by one visible column per step
        self.length = ids.shape[1]
        logits = self._forward(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
        if repeats > 1:
            self.compact(torch.arange(ids.shape[0], device=ids.device).repeat_interleave(repeats))
        return logits

    def step(self, tokens, positions) -> torch.Tensor:
        self.length += 1
        return self._forward(input_ids=tokens[:, None], attention_mask=self.mask[:, :self.length],
                             position_ids=positions[:, None], **{self.cache_kw: self.cache})

    def compact(self, keep) -> None:
        self.cache.reorder_cache(keep)  # index_select on the batch dimension of every layer
        self.mask = self.mask[keep]


class DecodeThreads:
    """Picks the intra-op thread count of the one-token steps by timing a few of them.

    A decode step is ~100 small ops. Splitting each across threads pays on an idle machine; on a busy
    one (another process holding a core) every op waits at a barrier for a thread that is not
    running, and a step can get ten times slower (measured on the 2-core bench machine: 0.1 s vs
    1-4 s for the tiny model's 32 steps). So the first steps of each `generate` alternate between all
    threads and one, and the rest run at whichever was faster. The prefill keeps every thread.
    """

    def __init__(self, device: torch.device, enabled: bool = True, probes: int = 2):
        n = torch.get_num_threads()
        self.restore = n
        self.plan = [n, 1] * probes if enabled and device.type == "cpu" and n > 1 else []  # threads of step t
        self.best: dict[int, float] = {}

    def before(self, t: int) -> None:
        if t < len(self.plan):
            torch.set_num_threads(self.plan[t])
            self.t0 = time.perf_counter()
        elif t == len(self.plan) and self.plan:
            torch.set_num_threads(min(self.best, key=self.best.get))

    def after(self, t: int) -> None:
        if t < len(self.plan):
            n = self.plan[t]
            self.best[n] = min(self.best.get(n, float("inf")), time.perf_counter() - self.t0)

    def done(self) -> None:
        torch.set_num_threads(self.restore)


class HFEngine:
    """Rollouts from a `transformers` causal LM (the policy itself, weights shared).

    dtype: compute dtype of sampling (None: the weights' own). bfloat16 with float32 weights samples
    from bf16 copies of the weights (lean path) or under autocast (generic path).
    lean: use `LeanDecoder` where it supports the model (False: always the model's own forward).
    """

    def __init__(self, model, eos_token_id: int | list[int], pad_token_id: int,
                 dtype: torch.dtype | None = None, lean: bool = True):
        self.model = model
        eos = eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
        self.eos = torch.tensor(eos)
        self.pad_id = pad_token_id
        self.dtype = dtype
        self.lean = lean

    def sync_weights(self, model) -> None:
        self.model = model

    def make_stepper(self, max_len: int):
        """The prefill/step/compact object of a generate over sequences of at most max_len tokens."""
        stepper = LeanDecoder.build(self.model, max_len, self.dtype) if self.lean else None
        return stepper or HFStepper(self.model, self.dtype)

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams,
                 generator: torch.Generator | None = None) -> Rollout:
        model = self.model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        ids, mask = pad_left(prompt_ids, self.pad_id)
        ids, mask = ids.to(device), mask.to(device)  # [n, P], one row per distinct prompt
        try:
            with torch.inference_mode():
                tokens, logp, live = self._sample(ids, mask, params, generator)
        finally:
            model.train(was_training)
        ids, mask = ids.repeat_interleave(params.G, 0), mask.repeat_interleave(params.G, 0)  # [N, P]
        # Clones are ordinary tensors: the loop feeds them to autograd, which refuses inference tensors.
        tokens, completion_mask = tokens.clone(), live.long()  # [N, T]
        last = tokens.gather(1, (completion_mask.sum(1, keepdim=True) - 1).clamp(min=0)).squeeze(1)  # [N]
        return Rollout(prompt_ids=ids, prompt_mask=mask, completion_ids=tokens,
                       completion_mask=completion_mask,
                       truncated=~torch.isin(last, self.eos.to(device)), logp=logp.clone())

    def _sample(self, ids, mask, params: SamplingParams, generator):
        """G completions of each prompt ids/mask [n, P]: tokens, logp, live [n * G, T], T the longest
        completion (live: the slot holds a token of the completion, EOS included)."""
        (n, P), G, device = ids.shape, params.G, ids.device
        N = n * G
        stepper = self.make_stepper(P + params.max_new_tokens)
        positions = position_ids_from_mask(mask)  # [n, P]
        # [N, V]
        logits = stepper.prefill(ids, mask, positions, params.max_new_tokens, G).repeat_interleave(G, 0)
        pos = (positions[:, -1] + 1).repeat_interleave(G, 0)  # [N]
        out_tok = torch.full((N, params.max_new_tokens), self.pad_id, dtype=torch.long, device=device)
        out_lp = torch.zeros(N, params.max_new_tokens, device=device)
        out_live = torch.zeros(N, params.max_new_tokens, dtype=torch.bool, device=device)
        # Only the lean path: its steps give the same bits at any thread count (see LeanDecoder).
        threads = DecodeThreads(device, enabled=isinstance(stepper, LeanDecoder))
        try:
            self._decode(stepper, logits, pos, params, generator, threads, out_tok, out_lp, out_live)
        finally:
            threads.done()
        T = int(out_live.sum(1).max()) if N else 0
        return out_tok[:, :T], out_lp[:, :T], out_live[:, :T]

    def _decode(self, stepper, logits, pos, params: SamplingParams, generator, threads: DecodeThreads,
                out_tok, out_lp, out_live) -> None:
        """Sample token by token into out_tok/out_lp/out_live [N, max_new_tokens] until every row ends."""
        N, device = out_tok.shape[0], out_tok.device
        eos = self.eos.to(device)
        rows = torch.arange(N, device=device)  # original row of each cache row
        alive = torch.ones(N, dtype=torch.bool, device=device)  # [C] cache rows still generating
        segment, t0, n_alive = [], 0, N
        check_every = 1 if device.type == "cpu" else 8  # a host sync per token is cheap on a CPU only
        for t in range(params.max_new_tokens):
            tok, lp = sample_next(logits, params.temperature, params.top_p, generator)  # [C]
            tok = tok.masked_fill(~alive, self.pad_id)
            segment.append((tok, lp, alive))
            alive = alive & ~(tok == eos[0] if eos.numel() == 1 else torch.isin(tok, eos))
            last = t + 1 == params.max_new_tokens
            if last or (t + 1) % check_every == 0:
                n_alive = int(alive.sum())
            if n_alive == 0 or last or n_alive <= 3 * alive.shape[0] // 4:
                seg_tok, seg_lp, seg_live = (torch.stack(x, 1) for x in zip(*segment))  # [C, k]
                out_tok[rows, t0:t + 1], out_live[rows, t0:t + 1] = seg_tok, seg_live
                out_lp[rows, t0:t + 1] = seg_lp.masked_fill(~seg_live, 0.0)
                segment, t0 = [], t + 1
                if n_alive == 0 or last:
                    break
                keep = alive.nonzero().squeeze(1)  # [C']
                stepper.compact(keep)
                rows, alive, tok, pos = rows[keep], alive[keep], tok[keep], pos[keep]
            threads.before(t)
            logits = stepper.step(tok, pos)
            threads.after(t)
            pos = pos + 1
