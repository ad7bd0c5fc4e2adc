"""The sampler/trainer mismatch in the loop (grpo.train.update): metrics, the correction, bf16 sampling,
dropout off for RL, and the entropy options, on CPU.

A stand-in engine samples from perturbed weights, as a bf16 or vLLM sampler would give slightly different
probabilities: the loop's weights and metrics must match a float64 computation from both sets of weights.
"""

import copy
from contextlib import nullcontext

import pytest
import torch

from grpo.algorithm import policy_loss
from grpo.config import TrainConfig, load_config
from grpo.models.loading import disable_dropout
from grpo.rollout.engine import SamplingParams
from grpo.rollout.hf import HFEngine
from grpo.train.grpo import train
from grpo.models.logprobs import completion_logprobs
from grpo.train.run import make_engine
from grpo.train.update import correction_mode, logprobs_no_grad, sampler_correction, update_policy
from test_rollout import PAD, make_model, prompts

G = 4


def _cfg(*overrides: str) -> TrainConfig:
    return load_config(TrainConfig, None,
                       [f"grpo.G={G}", "train.prompts_per_step=4", "train.micro_batch_size=8",
                                           "grpo.beta=0", "optim.grad_clip=0", "sampling.max_new_tokens=10",
                                           *overrides])


def _perturbed(model, scale: float = 0.03):
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=g))
    return other


def _logp64(model, r) -> torch.Tensor:
    """log pi(completion tokens) from one plain float64 forward over prompt + completion. [N, T]"""
    P = r.prompt_ids.shape[1]
    ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
    mask = torch.cat([r.prompt_mask, r.completion_mask], 1)
    with torch.no_grad():
        logits = copy.deepcopy(model).double()(input_ids=ids, attention_mask=mask,
                                               position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    return logits[:, P - 1:-1].log_softmax(-1).gather(-1, r.completion_ids[..., None]).squeeze(-1)


@pytest.fixture(scope="module")
def stand_in():
    """(trainer model, rollout sampled from perturbed weights, float64 log-probs of trainer and sampler)."""
    model = make_model("llama")
    sampler = _perturbed(model)
    r = HFEngine(sampler, 2, PAD).generate(prompts(4), SamplingParams(max_new_tokens=10, G=G),
                                           torch.Generator().manual_seed(0))
    return model, r, _logp64(model, r), _logp64(sampler, r)


@pytest.mark.parametrize("mode,level", [("tis", "token"), ("mask", "token"), ("tis", "sequence")])
def test_weights_and_metrics_match_a_float64_reference(stand_in, mode, level):
    model, r, trainer64, sampler64 = stand_in
    mask = r.completion_mask.bool()
    assert (r.logp.double() - sampler64)[mask].abs().max() < 1e-5  # the engine's log-probs are its weights'
    cfg = _cfg(f"rollout.correction={mode}", f"rollout.correction_level={level}",
               "rollout.correction_low=0.9",
               "rollout.correction_high=1.1")
    old = logprobs_no_grad(model, r, cfg, nullcontext).logp
    weights, metrics = sampler_correction(old, r.logp, r.completion_mask, cfg)
    d = (trainer64 - sampler64).masked_fill(~mask, 0.0)
    if level == "sequence":
        d = (d.sum(1, keepdim=True) / mask.sum(1, keepdim=True)).expand_as(d)
    w = d.exp()
    want = w.clamp(max=1.1) if mode == "tis" else torch.where((w >= 0.9) & (w <= 1.1), w, 0.0)
    torch.testing.assert_close(weights.double()[mask], want[mask], rtol=1e-4, atol=1e-5)
    d_tok = (trainer64 - sampler64)[mask]
    torch.testing.assert_close(metrics["mismatch/kl"].double(), (d_tok.exp() - d_tok - 1).mean(), rtol=1e-3,
                               atol=1e-7)
    torch.testing.assert_close(metrics["mismatch/abs_logp_diff_max"].double(), d_tok.abs().max(), rtol=1e-4,
                               atol=1e-5)
    assert metrics["mismatch/kl"] > 1e-4  # the perturbation is real: the test can tell a wrong weight
    assert 0 < metrics["correction/weight_mean"] and (mode == "tis" or metrics["correction/dropped_frac"] > 0)


def test_the_update_step_is_the_weighted_float64_step(stand_in):
    """update_policy with correction=tis moves the weights as one SGD step on the policy loss whose
    surrogate is weighted by min(pi_old / pi_sampler, high), all computed in float64."""
    model, r, trainer64, sampler64 = stand_in
    cfg = _cfg("rollout.correction=tis", "rollout.correction_high=1.05")
    adv = torch.linspace(-1.5, 1.5, r.completion_ids.shape[0])
    policy = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    result = update_policy(policy, torch.optim.SGD(policy.parameters(), lr=1.0), r, adv, None, None, cfg,
                           nullcontext)
    assert result.applied and result.stats["correction/weight_mean"] < 1.0

    ref = copy.deepcopy(model).double()
    lp = completion_logprobs(ref, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask).logp
    w = (trainer64 - sampler64).exp().clamp(max=1.05).masked_fill(r.completion_mask == 0, 0.0)
    loss, _ = policy_loss(lp, lp.detach(), adv.double(), r.completion_mask, token_weights=w)
    loss.backward()
    for n, p in ref.named_parameters():
        moved = (policy.state_dict()[n] - before[n]).double()
        assert (moved + p.grad).norm() <= 1e-4 * p.grad.norm() + 1e-9, n
    unweighted = update_policy(copy.deepcopy(model), torch.optim.SGD(model.parameters(), lr=0.0), r, adv,
                               None,
                               None, _cfg("rollout.correction=none"), nullcontext)
    assert "correction/weight_mean" not in unweighted.stats and "mismatch/kl" in unweighted.stats
    assert unweighted.stats["pg_loss"] != pytest.approx(result.stats["pg_loss"], abs=1e-6)


_TOK = type("Tok", (), {"pad_token_id": PAD, "eos_token_id": 2})()


def test_auto_corrects_only_a_sampler_in_another_precision():
    assert correction_mode(_cfg()) == "none"
    assert correction_mode(_cfg("rollout.dtype=float32")) == "none"
    for differs in (["model.dtype=bfloat16"], ["rollout.engine=vllm"], ["rollout.dtype=bfloat16"],
                    ["model.dtype=bfloat16", "rollout.dtype=float32"],
                    ["model.dtype=bfloat16", "rollout.dtype=bfloat16"]):  # bf16 copies vs bf16 autocast
        assert correction_mode(_cfg(*differs)) == "tis", differs
    assert correction_mode(_cfg("model.dtype=bfloat16", "rollout.correction=none")) == "none"
    assert correction_mode(_cfg("rollout.dtype=bfloat16", "rollout.correction=mask")) == "mask"


@pytest.mark.parametrize("model_dtype,rollout_dtype,sampler", [
    ("float32", "auto", None), ("bfloat16", "auto", torch.bfloat16), ("float32", "bfloat16", torch.bfloat16),
    ("bfloat16", "float32", None)])
def test_the_sampler_precision_is_rollout_dtype_else_the_trainers(model_dtype, rollout_dtype, sampler,
                                                                   monkeypatch):
    """The built-in engine gets the sampler's dtype (None: the fp32 weights themselves); vLLM gets it as
    its own dtype."""
    import grpo.train.run as setup

    cfg = _cfg(f"model.dtype={model_dtype}", f"rollout.dtype={rollout_dtype}")
    assert make_engine(cfg, make_model("llama"), _TOK, None, None).dtype == sampler
    built = {}
    monkeypatch.setattr(setup, "VLLMEngine", lambda *a, **kw: built.update(kw))
    cfg.rollout.engine = "vllm"
    make_engine(cfg, make_model("llama"), _TOK, "unused", type("Dist", (), {"fsdp": False, "rank": 0})())
    assert built["dtype"] == ("float32" if sampler is None else "bfloat16")


def test_bf16_sampling_under_an_fp32_trainer_is_corrected_and_measured():
    """rollout.dtype=bfloat16 with model.dtype=float32: the engine samples from bf16 copies of the weights
    (its tokens and log-probs are bit for bit those of the engine over a model whose parameters are those
    copies), its log-probs are off the fp32 trainer's by more than rounding (the fp32 engine is within
    1e-5) but by little, and the update logs the gap and weights it with TIS."""
    cfg = _cfg("rollout.dtype=bfloat16")
    model = make_model("llama")
    engine = make_engine(cfg, model, _TOK, None, None)
    params = SamplingParams(max_new_tokens=10, G=G)
    r = engine.generate(prompts(4), params, torch.Generator().manual_seed(0))
    copies = copy.deepcopy(model)
    for p in copies.parameters():
        p.data = p.data.to(torch.bfloat16)  # buffers (RoPE's inv_freq) stay fp32, as the engine keeps them
    r16 = HFEngine(copies, 2, PAD).generate(prompts(4), params, torch.Generator().manual_seed(0))
    assert torch.equal(r.completion_ids, r16.completion_ids) and torch.equal(r.logp, r16.logp)

    mask = r.completion_mask.bool()
    d = (logprobs_no_grad(model, r, cfg, nullcontext).logp - r.logp)[mask].abs()  # trainer - sampler
    assert 1e-3 < d.max() < 0.1 and d.mean() < 0.02  # tiny model: mean 0.007, max 0.03
    r32 = make_engine(_cfg(), model, _TOK, None, None).generate(prompts(4), params,
                                                                torch.Generator().manual_seed(0))
    assert (logprobs_no_grad(model, r32, cfg, nullcontext).logp - r32.logp)[r32.completion_mask.bool()
                                                                           ].abs().max() < 1e-5

    adv = torch.linspace(-1.5, 1.5, r.completion_ids.shape[0])
    policy = copy.deepcopy(model)
    stats = update_policy(policy, torch.optim.SGD(policy.parameters(), lr=0.0), r, adv, None, None, cfg,
                          nullcontext).stats
    assert stats["mismatch/abs_logp_diff"] == pytest.approx(float(d.mean()), rel=1e-4)
    assert stats["mismatch/abs_logp_diff_max"] == pytest.approx(float(d.max()), rel=1e-4)
    assert 0 < stats["mismatch/kl"] < 1e-3 and 0.95 < stats["correction/weight_mean"] < 1.05


def test_disable_dropout_makes_train_mode_forwards_repeatable():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, attention_dropout=0.3)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_config(config, attn_implementation="eager"),
                           LoraConfig(r=4, lora_dropout=0.5, target_modules=["q_proj", "v_proj"])).train()
    ids = torch.randint(3, 64, (2, 12))
    forward = lambda: model(input_ids=ids).logits  # noqa: E731
    assert not torch.equal(forward(), forward())  # dropout on: two train-mode forwards differ
    assert disable_dropout(model) == 4 + 2  # 4 LoRA dropouts, 2 layers' attention_dropout
    assert torch.equal(forward(), forward())
    assert disable_dropout(model) == 0


@pytest.mark.slow
def test_the_loop_logs_mismatch_and_applies_the_options(tmp_path):
    """fp32: the built-in engine and the trainer agree to float rounding and nothing is corrected; bf16 (the
    trainer's and the sampler's, or the sampler's alone under an fp32 trainer): the engine samples from
    bf16 copies, the mismatch shows and auto corrects; forking tokens keep the top fraction; dropout is off
    in the policy unless model.keep_dropout."""
    small = ["train.steps=2", "data.num_heldout=4", "data.num_train=64", "train.eval_every=0",
             "rewards.functions=[{fn: arithmetic_format}]"]

    def run(name, *extra):
        cfg = _cfg(*small, f"train.output_dir={tmp_path / name}", *extra)
        return train(cfg, progress=False).history[:-1]  # the steps' records

    fp32 = run("fp32")
    for rec in fp32:
        assert rec["mismatch/kl"] < 1e-9 and rec["mismatch/abs_logp_diff_max"] < 1e-4
        assert "correction/weight_mean" not in rec
    for name, dtype in (("bf16", "model.dtype=bfloat16"), ("bf16-sampler", "rollout.dtype=bfloat16")):
        for rec in run(name, dtype):
            assert rec["mismatch/abs_logp_diff"] > 1e-4 and rec["mismatch/abs_logp_diff_max"] > 1e-3
            assert 0.9 < rec["correction/weight_mean"] < 1.1
    fork = run("fork", "grpo.top_entropy_quantile=0.2", "grpo.entropy_coef=0.01")
    for rec in fork:
        assert 0.2 <= rec["entropy/kept_frac"] < 0.3 and rec["entropy/threshold"] > 0
        assert rec["ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # pi_old from the no-grad pass, same weights
        assert rec["loss"] < 0  # the entropy bonus on an untrained model: -0.01 * ~7 per token


@pytest.mark.slow
@pytest.mark.parametrize("keep", [False, True])
def test_dropout_is_off_for_rl_unless_kept(tmp_path, reward_file, keep):
    """With LoRA dropout 0.5 and pi_old from a separate no-grad pass (top_entropy_quantile < 1), the update's
    ratio is exactly 1 only when dropout is off (step 2: LoRA's B starts at 0, so
    dropout acts once it moved)."""
    cfg = _cfg("train.steps=2", "data.num_heldout=2", "data.num_train=64", "train.eval_every=0",
               "optim.lr=0.05",
               "optim.warmup_steps=0", f"rewards.functions=[{{fn: '{reward_file}:digit_share'}}]",
               "model.lora={dropout: 0.5}", "grpo.top_entropy_quantile=0.5",
               f"model.keep_dropout={str(keep).lower()}", f"train.output_dir={tmp_path / 'run'}")
    rec = train(cfg, progress=False).history[1]
    if keep:
        assert abs(rec["ratio_mean"] - 1.0) > 1e-3
    else:
        assert rec["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
