"""`grpo plan`: how much memory GRPO (or the PPO baseline) needs, component by component.

    grpo plan --model tiny --G 8 --prompts-per-step 16 --micro-batch 64
    grpo plan --model /models/qwen2.5-7b --precision bf16 --G 64 --prompt-length 512 \
              --completion-length 1024 --micro-batch 4 --gradient-checkpointing --gpu-gib 80
    grpo plan --params 7e9 --layers 32 --hidden 4096 --algorithm ppo --lora-rank 16

The claim it makes concrete (DeepSeekMath §4.1): PPO holds four models (policy, value, reference,
reward model), GRPO only the policy and the reference (plus a reward model if the reward is
learned). Every number is a formula of the architecture and the run's sizes; the formulas are
listed in docs/memory.md, and the activation terms were counted from the tensors autograd saves in
a Hugging Face Llama forward (tests/test_plan.py checks them against that count, and the total
against the peak memory of real training steps on CPU).

Memory is split into what lives for the whole run (weights, optimizer state, the reference and
other frozen models), the gradients, and what one phase of a step holds while it runs: generation
(KV cache), the update (activations and logits of one micro-batch) and the optimizer step. The
phases never overlap, so the total is the largest of their peaks:

    generate  = always + gradients + KV cache + generation logits
    update    = always + activations + logits (+ gradients when a micro-batch follows another;
                with one micro-batch per update, max(activations + logits, gradients), because
                zero_grad(set_to_none=True) frees the gradients before the forward)
    step      = always + gradients + AdamW's temporary sqrt of its second moment
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from grpo.errors import UserError
from grpo.models.proven import CAUSAL_LM_CLASSES, PROVEN, STATIC_ROPE

Precision = Literal["fp32", "bf16-autocast", "bf16"]
PRECISIONS = ("fp32", "bf16-autocast", "bf16")
OPTIMIZER_STATE_BYTES = {"adamw": 8, "sgd": 0, "sgd-momentum": 4}
"""fp32 optimizer state per trainable parameter: AdamW's two moments, SGD's optional momentum."""


@dataclass
class Architecture:
    """The sizes of a decoder-only transformer (Llama / Qwen2 / Mistral shape: RMSNorm, SwiGLU MLP)."""

    num_layers: int
    """Transformer blocks (config.json: num_hidden_layers)."""
    hidden_size: int
    """Width of the residual stream."""
    intermediate_size: int
    """Width of the SwiGLU MLP."""
    num_heads: int
    """Query heads."""
    num_kv_heads: int
    """Key/value heads (fewer than num_heads with grouped-query attention)."""
    head_dim: int
    """Width of one head."""
    vocab_size: int
    """Rows of the embedding and of the LM head."""
    tie_embeddings: bool = False
    """The LM head shares the embedding matrix."""
    qkv_bias: bool = False
    """q/k/v projections carry biases (Qwen2)."""
    lean_decoder: bool = False
    """grpo's built-in sampler runs this model on its lean decoder (`grpo.rollout.lean.LeanDecoder.build`): a
    class with the "lean_decoder" fast path (`grpo.models.proven.PROVEN`), a RoPE type in STATIC_ROPE, no
    tensor-parallel split. False where the class is not known (a model given by its sizes alone)."""
    sliding_window: int | None = None
    """The attention window where the config uses one: the lean decoder takes sequences no longer than it."""

    def num_params(self) -> int:
        """Exact parameter count: embedding, LM head, per layer 7 linears + 2 norms, final norm."""
        h, q, kv, V = (
            self.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
            self.vocab_size,
        )
        per_layer = h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + 2 * h
        per_layer += (q + 2 * kv) if self.qkv_bias else 0
        return V * h * (1 if self.tie_embeddings else 2) + self.num_layers * per_layer + h

    def matmul_params(self) -> int:
        """Parameters of the linear layers (what bf16 autocast casts and keeps a copy of)."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return (
            self.num_layers * (2 * h * q + 2 * h * kv + 3 * h * self.intermediate_size) + self.vocab_size * h
        )

    def lora_params(self, rank: int, targets: str) -> int:
        """Trainable LoRA parameters: rank * (in + out) for every targeted linear of every layer."""
        h, q, kv, inter = (
            self.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
            self.intermediate_size,
        )
        attention = (h + q) + 2 * (h + kv) + (q + h)  # q, k, v, o
        mlp = 3 * (h + inter)  # gate, up, down
        return self.num_layers * rank * (attention + (mlp if targets == "all-linear" else 0))


def architecture_from_config(path: str | Path) -> Architecture:
    """Read a local Hugging Face config.json (a model directory or the file itself)."""
    p = Path(path)
    p = p / "config.json" if p.is_dir() else p
    if not p.is_file():
        raise UserError(f"--model: {path} has no config.json (give a local Hugging Face model directory)")
    try:
        c = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: not valid JSON ({e})") from None
    c = c.get("text_config", c)  # multimodal configs nest the language model's sizes
    missing = [k for k in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                           "vocab_size") if k not in c]
    if missing:
        raise UserError(f"{p}: missing {', '.join(missing)} (a decoder-only transformer config is needed)")
    heads = c["num_attention_heads"]
    window = c.get("sliding_window") if c.get("use_sliding_window", True) else None
    return Architecture(
        num_layers=c["num_hidden_layers"], hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"],
        num_heads=heads, num_kv_heads=c.get("num_key_value_heads") or heads,
        head_dim=c.get("head_dim") or c["hidden_size"] // heads, vocab_size=c["vocab_size"],
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        qkv_bias=bool(c.get("attention_bias", c.get("model_type") == "qwen2")),
        lean_decoder=_lean_decoder(c), sliding_window=window or None,
    )


def _lean_decoder(c: dict) -> bool:
    """What `LeanDecoder.build` decides from a config.json, before its check against the model's own forward:
    the class `AutoModelForCausalLM` builds for its model_type has the lean_decoder fast path, its RoPE type
    is static and it has no tensor-parallel split. tests/test_plan.py holds the two to the same answers."""
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    paths = PROVEN.get(CAUSAL_LM_CLASSES.get(c.get("model_type"), ""), frozenset())
    return "lean_decoder" in paths and rope_type in STATIC_ROPE and (c.get("pretraining_tp") or 1) <= 1


def tiny_architecture(hidden_size: int = 160, num_layers: int = 4,
                      architecture: str = "llama") -> Architecture:
    """The built-in tiny model (`grpo.models.tiny`) at the given width and depth."""
    # grpo.models.tiny imports torch and transformers: here, so that `grpo plan`
    # without the tiny model stays light
    from grpo.models.tiny import CHARS, NUMBERS, SPECIAL_TOKENS, TAG_TOKENS, TinyConfig

    t = TinyConfig(hidden_size=hidden_size, num_layers=num_layers)
    return Architecture(num_layers=num_layers, hidden_size=hidden_size, intermediate_size=t.intermediate_size,
                        num_heads=t.num_heads, num_kv_heads=t.num_heads, head_dim=hidden_size // t.num_heads,
                        vocab_size=len(SPECIAL_TOKENS + TAG_TOKENS + CHARS + NUMBERS),
                        qkv_bias=architecture == "qwen2", lean_decoder=True)  # a Llama or a Qwen2


@dataclass
class PlanInput:
    """A model and a training run, in the terms of `grpo train`'s config."""

    arch: Architecture
    """Model sizes (activations, KV cache, LoRA and, unless num_params is given, the weights)."""
    num_params: int | None = None
    """Total parameters, overriding the count from `arch` (e.g. 7e9 from a model card)."""
    algorithm: Literal["grpo", "ppo"] = "grpo"
    """GRPO: policy + reference [+ reward model]. PPO: adds a trained value model of the policy's size."""
    precision: Precision = "fp32"
    """fp32; bf16-autocast (grpo's model.dtype=bfloat16: fp32 weights, bf16 matmuls); bf16 (bf16 weights
    and gradients with an fp32 master copy, as DeepSpeed/FSDP mixed precision)."""
    optimizer: Literal["adamw", "sgd", "sgd-momentum"] = "adamw"
    """Optimizer of the trained parameters (state kept in fp32)."""
    lora_rank: int = 0
    """LoRA rank (0: full fine-tuning). With LoRA the reference is the base with the adapter off: free."""
    lora_targets: Literal["all-linear", "attention"] = "all-linear"
    """Linears that get adapters."""
    beta: float = 0.04
    """KL weight; 0 means no reference model is held."""
    G: int = 8
    """Completions per prompt."""
    prompts_per_step: int = 16
    """Prompts per step (the rollout batch is prompts_per_step * G completions)."""
    micro_batch_size: int = 64
    """Completions per forward/backward of the update."""
    micro_batch_tokens: int | None = None
    """train.micro_batch_tokens: at most this many padded tokens per forward/backward (None: no cap)."""
    prompt_length: int = 256
    """Longest prompt in tokens (P)."""
    completion_length: int = 32
    """Longest completion in tokens (T, sampling.max_new_tokens)."""
    generation_batch: int | None = None
    """Completions generated at once (None: the whole rollout batch, as grpo's HF engine does)."""
    lean_decoder: bool | None = None
    """The sampler's KV cache is the lean decoder's (`grpo.rollout.lean`): each distinct prompt's keys and
    values once, plus each row's generated ones. None: as grpo's built-in engine decides, from the model
    (`Architecture.lean_decoder`, a sliding window no shorter than P + T); False: P + T tokens per row, the
    generic Hugging Face path's cache (and rollout.engine=vllm's, not modelled further)."""
    gradient_checkpointing: bool = False
    """Keep only each layer's input and recompute the rest in backward."""
    shared_prompts: bool = True
    """The update runs each distinct prompt once and the completions against copies of its keys and
    values (grpo's training forward for the classes with the shared_prompts fast path, docs/architectures.md);
    False: one forward over P+T tokens per completion (TRL, and grpo for other classes)."""
    attention: Literal["sdpa", "sdpa-gqa", "flash", "eager"] = "sdpa"
    """sdpa keeps a [mb, 1, s, s] mask per layer; eager the [mb, heads, s, s] softmax probabilities;
    flash (varlen, no mask) neither. sdpa-gqa: grpo's SDPA on CPU for grouped-query models (the mask,
    keys and values not repeated to every query head; `grpo.models.lean_layers`)."""
    reward_model_params: int = 0
    """Parameters of a learned reward model held for inference (0: rule-based rewards)."""
    value_model_params: int | None = None
    """PPO value model parameters (None: the policy's backbone plus a scalar head)."""

    @property
    def update_rows(self) -> int:
        """Completions in the update's largest forward: micro_batch_size (the batch, where that is smaller),
        or fewer where micro_batch_tokens caps a micro-batch of full-length rows (P + T tokens each; never
        under one row)."""
        rows = min(self.micro_batch_size, self.prompts_per_step * self.G)
        if self.micro_batch_tokens is None:
            return rows
        return max(1, min(rows, self.micro_batch_tokens // (self.prompt_length + self.completion_length)))

    @property
    def samples_on_lean_decoder(self) -> bool:
        """Whether the KV cache is planned as the lean decoder's (see `lean_decoder`)."""
        if self.lean_decoder is not None:
            return self.lean_decoder
        window, longest = self.arch.sliding_window, self.prompt_length + self.completion_length
        return self.arch.lean_decoder and (not window or longest <= window)


@dataclass
class Component:
    name: str
    bytes: int
    phase: Literal["always", "gradients", "value gradients", "generate", "update", "value update", "step"]
    """'always' lives for the whole run; 'gradients' from a backward to the next zero_grad; the
    phases of a step (generate, update, optimizer step) never overlap."""
    formula: str


@dataclass
class MemoryPlan:
    inputs: PlanInput
    components: list[Component] = field(default_factory=list)

    def phase_bytes(self, phase: str) -> int:
        return sum(c.bytes for c in self.components if c.phase == phase)

    def peaks(self) -> dict[str, int]:
        """Bytes held at the peak of each phase of a step (see the module docstring)."""
        always, grads, v_grads = (self.phase_bytes(p) for p in ("always", "gradients", "value gradients"))
        accumulates = self.inputs.prompts_per_step * self.inputs.G > self.inputs.update_rows

        def update(acts: int, own_grads: int) -> int:  # zero_grad(set_to_none) frees own_grads first
            return acts + own_grads if accumulates else max(acts, own_grads)

        peaks = {"generate": always + grads + v_grads + self.phase_bytes("generate"),
                 "update": always + v_grads + update(self.phase_bytes("update"), grads),
                 "step": always + grads + v_grads + self.phase_bytes("step")}
        if self.inputs.algorithm == "ppo":
            peaks["value update"] = always + grads + update(self.phase_bytes("value update"), v_grads)
        return peaks

    @property
    def total_bytes(self) -> int:
        """The largest phase peak: what the device must hold."""
        return max(self.peaks().values())

    def fits(self, gib: float) -> bool:
        return self.total_bytes <= gib * 2**30

    def to_dict(self) -> dict:
        return {"inputs": asdict(self.inputs), "components": [asdict(c) for c in self.components],
                "peaks": self.peaks(), "total_bytes": self.total_bytes,
                "num_params": _num_params(self.inputs)}


def _num_params(inp: PlanInput) -> int:
    return inp.num_params if inp.num_params is not None else inp.arch.num_params()


def _bytes_of(precision: str) -> tuple[int, int, int, int]:
    """(weight, fp32 master, gradient, generation/inference activation) bytes per element."""
    return {"fp32": (4, 0, 4, 4), "bf16-autocast": (4, 0, 4, 4), "bf16": (2, 4, 2, 2)}[precision]


def layer_activation_bytes(a: Architecture, rows: int, q_len: int, kv_len: int, precision: str,
                           attention: str = "sdpa") -> int:
    """Bytes autograd keeps for one transformer block: `rows` sequences of `q_len` new tokens attending
    to `kv_len` keys (q_len == kv_len for a plain forward; kv_len = cached prompt + q_len otherwise).

    Counted term by term per new token (h hidden, q = heads*head_dim, I intermediate) from the tensors
    a Hugging Face Llama block saves for backward, as grpo loads it (`grpo.models.lean_layers`):
      - two RMSNorms keep their input and normalised output: 4h, fp32 (HF norms upcast), plus one
        rsqrt each (2, fp32);
      - the inputs of q/k/v and of gate/up: 2h (under autocast each linear keeps its own bf16 cast: 5h);
      - attention keeps q and its output (2q) and the log-sum-exp (heads, fp32);
      - the MLP keeps gate, up and the down input: 3I (the SiLU is recomputed in backward).
    fp32: 4 * (6h + 2q + 3I + heads + 2); bf16-autocast: 4 * (4h + heads + 2) + 2 * (5h + 2q + 3I);
    bf16 weights: 4 * (2h + heads + 2) + 2 * (4h + 2q + 3I).
    Per key: k and v, repeated to all query heads first with sdpa and eager attention: 2q; flash
    attention, and sdpa-gqa (grpo's grouped-query SDPA on CPU), keep the kv heads only: 2kv.
    Per (query, key) pair: sdpa and sdpa-gqa keep the [rows, 1, q_len, kv_len] mask, eager the softmax
    probabilities [rows, heads, q_len, kv_len] (fp32, plus a bf16 cast) and no log-sum-exp.
    """
    h, q, I = a.hidden_size, a.num_heads * a.head_dim, a.intermediate_size
    nh = a.num_heads if attention != "eager" else 0  # eager attention keeps no log-sum-exp
    if precision == "fp32":
        per_token, act = 4 * (6 * h + 2 * q + 3 * I + nh + 2), 4
    elif precision == "bf16-autocast":
        per_token, act = 4 * (4 * h + nh + 2) + 2 * (5 * h + 2 * q + 3 * I), 2
    else:  # bf16 weights: norms keep an fp32 upcast of their input and a bf16 normalised output
        per_token, act = 4 * (2 * h + nh + 2) + 2 * (4 * h + 2 * q + 3 * I), 2
    per_key = 2 * (a.num_kv_heads * a.head_dim if attention in ("flash", "sdpa-gqa") else q) * act
    pairs = {"sdpa": act, "sdpa-gqa": act, "eager": a.num_heads * (4 + (act if act != 4 else 0)),
             "flash": 0}[attention]
    return rows * (q_len * per_token + kv_len * per_key + q_len * kv_len * pairs)


def _update_forwards(inp: PlanInput) -> tuple[list[tuple[int, int, int]], int]:
    """The (rows, q_len, kv_len) forwards of one micro-batch, and the LM-head rows per completion.

    Shared prompts (grpo's training forward): each distinct prompt once, then the completion tokens
    but the last against a copy of its prompt's keys and values. Plain: every row's P+T tokens."""
    P, T, mb = inp.prompt_length, inp.completion_length, inp.update_rows
    distinct = max(1, math.ceil(mb / inp.G))
    if inp.shared_prompts and 2 * distinct <= mb:
        return [(distinct, P, P)] + ([(mb, T - 1, P + T - 1)] if T > 1 else []), T
    return [(mb, P + T, P + T)], T + 1


def packed_completion_bytes(inp: PlanInput, forwards: list[tuple[int, int, int]]) -> int:
    """Per layer beyond `layer_activation_bytes` with packed completions (`grpo.models.packing`): o_proj's
    input, gathered from the padded attention output, is a copy of q's size per completion token."""
    if len(forwards) != 2 or inp.gradient_checkpointing or inp.attention not in ("sdpa", "sdpa-gqa"):
        return 0
    rows, q_len, _ = forwards[1]
    return rows * q_len * inp.arch.num_heads * inp.arch.head_dim * (4 if inp.precision == "fp32" else 2)


def plan_memory(inp: PlanInput) -> MemoryPlan:
    """Per-component memory of a GRPO/PPO run; see docs/memory.md for each formula and its source."""
    _validate(inp)
    a, plan = inp.arch, MemoryPlan(inp)
    add = lambda name, n, phase, formula: plan.components.append(  # noqa: E731
        Component(name, int(n), phase, formula))
    w, master, g, act = _bytes_of(inp.precision)
    n_params = _num_params(inp)
    lora = inp.lora_rank > 0
    trainable = a.lora_params(inp.lora_rank, inp.lora_targets) if lora else n_params
    g = 4 if lora else g  # LoRA parameters and their gradients stay fp32
    opt = OPTIMIZER_STATE_BYTES[inp.optimizer]
    P, T, mb = inp.prompt_length, inp.completion_length, inp.update_rows
    s, N = P + T, inp.prompts_per_step * inp.G
    n_gen = inp.generation_batch or N

    add("policy weights", n_params * w + (trainable * 4 if lora else 0), "always",
        f"{n_params:,} params x {w} B" + (f" + {trainable:,} LoRA params x 4 B" if lora else ""))
    if master and not lora:
        add("fp32 master weights", trainable * master, "always", f"{trainable:,} trainable x {master} B")
    add("gradients", trainable * g, "gradients",
        f"{trainable:,} trainable x {g} B (backward -> next zero_grad)")
    if opt:
        add("optimizer state", trainable * opt, "always",
            f"{trainable:,} trainable x {opt} B ({inp.optimizer})")
    if inp.optimizer == "adamw":
        add("optimizer step temporaries", trainable * 4, "step",
            "sqrt of the second moment, fp32 (foreach AdamW)")
    if inp.beta > 0:
        add("reference model", 0 if lora else n_params * w, "always",
            "0: the base with the adapter disabled" if lora else f"{n_params:,} params x {w} B")
    if inp.reward_model_params:
        add("reward model", inp.reward_model_params * act, "always",
            f"{inp.reward_model_params:,} params x {act} B")
    add("rollout tensors", N * (s * 8 * 2 + T * 4 * 4), "always",
        f"{N} completions x (ids and mask int64 over P+T, 4 float32 [T] rows)")

    kv_token = 2 * a.num_layers * a.num_kv_heads * a.head_dim * act  # K and V of one token, every layer
    kv = f"2 x {a.num_layers} layers x {a.num_kv_heads} kv heads x {a.head_dim}"
    if inp.samples_on_lean_decoder:  # each distinct prompt's keys and values once, each row's generated ones
        n_prompts = math.ceil(n_gen / inp.G)
        add("KV cache", kv_token * (P * n_prompts + T * n_gen), "generate",
            f"{kv} x (P={P} x {n_prompts} prompts + T={T} x {n_gen} seqs) x {act} B (lean decoder)")
    else:
        add("KV cache", kv_token * s * n_gen, "generate", f"{kv} x (P+T)={s} x {n_gen} seqs x {act} B")
    add("generation logits", n_gen * a.vocab_size * 4 * 3, "generate",
        f"{n_gen} x V={a.vocab_size} x fp32 x 3")

    forwards, lm_rows = _update_forwards(inp)
    acts, formula, working = _activations(inp, forwards, mb * lm_rows)
    add("activations", acts, "update", formula)
    add("backward working set", working, "update", "gradients of one layer's widest intermediates (estimate)")
    add("logits", 3 * mb * lm_rows * a.vocab_size * 4, "update",
        f"3 x {mb} x {lm_rows} x V={a.vocab_size} x fp32 (kept for log-softmax, its gradient, sliced "
        "gradient)")
    if inp.precision == "bf16-autocast":
        add("autocast weight copies", a.matmul_params() * 2, "update",
            "bf16 copy of every linear weight, kept for backward")

    if inp.algorithm == "ppo":  # a trained copy of the body with a scalar head, updated after the policy
        v_params = inp.value_model_params or (
            n_params - (0 if a.tie_embeddings else a.vocab_size * a.hidden_size) + a.hidden_size + 1
        )
        add("value model weights", v_params * (w + master), "always",
            f"{v_params:,} params x {w} B" + (f" + {master} B master" if master else ""))
        add("value model gradients", v_params * g, "value gradients", f"{v_params:,} trainable x {g} B")
        if opt:
            add("value model optimizer", v_params * opt, "always", f"{v_params:,} trainable x {opt} B")
        v_acts, v_formula, v_working = _activations(inp, [(mb, s, s)], 0)
        add("value model activations", v_acts + v_working, "value update",
            v_formula + " + backward working set")
    return plan


def _activations(
    inp: PlanInput, forwards: list[tuple[int, int, int]], lm_tokens: int
) -> tuple[int, str, int]:
    """(saved activations, their formula, the backward working set) of one micro-batch's forwards.

    The working set is an estimate: while autograd runs backward through a layer it holds the
    gradients of that layer's widest intermediates (gate, up, silu: 3I per token) and a few
    hidden-size ones (4h)."""
    a = inp.arch
    resid = 2 if inp.precision == "bf16" else 4
    act = 4 if inp.precision == "fp32" else 2
    tokens = sum(rows * q_len for rows, q_len, _ in forwards)
    layer = sum(layer_activation_bytes(a, *f, inp.precision, inp.attention) for f in forwards)
    shapes = " + ".join(f"{r}x{q}" + (f"(keys {k})" if k != q else "") for r, q, k in forwards)
    if inp.gradient_checkpointing:  # each layer's input, plus one layer's full set while it is recomputed
        # and, for a shared prompt, the copies of its keys and values each layer reads (the cache holds them)
        prefix = sum(rows * (k_len - q_len) for rows, q_len, k_len in forwards)
        total = (
            a.num_layers * (tokens * a.hidden_size + prefix * 2 * a.num_kv_heads * a.head_dim) * resid + layer
        )
        formula = (
            f"{a.num_layers} layer inputs of {shapes} tokens (+ prompt K/V copies) + one layer recomputed"
        )
    else:
        layer += packed_completion_bytes(inp, forwards)
        total = a.num_layers * layer
        formula = f"{a.num_layers} layers x {layer / tokens:,.0f} B/token x {shapes} tokens"
    total += tokens * 2 * a.hidden_size * resid + lm_tokens * a.hidden_size * act  # final norm, LM-head input
    return total, formula, tokens * (3 * a.intermediate_size + 4 * a.hidden_size) * act


def _validate(inp: PlanInput) -> None:
    for name in ("G", "prompts_per_step", "micro_batch_size", "prompt_length", "completion_length"):
        if getattr(inp, name) < 1:
            raise UserError(f"plan: {name} must be >= 1, got {getattr(inp, name)}")
    if inp.micro_batch_tokens is not None and inp.micro_batch_tokens < 1:
        raise UserError(f"plan: micro_batch_tokens must be >= 1, got {inp.micro_batch_tokens}")
    if inp.precision not in PRECISIONS:
        raise UserError(f"plan: precision must be one of {', '.join(PRECISIONS)}, got {inp.precision!r}")
    if inp.optimizer not in OPTIMIZER_STATE_BYTES:
        raise UserError(f"plan: optimizer must be one of {', '.join(OPTIMIZER_STATE_BYTES)}, got "
                        f"{inp.optimizer!r}")
    if inp.lora_rank < 0 or inp.beta < 0:
        raise UserError("plan: lora_rank and beta must be >= 0")


def format_bytes(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def format_plan(plan: MemoryPlan, gpu_gib: float | None = None) -> str:
    """An aligned table: one row per component, the phase totals, the total and whether it fits."""
    inp, a = plan.inputs, plan.inputs.arch
    n = _num_params(inp)
    head = (
        f"{inp.algorithm.upper()} memory plan: "
        + (f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M")
        + " params "
        f"({a.num_layers} layers, hidden {a.hidden_size}, {a.num_heads}/{a.num_kv_heads} heads, vocab "
        f"{a.vocab_size}), {inp.precision}, {inp.optimizer}"
        + (f", LoRA r={inp.lora_rank}" if inp.lora_rank else "")
        + f"\nG={inp.G} x {inp.prompts_per_step} prompts, P={inp.prompt_length}, "
        f"T={inp.completion_length}, micro-batch {inp.micro_batch_size}"
        + (
            f" capped at {inp.micro_batch_tokens} tokens ({inp.update_rows} full-length rows)"
            if inp.micro_batch_tokens is not None
            else ""
        )
        + (", gradient checkpointing" if inp.gradient_checkpointing else "")
    )
    rows = [(c.name, c.phase, format_bytes(c.bytes), c.formula) for c in plan.components]
    peaks = plan.peaks()
    how = {"generate": "always + gradients + generate",
           "update": "always + update + gradients (see docs/memory.md)",
           "step": "always + gradients + step", "value update": "always + value update + gradients"}
    rows += [(f"peak during {phase}", "", format_bytes(n), how[phase]) for phase, n in peaks.items()]
    rows.append(("TOTAL", "", format_bytes(plan.total_bytes), "the largest peak"))
    widths = [max(len(r[i]) for r in rows + [("component", "phase", "memory", "")]) for i in range(3)]
    line = lambda r: f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip()  # noqa: E731
    out = [head, "", line(("component", "phase", "memory", "how")), line(("-" * widths[0], "-" * widths[1],
                                                                          "-" * widths[2], ""))]
    out += [line(r) for r in rows]
    if gpu_gib is not None:
        out.append(f"fits in {gpu_gib:g} GiB: {'yes' if plan.fits(gpu_gib) else 'no'} "
                   f"({100 * plan.total_bytes / (gpu_gib * 2**30):.0f}% of it)")
    return "\n".join(out)
