"""Multi-turn rollouts: token in, token out; policy-token masks; turn limits; trainer == sampler; the loop.

A random tiny model rarely samples EOS, so these tests end a policy turn at any of 300 frequent number
tokens (ids 200-499, as if they were end-of-turn tokens): turns end after a few tokens, and every row
lives through several turns, environment answers and cache compactions within 64 tokens.
"""

import json
from types import SimpleNamespace

import pytest
import torch

from grpo.models.tiny import TinyConfig, build_model, build_tokenizer
from grpo.rollout.engine import RolloutEngine, SamplingParams
from grpo.rollout.hf import HFEngine
from grpo.rollout.multiturn import (
    encode_demonstrations,
    encode_episode,
    generate_episodes,
    render_turn,
    turn_ids,
)
from grpo.tools.environment import Turn
from grpo.models.logprobs import completion_logprobs

STOPS = list(range(200, 500))  # conftest.STOP_IDS, which the `stopping_model` fixture ends turns at


class Counter:
    """Answers every turn with 'ok N' (a tool message) and a reward of 0.5, and ends the episode after
    `turns` turns (None: never)."""

    def __init__(self, turns: int | None = None):
        self.turns, self.n, self.seen = turns, 0, []

    def step(self, text: str) -> Turn:
        self.n += 1
        self.seen.append(text)
        if self.turns is not None and self.n >= self.turns:
            return Turn(None, reward=0.5)
        return Turn([{"role": "tool", "content": f"ok {self.n}"}], reward=0.5)


@pytest.fixture(scope="module")
def tiny():
    tok = build_tokenizer()
    return tok, build_model(tok, TinyConfig(hidden_size=32, num_layers=2))


def prompts(tok):
    return [tok("Tom has 3 pens")["input_ids"], tok("hi")["input_ids"], tok("What is 12*13?")["input_ids"]]


def rollout(tiny, lean=True, max_turns=3, turns=None, budget=64, G=2, temperature=1.0, seed=0):
    tok, model = tiny
    engine = HFEngine(model, [tok.eos_token_id] + STOPS, tok.pad_token_id, lean=lean)
    envs = [Counter(turns) for _ in range(3 * G)]
    r, ep = generate_episodes(engine, tok, prompts(tok), envs, SamplingParams(budget, temperature, 1.0, G),
                              max_turns,
                              torch.Generator().manual_seed(seed))
    return r, ep, envs


def test_render_turn_is_what_the_template_appends_after_a_turn(tiny):
    tok, _ = tiny
    assert render_turn(tok, [{"role": "tool", "content": "10063"}]) == "\ntool: 10063\nassistant: "
    assert render_turn(tok, [{"role": "tool", "content": "1"}, {"role": "tool", "content": "2"}]) == \
        "\ntool: 1\ntool: 2\nassistant: "

    class Plain:
        chat_template = None

    assert render_turn(Plain(), [{"role": "tool", "content": "7"}]) == "\n<tool_response>7</tool_response>\n"


def test_policy_mask_marks_exactly_the_sampled_tokens_and_tool_turns_are_appended_verbatim(tiny):
    tok, _ = tiny
    r, ep, envs = rollout(tiny)
    stops = torch.tensor([tok.eos_token_id] + STOPS)
    assert sum(ep.turns) > 6 and any(t == 3 for t in ep.turns)
    for i in range(r.completion_ids.shape[0]):
        n = int(r.completion_mask[i].sum())
        assert r.completion_mask[i, :n].all() and not r.completion_mask[i, n:].any()  # valid tokens: one run
        ids, policy = r.completion_ids[i, :n].tolist(), r.policy_mask[i, :n].tolist()
        assert (r.logp[i, :n][torch.tensor(policy) == 0] == 0).all() and (
            r.logp[i, :n][torch.tensor(policy) == 1] < 0
        ).all()
        # rebuild the row from its episode: each policy turn's sampled tokens, then the rendered answer
        k, turn = 0, 0
        while k < n:
            start = k
            while k < n and policy[k] == 1 and ids[k] not in stops:
                k += 1
            k += 1  # the stop token ends the turn (or the budget ended the row)
            assert all(policy[start:min(k, n)]) and k - start >= 1
            turn += 1
            if turn < ep.turns[i] or (k < n and turn == ep.turns[i]):
                obs = turn_ids(tok, [{"role": "tool", "content": f"ok {turn}"}])
                assert ids[k:k + len(obs)] == obs[:n - k] and not any(policy[k:k + len(obs)])
                k += len(obs)
        assert turn == ep.turns[i] + (policy[n - 1] == 1 and ids[n - 1] not in stops)  # cut inside a turn
        assert len(envs[i].seen) == ep.turns[i] and ep.policy_turns[i] == envs[i].seen
        assert ep.reward[i] == 0.5 * ep.turns[i]


def test_turn_limit_and_environment_end_and_token_budget(tiny):
    r, ep, _ = rollout(tiny, max_turns=2)
    for i, t in enumerate(ep.turns):
        assert t <= 2
        assert ep.max_turns_hit[i] == (t == 2)  # the environment never ends it: only the limit does
        assert r.truncated[i] == (t < 2)  # ended by the 64-token budget instead
        assert r.truncated[i] == (int(r.completion_mask[i].sum()) == 64)
    # the environment ends every episode after one turn: single-turn rollouts
    r, ep, _ = rollout(tiny, turns=1)
    assert not r.policy_mask[r.completion_mask.bool()].eq(0).any() and not any(ep.max_turns_hit)


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "generic"])
def test_trainer_logprobs_of_policy_tokens_equal_the_samplers(tiny, lean):
    """The trainer's one forward over prompt + all turns gives the sampler's log-probs (fp32, 1e-5)."""
    _, model = tiny
    r, ep, _ = rollout(tiny, lean=lean)
    assert max(ep.turns) >= 2
    lp = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                             r.completion_mask).logp.detach()
    diff = ((lp - r.logp) * r.policy_mask).abs().max()
    assert diff < 1e-5
    other, _, _ = rollout(tiny, lean=not lean)
    assert torch.equal(other.completion_ids, r.completion_ids) and torch.equal(
        other.policy_mask, r.policy_mask
    )


def test_same_seed_same_episodes_and_greedy(tiny):
    a, ep_a, _ = rollout(tiny, seed=3)
    b, ep_b, _ = rollout(tiny, seed=3)
    assert torch.equal(a.completion_ids, b.completion_ids) and ep_a.turns == ep_b.turns
    g, _, _ = rollout(tiny, temperature=0.0, G=1)
    assert (g.logp[g.policy_mask.bool()] <= 0).all()


def test_the_update_trains_on_policy_tokens_only(tiny):
    """grpo.train.update with the paper's aggregation, beta=0, mu=1: the gradient is
    -1/N sum_i adv_i / |policy_i| sum_{t in policy_i} grad logp_it (environment tokens only attend)."""
    from grpo.config import TrainConfig
    from grpo.train.update import update_policy

    tok, model = tiny
    r, _, _ = rollout(tiny)
    adv = torch.linspace(-1, 1, r.completion_ids.shape[0])  # [N]
    cfg = TrainConfig()
    cfg.grpo.beta, cfg.sampling.temperature, cfg.optim.grad_clip = 0.0, 1.0, 0.0
    model.zero_grad()
    lp = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask).logp
    mask = r.policy_mask.float()
    (-(adv[:, None] * lp * mask).sum(1) / mask.sum(1)).mean().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    grads = {}
    opt.step = lambda: grads.update({n: p.grad.clone() for n, p in model.named_parameters()})
    stats = update_policy(model, opt, r, adv, None, None, cfg, torch.enable_grad).stats
    for n in expected:
        torch.testing.assert_close(grads[n], expected[n], rtol=1e-4, atol=1e-7)
    assert stats["mismatch/abs_logp_diff_max"] < 1e-5  # measured on policy tokens only (logp 0 on the rest)
    ent = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                              with_entropy=True).entropy.detach()
    assert stats["entropy"] == pytest.approx(float((ent * mask).sum() / mask.sum()), rel=1e-5)


def test_demonstrations_encode_to_the_tokens_a_rollout_holds(tiny):
    tok, _ = tiny
    call = '<tool_call>{"name":"calculator","arguments":{"expression":"347*29"}}</tool_call>'
    episode = [{"role": "assistant", "content": call}, {"role": "tool", "content": "10063"},
               {"role": "assistant", "content": "<answer>10063</answer>"}]
    ids, policy = encode_episode(tok, episode, tok.eos_token_id)
    first = tok(call, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    obs = turn_ids(tok, episode[1:2])
    last = tok("<answer>10063</answer>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ids == first + obs + last and policy == [1] * len(first) + [0] * len(obs) + [1] * len(last)
    assert tok.decode(obs) == "\ntool: 10063\nassistant: "
    batch = encode_demonstrations(tok, [[1, 5], [1]], [episode, episode[2:]], tok.eos_token_id,
                                  tok.pad_token_id)
    assert batch.policy_mask[1].tolist() == [1] * len(last) + [0] * (len(ids) - len(last))
    assert batch.completion_mask.sum(1).tolist() == [len(ids), len(last)]


def test_multi_turn_config_is_checked():
    from grpo.config import TrainConfig, load_config
    from grpo.errors import UserError

    tools = "rollout.tools=[{fn: calculator}]"
    with pytest.raises(UserError, match="need rollout.engine=hf; the vLLM engine samples single turns only"):
        load_config(TrainConfig, None, [tools, "rollout.engine=vllm"])
    with pytest.raises(UserError, match="outcome advantages"):
        load_config(TrainConfig, None, [tools, "algorithm=ppo"])
    with pytest.raises(UserError, match="not both"):
        load_config(TrainConfig, None, [tools, "rollout.environment=env.py:Env"])
    assert load_config(TrainConfig, None, [tools]).rollout.multi_turn


def loop_overrides(model_dir, env, out, *extra):
    return [f"model.path={model_dir}", f"rollout.environment={env}:Counter", "rollout.max_turns=2",
            f"rewards.functions=[{{fn: '{env.parent / 'r.py'}:first_digit'}}]", "train.steps=4",
            "train.prompts_per_step=2", "grpo.G=4", "train.micro_batch_size=4", "sampling.max_new_tokens=48",
            "data.num_train=6", "data.num_heldout=4", "train.eval_every=3", "train.sample_every=1",
            "train.save_every=1", "train.threads=1", "optim.lr=0.01", "optim.warmup_steps=2",
            f"train.output_dir={out}", *extra]


@pytest.mark.slow
def test_the_loop_logs_episodes_and_resumes_exactly(tmp_path, stopping_model):
    from safetensors.torch import load_file

    from grpo.config import TrainConfig, load_config
    from grpo.train.grpo import train

    model_dir, env = stopping_model
    (env.parent / "r.py").write_text("def first_digit(completions, **kw):\n"
                                     "    return [float(c[:1].isdigit() and int(c[0]) % 2) for c in "
                                     "completions]\n")
    straight, resumed = tmp_path / "a", tmp_path / "b"
    train(load_config(TrainConfig, None, loop_overrides(model_dir, env, straight)), progress=False)
    train(load_config(TrainConfig, None, loop_overrides(model_dir, env, resumed, "train.steps=2")),
          progress=False)
    train(load_config(TrainConfig, None, loop_overrides(model_dir, env, resumed, "train.resume=true")),
          progress=False)
    steps = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()][:4]
    for s in steps:
        assert 1 <= s["turns/mean"] <= 2 and 0 <= s["turns/max_turns_hit"] <= 1
        assert s["reward/environment"] == pytest.approx(0.25 * s["turns/mean"])
        assert s["tools/calls"] == 0 and s["mismatch/abs_logp_diff_max"] < 1e-5
    assert any(s["turns/max_turns_hit"] > 0 for s in steps)
    volatile = ("time/", "tokens_per_s", "memory/")
    clean = lambda out: [{k: v for k, v in json.loads(x).items() if not k.startswith(volatile)}  # noqa: E731
                         for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert clean(straight) == clean(resumed)
    assert (straight / "samples.jsonl").read_bytes() == (resumed / "samples.jsonl").read_bytes()
    wa, wb = (
        load_file(straight / "final" / "model.safetensors"),
        load_file(resumed / "final" / "model.safetensors"),
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_the_tools_demo_config_runs_both_stages_and_reports_tool_use(tmp_path, monkeypatch):
    """configs/tools.yaml (a `grpo demo` config) end to end, shrunk: SFT on calculator demonstrations,
    GRPO with the calculator tool, then accuracy and tool use per kind of problem for both models."""
    from pathlib import Path

    from grpo.commands.demo import run_demo

    monkeypatch.chdir(Path(__file__).parents[1])
    summary = run_demo("configs/tools.yaml", [
        f"output_dir={tmp_path}", "sft.sft.max_steps=2", "sft.sft.eval_every=2", "sft.sft.batch_size=4",
        "sft.data.num_heldout=2", "rl.train.steps=2", "rl.train.prompts_per_step=2", "rl.grpo.G=2",
        "rl.train.micro_batch_size=4", "rl.data.num_heldout=4", "rl.sampling.max_new_tokens=16",
        "sft.sampling.max_new_tokens=16"], progress=False)
    for stage in ("sft", "grpo"):
        report = summary["tools"][stage]
        assert "all" in report and set(report) <= {"all", "easy", "hard"} and report["all"]["rows"] == 4
        assert sum(v["rows"] for k, v in report.items() if k != "all") == 4
        assert 0 <= report["all"]["called"] <= 1 and 0 <= report["all"]["accuracy"] <= 1
    steps = [json.loads(x) for x in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert "tools/calls" in steps[0] and "turns/mean" in steps[0]


class _AlwaysEos:
    """A stepper whose every next token is EOS (id 2 of a 5-token vocabulary)."""

    def _logits(self, n: int) -> torch.Tensor:
        return torch.tensor([[0.0, 0.0, 9.0, 0.0, 0.0]]).repeat(n, 1)  # [n, 5]

    def prefill(self, ids, mask, positions, max_new_tokens, repeats=1):
        return self._logits(ids.shape[0])

    def step(self, tokens, positions):
        return self._logits(tokens.shape[0])

    def compact(self, keep):
        pass


class _EosEngine(HFEngine):
    """The built-in engine's decode loop over `_AlwaysEos` (EOS id 2, pad 0)."""

    def __init__(self):
        super().__init__(torch.nn.Linear(1, 1), 2, 0)

    def make_stepper(self, max_len):
        return _AlwaysEos()


class _TwoTokenAnswers:
    """A tokenizer stand-in: every turn decodes to "", every environment answer is tokens [3, 4]."""

    chat_template = None

    def decode(self, ids, skip_special_tokens=True):
        return ""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3, 4]}


@pytest.mark.parametrize("budget, truncated", [(1, True), (2, True), (3, True), (4, False)])
def test_truncated_is_whether_the_episode_was_cut_wherever_the_budget_falls(budget, truncated):
    """EOS, the environment's 2-token answer, EOS, end of episode: a budget of 1-3 tokens cuts the episode
    (after the first EOS, inside the answer, at its end), 4 holds all of it."""
    r, ep = generate_episodes(_EosEngine(), _TwoTokenAnswers(), [[1]], [Counter(turns=2)],
                              SamplingParams(budget, 0.0, 1.0, 1), max_turns=3)
    assert r.completion_ids[0].tolist() == [2, 3, 4, 2][:budget]
    assert r.truncated.tolist() == [truncated]
    assert ep.turns == [1 + (budget == 4)]


def test_multi_turn_calls_nothing_past_the_engine_protocol(tiny):
    """An engine that has the RolloutEngine calls and nothing else (the built-in one's, bound) drives
    generate_episodes to the built-in engine's episodes, token for token."""
    calls = [k for k in vars(RolloutEngine) if not k.startswith("_")]
    assert set(calls) == {"generate", "sync_weights", "prefill", "step", "ended_turns", "append", "finish"}
    tok, model = tiny
    out = []
    for wrap in (lambda e: e, lambda e: SimpleNamespace(**{k: getattr(e, k) for k in calls})):
        engine = wrap(HFEngine(model, [tok.eos_token_id] + STOPS, tok.pad_token_id))
        r, ep = generate_episodes(engine, tok, prompts(tok), [Counter() for _ in range(6)],
                                  SamplingParams(48, 1.0, 1.0, 2), 3, torch.Generator().manual_seed(0))
        out.append((r, ep))
    (a, ep_a), (b, ep_b) = out
    assert sum(ep_a.turns) > 6  # environment tokens were appended
    for f in ("completion_ids", "completion_mask", "policy_mask", "logp", "truncated"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert ep_a == ep_b


class _Prefills(_AlwaysEos):
    prefills = 0

    def prefill(self, *a, **kw):
        _Prefills.prefills += 1
        return super().prefill(*a, **kw)


def test_the_stepwise_calls_of_the_built_in_engine():
    """prefill runs the prompt once; each step gives one token per running row; a row whose turn ended
    (EOS, id 2) goes on after appended tokens (forced: logp 0, policy 0), else stops (not truncated)."""
    engine = _EosEngine()
    engine.make_stepper = lambda max_len: _Prefills()
    engine.prefill([[1], [1, 1]], SamplingParams(8, 0.0, 1.0, 1))
    assert engine.step() and engine.ended_turns() == {0: [2], 1: [2]}
    with pytest.raises(ValueError, match="row 5 did not just end"):
        engine.append(5, [3])
    engine.append(0, [3, 4])  # row 1 gets no answer: its episode is over
    assert engine.step() and engine.ended_turns() == {}  # row 0: 3, forced
    assert engine.step() and engine.ended_turns() == {}  # row 0: 4, forced
    assert engine.step() and engine.ended_turns() == {0: [2]}  # row 0's second turn: EOS again
    engine.append(0, [])  # goes on with no environment tokens
    assert engine.step() and engine.ended_turns() == {0: [2]}
    assert not engine.step()  # row 0 unanswered: every row has stopped
    r = engine.finish()
    assert _Prefills.prefills == 1
    assert r.completion_ids.tolist() == [[2, 3, 4, 2, 2], [2, 0, 0, 0, 0]]
    assert r.policy_mask.tolist() == [[1, 0, 0, 1, 1], [1, 0, 0, 0, 0]]
    assert r.completion_mask.tolist() == [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert (r.logp[:, 1:3] == 0).all() and (r.logp[0, [0, 3, 4]] < 0).all()
    assert r.truncated.tolist() == [False, False]
    with pytest.raises(RuntimeError, match="no decode is open"):
        engine.step()
