"""A lean forward for Llama-family decoders with a pre-allocated KV cache: the classes with the "lean_decoder"
fast path (`grpo.models.proven.PROVEN`: Llama, Mistral, Qwen2, Qwen3).

Sampling calls the model once per new token for a batch of one-token queries, so on a CPU or with a
small model the time goes into per-call overhead (masks, cache objects, dispatch) rather than into
the matmuls. This module runs the same arithmetic as the Hugging Face modules with fewer calls:

- the KV cache is allocated once per `generate` and written in place, in two parts per layer: each distinct
  prompt's keys and values once ([n, kv_heads, P, head_dim], from the prefill), shared by its G rows, and
  each row's generated ones ([rows, kv_heads, max_new_tokens, head_dim]); the attention mask is a view of
  one pre-built key mask;
- a one-token step's attention reads each prompt's keys and values once for all its rows: their queries
  (times the query heads per KV head) are the M dimension of one product with them (`PromptGroups`); the
  scores against the prompt's keys and against the row's own generated keys go through one softmax;
- q/k/v and gate/up projections are fused into one matmul each (weights concatenated once per call,
  in the compute dtype), RoPE is applied to q and k together, cos/sin are looked up in a table;
- the norms use `torch.nn.functional.rms_norm`; the prefill's attention is `scaled_dot_product_attention`,
  a one-token step's is plain matmuls (as fast here, and unlike SDPA's CPU kernel, their results do not
  depend on the number of threads, so the engine may pick one per step without changing a bit);
- the one-token steps multiply through oneDNN with the weights packed once per `generate` where torch
  has it (CPU, float32, or bfloat16 where oneDNN has bf16 kernels; see `_Proj`): a step of a few rows
  reads every weight of the model, and the packed layout streams them faster (25M model, 8 rows: 19-23
  ms per step against 40 ms);
- `compact(keep)` drops finished rows from the cache (and the prompts none of the kept rows continue),
  so late tokens cost only the live rows.

It reads the weights of the Hugging Face modules themselves, through the accessors of
`grpo.models.hf_internals` (no conversion, no state of its own between calls: fused and packed copies
are made per `generate`). A model under peft LoRA adapters samples from its weights with the adapters
folded in (W + scale * B @ A, made per `generate` like the fused copies), so LoRA runs sample as fast as
full fine-tuning. Models without the "lean_decoder" fast path (or with a RoPE type that depends on the
sequence length, a sliding window shorter than the rollout, or adapters other than plain LoRA on linear
layers) return None from `LeanDecoder.build`, and the engine uses the generic Hugging Face path instead.
The first build for a model checks the decoder against the model's own forward on a small batch
(`check_decoder`: prefill and one step, log-probs within `grpo.models.fast_paths.LOGP_ATOL`); a failure
turns the path off for that model with one warning line. tests/test_rollout.py checks greedy output
token for token against `transformers`' own `generate` and the log-probs against a full forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grpo.models.fast_paths import LOGP_ATOL, check_batch, disable_path, enabled_paths
from grpo.models.hf_internals import decoder_layer, decoder_stack, rms_norm_params, rope_type, rotary_cos_sin
from grpo.models.loading import base_weight, foldable, folded_linear, unwrap
from grpo.models.proven import STATIC_ROPE

HALF_LOGP_ATOL = 0.1
"""`check_decoder`'s tolerance for 16-bit weights (both sides round each op to 8 mantissa bits)."""

_GQA_KW = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)  # SDPA grew enable_gqa in 2.5


SMALL_BATCH = 16
"""Up to this many rows (and without oneDNN) a projection runs as (w @ x.T).T: see `_Proj`."""


PACK_MIN_BYTES = 32 * 2**20
"""Pack the weights for oneDNN only from this size on. Smaller weights stay in the CPU's caches between
steps: on the 1M-parameter tiny model (4 MiB) packing measured no faster, within noise, while oneDNN's
buffers raised the bench's peak RSS by 25-30 MiB."""


def _onednn(dtype: torch.dtype, device: torch.device, weight_bytes: int) -> bool:
    """True if torch has oneDNN's linear with pre-packed weights here (CPU builds with mkldnn; float32, or
    bfloat16 where oneDNN has bf16 kernels: the bf16 sampler's copies, which gave the same tokens and
    log-probs on SmolLM2 packed as unpacked, 11.5 against 13.1 s a generate: docs/performance.md) and the
    weights are large enough for it to pay (PACK_MIN_BYTES)."""
    bf16 = dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    supported = dtype == torch.float32 or bf16
    return (device.type == "cpu" and supported and weight_bytes >= PACK_MIN_BYTES
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


class _Proj:
    """One projection y = x @ w.T + b of the sampling loop, w [N, K], x [..., K].

    A one-token step multiplies a few rows by every weight of the model, so how the product is run
    matters more than its FLOPs. Measured on the 2-core bench machine (AMD EPYC, AVX2; 25M model, 8
    rows): the gate/up projection 512 -> 2752 took 1.5-1.7 ms through `F.linear` (MKL splits a
    product across threads by the rows of its result, so 8 rows leave a thread idle), 0.8-0.9 ms as
    (w @ x.T).T, and 0.6-0.7 ms through oneDNN with the weight packed once into its blocked layout; a
    whole decode step 40, 27-29 and 19-23 ms. So the steps use oneDNN where torch has it (`pack`,
    once per `generate`, since the weights change between calls), else (w @ x.T).T up to SMALL_BATCH
    rows; the prefill, with many rows, uses `F.linear`. Weights under PACK_MIN_BYTES are not packed.
    Each output element is one thread's dot product on every path, so no result depends on the thread
    count (tests/test_rollout.py).
    """

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None):
        self.w, self.b, self.packed = w, b, None

    def pack(self, rows: int) -> None:
        """Reorder w for oneDNN; from then on only the packed copy is read, so w (a fused copy, or a
        view of a parameter) is let go here and its memory is not held twice."""
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.w, rows)
        self.w = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.b, "none", [], "")
        if x.numel() > SMALL_BATCH * x.shape[-1]:
            return F.linear(x, self.w, self.b)
        out = torch.mm(self.w, x.reshape(-1, x.shape[-1]).t()).t()  # [M, N], a transposed view
        if self.b is not None:
            out = out + self.b
        return out.reshape(*x.shape[:-1], self.w.shape[0])


def _plain_modules(model) -> bool:
    """True if every weight the lean forward reads is a parameter of a plain module, or of a plain
    module under plain LoRA adapters (`foldable`)."""
    stack = decoder_stack(model)
    if stack is None or not foldable(stack.lm_head):
        return False
    for layer in map(decoder_layer, stack.layers):
        if layer is None or not all(foldable(m) for m in layer.linears):
            return False
    return type(stack.embed_tokens) is torch.nn.Embedding


def _fused(parts: list[tuple[torch.Tensor, torch.Tensor | None]], dtype: torch.dtype) -> _Proj:
    """One projection computing several (w, b) at once: their weights (and biases) concatenated."""
    biases = [b for _, b in parts]
    return _Proj(torch.cat([w for w, _ in parts]).detach().to(dtype),
                 None if biases[0] is None else torch.cat(biases).detach().to(dtype))


class PromptGroups:
    """Which distinct prompt each cache row continues, and a layout that batches each prompt's rows.

    A decode step multiplies the queries of all the rows of a prompt by that prompt's keys (and their
    attention weights by its values) in one product, so that the prompt's keys and values are read once
    for all its rows rather than once per row. `to_groups` lays a per-row tensor [C, Hkv, Q, E] out as
    [n, Hkv, G * Q, E] (G: the most rows any prompt has; G * Q is the M dimension of the product),
    `to_rows` gives each row its part of a result laid out so. Rows of a prompt need be neither
    contiguous nor as many as another prompt's (after `compact`): a prompt with fewer rows fills its
    other slots with row 0's values, whose results nothing reads. Where every prompt has G rows in
    order (as after the prefill), both are a reshape.

    >>> g = PromptGroups(torch.tensor([0, 0, 1]))  # rows 0, 1 continue prompt 0; row 2 prompt 1
    >>> g.G, g.slot.tolist(), g.row_at.tolist()  # padded slots [p0: rows 0, 1 | p1: row 2, (row 0)]
    (2, [0, 1, 2], [0, 1, 2, 0])
    """

    def __init__(self, group: torch.Tensor):
        self.group = group  # [C] the prompt of each row, every prompt of 0..n-1 present
        C = group.shape[0]
        counts = torch.bincount(group)  # [n]
        self.n, self.G = counts.shape[0], int(counts.max()) if C else 1
        order = torch.argsort(group, stable=True)  # [C] the rows, prompt by prompt
        first = counts.cumsum(0) - counts  # [n] where each prompt's rows start in `order`
        rank = torch.empty_like(group)
        rank[order] = torch.arange(C, device=group.device) - first[group[order]]  # [C] k-th row of its prompt
        self.slot = group * self.G + rank  # [C] each row's slot in the layout [n * G]
        self.row_at = torch.zeros(self.n * self.G, dtype=torch.long, device=group.device)
        self.row_at[self.slot] = torch.arange(C, device=group.device)  # [n * G] the row in each slot
        self.plain = C == self.n * self.G and bool((self.slot == torch.arange(C, device=group.device)).all())

    def to_groups(self, x: torch.Tensor) -> torch.Tensor:
        """[C, Hkv, Q, E] -> [n, Hkv, G * Q, E]: each prompt's rows (times their Q heads) side by side."""
        if not self.plain:
            x = x.index_select(0, self.row_at)  # [n * G, Hkv, Q, E]
        return x.unflatten(0, (self.n, self.G)).transpose(1, 2).flatten(2, 3)  # [n, Hkv, G * Q, E]

    def to_rows(self, y: torch.Tensor) -> torch.Tensor:
        """[n, Hkv, G * Q, E] -> [C, Hkv, Q, E]: the inverse of `to_groups` for the rows there are."""
        y = y.unflatten(2, (self.G, -1)).transpose(1, 2).flatten(0, 1)  # [n * G, Hkv, Q, E]
        return y if self.plain else y.index_select(0, self.slot)


class _Layer:
    """One decoder layer's weights, fused for the sampling loop (views of the live parameters where
    nothing is fused, copies in the compute dtype where something is)."""

    def __init__(self, layer, dtype: torch.dtype):
        p = decoder_layer(layer)
        cast = lambda t: None if t is None else t.detach().to(dtype)  # noqa: E731
        ln1, self.eps = rms_norm_params(p.input_layernorm)
        self.ln1, self.ln2 = cast(ln1), cast(rms_norm_params(p.post_attention_layernorm)[0])
        self.qkv = _fused([folded_linear(p.q_proj), folded_linear(p.k_proj), folded_linear(p.v_proj)], dtype)
        self.o = _Proj(*map(cast, folded_linear(p.o_proj)))
        # Qwen3: RMSNorm per head, at the layer's epsilon
        self.q_norm = None if p.q_norm is None else cast(rms_norm_params(p.q_norm)[0])
        self.k_norm = None if p.k_norm is None else cast(rms_norm_params(p.k_norm)[0])
        self.gu = _fused([folded_linear(p.gate_proj), folded_linear(p.up_proj)], dtype)
        self.down = _Proj(*map(cast, folded_linear(p.down_proj)))
        self.act = p.act_fn
        self.scaling = p.scaling


class LeanDecoder:
    """Prefill + one-token steps of a Llama-family causal LM over a fixed-size KV cache."""

    def __init__(self, model, dtype: torch.dtype):
        model = unwrap(model)
        cfg = model.config
        self.dtype = dtype
        self.H, self.Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        stack = decoder_stack(model)
        self.embed = stack.embed_tokens.weight
        self.rotary = stack.rotary_emb
        norm, self.norm_eps = rms_norm_params(stack.norm)
        self.norm = norm.detach().to(dtype)
        head, head_bias = folded_linear(stack.lm_head)
        self.lm_head = _Proj(head.detach().to(dtype),
                             None if head_bias is None else head_bias.detach().to(dtype))
        self.layers = [_Layer(layer, dtype) for layer in stack.layers]
        self.projections = [self.lm_head] + [
            p for lay in self.layers for p in (lay.qkv, lay.o, lay.gu, lay.down)
        ]
        self.onednn = _onednn(dtype, self.lm_head.w.device, sum(p.w.nbytes for p in self.projections))
        self.k_cache: list[torch.Tensor] = []
        self.v_cache: list[torch.Tensor] = []

    @classmethod
    def build(cls, model, max_len: int, dtype: torch.dtype | None = None) -> "LeanDecoder | None":
        """The decoder for `model` (or for the transformers model under its peft LoRA adapters), or None
        where this module does not reproduce it exactly (or its first check failed: `check_decoder`)."""
        wrapped, model = model, unwrap(model)
        cfg = getattr(model, "config", None)
        if "lean_decoder" not in enabled_paths(model) or rope_type(cfg) not in STATIC_ROPE:
            return None
        window = getattr(cfg, "sliding_window", None)
        if window and getattr(cfg, "use_sliding_window", True) and max_len > window:
            return None
        if getattr(cfg, "pretraining_tp", 1) > 1 or not _plain_modules(model):
            return None  # e.g. adapters other than plain LoRA (DoRA, LoRA biases, on embeddings)
        weights = base_weight(decoder_stack(model).lm_head).dtype
        if not getattr(model, "grpo_lean_decoder_checked", False):
            model.grpo_lean_decoder_checked = True
            try:
                err = check_decoder(cls(model, weights), wrapped)
                reason = f"failed its check against the stock forward: max |d logp| {err:.2g}"
            except Exception as e:  # noqa: BLE001 (a structure the decoder misreads: the stock path, said once)
                err, reason = float("inf"), f"its check raised {type(e).__name__}: {e}"
            if not err <= (LOGP_ATOL if weights == torch.float32 else HALF_LOGP_ATOL):
                disable_path(model, "lean_decoder", reason)
                return None
        return cls(model, dtype or weights)

    # ----------------------------------------------------------------------------------------------
    def _attention(self, i: int, lay: _Layer, h: torch.Tensor, cos, sin, start: int, mask) -> torch.Tensor:
        """Self-attention of h [B, L, hidden] at positions start..start+L-1 of the rows' sequences: the
        prompts (start 0, mask [B, 1, L, L] bool) or one token (L = 1, mask [B, 1, 1, start + 1] additive,
        0 / -inf)."""
        B, L, _ = h.shape
        H, Hkv, D = self.H, self.Hkv, self.D
        qkv = lay.qkv(h).view(B, L, H + 2 * Hkv, D)  # [B, L, H+2Hkv, D]
        qk, v = qkv[:, :, :H + Hkv], qkv[:, :, H + Hkv:]
        if lay.q_norm is not None:
            qk = torch.cat([F.rms_norm(qk[:, :, :H], (D,), lay.q_norm, lay.eps),
                            F.rms_norm(qk[:, :, H:], (D,), lay.k_norm, lay.eps)], dim=2)
        half = D // 2
        rotated = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)
        qk = qk * cos + rotated * sin  # [B, L, H+Hkv, D]; cos/sin [B, L, 1, D]
        k, v = qk[:, :, H:].transpose(1, 2), v.transpose(1, 2)  # [B, Hkv, L, D]
        if L == 1:
            q = qk[:, 0, :H].reshape(B, Hkv, H // Hkv, D)  # query heads grouped by KV head
            out = self._step_attention(i, lay, q, k, v, start - self.prompt_length, mask)  # like q
            return lay.o(out.reshape(B, 1, H * D))
        k, v = k.contiguous(), v.contiguous()
        self.k_prompt[i], self.v_prompt[i] = k, v
        q = qk[:, :, :H].transpose(1, 2)  # [B, H, L, D]
        if Hkv != H and _GQA_KW:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=lay.scaling, enable_gqa=True)
        else:
            if Hkv != H:
                k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=lay.scaling)
        out = out.transpose(1, 2).reshape(B, L, H * D)  # [B, L, H*D]
        return lay.o(out)

    def _step_attention(self, i: int, lay: _Layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        j: int, mask: torch.Tensor) -> torch.Tensor:
        """One token's attention, q [C, Hkv, Q, D], its key and value k, v [C, Hkv, 1, D] (stored at generated
        slot j): over its prompt's keys, shared with the prompt's other rows, and its own generated ones, in
        one softmax (mask [C, 1, 1, P + j + 1]). Plain matmuls: their results do not depend on the thread
        count (SDPA's do). [C, Hkv, Q, D]."""
        groups, P = self.groups, self.prompt_length
        self.k_gen[i][:, :, j:j + 1], self.v_gen[i][:, :, j:j + 1] = k, v
        k_own, v_own = self.k_gen[i][:, :, :j + 1], self.v_gen[i][:, :, :j + 1]  # [C, Hkv, j+1, D]
        shared = torch.matmul(groups.to_groups(q), self.k_prompt[i].transpose(-1, -2))  # [n, Hkv, G*Q, P]
        own = torch.matmul(q, k_own.transpose(-1, -2))  # [C, Hkv, Q, j+1]
        scores = torch.cat([groups.to_rows(shared), own], -1)  # [C, Hkv, Q, P+j+1]
        probs = scores.mul_(lay.scaling).add_(mask).softmax(-1)
        out = torch.matmul(groups.to_groups(probs[..., :P]), self.v_prompt[i])  # [n, Hkv, G*Q, D]
        return groups.to_rows(out).add_(torch.matmul(probs[..., P:], v_own))  # [C, Hkv, Q, D]

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, start: int, mask) -> torch.Tensor:
        """Last-position logits [B, V] for token ids [B, L] at `positions` [B, L]."""
        h = F.embedding(ids, self.embed).to(self.dtype)  # [B, L, hidden]
        cos, sin = self.cos[positions].unsqueeze(2), self.sin[positions].unsqueeze(2)  # [B, L, 1, D]
        for i, lay in enumerate(self.layers):
            x = F.rms_norm(h, (h.shape[-1],), lay.ln1, lay.eps)
            h = h + self._attention(i, lay, x, cos, sin, start, mask)
            x = F.rms_norm(h, (h.shape[-1],), lay.ln2, lay.eps)
            gate, up = lay.gu(x).chunk(2, dim=-1)
            h = h + lay.down(lay.act(gate) * up)
        h = F.rms_norm(h[:, -1], (h.shape[-1],), self.norm, self.norm_eps)  # [B, hidden]
        return self.lm_head(h).float()  # [B, V]

    # ----------------------------------------------------------------------------------------------
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                max_new_tokens: int, repeats: int = 1) -> torch.Tensor:
        """Run the left-padded prompts ids/mask/positions [B, P] into a new cache, and give each prompt
        `repeats` cache rows (the G completions of a group): the prompt's keys and values are kept once, for
        all of them, each row's generated ones apart. Logits [B, V]."""
        B, P = ids.shape
        S = P + max_new_tokens
        dev = ids.device
        self.k_prompt, self.v_prompt = [None] * len(self.layers), [None] * len(self.layers)  # [B, Hkv, P, D]
        self.k_gen = [torch.empty(B * repeats, self.Hkv, max_new_tokens, self.D, dtype=self.dtype, device=dev)
                      for _ in self.layers]  # [B * repeats, Hkv, max_new_tokens, D]
        self.v_gen = [torch.empty_like(k) for k in self.k_gen]
        self.groups = PromptGroups(torch.arange(B, device=dev).repeat_interleave(repeats))
        table = torch.arange(int(positions.max()) + max_new_tokens + 1, device=dev)[None]  # [1, S']
        cos, sin = rotary_cos_sin(self.rotary, table)  # float32, as the HF modules compute it
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)  # [S', D]
        # Keys a row may attend to: its real prompt tokens, then every generated token.
        self.key_bias = torch.zeros(B, S, dtype=self.dtype, device=dev)  # [B, S], 0 or -inf
        self.key_bias[:, :P].masked_fill_(mask == 0, float("-inf"))
        self.key_bias = self.key_bias.repeat_interleave(repeats, 0)  # [B * repeats, S]
        causal = torch.ones(P, P, dtype=torch.bool, device=dev).tril()
        # A pad query attends to itself only, so that no softmax row is empty (NaN would leak into the cache).
        attend = (causal & mask.bool()[:, None, :]) | torch.eye(P, dtype=torch.bool, device=dev)  # [B, P, P]
        self.length = self.prompt_length = P
        return self._forward(ids, positions, 0, attend[:, None])

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Feed one token per cache row (tokens, positions [B]); next-token logits [B, V]."""
        t = self.length
        if self.onednn and t == self.prompt_length:  # the first step: pack the weights for oneDNN
            for p in self.projections:
                try:
                    if p.packed is None:
                        p.pack(tokens.shape[0])
                except RuntimeError:  # a build whose oneDNN refuses the shape: the plain paths are exact too
                    pass
        self.length += 1
        mask = self.key_bias[:, None, None, :t + 1]  # [B, 1, 1, S]
        return self._forward(tokens[:, None], positions[:, None], t, mask)

    def compact(self, keep: torch.Tensor) -> None:
        """Keep (or repeat) cache rows `keep`, an index tensor: finished rows stop costing anything, and so do
        the prompts that no kept row continues."""
        prompts, group = torch.unique(self.groups.group[keep], return_inverse=True)  # [n'], [C']
        caches = [(self.k_gen, keep), (self.v_gen, keep)]
        if prompts.shape[0] < self.groups.n:
            caches += [(self.k_prompt, prompts), (self.v_prompt, prompts)]
        for cache, index in caches:
            for i, kv in enumerate(cache):  # one layer at a time: the old cache is freed as the new one fills
                cache[i] = kv[index]
        self.key_bias = self.key_bias[keep]
        self.groups = PromptGroups(group)


def check_decoder(decoder: LeanDecoder, model) -> float:
    """max |logp_lean - logp_stock| of every vocabulary entry at the prefill's last position and after one
    step, on `grpo.models.fast_paths.check_batch`'s prompts [4, 5] (left padding included), the stock
    log-probs from one full forward of `model` over prompt + step token."""
    ids, mask, nxt, _ = check_batch(decoder.embed.shape[0], decoder.embed.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [4, 5]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            first = decoder.prefill(ids, mask, positions, 1).float().log_softmax(-1)  # [4, V]
            second = decoder.step(nxt[:, 0], positions[:, -1] + 1).float().log_softmax(-1)  # [4, V]
            full_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)  # [4, 6]
            logits = model(input_ids=torch.cat([ids, nxt[:, :1]], 1), attention_mask=full_mask,
                           position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0), use_cache=False).logits
            stock = logits[:, -2:].float().log_softmax(-1)  # [4, 2, V]
    finally:
        model.train(was_training)
    return float(torch.stack([first, second], 1).sub(stock).abs().max())
