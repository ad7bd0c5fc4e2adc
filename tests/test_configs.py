"""Every shipped YAML config loads, starts with the command that runs it, and runs (shrunk)."""

from pathlib import Path

import pytest

from grpo.config import DemoConfig, TrainConfig, load_config
from grpo.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_are_shipped_configs():
    assert {p.name for p in CONFIGS} >= {"demo.yaml", "gsm8k_style.yaml", "math_style.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_header_names_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# grpo ") and f"--config configs/{path.name}" in first


@pytest.mark.slow  # two training steps each
@pytest.mark.parametrize("path",
                         [p for p in CONFIGS if p.name not in ("demo.yaml", "tools.yaml", "reproduce.yaml")
                                  and not p.name.startswith("smollm2")], ids=lambda p: p.name)
def test_train_config_runs_two_steps_through_the_cli(path, tmp_path, monkeypatch, capsys):
    """The fixture formats (GSM8K-style, MATH-style) train end to end through `grpo train`. The real-model
    recipes (smollm2_*.yaml) run shrunk in tests/test_real_model.py, with a checkpoint and a resume."""
    import json

    from grpo.commands.cli import main

    monkeypatch.chdir(ROOT)
    code = main(["train", "-q", "--config", str(path.relative_to(ROOT)), "train.steps=2",
                 f"train.output_dir={tmp_path}", "sampling.max_new_tokens=8", "train.prompts_per_step=2",
                 "train.micro_batch_size=8"])
    assert code == 0, capsys.readouterr().err
    assert "held-out accuracy" in capsys.readouterr().out
    assert (tmp_path / "final" / "config.json").exists()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "reward/mean" in x] == [1, 2]
    assert any(k.startswith("reward/math_accuracy") for k in lines[0])


def test_demo_config_loads_and_matches_defaults():
    cfg = load_config(DemoConfig, ROOT / "configs" / "demo.yaml")
    default = load_config(DemoConfig)
    assert cfg == default, "configs/demo.yaml must spell out the defaults of `grpo demo`"


@pytest.mark.parametrize("name", ["demo.yaml", "reproduce.yaml", "tools.yaml"])
def test_demo_style_configs_have_the_problems_they_ask_for(name):
    from grpo.data import load_task
    from grpo.models.tiny import build_tokenizer

    cfg = load_config(DemoConfig, ROOT / "configs" / name)
    for data in (cfg.sft.data, cfg.rl.data):
        task = load_task(data, build_tokenizer(), 0)
        assert (len(task.train), len(task.validation), len(task.heldout)) == \
            (data.num_train, data.num_validation, data.num_heldout)


def test_reproduce_config_trains_and_tests_on_one_task():
    cfg = load_config(DemoConfig, ROOT / "configs" / "reproduce.yaml")
    task = lambda d: (d.source, d.task_steps, d.task_max_value, d.task_max_delta,  # noqa: E731
                      d.task_multiply)
    assert task(cfg.sft.data) == task(cfg.rl.data) == ("builtin:arithmetic", 4, 49, 9, True)
    assert cfg.sft.data.num_heldout == cfg.rl.data.num_heldout == 500 and cfg.sft.data.num_validation == 500
    assert cfg.sft.optim.schedule == "cosine" and cfg.sft.sft.patience == 0


def test_config_errors_name_file_line_and_field(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("grpo:\n  G: many\n")
    with pytest.raises(UserError, match=r"x\.yaml:2: grpo\.G: expected an integer, got 'many'"):
        load_config(TrainConfig, bad)
    bad.write_text("- a list\n")
    with pytest.raises(UserError, match="must be a mapping"):
        load_config(TrainConfig, bad)
    with pytest.raises(UserError, match="config file not found"):
        load_config(TrainConfig, tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="grpo.G: a group needs at least 2"):
        load_config(TrainConfig, None, ["grpo.G=1"])
    with pytest.raises(UserError, match="train.steps must be a positive integer, got 0"):
        load_config(TrainConfig, None, ["train.steps=0"])
    with pytest.raises(UserError, match="not of the form key=value"):
        load_config(TrainConfig, None, ["grpo.beta"])


def test_validation_errors_point_at_the_line_the_file_set_and_not_at_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("# a comment\ntrain:\n  steps: 4\n  iterations: 9\nrewards:\n  functions:\n"
                   "    - {fn: arithmetic_accuracy}\n    - {fn: arithmetic_format, weight: x}\n")
    with pytest.raises(UserError, match=r"^.*c\.yaml:8: rewards\.functions\[1\]\.weight: expected a number"):
        load_config(TrainConfig, cfg)
    with pytest.raises(UserError, match=r"c\.yaml:4: train\.iterations=9 is more than train\.steps=4"):
        load_config(TrainConfig, cfg, ["rewards.functions=[{fn: arithmetic_accuracy}]"])
    # the iterations come from the command line: the file's train.steps is the value it names next
    with pytest.raises(UserError, match=r"c\.yaml:3: train\.iterations=7 is more than"):
        load_config(TrainConfig, cfg, ["train.iterations=7", "rewards.functions=[{fn: arithmetic_accuracy}]"])
    # every value it names came from the command line: no file, no line
    with pytest.raises(UserError, match=r"^train\.iterations=7 is more than train\.steps=5"):
        load_config(TrainConfig, cfg, ["train.iterations=7", "train.steps=5",
                                       "rewards.functions=[{fn: arithmetic_accuracy}]"])


def test_tensorboard_without_its_package_is_refused_before_anything_is_written(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name,
                        *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(UserError, match=r"train.tensorboard: the tensorboard package is not installed"):
        load_config(TrainConfig, None, ["train.tensorboard=true", f"train.output_dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()
    load_config(TrainConfig, None, ["train.tensorboard=false"])
