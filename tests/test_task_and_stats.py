"""The built-in task's variants and splits, SFT's choice on validation, and the statistics of
`grpo reproduce --seeds` (mean, spread, intervals, per-claim verdicts)."""

import json
import math

import pytest
import torch

from grpo.config import DataConfig, SFTConfig, load_config
from grpo.data import load_task
from grpo.data.synthetic import Space, _bucket, make_problems, make_rows, problem_space, step_rewards
from grpo.errors import UserError
from grpo.models.tiny import build_tokenizer
from grpo.commands.reproduce_report import claim_rows
from grpo.stats import binomial_ci, mean_ci, mean_std, paired_ci, t_quantile, verdict

HARD = dict(num_steps=5, max_value=99, max_delta=19, multiply=True)


def test_the_default_task_is_the_original_one():
    # pinned from the 3-step task as it was before the variants existed: same problems, same order
    rows = make_rows(3, "train", 0, 0.6)
    assert [r["prompt"] for r in rows] == [
        "Tom has 7 apples, buys 4, loses 4, gets 9. How many?\n",
        "Sam has 6 apples, wins 7, sells 9, loses 1. How many?\n",
        "Eli has 2 beads, wins 7, sells 5, loses 2. How many?\n"]
    assert [r["answer"] for r in rows] == ["16", "3", "2"]
    assert rows[0]["target"] == "<think></think><answer>16</answer>"
    assert rows[2]["target"] == "<think>2+7=9\n9-5=4\n4-2=2</think><answer>2</answer>"
    assert len(problem_space()) == 25011 and Space().candidates() == 9 * 18 ** 3


def test_splits_are_disjoint_and_depend_on_the_problem_only():
    for space in ({}, HARD):
        train = {(p.start, p.ops) for p in make_problems(3000, "train", 0, validation_percent=10, **space)}
        val = {(p.start, p.ops) for p in make_problems(300, "validation", 0, validation_percent=10, **space)}
        test = {(p.start, p.ops) for p in make_problems(300, "heldout", 0, **space)}
        assert not (train & val) and not (train & test) and not (val & test)
        assert all(_bucket(*p) < 20 for p in test) and all(_bucket(*p) >= 90 for p in val)
        assert all(20 <= _bucket(*p) < 90 for p in train)
        # another seed draws other problems, never from another split
        test1 = {(p.start, p.ops) for p in make_problems(300, "heldout", 1, **space)}
        assert test1 != test and all(_bucket(*p) < 20 for p in test1)
    # without a validation split its problems stay in train
    train = {(p.start, p.ops) for p in make_problems(5000, "train", 0)}
    assert any(_bucket(*p) >= 90 for p in train)


def test_the_hard_variant_is_sampled_in_range_and_every_worked_line_checks():
    assert Space(**HARD).candidates() > 10 ** 6  # too many to list: sampled
    problems = make_problems(400, "train", 0, **HARD)
    assert len({(p.start, p.ops) for p in problems}) == 400
    ops = [op for p in problems for op, _ in p.ops]
    assert {"+", "-", "*"} <= set(ops) and all(len(p.ops) == 5 for p in problems)
    for p in problems:
        value = p.start
        for op, amount in p.ops:
            value = value + amount if op == "+" else value - amount if op == "-" else value * amount
            assert 0 <= value <= 99
        assert value == p.answer
        worked = p.worked_solution()
        assert [r for _, r in step_rewards(worked)] == [1.0] * 5
    doubled = next(p for p in problems if ("*", 2) in p.ops)
    assert "doubles them" in doubled.prompt() and "*2=" in doubled.worked_solution()
    assert step_rewards("<think>4*3=13</think><answer>13</answer>") == [(13, 0.0)]


def test_load_task_builds_validation_and_refuses_it_where_there_is_none(tmp_path):
    tok = build_tokenizer()
    cfg = DataConfig(num_train=300, num_heldout=40, num_validation=30, task_steps=4, task_max_value=49,
                     task_multiply=True)
    task = load_task(cfg, tok, 0)
    assert (len(task.train), len(task.validation), len(task.heldout)) == (300, 30, 40)
    prompts = [
        {r["prompt"].split(" has ")[1] for r in rows} for rows in (task.train, task.validation, task.heldout)
    ]
    assert {len(r["target"].split("\n")) for r in task.train if "=" in r["target"]} == {4}  # lines of working
    assert not (prompts[1] & prompts[2])
    with pytest.raises(UserError, match="builtin:arithmetic.*only"):
        load_task(DataConfig(num_train=30000), tok, 0)  # more problems than the 3-step task has
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "1+1?", "answer": "2"}) + "\n")
    with pytest.raises(UserError, match="num_validation=5: .* has only 1 rows"):
        load_task(DataConfig(source=str(data), num_validation=5), tok, 0)
    val = tmp_path / "v.jsonl"
    val.write_text("".join(json.dumps({"prompt": f"{i}+1?", "answer": str(i + 1)}) + "\n" for i in range(4)))
    assert len(load_task(DataConfig(source=str(data), validation_source=str(val)), tok, 0).validation) == 4


def test_sft_chooses_on_validation_and_never_reads_the_test_split(tmp_path, monkeypatch):
    import grpo.train.sft as sft_module

    read = []
    real = sft_module.evaluate_accuracy
    monkeypatch.setattr(sft_module, "evaluate_accuracy",
                        lambda engine, tok, rows, *a,
                        **k: read.append(rows) or real(engine, tok, rows, *a, **k))
    cfg = load_config(SFTConfig, None, [
        "sft.max_steps=6", "sft.eval_every=2", "sft.batch_size=8", "sft.patience=0", "data.num_train=64",
        "data.num_heldout=6", "data.num_validation=5", "sampling.max_new_tokens=8",
        "model.tiny_hidden_size=32",
        "model.tiny_num_layers=1", "optim.schedule=cosine", "optim.warmup_steps=0",
        f"sft.output_dir={tmp_path / 'sft'}"])
    res = sft_module.sft(cfg, progress=False)
    evals = [h for h in res.history if "eval/accuracy" in h]
    assert [h["step"] for h in evals] == [2, 4, 6] and res.steps == 6  # patience 0: no early stop
    validation = load_task(cfg.data, build_tokenizer(), 0).validation
    assert len(read) == 3 and all(rows == validation for rows in read)  # the test split is never read
    assert res.chose_on_validation and not any("eval/test_accuracy" in h for h in res.history)
    best = max(evals, key=lambda h: (h["eval/accuracy"], -h["step"]))  # the first best on validation
    assert res.best_step == best["step"] and res.best_accuracy == best["eval/accuracy"]
    last = json.loads((tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["rows_seen"] == res.rows_seen == 6 * 8 and last["chose_on_validation"] is True
    assert 0 < res.train_seconds == last["train_seconds"] < res.seconds
    assert 0 < res.train_cpu_seconds == last["train_cpu_seconds"]
    assert res.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine to zero at max_steps


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_sft_stops_when_its_time_is_spent_and_evaluates_there(tmp_path, clock):
    from grpo.train.sft import sft

    cfg = load_config(SFTConfig, None, [
        "sft.max_steps=50", "sft.eval_every=20", "sft.batch_size=4", "sft.patience=0", "data.num_train=32",
        "data.num_heldout=4", "sampling.max_new_tokens=4", "model.tiny_hidden_size=32",
        "model.tiny_num_layers=1", f"sft.clock={clock}",
        "sft.max_seconds=1e-6", f"sft.output_dir={tmp_path / 'sft'}"])
    res = sft(cfg, progress=False)
    assert res.steps == 1 and res.best_step == 1 and res.history[0]["eval/accuracy"] == res.best_accuracy
    spent = res.train_cpu_seconds if clock == "cpu" else res.train_seconds
    assert spent >= 1e-6 and res.rows_seen == 4


def test_a_time_budget_carries_the_decay_to_its_end(tmp_path):
    from grpo.train.optim import make_optimizer
    from grpo.train.sft import sft

    model = torch.nn.Linear(2, 2)
    cfg = load_config(SFTConfig, None, ["optim.schedule=cosine", "optim.warmup_steps=2", "optim.lr=1.0"])
    fraction = {"x": 0.0}
    opt, sched = make_optimizer(model, cfg.optim, 102, lambda: fraction["x"])
    lrs = []
    for x in (0.0, 0.0, 0.0, 0.5, 0.9, 1.0):  # warm-up ignores the budget; then the further-along clock
        fraction["x"] = x
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    # step 3 of 100 after warm-up is 1% along (the step clock leads), then 50%, 90%, all of the budget
    want = [3 / 3, 0.5 * (1 + math.cos(math.pi * 0.01)), 0.5, 0.5 * (1 + math.cos(math.pi * 0.9)), 0.0]
    assert lrs[1:] == pytest.approx(want, abs=1e-12)

    cfg = load_config(SFTConfig, None, [
        "sft.max_steps=1000", "sft.eval_every=1000",
        "sft.batch_size=4", "sft.patience=0", "data.num_train=32",
        "data.num_heldout=4", "sampling.max_new_tokens=4", "model.tiny_hidden_size=32",
        "model.tiny_num_layers=1", "sft.clock=cpu", "sft.max_seconds=0.5", "optim.schedule=cosine",
        "optim.warmup_steps=0", f"sft.output_dir={tmp_path / 'sft'}"])
    res = sft(cfg, progress=False)
    assert 1 < res.steps < 1000 and res.train_cpu_seconds >= 0.5  # the budget, not max_steps, ended it
    assert res.history[-1]["lr"] == 0.0 < res.history[-2]["lr"]  # and the decay ended with it


def test_continuation_is_sized_on_the_matching_clock(tmp_path):
    from grpo.train.sft import SFTResult, continuation_overrides

    cfg = load_config(SFTConfig, None, ["optim.warmup_steps=3"])
    first = SFTResult(tmp_path, tmp_path / "final", 0.5, 4, 8, 100.0, [], train_seconds=40.0,
                      train_cpu_seconds=80.0, rows_seen=512)
    # 8 steps took 80 CPU seconds (10 per step): 200 CPU seconds buy a 20-step horizon, 40 wall ones 50
    cpu = dict(x.split("=", 1) for x in continuation_overrides(cfg, first, 200.0, tmp_path / "more", "cpu"))
    # max_steps is 4x the horizon (a bound: the budget ends the run), evaluations every quarter of it
    assert (cpu["sft.clock"], cpu["sft.max_steps"], cpu["sft.eval_every"]) == ("cpu", "80", "5")
    assert cpu["sft.max_seconds"] == "200.000"
    wall = dict(x.split("=", 1) for x in continuation_overrides(cfg, first, 200.0, tmp_path / "more"))
    assert (wall["sft.clock"], wall["sft.max_steps"], wall["sft.start_row"]) == ("wall", "160", "512")
    with pytest.raises(UserError, match="sft.clock must be 'wall' or 'cpu'"):
        load_config(SFTConfig, None, ["sft.clock=gpu"])


def test_sft_on_a_few_demonstrations_repeats_them(tmp_path, monkeypatch):
    import grpo.train.sft as sft_module

    trained = []
    real = sft_module.encode_pairs
    monkeypatch.setattr(sft_module, "encode_pairs", lambda tok, prompts, targets: trained.append(prompts)
                        or real(tok, prompts, targets))
    overrides = ["sft.max_steps=6", "sft.eval_every=6", "sft.batch_size=4", "sft.patience=0",
                 "data.num_train=64",
                 "data.num_heldout=2", "sampling.max_new_tokens=2", "model.tiny_hidden_size=32",
                 "model.tiny_num_layers=1", "sft.train_rows=8", f"sft.output_dir={tmp_path / 'a'}"]
    sft_module.sft(load_config(SFTConfig, None, overrides), progress=False)
    rows = [p for batch in trained for p in batch]
    assert len(rows) == 24 and len(set(rows)) == 8  # 6 steps x 4 over the same 8 demonstrations
    with pytest.raises(UserError, match="sft.train_rows=2 is fewer than one batch"):
        load_config(SFTConfig, None, ["sft.train_rows=2", "sft.batch_size=4"])


def test_sft_batch_order_continues_where_a_run_stopped():
    import random

    from grpo.train.sft import batch_order

    stream = batch_order(10, 3, random.Random(7))
    first = [next(stream) for _ in range(7)]  # 3 whole batches an epoch; the 10th row waits for the next
    assert all(len(b) == 3 for b in first) and len({i for b in first[:3] for i in b}) == 9
    later = batch_order(10, 3, random.Random(7))
    for _ in range(4):  # sft.start_row=12 with batch_size 3: 4 batches skipped
        next(later)
    assert [next(later) for _ in range(3)] == first[4:]


def test_validation_rows_set_aside_from_a_training_file(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1?",
                                        "answer": str(i + 1)}) + "\n" for i in range(20)))
    tok = build_tokenizer()
    task = load_task(DataConfig(source=str(data), num_validation=5), tok, 0)
    again = load_task(DataConfig(source=str(data), num_validation=5), tok, 3)  # another seed: the same rows
    assert len(task.train) == 15 and len(task.validation) == 5 and task.validation == again.validation
    assert not {r["answer"] for r in task.train} & {r["answer"] for r in task.validation}
    with pytest.raises(UserError, match="num_validation=20: .* has only 20 rows"):
        load_task(DataConfig(source=str(data), num_validation=20), tok, 0)


def test_mean_spread_and_intervals_by_hand():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0) and mean_std([5.0]) == (5.0, 0.0)
    mean, lo, hi = mean_ci([1.0, 2.0, 3.0])  # t(2) = 4.303, sd 1, n 3
    assert (mean, lo, hi) == pytest.approx((2.0, 2 - 4.303 / math.sqrt(3), 2 + 4.303 / math.sqrt(3)))
    assert t_quantile(1) == 12.706 and t_quantile(12) == 2.228 and t_quantile(100) == 1.96
    assert binomial_ci(0.1, 0.5, 200) == pytest.approx((0.1, 0.1 - 0.098, 0.1 + 0.098))
    assert verdict(0.5, 3.0) == "holds beyond noise" and verdict(-1.0, 2.0) == "within noise"
    assert verdict(-3.0, -0.1).startswith("does not hold")
    with pytest.raises(ValueError):
        mean_ci([1.0])


def test_the_interval_over_seeds_and_problems_by_hand():
    table = [[1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 1, 0]]  # 3 seeds x 4 problems: a's score - b's
    # seed means .5, .75, .25: var 1/16, v_s = 1/48; problem means 2/3, 1/3, 1, 0: var 5/27, v_p = 5/108
    mean, lo, hi = paired_ci(table)
    v = 1 / 48 + 5 / 108
    assert v ** 2 / ((1 / 48) ** 2 / 2 + (5 / 108) ** 2 / 3) == pytest.approx(4.84, abs=0.01)  # df -> t(4)
    half = 2.776 * math.sqrt(v)
    assert (mean, lo, hi) == pytest.approx((0.5, 0.5 - half, 0.5 + half), abs=1e-12)
    assert half > mean_ci([0.5, 0.75, 0.25])[2] - 0.5  # wider than the seeds' own interval (4.303 x 1/48^.5)
    # seeds 0, .2, .4 apart and 40 problems +-.73 about them: v_p ~ v_s, df 7.6, t(7) = 2.365 x sqrt(2 v_s)
    # is under the seeds' own 4.303 x sqrt(v_s), which is the floor
    spread = [[seed + (0.73 if p % 2 else -0.73) for p in range(40)] for seed in (0.0, 0.2, 0.4)]
    assert paired_ci(spread) == pytest.approx(mean_ci([0.0, 0.2, 0.4]), abs=1e-12)
    # the order of seeds and of problems does not matter
    assert paired_ci([row[::-1] for row in table[::-1]]) == pytest.approx((mean, lo, hi), abs=1e-12)
    # one seed: the paired problems alone, var([1, 0, 1, 0]) = 1/3 over 4 problems, t(3) = 3.182
    assert paired_ci([table[0]]) == pytest.approx((0.5, 0.5 - 3.182 / 12 ** 0.5, 0.5 + 3.182 / 12 ** 0.5))
    # the same seed three times: no spread of training, the problems' part and its df unchanged
    assert paired_ci([table[0]] * 3) == pytest.approx(paired_ci([table[0]]))
    assert paired_ci([[0.2, 0.2], [0.2, 0.2]]) == pytest.approx((0.2, 0.2, 0.2))
    for bad in ([[1, 0], [1]], [[1]], []):
        with pytest.raises(ValueError, match="same >= 2 problems"):
            paired_ci(bad)


def _row(greedy, maj, pas, peak=None, state=None):
    r = {"greedy_accuracy": greedy, "maj_at_k": {4: maj}, "pass_at_k": {4: pas}}
    return r if peak is None else {**r, "run_peak_mib": peak, "state_mib": state}


def test_claims_are_judged_on_the_per_seed_differences():
    per_seed = {i: {"sft": _row(0.30 + 0.01 * i, 0.40, 0.90),
                    "grpo": _row(0.60 + 0.02 * i, 0.70, 0.92, 400, 26.0),
                    "ppo": _row(0.61 - 0.02 * i, 0.70, 0.92, 600, 50.0)} for i in range(3)}
    rows, notes = claim_rows(per_seed, 4, 500)
    # GRPO - SFT per seed: 30, 31, 32 points: mean 31, sd 1, interval 31 +- 4.303 / sqrt(3)
    half = 4.303 / math.sqrt(3)
    assert (f"| RL adds points over SFT (GRPO outcome − SFT) | +31.0 (+30.0, +31.0, +32.0) | "
            f"[{31 - half:+.1f}, {31 + half:+.1f}] | holds beyond noise |") in rows
    # GRPO - PPO per seed: -1, +3, +7 points: mean 3, sd 4, interval 3 +- 4.303 * 4 / sqrt(3): within noise
    assert any(r.startswith("| GRPO matches or beats PPO") and "+3.0 (-1.0, +3.0, +7.0)" in r
               and r.endswith("| within noise |") for r in rows)
    # maj@4 gain 30 points, pass@4 gain 2 on every seed: sd 0, so the interval is the point itself
    assert any(r.startswith("| RL lifts maj@4 more than pass@4") and "+28.0" in r
               and "holds beyond noise" in r
               for r in rows)
    assert any("0.67-0.67x PPO's" in n and "holds on every seed" in n for n in notes)
    assert any("+15 points over SFT is met on average (+31.0)" in n for n in notes)
    one = {0: per_seed[0]}  # one seed: the test set's binomial interval, said to be the only noise counted
    rows1, notes1 = claim_rows(one, 4, 500)
    p = (0.30 + 0.60) / 2
    half1 = 196 * math.sqrt(2 * p * (1 - p) / 500)
    assert f"| +30.0 (+30.0) | [{30 - half1:+.1f}, {30 + half1:+.1f}] | holds beyond noise |" in rows1[2]
    assert any("binomial noise only" in n for n in notes1)
