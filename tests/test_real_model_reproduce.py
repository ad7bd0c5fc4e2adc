"""`grpo reproduce` on SmolLM2 cut to 2 layers: GRPO against more SFT at its training time, and a tools task
scored by greedy episodes (apart from tests/test_real_model.py so the two files run on separate workers)."""

import json
from pathlib import Path

import pytest
import yaml

from grpo.commands.cli import main
from smollm2_cut import ROOT, needs_smollm2

SPY = '''
import json, os

def seen(prompts, completions, completion_ids=None, **columns):
    """Scores nothing; records every prompt it is shown (SPY_LOG)."""
    with open(os.environ["SPY_LOG"], "a") as f:
        f.writelines(json.dumps(p) + "\\n" for p in prompts)
    return [0.0] * len(completions)
'''


@needs_smollm2
@pytest.mark.slow
def test_reproduce_compares_grpo_with_more_sft_at_its_training_time(
    tmp_path, capsys, monkeypatch, smollm2_two_layers
):
    """configs/smollm2_answers_only.yaml shrunk on the first 2 layers of SmolLM2: sft_best (on 2 worked
    demonstrations), GRPO from it on answers-only problems, and sft_more on the
    bare answers, given exactly the
    GRPO stage's measured training time, continuing on rows sft_best did not reach. No training
    job reads the test split (a spy reward in SFT's checkpoint choice and in GRPO's rewards sees only training
    and validation prompts); every model is scored strictly and leniently on the same test problems."""
    monkeypatch.chdir(ROOT)
    spy, log = tmp_path / "spy.py", tmp_path / "seen.jsonl"
    spy.write_text(SPY)
    monkeypatch.setenv("SPY_LOG", str(log))
    out = tmp_path / "out"
    assert main(["reproduce", "-q", "--config", "configs/smollm2_answers_only.yaml", "--methods",
                 "grpo,sft_more",
                 "--n", "2", "--k", "1,2", "--sample-prompts", "2", f"output_dir={out}",
                 f"sft.model.path={smollm2_two_layers}", "sft.sft.max_steps=2", "sft.sft.batch_size=2",
                 "sft.sft.train_rows=2",
                 "sft.sft.eval_every=1", f"sft.sft.eval_reward={spy}:seen", "sft.data.num_validation=2",
                 "sft.data.num_heldout=3", "sft.sampling.max_new_tokens=4", "rl.data.num_validation=2",
                 "rl.data.num_heldout=3", "rl.train.steps=2", "rl.train.prompts_per_step=1", "rl.grpo.G=2",
                 "rl.train.micro_batch_size=2", "rl.sampling.max_new_tokens=4",
                 "rl.rewards.functions=[{fn: math_accuracy, options: {gold_style: gsm8k}}, "
                 f"{{fn: '{spy}:seen'}}, {{fn: 'tests/fixtures/varied_reward.py:letter_share'}}]"]) == 0, \
        capsys.readouterr().err
    seed = out / "seed0"
    grpo_steps = [json.loads(x) for x in (seed / "grpo" / "metrics.jsonl").read_text().splitlines()]
    budget = sum(x["time/step_cpu"] for x in grpo_steps if "time/step_cpu" in x)
    more = yaml.safe_load((seed / "sft_more" / "config.yaml").read_text())
    best = [json.loads(x) for x in (seed / "sft" / "metrics.jsonl").read_text().splitlines()][-1]
    # the GRPO stage's measured CPU seconds (robust to other work on the machine)
    assert more["sft"]["max_seconds"] == pytest.approx(budget, abs=1e-3) and more["sft"]["clock"] == "cpu"
    assert more["sft"]["start_row"] == best["rows_seen"] == 4 and more["model"]["path"] == str(
        seed / "sft" / "final"
    )
    assert (
        more["data"]["source"] == "data/word_problems_train_answers.jsonl"
        and more["sft"]["train_rows"] is None
    )
    last = [json.loads(x) for x in (seed / "sft_more" / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["train_cpu_seconds"] >= budget or last["step"] == more["sft"]["max_steps"]
    for job in ("sft", "grpo", "sft_more"):  # no training job could read the test split
        assert yaml.safe_load((seed / job / "config.yaml").read_text())["data"]["num_heldout"] == 0
    test = [r["prompt"][0]["content"] for r in map(json.loads,
                                                   Path("data/word_problems_test.jsonl").open())][:3]
    seen = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(seen) > 4 and not any(q in p for p in seen for q in test)
    per_seed = json.loads((out / "results.json").read_text())["per_seed"]["0"]
    assert list(per_seed) == ["sft", "grpo", "sft_more"]
    for row in per_seed.values():
        assert row["num_prompts"] == 3 and row["num_sampled_prompts"] == 2
        assert {"strict_accuracy", "lenient_accuracy"} <= set(row) and row["train_seconds"] > 0
    assert per_seed["grpo"]["train_cpu_seconds"] == pytest.approx(budget)
    text = (out / "results.md").read_text()
    assert "| GRPO beats more SFT at equal compute (GRPO − sft_more) |" in text
    assert "| GRPO beats more SFT at equal compute (GRPO − sft_more), strict |" in text
    assert "| sampled acc. | maj@2 | pass@2 |" in text and "on the first 2 test problems" in text


@needs_smollm2
@pytest.mark.slow
@pytest.mark.parametrize("config, more_data", [
    ("smollm2_tools_vs_sft.yaml", "data/calculator_train_tools.jsonl"),
    ("smollm2_tools_answers_only.yaml", "data/calculator_train_answers.jsonl"),
])
def test_reproduce_scores_a_tool_task_by_greedy_episodes(config, more_data, tmp_path, capsys, monkeypatch,
                                                         smollm2_two_layers):
    """The tools configs shrunk on the first 2 layers of SmolLM2: sft_best on tool-use demonstrations, GRPO
    with multi-turn rollouts and sft_more (on the complete demonstrations, or on the answers alone), each
    scored by greedy episodes on the hard test problems (accuracy and the share that called the tool), with
    no sampled completions."""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    assert main(["reproduce", "-q", "--config", f"configs/{config}", "--methods",
                 "grpo,sft_more",
                 "--n", "2", "--k", "1,2", f"output_dir={out}", f"sft.model.path={smollm2_two_layers}",
                 "sft.sft.max_steps=2", "sft.sft.batch_size=2", "sft.sft.eval_every=1",
                 "sft.data.num_validation=2",
                 "sft.data.num_heldout=2", "sft.sampling.max_new_tokens=8", "rl.data.num_validation=2",
                 "rl.data.num_heldout=2", "rl.train.steps=1", "rl.train.prompts_per_step=1", "rl.grpo.G=2",
                 "rl.train.micro_batch_size=2", "rl.sampling.max_new_tokens=8"]) == 0, capsys.readouterr().err
    per_seed = json.loads((out / "results.json").read_text())["per_seed"]["0"]
    assert list(per_seed) == ["sft", "grpo", "sft_more"]
    for row in per_seed.values():
        assert row["num_prompts"] == 2 and row["pass_at_k"] == {} and 0.0 <= row["tool_call_share"] <= 1.0
    text = (out / "results.md").read_text()
    assert "| GRPO beats more SFT at equal compute (GRPO − sft_more) |" in text and "RL lifts maj" not in text
    # greedy episodes only: no sampled columns, no maj@k / pass@k section, no PPO in the Setup
    assert "sampled acc." not in text and "against k" not in text and "PPO" not in text
    assert not (out / "maj_pass_at_k.png").exists() and (out / "curves.png").stat().st_size > 10_000
    assert f"source: {more_data}" in (out / "seed0" / "sft_more" / "config.yaml").read_text()
