"""`grpo plan`: parameter counts against real models, activation formulas against the tensors autograd
actually saves, hand-worked component sizes, and the total against real GRPO steps measured on CPU."""

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from grpo.errors import UserError
from grpo.plan import (
    Architecture,
    PlanInput,
    architecture_from_config,
    format_plan,
    layer_activation_bytes,
    plan_memory,
    tiny_architecture,
)
from grpo.commands.plan import build_plan_parser

LLAMA2_7B = Architecture(num_layers=32, hidden_size=4096, intermediate_size=11008, num_heads=32,
                         num_kv_heads=32,
                         head_dim=128, vocab_size=32000)


def _tiny_model(arch="llama", hidden=96, layers=2):
    from grpo.models.tiny import TinyConfig, build_model, build_tokenizer

    return build_model(build_tokenizer(),
                       TinyConfig(hidden_size=hidden, num_layers=layers, architecture=arch))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_param_count_matches_the_built_model_and_its_config(arch, tmp_path):
    model = _tiny_model(arch)
    assert tiny_architecture(96, 2, arch).num_params() == sum(p.numel() for p in model.parameters())
    model.config.save_pretrained(tmp_path)
    assert architecture_from_config(tmp_path) == tiny_architecture(96, 2, arch)


def test_param_count_of_llama2_7b_and_its_lora():
    # per layer 4 * 4096^2 (attention) + 3 * 4096 * 11008 (MLP) + 2 * 4096 (norms) = 202,383,360;
    # x 32 layers + 2 * 32000 * 4096 (embedding, head) + 4096 (final norm)
    assert LLAMA2_7B.num_params() == 202_383_360 * 32 + 262_144_000 + 4096 == 6_738_415_616
    # r=16 on all 7 linears: 16 * (2*8192 + 2*8192 + 3*(4096 + 11008)) = 1,249,280 per layer
    assert LLAMA2_7B.lora_params(16, "all-linear") == 1_249_280 * 32 == 39_976_960


def _forward(model, batch, seq, ctx):
    """One forward with left padding, under `ctx` (autocast or nothing)."""
    ids = torch.randint(0, 100, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[: batch // 2, :3] = 0
    with ctx:
        model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)


@pytest.mark.parametrize("precision, attention, checkpointing", [
    ("fp32", "sdpa", False), ("fp32", "sdpa-gqa", False), ("fp32", "eager", False),
    ("bf16-autocast", "sdpa-gqa", False), ("bf16", "sdpa-gqa", False), ("fp32", "sdpa-gqa", True),
])
def test_layer_activations_equal_what_autograd_saves(precision, attention, checkpointing, saved_bytes):
    """One more layer adds exactly the formula's bytes (GQA with head_dim*heads != hidden, to catch mixups),
    for the model as grpo loads it (`lean_layers`: the SiLU recomputed; on CPU grouped-query SDPA, or with
    attention "sdpa" the keys and values repeated as transformers does elsewhere)."""
    import contextlib

    from transformers import AutoModelForCausalLM, LlamaConfig

    from grpo.models.lean_layers import lean_layers

    a = Architecture(num_layers=1, hidden_size=64, intermediate_size=160, num_heads=4, num_kv_heads=2,
                     head_dim=24,
                     vocab_size=128)
    B, s = 4, 20
    ctx = torch.autocast("cpu",
                         dtype=torch.bfloat16) if precision == "bf16-autocast" else contextlib.nullcontext()
    saved = []
    for layers in (1, 2):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(LlamaConfig(
            vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2, head_dim=24,
            attn_implementation="eager" if attention == "eager" else "sdpa")).train()
        assert lean_layers(model)["gqa_attention"] == (attention != "eager")
        if attention == "sdpa":
            model.config._attn_implementation = "sdpa"
        if precision == "bf16":
            model = model.to(torch.bfloat16)
        if checkpointing:
            enable = getattr(model, "activation_checkpointing_enable",
                             None) or model.gradient_checkpointing_enable
            enable()
        saved.append(saved_bytes(model, lambda: _forward(model, B, s, ctx)))
    if checkpointing:  # only the layer's input stays (fp32)
        expected = B * s * a.hidden_size * 4
    else:
        expected = layer_activation_bytes(a, B, s, s, precision, attention)
    if precision == "bf16-autocast":  # autocast also keeps the bf16 copy of each linear weight
        expected += 2 * (replace(a, num_layers=1, vocab_size=0).matmul_params())
    assert saved[1] - saved[0] == expected


def test_shared_prompt_forward_saves_what_the_formula_says(saved_bytes):
    """grpo's training forward: each distinct prompt once, then the completions against its K/V copies."""
    import inspect

    from transformers import AutoModelForCausalLM, LlamaConfig

    from grpo.plan import _update_forwards, packed_completion_bytes
    from grpo.models.lean_layers import lean_layers
    from grpo.models.logprobs import completion_logprobs

    if "share_prompts" not in inspect.signature(completion_logprobs).parameters:
        pytest.skip("this completion_logprobs has no shared-prompt forward")
    a = Architecture(num_layers=1, hidden_size=64, intermediate_size=160, num_heads=4, num_kv_heads=2,
                     head_dim=24,
                     vocab_size=128)
    prompts, G, P, T = 2, 4, 10, 12
    prompt_ids = torch.randint(5, 100, (prompts, P)).repeat_interleave(G, 0)  # [B, P], groups contiguous
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[:G, :3] = 0
    completion_ids = torch.randint(5, 100, (prompts * G, T))
    full = torch.ones_like(completion_ids)  # the plan's case: every completion T tokens long
    short = full.clone()
    short[:3, -4:] = 0
    saved = {}
    for layers in (1, 2):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(LlamaConfig(
            vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2, head_dim=24)).train()
        lean_layers(model)  # as grpo loads it
        for share in (True, False):
            for name, mask in (("full", full), ("short", short)):
                saved[layers, share, name] = saved_bytes(model, lambda: completion_logprobs(
                    model, prompt_ids, prompt_mask, completion_ids, mask, with_entropy=True,
                    share_prompts=share))
    per_layer = {k[1:]: saved[(2, *k[1:])] - saved[k] for k in saved if k[0] == 1}
    for share in (True, False):
        inp = PlanInput(arch=a, G=G, prompts_per_step=prompts, micro_batch_size=prompts * G, prompt_length=P,
                        completion_length=T, shared_prompts=share, attention="sdpa-gqa")
        # shared: 2 prompts x 10 tokens, then 8 rows x 11 tokens against 21 keys; plain: 8 rows x 22 tokens
        forwards, _ = _update_forwards(inp)
        assert forwards == ([(2, 10, 10), (8, 11, 21)] if share else [(8, 22, 22)])
        planned = sum(layer_activation_bytes(a, *f, "fp32", "sdpa-gqa") for f in forwards)
        # shared prompts run the completions packed: one more q-sized copy per token (8 x 11 x 96 x 4 B)
        assert packed_completion_bytes(inp, forwards) == (8 * 11 * 96 * 4 if share else 0)
        assert per_layer[share, "full"] == planned + packed_completion_bytes(inp, forwards)
        # shorter completions: the plain forward keeps the same (pads included), the packed one less
        assert (per_layer[share, "short"] < per_layer[share, "full"]) == share


def test_components_hand_worked_for_llama2_7b():
    inp = PlanInput(arch=LLAMA2_7B, precision="bf16", G=64, prompts_per_step=16, micro_batch_size=4,
                    prompt_length=512, completion_length=1024, beta=0.04, shared_prompts=False)
    c = {x.name: x.bytes for x in plan_memory(inp).components}
    n = 6_738_415_616
    assert (c["policy weights"], c["fp32 master weights"], c["gradients"], c["optimizer state"]) == (
        2 * n,
        4 * n,
        2 * n,
        8 * n,
    )
    assert c["reference model"] == 2 * n and "value model weights" not in c and "reward model" not in c
    # KV cache: 2 (K and V) * 32 layers * 32 kv heads * 128 * (512 + 1024) tokens * 1024 completions * 2 B
    # 768 GiB: generate in chunks
    assert c["KV cache"] == 2 * 32 * 32 * 128 * 1536 * 1024 * 2 == 824_633_720_832
    assert c["logits"] == 3 * 4 * 1025 * 32000 * 4
    # per token (bf16 weights): 4 * (2h + heads + 2) + 2 * (4h + 2q + 3I); per key 2q * 2 B; the sdpa mask 2 B
    per_token = 4 * (2 * 4096 + 32 + 2) + 2 * (4 * 4096 + 2 * 4096 + 3 * 11008) + 2 * 4096 * 2
    layer = 4 * 1536 * per_token + 4 * 1536 * 1536 * 2
    # + final norm, head input
    assert c["activations"] == 32 * layer + 4 * 1536 * 2 * 4096 * 2 + 4 * 1025 * 4096 * 2


def test_kv_cache_is_what_the_sampler_holds():
    """The lean decoder (the tiny Llama's sampler) keeps each prompt's keys and values once and each row's
    generated ones; the generic path a copy of the prompt per row. Both against the tensors they allocate."""
    from grpo.models.logprobs import position_ids_from_mask
    from grpo.rollout.hf import HFStepper
    from grpo.rollout.lean import LeanDecoder

    model = _tiny_model().eval()  # hidden 96 (4 heads of 24, no GQA), 2 layers, fp32
    n, G, P, T = 2, 3, 5, 4
    inp = PlanInput(arch=tiny_architecture(96, 2), G=G, prompts_per_step=n, prompt_length=P,
                    completion_length=T)
    assert inp.samples_on_lean_decoder
    kv = lambda i: next(c.bytes for c in plan_memory(i).components if c.name == "KV cache")  # noqa: E731
    # 2 (K, V) x 2 layers x 96 (kv heads x head_dim) x 4 B = 1536 B a token;
    # lean: 5 tokens x 2 prompts + 4 x 6 rows = 34 tokens; generic: (5 + 4) x 6 rows = 54 tokens
    assert kv(inp) == 1536 * 34 == 52_224
    assert kv(replace(inp, lean_decoder=False)) == 1536 * 54 == 82_944
    ids = torch.randint(3, 90, (n, P))
    mask = torch.ones_like(ids)
    positions = position_ids_from_mask(mask)
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    with torch.no_grad():
        lean = LeanDecoder.build(model, P + T)
        lean.prefill(ids, mask, positions, T, G)
        assert nbytes(lean.k_prompt + lean.v_prompt + lean.k_gen + lean.v_gen) == 52_224
        generic = HFStepper(model, None)
        generic.prefill(ids, mask, positions, T, G)
        for t in range(T - 1):  # T tokens sampled, the last never fed back
            generic.step(torch.full((n * G,), 7), positions[:, -1].repeat_interleave(G) + 1 + t)
        layers = generic.cache.layers  # transformers' DynamicCache: one (keys, values) per layer
        # (P + T - 1) x 6 rows: the plan's (P + T) x N, less the last token it counts per row
        held = nbytes([x for layer in layers for x in (layer.keys, layer.values)])
        assert held == 1536 * 8 * 6 == 82_944 - 1536 * 6


SAMPLER_CONFIGS = {  # name: (config class, extra fields)
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 8}),
    "olmo2": ("Olmo2Config", {}),  # post-norm layers: no lean decoder
    "phi3": ("Phi3Config", {}),  # not on grpo's list
    "llama_dynamic_rope": ("LlamaConfig", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}),
    "mistral_window_8": ("MistralConfig", {"sliding_window": 8}),
}


@pytest.mark.parametrize("name", SAMPLER_CONFIGS)
def test_the_planner_decides_the_sampler_as_the_engine_does(name, tmp_path):
    """`grpo plan --model DIR` plans the lean decoder's cache exactly where `LeanDecoder.build` gives one:
    by the class AutoModelForCausalLM builds, the RoPE type and the sliding window against P + T."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from grpo.models.proven import CAUSAL_LM_CLASSES, PROVEN
    from grpo.rollout.lean import LeanDecoder

    assert set(CAUSAL_LM_CLASSES.values()) == set(PROVEN)
    assert all(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[t] == c for t, c in CAUSAL_LM_CLASSES.items())
    config_cls, extra = SAMPLER_CONFIGS[name]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, **extra)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(tmp_path)
    arch = architecture_from_config(tmp_path)
    for P, T in ((4, 4), (10, 6)):  # 8 tokens fit mistral_window_8's window, 16 do not
        planned = PlanInput(arch=arch, prompt_length=P, completion_length=T).samples_on_lean_decoder
        assert planned == (LeanDecoder.build(model, P + T) is not None), (P, T)
    assert arch.lean_decoder == (name in ("llama", "mistral", "qwen2", "qwen3", "mistral_window_8"))


def test_grpo_needs_less_than_ppo_and_lora_drops_the_reference():
    base = PlanInput(arch=LLAMA2_7B, precision="bf16", micro_batch_size=8, prompt_length=256,
                     completion_length=256)
    grpo, ppo = plan_memory(base), plan_memory(replace(base, algorithm="ppo",
                                                       reward_model_params=6_738_415_616))
    names = {c.name for c in ppo.components}
    assert {"value model weights", "value model gradients", "value model optimizer", "reward model"} <= names
    assert ppo.total_bytes > grpo.total_bytes + 10 * 2**30
    no_kl = plan_memory(replace(base, beta=0.0))
    assert "reference model" not in {c.name for c in no_kl.components}
    assert grpo.total_bytes - no_kl.total_bytes == 2 * 6_738_415_616
    lora = {c.name: c.bytes for c in plan_memory(replace(base, lora_rank=16)).components}
    assert lora["reference model"] == 0 and lora["optimizer state"] == 8 * 39_976_960
    assert lora["policy weights"] == 2 * 6_738_415_616 + 4 * 39_976_960


def test_gradient_checkpointing_and_micro_batch_shrink_the_update_phase():
    base = PlanInput(arch=LLAMA2_7B, precision="bf16", micro_batch_size=8, prompt_length=256,
                     completion_length=256,
                     shared_prompts=False)
    full = plan_memory(base).phase_bytes("update")
    assert plan_memory(replace(base, gradient_checkpointing=True)).phase_bytes("update") < full / 5
    assert plan_memory(replace(base, micro_batch_size=4)).phase_bytes("update") == pytest.approx(
        full / 2, rel=1e-3
    )
    # train.micro_batch_tokens: a cap of 4 full-length rows (4 x 512 tokens) plans as 4 rows, under one as 1
    capped = replace(base, micro_batch_tokens=4 * 512 + 100)
    assert (
        capped.update_rows == 4
        and plan_memory(capped).peaks() == plan_memory(replace(base, micro_batch_size=4)).peaks()
    )
    assert (
        replace(base, micro_batch_tokens=10).update_rows == 1
        and replace(base, micro_batch_tokens=10**6).update_rows == 8
    )
    with pytest.raises(UserError, match="micro_batch_tokens must be >= 1"):
        plan_memory(replace(base, micro_batch_tokens=0))


def _plan_cli(argv, capsys):
    p = argparse.ArgumentParser(prog="grpo")
    build_plan_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["plan", *argv])
    args.fn(args)
    return capsys.readouterr().out


def test_cli_plan_prints_a_table_and_says_whether_it_fits(tmp_path, capsys):
    out = _plan_cli(["--params", "7B", "--layers", "32", "--hidden", "4096", "--vocab", "32000",
                     "--precision", "bf16",
                     "--micro-batch", "4", "--gpu-gib", "80", "--out", str(tmp_path / "plan.json")], capsys)
    assert "reference model" in out and "TOTAL" in out and "fits in 80 GiB: no" in out
    assert json.loads((tmp_path / "plan.json").read_text())["num_params"] == 7_000_000_000
    out = _plan_cli(["--model", "tiny", "--gpu-gib", "2"], capsys)
    assert "fits in 2 GiB: yes" in out and "1.7M params" in out
    _tiny_model().config.save_pretrained(tmp_path / "m")
    out = _plan_cli(["--model", str(tmp_path / "m"), "--algorithm", "ppo"], capsys)
    assert "0.6M params" in out and "value model weights" in out and "peak during value update" in out
    with pytest.raises(UserError, match="--layers and --hidden"):
        _plan_cli(["--params", "7e9"], capsys)
    with pytest.raises(UserError, match="no config.json"):
        _plan_cli(["--model", str(tmp_path / "missing")], capsys)
    # a grpo train config: its model, LoRA and batch shape; a flag given overrides it
    (tmp_path / "run.yaml").write_text("model: {path: tiny, lora: {r: 8}}\ngrpo: {G: 4}\n"
                                       "train: {prompts_per_step: 2, micro_batch_size: 8}\n")
    flags = ["--model", "tiny", "--lora-rank", "8", "--prompts-per-step", "2", "--micro-batch", "8",
             "--gpu-gib", "2"]
    from_config = _plan_cli(["--config", str(tmp_path / "run.yaml"), "--gpu-gib", "2"], capsys)
    assert from_config == _plan_cli(flags + ["--G", "4"], capsys)
    assert from_config != _plan_cli(flags[:2] + flags[4:] + ["--G", "4"], capsys)  # the config's LoRA counts
    assert _plan_cli(["--config", str(tmp_path / "run.yaml"), "grpo.G=8", "--gpu-gib", "2"], capsys) == \
        _plan_cli(flags + ["--G", "8"], capsys) != from_config
    # the tiny model samples on the lean decoder; under rollout.engine=vllm the cache is P + T per row
    assert "x (P=256 x 2 prompts + T=32 x 8 seqs) x 4 B (lean decoder)" in from_config
    vllm = _plan_cli(["--config", str(tmp_path / "run.yaml"), "rollout.engine=vllm"], capsys)
    assert "x (P+T)=288 x 8 seqs x 4 B" in vllm and "lean decoder" not in vllm


# The CPU validation: real GRPO steps of the tiny model (widened so that model-dependent memory is
# most of what is measured) in a fresh process. Baseline: RSS after a warm-up run that imports and
# initialises everything; peak: VmHWM after the measured run. glibc's mmap threshold is pinned low so
# that freed tensors go back to the OS and RSS follows live tensor memory, and oneDNN's primitive
# caches are off (they keep buffers per matmul shape under bf16). docs/memory.md has the numbers with
# the default allocator too, whose heap fragmentation adds ~30%.
MEASURE = r"""
import gc, json, sys, tempfile
import torch
from grpo.config import TrainConfig, load_config
from grpo.train.grpo import train

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))

torch.set_num_threads(2)
out = tempfile.mkdtemp()
common = ["train.eval_every=0", "train.sample_every=0", "data.num_heldout=1", "data.num_train=64",
          "optim.warmup_steps=0", "train.steps=2"]
train(load_config(TrainConfig, None, common + ["train.prompts_per_step=1", "grpo.G=2",
      "train.micro_batch_size=2", "sampling.max_new_tokens=4", "model.tiny_hidden_size=32",
      "model.tiny_num_layers=1", f"train.output_dir={out}/warm"]), progress=False)
results = []
for i, overrides in enumerate(json.loads(sys.argv[1])):  # each run's peak above the RSS before it
    gc.collect()
    base = status("VmRSS")
    try:
        open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark to the current RSS
    except OSError:
        pass  # the earlier runs' peaks are below this one's (the caller orders them so)
    res = train(load_config(TrainConfig, None, common + overrides + [f"train.output_dir={out}/run{i}"]),
                progress=False)
    results.append({"delta": status("VmHWM") - base,
                    "T": max(r.get("completion/len_max", 0) for r in res.history)})
print(json.dumps(results))
"""
MEASURED = {"h": 256, "L": 4, "G": 8, "prompts": 2, "T": 64}
"""The measured runs: tiny model width and depth, group size, prompts per step, completion length."""


@pytest.fixture(scope="module")
def measured() -> dict:
    """gradient checkpointing on/off -> {"delta": peak RSS above the baseline, "T": completion length}, both
    measured in one fresh process (checkpointing first: its lower peak cannot hide the other's)."""
    h, L, G, prompts, T = MEASURED.values()
    runs = {c: [f"model.tiny_hidden_size={h}", f"model.tiny_num_layers={L}", f"grpo.G={G}",
                f"train.prompts_per_step={prompts}", f"train.micro_batch_size={G * prompts}",
                f"sampling.max_new_tokens={T}", "grpo.beta=0.04",
                f"train.gradient_checkpointing={str(c).lower()}"]
            for c in (True, False)}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "LRU_CACHE_CAPACITY": "1",
           "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(list(runs.values()))],
                         capture_output=True,
                         text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return dict(zip(runs, json.loads(run.stdout.strip().splitlines()[-1])))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
def test_plan_matches_peak_memory_of_real_grpo_steps_on_cpu(checkpointing, measured):
    from grpo.data.synthetic import make_rows
    from grpo.models.tiny import build_tokenizer

    (h, L, G, prompts, T), measured = MEASURED.values(), measured[checkpointing]
    assert measured["T"] == T  # the untrained model never stops early: every completion is T tokens
    tok = build_tokenizer()
    # longest prompt
    P = max(len(x) for x in tok([r["prompt"] for r in make_rows(64, "train", 0)])["input_ids"])
    plan = plan_memory(PlanInput(arch=tiny_architecture(h, L), G=G, prompts_per_step=prompts,
                                 micro_batch_size=G * prompts, prompt_length=P, completion_length=T,
                                 beta=0.04,
                                 gradient_checkpointing=checkpointing))
    ratio = measured["delta"] / plan.total_bytes
    print(f"measured {measured['delta'] / 2**20:.1f} MiB, planned {plan.total_bytes / 2**20:.1f} MiB, ratio "
          f"{ratio:.3f}")
    assert 0.75 < ratio < 1.25, format_plan(plan)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_free_heap_hands_freed_heap_pages_back():
    """What the training step calls before its update: 400 MB of freed 100 kB tensors (glibc's heap, under
    an allocation that keeps its top in use, so free alone returns nothing) leave the resident set."""
    code = """
import torch
from grpo.train.metrics import release_free_heap
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
blocks = [torch.ones(25_000) for _ in range(4000)]
keep = torch.ones(10)
del blocks
before = rss()
assert release_free_heap(torch.device("cpu")) and not release_free_heap(torch.device("meta"))
print(before - rss())
"""
    freed = int(subprocess.check_output([sys.executable, "-c", code], text=True))
    assert freed > 300 * 2**20
