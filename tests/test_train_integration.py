"""End-to-end: a few GRPO steps on the tiny model through the public API and the CLI."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grpo.commands.cli import main
from grpo.config import TrainConfig, load_config
from grpo.train.grpo import train

SMALL = ["train.steps=3", "train.prompts_per_step=2", "grpo.G=4", "train.micro_batch_size=4",
         "sampling.max_new_tokens=16", "data.num_heldout=4", "data.num_train=64", "train.eval_every=2",
         "train.sample_every=1"]
LOGGED = ["reward/mean", "reward/std", "reward/arithmetic_accuracy", "reward/arithmetic_format",
          "reward/zero_std_groups", "kl", "clip_frac_low", "clip_frac_high", "entropy", "completion/len_mean",
          "completion/len_max", "completion/truncated", "tokens_per_s", "time/step", "time/generate",
          "memory/peak_mib", "grad_norm", "lr"]


# A user reward loaded by path that varies within every group (an untrained model never gets the
# arithmetic right, so the built-in accuracy reward alone would give all-zero advantages).
DIGITS_REWARD = """
def digit_share(prompts, completions, completion_ids, **columns):
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]
"""


def _run(tmp_path, extra=(), overwrite=False):
    reward_file = tmp_path / "my_rewards.py"
    reward_file.write_text(DIGITS_REWARD)
    rewards = (f"rewards.functions=[{{fn: arithmetic_accuracy}}, {{fn: arithmetic_format, weight: 0.1}}, "
               f"{{fn: '{reward_file}:digit_share', weight: 0.5}}]")
    cfg = load_config(TrainConfig, None, SMALL + [f"train.output_dir={tmp_path / 'run'}", rewards, *extra])
    cfg.optim.lr, cfg.optim.warmup_steps = 1e-2, 0  # parameters must move visibly in 3 steps
    return cfg, train(cfg, progress=False, overwrite=overwrite)


@pytest.mark.slow
def test_train_end_to_end_changes_weights_logs_and_reloads(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, res = _run(tmp_path, ["grpo.beta=0.04"])
    tmp_path = tmp_path / "run"
    before = load_file(tmp_path / "tiny-init" / "model.safetensors")
    after = load_file(tmp_path / "final" / "model.safetensors")
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) >= len(before) // 2, f"only {len(moved)} of {len(before)} tensors changed"

    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "reward/mean" in x]
    assert [x["step"] for x in steps] == [1, 2, 3]
    for key in LOGGED:
        assert all(key in x for x in steps), key
    assert "eval/accuracy" in steps[1] and 0.0 <= steps[1]["eval/accuracy"] <= 1.0
    assert lines[-1]["eval/accuracy"] == res.accuracy_after
    assert all(x["kl"] >= 0 for x in steps)
    assert (tmp_path / "training.png").stat().st_size > 10_000
    assert (tmp_path / "config.yaml").read_text().count("beta: 0.04") == 1
    assert all(0 < x["reward/digit_share"] < 1 for x in steps) and steps[0]["grad_norm"] > 0
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 3 * 2

    tok = AutoTokenizer.from_pretrained(tmp_path / "final")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    ids = tok(["Mia has 3 pens, finds 2, loses 1, finds 4. How many?\n"], return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    # greedy decoding by hand, a full forward per token: generate (with its KV cache) must give these 5 tokens
    expected = ids["input_ids"]  # [1, P]
    with torch.no_grad():
        for _ in range(5):
            expected = torch.cat([expected, model(expected).logits[:, -1:].argmax(-1)], dim=1)  # [1, P + t]
    assert tok.eos_token_id not in expected[0, -5:].tolist()  # no early stop: generate runs all 5 steps
    assert torch.equal(out, expected)


@pytest.mark.slow
def test_other_architecture_and_width_work_unchanged(tmp_path):
    """A Qwen2 model of another size goes through the same code path."""
    from transformers import AutoConfig

    cfg, res = _run(tmp_path, ["model.tiny_architecture=qwen2", "model.tiny_hidden_size=96",
                               "model.tiny_num_layers=2", "grpo.beta=0.0", "grpo.mu=2"])
    conf = AutoConfig.from_pretrained(tmp_path / "run" / "final")
    assert conf.model_type == "qwen2" and conf.hidden_size == 96 and conf.num_hidden_layers == 2
    assert len(res.history) == 4


@pytest.mark.slow
def test_beta_zero_loads_no_reference(tmp_path, monkeypatch):
    import grpo.train.run as setup

    made = []
    real = setup.Reference
    monkeypatch.setattr(setup, "Reference", lambda m: made.append(m) or real(m))
    _run(tmp_path, ["grpo.beta=0.0", "train.steps=1"])
    assert made == []
    _run(tmp_path, ["grpo.beta=0.1", "train.steps=1"], overwrite=True)  # the same directory again
    assert len(made) == 1


@pytest.mark.slow
def test_lora_trains_adapter_only_and_reference_is_the_base(tmp_path):
    """LoRA: base weights stay bit-identical, adapter weights move, KL is measured against the
    adapter-disabled base (no second model copy), and the merged final model loads in transformers."""
    from transformers import AutoModelForCausalLM

    cfg, res = _run(tmp_path, ["grpo.beta=0.04", "model.lora={r: 4, alpha: 8}"])
    run = tmp_path / "run"
    base = load_file(run / "tiny-init" / "model.safetensors")
    adapter = load_file(run / "final" / "adapter" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight")
               and v.abs().sum() > 0 for k, v in adapter.items()), "adapter did not move"
    merged = load_file(run / "final" / "model.safetensors")
    changed = [k for k in base if "proj" in k and not torch.equal(base[k], merged[k])]
    untouched = [k for k in base if "norm" in k or "embed" in k]
    assert changed and all(torch.equal(base[k], merged[k]) for k in untouched)
    steps = [h for h in res.history if "kl" in h]
    assert steps[0]["kl"] == 0.0 and steps[-1]["kl"] > 0.0  # policy drifts from the adapter-off base
    AutoModelForCausalLM.from_pretrained(run / "final")


def test_cli_reports_inconsistent_sizes_in_one_line(tmp_path, capsys):
    """The README's example error, word for word."""
    code = main(["train", "-q", f"train.output_dir={tmp_path / 'run'}", "train.steps=3",
                 "train.iterations=5"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == ("grpo: error: train.iterations=5 is more than train.steps=3: each iteration needs at "
                   "least one step")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert f"$ grpo train train.steps=3 train.iterations=5\n{err}\n" in readme
    assert not (tmp_path / "run").exists()


def test_cli_unknown_key_and_bad_yaml(tmp_path, capsys):
    assert main(["train", "grpo.betta=0.1"]) == 2
    assert "unknown config key grpo.betta" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo:\n  beta: [0.1\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "invalid YAML" in err


def test_bf16_on_a_cpu_without_bf16_units_says_it_will_be_slow(monkeypatch, capsys):
    import grpo.models.loading as loading
    import grpo.train.grpo as loop

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert loading.emulates_bf16(torch.device("cpu")) and not loading.emulates_bf16(torch.device("cuda"))

    class Stop(Exception):
        pass

    def stop(*a, **kw):
        raise Stop

    monkeypatch.setattr(loop, "train", stop)  # only what the CLI says before training matters here
    for dtypes, noted in ((["model.dtype=bfloat16"], "model.dtype=bfloat16"),
                          (["rollout.dtype=bfloat16"], "rollout.dtype=bfloat16"),
                          (["model.dtype=float32"], None),
                          (["model.dtype=bfloat16", "rollout.dtype=float32"], "model.dtype=bfloat16")):
        with pytest.raises(Stop):
            main(["train", "-q", *dtypes, "model.device=cpu"])
        err = capsys.readouterr().err
        assert ("torch emulates bf16 matmuls here" in err) == (noted is not None), dtypes
        assert noted is None or f"note: {noted} on a CPU without" in err
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert not loading.emulates_bf16(torch.device("cpu"))


@pytest.mark.slow
def test_tensorboard_gets_the_logged_scalars_and_a_resume_adds_no_duplicates(tmp_path, reward_file):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = [*SMALL, "train.steps=1", "train.eval_every=0", "train.save_every=1", "train.tensorboard=true",
            f"train.output_dir={out}", f"rewards.functions=[{{fn: '{reward_file}:digit_share'}}]"]
    assert main(["train", "-q", *args]) == 0
    assert main(["train", "-q", "--resume", str(out), "train.steps=2"]) == 0
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in logged if "reward/mean" in x]
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    for key in ("reward/mean", "loss", "kl", "grad_norm"):
        scalars = events.Scalars(key)
        assert [e.step for e in scalars] == [1, 2], key
        assert [e.value for e in scalars] == pytest.approx([x[key] for x in steps], rel=1e-6), key
