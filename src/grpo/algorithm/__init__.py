"""GRPO's math as pure tensor functions: no model, no I/O, any dtype, any device.

DeepSeekMath (Shao et al., arXiv 2402.03300) §4.1: sample G outputs per question, score each
against its group (advantages), then maximise a clipped surrogate minus a per-token KL to the
reference policy (loss). The variants of DAPO, Dr. GRPO, GSPO and RLOO are named arguments, and
the PPO baseline's GAE and value loss live here too. docs/algorithm.md gives every formula.

    advantages  outcome_advantages, leave_one_out_advantages, process_advantages, zero_std_fraction,
                expected_zero_std_fraction, informative_groups
    kl          kl_k1, kl_k2, kl_k3
    correction  importance_weights, mismatch_metrics (sampler vs trainer log-probs)
    entropy     token_entropy, entropy_threshold, top_entropy_mask
    losses      policy_loss -> PolicyLossOutput, aggregate_loss, masked_mean
    overlong    soft_overlong_penalty, mask_truncated
    ppo         gae -> GAEOutput, value_loss, whiten, masked_moments
    evaluation  pass_at_k, majority_vote
"""

from grpo.algorithm.advantages import (
    ZERO_STD,
    expected_zero_std_fraction,
    informative_groups,
    leave_one_out_advantages,
    outcome_advantages,
    process_advantages,
    zero_std_fraction,
)
from grpo.algorithm.correction import CORRECTIONS, importance_weights, mismatch_metrics
from grpo.algorithm.entropy import entropy_threshold, token_entropy, top_entropy_mask
from grpo.algorithm.evaluation import majority_vote, pass_at_k
from grpo.algorithm.kl import kl_k1, kl_k2, kl_k3
from grpo.algorithm.losses import AGGREGATIONS, PolicyLossOutput, aggregate_loss, masked_mean, policy_loss
from grpo.algorithm.overlong import mask_truncated, soft_overlong_penalty
from grpo.algorithm.ppo import GAEOutput, gae, masked_moments, value_loss, whiten

__all__ = [
    "AGGREGATIONS",
    "CORRECTIONS",
    "ZERO_STD",
    "GAEOutput",
    "PolicyLossOutput",
    "aggregate_loss",
    "entropy_threshold",
    "expected_zero_std_fraction",
    "gae",
    "importance_weights",
    "informative_groups",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "leave_one_out_advantages",
    "majority_vote",
    "mask_truncated",
    "mismatch_metrics",
    "masked_mean",
    "masked_moments",
    "outcome_advantages",
    "pass_at_k",
    "policy_loss",
    "process_advantages",
    "soft_overlong_penalty",
    "token_entropy",
    "top_entropy_mask",
    "value_loss",
    "whiten",
    "zero_std_fraction",
]
