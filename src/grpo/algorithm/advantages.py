"""Group-relative advantages: the part of GRPO that replaces PPO's value model.

DeepSeekMath (arXiv 2402.03300) samples G outputs per question and scores each output against its
own group instead of against a learned baseline:

    outcome supervision (§4.1.2):  A_i,t = (r_i - mean(r)) / (std(r) + eps)      for every token t of o_i
    process supervision (§4.1.3):  r~_i^(j) = (r_i^(j) - mean(R)) / (std(R) + eps),  R = all steps of
                                   all G outputs;   A_i,t = sum over steps j with index(j) >= t of r~_i^(j)

The paper does not say which std; `std="unbiased"` (n - 1, as TRL, verl and OpenRLHF use) is the
default, `std="population"` (n) is the other choice. Rewards are laid out flat with the G outputs
of a prompt contiguous: `rewards[p * G + i]` is output i of prompt p.

Conventions shared by every function here:
- NaN marks a reward that does not exist (a reward function answered "not applicable", a step an
  output does not have). It is left out of the mean and std and gets advantage 0.
- A group whose valid rewards are all equal (including a group with one or no valid reward) carries
  no learning signal: its advantages are exactly 0, never NaN. The check is exact equality or a std
  below `ZERO_STD`, because the float mean of equal numbers is not always that number.
"""

import torch

ZERO_STD = 1e-8
"""A group whose std is below this is treated as having no spread (see `zero_std_fraction`)."""

_DDOF = {"unbiased": 1, "population": 0}
_SCALES = ("group", "batch", "none")


def outcome_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", std: str = "unbiased", eps: float = 1e-4
) -> torch.Tensor:
    """Outcome-supervision advantages (DeepSeekMath §4.1.2), one per output.

    adv_i = (r_i - mean_group(r)) / (s + eps), where s is
      - `scale="group"`: the std of the group's valid rewards (the paper);
      - `scale="batch"`: the std of all valid rewards in the batch, the mean staying per group;
      - `scale="none"`: no division at all, adv_i = r_i - mean_group(r) (Dr. GRPO, arXiv 2503.20783 §3.2).
    `std="unbiased"` divides the sum of squares by n - 1, `"population"` by n (n = valid rewards).

    Example (the seed article's group, G = 4): rewards [0.9, 0.3, 0.8, 0.2] have mean 0.55 and std
    0.351 (unbiased) or 0.304 (population), giving [1.00, -0.71, 0.71, -1.00] or [1.15, -0.82, 0.82,
    -1.15]. The article's "std = 0.32" is a rounding of neither.

    Args:
        rewards: [P * G] float (int is cast to the default float dtype); NaN = no reward.
        group_size: G, the number of outputs per prompt.
    Returns:
        [P * G] advantages in the dtype of `rewards`; 0 for NaN rewards and for all-equal groups.
    """
    if scale not in _SCALES:
        raise ValueError(f"scale must be one of {_SCALES}, got {scale!r}")
    ddof = _ddof(std)
    grouped = _as_groups(rewards, group_size)  # [P, G]
    valid, count, dev = _group_moments(grouped)  # [P, G], [P, 1], [P, G]
    group_std = _std(dev, count, ddof)  # [P, 1]
    if scale == "group":
        adv = dev / (group_std + eps)  # [P, G]
    elif scale == "batch":
        _, batch_count, batch_dev = _group_moments(grouped.reshape(1, -1))  # [1, 1], [1, P * G]
        adv = dev / (_std(batch_dev, batch_count, ddof) + eps)  # [P, G]
    else:
        adv = dev  # [P, G]
    adv = torch.where(_flat_groups(grouped, valid, group_std), 0.0, adv)  # [P, G]
    return adv.reshape(-1)  # [P * G]


def leave_one_out_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO advantages: each output's reward minus the mean reward of the other outputs of its group.

    adv_i = r_i - 1/(n-1) * sum_{j != i} r_j = n/(n-1) * (r_i - mean(r))   (Kool et al. 2019;
    Ahmadian et al., arXiv 2402.14740 §3). NaN rewards are left out (n counts valid ones) and get 0;
    a group with fewer than two valid rewards, or all equal, gets 0.

    Example: rewards [1, 0, 0, 0] (G = 4) -> [1 - 0, 0 - 1/3, 0 - 1/3, 0 - 1/3] = [1, -1/3, -1/3, -1/3].

    Args:
        rewards: [P * G] float; NaN = no reward.
    Returns:
        [P * G] advantages in the dtype of `rewards`.
    """
    grouped = _as_groups(rewards, group_size)  # [P, G]
    valid, count, dev = _group_moments(grouped)  # [P, G], [P, 1], [P, G]
    adv = dev * count / (count - 1).clamp(min=1)  # [P, G]
    adv = torch.where(_flat_groups(grouped, valid, _std(dev, count, 1)), 0.0, adv)  # [P, G]
    return adv.reshape(-1)  # [P * G]


def process_advantages(
    step_rewards: torch.Tensor,
    step_end_index: torch.Tensor,
    group_size: int,
    mask: torch.Tensor,
    eps: float = 1e-4,
    std: str = "unbiased",
) -> torch.Tensor:
    """Process-supervision advantages (DeepSeekMath §4.1.3), one per completion token.

    Every step reward is normalised with the mean and std of ALL valid steps of ALL G outputs of its
    group, r~ = (r - mean) / (std + eps); token t of output i then gets the sum of the normalised
    rewards of its steps that end at or after t: A_i,t = sum_{j: index(j) >= t} r~_i^(j).

    Example (one output of a group): steps ending at tokens 1 and 3 with r~ = [0.5, -1.0] give
    tokens 0..3 the advantages [0.5 - 1.0, 0.5 - 1.0, -1.0, -1.0] = [-0.5, -0.5, -1.0, -1.0].

    Args:
        step_rewards: [B, S] float, NaN where an output has fewer than S steps; B = P * G.
        step_end_index: [B, S] long, completion token index where step j ends (inclusive); ignored
            where the reward is NaN. An index past the end covers every token.
        mask: [B, T] completion mask; padded tokens (0) get advantage 0.
    Returns:
        [B, T] advantages in the dtype of `step_rewards`.
    """
    num_outputs, num_steps = step_rewards.shape
    grouped = _as_groups(step_rewards.reshape(-1), group_size * num_steps)  # [P, G * S]
    valid, count, dev = _group_moments(grouped)  # [P, G * S], [P, 1], [P, G * S]
    group_std = _std(dev, count, _ddof(std))  # [P, 1]
    normed = torch.where(_flat_groups(grouped, valid, group_std), 0.0, dev / (group_std + eps))
    normed = normed.reshape(num_outputs, num_steps)  # [B, S]
    return _sum_steps_ending_at_or_after(normed, step_end_index, mask)  # [B, T]


def zero_std_fraction(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Fraction of groups with no spread: valid rewards all equal (std < ZERO_STD), or < 2 of them.

    These groups get advantage 0 and so contribute no policy gradient (DAPO's dynamic sampling,
    arXiv 2503.14476 §3.2, drops them). Returns a 0-dim tensor in the dtype of `rewards`.
    """
    grouped = _as_groups(rewards, group_size)  # [P, G]
    valid, count, dev = _group_moments(grouped)  # [P, G], [P, 1], [P, G]
    flat = _flat_groups(grouped, valid, _std(dev, count, 1))  # [P, 1]
    return flat.to(grouped.dtype).mean()  # []


def expected_zero_std_fraction(pass_rate: float, group_size: int) -> float:
    """Share of groups expected to have all-equal binary rewards when each sample is right with
    probability `pass_rate` = p, independently: p^G + (1 - p)^G (all right or all wrong).

    Example: p = 0.05, G = 8 -> 0.05^8 + 0.95^8 = 0.6634; p = 0.5, G = 8 -> 2 * 0.5^8 = 0.0078.
    Prompts differ in difficulty, so the measured share of a batch is usually higher than this
    (the function is convex in p): a much higher one says the pass rate is spread unevenly.
    """
    if not 0.0 <= pass_rate <= 1.0:
        raise ValueError(f"pass_rate must be in [0, 1], got {pass_rate}")
    return pass_rate ** group_size + (1.0 - pass_rate) ** group_size


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Which groups carry a learning signal: the complement of the groups `zero_std_fraction` counts.

    DAPO's dynamic sampling (arXiv 2503.14476 §3.2) keeps only these. Example with G = 2:
    rewards [1, 1, 0, 1, nan, 0] -> [False, True, False] (all equal; spread; fewer than 2 valid).
    Returns a [P] bool tensor.
    """
    grouped = _as_groups(rewards, group_size)  # [P, G]
    valid, count, dev = _group_moments(grouped)  # [P, G], [P, 1], [P, G]
    return ~_flat_groups(grouped, valid, _std(dev, count, 1)).squeeze(1)  # [P]


def _sum_steps_ending_at_or_after(
    normed: torch.Tensor, end_index: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """A[b, t] = sum of normed[b, j] over steps j with end_index[b, j] >= t, zero on padding.

    Each step's reward is dropped at its end token, then a reverse cumulative sum spreads it back
    over every earlier token. Steps ending before token 0 reach no token.
    """
    num_tokens = mask.shape[1]
    weight = torch.where(end_index >= 0, normed, 0.0)  # [B, S]
    at_end = torch.zeros(mask.shape, dtype=normed.dtype, device=normed.device)  # [B, T]
    at_end = at_end.scatter_add(1, end_index.long().clamp(0, num_tokens - 1), weight)  # [B, T]
    from_t = at_end.flip(1).cumsum(1).flip(1)  # [B, T]
    return torch.where(mask.bool(), from_t, 0.0)  # [B, T]


def _as_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """View flat rewards [P * G] as [P, G]; integer rewards become the default float dtype."""
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be 1-D with a multiple of group_size={group_size} entries, "
            f"got shape {tuple(rewards.shape)}"
        )
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    return rewards.reshape(-1, group_size)


def _group_moments(grouped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: valid mask, number of valid entries, deviation from the valid mean (0 where NaN)."""
    valid = ~torch.isnan(grouped)  # [P, K]
    count = valid.sum(dim=-1, keepdim=True)  # [P, 1]
    mean = torch.where(valid, grouped, 0.0).sum(dim=-1, keepdim=True) / count.clamp(min=1)  # [P, 1]
    dev = torch.where(valid, grouped - mean, 0.0)  # [P, K]
    return valid, count, dev


def _std(dev: torch.Tensor, count: torch.Tensor, ddof: int) -> torch.Tensor:
    """sqrt(sum(dev^2) / (n - ddof)) per row; 0 where n - ddof < 1 (dev is then 0 too)."""
    return ((dev**2).sum(dim=-1, keepdim=True) / (count - ddof).clamp(min=1)).sqrt()  # [P, 1]


def _flat_groups(grouped: torch.Tensor, valid: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Rows whose valid entries are all equal (exactly, or std < ZERO_STD); rows with none count too."""
    highest = torch.where(valid, grouped, -torch.inf).amax(dim=-1, keepdim=True)  # [P, 1]
    lowest = torch.where(valid, grouped, torch.inf).amin(dim=-1, keepdim=True)  # [P, 1]
    return (highest <= lowest) | (std < ZERO_STD)  # [P, 1]


def _ddof(std: str) -> int:
    if std not in _DDOF:
        raise ValueError(f"std must be one of {tuple(_DDOF)}, got {std!r}")
    return _DDOF[std]
