"""Log-probs of rollouts: running each distinct prompt once computes the same function, gradients included."""

import pytest
import torch

from grpo.rollout.engine import SamplingParams
from grpo.rollout.hf import HFEngine
from grpo.models.logprobs import completion_logprobs, prompt_groups, selective_log_softmax
from test_rollout import PAD, make_model, prompts


def test_prompt_groups_finds_runs_of_identical_prompts_ignoring_pads():
    ids = torch.tensor([[0, 5, 6], [9, 5, 6], [5, 5, 6], [5, 5, 6], [0, 5, 6]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1], [0, 1, 1]])
    first, inverse = prompt_groups(ids, mask)
    # rows 0-1 are the same prompt (pad columns differ only), 2-3 another, 4 the first again (not consecutive)
    assert first.tolist() == [0, 2, 4] and inverse.tolist() == [0, 0, 1, 1, 2]


def _loss_and_grads(model, r, rows, share, temperature):
    model.zero_grad()
    lp = completion_logprobs(model, r.prompt_ids[rows], r.prompt_mask[rows], r.completion_ids[rows],
                             r.completion_mask[rows], temperature, with_entropy=True, share_prompts=share)
    weights = torch.linspace(-1, 1, lp.logp.numel()).view_as(lp.logp)  # an arbitrary per-token weighting
    (lp.logp * weights * r.completion_mask[rows]).sum().backward()
    return lp.logp.detach(), lp.entropy, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ["llama", "llama_gqa", "qwen2"])
@pytest.mark.parametrize("rows", [slice(0, 16), slice(2, 11)],
                         ids=["whole groups", "groups cut by a micro-batch"])
def test_shared_prompt_forward_equals_the_plain_forward_with_gradients(arch, rows):
    model = make_model(arch)
    r = HFEngine(model, 2, PAD).generate(prompts(4), SamplingParams(max_new_tokens=12, G=4),
                                         torch.Generator().manual_seed(0))
    mask = r.completion_mask[rows].bool()
    plain = _loss_and_grads(model, r, rows, False, 0.8)
    shared = _loss_and_grads(model, r, rows, True, 0.8)
    assert (plain[0] - shared[0])[mask].abs().max() < 1e-5
    assert (plain[1] - shared[1])[mask].abs().max() < 1e-5
    for name, g in plain[2].items():
        assert (g - shared[2][name]).norm() <= 1e-5 * g.norm() + 1e-8, name


def test_shared_prompts_is_the_default_for_grouped_rows_and_handles_one_token():
    model = make_model("llama")
    r = HFEngine(model, 2, PAD).generate(prompts(2), SamplingParams(max_new_tokens=1, G=3),
                                         torch.Generator().manual_seed(0))
    assert r.completion_ids.shape == (6, 1)
    with torch.no_grad():
        auto = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                   r.completion_mask).logp
        plain = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                    share_prompts=False).logp
    assert (auto - plain).abs().max() < 1e-5 and (auto - r.logp).abs().max() < 1e-5


def test_selective_log_softmax_in_chunks_equals_the_float64_reference():
    torch.manual_seed(0)
    logits, index = torch.randn(5, 7, 11), torch.randint(0, 11, (5, 7))
    want = logits.double().log_softmax(-1).gather(-1, index[..., None]).squeeze(-1)
    p = logits.double().softmax(-1)
    entropy = -(p * p.log()).sum(-1)
    for chunk in (1, 2, 5, None):
        got = selective_log_softmax(logits, index, chunk=chunk, with_entropy=True)
        assert (got.logp.double() - want).abs().max() < 1e-6
        assert (got.entropy.double() - entropy).abs().max() < 1e-6


def _head_grads(model, r, chunked, share, temperature=0.8):
    model.zero_grad()
    lp = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                             temperature,
                             with_entropy=True, share_prompts=share, chunked_head=chunked)
    weights = torch.linspace(-1, 1, lp.logp.numel()).view_as(lp.logp)
    (lp.logp * weights * r.completion_mask).sum().backward()
    return lp.logp.detach(), lp.entropy, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("share", [False, True], ids=["plain forward", "shared prompts"])
@pytest.mark.parametrize("tied", [False, True], ids=["own head", "tied embeddings"])
def test_chunked_head_equals_full_logits_with_gradients(share, tied, monkeypatch):
    """The head applied after the forward, a few positions at a time and recomputed in backward: the
    log-probs, entropies and every gradient (the head's, or the tied embedding's) of the full-logits path."""
    import grpo.models.logprobs as lp_module

    model = make_model("llama")
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    r = HFEngine(model, 2, PAD).generate(prompts(4), SamplingParams(max_new_tokens=12, G=4),
                                         torch.Generator().manual_seed(0))
    full = _head_grads(model, r, chunked=False, share=share)
    V = model.lm_head.weight.shape[0]
    monkeypatch.setattr(lp_module, "LOGSOFTMAX_CHUNK_ELEMENTS", 7 * V)  # chunks of 7 positions: many, uneven
    chunked = _head_grads(model, r, chunked=True, share=share)
    mask = r.completion_mask.bool()
    assert (full[0] - chunked[0])[mask].abs().max() < 1e-5
    assert (full[1] - chunked[1])[mask].abs().max() < 1e-5
    for name, g in full[2].items():
        assert (g - chunked[2][name]).norm() <= 1e-5 * g.norm() + 1e-8, name
    assert full[2]["model.embed_tokens.weight" if tied else "lm_head.weight"].norm() > 0


def test_chunked_head_never_builds_full_vocabulary_logits(monkeypatch):
    """No tensor of [rows, positions, vocabulary] is made in the forward or the backward: the largest
    float32 tensor the head's path creates is one chunk's logits."""
    import grpo.models.logprobs as lp_module

    model = make_model("llama")
    r = HFEngine(model, 2, PAD).generate(prompts(4), SamplingParams(max_new_tokens=12, G=4),
                                         torch.Generator().manual_seed(0))
    B, T = r.completion_ids.shape
    V = model.lm_head.weight.shape[0]
    monkeypatch.setattr(lp_module, "LOGSOFTMAX_CHUNK_ELEMENTS", 8 * V)
    seen = []
    real_logits = lp_module._logits

    def spy(h, w, b, temperature, out=None):
        z = real_logits(h, w, b, temperature, out)
        if w.data_ptr() == model.lm_head.weight.data_ptr():
            seen.append(z.numel())
            assert out is None or out.numel() <= 8 * V  # the chunk's buffer, no larger
        return z

    monkeypatch.setattr(lp_module, "_logits", spy)
    lp = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
    (lp.logp * r.completion_mask).sum().backward()
    assert seen and max(seen) <= 8 * V < B * T * V
    # every chunk of the real tokens' positions ran twice: forward, then recomputed in backward
    assert len(seen) >= 2 * (int(r.completion_mask.sum()) // 8)


@pytest.mark.parametrize("share", [False, True], ids=["plain forward", "shared prompts"])
def test_entropy_with_gradient_chunked_equals_full_logits(share, monkeypatch):
    """The entropy bonus needs the entropy's gradient: chunked and recomputed in backward (entropy_grad), it
    equals the full-logits path's, and without entropy_grad the entropy carries no graph."""
    import grpo.models.logprobs as lp_module

    model = make_model("llama")
    r = HFEngine(model, 2, PAD).generate(prompts(4), SamplingParams(max_new_tokens=12, G=4),
                                         torch.Generator().manual_seed(0))

    def grads(chunked):
        model.zero_grad()
        lp = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask, 0.8,
                                 with_entropy=True, share_prompts=share, chunked_head=chunked,
                                 entropy_grad=True)
        w = torch.linspace(-1, 1, lp.entropy.numel()).view_as(lp.entropy)
        ((lp.entropy * w + 0.3 * lp.logp) * r.completion_mask).sum().backward()
        return lp.entropy.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    full = grads(chunked=False)
    monkeypatch.setattr(lp_module, "LOGSOFTMAX_CHUNK_ELEMENTS", 7 * model.lm_head.weight.shape[0])
    chunked = grads(chunked=True)
    mask = r.completion_mask.bool()
    assert (full[0] - chunked[0])[mask].abs().max() < 1e-5
    for name, g in full[1].items():
        assert (g - chunked[1][name]).norm() <= 1e-5 * g.norm() + 1e-8, name
    assert full[1]["lm_head.weight"].norm() > 0
    for chunked_head in (False, True):
        lp = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                 with_entropy=True, chunked_head=chunked_head)
        assert lp.logp.requires_grad and not lp.entropy.requires_grad


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_the_chunked_heads_hand_written_backward_equals_float64_autograd(temperature):
    """grpo.models.logprobs's backward (dz = g (onehot - p) - g_H p (log p + H), recomputed per chunk, in
    float32) against autograd of the plain formula in float64: log-probs and entropy, with respect to the
    hidden states, weight and bias, over uneven chunks."""
    from grpo.models.logprobs import ChunkedHeadLogProbs

    g = torch.Generator().manual_seed(0)
    h, w, b = (torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
               for shape in ((7, 5), (11, 5), (11,)))
    ix = torch.randint(0, 11, (7,), generator=g)
    g_logp, g_ent = (
        torch.randn(7, generator=g, dtype=torch.float64),
        torch.randn(7, generator=g, dtype=torch.float64),
    )

    def grads(logp, entropy):
        return torch.autograd.grad((logp * g_logp).sum() + (entropy * g_ent).sum(), (h, w, b))

    z = (h @ w.T + b) / temperature
    want_logp, want_ent = (
        z.log_softmax(-1).gather(-1, ix[:, None]).squeeze(-1),
        -(z.softmax(-1) * z.log_softmax(-1)).sum(-1),
    )
    want = grads(want_logp, want_ent)
    logp, ent = ChunkedHeadLogProbs.apply(h, w, b, ix, temperature, 3, True)
    torch.testing.assert_close(logp.double(), want_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent.double(), want_ent, rtol=1e-5, atol=1e-5)
    for got, expected in zip(grads(logp.double(), ent.double()), want):
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)
