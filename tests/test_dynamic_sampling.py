"""DAPO dynamic sampling (grpo.train.batch): groups whose rewards are all equal are dropped and more
prompts drawn until the batch is full, with a cap. A fake `score` stands in for generation + reward,
so the rounds and the kept groups are known exactly."""

import torch

from grpo.algorithm import informative_groups, zero_std_fraction
from grpo.rollout.engine import Rollout
from grpo.train.batch import Batch, cat_rollouts, collect_batch
from grpo.train.distributed import SINGLE

G, PAD = 2, 0


def _fake_score(flat_prompts: set[int], width: dict[int, int] | None = None):
    """Prompt k's G completions get rewards [0, 0] if k is in `flat_prompts`, else [0, 1]; completion k
    is k % 3 + 1 tokens long (prompt k is 1 + k % 2 tokens, left-padded)."""
    def score(rows: list[dict]) -> Batch:
        rollouts = []
        for x in rows:
            k = x["k"]
            P, T = 1 + k % 2, k % 3 + 1
            rollouts.append(Rollout(torch.full((G, P), 100 + k), torch.ones(G, P, dtype=torch.long),
                                    torch.full((G, T), 200 + k), torch.ones(G, T, dtype=torch.long),
                                    torch.zeros(G, dtype=torch.bool)))
        rewards = torch.tensor([[0.0, 0.0] if x["k"] in flat_prompts
                                else [0.0, 1.0] for x in rows]).reshape(-1)
        return Batch(rows, cat_rollouts(rollouts, PAD), [f"c{x['k']}" for x in rows for _ in range(G)],
                     rewards,
                     {"acc": rewards.tolist()}, num_errors=1)
    return score


def _sampler(P: int):
    drawn = iter(range(1000))
    return lambda: [{"k": next(drawn)} for _ in range(P)]


def test_flat_groups_are_dropped_until_the_batch_is_full():
    # prompts 0..3 (round 1): 1 and 2 flat -> keep 0, 3; round 2 (4..7): 4 flat -> keep 5, 6; 7 trimmed
    batch, stats = collect_batch(_sampler(4), _fake_score({1, 2, 4}), G, prompts_per_step=4,
                                 max_rounds=5, pad_id=PAD, dist=SINGLE)
    assert [x["k"] for x in batch.rows] == [0, 3, 5, 6]
    assert stats.rounds == 2 and stats.prompts_drawn == 8 and stats.kept_groups == 4
    assert informative_groups(batch.rewards, G).all() and float(zero_std_fraction(batch.rewards, G)) == 0.0
    assert batch.texts == ["c0", "c0", "c3", "c3", "c5", "c5", "c6", "c6"]
    assert batch.num_errors == 2  # one per scoring round, dropped groups included
    # rows stay aligned with their tokens after padding to the widest: completion of prompt 5 is 3 tokens
    assert batch.rollout.completion_ids.shape == (8, 3) and batch.rollout.completion_mask[4:6].sum(
        1
    ).tolist() == [3, 3]
    assert batch.rollout.prompt_ids[2].tolist() == [103, 103] and batch.rollout.prompt_ids[0].tolist() == [
        PAD,
        100,
    ]


def test_cap_trains_on_the_informative_groups_filled_with_flat_ones():
    # every prompt but 2 is flat: after 3 rounds (12 prompts) one informative group, 3 flat ones from round 3
    batch, stats = collect_batch(_sampler(4), _fake_score(set(range(1000)) - {2}), G, prompts_per_step=4,
                                 max_rounds=3, pad_id=PAD, dist=SINGLE)
    assert stats == (3, 12, 1)
    assert [x["k"] for x in batch.rows] == [2, 8, 9, 10]
    assert float(zero_std_fraction(batch.rewards, G)) == 0.75
    assert batch.num_errors == 3  # the filler groups are not counted twice


def test_informative_groups_matches_zero_std_fraction():
    # G = 2: flat, spread, one valid, flat
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, float("nan"), 0.0, 0.3, 0.3])
    assert informative_groups(r, 2).tolist() == [False, True, False, False]
    assert float(zero_std_fraction(r, 2)) == 0.75
