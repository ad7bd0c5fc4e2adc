"""The PPO baseline's critic: shapes, the per-token reward it builds, and that it learns."""

import torch

from grpo.config import TrainConfig
from grpo.models.tiny import TinyConfig, build_model, build_tokenizer
from grpo.rollout.engine import Rollout
from grpo.train.ppo import Critic


def _rollout():
    # two completions of lengths 3 and 2 after a 2-token prompt
    return Rollout(
        prompt_ids=torch.tensor([[1, 20], [1, 21]]), prompt_mask=torch.ones(2, 2, dtype=torch.long),
        completion_ids=torch.tensor([[30, 31, 2], [32, 2, 0]]),
        completion_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]), truncated=torch.tensor([False, False]))


def _critic(**ppo):
    torch.manual_seed(0)
    cfg = TrainConfig()
    cfg.train.micro_batch_size = 1
    for k, v in ppo.items():
        setattr(cfg.ppo, k, v)
    return Critic(build_model(build_tokenizer(), TinyConfig(hidden_size=32, num_layers=1, num_heads=2,
                                                          intermediate_size=64)), cfg)


def test_reward_on_last_token_and_kl_on_every_token():
    """With a zero value head (as initialised) and gamma = lam = 1, no whitening, GAE's advantage at t
    is the sum of the per-token rewards from t on: -beta * kl_t for every token, + R on the last."""
    critic = _critic(whiten=False, lam=1.0)
    r = _rollout()
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -1.0], [-1.0, -3.0, 0.0]])  # k1 = old - ref: [.5, 0, .5], [0, 2, -]
    batch = critic.advantages(r, torch.tensor([1.0, 0.0]), old, ref, beta=0.1)
    # row 0: rewards [-.05, 0, -.05 + 1] -> advantages [0.9, 0.95, 0.95]
    # row 1: rewards [0, -.2 + 0] -> advantages [-0.2, -0.2], padding 0
    expected = torch.tensor([[0.9, 0.95, 0.95], [-0.2, -0.2, 0.0]])
    assert torch.allclose(batch.advantages, expected, atol=1e-6)
    assert torch.equal(batch.old_values, torch.zeros(2, 3))
    assert abs(batch.kl_reward - (0.5 + 0 + 0.5 + 0 + 2) / 5) < 1e-6


def test_value_model_learns_the_returns():
    critic = _critic(value_clip=10.0, value_lr=3e-3)
    r = _rollout()
    zeros = torch.zeros(2, 3)
    losses = []
    for _ in range(30):
        batch = critic.advantages(r, torch.tensor([1.0, -1.0]), zeros, zeros, beta=0.0)
        losses.append(critic.update(r, batch)["ppo/value_loss"])
    assert losses[-1] < 0.2 * losses[0]
    v = critic.model(r)
    assert v.shape == (2, 3) and v[0, 0] > 0.5 and v[1, 0] < -0.5


def test_value_head_on_the_policy_trains_only_the_head_and_leaves_the_policy_alone():
    torch.manual_seed(0)
    cfg = TrainConfig()
    cfg.train.micro_batch_size = 2
    cfg.ppo.value_model, cfg.ppo.value_clip, cfg.ppo.value_lr = "head", 10.0, 3e-2
    policy = build_model(build_tokenizer(),
                         TinyConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    critic = Critic(policy, cfg)
    assert sorted(critic.model.state_dict()) == ["head.bias", "head.weight"]  # no second body held or saved
    assert sum(p.numel() for p in critic.model.parameters()) == 32 + 1
    r, zeros = _rollout(), torch.zeros(2, 3)
    losses = []
    for _ in range(30):
        batch = critic.advantages(r, torch.tensor([1.0, -1.0]), zeros, zeros, beta=0.0)
        losses.append(critic.update(r, batch)["ppo/value_loss"])
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())


def test_micro_batches_give_the_critic_the_same_values_and_steps():
    """The value model runs the policy's micro-batches (by length, cut to their columns, capped by
    train.micro_batch_tokens): values, value losses and weights do not depend on the split."""
    r, zeros = _rollout(), torch.zeros(2, 3)
    runs = []
    # one forward; a row each; a cap under one row's 5 tokens
    for size, cap in [(2, None), (1, None), (2, 4)]:
        critic = _critic(value_clip=10.0, value_lr=3e-3)
        critic.micro, critic.micro_tokens = size, cap
        rounds = []
        for _ in range(2):  # the second round's values come from a trained head
            batch = critic.advantages(r, torch.tensor([1.0, -1.0]), zeros, zeros, beta=0.0)
            rounds.append((batch.old_values, batch.advantages, critic.update(r, batch)["ppo/value_loss"]))
        runs.append((rounds, critic.model.state_dict()))
    (rounds_1, weights_1), others = runs[0], runs[1:]
    assert float(rounds_1[1][0].abs().max()) > 1e-3 and float(rounds_1[1][0][1, 2]) == 0.0  # 0 past the end
    for rounds, weights in others:
        for (v1, a1, l1), (v2, a2, l2) in zip(rounds_1, rounds):
            torch.testing.assert_close(v2, v1, rtol=0, atol=1e-6)
            torch.testing.assert_close(a2, a1, rtol=0, atol=1e-5)
            assert abs(l2 - l1) < 1e-6 * max(1.0, abs(l1))
        for k in weights_1:
            torch.testing.assert_close(weights[k], weights_1[k], rtol=0, atol=1e-6)
