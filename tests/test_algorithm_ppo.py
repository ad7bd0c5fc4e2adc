"""PPO baseline pieces: GAE and the clipped value loss against hand-worked numbers and a float64
reference written as loops over Python lists."""

import math
import random

import pytest
import torch

from grpo.algorithm import gae, value_loss
from grpo.algorithm.ppo import masked_moments, whiten

TOL = {torch.float64: {"atol": 1e-12, "rtol": 0.0}, torch.float32: {"atol": 1e-6, "rtol": 1e-6}}


def reference_gae(rewards, values, lengths, gamma, lam):
    """GAE by its definition, A_t = sum_l (gamma lam)^l delta_t+l, one sequence at a time."""
    advantages, returns = [], []
    for r, v, n in zip(rewards, values, lengths):
        deltas = [r[t] + gamma * (v[t + 1] if t + 1 < n else 0.0) - v[t] for t in range(n)]
        adv = [sum((gamma * lam) ** (k - t) * deltas[k] for k in range(t, n)) for t in range(n)]
        pad = [0.0] * (len(r) - n)
        advantages.append(adv + pad)
        returns.append([a + v[t] for t, a in enumerate(adv)] + pad)
    return advantages, returns


def test_gae_hand_example():
    # gamma = 1, lam = 0.5, one sequence of 3 valid tokens (+1 padding), reward 1 on the last token.
    # values [0.5, 0.6, 0.8]; deltas: 0 + 0.6 - 0.5 = 0.1, 0 + 0.8 - 0.6 = 0.2, 1 + 0 - 0.8 = 0.2
    # A_2 = 0.2; A_1 = 0.2 + 0.5 * 0.2 = 0.3; A_0 = 0.1 + 0.5 * 0.3 = 0.25
    # returns = A + V = [0.75, 0.9, 1.0]; the padded token's reward (7) and value (9) are ignored.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.6, 0.8, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(
        advantages, torch.tensor([[0.25, 0.3, 0.2, 0.0]], dtype=torch.float64), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(
        returns, torch.tensor([[0.75, 0.9, 1.0, 0.0]], dtype=torch.float64), atol=1e-12, rtol=0
    )


def test_gae_with_lambda_one_is_discounted_return_minus_value():
    # lam = 1: A_t = sum_k gamma^(k-t) r_k - V_t (the value terms telescope).
    rewards = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    values = torch.tensor([[0.3, 0.2, 0.1]], dtype=torch.float64)
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=1.0)
    discounted = [1 + 0.9 * 2 + 0.81 * 3, 2 + 0.9 * 3, 3.0]
    torch.testing.assert_close(returns, torch.tensor([discounted], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(advantages, returns - values, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.99, 0.9), (0.5, 1.0)])
def test_gae_matches_reference(dtype, gamma, lam):
    rng = random.Random(f"gae-{gamma}-{lam}")
    for _ in range(4):
        B, T = rng.randint(1, 5), rng.randint(1, 8)
        lengths = [rng.randint(0, T) for _ in range(B)]
        rewards = torch.tensor([[rng.uniform(-1, 1) for _ in range(T)] for _ in range(B)], dtype=dtype)
        values = torch.tensor([[rng.uniform(-1, 1) for _ in range(T)] for _ in range(B)], dtype=dtype)
        mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
        expected_adv, expected_ret = reference_gae(rewards.tolist(), values.tolist(), lengths, gamma, lam)
        advantages, returns = gae(rewards, values, mask, gamma, lam)
        assert advantages.dtype == dtype
        torch.testing.assert_close(advantages, torch.tensor(expected_adv, dtype=dtype), **TOL[dtype])
        torch.testing.assert_close(returns, torch.tensor(expected_ret, dtype=dtype), **TOL[dtype])


def test_value_loss_hand_example():
    # clip_eps 0.2, returns 2.0:
    #   v=1.5, old=1.0: clip -> 1.2; max((1.5-2)^2 = 0.25, (1.2-2)^2 = 0.64) / 2 = 0.32
    #   v=2.1, old=2.0: inside;      (2.1-2)^2 / 2 = 0.005
    #   v=3.0, old=1.0: clip -> 1.2; max(1.0, 0.64) / 2 = 0.5
    #   padded token (v=100) ignored. token_mean: (0.32 + 0.005 + 0.5) / 3 = 0.275
    # seq_mean_token_mean: row 0 [0.32, 0.005] -> 0.1625, row 1 [0.5] -> 0.5; mean 0.33125
    values = torch.tensor([[1.5, 2.1], [3.0, 100.0]], dtype=torch.float64, requires_grad=True)
    old_values = torch.tensor([[1.0, 2.0], [1.0, 0.0]], dtype=torch.float64)
    returns = torch.full((2, 2), 2.0, dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0]])
    loss = value_loss(values, old_values, returns, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.275, abs=1e-12)
    seq = value_loss(values, old_values, returns, mask, clip_eps=0.2, aggregation="seq_mean_token_mean")
    assert seq.item() == pytest.approx(0.33125, abs=1e-12)
    # Gradient: token 0 picks the clipped term, whose gradient w.r.t. v is 0 (v is outside the
    # clip range); token 1: (v - R) / 3 = 0.1 / 3; token 2: unclipped term, (3 - 2) / 3.
    loss.backward()
    torch.testing.assert_close(
        values.grad, torch.tensor([[0.0, 0.1 / 3], [1 / 3, 0.0]], dtype=torch.float64), atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_value_loss_matches_reference(dtype):
    rng = random.Random("value-loss")
    B, T, clip_eps = 4, 6, 0.2
    values, old_values, returns = (
        torch.tensor([[rng.uniform(-1, 1) for _ in range(T)] for _ in range(B)], dtype=dtype)
        for _ in range(3)
    )
    lengths = [6, 3, 0, 1]
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    total, count = 0.0, 0
    for v_row, old_row, ret_row, n in zip(values.tolist(), old_values.tolist(), returns.tolist(), lengths):
        for v, old, ret in list(zip(v_row, old_row, ret_row))[:n]:
            clipped = min(max(v, old - clip_eps), old + clip_eps)
            total += 0.5 * max((v - ret) ** 2, (clipped - ret) ** 2)
            count += 1
    torch.testing.assert_close(
        value_loss(values, old_values, returns, mask, clip_eps),
        torch.tensor(total / count, dtype=dtype),
        **TOL[dtype],
    )


def test_whiten_hand_example():
    # valid [1, 2, 3]: mean 2, unbiased var 1 -> [-1, 0, 1] (up to eps 1e-8); padding stays 0.
    x = torch.tensor([[1.0, 2.0], [3.0, 50.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0]])
    expected = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64) / math.sqrt(1 + 1e-8)
    torch.testing.assert_close(whiten(x, mask), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        whiten(x, mask, shift_mean=False), torch.where(mask.bool(), expected + 2, 0.0), atol=1e-12, rtol=0
    )


def test_whiten_with_given_moments_and_masked_moments():
    # the moments of several processes' batches: whiten each part with those of the whole
    x = torch.tensor([[1.0, 2.0], [3.0, 50.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0]])
    mean, var = masked_moments(x, mask)
    assert (float(mean), float(var)) == (2.0, 1.0)
    parts = [whiten(x[i:i + 1], mask[i:i + 1], moments=(2.0, 1.0)) for i in range(2)]
    torch.testing.assert_close(torch.cat(parts), whiten(x, mask), atol=0, rtol=0)
    # its own: mean 1.5, var 0.5
    assert float(whiten(x[:1], mask[:1])[0, 0]) == pytest.approx(-0.5 / math.sqrt(0.5 + 1e-8))
    # one value: var 0
    assert masked_moments(torch.tensor([[4.0, 9.0]]), torch.tensor([[1, 0]])) == (4.0, 0.0)
