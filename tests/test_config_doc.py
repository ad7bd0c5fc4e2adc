"""docs/config.md is generated from the config dataclasses' docstrings and kept current."""

import subprocess
import sys
from pathlib import Path

from grpo.config import SFTConfig, TrainConfig
from grpo.config_io import config_keys

ROOT = Path(__file__).resolve().parents[1]


def test_the_config_reference_is_what_the_script_writes(tmp_path):
    out = tmp_path / "config.md"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_config_doc.py"), "--out", str(out)],
                   check=True,
                   capture_output=True)
    assert out.read_text() == (ROOT / "docs" / "config.md").read_text(), \
        "docs/config.md is stale: run python scripts/make_config_doc.py"


def test_every_train_and_sft_key_has_a_documented_row():
    text = (ROOT / "docs" / "config.md").read_text()
    for cls in (TrainConfig, SFTConfig):
        for key in config_keys(cls):
            assert f"| `{key.key}` |" in text
            assert key.doc, f"{cls.__name__}.{key.key} has no docstring"
