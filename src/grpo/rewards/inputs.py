"""The one builder of a reward function's inputs (the contract of docs/rewards.md):

    fn(prompts, completions, completion_ids, **columns) -> list[float | None]

For G completions of each dataset row, every per-row value (the prompt, each other column) is repeated G
times, so that position i of every list describes completion i. Training, held-out evaluation, `grpo eval`,
process supervision and the reward model's labeller all call reward functions through it.
"""

from __future__ import annotations

from typing import NamedTuple


class RewardInputs(NamedTuple):
    prompts: list[str]
    """The prompt of each completion."""
    completions: list[str]
    """The completion texts (special tokens removed)."""
    completion_ids: list[list[int]]
    """Each completion's token ids, unpadded (EOS included)."""
    columns: dict[str, list]
    """Every other dataset column, one value per completion."""

    def kwargs(self) -> dict:
        """The keyword arguments of one reward-function call."""
        return {"prompts": self.prompts, "completions": self.completions, "completion_ids": self.completion_ids,
                **self.columns}


def reward_inputs(rows: list[dict], completions: list[str], completion_ids: list[list[int]],
                  G: int = 1) -> RewardInputs:
    """The inputs for `G` consecutive completions of each row of `rows`.

    >>> reward_inputs([{"prompt": "1+1=", "answer": "2"}], ["2", "3"], [[7, 0], [8, 0]], G=2).kwargs()
    {'prompts': ['1+1=', '1+1='], 'completions': ['2', '3'], 'completion_ids': [[7, 0], [8, 0]], 'answer': ['2', '2']}
    """
    columns = {k: [x.get(k) for x in rows for _ in range(G)] for k in rows[0] if k != "prompt"} if rows else {}
    return RewardInputs([x["prompt"] for x in rows for _ in range(G)], completions, completion_ids, columns)
