"""`grpo plot`: one run's training.png, several runs compared in one PNG, and its errors."""

import json

import pytest

from grpo.commands.cli import main


def _run_dir(path, reward_slope: float):
    path.mkdir(parents=True)
    rows = [{"step": s, "reward/mean": 0.2 + reward_slope * s} for s in range(1, 21)]
    rows[9]["eval/accuracy"] = 0.5 + reward_slope
    rows.append({"step": 20, "eval/accuracy": 0.6 + reward_slope, "eval/accuracy_before": 0.4})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, (path, len(data))


def test_one_run_redraws_its_training_png(tmp_path, capsys):
    run = _run_dir(tmp_path / "a", 0.01)
    assert main(["plot", str(run)]) == 0
    _png(run / "training.png")
    assert capsys.readouterr().out.strip() == str(run / "training.png")


def test_several_runs_are_compared_in_one_png(tmp_path):
    a, b = _run_dir(tmp_path / "fp32", 0.01), _run_dir(tmp_path / "bf16", 0.02)
    out = tmp_path / "compare.png"
    assert main(["plot", str(a), str(b), "--labels", "fp32,bf16", "--out", str(out)]) == 0
    _png(out)
    assert not (a / "training.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["{a}", "{b}"], "needs --out"),
    (["{a}", "{b}", "--labels", "one", "--out", "{out}"], "--labels: 1 labels for 2 runs"),
    (["{a}", "{missing}", "--out", "{out}"], "missing: no metrics.jsonl"),
])
def test_plot_errors_name_the_problem(tmp_path, capsys, argv, message):
    paths = {"a": _run_dir(tmp_path / "a", 0.01), "b": _run_dir(tmp_path / "b", 0.02),
             "missing": tmp_path / "missing", "out": tmp_path / "x.png"}
    assert main(["plot", *[x.format(**paths) for x in argv]]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_plot_takes_the_run_of_a_config_or_an_override(tmp_path):
    run = _run_dir(tmp_path / "a", 0.01)
    assert main(["plot", f"train.output_dir={run}"]) == 0
    assert (run / "training.png").is_file()
    (run / "training.png").unlink()
    (tmp_path / "run.yaml").write_text(f"train: {{output_dir: {run}}}\n")
    assert main(["plot", "--config", str(tmp_path / "run.yaml")]) == 0
    assert (run / "training.png").is_file()
