"""The packed completion forward (`grpo.models.packing`): only real completion tokens go through the model,
with the padded shared-prompt forward's log-probs, entropy and gradients."""

import torch

import grpo.models.logprobs as lp_module
from grpo.models.fast_paths import prepare_fast_paths
from grpo.models.logprobs import completion_logprobs
from grpo.models.packing import packing_applies


def _model(**config):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attn_implementation="sdpa", **config)).train()
    prepare_fast_paths(model)
    return model


def _batch(lengths=(7, 3, 1, 5, 6, 2)):
    """2 prompts (the first left-padded by 2) x 3 completions of the given lengths, right-padded to 7."""
    g = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(0, 300, (2, 5), generator=g).repeat_interleave(3, 0)  # [6, 5]
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[:3, :2] = 0
    completion_ids = torch.randint(0, 300, (6, 7), generator=g)
    completion_mask = (torch.arange(7)[None] < torch.tensor(lengths)[:, None]).long()
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def _run(model, batch, pack):
    model.zero_grad(set_to_none=True)
    out = completion_logprobs(model, *batch, temperature=0.7, with_entropy=True, entropy_grad=True, pack=pack)
    mask = batch[3]
    (((out.logp + 0.1 * out.entropy) * mask).sum() * torch.tensor(1.3)).backward()
    return out.logp.detach(), out.entropy.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                      if p.grad is not None}


def test_packed_forward_equals_the_padded_one_and_sees_only_real_tokens(monkeypatch):
    model, batch = _model(), _batch()
    mask = batch[3]
    padded = _run(model, batch, pack=False)
    shapes = []
    forward = lp_module._forward
    monkeypatch.setattr(lp_module, "_forward", lambda m, **kw: shapes.append(tuple(kw["input_ids"].shape))
                        or forward(m, **kw))
    packed = _run(model, batch, pack=None)  # the default packs here
    # the prompts once, then one row of the inputs that predict a later real token: sum(length - 1)
    assert shapes == [(2, 5), (1, 6 + 2 + 0 + 4 + 5 + 1)]
    torch.testing.assert_close(packed[0], padded[0] * mask, rtol=0, atol=1e-5)  # 0 at pads
    torch.testing.assert_close(packed[1], padded[1] * mask, rtol=0, atol=1e-5)
    assert packed[0][mask == 0].eq(0).all() and packed[1][mask == 0].eq(0).all()
    for name, g in padded[2].items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(packed[2][name], g, rtol=0, atol=1e-5 * float(g.abs().max()), msg=name)


def test_no_grad_packed_forward_and_single_token_completions():
    """The reference forward's case (no gradients), and a batch whose completions are 1 token long (no
    completion token is an input: only the prompts run)."""
    model = _model()
    for lengths in ((7, 3, 1, 5, 6, 2), (1, 1, 1, 1, 1, 1)):
        batch = _batch(lengths)
        with torch.no_grad():
            a = completion_logprobs(model, *batch, pack=False).logp * batch[3]
            b = completion_logprobs(model, *batch, pack=True).logp
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_packing_applies_only_where_it_computes_the_same_function():
    model = _model()
    *_, mask = _batch()
    assert packing_applies(model, mask, 12)
    holed = mask.clone()
    holed[0, 3] = 0  # a hole inside a completion: not right-padded
    assert not packing_applies(model, holed, 12)
    assert not packing_applies(_model(sliding_window=8), mask, 12)  # the window would cut the sequence
    assert packing_applies(_model(sliding_window=12), mask, 12)
    eager = _model()
    eager.config._attn_implementation = "eager"  # takes an additive float mask, not packing's boolean one
    assert not packing_applies(eager, mask, 12)


def test_the_models_attention_implementation_is_restored():
    model = _model()
    name = model.config._attn_implementation
    completion_logprobs(model, *_batch(), pack=True)
    assert model.config._attn_implementation == name


def test_pack_true_where_packing_does_not_apply_is_an_error():
    import pytest

    model, batch = _model(), _batch()
    holed = batch[3].clone()
    holed[0, 3] = 0
    with pytest.raises(ValueError, match="pack=True"):
        completion_logprobs(model, *batch[:3], holed, pack=True)
    with pytest.raises(ValueError, match="pack=True"):
        completion_logprobs(model, *batch, share_prompts=False, pack=True)


def test_packed_forward_without_the_chunked_head():
    """The head inside the forward (LoRA on the head, FSDP shards): packed logits, the same log-probs."""
    model, batch = _model(), _batch()
    with torch.no_grad():
        a = completion_logprobs(model, *batch, 0.7, with_entropy=True, chunked_head=False, pack=False)
        b = completion_logprobs(model, *batch, 0.7, with_entropy=True, chunked_head=False, pack=True)
    torch.testing.assert_close(b.logp, a.logp * batch[3], rtol=0, atol=1e-5)
    torch.testing.assert_close(b.entropy, a.entropy * batch[3], rtol=0, atol=1e-5)


def test_packed_forward_under_lora_adapters(monkeypatch):
    """Through peft's wrapper (the attention implementation is the base model's config's): packed, with the
    padded forward's log-probs and adapter gradients."""
    from grpo.config import LoraConfig
    from grpo.models.loading import add_lora

    model, batch = add_lora(_model(), LoraConfig(r=4)), _batch()
    padded = _run(model, batch, pack=False)
    calls = []
    import grpo.models.packing as packing

    attention = packing.packed_attention
    monkeypatch.setattr(packing, "packed_attention", lambda *a, **k: calls.append(1) or attention(*a, **k))
    packed = _run(model, batch, pack=None)
    assert len(calls) == 2  # both layers' attention ran packed
    torch.testing.assert_close(packed[0], padded[0] * batch[3], rtol=0, atol=1e-5)
    lora = [n for n, p in model.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n for n in lora)
    for name in lora:
        g = padded[2][name]
        torch.testing.assert_close(packed[2][name], g, rtol=0, atol=1e-5 * float(g.abs().max()) + 1e-12,
                                   msg=name)
