"""A lean sampling loop over a Hugging Face causal LM, with a KV cache: `HFEngine`, one loop (`Decode`)
behind both `generate` and the stepwise calls of `RolloutEngine` that multi-turn rollouts drive.

One prefill forward over the (left-padded) distinct prompts, whose KV cache the G completions of a
group then share (`LeanDecoder` keeps it once for all of them, the generic path gives each row a copy),
and one forward per new token for the rows still running. A row that emits EOS
stops, unless the caller appends environment tokens after it (multi-turn), which the following steps feed
in instead of sampling: its later slots are pad tokens, masked out; once a quarter of the rows in the cache
have finished they are dropped from it, so the tail of a batch of mixed lengths costs only the rows still
running. The loop stops when every row has finished.

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
from grpo.rollout.multinomial import multinomial1


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None,
                work: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token per row and its log-prob under the distribution it was drawn from. logits [N, V].

    work: buffers the scaled logits, log-probs and probabilities go into ([>= N, V] each; an empty list is
    filled on the first call), so that a decode writes the same memory every step: fresh [32, 49,152]
    tensors each step cost page faults whenever glibc has handed the last ones back (7-11 ms a step on
    SmolLM2 at the bench's settings, one thread)."""
    logits = logits.float()
    if temperature == 0.0:
        logp = logits.log_softmax(-1)  # [N, V]
        tok = logp.argmax(-1)  # [N]
        return tok, logp.gather(-1, tok[:, None]).squeeze(-1)
    if work is not None and not work:
        work.extend(torch.empty_like(logits) for _ in range(3))
    scaled_out, logp_out, probs_out = (w[:logits.shape[0]] for w in work) if work else (None, None, None)
    scaled = logits if temperature == 1.0 else torch.div(logits, temperature, out=scaled_out)  # [N, V]
    logp = torch.log_softmax(scaled, -1, out=logp_out)  # [N, V]
    if top_p < 1.0:
        sorted_logp, order = logp.sort(-1, descending=True)  # [N, V]
        cum = sorted_logp.exp().cumsum(-1)
        drop = (cum - sorted_logp.exp()) > top_p  # keep the smallest prefix with mass >= top_p
        sorted_logp = sorted_logp.masked_fill(drop, float("-inf"))
        logp = torch.full_like(logp, float("-inf")).scatter(-1, order, sorted_logp).log_softmax(-1)
    tok = multinomial1(torch.exp(logp, out=probs_out), generator)  # [N]
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

    `generate` and the stepwise calls of `RolloutEngine` (prefill .. finish, which multi-turn rollouts
    drive) run the same loop, `Decode`: a single-turn rollout is the stepwise decode with no environment.
    """

    def __init__(self, model, eos_token_id: int | list[int], pad_token_id: int,
                 dtype: torch.dtype | None = None, lean: bool = True):
        self.model = model
        eos = eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
        self.eos = torch.tensor(eos)
        self.pad_id = pad_token_id
        self.dtype = dtype
        self.lean = lean
        self.decoding: Decode | None = None

    def sync_weights(self, model) -> None:
        self.model = model

    def make_stepper(self, max_len: int):
        """The prefill/step/compact object of a decode over sequences of at most max_len tokens."""
        stepper = LeanDecoder.build(self.model, max_len, self.dtype) if self.lean else None
        return stepper or HFStepper(self.model, self.dtype)

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams,
                 generator: torch.Generator | None = None) -> Rollout:
        """G completions of each prompt: the stepwise decode with nothing appended, so each row ends with
        its first stop token (or at max_new_tokens)."""
        self.prefill(prompt_ids, params)
        try:
            with torch.inference_mode():  # entered once, not per token as `step` does
                decoding = self.decoding
                while decoding.step(generator):
                    pass
        finally:
            rollout = self.finish()
        rollout.policy_mask = None  # every completion token is the policy's
        return rollout

    def prefill(self, prompt_ids: list[list[int]], params: SamplingParams) -> None:
        if self.decoding is not None:  # a decode abandoned without finish: put the model back first
            self.decoding.close()
        self.decoding = Decode(self, prompt_ids, params)

    def step(self, generator: torch.Generator | None = None) -> bool:
        with torch.inference_mode():
            return self._decoding().step(generator)

    def ended_turns(self) -> dict[int, list[int]]:
        return self._decoding().ended_turns()

    def append(self, row: int, ids: list[int]) -> None:
        self._decoding().append(row, ids)

    def finish(self) -> Rollout:
        decoding, self.decoding = self._decoding(), None
        return decoding.finish()

    def _decoding(self) -> "Decode":
        if self.decoding is None:
            raise RuntimeError("HFEngine: no decode is open (prefill starts one, finish ends it)")
        return self.decoding


class Decode:
    """One stepwise decode (`HFEngine.prefill` .. `finish`): the engine's one decode loop and its state.

    N = n * G rows, row i*G+j the j-th completion of prompt i. The KV cache holds C <= N of them (`rows`: the
    original row of each cache row, `alive`: still running). Each step feeds every cache row's last token and
    picks its next one: the next of its queued environment tokens (forced: logp 0, policy 0), else a sample.
    A row whose policy turn ends (it samples a stop token) stops at the next step unless `append` answers it;
    once a quarter of the cache rows have stopped they are dropped from it, so the tail of a batch of mixed
    lengths costs only the rows still running. Tokens go to the output in segments, one per cache layout.
    """

    def __init__(self, engine: "HFEngine", prompt_ids: list[list[int]], params: SamplingParams):
        model = engine.model
        device = next(model.parameters()).device
        ids, mask = pad_left(prompt_ids, engine.pad_id)
        self.ids, self.mask = ids.to(device), mask.to(device)  # [n, P], one row per distinct prompt
        (n, P), G = ids.shape, params.G
        N, self.budget = n * G, params.max_new_tokens
        self.params, self.pad_id, self.eos = params, engine.pad_id, engine.eos.to(device)
        self.model, self.was_training = model, model.training
        model.eval()
        try:
            with torch.inference_mode():
                self.stepper = engine.make_stepper(P + self.budget)
                positions = position_ids_from_mask(self.mask)  # [n, P]
                self.logits = self.stepper.prefill(self.ids, self.mask, positions, self.budget,
                                                   G).repeat_interleave(G, 0)  # [N, V]
                self.pos = (positions[:, -1] + 1).repeat_interleave(G, 0)  # [C]
                self.out_tok = torch.full((N, self.budget), self.pad_id, dtype=torch.long, device=device)
                self.out_lp = torch.zeros(N, self.budget, device=device)
                self.out_live = torch.zeros(N, self.budget, dtype=torch.bool, device=device)
                self.out_policy = torch.zeros_like(self.out_live)
                self.rows = torch.arange(N, device=device)  # [C] original row of each cache row
                self.alive = torch.ones(N, dtype=torch.bool, device=device)  # [C]
        except BaseException:
            model.train(self.was_training)
            raise
        self.tok = self.ended = None  # [C] the last step's tokens; its rows whose policy turn ended
        self.t, self.t0, self.segment, self.n_alive, self.over = 0, 0, [], N, False
        self.work: list[torch.Tensor] = []  # sample_next's buffers, the same every step
        self.queued: dict[int, list[int]] = {}  # original row -> environment tokens still to feed
        self.answered: list[int] = []  # rows whose ended turn `append` answered since the last step
        self.just_ended: set[int] = set()
        self.turn_start = [0] * N  # per original row: the slot its current policy turn began at
        # A host sync per token is cheap on a CPU only, or where the caller has just made one (ended_turns).
        self.check_every, self.synced = 1 if device.type == "cpu" else 8, False
        # Only the lean path: its steps give the same bits at any thread count (see LeanDecoder).
        self.threads = DecodeThreads(device, enabled=isinstance(self.stepper, LeanDecoder))

    def step(self, generator: torch.Generator | None) -> bool:
        """Feed every cache row's last token (none before the first step: the prefill gave the logits),
        then pick each row's next one. False, with nothing done, once the decode is over. Runs under
        inference mode (the caller's)."""
        t = self.t
        if self.over:
            return False
        if t > 0:
            self.settle()
            if t < self.budget and (self.synced or t % self.check_every == 0):
                self.n_alive, self.synced = int(self.alive.sum()), False
        if t == self.budget or self.n_alive == 0:
            self.flush()
            self.over = True
            return False
        if t > 0:
            if self.n_alive <= 3 * self.alive.shape[0] // 4:  # drop finished rows from the cache
                self.flush()
                keep = self.alive.nonzero().squeeze(1)  # [C']
                self.stepper.compact(keep)
                self.rows, self.alive = self.rows[keep], self.alive[keep]
                self.tok, self.pos = self.tok[keep], self.pos[keep]
            self.threads.before(t - 1)
            self.logits = self.stepper.step(self.tok, self.pos)
            self.threads.after(t - 1)
            self.pos = self.pos + 1
        if t < self.params.min_new_tokens:  # no stop token yet: the distribution sampled is the masked one
            self.logits = self.logits.index_fill(-1, self.eos, float("-inf"))
        tok, lp = sample_next(self.logits, self.params.temperature, self.params.top_p, generator,
                              self.work)  # [C]
        policy = self.alive if not self.queued else self.alive & ~self.force(tok)
        tok = tok.masked_fill(~self.alive, self.pad_id)
        self.segment.append((tok, lp, self.alive, policy))
        eos = self.eos
        self.ended = policy & (tok == eos[0] if eos.numel() == 1 else torch.isin(tok, eos))  # [C]
        self.tok, self.t = tok, t + 1
        return True

    def force(self, tok: torch.Tensor) -> torch.Tensor:
        """Write each queued row's next environment token into tok [C]; [C] bool: the rows forced."""
        cache_row = {r: c for c, r in enumerate(self.rows.tolist())}
        where, ids = [], []
        for r in list(self.queued):
            where.append(cache_row[r])
            ids.append(self.queued[r].pop(0))
            if not self.queued[r]:
                del self.queued[r]
        where = torch.tensor(where, device=tok.device)
        tok[where] = torch.tensor(ids, device=tok.device)
        return torch.zeros_like(self.alive).index_fill_(0, where, True)

    def settle(self) -> None:
        """Stop the rows whose policy turn ended at the last step and that `append` did not answer."""
        if self.ended is None:
            return
        ended = self.ended
        if self.answered:
            ended = ended & ~torch.isin(self.rows, torch.tensor(self.answered, device=ended.device))
        self.alive = self.alive & ~ended
        self.ended, self.answered, self.just_ended = None, [], set()

    def flush(self) -> None:
        """Write the segment's tokens [C, k] (slots t0 .. t-1) into the output, by original row."""
        if not self.segment:
            return
        seg_tok, seg_lp, seg_live, seg_policy = (torch.stack(x, 1) for x in zip(*self.segment))  # [C, k]
        rows, span = self.rows, slice(self.t0, self.t)
        self.out_tok[rows, span], self.out_live[rows, span] = seg_tok, seg_live
        self.out_policy[rows, span] = seg_policy
        self.out_lp[rows, span] = seg_lp.masked_fill(~seg_policy, 0.0)
        self.segment, self.t0 = [], self.t

    @torch.inference_mode()
    def ended_turns(self) -> dict[int, list[int]]:
        if self.ended is None:
            return {}
        self.synced = True
        ending = self.rows[self.ended].tolist()
        if not ending:
            return {}
        self.flush()
        self.just_ended = set(ending)
        tokens = self.out_tok[ending, :self.t].tolist()
        return {r: ids[self.turn_start[r]:] for r, ids in zip(ending, tokens)}

    def append(self, row: int, ids: list[int]) -> None:
        if row not in self.just_ended:
            raise ValueError(f"append: row {row} did not just end a policy turn (see ended_turns)")
        self.answered.append(row)
        self.turn_start[row] = self.t + len(ids)
        if ids:
            self.queued[row] = list(ids)

    def close(self) -> None:
        self.threads.done()
        self.model.train(self.was_training)

    def finish(self) -> Rollout:
        try:
            with torch.inference_mode():
                self.settle()
                self.flush()
                N = self.out_tok.shape[0]
                T = int(self.out_live.sum(1).max()) if N else 0
                truncated = torch.zeros(N, dtype=torch.bool, device=self.out_tok.device)
                truncated[self.rows[self.alive]] = True  # the rows whose episode had not ended
        finally:
            self.close()
        G = self.params.G
        # Clones are ordinary tensors: the loop feeds them to autograd, which refuses inference tensors.
        return Rollout(prompt_ids=self.ids.repeat_interleave(G, 0),  # [N, P]
                       prompt_mask=self.mask.repeat_interleave(G, 0),
                       completion_ids=self.out_tok[:, :T].clone(),  # [N, T]
                       completion_mask=self.out_live[:, :T].long(),
                       truncated=truncated.clone(), logp=self.out_lp[:, :T].clone(),
                       policy_mask=self.out_policy[:, :T].long())
