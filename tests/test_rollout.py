"""The sampling engine: exact against transformers' own generate and against a full forward.

Every test runs both paths of `HFEngine` (the lean Llama-family decoder and the generic
transformers forward) on small random models of each supported shape: Llama (also with grouped
KV heads), Qwen2 (q/k/v biases) and Qwen3 (per-head q/k norms). Initialised with std 0.1 so that
greedy choices are decisive (no near-ties that rounding could flip).
"""

import pytest
import torch

from grpo.rollout.engine import SamplingParams
from grpo.rollout.hf import HFEngine
from grpo.rollout import lean
from grpo.rollout.lean import LeanDecoder
from grpo.models.logprobs import completion_logprobs

V, PAD = 64, 0
ARCHS = ["llama", "llama_gqa", "qwen2", "qwen3"]


def make_model(arch: str):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    kw = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=4, max_position_embeddings=128, initializer_range=0.1, pad_token_id=PAD,
              bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    config = {"llama": lambda: LlamaConfig(**kw),
              "llama_gqa": lambda: LlamaConfig(**{**kw, "num_key_value_heads": 2}),
              "qwen2": lambda: Qwen2Config(**kw),
              "qwen3": lambda: Qwen3Config(**{**kw, "head_dim": 16})}[arch]()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:  # zero / one at init: make them matter
                p.add_(0.05 * torch.randn_like(p))
    return model.train()  # the loop hands over a model in train mode; generate must not care


def prompts(n: int = 6, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(3, V, (int(k),), generator=g).tolist() for k in torch.randint(1, 11, (n,), generator=g)
    ]


class _PackedEngine(HFEngine):
    """The lean path with its weights packed for oneDNN, which the test models are too small to get."""

    def generate(self, *a, **kw):
        old, lean.PACK_MIN_BYTES = lean.PACK_MIN_BYTES, 0
        try:
            return super().generate(*a, **kw)
        finally:
            lean.PACK_MIN_BYTES = old


def engines(model, eos: int | list[int] = 2):
    out = {"lean": HFEngine(model, eos, PAD), "generic": HFEngine(model, eos, PAD, lean=False)}
    if lean._onednn(torch.float32, torch.device("cpu"), lean.PACK_MIN_BYTES):
        out["lean, packed for oneDNN"] = _PackedEngine(model, eos, PAD)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_lean_decoder_supports_the_llama_family(arch):
    assert LeanDecoder.build(make_model(arch), 64) is not None


def _hf_greedy(model, ps, max_new, eos) -> list[list[int]]:
    P = max(map(len, ps))
    ids = torch.tensor([[PAD] * (P - len(p)) + p for p in ps])
    mask = (torch.arange(P)[None] >= torch.tensor([P - len(p) for p in ps])[:, None]).long()
    out = model.eval().generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new,
                                eos_token_id=eos, pad_token_id=PAD)[:, P:]
    model.train()
    seqs = []
    for row in out.tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t == eos), len(row))  # up to and including EOS
        seqs.append(row[:cut])
    return seqs


def _rows(r) -> list[list[int]]:
    return [ids[m.bool()].tolist() for ids, m in zip(r.completion_ids, r.completion_mask)]


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_equals_transformers_generate_token_for_token(arch):
    model, ps, max_new = make_model(arch), prompts(8), 24
    # EOS: the most common first token of transformers' own greedy output, so that rows stop at
    # different steps (some at once, some never) and finished rows are dropped mid-loop.
    free = _hf_greedy(model, ps, max_new, eos=V + 1)
    eos = max(set(t for s in free for t in s[:6]), key=lambda t: sum(t in s[:6] for s in free))
    want = _hf_greedy(model, ps, max_new, eos)
    assert 0 < sum(len(s) < max_new for s in want) < len(ps), "the chosen EOS must stop some rows, not all"
    for name, engine in engines(model, eos).items():
        r = engine.generate(ps, SamplingParams(max_new_tokens=max_new, temperature=0.0, G=1))
        assert _rows(r) == want, name
        assert r.completion_ids.shape[1] == max(map(len, want)), name
        assert r.truncated.tolist() == [len(s) == max_new and s[-1] != eos for s in want], name
    assert model.training, "generate restores train mode"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_a_full_forward(arch, temperature):
    model = make_model(arch)
    for name, engine in engines(model, eos=[2, 7]).items():
        r = engine.generate(prompts(4), SamplingParams(max_new_tokens=20, temperature=temperature, G=4),
                            torch.Generator().manual_seed(0))
        with torch.no_grad():
            full = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                       r.completion_mask,
                                       temperature, share_prompts=False).logp  # [N, T]
        mask = r.completion_mask.bool()
        assert (r.logp[mask] - full[mask]).abs().max() < 1e-5, name
        assert (r.logp[~mask] == 0).all() and (r.completion_ids[~mask] == PAD).all(), name
        assert not r.logp.requires_grad and not r.completion_ids.is_inference(), name


def test_rollout_layout_groups_are_contiguous_copies_of_their_prompt():
    model, ps = make_model("llama"), prompts(3)
    r = HFEngine(model, 2, PAD).generate(ps, SamplingParams(max_new_tokens=8, G=5),
                                         torch.Generator().manual_seed(0))
    assert r.prompt_ids.shape == (15, max(map(len, ps))) and r.completion_ids.shape[0] == 15
    for i, p in enumerate(ps):
        for row in range(5 * i, 5 * i + 5):
            assert r.prompt_ids[row][r.prompt_mask[row].bool()].tolist() == p
    assert r.logp.shape == r.completion_ids.shape == r.completion_mask.shape


def test_eos_stops_a_row_and_truncation_is_flagged_exactly():
    model, ps, max_new = make_model("llama"), prompts(6), 12
    free = _rows(
        HFEngine(model, V + 1, PAD).generate(ps, SamplingParams(max_new_tokens=max_new, temperature=0.0))
    )
    # EOS := a token that row k first emits at its very last slot: row k ends with it there and is not
    # truncated (EOS at slot max_new - 1); rows where it never comes run to max_new and are truncated.
    k = next(i for i, row in enumerate(free) if row[-1] not in row[:-1])
    eos = free[k][-1]
    for name, engine in engines(model, eos).items():
        r = engine.generate(ps, SamplingParams(max_new_tokens=max_new, temperature=0.0))
        got = _rows(r)
        for i, row in enumerate(free):
            stop = row.index(eos) + 1 if eos in row else max_new
            assert got[i] == row[:stop], name
            assert r.truncated[i].item() is (eos not in row), name
        assert len(got[k]) == max_new and r.truncated[k].item() is False, name


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_min_new_tokens_holds_the_stop_tokens_back_that_long(temperature):
    model, ps, max_new, floor = make_model("llama"), prompts(6), 12, 5
    # EOS := each row's first greedy token: unmasked, every greedy row stops at once
    first = _rows(HFEngine(model, V + 1, PAD).generate(ps, SamplingParams(max_new_tokens=1, temperature=0.0)))
    eos = sorted({row[0] for row in first})
    for name, engine in engines(model, eos).items():
        plain = engine.generate(ps, SamplingParams(max_new_tokens=max_new, temperature=0.0))
        assert all(len(row) == 1 for row in _rows(plain)), name
        r = engine.generate(ps, SamplingParams(max_new_tokens=max_new, temperature=temperature, G=2,
                                               min_new_tokens=floor), torch.Generator().manual_seed(0))
        for row, lp in zip(_rows(r), r.logp):
            assert len(row) >= floor and not set(row[:floor]) & set(eos), name
            assert torch.isfinite(lp[:len(row)]).all(), name
        # the log-probs are those of the masked distribution the tokens were drawn from
        logits = model(torch.tensor([ps[0]])).logits[0, -1].detach().index_fill(-1, torch.tensor(eos),
                                                                                  float("-inf"))
        want = logits.log_softmax(-1)[r.completion_ids[0, 0]]
        assert r.logp[0, 0].item() == pytest.approx(want.item(), abs=1e-5), name


def test_same_seed_same_samples_and_paths_agree():
    model = make_model("qwen2")
    params = SamplingParams(max_new_tokens=16, temperature=1.0, G=4)
    outs = {}
    for name, engine in engines(model, 2).items():
        a = engine.generate(prompts(3), params, torch.Generator().manual_seed(5))
        b = engine.generate(prompts(3), params, torch.Generator().manual_seed(5))
        c = engine.generate(prompts(3), params, torch.Generator().manual_seed(6))
        assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.logp, b.logp), name
        assert not torch.equal(a.completion_ids[:, :4], c.completion_ids[:, :4]), name
        outs[name] = a
    assert torch.equal(outs["lean"].completion_ids, outs["generic"].completion_ids)
    assert (outs["lean"].logp - outs["generic"].logp).abs().max() < 1e-5


def test_top_p_keeps_only_the_nucleus():
    model = make_model("llama")
    r = HFEngine(model, 2, PAD).generate(prompts(2),
                                         SamplingParams(max_new_tokens=10, temperature=1.0, top_p=1e-6, G=3),
                                         torch.Generator().manual_seed(0))
    greedy = HFEngine(model, 2, PAD).generate(prompts(2),
                                              SamplingParams(max_new_tokens=10, temperature=0.0, G=3))
    assert torch.equal(r.completion_ids, greedy.completion_ids)  # a vanishing nucleus is the argmax
    assert torch.allclose(r.logp[r.completion_mask.bool()], torch.zeros(()), atol=1e-6)  # renormalised: p = 1


def _lora(model, **kw):
    """`model` under peft LoRA adapters on every projection, with B drawn at random (peft starts it at
    zero, where an adapter changes nothing and a test of it could not fail)."""
    peft = pytest.importorskip("peft")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, **kw))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model


def test_lora_samples_on_the_lean_path_with_its_adapters_folded_in():
    """A LoRA policy samples through the lean decoder (adapters folded into the weights per generate):
    the greedy tokens of peft's own forward, log-probs equal a full forward of the adapted model to 1e-5;
    with the adapters disabled (a LoRA reference), the base model's tokens; the adapters do change them."""
    base = make_model("llama")
    ps = prompts(6)
    base_greedy = _rows(
        HFEngine(base, 2, PAD, lean=False).generate(ps, SamplingParams(max_new_tokens=16, temperature=0.0))
    )
    model = _lora(base)
    assert LeanDecoder.build(model, 64) is not None
    greedy = {name: _rows(e.generate(ps, SamplingParams(max_new_tokens=16, temperature=0.0)))
              for name, e in engines(model).items()}
    assert all(g == greedy["generic"] for g in greedy.values()) and greedy["lean"] != base_greedy
    with model.disable_adapter():
        assert (
            _rows(HFEngine(model, 2, PAD).generate(ps, SamplingParams(max_new_tokens=16, temperature=0.0)))
            == base_greedy
        )
    r = HFEngine(model, [2, 7], PAD).generate(prompts(4), SamplingParams(max_new_tokens=20, G=4),
                                              torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = completion_logprobs(model.eval(), r.prompt_ids, r.prompt_mask, r.completion_ids,
                                   r.completion_mask,
                                   share_prompts=False).logp  # [N, T]
    mask = r.completion_mask.bool()
    assert (r.logp[mask] - full[mask]).abs().max() < 1e-5


def test_adapters_beyond_plain_lora_use_the_generic_path():
    model = _lora(make_model("llama"), use_dora=True)
    assert LeanDecoder.build(model, 64) is None
    r = HFEngine(model, 2, PAD).generate(prompts(2), SamplingParams(max_new_tokens=6, G=2),
                                         torch.Generator().manual_seed(0))
    assert r.completion_ids.shape[0] == 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("n_prompts", [16, 2])
def test_lean_steps_give_the_same_bits_at_any_thread_count(n_prompts, packed, dtype, monkeypatch):
    """`DecodeThreads` may run a step on one thread or on all; that must never change a result.
    16 x 4 rows: enough work that a split-K attention kernel splits (SDPA's does); 2 x 4 rows: the
    projections run as (w @ x.T).T (`grpo.rollout.lean.SMALL_BATCH`); packed: through oneDNN; bfloat16:
    the sampler's bf16 weight copies (model.dtype=bfloat16)."""
    import copy

    if packed:
        if not lean._onednn(dtype, torch.device("cpu"), lean.PACK_MIN_BYTES):
            pytest.skip(f"this torch has no oneDNN linear for {dtype}")
        monkeypatch.setattr(lean, "PACK_MIN_BYTES", 0)

    model = make_model("llama_gqa").eval()
    ps = prompts(n_prompts)
    P = max(map(len, ps))
    ids = torch.tensor([[PAD] * (P - len(p)) + p for p in ps])
    mask = (ids != PAD).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    n = torch.get_num_threads()
    with torch.inference_mode():
        dec = LeanDecoder.build(model, P + 8, dtype)
        dec.prefill(ids, mask, positions, 8, repeats=4)
        tok, pos = torch.arange(4 * n_prompts) % 60 + 3, positions[:, -1].repeat_interleave(4) + 1
        logits = {}
        for threads in (1, 2):
            d = copy.copy(dec)
            d.k_gen, d.v_gen = [k.clone() for k in dec.k_gen], [v.clone() for v in dec.v_gen]
            torch.set_num_threads(threads)
            logits[threads] = [d.step(tok, pos), d.step(tok + 1, pos + 1)]
        torch.set_num_threads(n)
    assert all(torch.equal(a, b) for a, b in zip(logits[1], logits[2]))
    assert all((lay.gu.packed is not None) == packed for lay in dec.layers)  # the path under test ran
    if packed:  # only the packed copies stay: the fused (unpacked) ones are let go
        assert all(p.w is None for p in dec.projections)


def test_prompt_groups_lay_each_prompts_rows_side_by_side_and_back():
    """Rows [1, 0, 1, 1] of 2 prompts (most rows: 3): prompt 0 gets slots 0-2 (row 1, then two fillers of
    row 0), prompt 1 slots 3-5 (rows 0, 2, 3); `to_groups` puts each slot's Q heads side by side."""
    from grpo.rollout.lean import PromptGroups

    g = PromptGroups(torch.tensor([1, 0, 1, 1]))
    assert (g.n, g.G, g.plain) == (2, 3, False)
    assert g.slot.tolist() == [3, 0, 4, 5] and g.row_at.tolist() == [1, 0, 0, 0, 2, 3]
    x = torch.randn(4, 2, 3, 5)  # [C, Hkv, Q, E]
    grouped = g.to_groups(x)  # [n, Hkv, G * Q, E]
    assert grouped.shape == (2, 2, 9, 5)
    assert torch.equal(grouped[1, :, 3:6], x[2]) and torch.equal(grouped[0, :, 0:3], x[1])
    assert torch.equal(g.to_rows(grouped), x)
    plain = PromptGroups(torch.arange(3).repeat_interleave(2))  # as after the prefill: a reshape
    assert plain.plain and torch.equal(plain.to_rows(plain.to_groups(x[:2].repeat(3, 1, 1, 1))),
                                       x[:2].repeat(3, 1, 1, 1))


@pytest.mark.parametrize("arch", ["llama_gqa", "qwen3"])
def test_lean_steps_after_uneven_compaction_equal_a_full_forward(arch):
    """3 prompts x 4 rows, one step, then rows dropped unevenly (3, 1 and 2 left of the prompts), a step,
    then every row of the second prompt dropped (its shared keys leave the cache), a step: each row's
    log-probs equal a full forward of its own prompt and tokens."""
    model = make_model(arch).eval()
    ps = prompts(3, seed=4)
    P = max(map(len, ps))
    ids = torch.tensor([[PAD] * (P - len(p)) + p for p in ps]).repeat_interleave(4, 0)  # [12, P]
    mask = (ids != PAD).long()  # the prompts hold no PAD token
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        dec = LeanDecoder.build(model, P + 4)
        dec.prefill(ids[::4], mask[::4], positions[::4], 4, repeats=4)
        rows, fed = torch.arange(12), torch.empty(12, 0, dtype=torch.long)
        for t, keep in enumerate([None, [0, 1, 2, 5, 10, 11], [0, 1, 4, 5]]):  # rows of the cache kept
            if keep is not None:
                dec.compact(torch.tensor(keep))
                rows, fed = rows[keep], fed[keep]
            tok = (rows * 5 + t) % (V - 3) + 3  # [C] a different token per row
            got = dec.step(tok, positions[rows, -1] + 1 + t).log_softmax(-1)  # [C, V]
            fed = torch.cat([fed, tok[:, None]], 1)
            full_mask = torch.cat([mask[rows], torch.ones_like(fed)], 1)
            want = model(input_ids=torch.cat([ids[rows], fed], 1), attention_mask=full_mask,
                         position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1].log_softmax(-1)
            assert (got - want).abs().max() < 1e-5, t
    assert dec.groups.n == 2 and len(dec.k_prompt[0]) == 2  # the second prompt's keys were let go
