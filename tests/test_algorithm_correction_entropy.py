"""Pure functions of the sampler/trainer mismatch correction and of the policy entropy
(grpo.algorithm.correction, grpo.algorithm.entropy), against hand-computed values and float64 references."""

import math

import pytest
import torch

from grpo.algorithm import (
    entropy_threshold,
    importance_weights,
    mismatch_metrics,
    policy_loss,
    token_entropy,
    top_entropy_mask,
)

TRAINER = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -4.0, 7.0]])
SAMPLER = torch.tensor([[-1.5, -1.0, -0.5], [-0.1, -3.0, -90.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the last slot is padding, holding values that would overflow


def test_importance_weights_hand_computed():
    # d = trainer - sampler = [[0.5, -1, 0], [-0.2, -1, pad]]; exp(d) =
    # [[1.6487, 0.3679, 1], [0.8187, 0.3679]]
    e = math.exp
    tis = importance_weights(TRAINER, SAMPLER, MASK, mode="tis", high=1.5)
    torch.testing.assert_close(tis, torch.tensor([[1.5, e(-1), 1.0], [e(-0.2), e(-1), 0.0]]))
    masked = importance_weights(TRAINER, SAMPLER, MASK, mode="mask", low=0.5, high=2.0)
    torch.testing.assert_close(masked, torch.tensor([[e(0.5), 0.0, 1.0], [e(-0.2), 0.0, 0.0]]))
    none = importance_weights(TRAINER, SAMPLER, MASK, mode="none")
    torch.testing.assert_close(none, MASK.float())
    # sequence level: the geometric mean of each row's ratios, exp(mean d): row 0 exp(-1/6), row 1 exp(-0.6)
    seq = importance_weights(TRAINER, SAMPLER, MASK, mode="mask", level="sequence", low=0.6, high=2.0)
    torch.testing.assert_close(seq, torch.tensor([[e(-1 / 6)] * 3, [0.0, 0.0, 0.0]]))  # e(-0.6) = 0.549 < 0.6
    seq_tis = importance_weights(TRAINER, SAMPLER, MASK, mode="tis", level="sequence", high=2.0)
    torch.testing.assert_close(seq_tis, torch.tensor([[e(-1 / 6)] * 3, [e(-0.6), e(-0.6), 0.0]]))


@pytest.mark.parametrize("mode,level", [("tis", "token"), ("mask", "token"), ("tis", "sequence"),
                                        ("mask", "sequence")])
def test_importance_weights_match_a_float64_reference(mode, level):
    g = torch.Generator().manual_seed(0)
    trainer = -torch.rand(6, 9, generator=g, dtype=torch.float64) * 3
    sampler = trainer + 0.6 * torch.randn(6, 9, generator=g, dtype=torch.float64)
    mask = (torch.arange(9) < torch.tensor([9, 1, 4, 7, 2, 5])[:, None]).long()
    got = importance_weights(trainer.float(), sampler.float(), mask, mode=mode, level=level, low=0.7,
                             high=1.4)
    want = torch.zeros(6, 9, dtype=torch.float64)
    for i in range(6):
        n = int(mask[i].sum())
        d = (trainer[i, :n] - sampler[i, :n])
        if level == "sequence":
            d = d.mean().expand(n)
        w = d.exp()
        want[i, :n] = w.clamp(max=1.4) if mode == "tis" else torch.where((w >= 0.7) & (w <= 1.4), w, 0.0)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_mismatch_metrics_hand_computed_and_padding_never_read():
    m = mismatch_metrics(TRAINER, SAMPLER, MASK, low=0.5, high=2.0)
    d = torch.tensor([0.5, -1.0, 0.0, -0.2, -1.0])
    torch.testing.assert_close(m["mismatch/kl"], (d.exp() - d - 1).mean())  # k3 of KL(sampler || trainer)
    torch.testing.assert_close(m["mismatch/abs_logp_diff"], d.abs().mean())
    torch.testing.assert_close(m["mismatch/abs_logp_diff_max"], torch.tensor(1.0))  # not the padding's 97
    torch.testing.assert_close(m["mismatch/outside_frac"], torch.tensor(2 / 5))  # exp(-1) < 0.5 twice
    same = mismatch_metrics(TRAINER, TRAINER, MASK)
    assert all(float(v) == 0.0 for v in same.values())


def test_the_correction_weights_the_surrogate_and_not_the_kl():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    adv, mask, ref = torch.tensor([2.0]), torch.ones(1, 3), torch.tensor([[-1.1, -2.2, -0.4]])
    w = torch.tensor([[0.5, 2.0, 0.0]])
    loss, _ = policy_loss(logp, logp.detach(), adv, mask, token_weights=w, ref_logp=ref, beta=0.1)
    loss.backward()
    # mu = 1: d(-A * ratio * w)/dlogp = -A * w; d(beta * k3)/dlogp = beta * (1 - exp(ref - logp)); mean over 3
    want = (-2.0 * w + 0.1 * (1 - (ref - logp.detach()).exp())) / 3
    torch.testing.assert_close(logp.grad, want)


def test_token_entropy_hand_computed_and_float64_reference():
    torch.testing.assert_close(token_entropy(torch.tensor([0.0, 0.0])), torch.tensor(math.log(2)))
    p = torch.tensor([0.25, 0.75])
    torch.testing.assert_close(token_entropy(p.log()), -(p * p.log()).sum())
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(5, 7, 50, generator=g, dtype=torch.float64)
    for tau in (1.0, 0.7, 0.0):
        z = logits / (tau if tau not in (0.0, 1.0) else 1.0)
        q = z.softmax(-1)
        want = -(q * q.log()).sum(-1)
        torch.testing.assert_close(token_entropy(logits.float(), tau).double(), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(token_entropy(logits, tau), want)  # float64 in, float64 out


def test_entropy_threshold_and_forking_token_mask():
    assert entropy_threshold(torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7]), 0.4) == pytest.approx(0.7)
    assert entropy_threshold(torch.tensor([0.1, 0.9, 0.5]), 1.0) == -math.inf
    assert entropy_threshold(torch.tensor([]), 0.2) == -math.inf
    assert entropy_threshold(torch.tensor([0.1, 0.9, 0.5]), 0.01) == pytest.approx(0.9)  # at least one kept
    with pytest.raises(ValueError, match="fraction"):
        entropy_threshold(torch.tensor([1.0]), 0.0)
    ent = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.7, 8.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    keep = top_entropy_mask(ent, mask, 0.4)
    assert keep.tolist() == [[False, True, False], [False, True, False]]  # 8.0 is padding, never kept
    ties = top_entropy_mask(torch.tensor([[0.5, 0.5, 0.5, 0.1]]), torch.ones(1, 4), 0.25)
    assert ties.tolist() == [[True, True, True, False]]  # every token at the threshold is kept
    assert top_entropy_mask(ent, mask, 1.0).tolist() == mask.bool().tolist()


def test_entropy_bonus_gradient_matches_float64_autograd():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 11, generator=g, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 11, (2, 4), generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    logp = logits.log_softmax(-1).gather(-1, index[..., None]).squeeze(-1)
    loss, _ = policy_loss(logp, logp.detach(), adv, mask, entropy=token_entropy(logits), entropy_coef=0.05)
    grad, = torch.autograd.grad(loss, logits, retain_graph=True)
    # the same objective written out: per sequence, mean over its tokens of -A * logp - 0.05 * H
    q = logits.softmax(-1)
    H = -(q * q.log()).sum(-1)
    per_token = -adv[:, None] * (logp - logp.detach()).exp() - 0.05 * H
    want_loss = sum((per_token[i] * mask[i]).sum() / mask[i].sum() for i in range(2)) / 2
    want, = torch.autograd.grad(want_loss, logits)
    torch.testing.assert_close(loss, want_loss)
    torch.testing.assert_close(grad, want)
    with pytest.raises(ValueError, match="entropy_coef"):
        policy_loss(logp, logp.detach(), adv, mask, entropy_coef=0.1)
