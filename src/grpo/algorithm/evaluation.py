"""Evaluation estimators for the claim "RL improves maj@K but not pass@K" (DeepSeekMath §5.2.2).

- pass@k: the probability that at least one of k samples is correct, estimated without bias from
  n >= k samples of which c are correct (Chen et al., arXiv 2107.03374, §2.1):
      pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)
  The product form avoids the huge binomials.
- maj@k: the answer most of the k samples agree on (self-consistency, Wang et al., arXiv
  2203.11171), scored as correct when that answer is. Answers that differ in writing but are the same
  answer (0.5, 1/2, \\frac{1}{2}) vote together when the caller passes the checker's own comparison as
  `equivalent(a, b)`; this module takes the callable and imports no checker.
"""

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
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


def answer_classes(
    answers: Sequence[Answer | None], equivalent: Callable[[Answer, Answer], bool] | None = None
) -> list[int | None]:
    """Per answer, the index of its class of equal answers (None stays None), classes numbered in
    first-seen order.

    An answer joins the first class whose first-seen answer `r` has `equivalent(r, answer)` (r first,
    as a checker's gold), else opens a new class; equal answers always share a class, and without
    `equivalent` only they do. Calls `equivalent` at most (distinct answers) x (classes) times.

    Example: ["0.5", None, "2", "1/2", "0.5"] with equal values equivalent -> [0, None, 1, 0, 0].
    """
    first_seen: list[Answer] = []  # class index -> its first-seen answer
    known: dict[Answer, int] = {}
    classes: list[int | None] = []
    for answer in answers:
        if answer is not None and answer not in known:
            match = next((c for c, r in enumerate(first_seen) if equivalent and equivalent(r, answer)), None)
            if match is None:
                match = len(first_seen)
                first_seen.append(answer)
            known[answer] = match
        classes.append(None if answer is None else known[answer])
    return classes


def majority_vote(
    answers: Sequence[Answer | None], equivalent: Callable[[Answer, Answer], bool] | None = None
) -> Answer | None:
    """The first-seen answer of the class with the most votes (`answer_classes`), ignoring None (no
    answer extracted); ties go to the class seen first.

    Example: ["4", None, "5", "5", "4"] -> "4" (2 votes each; "4" came first). All None -> None.
    With equal values equivalent, ["0.5", "2", "1/2", "2", "2/4"] -> "0.5" (3 votes against 2).
    """
    classes = answer_classes(answers, equivalent)
    votes = Counter(c for c in classes if c is not None)
    if not votes:
        return None
    # Counter keeps first-seen order and most_common sorts stably, so the first class wins a tie.
    return answers[classes.index(votes.most_common(1)[0][0])]
