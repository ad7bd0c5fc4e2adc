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
