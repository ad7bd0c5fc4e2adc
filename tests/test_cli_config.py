"""Config you can discover: `grpo config` lists every key the parser takes, with its type, default and
doc; and every example in the help texts (and the README's commands) is valid for its command."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest

import grpo.config
from grpo.commands.cli import CONFIGS, main
from grpo.config import DemoConfig, SFTConfig, TrainConfig, load_config
from grpo.config_io import config_keys, first_sentence

ROOT = Path(__file__).resolve().parent.parent
READS = {"train": TrainConfig, "sft": SFTConfig, "demo": DemoConfig, "eval": TrainConfig, "plan": TrainConfig,
         "plot": TrainConfig, "reproduce": DemoConfig}
"""The config class whose keys each command's overrides set."""
OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def _listed(capsys, *argv) -> dict[str, str]:
    assert main(["config", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    return {line.split(":", 1)[0]: line for line in lines}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_grpo_config_lists_every_key_with_type_default_and_doc(name, capsys):
    cls = getattr(grpo.config, CONFIGS[name])
    keys = config_keys(cls)
    listed = _listed(capsys, name)
    assert list(listed) == [k.key for k in keys]
    for k in keys:
        assert k.doc, f"{k.key} has no docstring"
        assert listed[k.key].startswith(f"{k.key}: {k.type} = {k.default}")
        assert listed[k.key].endswith(first_sentence(k.doc))
    # each key as listed, with its listed default, is an override the parser takes and keeps as the default
    for k in keys:
        if "[]" in k.key or any(k.key.startswith(f"{o.key}.") for o in keys if o.default == "null"):
            continue  # items of lists, and the fields of an optional section (which turn it on)
        cfg = load_config(cls, None, [f"{k.key}={k.default}"])
        value, default = cfg, cls()
        for part in k.key.split("."):
            value, default = getattr(value, part), getattr(default, part)
        assert value == default, k.key


def test_grpo_config_shows_the_real_values(capsys):
    listed = _listed(capsys, "train", "grpo.")
    assert listed["grpo.beta"] == (
        "grpo.beta: float = 0.04" + " " * (64 - 23) + "  Weight of the k3 KL "
        "penalty to "
        "the reference model (0: no reference model is loaded)."
    )
    assert list(listed) == [f"grpo.{f.name}" for f in dataclasses.fields(grpo.config.GRPOConfig)]
    sft = _listed(capsys, "sft", "optim.lr")  # SFT's own default, not train's
    assert sft["optim.lr"].startswith("optim.lr: float = 0.003")
    demo = _listed(capsys, "demo", "rl.model.lora")
    assert list(demo) == ["rl.model.lora", "rl.model.lora.r", "rl.model.lora.alpha", "rl.model.lora.dropout",
                          "rl.model.lora.target_modules"]
    assert (
        "= [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]"
        in demo["rl.model.lora.target_modules"]
    )
    assert main(["config", "sft", "grpo."]) == 2
    assert "grpo config sft: no key starts with 'grpo.'" in capsys.readouterr().err


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _check_command(words: list[str]) -> int:
    """Validate the overrides (and the --config file, where the repository has it) of `grpo CMD ...`."""
    command, rest = words[1], words[2:]
    if command not in READS:
        return 0
    config = None
    if "--config" in rest and (ROOT / rest[rest.index("--config") + 1]).is_file():
        config = ROOT / rest[rest.index("--config") + 1]
    overrides = [w for w in rest if OVERRIDE.match(w)]
    load_config(READS[command], config, overrides)  # raises UserError naming the key if one is wrong
    return 1


def test_every_example_in_the_help_texts_is_valid_for_its_command(capsys):
    checked = 0
    for command, cls in READS.items():
        text = " ".join(_help(capsys, command).split())
        examples = re.findall(r"e\.g\. ((?:[A-Za-z_][\w.]*=\S+ ?)+)", text)
        for example in examples:
            load_config(cls, None, example.split())
            checked += 1
        assert command in ("plot",) or examples, f"grpo {command} --help gives no override example"
    # the examples in `grpo --help` (the module docstring), with their config files
    for line in _help(capsys).splitlines():
        command = line.split("#")[0].strip()
        if command.startswith("grpo "):
            checked += _check_command(shlex.split(command))
    assert checked >= 7 + 4  # 7 commands' examples, 4 command lines with a config


def test_every_command_in_the_readme_and_usage_is_valid_for_its_command():
    lines = [line for page in ("README.md", "docs/usage.md")
             for line in (ROOT / page).read_text(encoding="utf-8").splitlines()]
    checked, fenced = 0, False
    for line, after in zip(lines, [*lines[1:], ""]):
        fenced ^= line.startswith("```")
        command = line.split("#")[0].strip().removeprefix("$ ")
        if not fenced or not command.startswith("grpo ") or after.startswith("grpo: error:"):
            continue  # prose, or a transcript of an error (its command is wrong on purpose)
        checked += _check_command(shlex.split(command))
    assert checked >= 10
