"""Evaluation estimators for the claim "RL improves maj@K but not pass@K" (DeepSeekMath §5.2.2).

- pass@k: the probability that at least one of k samples is correct, estimated without bias from
  n >= k samples of which c are correct (Chen et al., arXiv 2107.03374, §2.1):
      pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)
  The product form avoids the huge binomials.
- maj@k: the answer most of the k samples agree on (self-consistency, Wang et al., arXiv
  2203.11171), scored as correct when that answer is.
"""

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import TypeVar

Answer = TypeVar("Answer", bound=Hashable)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k).

    Example: n=4, c=1, k=2 -> 1 - C(3, 2)/C(4, 2) = 1 - 3/6 = 0.5 (product form: 1 - (1 - 2/4)).
    Raises ValueError unless 0 <= c <= n and 1 <= k <= n.
    """
    if not (1 <= k <= n):
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got n={n}, k={k}")
    if not (0 <= c <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if n - c < k:
        return 1.0  # every draw of k samples contains a correct one
    all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        all_wrong *= 1.0 - k / i
    return 1.0 - all_wrong


def majority_vote(answers: Sequence[Answer | None]) -> Answer | None:
    """The most common answer, ignoring None (no answer extracted); ties go to the first seen.

    Example: ["4", None, "5", "5", "4"] -> "4" (2 votes each; "4" came first). All None -> None.
    """
    votes = Counter(answer for answer in answers if answer is not None)
    if not votes:
        return None
    # Counter keeps first-seen order and most_common sorts stably, so the first answer wins a tie.
    return votes.most_common(1)[0][0]
