"""Multi-turn rollouts: the policy samples a turn, its environment answers, the policy continues.

Token in, token out (docs/tools.md). A trajectory is one token sequence after the prompt: the
policy's sampled tokens, and after each turn that the environment answers, the answer's tokens as the
chat template renders that turn (`render_turn`), appended. Nothing is ever re-rendered, so the tokens
trained on are exactly the tokens sampled (a template that rewrites earlier turns, e.g. one that drops
earlier <think> blocks, cannot make them drift). In the `Rollout` the whole sequence is the completion:
`completion_mask` marks every token (the trainer's forward attends to all of them) and `policy_mask`
marks the policy's own (1) against the environment's (0); the loss, KL and entropy use `policy_mask`.

`generate_episodes` drives the engine through `RolloutEngine`'s stepwise calls only (prefill, step,
ended_turns, append, finish). The built-in engine keeps each row's KV cache across turns. Environment
tokens (`append`) are fed through the
same one-token decode steps as sampled ones (forced instead of sampled), so no prefix is ever run
twice, rows at different turns share every step (one row sampling its second turn while another is
still reading a tool result), and a row's positions and keys are exactly those of the trainer's forward
over the finished sequence. The cost: an observation of k tokens takes k batched steps rather than
one prefill of k tokens (cheap for short tool results; docs/tools.md). An episode ends when the
environment says so, after `max_turns` policy turns, or when the trajectory reaches
`sampling.max_new_tokens` tokens (policy and environment tokens together: the cache's size). `truncated`
marks the rows whose episode was not over when that budget ran out, wherever it fell: inside a policy
turn, on its EOS with the environment's answer still to come, or inside the answer.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field

import torch

from grpo.rollout.engine import Rollout, RolloutEngine, SamplingParams, pad_left

_SENTINEL = "GRPO_TURN_SENTINEL"


def render_turn(tokenizer, messages: list[dict]) -> str:
    """The text that follows a policy turn (which ended with its EOS token) when `messages` answer it,
    up to and including the prompt of the next assistant turn: what the chat template writes between
    them. With the tiny model's template ("role: content\\n") and one tool message "10063":

        "\\ntool: 10063\\nassistant: "

    Tokenizers without a chat template get "\\n<tool_response>content</tool_response>\\n" per message.
    """
    if not getattr(tokenizer, "chat_template", None):
        return "\n" + "".join(f"<tool_response>{m['content']}</tool_response>\n" for m in messages)
    history = [{"role": "user", "content": "u"}, {"role": "assistant", "content": _SENTINEL}]
    base = tokenizer.apply_chat_template(history, tokenize=False)
    full = tokenizer.apply_chat_template(history + list(messages), tokenize=False, add_generation_prompt=True)
    end = base.index(_SENTINEL) + len(_SENTINEL)
    if not full.startswith(base[:end]):
        raise ValueError("the chat template renders an earlier assistant turn differently once a tool turn "
                         "follows it; multi-turn rollouts need a template that only appends")
    eos = tokenizer.eos_token or ""
    if eos and full.startswith(eos, end):
        end += len(eos)  # the sampled EOS token already wrote it
    return full[end:]


def turn_ids(tokenizer, messages: list[dict]) -> list[int]:
    """`render_turn`'s text as token ids (no special tokens added: the template wrote what it needs)."""
    return tokenizer(render_turn(tokenizer, messages), add_special_tokens=False)["input_ids"]


def encode_episode(tokenizer, turns: list[dict], eos_id: int) -> tuple[list[int], list[int]]:
    """(ids, policy) of a demonstrated episode (SFT warm start): each assistant message's tokens and EOS
    (policy 1), each run of other messages as `turn_ids` (policy 0): the tokens a rollout would hold."""
    ids, policy, pending = [], [], []
    for m in turns + [None]:
        if pending and (m is None or m["role"] == "assistant"):
            obs = turn_ids(tokenizer, pending)
            ids, policy, pending = ids + obs, policy + [0] * len(obs), []
        if m is None:
            break
        if m["role"] == "assistant":
            own = tokenizer(m["content"], add_special_tokens=False)["input_ids"] + [eos_id]
            ids, policy = ids + own, policy + [1] * len(own)
        else:
            pending.append(m)
    return ids, policy


@dataclass
class Episodes:
    """Per trajectory (row) statistics of a multi-turn rollout; all lists [N]."""

    turns: list[int]
    """Policy turns taken."""
    tool_calls: list[int]
    """Tool calls made (environments that report them)."""
    tool_errors: list[int]
    """Of which failed (each became an error observation)."""
    max_turns_hit: list[bool]
    """The environment would have gone on, but max_turns policy turns were reached."""
    reward: list[float]
    """Sum of the environment's per-turn rewards."""
    any_reward: bool = False
    """Whether any turn gave a reward (then it joins the trajectory's reward as `environment`)."""
    policy_turns: list[list[str]] = field(default_factory=list)
    """The text of every policy turn, per row."""


def step_environments(envs, rows: list[int], texts: list[str], parallel: bool):
    """env.step(text) for each ending row; in threads when `parallel` (pooled tool calls then overlap)."""
    if not parallel or len(rows) < 2:
        return [envs[r].step(t) for r, t in zip(rows, texts)]
    with concurrent.futures.ThreadPoolExecutor(min(16, len(rows))) as ex:
        return list(ex.map(lambda rt: envs[rt[0]].step(rt[1]), zip(rows, texts)))


def generate_episodes(engine: RolloutEngine, tokenizer, prompt_ids: list[list[int]], envs: list,
                      params: SamplingParams, max_turns: int, generator: torch.Generator | None = None,
                      parallel: bool = False) -> tuple[Rollout, Episodes]:
    """G episodes of each prompt with `engine`'s stepwise calls, `envs[i]` the environment of row i (N rows,
    groups contiguous). Returns the rollout (with policy_mask) and the episodes' statistics. parallel: step
    the environments of rows that end a turn together in threads (their pooled tool calls overlap)."""
    N = len(prompt_ids) * params.G
    if len(envs) != N:
        raise ValueError(f"generate_episodes: {len(envs)} environments for {N} rows")
    ep = Episodes([0] * N, [0] * N, [0] * N, [False] * N, [0.0] * N, policy_turns=[[] for _ in range(N)])
    engine.prefill(prompt_ids, params)
    try:
        while engine.step(generator):
            turns = engine.ended_turns()
            if turns:
                for row, ids in _end_turns(tokenizer, envs, turns, ep, max_turns, parallel).items():
                    engine.append(row, ids)
    finally:
        rollout = engine.finish()
    return rollout, ep


def _end_turns(tokenizer, envs, turns: dict[int, list[int]], ep: Episodes, max_turns: int,
              parallel: bool) -> dict[int, list[int]]:
    """Step the environments of the rows whose policy turn just ended (`turns`: row -> the turn's tokens).
    Returns the tokens of each answer that goes on (`turn_ids`), by row; the other rows' episodes are over."""
    rows = list(turns)
    texts = [tokenizer.decode(turns[r], skip_special_tokens=True) for r in rows]
    answers = step_environments(envs, rows, texts, parallel)
    going_on = {}
    for r, text, a in zip(rows, texts, answers):
        ep.turns[r] += 1
        ep.policy_turns[r].append(text)
        ep.tool_calls[r] += a.tool_calls
        ep.tool_errors[r] += a.tool_errors
        if a.reward:
            ep.reward[r] += float(a.reward)
            ep.any_reward = True
        if a.messages is None:
            continue
        if ep.turns[r] >= max_turns:
            ep.max_turns_hit[r] = True
        else:
            going_on[r] = turn_ids(tokenizer, a.messages)
    return going_on


def encode_demonstrations(tokenizer, prompt_ids: list[list[int]], episodes: list[list[dict]], eos_id: int,
                          pad_id: int) -> Rollout:
    """Teacher-forcing batch of demonstrated episodes (`encode_episode`): left-padded prompts, right-padded
    episodes, policy_mask on the assistant's tokens (the SFT loss is taken over those only)."""
    p_ids, p_mask = pad_left(prompt_ids, pad_id)  # [B, P]
    encoded = [encode_episode(tokenizer, e, eos_id) for e in episodes]
    T = max(len(ids) for ids, _ in encoded)
    c_ids = torch.full((len(encoded), T), pad_id, dtype=torch.long)  # [B, T]
    c_mask = torch.zeros((len(encoded), T), dtype=torch.long)
    policy = torch.zeros((len(encoded), T), dtype=torch.long)
    for i, (ids, own) in enumerate(encoded):
        c_ids[i, : len(ids)], c_mask[i, : len(ids)], policy[i, : len(ids)] = (
            torch.tensor(ids),
            1,
            torch.tensor(own),
        )
    return Rollout(p_ids, p_mask, c_ids, c_mask, torch.zeros(len(encoded), dtype=torch.bool),
                   policy_mask=policy)
