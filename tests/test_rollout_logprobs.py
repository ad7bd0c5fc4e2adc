"""Log-probs of rollouts: running each distinct prompt once computes the same function, gradients included."""

import pytest
import torch

from grpo.rollout.engine import SamplingParams
from grpo.rollout.hf import HFEngine
from grpo.train.logprobs import completion_logprobs, prompt_groups, selective_log_softmax
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
@pytest.mark.parametrize("rows", [slice(0, 16), slice(2, 11)], ids=["whole groups", "groups cut by a micro-batch"])
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
        auto = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask).logp
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
