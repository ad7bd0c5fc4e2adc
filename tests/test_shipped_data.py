"""The data files shipped in data/ are exactly what their scripts write (deterministic, so the recipes'
figures can be reproduced from the scripts), with held-out problems no training row contains."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, names", [
    ("make_word_problems.py", ["word_problems_train.jsonl", "word_problems_test.jsonl",
                               "word_problems_train_answers.jsonl"]),
    ("make_calculator_problems.py",
     ["calculator_train.jsonl", "calculator_test.jsonl", "calculator_train_tools.jsonl",
      "calculator_train_answers.jsonl"]),
])
def test_shipped_data_is_what_the_script_writes(script, names, tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--out", str(tmp_path)], check=True,
                   capture_output=True, cwd=ROOT)
    for name in names:
        assert (tmp_path / name).read_bytes() == (ROOT / "data" / name).read_bytes(), name
    train, test = ([json.loads(line) for line in (ROOT / "data" / name).open()] for name in names[:2])
    questions = {r["prompt"][0]["content"] for r in train}
    if script.startswith("make_calculator"):  # the 81 easy sums recur by design; hard products must not
        test = [r for r in test if r["kind"] == "hard"]
        assert len(test) == 100
        assert all(any(m["role"] == "tool" for m in r["target"]) or len(r["target"]) == 1 for r in train)
    assert not questions & {r["prompt"][0]["content"] for r in test}
