"""`grpo reproduce` on a minute's budget: methods train over two seeds, are evaluated, and results.md says
so with spreads and verdicts."""

import json

import pytest

from grpo.commands.cli import main
from grpo.errors import UserError
from grpo.config import TrainConfig, load_config
from grpo.commands.reproduce import METHODS, _reused_sft, run_reproduce
from grpo.stats import mean_ci, mean_std, verdict

TINY = ["sft.sft.max_steps=4", "sft.sft.eval_every=2", "sft.sft.batch_size=8", "sft.data.num_heldout=4",
        "sft.data.num_validation=4",
        "sft.data.num_train=64", "sft.sampling.max_new_tokens=12", "rl.train.steps=2",
        "rl.train.prompts_per_step=2",
        "rl.grpo.G=4", "rl.train.micro_batch_size=8", "rl.sampling.max_new_tokens=12",
        "rl.data.num_heldout=4",
        "rl.data.num_train=64", "rl.train.eval_every=1", "sft.model.tiny_hidden_size=32",
        "sft.model.tiny_num_layers=1"]


def test_every_method_is_a_valid_training_config_that_selects_it():
    """The overrides each method adds to the shared RL config (the end-to-end test below trains three)."""
    cfg = {m: load_config(TrainConfig, None, overrides) for m, overrides in METHODS.items()}
    assert [cfg[m].algorithm for m in METHODS] == ["grpo", "grpo", "ppo", "rft", "grpo", "grpo"]
    assert (
        cfg["grpo_process"].grpo.advantage == "process"
        and cfg["grpo_process"].rewards.step_fn == "arithmetic_steps"
    )
    assert cfg["iterative"].train.iterations == 2 and cfg["grpo"].train.iterations == 1


@pytest.mark.slow
def test_reproduce_trains_methods_over_seeds_and_writes_results_with_plots(tmp_path, capsys):
    """SFT, then GRPO, PPO and online RFT from it, over two seeds (8 training processes, 2 at a time)."""
    docs, out = tmp_path / "docs", tmp_path / "out"
    assert main(["reproduce", "-q", "--seeds", "2", "--jobs", "2", "--n", "4", "--k", "1,2,4", "--docs",
                 str(docs),
                 "--methods", "grpo,ppo,rft", f"output_dir={out}", *TINY]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1]
    per_seed = results["per_seed"]
    for i in ("0", "1"):
        assert list(per_seed[i]) == ["sft", "grpo", "ppo", "rft"]
        for name, v in per_seed[i].items():
            assert 0 <= v["greedy_accuracy"] <= 1 and set(v["pass_at_k"]) == {"1", "2", "4"}
            # pass@k never falls as k grows; pass@1 is the sampled accuracy
            p = [v["pass_at_k"][k] for k in ("1", "2", "4")]
            assert p == sorted(p) and p[0] == pytest.approx(v["sample_accuracy"])
        assert all(per_seed[i][m]["peak_mib"] > 50 for m in ("grpo", "ppo", "rft"))
        # value model; reference
        assert (
            per_seed[i]["ppo"]["state_mib"]
            > per_seed[i]["grpo"]["state_mib"]
            > per_seed[i]["rft"]["state_mib"]
        )
        # each method ran the configured algorithm with its seed's SFT model and seed
        run = out / f"seed{i}"
        assert "ppo/value_loss" in (run / "ppo" / "metrics.jsonl").read_text()
        assert "algorithm: rft" in (run / "rft" / "config.yaml").read_text()
        assert f"seed: {i}" in (run / "grpo" / "config.yaml").read_text()
        assert f"path: {run / 'sft' / 'final'}" in (run / "grpo" / "config.yaml").read_text()
        assert f"seed: {i}" in (run / "sft" / "config.yaml").read_text()
        assert "threads: 1" in (run / "sft" / "config.yaml").read_text()  # 2 jobs on 2 cores
        # `python -m grpo sft` and `train` ran as processes and said what they did
        assert "best validation accuracy" in (run / "sft.log").read_text()
        assert (
            "held-out accuracy" in (run / "grpo.log").read_text()
            and (run / "grpo" / "final" / "model.safetensors").is_file()
        )
    # each seed trained its own SFT model on its own data order
    assert (out / "seed0" / "sft" / "metrics.jsonl").read_text() != (
        out / "seed1" / "sft" / "metrics.jsonl"
    ).read_text()
    text = (docs / "results.md").read_text()
    # the table gives mean +- sd over the seeds, and each claim its per-seed differences and verdict
    acc = {m: [per_seed[i][m]["greedy_accuracy"] for i in ("0", "1")] for m in per_seed["0"]}
    mean, sd = mean_std([100 * a for a in acc["grpo"]])
    assert f"| GRPO (outcome) | {mean:.1f} ± {sd:.1f}% |" in text
    diffs = [100 * (g - s) for g, s in zip(acc["grpo"], acc["sft"])]
    m, lo, hi = mean_ci(diffs)
    assert (f"| RL adds points over SFT (GRPO outcome − SFT) | {m:+.1f} ({diffs[0]:+.1f}, {diffs[1]:+.1f}) | "
            f"[{lo:+.1f}, {hi:+.1f}] | {verdict(lo, hi)} |") in text
    for claim in ("GRPO matches or beats PPO", "GRPO beats online RFT", "RL lifts maj@4 more than pass@4"):
        assert f"| {claim}" in text
    # methods not trained
    for claim in ("process supervision beats outcome", "iterative GRPO adds to one run"):
        assert claim not in text
    assert "grpo reproduce --seeds 2 --jobs 2 --n 4 --k 1,2,4 --methods grpo,ppo,rft" in text
    assert "](img/curves.png)" in text
    for png in ("curves.png", "maj_pass_at_k.png", "sft.png"):
        assert (docs / "img" / png).stat().st_size > 10_000

    # --reuse: the finished runs in the output directory are kept, only the evaluation runs again
    logs = {p: p.stat().st_mtime_ns for p in out.glob("seed*/*/metrics.jsonl")}
    capsys.readouterr()
    assert main(["reproduce", "-q", "--seeds", "2", "--n", "2", "--k", "1,2", "--methods", "rft,grpo",
                 "--reuse", f"output_dir={out}", *TINY]) == 0  # one job: evaluated in this process
    printed = capsys.readouterr().out
    assert printed.count("reusing") == 6 and "finished" not in printed  # 2 SFT + 2 x 2 RL runs, none trained
    assert {p: p.stat().st_mtime_ns for p in out.glob("seed*/*/metrics.jsonl")} == logs
    again = json.loads((out / "results.json").read_text())["per_seed"]
    assert list(again["1"]) == ["sft", "rft", "grpo"]
    assert [again[i][m]["greedy_accuracy"] for i in ("0", "1") for m in again["0"]] == \
        [per_seed[i][m]["greedy_accuracy"] for i in ("0", "1") for m in again["0"]]
    # the first invocation's wall time
    assert again["1"]["grpo"]["seconds"] == per_seed["1"]["grpo"]["seconds"]
    # ... unless the configuration differs: then it says which setting and what to do
    assert main(["reproduce", "-q", "--seeds", "2", "--methods", "rft", "--reuse", f"output_dir={out}", *TINY,
                 "rl.train.seed=7"]) == 2
    err = capsys.readouterr().err
    assert (
        f"--reuse: {out / 'seed0' / 'rft'} was trained with train.seed=0, this reproduce asks for 7; delete"
        in err
    )

    # --sft DIR: another reproduce output's SFT models, seed by seed (the same plumbing as --reuse's)
    reused = _reused_sft(out, 1, seeds=2)
    assert (
        reused.model_dir == out / "seed1" / "sft" / "final"
        and reused.best_step == per_seed["1"]["sft"]["best_step"]
    )
    with pytest.raises(UserError, match="no seed2/sft in it"):
        _reused_sft(out, 2, seeds=3)


def test_reproduce_refuses_unknown_methods_and_bad_k(tmp_path):
    with pytest.raises(UserError, match="unknown method 'dpo'"):
        run_reproduce(None, [f"output_dir={tmp_path}"], methods=["grpo", "dpo"])
    with pytest.raises(UserError, match="every k must be in 1..--n"):
        run_reproduce(None, [f"output_dir={tmp_path}"], n=4, ks=[1, 8])
    assert not any(tmp_path.iterdir())  # nothing written
    with pytest.raises(UserError, match="--seeds and --jobs must be >= 1"):
        run_reproduce(None, [f"output_dir={tmp_path}"], seeds=0)
