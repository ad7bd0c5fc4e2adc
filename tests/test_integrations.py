"""The integrations a user expects: Weights & Biases (offline here: no network), `grpo eval` writing
beside the model, and the columns a reward function receives."""

from __future__ import annotations

import json
import re

import pytest

from grpo.commands.cli import main
from grpo.config import TrainConfig, load_config
from grpo.errors import UserError

ONE_STEP = ["train.steps=2", "train.prompts_per_step=2", "grpo.G=2", "sampling.max_new_tokens=4",
            "data.num_train=4", "data.num_heldout=2", "train.threads=1", "model.tiny_hidden_size=32",
            "model.tiny_num_layers=1", "train.eval_every=0"]


def wandb_records(data: bytes):
    """The records of a .wandb file: a 7-byte header (":W&B", 0xBEE1, version 0), then LevelDB's log format,
    32 KiB blocks of chunks (crc32 4 bytes, length 2 bytes little-endian, type 1 byte: 1 whole record,
    2/3/4 its first/middle/last part); a block's tail shorter than a chunk header is zeros."""
    assert data[:4] == b":W&B" and data[4:7] == b"\xe1\xbe\x00"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield parts
            parts = b""


def test_wandb_offline_gets_every_logged_scalar_under_the_run_directory(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert main(["train", "-q", *ONE_STEP, "train.report_to=[wandb]", "train.wandb_project=smoke",
                 f"train.output_dir={out}"]) == 0
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, sorted(p.name for p in (out / "wandb").iterdir())
    run_id = (out / "wandb" / "grpo-run-id").read_text()
    assert runs[0].name.endswith(f"-{run_id}")
    log = runs[0] / f"run-{run_id}.wandb"
    assert log.is_file() and log.stat().st_size > 0
    # the run's records: its config, and each step's scalars as metrics.jsonl has them
    from wandb.proto import wandb_internal_pb2

    history, config = [], {}
    for data in wandb_records(log.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif record.WhichOneof("record_type") == "run":
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif record.WhichOneof("record_type") == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in history if "reward/mean" in x]
    assert [x["_step"] for x in steps] == [1, 2]
    for mine, theirs in zip([x for x in logged if "reward/mean" in x], steps):
        assert theirs["reward/mean"] == mine["reward/mean"] and theirs["loss"] == mine["loss"]
    assert config["grpo"]["G"] == 2 and config["train"]["wandb_project"] == "smoke"


def test_unknown_or_missing_integrations_are_refused_before_anything_runs(monkeypatch):
    with pytest.raises(UserError,
                       match=r"train.report_to\[0\]: expected one of 'tensorboard', 'wandb', got 'mlflow'"):
        load_config(TrainConfig, None, ["train.report_to=[mlflow]"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name,
                        *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError,
                       match=r"the wandb package is not installed \(pip install 'grpo\[wandb\]'\)"):
        load_config(TrainConfig, None, ["train.report_to=[wandb]"])


def test_grpo_eval_writes_beside_the_model_by_default(tmp_path, monkeypatch, capsys):
    from grpo.models.tiny import TinyConfig, build_tiny

    model = build_tiny(tmp_path / "model", TinyConfig(hidden_size=32, num_layers=1))
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--model", str(model), "--n", "2", "--k", "1,2", "--num-prompts", "3",
                 "--max-new-tokens", "4"]) == 0
    assert f"wrote {model / 'eval.json'}" in capsys.readouterr().out
    result = json.loads((model / "eval.json").read_text())
    assert result["num_prompts"] == 3 and set(result["pass_at_k"]) == {"1", "2"}
    assert not (tmp_path / "eval.json").exists()


def test_a_reward_receives_every_column_but_the_prompt_which_arrives_rendered(tmp_path):
    """docs/rewards.md, word for word: `prompts` rendered by the template; `**columns` every other column,
    the answer column renamed `answer`."""
    from grpo.api import train

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i} + 1 =", "solution": str(i + 1),
                                        "level": i % 3}) + "\n"
                            for i in range(4)))
    seen = []

    def spy(prompts, completions, completion_ids, **columns):
        seen.append((prompts[0], sorted(columns), columns["answer"], columns["level"]))
        return [0.0] * len(completions)

    cfg = load_config(TrainConfig, None, [*ONE_STEP, "train.steps=1", f"data.source={data}",
                                          "data.prompt_column=question", "data.answer_column=solution",
                                          "data.template=\"Q: {prompt}\\nA:\"",
                                          f"train.output_dir={tmp_path / 'run'}"])
    train(cfg, rewards=[spy], quiet=True)
    prompt, names, answers, levels = seen[0]
    assert names == ["answer", "level"]
    assert re.fullmatch(r"Q: \d \+ 1 =\nA:", prompt)
    assert answers[0] == answers[1] and int(answers[0]) == int(prompt[3]) + 1  # G=2 completions share a row
    assert levels[0] == int(prompt[3]) % 3
