"""The benchmark harness (bench/): what it runs and how it reduces the runs, without running TRL.

The TRL side needs its own environment (bash bench/setup_trl.sh) and minutes per run, so it is not
run here; these tests hold the parts that decide the figures: the work's grpo config, the flags that carry
the work to each side, the per-run figures and the ratios, and that a clone has everything the scripts use.
"""

import argparse
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import add_rewards  # noqa: E402
import compare  # noqa: E402
import compare_real  # noqa: E402
import cost_growth  # noqa: E402
import side_by_side  # noqa: E402
from work import Work, add_work_arguments, grpo_overrides, work_flags, work_from_args  # noqa: E402


def test_bench_needs_nothing_outside_the_checkout():
    """The scripts once ran the peer harness from ../shared/peers, which a clone does not have."""
    for path in sorted(BENCH.iterdir()):
        if path.suffix in (".sh", ".py", ".txt"):
            text = path.read_text()
            assert "shared/peers" not in text and "PEERS" not in text, path.name
    for script in ("run_bench.sh", "run_real_bench.sh", "run_cost_growth.sh"):
        assert "setup_trl.sh" in (BENCH / script).read_text()  # the TRL environment is made on first use


def test_trl_requirements_pin_trl_and_agree_with_constraints():
    """TRL's environment runs the transformers, accelerate, ... that grpo's tests pass on: the sides differ
    by the trainer alone."""
    pins = dict(line.split("==") for line in (BENCH / "requirements-trl.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    tested = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                  if "==" in line and not line.startswith("#"))
    assert pins["trl"] == "1.16.0" and pins["transformers"] == tested["transformers"]
    assert {k: v for k, v in pins.items() if k in tested and v != tested[k]} == {}


def test_work_gives_grpo_the_shared_settings():
    from grpo.config import TrainConfig
    from grpo.config_io import load_config

    w = Work(Path("/models/m"), prompts_per_step=4, G=8, max_new_tokens=64, temperature=0.7,
             learning_rate=1e-5, max_steps=4, answer_position="last", lora=True)
    cfg = load_config(TrainConfig, None, grpo_overrides(w, Path("/tmp/run")))
    assert (cfg.grpo.G, cfg.train.prompts_per_step, cfg.train.micro_batch_size) == (8, 4, 32)  # one forward
    assert (cfg.sampling.max_new_tokens, cfg.sampling.temperature, cfg.sampling.top_p) == (64, 0.7, 1.0)
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.schedule, cfg.optim.betas) == \
        (1e-5, 0, "linear", [0.9, 0.999])
    assert (cfg.grpo.beta, cfg.grpo.mu, cfg.train.steps, cfg.train.threads, cfg.model.dtype) == \
        (0.04, 1, 4, 2, "float32")
    assert (cfg.model.lora.r, cfg.model.lora.alpha, cfg.model.lora.dropout) == (16, 32, 0.0)
    assert [(e.fn.rsplit(":", 1)[1], e.weight) for e in cfg.rewards.functions] == \
        [("correctness_last", 1.0), ("starts_with_int", 0.1)]
    assert Path(cfg.rewards.functions[0].fn.rsplit(":", 1)[0]) == BENCH / "add_rewards.py"
    assert cfg.data.heldout_source is None and cfg.train.eval_every == 0  # nothing but training is run


def test_work_flags_carry_the_work_to_another_process():
    w = Work(Path("/models/m"), G=4, max_new_tokens=128, lora=True, learning_rate=3e-6,
             answer_position="last")
    p = argparse.ArgumentParser()
    add_work_arguments(p)
    assert work_from_args(p.parse_args(work_flags(w))) == w
    assert work_from_args(p.parse_args(["/m"])) == Work(Path("/m"))  # the defaults are Work's


def test_run_figures():
    # steps 3 and 4 after the 2 warm-up steps: s/step median(4, 6) = 5; generation 80 + 100 tokens in 2 + 2 s
    f = side_by_side.run_figures([9.0, 5.0, 4.0, 6.0], [3.0, 2.0, 2.0, 2.0], [100, 120, 80, 100])
    assert f["sec_per_step_median_after_2"] == 5.0 and f["sec_per_step_mean"] == 6.0
    assert f["gen_sec_per_step_median_after_2"] == 2.0 and f["gen_completion_tok_per_s"] == 45.0
    assert f["completion_tokens_per_step_mean"] == 100.0  # every step's tokens, warm-up included
    one = side_by_side.run_figures([7.0], [3.0], [30])  # a 1-step run keeps its step
    assert one["sec_per_step_median_after_2"] == 7.0 and one["gen_completion_tok_per_s"] == 10.0


def test_grpo_figures_from_step_records():
    rec = lambda s, gen, ref, upd, fwd: {"time/step": s, "time/generate": gen, "time/reference": ref,  # noqa: E731
                                         "time/update": upd, "time/update/forward": fwd,
                                         "completion/len_mean": 10.0, "reward/mean": 0.5}
    history = [rec(9, 4, 1, 4, 2), rec(8, 3, 1, 4, 2), rec(6, 2, 1, 3, 1), rec(6, 2, 1, 3, 1),
               {"step": 4, "eval/accuracy": 0.5}]  # the final evaluation record has no time/step
    f = side_by_side.grpo_figures(history, batch=32)
    assert (f["steps"], f["sec_per_step_median_after_2"], f["completion_tokens_per_step_mean"]) == (4, 6, 320)
    assert f["phase_sec_median_after_2"]["update"] == 3 and f["update_split_sec_median_after_2"] == \
        {"forward": 1, "clip_grad": 0.0, "optimizer": 0.0, "backward_and_loss": 2}


def test_ratios_and_table():
    def runs(s, tokens, rss):
        return [{"sec_per_step_median_after_2": s, "sec_per_step_mean": s + 1,
                 "completion_tokens_per_step_mean": tokens, "gen_sec_per_step_median_after_2": 1.0,
                 "peak_rss_mb": rss}]

    summary = {"trl": side_by_side.summarise(runs(10.0, 100, 1000)),
               "grpo": side_by_side.summarise(runs(4.0, 90, 400)),
               "grpo_lora": side_by_side.summarise(runs(4.0, 100, 300))}  # no trl_lora: no ratio
    r = side_by_side.ratios(summary)
    assert list(r) == ["grpo"]
    # steps/s 0.25 / 0.1; tokens/s 22.5 / 10; RSS 400 / 1000
    assert r["grpo"]["steps_per_s"] == pytest.approx(2.5)
    assert r["grpo"]["completion_tok_per_s"] == pytest.approx(2.25)
    assert r["grpo"]["peak_rss"] == pytest.approx(0.4)
    table = side_by_side.format_table(summary, r)
    assert "grpo / trl: steps/s x2.50, completion tokens/s x2.25, peak RSS x0.40" in table
    assert table.splitlines()[1].split()[:4] == ["trl", "10", "(10)", "11"]  # all steps: warm-up included


def test_side_commands(tmp_path):
    args = side_by_side.parse_args(["/m", "--out", str(tmp_path), "--sides", "trl,grpo,grpo_api,grpo_bf16",
                                    "--variant", "grpo_bf16", "model.dtype=bfloat16"])
    w = work_from_args(args)
    cli = side_by_side.side_command("grpo_bf16", w, tmp_path / "r", tmp_path / "r.json", args)
    assert cli[1:4] == ["-m", "grpo", "train"] and cli[-1] == "model.dtype=bfloat16"
    assert f"train.output_dir={tmp_path / 'r'}" in cli
    trl = side_by_side.side_command("trl", w, tmp_path / "r", tmp_path / "r.json", args)
    assert trl[0] == args.trl_python and Path(trl[1]) == BENCH / "trl_grpo.py" and trl[2] == "/m"
    with pytest.raises(SystemExit):
        side_by_side.parse_args(["/m", "--out", str(tmp_path), "--sides", "trl,grpo_fast"])


def test_trl_side_scores_with_the_same_reward_functions():
    """TRL hands conversational completions over as message lists; the rewards read the text."""
    import trl_grpo  # imports TRL only inside main()

    reward = trl_grpo.text_reward(add_rewards.correctness_last)
    completions = [[{"role": "assistant", "content": "3 + 4 = 7\n#### 24"}], "it is 25"]
    assert reward(["p", "p"], completions, [[1], [2]], answer=["so #### 24", "#### 24"]) == [1.0, 0.0]
    assert reward.__name__ == "correctness_last"


def finished(s, tokens, rss):
    """A run's figures as side_by_side.run_side returns them (the fields summarise reads)."""
    return {"sec_per_step_median_after_2": s, "sec_per_step_mean": s,
            "completion_tokens_per_step_mean": tokens, "gen_sec_per_step_median_after_2": 1.0,
            "peak_rss_mb": rss}


def stopped(failed, rss):
    return {"failed": failed, "rc": -9, "peak_rss_mb": rss}


def test_a_failed_run_is_a_result():
    """A side that runs out of memory or fails no longer ends the invocation: it is a row of the table."""
    assert side_by_side.failure(-9, "") == "out of memory"  # SIGKILL: the kernel's OOM killer
    assert side_by_side.failure(137, "") == "out of memory"  # the same through a shell
    assert side_by_side.failure(1, "torch.OutOfMemoryError: CPU") == "out of memory"
    assert side_by_side.failure(1, "Traceback ...\nValueError: x") == "failed (rc 1)"
    oom = "out of memory"
    summary = {"trl": side_by_side.summarise([stopped(oom, 9000), stopped(oom, 8000)]),
               "grpo": side_by_side.summarise([finished(4.0, 80, 400), stopped("failed (rc 1)", 100),
                                               finished(6.0, 100, 600)])}
    assert summary["trl"] == {"runs": 0, "failed": oom, "failures": [oom, oom], "peak_rss_mib": 8500}
    # grpo: the two finished runs alone, s/step median(4, 6) = 5, 90 tokens per step
    g = summary["grpo"]
    assert (g["runs"], g["sec_per_step"], g["completion_tok_per_s"], g["peak_rss_mib"]) == (2, 5.0, 18.0, 500)
    assert side_by_side.ratios(summary) == {}  # no ratio against a side that never finished
    lines = side_by_side.format_table(summary, {}).splitlines()
    assert lines[1] == "trl            out of memory (peak RSS 8,500 MiB when it stopped)"
    assert lines[-1] == "grpo: 1 run(s) left out of the medians: failed (rc 1)"


def write_runs(out: Path, runs: dict[str, list[dict]]):
    """Fabricated OUT/SIDE-N.json files, as side_by_side.run_side writes them."""
    for side, records in runs.items():
        for n, r in enumerate(records, 1):
            (out / f"{side}-{n}.json").write_text(json.dumps({"side": side, **r}) + "\n")


def test_compare_reports_a_failed_side(tmp_path, capsys, monkeypatch):
    """compare.py on a folder where TRL ran out of memory every time, one grpo run failed and grpo_bf16 never
    finished: rows for the failures, n/a ratios, and medians over grpo's finished runs."""
    grpo = lambda s, tok_s, rss: {**finished(s, 90, rss), "gen_completion_tok_per_s": tok_s}  # noqa: E731
    write_runs(tmp_path, {"trl": [stopped("out of memory", 9000), stopped("out of memory", 8000)],
                          "grpo": [grpo(4.0, 40, 400), stopped("failed (rc 1)", 100), grpo(6.0, 60, 600)],
                          "grpo_bf16": [{**stopped("failed (rc 1)", 300), "rc": 1}]})
    result = compare.main([str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert "trl        out of memory (peak RSS 8,500 MiB when it stopped)" in lines
    # grpo: median(4, 6) = 5 s/step, 0.2 steps/s, gen 1 s, median(40, 60) = 50 tok/s, 90 tokens, 500 MiB
    assert "grpo          5.000     0.20   1.000         50        90      500M" in lines
    assert "grpo_bf16  failed (rc 1) (peak RSS 300 MiB when it stopped)" in lines
    assert "grpo / trl        n/a (trl: out of memory)" in lines
    assert "grpo_bf16 / trl   n/a (grpo_bf16: failed (rc 1); trl: out of memory)" in lines
    assert "bf16 / fp32 (grpo): n/a" in lines
    assert lines[-1] == "grpo: 1 run(s) left out of the medians: failed (rc 1)"
    assert result["ratios"] == {"grpo": None, "grpo_bf16": None}
    assert json.loads((tmp_path / "summary.json").read_text())["summary"]["trl"]["peak_rss_mib"] == 8500

    # TRL finished, grpo_api ran out of memory: grpo's ratios, and FLOP/s for the finished sides only
    (tmp_path / "config.json").write_text(json.dumps(
        {"hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 16, "intermediate_size": 16,
         "num_attention_heads": 2}))
    for f in tmp_path.glob("*.json"):
        if f.name != "config.json":
            f.unlink()
    phases = {"generate": 1.0, "reference": 0.5, "update": 2.0}
    write_runs(tmp_path, {
        "trl": [{**finished(10.0, 90, 1000), "gen_completion_tok_per_s": 10, "prompt_tokens_mean": 5,
                 "settings": {"num_generations": 2, "per_device_train_batch_size": 4}}],
        "grpo": [{**grpo(4.0, 40, 400), "phase_sec_median_after_2": phases,
                  "settings": {"G": 2, "prompts_per_step": 2}}],
        "grpo_api": [stopped("out of memory", 7000)]})
    monkeypatch.setattr(compare, "matmul_flops", lambda dtype, n: 1e9)
    result = compare.main([str(tmp_path), "--model", str(tmp_path), "--flops"])
    lines = capsys.readouterr().out.splitlines()
    # steps/s 0.25 / 0.1; gen tok/s 40 / 10; RSS 400 / 1000
    assert "grpo / trl        steps/s x2.50   gen tok/s x4.00   peak RSS x0.40" in lines
    assert "grpo_api / trl    n/a (grpo_api: out of memory)" in lines
    assert sorted(result["flops"]) == ["grpo", "trl"] and result["flops"]["grpo"]["update"]["seconds"] == 2.0


def test_compare_real_reports_a_failed_side(tmp_path, capsys, monkeypatch):
    """compare_real.py: a side that never finished is a row without a floor; the floors of the others come
    from their finished runs."""
    (tmp_path / "config.json").write_text(json.dumps(
        {"hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 16, "intermediate_size": 16,
         "num_attention_heads": 2}))
    trl = {**finished(40.0, 40, 2048), "prompt_tokens_mean": 5,
           "settings": {"num_generations": 2, "per_device_train_batch_size": 4, "max_completion_length": 10,
                        "beta": 0.0}}
    grpo = {**finished(20.0, 40, 1024), "phase_sec_median_after_2": {"generate": 5.0, "reference": 0.0,
                                                                      "update": 14.0},
            "settings": {"G": 2, "prompts_per_step": 2, "max_new_tokens": 10, "beta": 0.0}}
    write_runs(tmp_path, {"trl": [trl], "grpo": [stopped("failed (rc 1)", 300), grpo],
                          "grpo_lora": [stopped("out of memory", 61440)]})
    monkeypatch.setattr(compare_real, "matmul_flops", lambda dtype, n: 1e4)
    monkeypatch.setattr(compare_real, "read_bandwidth", lambda: 1e4)
    result = compare_real.main([str(tmp_path), "--model", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    # matmul parameters (2 heads of 4, as many kv heads): q 8x8, k and v 2 x 8x8, o 8x8, MLP 3 x 8x16,
    # LM head 8x16 = 64 + 128 + 64 + 384 + 128 = 768, 3072 bytes; 4 rows of 5 + 10 tokens = 60 tokens
    # generate = 10 decode steps x 3072 bytes / 1e4 + 2 x 768 x 2 prompts x 5 / 1e4 = 3.072 + 1.536 s
    # update = 6 x 768 x 60 / 1e4 = 27.648 s; no reference (beta 0); step 32.256 s, 20 / 32.256 = 0.62 of it;
    # 1000 x 20 s / 40 tokens = 500 s per 1k tokens
    assert result["floors"]["grpo"]["step"] == pytest.approx(32.256)
    assert "grpo             20.0   32.3    0.62       40    500.0    1.0    0.0   14.0     1.00G" in lines
    assert "grpo_lora     out of memory (peak RSS 61,440 MiB when it stopped)" in lines
    assert lines[-1] == "grpo: 1 run(s) left out of the medians: failed (rc 1)"
    assert sorted(result["floors"]) == ["grpo", "trl"]

    # no finished run recorded the prompts' length: the table, without floors
    (tmp_path / "trl-1.json").write_text(json.dumps(stopped("out of memory", 9000)))
    result = compare_real.main([str(tmp_path), "--model", str(tmp_path)])
    out = capsys.readouterr().out
    assert result["floors"] == {} and "no floors" in out
    assert "trl           out of memory (peak RSS 9,000 MiB when it stopped)" in out.splitlines()


def test_cost_growth_settings_vary_one_factor_at_a_time():
    rows = cost_growth.series([64, 128, 256], [4, 8, 16], base_length=64, base_G=8)
    length = "completion length"
    assert [(f, v, s.tokens, s.G) for f, v, s in rows] == [
        (length, 64, 64, 8), (length, 128, 128, 8), (length, 256, 256, 8),
        ("G", 4, 64, 4), ("G", 8, 64, 8), ("G", 16, 64, 16)]
    assert [s.name for s in cost_growth.settings(rows)] == \
        ["len64_G8", "len128_G8", "len256_G8", "len64_G4", "len64_G16"]  # (64, 8) once


def growth_result(tokens, G, trl=None, grpo=None):
    """One setting's side_by_side.json: trl takes tokens x G / 16 s per step and 4 x tokens x G MiB, grpo
    half the time and half the memory; 2 x tokens x G completion tokens per step on both."""
    n = tokens * G
    summary = {"trl": side_by_side.summarise([trl or finished(n / 16, 2 * n, 4 * n)]),
               "grpo": side_by_side.summarise([grpo or finished(n / 32, 2 * n, 2 * n)])}
    return {"summary": summary, "ratios": side_by_side.ratios(summary)}


def test_cost_growth_table_and_plot(tmp_path):
    rows = cost_growth.series([64, 128, 256], [4, 8, 16], base_length=64, base_G=8)
    results = {s.name: growth_result(s.tokens, s.G) for s in cost_growth.settings(rows)}
    results["len256_G8"] = growth_result(256, 8, trl=stopped("out of memory", 61440))
    results["len64_G16"] = growth_result(64, 16, grpo={**stopped("failed (rc 1)", 500), "rc": 1})
    table_rows = cost_growth.cost_rows(rows, results)
    assert len(table_rows) == 12 and [r["side"] for r in table_rows[:2]] == ["trl", "grpo"]
    # the shared point is a row of both series, with the same figures
    shared = [r for r in table_rows if (r["tokens"], r["G"], r["side"]) == (64, 8, "grpo")]
    assert [r["factor"] for r in shared] == ["completion length", "G"]
    assert shared[0]["sec_per_step"] == shared[1]["sec_per_step"] == 16.0
    table = cost_growth.write_report(table_rows, tmp_path)
    lines = table.splitlines()
    assert lines[0].startswith("| factor | value | side | s/step | completion tokens/s | peak RSS GiB |")
    # 64 x 8: trl 32 s/step, 1024 tokens, 2048 MiB; grpo 16 s/step (x2.00 the steps/s), 1024 MiB (x0.50)
    assert lines[2] == "| completion length (G=8) | 64 | trl | 32 | 32.0 | 2.00 |  |  |"
    assert lines[3] == "| completion length (G=8) | 64 | grpo | 16 | 64.0 | 1.00 | x2.00 | x0.50 |"
    # 256 tokens: TRL killed at 60 GiB, grpo 64 s/step and 4 GiB with no ratio to a side that did not finish
    assert lines[6] == \
        "| completion length (G=8) | 256 | trl | out of memory |  | 60.00 when it stopped |  |  |"
    assert lines[7] == "| completion length (G=8) | 256 | grpo | 64 | 64.0 | 4.00 |  |  |"
    assert lines[13] == "| G (64 tokens) | 16 | grpo | failed (rc 1) |  | 0.49 when it stopped |  |  |"
    assert (tmp_path / "cost_growth.md").read_text() == table + "\n"
    saved = json.loads((tmp_path / "cost_growth.json").read_text())["rows"]
    assert saved[4]["status"] == "out of memory" and saved[4]["peak_rss_gib"] == 60.0
    png = (tmp_path / "cost_growth.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_cost_growth_reuse_runs_only_the_settings_not_done(tmp_path, monkeypatch):
    for name, (tokens, G) in {"len64_G8": (64, 8), "len128_G8": (128, 8)}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "side_by_side.json").write_text(json.dumps(growth_result(tokens, G)))
    (tmp_path / "len64_G16").mkdir()
    (tmp_path / "len64_G16" / "side_by_side.json").write_text("{}")  # stale: without --reuse it is run again
    calls = []

    def fake_run(s, args, passthrough):
        calls.append(cost_growth.side_by_side_argv(s, args, passthrough))
        (args.out / s.name).mkdir(exist_ok=True)
        (args.out / s.name / "side_by_side.json").write_text(json.dumps(growth_result(s.tokens, s.G)))

    monkeypatch.setattr(cost_growth, "run_setting", fake_run)
    argv = ["/m", "--out", str(tmp_path), "--lengths", "64,128", "--groups", "4,8", "--steps", "3",
            "--num-prompts", "16"]
    cost_growth.main(argv + ["--reuse"])
    assert [c[c.index("--out") + 1] for c in calls] == [str(tmp_path / "len64_G4")]
    assert calls[0][:3] == ["/m", "--num-prompts", "16"]  # side_by_side's own flags pass through
    assert calls[0][calls[0].index("--G") + 1] == "4" and calls[0][calls[0].index("--max-steps") + 1] == "3"
    assert len((tmp_path / "cost_growth.md").read_text().splitlines()) == 2 + 4 * 2
    calls.clear()
    cost_growth.main(argv)  # without --reuse every setting runs again
    assert len(calls) == 3
    with pytest.raises(SystemExit):  # the script sets G for each setting
        cost_growth.parse_args(["/m", "--out", str(tmp_path), "--G", "4"])


def test_cost_growth_script_runs_the_real_bench_work():
    """run_cost_growth.sh's settings are run_real_bench.sh's work, with the completion length and G varied."""
    real, growth = (BENCH / "run_real_bench.sh").read_text(), (BENCH / "run_cost_growth.sh").read_text()
    for flags in ('--num-prompts "${NUM_PROMPTS:-64}"', '--prompts-per-step "${PPS:-4}"',
                  "--answer-position last --max-prompt-length 256 --temperature 0.7 --learning-rate 1e-5 "
                  "--beta 0.04",
                  '--prompts-jsonl "$ROOT/data/word_problems_train.jsonl"'):
        assert flags in real and flags in growth, flags
    assert ('--lengths "${LENGTHS:-64,128,256}" --groups "${GROUP_SIZES:-4,8,16}" --base-length 64 '
            '--base-G 8') in growth
