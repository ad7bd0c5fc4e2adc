"""train.gradient_checkpointing: the same log-probs, gradients and training, far fewer saved activations."""

import warnings

import pytest
import torch
from safetensors.torch import load_file

from grpo.config import TrainConfig, load_config
from grpo.errors import UserError
from grpo.models.loading import enable_checkpointing
from grpo.train.grpo import train
from grpo.models.logprobs import completion_logprobs, recomputes_layers


def _model(layers=3):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=64, hidden_size=48, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, attn_implementation="sdpa")).train()


def _batch():
    """Two prompts (one left-padded) x 4 completions (one ends early): the shared-prompt layout."""
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, 64, (2, 7), generator=g).repeat_interleave(4, 0)
    prompt_mask = torch.ones_like(prompts)
    prompt_mask[4:, :3] = 0
    completions = torch.randint(3, 64, (8, 9), generator=g)
    completion_mask = torch.ones_like(completions)
    completion_mask[2, 4:] = 0
    return prompts, prompt_mask, completions, completion_mask


def _logp_and_grads(model, **kw):
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # transformers warns when checkpointing throws a KV cache away
        warnings.simplefilter("error")
        batch = _batch()
        logp = completion_logprobs(model, *batch, **kw).logp * batch[3]  # the real tokens (pads: packing's 0)
    (logp * torch.linspace(-1, 1, logp.numel()).view_as(logp)).sum().backward()
    return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _saved_bytes(model) -> int:
    """Bytes autograd keeps for the backward pass during one training forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        completion_logprobs(model, *_batch())
    return total


def test_checkpointed_forward_gives_the_same_logprobs_and_gradients():
    model = _model()
    plain_logp, plain_grads = _logp_and_grads(model)
    enable_checkpointing(model)
    assert recomputes_layers(model)
    logp, grads = _logp_and_grads(model)
    torch.testing.assert_close(logp, plain_logp, rtol=0, atol=1e-5)
    for name, g in grads.items():
        torch.testing.assert_close(g, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_checkpointing_keeps_a_fraction_of_the_activations():
    model = _model(layers=4)
    plain = _saved_bytes(model)
    enable_checkpointing(model)
    checkpointed = _saved_bytes(model)
    # 4 layers' inputs (48 floats per token) instead of every intermediate (q, k, v, attention, gate/up)
    assert checkpointed < plain / 4, (checkpointed, plain)


def test_checkpointing_is_off_without_gradients_or_in_eval_mode():
    """Generation and the reference forward keep the KV cache (and so the shared-prompt forward)."""
    model = _model()
    enable_checkpointing(model)
    with torch.no_grad():
        assert not recomputes_layers(model)
    assert not recomputes_layers(model.eval())
    mask = _batch()[3]
    with torch.no_grad():
        torch.testing.assert_close(completion_logprobs(model, *_batch(), share_prompts=True).logp * mask,
                                   completion_logprobs(model, *_batch(), share_prompts=False).logp * mask)


def test_checkpointing_keeps_the_shared_prompt_forward(monkeypatch, caplog):
    """Under checkpointing each distinct prompt still runs once (two forwards: prompts, then completions
    against their keys and values), and transformers is never made to drop the cache."""
    import grpo.models.logprobs as lp

    model = _model()
    enable_checkpointing(model)
    calls = []
    forward = lp._forward
    monkeypatch.setattr(lp, "_forward", lambda m,
                        **kw: calls.append(kw["input_ids"].shape) or forward(m, **kw))
    from transformers.utils import logging as hf_logging

    monkeypatch.setattr(hf_logging._get_library_root_logger(), "propagate", True)  # to caplog
    with caplog.at_level("WARNING"):
        _logp_and_grads(model)
    assert calls == [torch.Size([2, 7]), torch.Size([8, 8])]  # 2 distinct prompts, then 8 x (9 - 1) tokens
    assert "incompatible" not in caplog.text


def test_without_a_cache_that_checkpointed_layers_may_keep_prompts_are_not_shared(monkeypatch):
    import grpo.models.logprobs as lp

    model = _model()
    plain_logp, plain_grads = _logp_and_grads(model)
    enable_checkpointing(model)
    monkeypatch.setattr(lp, "_prefix_cache_supported", lambda m: False)  # an older transformers
    with pytest.raises(ValueError, match="_can_checkpoint_with_cache"):
        completion_logprobs(model, *_batch(), share_prompts=True)
    logp, grads = _logp_and_grads(model)  # one plain forward over prompt + completion
    torch.testing.assert_close(logp, plain_logp, rtol=0, atol=1e-5)
    for name, g in grads.items():
        torch.testing.assert_close(g, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_model_without_checkpointing_support_is_a_user_error():
    with pytest.raises(UserError, match="train.gradient_checkpointing: Linear does not support"):
        enable_checkpointing(torch.nn.Linear(2, 2))


def test_lora_adapters_get_gradients_under_checkpointing():
    pytest.importorskip("peft")
    from grpo.config import LoraConfig
    from grpo.models.loading import add_lora

    model = add_lora(_model(), LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    enable_checkpointing(model)
    assert recomputes_layers(model)
    _, grads = _logp_and_grads(model)
    lora = {n: g for n, g in grads.items() if "lora_B" in n}
    assert lora and all(g.abs().sum() > 0 for g in lora.values())


SMALL = ["train.steps=2", "train.prompts_per_step=2", "grpo.G=4", "train.micro_batch_size=4",
         "sampling.max_new_tokens=12", "data.num_heldout=2", "data.num_train=32", "train.eval_every=0",
         "train.sample_every=0", "optim.lr=1e-2", "optim.warmup_steps=0", "grpo.beta=0.04"]


@pytest.mark.slow
def test_training_with_checkpointing_takes_the_same_steps(tmp_path, reward_file):
    rewards = f"rewards.functions=[{{fn: '{reward_file}:digit_share'}}]"
    finals, steps = [], []
    for on in (False, True):
        out = tmp_path / f"gc-{on}"
        cfg = load_config(TrainConfig, None, SMALL + [rewards, f"train.output_dir={out}",
                                                     f"train.gradient_checkpointing={str(on).lower()}"])
        res = train(cfg, progress=False)
        steps.append([h for h in res.history if "reward/mean" in h])
        finals.append(load_file(out / "final" / "model.safetensors"))
    plain, checkpointed = steps
    assert [h["step"] for h in checkpointed] == [1, 2]
    for key in ("loss", "grad_norm", "kl", "entropy", "reward/mean"):  # same rollouts, same update
        expected = pytest.approx([h[key] for h in plain], rel=1e-4, abs=1e-7)
        assert [h[key] for h in checkpointed] == expected, key
    before = load_file(tmp_path / "gc-False" / "tiny-init" / "model.safetensors")
    assert any(not torch.equal(before[k], finals[0][k]) for k in before)  # the steps did move the weights
    # Adam divides by the gradient's own scale, so float noise in a near-zero gradient can move a weight by
    # up to 2 lr; a different update would move most of them by that much
    diffs = torch.cat([(finals[1][k] - finals[0][k]).abs().flatten() for k in finals[0]])
    assert float(diffs.max()) <= 2 * 1e-2
    assert float((diffs > 1e-5).float().mean()) < 0.01, float((diffs > 1e-5).float().mean())

