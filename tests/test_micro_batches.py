"""Micro-batches by length (grpo.train.update.micro_batches): which rows go together, which columns they
keep, and that the update they feed is the one a single unpadded-order forward gives.

The batch: 4 prompts of different lengths x G=3, completions of lengths spread over 1..9 (T = 9), so
that sorting and cutting matter.
"""

from contextlib import nullcontext

import pytest
import torch

import grpo.train.update as update
from grpo.algorithm import policy_loss
from grpo.config import TrainConfig, load_config
from grpo.rollout.engine import Rollout
from grpo.train.distributed import Dist
from grpo.models.logprobs import completion_logprobs
from grpo.train.update import logprobs_no_grad, micro_batches, update_policy
from test_rollout import make_model

G, T = 3, 9
PROMPT_LENS = [4, 2, 6, 3]  # one per group
LENGTHS = [3, 1, 2, 9, 8, 4, 5, 5, 5, 1, 7, 2]  # group longest: 3, 9, 5, 7


def _batch(seed: int = 0) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    prompt_len = torch.tensor(PROMPT_LENS).repeat_interleave(G)  # [N]
    P = max(PROMPT_LENS)
    prompt_mask = (torch.arange(P) >= P - prompt_len[:, None]).long()  # [N, P] left-padded
    prompt_ids = (
        torch.randint(3, 60, (len(PROMPT_LENS), P), generator=g).repeat_interleave(G, 0) * prompt_mask
    )
    lengths = torch.tensor(LENGTHS)
    completion_mask = (torch.arange(T) < lengths[:, None]).long()  # [N, T]
    completion_ids = torch.randint(3, 60, (len(LENGTHS), T), generator=g) * completion_mask
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, truncated=lengths == T)


def _rows(mbs) -> list[list[int]]:
    return [mb.rows.tolist() for mb in mbs]


def test_groups_stay_whole_and_go_in_order_of_their_longest_completion():
    mbs = micro_batches(_batch(), size=G)
    # groups 0..3 have longest completions 3, 9, 5, 7: order 1, 3, 2, 0, longest first; inside a group too
    assert _rows(mbs) == [[3, 4, 5], [10, 11, 9], [6, 7, 8], [0, 2, 1]]
    assert [(mb.prompt_len, mb.completion_len) for mb in mbs] == [(2, 9), (3, 7), (6, 5), (4, 3)]
    assert [mb.tokens for mb in mbs] == [3 * 11, 3 * 10, 3 * 11, 3 * 7]
    assert sum(mb.tokens for mb in mbs) < 12 * (6 + 9)  # the padded batch: 180 tokens, now 117


def test_every_row_once_and_a_micro_batch_keeps_the_columns_its_rows_use():
    r = _batch()
    for size, cap in [(1, None), (2, None), (4, None), (12, None), (12, 40), (6, 25), (12, 1)]:
        mbs = micro_batches(r, size=size, max_tokens=cap)
        rows = sorted(i for mb in mbs for i in mb.rows.tolist())
        assert rows == list(range(12)), (size, cap)
        for mb in mbs:
            assert 1 <= len(mb.rows) <= size
            assert mb.completion_len == max(LENGTHS[i] for i in mb.rows.tolist())
            assert mb.prompt_len == max(PROMPT_LENS[i // G] for i in mb.rows.tolist())
            assert cap is None or mb.tokens <= cap or len(mb.rows) == 1, (size, cap, mb)
            # the columns cut away are padding only
            assert int(mb.prompt(r.prompt_mask).sum()) == int(r.prompt_mask[mb.rows].sum())
            assert int(mb.completion(r.completion_mask).sum()) == int(r.completion_mask[mb.rows].sum())
            # rows of one prompt are consecutive: the forward can run each prompt once
            groups = [i // G for i in mb.rows.tolist()]
            for x in set(groups):
                where = [j for j, y in enumerate(groups) if y == x]
                assert where == list(range(where[0], where[-1] + 1)), (size, cap, mb.rows)


def test_a_token_cap_puts_long_completions_in_smaller_micro_batches():
    mbs = micro_batches(_batch(), size=12, max_tokens=32)
    assert _rows(mbs) == [[3, 4], [5, 10, 11], [9, 6], [7, 8], [0, 2, 1]]
    assert [mb.tokens for mb in mbs] == [2 * (2 + 9), 3 * (3 + 7), 2 * (6 + 5), 2 * (6 + 5), 3 * (4 + 3)]
    # a cap under one row's size: that row alone
    assert all(len(mb.rows) == 1 for mb in micro_batches(_batch(), size=12, max_tokens=1))


def test_ranks_agree_on_the_number_of_micro_batches(monkeypatch):
    """With a token cap a rank of short rows needs fewer micro-batches; FSDP runs collectives in every
    forward and backward, so it halves its largest until it has as many as the rank that needs most."""
    seen = []
    monkeypatch.setattr(update, "all_min", lambda value, dist: seen.append(value) or -7)
    mbs = micro_batches(_batch(), size=12, max_tokens=32, dist=Dist(0, 2))
    assert seen == [-5]  # this rank needs 5 (the test above); another needs 7
    assert _rows(mbs) == [[3], [4], [5], [10, 11], [9, 6], [7, 8], [0, 2, 1]]  # the 30, then a 22 halved
    monkeypatch.setattr(update, "all_min", lambda value, dist: -13)
    with pytest.raises(RuntimeError, match="cannot make the 13 micro-batches"):
        micro_batches(_batch(), size=12, max_tokens=32, dist=Dist(0, 2))


def _cfg(size: int, cap: int | None) -> TrainConfig:
    return load_config(TrainConfig, None,
                       [f"grpo.G={G}", "train.prompts_per_step=4", f"train.micro_batch_size={size}",
                                           f"train.micro_batch_tokens={'null' if cap is None else cap}",
                                           "grpo.beta=0.04", f"sampling.max_new_tokens={T}",
                                           "optim.grad_clip=0"])


def _reference_step(model, r, adv, ref_logp, old_logp, cfg):
    """The loss and gradients of one forward over the whole padded batch, in its own row order."""
    model.zero_grad(set_to_none=True)
    lp = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                             with_entropy=True)
    mask = r.completion_mask
    loss, _ = policy_loss(lp.logp, old_logp, adv, mask, eps_low=0.2, eps_high=None,
                          aggregation=cfg.grpo.aggregation,
                          ref_logp=ref_logp, beta=cfg.grpo.beta, max_completion_length=T,
                          total_tokens=float(mask.sum()), total_sequences=float(mask.shape[0]))
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("size,cap", [(12, None), (3, None), (12, 40), (2, 25), (5, None), (64, None)])
def test_the_update_equals_one_forward_over_the_padded_batch(size, cap):
    """Whatever the split, the loss and every gradient are those of one forward over the whole padded
    batch, and logprobs_no_grad gives that forward's log-probs (0 past each row's end). Sizes that do
    not divide the 12 rows (5: micro-batches of 5, 5 and 2; 64, the default, over a smaller batch) give
    the same step: the normalisers are the whole batch's, not the micro-batch's."""
    model = make_model("llama").double()
    r = _batch()
    g = torch.Generator().manual_seed(1)
    adv = torch.randn(12, generator=g, dtype=torch.float64)
    with torch.no_grad():
        full = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                   r.completion_mask).logp
    old_logp = (full + 0.2 * torch.randn(full.shape, generator=g, dtype=torch.float64)) * r.completion_mask
    ref_logp = (full + 0.1 * torch.randn(full.shape, generator=g, dtype=torch.float64)) * r.completion_mask
    cfg = _cfg(size, cap)
    loss, grads = _reference_step(model, r, adv, ref_logp, old_logp, cfg)

    nograd = logprobs_no_grad(model, r, cfg, nullcontext).logp
    assert nograd.shape == (12, T)
    torch.testing.assert_close(nograd, (full * r.completion_mask).float(), rtol=0, atol=1e-6)

    calls = []
    original = update.completion_logprobs
    update.completion_logprobs = lambda *a, **k: calls.append(a[3].shape) or original(*a, **k)
    try:
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # a step that changes nothing: gradients only
        seen = {}
        opt.step = lambda: seen.update({n: p.grad.clone() for n, p in model.named_parameters()})
        out = update_policy(model, opt, r, adv, ref_logp, old_logp, cfg, nullcontext)
    finally:
        update.completion_logprobs = original
    assert out.applied and out.stats["loss"] == pytest.approx(loss, rel=1e-10)
    for n, grad in grads.items():
        # float64, but Hugging Face's RMSNorm computes in float32: another split moves the last float64
        # bits, which can flip a float32 rounding (measured: <= 6e-8 of the tensor's largest gradient)
        scale = float(grad.abs().max())
        torch.testing.assert_close(seen[n], grad, rtol=0, atol=1e-6 * scale, msg=lambda m: f"{n}: {m}")
        assert scale > 1e-3, n  # every weight has a gradient to compare
    assert len(calls) == len(micro_batches(r, size, cap))
    slots = sum(rows * cols for rows, cols in calls)  # completion slots the forwards took
    assert slots == 12 * T if len(calls) == 1 else slots < 12 * T


def test_a_micro_batch_size_that_does_not_divide_the_batch_leaves_a_smaller_last_one():
    assert [len(mb.rows) for mb in micro_batches(_batch(), size=5)] == [5, 5, 2]
    assert [len(mb.rows) for mb in micro_batches(_batch(), size=64)] == [12]
    # a first smoke run: 2 prompts x G=2 = 4 completions with the default micro_batch_size (64)
    cfg = load_config(TrainConfig, None, ["train.prompts_per_step=2", "grpo.G=2"])
    assert cfg.train.micro_batch_size == 64 and cfg.train.prompts_per_step * cfg.grpo.G == 4
    cfg = load_config(TrainConfig, None,
                      ["train.prompts_per_step=3", "grpo.G=8", "train.micro_batch_size=16"])
    assert cfg.train.micro_batch_size == 16  # 24 completions: micro-batches of 16 and 8


def test_micro_batch_tokens_must_be_positive():
    from grpo.errors import UserError

    with pytest.raises(UserError, match="train.micro_batch_tokens must be a positive integer"):
        _cfg(12, 0)
    assert _cfg(12, None).train.micro_batch_tokens is None and _cfg(12, 64).train.micro_batch_tokens == 64


@pytest.mark.parametrize("size,cap", [(None, None), (2, None), (12, 30)])
def test_sft_micro_batches_give_the_whole_batch_loss_and_gradients(size, cap):
    """`grpo sft` with sft.micro_batch_size / sft.micro_batch_tokens: the mean target NLL and its
    gradients of one forward over the batch, whatever the split."""
    from types import SimpleNamespace

    from grpo.train.sft import _accumulate_nll

    model = make_model("llama").double()
    r = _batch(seed=3)
    full = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask).logp
    expected = -(full * r.completion_mask).sum() / r.completion_mask.sum()
    model.zero_grad(set_to_none=True)
    expected.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = _accumulate_nll(model, r, SimpleNamespace(micro_batch_size=size, micro_batch_tokens=cap),
                           nullcontext, opt)
    assert loss == pytest.approx(float(expected.detach()), rel=1e-6)
    for n, p in model.named_parameters():
        scale = float(grads[n].abs().max())
        torch.testing.assert_close(p.grad, grads[n], rtol=0, atol=1e-6 * scale, msg=lambda m: f"{n}: {m}")
