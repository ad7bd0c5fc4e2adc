"""Multi-turn rollouts: the policy samples a turn, its environment answers, the policy continues.

Token in, token out (docs/tools.md). A trajectory is one token sequence after the prompt: the
policy's sampled tokens, and after each turn that the environment answers, the answer's tokens as the
chat template renders that turn (`render_turn`), appended. Nothing is ever re-rendered, so the tokens
trained on are exactly the tokens sampled (a template that rewrites earlier turns, e.g. one that drops
earlier <think> blocks, cannot make them drift). In the `Rollout` the whole sequence is the completion:
`completion_mask` marks every token (the trainer's forward attends to all of them) and `policy_mask`
marks the policy's own (1) against the environment's (0); the loss, KL and entropy use `policy_mask`.

The built-in engine keeps each row's KV cache across turns. Environment tokens are fed through the
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

from grpo.models.logprobs import position_ids_from_mask
from grpo.rollout.engine import Rollout, SamplingParams, pad_left
from grpo.rollout.hf import DecodeThreads, LeanDecoder, sample_next

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


def generate_episodes(engine, tokenizer, prompt_ids: list[list[int]], envs: list, params: SamplingParams,
                      max_turns: int, generator: torch.Generator | None = None,
                      parallel: bool = False) -> tuple[Rollout, Episodes]:
    """G episodes of each prompt with `engine` (an HFEngine), `envs[i]` the environment of row i (N rows,
    groups contiguous). Returns the rollout (with policy_mask) and the episodes' statistics. parallel: step
    the environments of rows that end a turn together in threads (their pooled tool calls overlap)."""
    model = engine.model
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ids, mask = pad_left(prompt_ids, engine.pad_id)
    ids, mask = ids.to(device), mask.to(device)  # [n, P]
    N = ids.shape[0] * params.G
    if len(envs) != N:
        raise ValueError(f"generate_episodes: {len(envs)} environments for {N} rows")
    ep = Episodes([0] * N, [0] * N, [0] * N, [False] * N, [0.0] * N, policy_turns=[[] for _ in range(N)])
    try:
        with torch.inference_mode():
            out = _decode_episodes(engine, tokenizer, ids, mask, envs, params, max_turns, generator, ep,
                                   parallel)
    finally:
        model.train(was_training)
    tokens, lp, live, policy, over = (x.clone() for x in out)
    ids, mask = ids.repeat_interleave(params.G, 0), mask.repeat_interleave(params.G, 0)  # [N, P]
    r = Rollout(ids, mask, tokens, live.long(), truncated=~over, logp=lp, policy_mask=policy.long())
    return r, ep


def _decode_episodes(engine, tokenizer, ids, mask, envs, params: SamplingParams, max_turns: int, generator,
                     ep: Episodes, parallel: bool):
    """The decode loop: tokens, logp, live, policy [N, T] and over [N] (the episode ended: the environment
    said so or max_turns was reached). A row's next token is sampled, or, while its environment's answer
    is queued, the answer's next token (forced: logp 0, policy 0)."""
    (n, P), G, device = ids.shape, params.G, ids.device
    N, budget = n * G, params.max_new_tokens
    eos = engine.eos.to(device)
    stepper = engine.make_stepper(P + budget)
    positions = position_ids_from_mask(mask)  # [n, P]
    logits = stepper.prefill(ids, mask, positions, budget, G).repeat_interleave(G, 0)  # [N, V]
    pos = (positions[:, -1] + 1).repeat_interleave(G, 0)  # [N]
    out_tok = torch.full((N, budget), engine.pad_id, dtype=torch.long, device=device)
    out_lp = torch.zeros(N, budget, device=device)
    out_live = torch.zeros(N, budget, dtype=torch.bool, device=device)
    out_policy = torch.zeros(N, budget, dtype=torch.bool, device=device)
    rows = torch.arange(N, device=device)  # original row of each cache row
    alive = torch.ones(N, dtype=torch.bool, device=device)  # [C]
    over = torch.zeros(N, dtype=torch.bool, device=device)  # [N] by original row
    queued: dict[int, list[int]] = {}  # original row -> environment tokens still to feed
    turn: dict[int, list[int]] = {r: [] for r in range(N)}  # original row -> this turn's sampled tokens
    threads = DecodeThreads(device, enabled=isinstance(stepper, LeanDecoder))
    try:
        for t in range(budget):
            tok, lp = sample_next(logits, params.temperature, params.top_p, generator)  # [C]
            forced = torch.zeros_like(alive)
            if queued:
                for c, r in enumerate(rows.tolist()):
                    if queued.get(r):
                        tok[c], forced[c] = queued[r].pop(0), True
                        if not queued[r]:
                            del queued[r]
            tok = tok.masked_fill(~alive, engine.pad_id)
            policy = alive & ~forced
            out_tok[rows, t], out_live[rows, t], out_policy[rows, t] = tok, alive, policy
            out_lp[rows, t] = lp.masked_fill(~policy, 0.0)
            ended = policy & torch.isin(tok, eos)  # [C] a policy turn just ended
            for r, k in zip(rows[policy].tolist(), tok[policy].tolist()):
                turn[r].append(k)
            done = _end_turns(tokenizer, envs, rows[ended].tolist(), turn, queued, ep, max_turns, parallel)
            if done:
                over[done] = True
                alive = alive & ~torch.isin(rows, torch.tensor(done, device=device))
            n_alive = int(alive.sum())
            if n_alive == 0 or t + 1 == budget:
                break
            if n_alive <= 3 * alive.shape[0] // 4:  # drop finished rows from the cache
                keep = alive.nonzero().squeeze(1)  # [C']
                stepper.compact(keep)
                rows, alive, tok, pos = rows[keep], alive[keep], tok[keep], pos[keep]
            threads.before(t)
            logits = stepper.step(tok, pos)
            threads.after(t)
            pos = pos + 1
    finally:
        threads.done()
    T = int(out_live.sum(1).max()) if N else 0
    return out_tok[:, :T], out_lp[:, :T], out_live[:, :T], out_policy[:, :T], over


def _end_turns(tokenizer, envs, ending: list[int], turn: dict, queued: dict, ep: Episodes, max_turns: int,
               parallel: bool) -> list[int]:
    """Step the environments of the rows whose policy turn just ended; queue their answers' tokens.
    Returns the rows whose episode is over."""
    if not ending:
        return []
    texts = [tokenizer.decode(turn[r], skip_special_tokens=True) for r in ending]
    answers = step_environments(envs, ending, texts, parallel)
    done = []
    for r, text, a in zip(ending, texts, answers):
        turn[r] = []
        ep.turns[r] += 1
        ep.policy_turns[r].append(text)
        ep.tool_calls[r] += a.tool_calls
        ep.tool_errors[r] += a.tool_errors
        if a.reward:
            ep.reward[r] += float(a.reward)
            ep.any_reward = True
        if a.messages is None:
            done.append(r)
        elif ep.turns[r] >= max_turns:
            ep.max_turns_hit[r] = True
            done.append(r)
        else:
            queued[r] = turn_ids(tokenizer, a.messages)
    return done


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
