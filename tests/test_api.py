"""The Python API (`grpo.api`): the README's example, run as written (shrunk), and quiet mode."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

import grpo.api
from grpo.api import TrainConfig, load_config, quiet_libraries, train
from grpo.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SHRINK = ["train.steps=2", "train.prompts_per_step=2", "grpo.G=2", "sampling.max_new_tokens=6",
          "data.num_train=8",
          "data.num_heldout=4", "train.threads=1", "model.tiny_hidden_size=32", "model.tiny_num_layers=1"]
"""Appended to the example's overrides: the README's run in seconds."""


def readme_example() -> str:
    """The first python block under the README's "## From Python"."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_the_readme_example_trains_with_a_custom_reward(tmp_path, monkeypatch, capfd):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 12
    real = grpo.api.load_config
    monkeypatch.setattr(
        grpo.api, "load_config", lambda cls, path=None, overrides=(): real(cls, path, [*overrides, *SHRINK])
    )
    monkeypatch.chdir(tmp_path)
    capfd.readouterr()
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    out, err = capfd.readouterr()
    assert err == ""  # quiet=True: no progress bar, grpo's or a library's
    accuracy, pass_at_k = out.splitlines()
    m = re.fullmatch(r"held-out accuracy (\d\.\d\d) -> (\d\.\d\d)", accuracy)
    assert m, out
    run = tmp_path / "runs" / "api"
    assert (run / "final" / "model.safetensors").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["rewards"]["functions"] == [{"fn": "arithmetic_accuracy", "weight": 1.0, "options": {}},
                                             {"fn": "brevity", "weight": 0.1, "options": {}}]
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "reward/mean" in x]
    assert len(steps) == 2
    for s in steps:  # the callable scored every completion: 1 / (1 + its length in tokens)
        assert 1 / 7 <= s["reward/brevity"] <= 1.0
    # evaluate: the same held-out problems, checker and greedy decoding as training's final evaluation
    assert set(eval(pass_at_k)) == {1, 4}
    cfg = real(TrainConfig, None, ["train.steps=20", "train.output_dir=runs/api", *SHRINK])
    greedy = grpo.api.evaluate(run / "final", cfg, n=2, ks=[1, 2], num_prompts=4).greedy_accuracy
    assert greedy == pytest.approx(float(m.group(2)), abs=0.005)


def test_rewards_given_to_train_are_checked_before_anything_runs(tmp_path):
    cfg = load_config(TrainConfig, None, [f"train.output_dir={tmp_path / 'run'}"])
    with pytest.raises(UserError, match="give each callable a distinct function name, got '<lambda>'"):
        train(cfg, rewards=[lambda prompts, completions, completion_ids, **columns: [0.0] * len(completions)])
    with pytest.raises(UserError, match="expected a reference, a callable or"):
        train(cfg, rewards=[3])
    cfg = load_config(TrainConfig, None, [f"train.output_dir={tmp_path / 'run'}"])
    with pytest.raises(UserError, match="unknown reward"):
        train(cfg, rewards=["no_such_reward"], quiet=True)
    assert not (tmp_path / "run").exists()


def test_quiet_silences_the_libraries_progress_bars(monkeypatch, capfd):
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from huggingface_hub.utils import tqdm as hub_tqdm
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    for name in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)  # restored afterwards
    import datasets

    datasets.enable_progress_bars()
    hf_logging.enable_progress_bar()
    list(hf_logging.tqdm(range(3), desc="transformers"))
    assert "transformers: 100%" in capfd.readouterr().err
    try:
        quiet_libraries()
        list(hf_logging.tqdm(range(3), desc="transformers"))
        list(hub_tqdm(range(3), desc="hub"))
        assert capfd.readouterr().err == "" and are_progress_bars_disabled()
        assert datasets.are_progress_bars_disabled()  # imported already: switched off
        # for an import to come, and subprocesses
        assert os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"
        list(tqdm(range(3), desc="grpo", disable=False))  # grpo's own bar says explicitly whether it shows
        assert "grpo: 100%" in capfd.readouterr().err
    finally:
        hf_logging.enable_progress_bar()
        enable_progress_bars()
        datasets.enable_progress_bars()
