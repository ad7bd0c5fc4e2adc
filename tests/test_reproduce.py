"""`grpo reproduce` on a minute's budget: every method trains, is evaluated, and results.md says so."""

import json

import pytest

from grpo.cli import main
from grpo.errors import UserError
from grpo.reproduce import run_reproduce

TINY = ["sft.sft.max_steps=4", "sft.sft.eval_every=2", "sft.sft.batch_size=8", "sft.data.num_heldout=4",
        "sft.data.num_train=64", "sft.sampling.max_new_tokens=12", "rl.train.steps=2", "rl.train.prompts_per_step=2",
        "rl.grpo.G=4", "rl.train.micro_batch_size=8", "rl.sampling.max_new_tokens=12", "rl.data.num_heldout=4",
        "rl.data.num_train=64", "rl.train.eval_every=1", "sft.model.tiny_hidden_size=32", "sft.model.tiny_num_layers=1"]


@pytest.mark.slow
def test_reproduce_trains_every_method_and_writes_results_with_plots(tmp_path, capsys):
    docs = tmp_path / "docs"
    assert main(["reproduce", "-q", "--n", "4", "--k", "1,2,4", "--docs", str(docs),
                 f"output_dir={tmp_path / 'out'}", *TINY]) == 0
    out = tmp_path / "out"
    summary = json.loads((out / "results.json").read_text())
    assert list(summary) == ["sft", "grpo", "grpo_process", "ppo", "rft"]
    for name, v in summary.items():
        assert 0 <= v["greedy_accuracy"] <= 1 and set(v["pass_at_k"]) == {"1", "2", "4"}
        # pass@k never falls as k grows; pass@1 is the sampled accuracy
        p = [v["pass_at_k"][k] for k in ("1", "2", "4")]
        assert p == sorted(p) and p[0] == pytest.approx(v["sample_accuracy"])
    assert all(summary[m]["peak_mib"] > 50 for m in ("grpo", "grpo_process", "ppo", "rft"))
    # each method ran the configured algorithm: PPO logged its value loss, process supervision its config
    assert "ppo/value_loss" in (out / "ppo" / "metrics.jsonl").read_text()
    assert "step_fn: arithmetic_steps" in (out / "grpo_process" / "config.yaml").read_text()
    assert "algorithm: rft" in (out / "rft" / "config.yaml").read_text()
    text = (docs / "results.md").read_text()
    assert "| PPO |" in text and "| Online RFT |" in text
    # each claim's verdict is the one this run's accuracies give (the sentence is written either way)
    acc = {m: v["greedy_accuracy"] for m, v in summary.items()}
    verdict = lambda d: "met" if d >= 0 else "NOT met"  # noqa: E731
    gain, vs_ppo = 100 * (acc["grpo"] - acc["sft"]), 100 * (acc["grpo"] - acc["ppo"])
    assert f"GRPO {gain:+.1f} points over the SFT model it starts from ({verdict(gain - 15)}: the target is +15)" in text
    assert f"- GRPO matches or beats PPO at equal budget: {vs_ppo:+.1f} points ({verdict(vs_ppo)})." in text
    process, vs_rft = 100 * (acc["grpo_process"] - acc["grpo"]), 100 * (acc["grpo"] - acc["rft"])
    assert f"{process:+.1f} points for process supervision (the paper finds process supervision better; " \
           f"{verdict(process)} here)" in text
    assert f"GRPO {vs_rft:+.1f} points ({verdict(vs_rft)})." in text
    assert "grpo reproduce --n 4 --k 1,2,4" in text and "](img/curves.png)" in text
    assert (docs / "img" / "curves.png").stat().st_size > 10_000
    assert (docs / "img" / "maj_pass_at_k.png").stat().st_size > 10_000
    assert all(summary[m]["run_peak_mib"] > 0 for m in ("grpo", "ppo"))
    assert summary["ppo"]["state_mib"] > summary["grpo"]["state_mib"] > summary["rft"]["state_mib"]  # value model; reference

    # a second comparison from the same SFT checkpoint: no SFT is trained again
    capsys.readouterr()
    assert main(["reproduce", "-q", "--n", "2", "--k", "1,2", "--methods", "rft", "--sft", str(out / "sft"),
                 f"output_dir={tmp_path / 'again'}", *TINY]) == 0
    assert f"reusing {out / 'sft' / 'final'}" in capsys.readouterr().out
    assert not (tmp_path / "again" / "sft").exists()
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert list(again) == ["sft", "rft"] and again["sft"]["greedy_accuracy"] == summary["sft"]["greedy_accuracy"]


def test_reproduce_refuses_unknown_methods_and_bad_k(tmp_path):
    with pytest.raises(UserError, match="unknown method 'dpo'"):
        run_reproduce(None, [f"output_dir={tmp_path}"], methods=["grpo", "dpo"])
    with pytest.raises(UserError, match="every k must be in 1..--n"):
        run_reproduce(None, [f"output_dir={tmp_path}"], n=4, ks=[1, 8])
    assert not any(tmp_path.iterdir())  # nothing written
