"""The vLLM engine: its output layout everywhere; vLLM itself only where vLLM and a GPU are present."""

import importlib.util
import sys
from types import SimpleNamespace

import pytest
import torch

from grpo.errors import UserError
from grpo.rollout.engine import SamplingParams
from grpo.rollout.vllm_engine import VLLMEngine, rollout_from_outputs

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _completion(ids, logps, reason):
    return SimpleNamespace(token_ids=ids, finish_reason=reason,
                           logprobs=[{t: SimpleNamespace(logprob=lp)} for t, lp in zip(ids, logps)])


def test_importing_the_engine_module_does_not_import_vllm():
    assert "vllm" not in sys.modules or HAS_VLLM


def test_rollout_from_outputs_has_the_hf_engine_layout():
    prompts = [[5, 6, 7], [8]]
    outputs = [SimpleNamespace(outputs=[_completion([10, 2], [-0.5, -0.25], "stop"),
                                        _completion([11, 12, 13], [-1.0, -2.0, -3.0], "length")]),
               SimpleNamespace(outputs=[_completion([2], [-0.125], "stop"),
                                        _completion([14, 15], [-0.75, -0.5], "stop")])]
    r = rollout_from_outputs(prompts, outputs, G=2, pad_id=0)
    assert r.prompt_ids.tolist() == [[5, 6, 7], [5, 6, 7], [0, 0, 8], [0, 0, 8]]
    assert r.prompt_mask.tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 1], [0, 0, 1]]
    assert r.completion_ids.tolist() == [[10, 2, 0], [11, 12, 13], [2, 0, 0], [14, 15, 0]]
    assert r.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert r.truncated.tolist() == [False, True, False, False]
    assert r.logp.tolist() == [[-0.5, -0.25, 0.0], [-1.0, -2.0, -3.0], [-0.125, 0.0, 0.0], [-0.75, -0.5, 0.0]]
    with pytest.raises(ValueError, match="expected 2 x 3 completions"):
        rollout_from_outputs(prompts, outputs, G=3, pad_id=0)


@pytest.mark.skipif(HAS_VLLM and torch.cuda.is_available(), reason="vLLM and a GPU are present")
def test_building_the_engine_without_vllm_or_a_gpu_is_a_clear_error():
    with pytest.raises(UserError, match="vLLM"):
        VLLMEngine("unused", eos_token_id=2, pad_token_id=0)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_VLLM, reason="needs vLLM")
def test_vllm_engine_samples_groups_and_follows_weight_updates(tmp_path):
    from transformers import AutoModelForCausalLM

    from grpo.models.tiny import TinyConfig, build_tiny, build_tokenizer
    from grpo.train.logprobs import completion_logprobs

    path = build_tiny(tmp_path / "tiny", TinyConfig())
    tok = build_tokenizer()
    engine = VLLMEngine(str(path), tok.eos_token_id, tok.pad_token_id, dtype="float32", gpu_memory_utilization=0.2)
    prompts = tok(["Mia has 3 pens. How many?\n", "Tom has 5 cards, finds 2. How many?\n"])["input_ids"]
    r = engine.generate(prompts, SamplingParams(max_new_tokens=16, temperature=1.0, G=4), torch.Generator().manual_seed(0))
    assert r.completion_ids.shape[0] == 8 and r.prompt_ids.shape[0] == 8
    model = AutoModelForCausalLM.from_pretrained(path).cuda()
    with torch.no_grad():
        full = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask).logp
    mask = r.completion_mask.bool()
    assert (full[mask] - r.logp[mask]).abs().max() < 1e-3  # vLLM's kernels, fp32
    with torch.no_grad():
        model.lm_head.weight.zero_()  # uniform next-token distribution: every log-prob is -log V
    engine.sync_weights(model)
    r = engine.generate(prompts, SamplingParams(max_new_tokens=4, temperature=1.0, G=2), torch.Generator().manual_seed(0))
    expect = -torch.log(torch.tensor(float(model.config.vocab_size)))
    assert torch.allclose(r.logp[r.completion_mask.bool()].cpu(), expect, atol=1e-4)
