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


@pytest.mark.parametrize("call, args", [("prefill", ([[5]], SamplingParams())), ("step", ()),
                                        ("ended_turns", ()), ("append", (0, [3])), ("finish", ())])
def test_the_engine_refuses_the_stepwise_calls_of_multi_turn_rollouts(call, args):
    """vLLM samples whole completions: each stepwise call of the RolloutEngine protocol is a UserError that
    names the engine to use instead (the calls need no vLLM, so an engine object without one stands in)."""
    engine = VLLMEngine.__new__(VLLMEngine)
    with pytest.raises(UserError, match=rf"rollout.engine=vllm .* no stepwise {call}\(\).*rollout.engine=hf"):
        getattr(engine, call)(*args)


@pytest.mark.skipif(HAS_VLLM and torch.cuda.is_available(), reason="vLLM and a GPU are present")
def test_building_the_engine_without_vllm_or_a_gpu_is_a_clear_error():
    with pytest.raises(UserError, match="vLLM"):
        VLLMEngine("unused", eos_token_id=2, pad_token_id=0)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_VLLM, reason="needs vLLM")
def test_vllm_engine_samples_groups_and_follows_weight_updates(tmp_path):
    from transformers import AutoModelForCausalLM

    from grpo.models.tiny import TinyConfig, build_tiny, build_tokenizer
    from grpo.models.logprobs import completion_logprobs

    path = build_tiny(tmp_path / "tiny", TinyConfig())
    tok = build_tokenizer()
    engine = VLLMEngine(str(path), tok.eos_token_id, tok.pad_token_id, dtype="float32",
                        gpu_memory_utilization=0.2)
    prompts = tok(["Mia has 3 pens. How many?\n", "Tom has 5 cards, finds 2. How many?\n"])["input_ids"]
    r = engine.generate(prompts, SamplingParams(max_new_tokens=16, temperature=1.0, G=4),
                        torch.Generator().manual_seed(0))
    assert r.completion_ids.shape[0] == 8 and r.prompt_ids.shape[0] == 8
    model = AutoModelForCausalLM.from_pretrained(path).cuda()
    with torch.no_grad():
        full = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                   r.completion_mask).logp
    mask = r.completion_mask.bool()
    assert (full[mask] - r.logp[mask]).abs().max() < 1e-3  # vLLM's kernels, fp32
    with torch.no_grad():
        model.lm_head.weight.zero_()  # uniform next-token distribution: every log-prob is -log V
    engine.sync_weights(model)
    r = engine.generate(prompts, SamplingParams(max_new_tokens=4, temperature=1.0, G=2),
                        torch.Generator().manual_seed(0))
    expect = -torch.log(torch.tensor(float(model.config.vocab_size)))
    assert torch.allclose(r.logp[r.completion_mask.bool()].cpu(), expect, atol=1e-4)


SMALL = ["train.steps=2", "train.prompts_per_step=2", "grpo.G=4", "train.micro_batch_size=8",
         "sampling.max_new_tokens=8",
         "data.num_heldout=4", "data.num_train=64", "train.eval_every=0", "train.sample_every=1",
         "train.threads=1",
         "model.tiny_hidden_size=32", "model.tiny_num_layers=1", "optim.lr=0.01", "optim.warmup_steps=0"]


class _FakeVLLM:
    """Stands in for VLLMEngine where there is no vLLM: grpo's own sampler over a separate copy of the model,
    loaded from the directory the trainer gives and changed only by `sync_weights` (as vLLM's copy is)."""

    syncs = 0

    def __init__(self, model_path, eos_token_id, pad_token_id, **kwargs):
        from transformers import AutoModelForCausalLM

        from grpo.rollout.hf import HFEngine

        self.copy = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        self.engine, self.kwargs = HFEngine(self.copy, eos_token_id, pad_token_id), kwargs

    def generate(self, *args, **kwargs):
        return self.engine.generate(*args, **kwargs)

    def sync_weights(self, model):
        from grpo.models.loading import hf_weights

        _FakeVLLM.syncs += 1
        self.copy.load_state_dict(hf_weights(model))


@pytest.mark.slow
def test_rollout_engine_vllm_is_built_from_the_config_and_kept_in_step(tmp_path, reward_file, monkeypatch):
    """rollout.engine=vllm: the trainer builds the engine from the starting weights' directory and syncs its
    copy after every update and on resume. With a stand-in that samples from its own copy, one step, a
    checkpoint and a resume give the samples and weights of the default engine's straight 2-step run
    (a missed sync would sample step 2 from stale weights)."""
    from safetensors.torch import load_file

    import grpo.train.run as setup
    from grpo.config import TrainConfig, load_config
    from grpo.train.grpo import train

    def run(out, *extra):
        rewards = f"rewards.functions=[{{fn: '{reward_file}:digit_share'}}]"
        return train(load_config(TrainConfig, None, [*SMALL, rewards, f"train.output_dir={out}", *extra]),
                     progress=False)

    run(tmp_path / "hf")
    monkeypatch.setattr(setup, "VLLMEngine", _FakeVLLM)  # the name the run's setup calls
    # correction=none: rollout.correction=auto would weight the surrogate by pi_old / pi_sampler for vLLM, and
    # the stand-in's lean sampler agrees with the trainer only to float rounding, so the bits would differ
    vllm = ("rollout.engine=vllm", "rollout.gpu_memory_utilization=0.5", "rollout.correction=none")
    run(tmp_path / "vllm", *vllm, "train.steps=1", "train.save_every=1")
    assert _FakeVLLM.syncs == 1
    run(tmp_path / "vllm", *vllm, "train.steps=2", "train.resume=true")
    assert _FakeVLLM.syncs == 3  # on resume, then after step 2
    a, b = (
        load_file(tmp_path / "hf" / "final" / "model.safetensors"),
        load_file(tmp_path / "vllm" / "final" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    samples = [(tmp_path / d / "samples.jsonl").read_text() for d in ("hf", "vllm")]
    assert samples[0] == samples[1] and len(samples[0].splitlines()) == 4
    assert "engine: vllm" in (tmp_path / "vllm" / "config.yaml").read_text()


def test_a_failed_weight_sync_is_an_error_not_stale_sampling():
    """sync_weights raises a UserError naming the failure, whether vLLM's model refuses the weights or
    takes none of them (names that match nothing)."""
    from grpo.models.tiny import TinyConfig, build_model, build_tokenizer

    model = build_model(build_tokenizer(), TinyConfig(hidden_size=32, num_layers=1))

    def engine(load_weights):
        e = VLLMEngine.__new__(VLLMEngine)
        runner = SimpleNamespace(model=SimpleNamespace(load_weights=load_weights))
        e.llm = SimpleNamespace(llm_engine=SimpleNamespace(model_executor=SimpleNamespace(
            driver_worker=SimpleNamespace(model_runner=runner))))
        return e

    def refuse(weights):
        raise RuntimeError("shape mismatch for lm_head.weight")

    with pytest.raises(UserError, match="copying the policy's weights into vLLM failed .*shape mismatch"):
        engine(refuse).sync_weights(model)
    with pytest.raises(UserError, match="took none of the policy's weights"):
        engine(lambda weights: set()).sync_weights(model)
    taken = {}
    engine(lambda weights: taken.update(weights) or set(taken)).sync_weights(model)
    assert taken.keys() == model.state_dict().keys()


def test_hf_weights_of_a_lora_model_are_the_base_names_with_the_adapters_folded_in():
    peft = pytest.importorskip("peft")
    from grpo.models.tiny import TinyConfig, build_model, build_tokenizer
    from grpo.models.loading import hf_weights

    base = build_model(build_tokenizer(), TinyConfig(hidden_size=32, num_layers=1))
    names = set(base.state_dict())
    model = peft.get_peft_model(base,
                                peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    weights = hf_weights(model)
    assert set(weights) == names
    q = base.model.layers[0].self_attn.q_proj
    torch.testing.assert_close(weights["model.layers.0.self_attn.q_proj.weight"],
                               q.base_layer.weight + q.get_delta_weight("default"))
    assert torch.equal(weights["model.layers.0.self_attn.k_proj.weight"],
                       base.model.layers[0].self_attn.k_proj.weight)


@pytest.mark.skipif(HAS_VLLM and torch.cuda.is_available(), reason="vLLM and a GPU are present")
def test_rollout_engine_vllm_without_vllm_or_a_gpu_stops_before_writing(tmp_path, capsys, monkeypatch):
    from grpo.commands.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "-q", *SMALL, "rollout.engine=vllm", f"train.output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("grpo: error: the vLLM rollout engine needs")
    assert not out.exists()
