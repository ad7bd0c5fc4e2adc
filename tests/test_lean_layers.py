"""grpo.models.lean_layers: the SiLU-and-multiply that recomputes the SiLU in backward and grouped-query SDPA
under a mask keep less for backward and change nothing else: forward values, log-probs and gradients equal
the plain transformers model's, and what autograd keeps shrinks by exactly the tensors named."""

import copy

import pytest
import torch
import torch.nn.functional as F

from grpo.models.lean_layers import GQA_ATTENTION, SiluMul, lean_layers
from grpo.models.logprobs import completion_logprobs
from grpo.rollout.engine import SamplingParams
from grpo.rollout.hf import HFEngine

V, PAD = 97, 0


def _llama(kv_heads: int = 2, act: str = "silu", layers: int = 2):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=kv_heads, head_dim=24, hidden_act=act, pad_token_id=PAD, tie_word_embeddings=True,
        initializer_range=0.1)).train()


def _batch():
    g = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(3, V, (2, 6), generator=g).repeat_interleave(3, 0)  # [6, 6]: 2 prompts x G=3
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[:3, :2] = 0  # left padding on the first prompt
    completion_ids = torch.randint(3, V, (6, 7), generator=g)  # [6, 7]
    completion_mask = torch.ones_like(completion_ids)
    completion_mask[1, 4:] = 0
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def test_silu_mul_equals_autograd_bit_for_bit_and_float64_gradcheck():
    g = torch.Generator().manual_seed(0)
    gate, up = (torch.randn(3, 5, 8, generator=g, requires_grad=True) for _ in range(2))
    grad = torch.randn(3, 5, 8, generator=g)
    plain = F.silu(gate) * up
    lean = SiluMul.apply(gate, up)
    assert torch.equal(plain, lean)
    assert all(torch.equal(a, b) for a, b in zip(torch.autograd.grad(plain, (gate, up), grad),
                                                 torch.autograd.grad(lean, (gate, up), grad)))
    gate64, up64 = (torch.randn(2, 4, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(SiluMul.apply, (gate64, up64))
    # a frozen input gets no gradient computed (LoRA: up_proj's output may not need one)
    _, g_up = SiluMul.backward(type("Ctx", (), {"saved_tensors": (gate.detach(), up.detach()),
                                                "needs_input_grad": (False, True)})(), grad)
    assert torch.equal(g_up, grad * F.silu(gate.detach()))


@pytest.mark.parametrize("kv_heads", [2, 4])
def test_logprobs_and_gradients_equal_the_plain_model(kv_heads):
    plain = _llama(kv_heads)
    lean = copy.deepcopy(plain)
    changed = lean_layers(lean)
    assert changed == {"mlps": 2, "gqa_attention": kv_heads < 4}
    assert lean.config._attn_implementation == (GQA_ATTENTION if kv_heads < 4 else "sdpa")
    results = []
    for model in (plain, lean):
        out = completion_logprobs(model, *_batch(), temperature=0.7, with_entropy=True)
        ((out.logp + 0.1 * out.entropy) * _batch()[3]).sum().backward()  # [6, 7] -> scalar
        results.append((out.logp.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (logp_plain, grads_plain), (logp_lean, grads_lean) = results
    torch.testing.assert_close(logp_lean, logp_plain, atol=1e-5, rtol=0)
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_lean[name], grad, atol=1e-5, rtol=0, msg=name)


def test_greedy_generation_is_unchanged_in_both_engines():
    plain = _llama(2)
    lean = copy.deepcopy(plain)
    lean_layers(lean)
    prompts = [[5, 9, 13], [7, 3, 22, 40, 41], [11]]
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    for fast in (True, False):
        a = HFEngine(plain, 2, PAD, lean=fast).generate(prompts, params)
        b = HFEngine(lean, 2, PAD, lean=fast).generate(prompts, params)
        assert torch.equal(a.completion_ids, b.completion_ids)


def test_autograd_keeps_one_mlp_tensor_and_the_key_value_copies_less(saved_bytes):
    plain = _llama(2, layers=1)
    lean = copy.deepcopy(plain)
    lean_layers(lean)
    # 6 rows x 13 positions (6 prompt + 7 completion tokens), fp32, per layer:
    # silu(gate): 6 x 13 x 96 intermediate; K and V repeated from 2 to 4 heads:
    # 2 x 6 x 2 extra heads x 13 x 24
    saved = {name: saved_bytes(m, lambda m=m: completion_logprobs(m, *_batch(), share_prompts=False))
             for name, m in (("plain", plain), ("lean", lean))}
    assert saved["plain"] - saved["lean"] == 4 * (6 * 13 * 96 + 2 * 6 * 2 * 13 * 24)


def test_other_blocks_are_left_alone():
    gelu = _llama(4, act="gelu")
    assert lean_layers(gelu) == {"mlps": 0, "gqa_attention": False}
    assert "forward" not in vars(gelu.model.layers[0].mlp)
    eager = _llama(2)
    eager.config._attn_implementation = "eager"
    assert lean_layers(eager) == {"mlps": 2, "gqa_attention": False}
    assert lean_layers(eager)["mlps"] == 0  # applied once


def _lora_model(dropout: float = 0.0):
    """The 2-layer Llama under LoRA r=4 on every projection (grpo's add_lora: the fused LoRA forward), B
    nonzero so that the adapters change the function."""
    from grpo.config import LoraConfig
    from grpo.models.loading import add_lora

    model = add_lora(_llama(), LoraConfig(r=4, alpha=8, dropout=dropout))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return model


def _stock(model) -> int:
    """Remove the fused LoRA forwards (peft's own again); how many there were."""
    n = 0
    for m in model.modules():
        if getattr(vars(m).get("forward"), "__name__", "") == "_lean_lora_forward":
            del m.forward
            n += 1
    return n


def _logp_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    lp = completion_logprobs(model, *batch, 0.7, with_entropy=True)
    (lp.logp * batch[3]).sum().backward()
    return lp.logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_fused_lora_forward_equals_pefts_log_probs_and_adapter_gradients():
    model, batch = _lora_model(), _batch()
    lean = _logp_and_grads(model, batch)
    stock_model = copy.deepcopy(model)
    assert _stock(stock_model) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    stock = _logp_and_grads(stock_model, batch)
    torch.testing.assert_close(lean[0], stock[0], rtol=0, atol=1e-5)
    assert lean[1].keys() == stock[1].keys() and all("lora_" in n for n in lean[1])
    for name, g in stock[1].items():
        tol = 1e-5 * float(g.abs().max()) + 1e-12
        torch.testing.assert_close(lean[1][name], g, rtol=0, atol=tol, msg=name)


def test_fused_lora_forward_leaves_disabled_merged_and_dropout_adapters_to_peft():
    """The reference (adapters disabled), merged adapters and LoRA dropout in training go through peft's own
    forward: the same values bit for bit as the model without the fused forward, dropout's draws too."""
    batch = _batch()
    for dropout in (0.0, 0.3):
        model = _lora_model(dropout)
        stock = copy.deepcopy(model)
        _stock(stock)
        ids = torch.cat([batch[0], batch[2]], 1)
        if dropout:
            torch.manual_seed(5)
            a = model(input_ids=ids).logits
            torch.manual_seed(5)
            assert torch.equal(a, stock(input_ids=ids).logits)
        with model.disable_adapter(), stock.disable_adapter():
            assert torch.equal(model(input_ids=ids).logits, stock(input_ids=ids).logits)
    model.eval()
    stock.eval()
    model.merge_adapter()
    stock.merge_adapter()
    assert torch.equal(model(input_ids=ids).logits, stock(input_ids=ids).logits)
