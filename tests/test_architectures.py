"""Any Hugging Face causal LM, exactly: tiny random-weight models of seven architectures built from their
configs (offline), each through grpo's training forward and its sampler, against transformers' own forward.

For each: the fast paths it gets after the load check (`grpo.models.fast_paths.prepare_fast_paths`, what
`load_policy` runs), grpo's completion log-probs and one GRPO step's gradients against log_softmax of the
stock model's logits (float32), and the sampler's per-token log-probs against the trainer's. Gemma2 and
Phi3 are not on grpo's list: they take the stock path whole, with one warning line. FalconH1's MLP (gate
and down multipliers) is tested at module level: the attribute names of a Llama MLP, another function.
"""

import copy
import warnings

import pytest
import torch

from grpo.algorithm.losses import policy_loss
from grpo.models.lean_layers import GQA_ATTENTION
from grpo.models.fast_paths import FAST_PATHS, FastPathWarning, enabled_paths, prepare_fast_paths
from grpo.models.logprobs import completion_logprobs, position_ids_from_mask
from grpo.rollout.engine import SamplingParams
from grpo.rollout.hf import HFEngine
from grpo.rollout.lean import LeanDecoder

V = 96
SIZES = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
ALL = set(FAST_PATHS)
ARCHITECTURES = {  # config class, extra fields, the fast paths it gets
    "llama": ("LlamaConfig", {"head_dim": 8}, ALL),
    "mistral": ("MistralConfig", {"head_dim": 8}, ALL),
    "qwen2": ("Qwen2Config", {}, ALL),
    "qwen3": ("Qwen3Config", {"head_dim": 8}, ALL),
    "olmo2": ("Olmo2Config", {}, ALL - {"lean_decoder"}),
    "gemma2": ("Gemma2Config", {"head_dim": 8}, set()),
    "phi3": ("Phi3Config", {}, set()),
}


def build(arch: str):
    """A 2-layer random model of `arch` (seed 0), in train mode, fast paths not yet applied."""
    import transformers

    config_cls, extra, _ = ARCHITECTURES[arch]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**SIZES, **extra, initializer_range=0.2)
    return transformers.AutoModelForCausalLM.from_config(config).train()


def batch():
    """2 prompts x G=2: prompt_ids/mask [4, 6] (the first prompt left-padded by 2), completions [4, 5]."""
    g = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(3, V, (2, 6), generator=g).repeat_interleave(2, 0)  # [4, 6]
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[:2, :2] = 0
    completion_ids = torch.randint(3, V, (4, 5), generator=g)  # [4, 5]
    completion_mask = torch.ones_like(completion_ids)
    completion_mask[1, 3:] = 0
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def stock_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    """log pi(completion token) from transformers' own forward and full logits, nothing of grpo's. [4, 5]"""
    ids = torch.cat([prompt_ids, completion_ids], 1)  # [4, 11]
    mask = torch.cat([prompt_mask, completion_mask], 1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    P = prompt_ids.shape[1]
    logp = logits[:, P - 1:-1].float().log_softmax(-1)  # [4, 5, V]
    return logp.gather(-1, completion_ids[..., None]).squeeze(-1)


def prepared(arch: str):
    """(stock model, the same weights with grpo's fast paths as load_policy applies them, its warnings)."""
    stock = build(arch)
    fast = copy.deepcopy(stock)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare_fast_paths(fast)
    return stock, fast, [w for w in caught if issubclass(w.category, FastPathWarning)]


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def models(request):
    return (request.param, *prepared(request.param))


def test_each_architecture_gets_its_proven_fast_paths_and_no_other(models):
    arch, _, fast, caught = models
    expected = ARCHITECTURES[arch][2]
    assert enabled_paths(fast) == expected
    # applied as listed: both layers' MLPs through SiluMul, the grouped-query attention function (2 kv heads)
    lean_mlps = [m for m in fast.modules() if "forward" in vars(m)]
    assert len(lean_mlps) == (2 if "lean_mlp" in expected else 0)
    stock_attention = "eager" if arch == "gemma2" else "sdpa"  # transformers picks eager for Gemma2
    assert fast.config._attn_implementation == (GQA_ATTENTION if "gqa_attention" in expected
                                                else stock_attention)
    if expected == ALL:
        assert caught == []
    else:  # one line, naming the class and every path skipped
        (w,) = caught
        message = str(w.message)
        assert message.startswith(f"grpo: {type(fast).__name__} ({arch}) runs transformers' stock forward: ")
        assert "\n" not in message and all(n in message for n in ("lean decoder",) + (
            () if expected else ("lean MLP", "GQA attention", "chunked LM head", "shared prompts")))


def test_logprobs_and_one_steps_gradients_equal_the_stock_forward(models):
    """grpo's forward (its fast paths on) against log_softmax of the stock model's logits: log-probs to 1e-5,
    the gradients of a GRPO loss (advantages +-1, ratio 1) to 1e-5 of each gradient's largest entry."""
    arch, stock, fast, _ = models
    b = batch()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    results = []
    for model, logp_fn in ((stock, stock_logprobs), (fast, lambda m, *x: completion_logprobs(m, *x).logp)):
        model.zero_grad(set_to_none=True)
        logp = logp_fn(model, *b)
        loss, _ = policy_loss(logp, logp.detach(), adv, b[3])
        loss.backward()
        results.append((logp.detach() * b[3], {n: p.grad.clone() for n, p in model.named_parameters()}))
    (lp_stock, g_stock), (lp_fast, g_fast) = results
    assert (lp_fast - lp_stock).abs().max() < 1e-5
    assert g_stock.keys() == g_fast.keys()
    for name, g in g_stock.items():
        assert g.abs().max() > 0, name
        assert (g_fast[name] - g).abs().max() <= 1e-5 * g.abs().max(), name


def test_the_samplers_logprobs_equal_the_trainers(models):
    """HFEngine (the lean decoder where the model has it, else the model's own forward with its cache):
    per-token log-probs of the sampled tokens equal the trainer's forward over them to 1e-5."""
    arch, _, fast, _ = models
    engine = HFEngine(fast, 2, 0)
    assert isinstance(engine.make_stepper(16), LeanDecoder) == ("lean_decoder" in ARCHITECTURES[arch][2])
    r = engine.generate([[5, 9, 13, 7], [11, 4]],
                        SamplingParams(max_new_tokens=6, temperature=1.0, top_p=1.0, G=2),
                        torch.Generator().manual_seed(0))
    assert r.completion_mask.sum() >= 12
    with torch.no_grad():
        lp = completion_logprobs(fast, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask).logp
    assert ((lp - r.logp) * r.completion_mask).abs().max() < 1e-5


def test_falcon_h1_mlp_falls_back_with_a_warning():
    """The issue's reproduction: FalconH1's MLP has gate_proj/up_proj/down_proj and a SiLU, and scales the
    gate's input by mlp_multipliers[0] and the output by [1]. Under a parent with `.config` nothing is
    rewritten, the output is unchanged, and one warning names the architecture."""
    from transformers import FalconH1Config
    from transformers.models.falcon_h1.modeling_falcon_h1 import FalconH1MLP

    from grpo.models.lean_layers import lean_layers

    config = FalconH1Config(hidden_size=16, intermediate_size=32, mlp_multipliers=[0.5, 3.0])
    torch.manual_seed(0)

    class Parent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config, self.mlp = config, FalconH1MLP(config)

    parent = Parent()
    x = torch.randn(2, 3, 16)
    before = parent.mlp(x)
    with pytest.warns(FastPathWarning) as caught:
        assert prepare_fast_paths(parent).enabled == frozenset()
    assert len(caught) == 1 and str(caught[0].message).startswith(
        "grpo: Parent (falcon_h1) runs " "transformers' stock"
    )
    assert lean_layers(parent) == {"mlps": 0, "gqa_attention": False}
    assert "forward" not in vars(parent.mlp) and torch.equal(parent.mlp(x), before)
    # what the old attribute-matched rewrite computed, multipliers dropped: up to
    # 0.149 away (the figure)
    dropped = parent.mlp.down_proj(torch.nn.functional.silu(parent.mlp.gate_proj(x)) * parent.mlp.up_proj(x))
    assert (dropped - before).abs().max().item() == pytest.approx(0.1489, abs=1e-4)


def test_a_fast_path_that_fails_its_check_is_turned_off_with_one_warning(monkeypatch):
    """A transformers whose LlamaMLP scales its output by 1.5 (as a release could change a forward): the
    load check catches the lean MLP, turns it off alone, and the model equals its stock forward."""
    from transformers.models.llama import modeling_llama

    def scaled(self, x):
        return 1.5 * self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", scaled)
    stock, fast, caught = prepared("llama")
    assert enabled_paths(fast) == ALL - {"lean_mlp"}
    (w,) = caught
    assert str(w.message).startswith("grpo: LlamaForCausalLM (llama) runs transformers' stock forward: lean "
                                     "MLP skipped (failed its check against the stock forward: max |d logp|")
    assert all("forward" not in vars(m) for m in fast.modules())
    b = batch()
    with torch.no_grad():
        assert (completion_logprobs(fast, *b).logp - stock_logprobs(stock, *b)).mul(b[3]).abs().max() < 1e-5


def test_a_missing_transformers_name_turns_its_path_off(monkeypatch):
    from grpo.models import hf_internals

    monkeypatch.setitem(hf_internals.INTERNALS, "transformers.masking_utils.no_such_mask", "gqa_attention")
    _, fast, caught = prepared("llama")
    assert enabled_paths(fast) == ALL - {"gqa_attention"}
    assert fast.config._attn_implementation == "sdpa"
    assert "GQA attention skipped (this transformers has no transformers.masking_utils.no_such_mask)" \
        in str(caught[0].message)


def test_a_lean_decoder_that_fails_its_check_is_replaced_by_the_stock_forward(monkeypatch):
    """A lean decoder whose logits are 1% off: its first build for the model checks it against a full
    forward, turns the path off with one warning, and the engine samples through the model's own forward."""
    from grpo.rollout.hf import HFStepper

    _, fast, _ = prepared("qwen2")
    forward = LeanDecoder._forward
    monkeypatch.setattr(LeanDecoder, "_forward", lambda self, *a: forward(self, *a) * 1.01)
    with pytest.warns(FastPathWarning,
                      match=r"^grpo: Qwen2ForCausalLM \(qwen2\) runs transformers' stock forward: "
                      r"lean decoder skipped \(failed its check against the stock forward: max \|d logp\|"):
        assert isinstance(HFEngine(fast, 2, 0).make_stepper(16), HFStepper)
    assert enabled_paths(fast) == ALL - {"lean_decoder"}
    assert isinstance(HFEngine(fast, 2, 0).make_stepper(16), HFStepper)  # checked once, off from then on
