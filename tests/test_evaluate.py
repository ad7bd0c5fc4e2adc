"""`grpo eval`: the maj@k estimator by hand, the whole evaluation on scripted completions with
hand-worked pass@k / maj@k, and the command line end to end on the tiny model."""

import argparse
import json
import math
import random
from itertools import combinations

import pytest
import torch
import yaml

from grpo.algorithm.evaluation import majority_vote
from grpo.errors import UserError
from grpo.utils.json_text import json_text
from grpo.commands.eval import apply_config, build_eval_parser
from grpo.models.tiny import build_tokenizer
from grpo.rewards.loader import load_reward_function
from grpo.rollout.engine import Rollout
from grpo.train.evaluation import (
    answer_equivalence,
    answer_extractor,
    evaluate_policy,
    format_result,
    maj_at_k,
    normalize_answer,
)


def test_normalize_answer_makes_equal_values_vote_together():
    assert normalize_answer("1,234") == normalize_answer("1234") == "1234"
    assert normalize_answer(" 3.50 ") == normalize_answer("3.5") == "3.5"
    assert normalize_answer("$7") == normalize_answer("+7.") == normalize_answer("7.000") == "7"
    assert normalize_answer("-0") == "0" and normalize_answer("100") == "100"
    assert normalize_answer("x  =  2") == "x = 2"
    assert normalize_answer("") is None and normalize_answer(None) is None and normalize_answer(" . ") is None


def test_maj_at_k_hand_worked():
    # gold "4": samples 0 and 1 answer 4 (correct), sample 2 answers 5, sample 3 gives no answer.
    answers, correct = ["4", "4", "5", None], [True, True, False, False]
    assert maj_at_k(answers, correct, 1) == 0.5  # maj@1 = sample accuracy = 2/4
    # 6 pairs; only {5, None} votes 5 ({4, 5} ties and the first seen, 4, wins) -> 5/6
    assert maj_at_k(answers, correct, 2) == pytest.approx(5 / 6, abs=1e-12)
    # every triple holds at least one 4 and at most one 5; ties go to 4 (seen first) -> 1
    assert maj_at_k(answers, correct, 3) == 1.0
    assert maj_at_k(answers, correct, 4) == 1.0
    assert maj_at_k([None, None], [False, False], 2) == 0.0  # no answer at all: wrong
    with pytest.raises(ValueError):
        maj_at_k(answers, correct, 5)


def test_maj_at_k_random_subsets_estimate_the_exact_mean():
    rng = random.Random(1)
    answers = [rng.choice(["7", "7", "7", "8", "9", None]) for _ in range(16)]
    correct = [a == "7" for a in answers]
    k = 8  # C(16, 8) = 12870 subsets > 1000: the estimator draws 1000 of them
    exact = sum(majority_vote([answers[i] for i in s]) == "7" for s in combinations(range(16), k)) / 12870
    assert maj_at_k(answers, correct, k, max_subsets=10**5) == pytest.approx(exact, abs=1e-12)
    drawn = maj_at_k(answers, correct, k, random.Random(0))
    assert drawn != exact and abs(drawn - exact) < 0.047  # 3 sigma of a mean of 1000 Bernoulli draws


def test_maj_at_k_votes_by_the_checkers_equivalence():
    # Gold 1/2: three samples write it three ways (all correct), two answer 2 (wrong).
    answers, correct = ["0.5", "1/2", "\\frac{1}{2}", "2", "2"], [True, True, True, False, False]
    same = answer_equivalence("math_accuracy")
    assert majority_vote(answers, same) == "0.5"
    assert maj_at_k(answers, correct, 5, equivalent=same) == 1.0  # 3 votes against 2
    # k=4 leaves out one sample: leaving out a 2 gives 3-1, leaving out a half a 2-2 tie that the half
    # class wins (seen first): 5/5. By string each half has 1 vote, so {h, h, 2, 2} votes 2: 2/5.
    assert maj_at_k(answers, correct, 4, equivalent=same) == 1.0
    assert maj_at_k(answers, correct, 4) == pytest.approx(2 / 5, abs=1e-12)
    assert maj_at_k(answers, correct, 5) == 0.0
    exact = answer_equivalence("arithmetic_accuracy")  # its checker compares strings
    assert exact("4", "4") and not exact("4", "4.0")


class ScriptedEngine:
    """Returns fixed completions per prompt text: `greedy[prompt]` at
    temperature 0, else `samples[prompt]`."""

    def __init__(self, tokenizer, greedy: dict, samples: dict):
        self.tok, self.greedy, self.samples = tokenizer, greedy, samples

    def generate(self, prompt_ids, params, generator=None):
        prompts = self.tok.batch_decode(prompt_ids, skip_special_tokens=True)
        texts = []
        for p in prompts:
            outs = [self.greedy[p]] if params.temperature == 0 else self.samples[p]
            assert len(outs) == params.G
            texts += outs
        ids = [self.tok(t, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id] for t in texts]
        T = max(map(len, ids))
        comp = torch.tensor([x + [self.tok.pad_token_id] * (T - len(x)) for x in ids])  # [N, T]
        mask = torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in ids])  # [N, T]
        N = len(texts)
        return Rollout(torch.zeros(N, 1, dtype=torch.long), torch.ones(N, 1, dtype=torch.long), comp, mask,
                       torch.zeros(N, dtype=torch.bool))


def _tag(x):
    return f"<answer>{x}</answer>"


def test_evaluate_on_scripted_completions_gives_hand_worked_metrics():
    tok = build_tokenizer()
    rows = [{"prompt": "Ava has 7 pens. How many?\n", "answer": "7"},
            {"prompt": "Leo has 3 cards. How many?\n", "answer": "3"}]
    greedy = {rows[0]["prompt"]: _tag(7), rows[1]["prompt"]: _tag(5)}
    samples = {rows[0]["prompt"]: [_tag(7), _tag(5), _tag(7), "no answer"],   # c = 2
               rows[1]["prompt"]: [_tag(4), _tag(4), _tag(3), _tag(4)]}       # c = 1
    res = evaluate_policy(None, tok, rows, load_reward_function("arithmetic_accuracy"),
                          answer_extractor("arithmetic_accuracy"), n=4, ks=(1, 2, 4),
                          engine=ScriptedEngine(tok, greedy, samples))
    assert res.greedy_accuracy == 0.5 and res.correct_counts == [2, 1] and res.sample_accuracy == 3 / 8
    assert res.greedy_scores == [1.0, 0.0]  # per problem, in order: what a paired comparison reads
    # pass@k = 1 - C(n-c, k)/C(n, k): prompt 1 (c=2): 1/2, 1 - 1/6, 1; prompt 2 (c=1): 1/4, 1 - 3/6, 1
    assert res.pass_at_k[1] == pytest.approx((1 / 2 + 1 / 4) / 2, abs=1e-12)
    assert res.pass_at_k[2] == pytest.approx((5 / 6 + 1 / 2) / 2, abs=1e-12)
    assert res.pass_at_k[4] == 1.0
    # maj@2: prompt 1 pairs {7,5}->7 {7,7} {7,-}->7 {5,7}->5 {5,-}->5 {7,-}->7: 4/6;
    #        prompt 2 pairs with the 3: {4,3}->4 {4,3}->4 {3,4}->3: 1/6. maj@4: 7 wins, 4 wins -> 1, 0.
    assert res.maj_at_k[1] == pytest.approx(res.pass_at_k[1], abs=1e-12)
    assert res.maj_at_k[2] == pytest.approx((4 / 6 + 1 / 6) / 2, abs=1e-12)
    assert res.maj_at_k[4] == 0.5
    assert res.majority_answers == ["7", "4"]
    table = format_result(res, "title")
    assert "pass@k" in table and "66.7%" in table and "41.7%" in table  # pass@2, maj@2
    # sample_prompts=0: greedy only (reproduce's out-of-distribution sets), nothing sampled (no samples given)
    greedy_only = evaluate_policy(None, tok, rows, load_reward_function("arithmetic_accuracy"),
                                  answer_extractor("arithmetic_accuracy"), n=4, ks=(1, 2, 4),
                                  engine=ScriptedEngine(tok, greedy, {}), sample_prompts=0)
    assert (greedy_only.greedy_accuracy, greedy_only.num_prompts, greedy_only.num_sampled_prompts) == \
        (0.5, 2, 0)
    assert greedy_only.greedy_scores == [1.0, 0.0]
    assert greedy_only.pass_at_k == greedy_only.maj_at_k == {} and math.isnan(greedy_only.sample_accuracy)


def test_math_answers_vote_after_normalisation_and_the_math_checker_judges():
    tok = build_tokenizer()
    row = {"prompt": "What is 1000 + 234?\n", "answer": "#### 1,234"}
    samples = {row["prompt"]: [_tag("1,234"), "so \\boxed{1234}", _tag(99), _tag(98)]}
    res = evaluate_policy(None, tok, [row], load_reward_function("math_accuracy"),
                          answer_extractor("math_accuracy"),
                          n=4, ks=(1, 3), engine=ScriptedEngine(tok, {row["prompt"]: _tag(1234)}, samples))
    assert res.greedy_accuracy == 1.0 and res.correct_counts == [2]
    # "1,234" and "1234" are one answer with 2 votes: every triple's majority is it, or a 1-1-1 tie
    # won by the first seen; triples (0,2,3)->1234, (1,2,3)->1234, (0,1,x)->1234: all 4 correct.
    assert res.maj_at_k[3] == 1.0 and res.majority_answers == ["1234"]


def test_evaluate_reports_maj_at_k_over_the_checkers_answer_classes():
    tok = build_tokenizer()
    row = {"prompt": "What is 1 divided by 2?\n", "answer": "\\boxed{\\frac{1}{2}}"}
    samples = {row["prompt"]: [_tag("0.5"), _tag("1/2"), "so \\boxed{\\frac{1}{2}}", _tag(2), _tag(2)]}
    kwargs = dict(n=5, ks=(1, 4, 5), engine=ScriptedEngine(tok, {row["prompt"]: _tag(2)}, samples))
    checker, answer_fn = load_reward_function("math_accuracy"), answer_extractor("math_accuracy")
    same = answer_equivalence("math_accuracy")
    res = evaluate_policy(None, tok, [row], checker, answer_fn, equivalent=same, **kwargs)
    assert res.greedy_accuracy == 0.0 and res.correct_counts == [3]
    # The three halves are one answer (3 votes) against "2" (2 votes); k=4 by hand in the test above.
    assert res.maj_at_k == {1: pytest.approx(3 / 5, abs=1e-12), 4: 1.0, 5: 1.0}
    assert res.majority_answers == ["0.5"]
    by_string = evaluate_policy(None, tok, [row], checker, answer_fn, **kwargs)
    assert by_string.maj_at_k[5] == 0.0 and by_string.majority_answers == ["2"]


def _cli(argv):
    p = argparse.ArgumentParser(prog="grpo")
    build_eval_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["eval", *argv])
    args.fn(args)


def test_cli_eval_on_the_tiny_model_writes_json_and_is_seeded(tmp_path, capsys):
    argv = ["--model", "tiny", "--num-prompts", "3", "--n", "4", "--k", "1,2,4", "--max-new-tokens", "6"]
    _cli(argv + ["--out", str(tmp_path / "a.json")])
    _cli(argv + ["--out", str(tmp_path / "b.json")])
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert {k: v for k, v in a.items() if k != "settings"} == {k: v for k, v in b.items() if k != "settings"}
    assert a["num_prompts"] == 3 and a["n"] == 4 and set(a["pass_at_k"]) == {"1", "2", "4"}
    assert a["settings"]["reward"] == "arithmetic_accuracy"
    p = [a["pass_at_k"][k] for k in ("1", "2", "4")]
    assert p == sorted(p) and all(0 <= x <= 1 for x in p + list(a["maj_at_k"].values()))
    assert a["pass_at_k"]["1"] == pytest.approx(a["sample_accuracy"], abs=1e-12)
    assert len(a["greedy_scores"]) == 3 and sum(a["greedy_scores"]) / 3 == pytest.approx(a["greedy_accuracy"])
    one_line = f'"greedy_scores": {json.dumps(a["greedy_scores"])},'
    assert one_line in (tmp_path / "a.json").read_text()
    out = capsys.readouterr().out
    assert "greedy accuracy" in out and "maj@k" in out and "wrote" in out


@pytest.mark.parametrize("argv, message", [
    (["--n", "4", "--k", "1,8"], "every k must be between 1 and --n 4"),
    (["--k", "1,x"], "comma-separated integers"),
    (["--reward", "no_such_reward"], "unknown reward"),
    (["--model", "/nonexistent/model"], "not a Hugging Face model directory"),
    (["--num-prompts", "100000"], "--num-prompts 100000"),
])
def test_cli_eval_user_errors(argv, message):
    base = {"--model": "tiny", "--n": "8", "--k": "1"}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    with pytest.raises(UserError, match=message.replace("+", r"\+")):
        _cli([x for kv in base.items() for x in kv] + ["--out", ""])


def test_an_adapter_directory_is_refused_with_the_merged_model_named(tmp_path):
    """`final/adapter` of a LoRA run (adapter_config.json, no config.json): the error names `final/`, where
    the run wrote the merged model."""
    adapter = tmp_path / "final" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError,
                       match="holds a LoRA adapter: the merged model a LoRA run writes is in "
                             f"{tmp_path / 'final'}$"):
        _cli(["--model", str(adapter), "--n", "2", "--k", "1", "--out", ""])


def test_cli_eval_takes_its_settings_from_a_train_config_where_flags_are_left_out(tmp_path):
    def parsed(argv):
        p = argparse.ArgumentParser(prog="grpo")
        build_eval_parser(p.add_subparsers(dest="command", required=True))
        args = p.parse_args(["eval", *argv])
        apply_config(args)
        return args

    plain = parsed(["--model", "m"])  # no config: the flags' documented defaults, the reward chosen later
    assert (
        plain.data,
        plain.max_new_tokens,
        plain.max_prompt_length,
        plain.temperature,
        plain.top_p,
        plain.seed,
        plain.device,
        plain.template,
        plain.reward,
    ) == ("builtin:arithmetic", 32, 256, 1.0, 1.0, 0, "auto", None, None)
    config = tmp_path / "run.yaml"
    config.write_text("model: {path: runs/x/final}\nsampling: {max_new_tokens: 5, temperature: 0.5}\n"
                      "rewards: {functions: [{fn: math_accuracy, options: {gold_style: gsm8k}}]}\n")
    args = parsed(["--config", str(config), "--temperature", "0.7", "train.seed=3"])
    assert (args.model, args.max_new_tokens, args.temperature, args.seed) == ("runs/x/final", 5, 0.7, 3)
    assert args.reward == "math_accuracy" and yaml.safe_load(args.reward_options) == {"gold_style": "gsm8k"}
    with pytest.raises(UserError, match="--model is required"):
        parsed([])


def test_each_checker_keeps_its_per_problem_verdicts_on_the_same_greedy_completions():
    tok = build_tokenizer()
    rows = [{"prompt": f"Item {i}. How many?\n", "answer": str(i)} for i in range(3)]
    greedy = {rows[0]["prompt"]: _tag(0), rows[1]["prompt"]: "1", rows[2]["prompt"]: _tag(5)}

    def bare_number(completions, answer, **_):  # the last word, tag or not
        return [float(c.replace("<answer>", " ").replace("</answer>", " ").split()[-1] == a)
                for c, a in zip(completions, answer)]

    res = evaluate_policy(None, tok, rows, load_reward_function("arithmetic_accuracy"),
                          answer_extractor("arithmetic_accuracy"), n=1, ks=(1,),
                          engine=ScriptedEngine(tok, greedy, {}), sample_prompts=0,
                          greedy_checkers={"lenient": bare_number})
    assert res.greedy_scores == [1.0, 0.0, 0.0] and res.greedy_accuracy == pytest.approx(1 / 3)
    assert res.greedy_scores_by_checker == {"lenient": [1.0, 1.0, 0.0]}
    assert res.greedy_by_checker == {"lenient": pytest.approx(2 / 3)}


def test_json_text_puts_each_flat_list_on_one_line_and_reads_back_the_same():
    obj = {"seeds": [0, 1, 2], "per_problem": {"greedy_accuracy": [1.0, 0.0], "none": []},
           "answers": ["a, [b]", None, "{c}\n"], "nested": [[1, 2], {"k": [3]}], "n": 4}
    text = json_text(obj)
    assert json.loads(text) == obj
    lines = text.splitlines()
    assert '  "seeds": [0, 1, 2],' in lines and '    "greedy_accuracy": [1.0, 0.0],' in lines
    assert '    "a, [b]",' in lines  # a bracket in a string: that list is left as json.dumps writes it
    assert '    [1, 2],' in lines and '      "k": [3]' in lines  # flat lists inside others: one line each
