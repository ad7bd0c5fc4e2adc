"""Policy loss, KL estimators and aggregation: hand-worked numbers, a float64 reference written as
loops over Python lists, and gradient checks against the paper's gradient coefficient."""

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo.algorithm import PolicyLossOutput, kl_k1, kl_k2, kl_k3, masked_mean, policy_loss
from grpo.algorithm.losses import aggregate_loss

TOL = {torch.float64: {"atol": 1e-12, "rtol": 0.0}, torch.float32: {"atol": 1e-6, "rtol": 1e-6}}
AGGREGATIONS = ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]


# ---------------------------------------------------------------- the float64 reference


def reference_policy_loss(
    logp,
    old_logp,
    adv,
    mask,
    eps_low=0.2,
    eps_high=None,
    aggregation="seq_mean_token_mean",
    ref_logp=None,
    beta=0.0,
    ratio_level="token",
    max_len=None,
) -> float:
    """The objective as the paper writes it, min(ratio * A, clip(ratio) * A) - beta * KL, negated,
    one token at a time. Inputs are nested lists; adv is a list (per output) or nested list. The
    sequence modes count only rows with a valid token (an empty row leaves the loss entirely)."""
    eps_high = eps_low if eps_high is None else eps_high
    seq_sums, seq_lengths = [], []
    for i in range(len(logp)):
        tokens = [t for t in range(len(logp[i])) if mask[i][t]]
        seq_ratio = math.exp(sum(logp[i][t] - old_logp[i][t] for t in tokens) / max(len(tokens), 1))
        total = 0.0
        for t in tokens:
            ratio = seq_ratio if ratio_level == "sequence" else math.exp(logp[i][t] - old_logp[i][t])
            a = adv[i][t] if isinstance(adv[i], list) else adv[i]
            clipped = min(max(ratio, 1 - eps_low), 1 + eps_high)
            kl = 0.0
            if ref_logp is not None:
                r = math.exp(ref_logp[i][t]) / math.exp(logp[i][t])
                kl = r - math.log(r) - 1
            total += -(min(ratio * a, clipped * a) - beta * kl)
        seq_sums.append(total)
        seq_lengths.append(len(tokens))
    rows = max(sum(n > 0 for n in seq_lengths), 1)
    if aggregation == "seq_mean_token_mean":
        return sum(s / max(n, 1) for s, n in zip(seq_sums, seq_lengths)) / rows
    if aggregation == "token_mean":
        return sum(seq_sums) / max(sum(seq_lengths), 1)
    return sum(seq_sums) / (max_len * rows)


def random_batch(rng: random.Random, B: int, T: int, spread: float = 0.3):
    """Log-probs as nested lists; right-padded masks including one empty row; G = 2 style A."""
    logp = [[math.log(rng.uniform(0.05, 1.0)) for _ in range(T)] for _ in range(B)]
    old_logp = [[lp + rng.uniform(-spread, spread) for lp in row] for row in logp]
    ref_logp = [[lp + rng.uniform(-1.0, 1.0) for lp in row] for row in logp]
    lengths = [rng.randint(1, T) for _ in range(B - 1)] + [0]
    rng.shuffle(lengths)
    mask = [[1] * n + [0] * (T - n) for n in lengths]
    adv = [rng.choice([-1.0, 1.0, 0.0, rng.uniform(-2, 2)]) for _ in range(B)]
    return logp, old_logp, ref_logp, mask, adv


# ---------------------------------------------------------------- KL estimators


def test_kl_estimators_hand_example():
    # logp = -1, ref_logp = -2: log r = -1, r = e^-1 = 0.36788
    # k1 = -log r = 1; k2 = 0.5 * 1^2 = 0.5; k3 = r - log r - 1 = 0.36788 + 1 - 1 = 0.36788
    logp, ref_logp = torch.tensor([-1.0], dtype=torch.float64), torch.tensor([-2.0], dtype=torch.float64)
    assert kl_k1(logp, ref_logp).item() == 1.0
    assert kl_k2(logp, ref_logp).item() == 0.5
    assert kl_k3(logp, ref_logp).item() == pytest.approx(math.exp(-1), abs=1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kl_estimators_match_reference(dtype):
    rng = random.Random("kl")
    pairs = [(math.log(rng.uniform(0.01, 1)), math.log(rng.uniform(0.01, 1))) for _ in range(50)]
    logp = torch.tensor([p for p, _ in pairs], dtype=dtype)
    ref_logp = torch.tensor([q for _, q in pairs], dtype=dtype)
    pairs = list(zip(logp.tolist(), ref_logp.tolist()))
    pi = [math.exp(p) for p, _ in pairs]
    pi_ref = [math.exp(q) for _, q in pairs]
    k1 = [math.log(a / b) for a, b in zip(pi, pi_ref)]
    k2 = [0.5 * math.log(a / b) ** 2 for a, b in zip(pi, pi_ref)]
    k3 = [b / a - math.log(b / a) - 1 for a, b in zip(pi, pi_ref)]
    for fn, expected in ((kl_k1, k1), (kl_k2, k2), (kl_k3, k3)):
        torch.testing.assert_close(fn(logp, ref_logp), torch.tensor(expected, dtype=dtype), **TOL[dtype])
    assert (kl_k3(logp, ref_logp) >= 0).all() and (kl_k2(logp, ref_logp) >= 0).all()
    assert (kl_k1(logp, ref_logp) < 0).any()  # k1 is the one that can go negative


# ---------------------------------------------------------------- aggregation: hand-computed 2x3


PER_TOKEN = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
MASK_2x3 = [[1, 1, 0], [1, 1, 1]]
# seq_mean_token_mean: ((1 + 2) / 2 + (4 + 5 + 6) / 3) / 2 = (1.5 + 5) / 2 = 3.25
# token_mean:           (1 + 2 + 4 + 5 + 6) / 5 = 18 / 5 = 3.6
# seq_mean_token_sum_norm, max length 4: 18 / (4 * 2) = 2.25   (the padded 3 never counts)
HAND_AGGREGATED = {"seq_mean_token_mean": 3.25, "token_mean": 3.6, "seq_mean_token_sum_norm": 2.25}


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_aggregation_hand_example(aggregation):
    per_token, mask = torch.tensor(PER_TOKEN, dtype=torch.float64), torch.tensor(MASK_2x3)
    loss = aggregate_loss(per_token, mask, aggregation, max_completion_length=4)
    assert loss.item() == pytest.approx(HAND_AGGREGATED[aggregation], abs=1e-15)
    # The same numbers through policy_loss: ratio 1 (old == logp) and per-token A = -l make the
    # per-token loss max(-A * 1, -A * 1) = l.
    logp = torch.zeros(2, 3, dtype=torch.float64)
    out = policy_loss(logp, logp, -per_token, mask, aggregation=aggregation, max_completion_length=4)
    assert out.loss.item() == pytest.approx(HAND_AGGREGATED[aggregation], abs=1e-15)
    assert out.metrics["pg_loss"].item() == pytest.approx(HAND_AGGREGATED[aggregation], abs=1e-15)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_a_row_masked_out_entirely_leaves_the_sequence_denominators(aggregation):
    """mask_truncated drops a third row [7, 8, 9]: the hand example's numbers, not 6.5 / 3 (seq mean) or
    18 / (4 * 3) (Dr. GRPO) as when the empty row still counted; the same with the batch's totals."""
    from grpo.algorithm import mask_truncated
    from grpo.train.distributed import SINGLE, global_totals

    per_token = torch.tensor(PER_TOKEN + [[7.0, 8.0, 9.0]], dtype=torch.float64)  # [3, 3]
    mask = mask_truncated(torch.tensor(MASK_2x3 + [[1, 1, 1]]), torch.tensor([False, False, True]))
    assert mask[2].sum() == 0
    loss = aggregate_loss(per_token, mask, aggregation, max_completion_length=4)
    assert loss.item() == pytest.approx(HAND_AGGREGATED[aggregation], abs=1e-15)
    totals = global_totals(mask, SINGLE)
    assert totals == {"total_tokens": 5.0, "total_sequences": 2.0}
    loss = aggregate_loss(per_token, mask, aggregation, max_completion_length=4, **totals)
    assert loss.item() == pytest.approx(HAND_AGGREGATED[aggregation], abs=1e-15)


def test_aggregation_empty_and_errors():
    per_token, mask = torch.ones(2, 3), torch.zeros(2, 3)
    for aggregation in AGGREGATIONS:  # no valid token: 0, not NaN
        assert aggregate_loss(per_token, mask, aggregation, max_completion_length=3).item() == 0.0
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate_loss(per_token, mask, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="aggregation"):
        aggregate_loss(per_token, mask, "sum")


def test_masked_mean_ignores_nan_in_padding():
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, mask).item() == pytest.approx((1 + 2 + 4) / 3)
    assert masked_mean(x, mask, dim=-1).tolist() == [1.5, 4.0]
    assert masked_mean(x, torch.zeros(2, 3), dim=-1).tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- the loss against the reference


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
def test_policy_loss_matches_reference(dtype, aggregation, ratio_level):
    rng = random.Random(f"loss-{aggregation}-{ratio_level}")
    for trial in range(4):
        B, T = rng.choice([2, 4, 6]), rng.randint(1, 7)
        # GSPO's clip range is ~1e-4 wide, so its log ratios must be small for some to fall inside.
        spread = 0.3 if ratio_level == "token" else 1e-3
        logp, old_logp, ref_logp, mask, adv = random_batch(rng, B, T, spread)
        if trial % 2:  # per-token advantages
            adv = [[rng.uniform(-2, 2) for _ in range(T)] for _ in range(B)]
        eps_low, eps_high = (0.2, 0.28) if ratio_level == "token" else (3e-4, 4e-4)
        beta = rng.choice([0.0, 0.04])
        logp, old_logp, ref_logp, adv = (
            torch.tensor(x, dtype=dtype).tolist() for x in (logp, old_logp, ref_logp, adv)
        )
        expected = reference_policy_loss(
            logp,
            old_logp,
            adv,
            mask,
            eps_low,
            eps_high,
            aggregation,
            ref_logp,
            beta,
            ratio_level,
            max_len=T + 2,
        )
        loss, metrics = policy_loss(
            torch.tensor(logp, dtype=dtype),
            torch.tensor(old_logp, dtype=dtype),
            torch.tensor(adv, dtype=dtype),
            torch.tensor(mask),
            eps_low=eps_low,
            eps_high=eps_high,
            aggregation=aggregation,
            ref_logp=torch.tensor(ref_logp, dtype=dtype),
            beta=beta,
            ratio_level=ratio_level,
            max_completion_length=T + 2,
        )
        assert loss.dtype == dtype
        torch.testing.assert_close(loss, torch.tensor(expected, dtype=dtype), **TOL[dtype])
        expected_pg = reference_policy_loss(
            logp, old_logp, adv, mask, eps_low, eps_high, aggregation, None, 0.0, ratio_level, max_len=T + 2
        )
        torch.testing.assert_close(metrics["pg_loss"], torch.tensor(expected_pg, dtype=dtype), **TOL[dtype])


def test_metrics_hand_example():
    # log ratios [[0.3, -0.3, 0.0], [0.3, -0.3, (0.1 padded)]], A = [+1, -1], eps 0.2.
    # ratios e^0.3 = 1.34986 > 1.2 and e^-0.3 = 0.74082 < 0.8.
    # high region (ratio > 1.2, A > 0): token (0, 0). low region (ratio < 0.8, A < 0): token (1, 1).
    # (0, 1) and (1, 0) lie outside the range too but on the side where the min keeps the gradient.
    logp = torch.tensor([[0.3, -0.3, 0.0], [0.3, -0.3, 0.1]], dtype=torch.float64, requires_grad=True)
    old_logp = torch.zeros(2, 3, dtype=torch.float64)
    ref_logp = torch.tensor([[0.3, -0.3, -1.0], [0.3, -0.3, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = policy_loss(logp, old_logp, torch.tensor([1.0, -1.0], dtype=torch.float64), mask, ref_logp=ref_logp)
    assert isinstance(out, PolicyLossOutput) and set(out.metrics) == {
        "clip_frac_low",
        "clip_frac_high",
        "clip_frac",
        "ratio_mean",
        "kl",
        "pg_loss",
    }
    e3, em3 = math.exp(0.3), math.exp(-0.3)
    assert out.metrics["clip_frac_low"].item() == pytest.approx(1 / 5, abs=1e-15)
    assert out.metrics["clip_frac_high"].item() == pytest.approx(1 / 5, abs=1e-15)
    assert out.metrics["clip_frac"].item() == pytest.approx(2 / 5, abs=1e-15)
    # (2 e^0.3 + 2 e^-0.3 + 1) / 5 = (2.69972 + 1.48164 + 1) / 5 = 1.03627
    assert out.metrics["ratio_mean"].item() == pytest.approx((2 * e3 + 2 * em3 + 1) / 5, abs=1e-12)
    # k3 is 0 where ref == logp; token (0, 2): log r = -1 -> e^-1 + 1 - 1 = 0.36788; (1, 2) is padding.
    assert out.metrics["kl"].item() == pytest.approx(math.exp(-1) / 5, abs=1e-12)
    # Row 0 (A = +1): max(-1.34986, -1.2) = -1.2, max(-0.74082, -0.8) = -0.74082, -1 -> mean -0.98027
    # Row 1 (A = -1): max(1.34986, 1.2) = 1.34986, max(0.74082, 0.8) = 0.8           -> mean  1.07493
    pg = ((-1.2 - em3 - 1) / 3 + (e3 + 0.8) / 2) / 2
    assert out.metrics["pg_loss"].item() == pytest.approx(pg, abs=1e-12)
    assert out.loss.item() == pytest.approx(pg, abs=1e-12)  # beta = 0: the KL is reported, not added
    assert all(not value.requires_grad and value.dim() == 0 for value in out.metrics.values())


# ---------------------------------------------------------------- gradients


def _normaliser(aggregation: str, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """What each token's loss is divided by: B * |o_i|, total tokens, or max_len * B (B: rows with a valid
    token)."""
    B = int(mask.bool().any(-1).sum())
    lengths = mask.sum(dim=-1, keepdim=True).to(torch.float64).expand(mask.shape)  # [B, T]
    return {
        "seq_mean_token_mean": B * lengths,
        "token_mean": torch.full(mask.shape, float(mask.sum()), dtype=torch.float64),
        "seq_mean_token_sum_norm": torch.full(mask.shape, float(max_len * B), dtype=torch.float64),
    }[aggregation]


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
def test_on_policy_gradient_is_minus_advantage_over_normaliser(aggregation, ratio_level):
    # With old_logp = logp.detach() every ratio is 1 (nothing clipped), and d loss / d logp_it =
    # -A_i / normaliser: for GSPO too, as the sequence ratio's value is detached.
    rng = random.Random(f"grad-{aggregation}")
    logp_list, _, _, mask_list, adv_list = random_batch(rng, B=4, T=5)
    logp = torch.tensor(logp_list, dtype=torch.float64, requires_grad=True)
    mask, adv = torch.tensor(mask_list), torch.tensor(adv_list, dtype=torch.float64)
    loss, metrics = policy_loss(
        logp,
        logp.detach(),
        adv,
        mask,
        aggregation=aggregation,
        ratio_level=ratio_level,
        max_completion_length=7,
    )
    loss.backward()
    expected = torch.where(mask.bool(), -adv[:, None] / _normaliser(aggregation, mask, 7), 0.0)
    torch.testing.assert_close(logp.grad, expected, atol=1e-12, rtol=0)
    assert metrics["ratio_mean"].item() == 1.0 and metrics["clip_frac"].item() == 0.0


def test_clipping_zeroes_the_gradient_exactly_where_the_paper_says():
    # One output of 6 tokens, eps 0.2, log ratios chosen to land in every region:
    #   token  log ratio  ratio  A    region                          gradient of -min(rA, clip(r)A)
    #   0      +0.3       1.35   +1   above 1+eps, A > 0: clipped      0
    #   1      -0.3       0.74   -1   below 1-eps, A < 0: clipped      0
    #   2      +0.3       1.35   -1   above, but min keeps r*A         -A * r / 6 = +1.35 / 6
    #   3      -0.3       0.74   +1   below, but min keeps r*A         -A * r / 6 = -0.74 / 6
    #   4      +0.1       1.11   +1   inside                           -1.11 / 6
    #   5      -0.1       0.90   -1   inside                           +0.90 / 6
    log_ratio = torch.tensor([[0.3, -0.3, 0.3, -0.3, 0.1, -0.1]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0, 1.0, -1.0]], dtype=torch.float64)
    logp = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
    loss, metrics = policy_loss(logp, -log_ratio, adv, torch.ones(1, 6), aggregation="token_mean")
    loss.backward()
    ratio = log_ratio.exp()
    expected = -adv * ratio / 6  # d(ratio)/d(logp) = ratio
    expected[0, :2] = 0.0
    torch.testing.assert_close(logp.grad, expected, atol=1e-12, rtol=0)
    assert metrics["clip_frac_high"].item() == pytest.approx(1 / 6) and metrics[
        "clip_frac_low"
    ].item() == pytest.approx(1 / 6)


def test_clip_higher_moves_only_the_upper_bound():
    # ratio e^0.24 = 1.271: clipped with eps_high 0.2, free with eps_high 0.28 (DAPO clip-higher).
    logp = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    old_logp = torch.tensor([[-0.24, 0.25]], dtype=torch.float64)  # ratios 1.271, 0.779
    adv = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    for eps_high, grad0 in ((None, 0.0), (0.28, -math.exp(0.24) / 2)):
        logp.grad = None
        policy_loss(
            logp, old_logp, adv, torch.ones(1, 2), eps_high=eps_high, aggregation="token_mean"
        ).loss.backward()
        assert logp.grad[0, 0].item() == pytest.approx(grad0, abs=1e-15)
        assert logp.grad[0, 1].item() == 0.0  # 0.779 < 0.8 with A < 0: clipped in both


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_kl_gradient_is_the_papers_coefficient(aggregation):
    # DeepSeekMath App. A.1.6: dJ/dlogp_it = (A_i + beta * (pi_ref / pi_theta - 1)) / normaliser at
    # ratio 1, so the loss (-J) has the opposite sign.
    rng = random.Random(f"kl-grad-{aggregation}")
    logp_list, _, ref_list, mask_list, adv_list = random_batch(rng, B=4, T=5)
    logp = torch.tensor(logp_list, dtype=torch.float64, requires_grad=True)
    ref_logp, mask = torch.tensor(ref_list, dtype=torch.float64), torch.tensor(mask_list)
    adv, beta = torch.tensor(adv_list, dtype=torch.float64), 0.04
    loss, _ = policy_loss(
        logp,
        logp.detach(),
        adv,
        mask,
        aggregation=aggregation,
        ref_logp=ref_logp,
        beta=beta,
        max_completion_length=5,
    )
    loss.backward()
    coefficient = adv[:, None] + beta * (ref_logp.exp() / logp.detach().exp() - 1)  # [B, T]
    expected = torch.where(mask.bool(), -coefficient / _normaliser(aggregation, mask, 5), 0.0)
    torch.testing.assert_close(logp.grad, expected, atol=1e-12, rtol=0)


def test_gspo_gradient_equals_the_sequence_objective():
    # GSPO's sequence objective written directly: -1/B sum_i A_i * exp(mean_t(logp - old_logp)) over the
    # B = 3 rows with a token (random_batch's empty row leaves the loss), ratios inside the clip range. Its
    # gradient must equal that of the token form we implement.
    rng = random.Random("gspo")
    logp_list, old_list, _, mask_list, adv_list = random_batch(rng, B=4, T=5, spread=1e-4)
    mask, adv = torch.tensor(mask_list), torch.tensor(adv_list, dtype=torch.float64)
    old_logp = torch.tensor(old_list, dtype=torch.float64)
    logp = torch.tensor(logp_list, dtype=torch.float64, requires_grad=True)
    loss, metrics = policy_loss(
        logp, old_logp, adv, mask, eps_low=3e-4, eps_high=4e-4, ratio_level="sequence"
    )
    (ours,) = torch.autograd.grad(loss, logp)
    seq_ratio = torch.exp(masked_mean(logp - old_logp, mask, dim=-1))  # [B]
    (direct,) = torch.autograd.grad(-(adv * seq_ratio * mask.any(-1)).sum() / 3, logp)
    assert metrics["clip_frac"].item() == 0.0
    torch.testing.assert_close(ours, direct, atol=1e-12, rtol=0)
    assert ours.abs().sum() > 0


def test_gspo_clips_whole_sequences():
    # Sequence log ratio = mean(0.001, -0.0002) = 0.0004 -> ratio 1.0004 > 1 + 3e-4 with A > 0:
    # every token clipped, although token 1 alone (ratio 0.9998) sits inside the range.
    logp = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    old_logp = torch.tensor([[-0.001, 0.0002]], dtype=torch.float64)
    loss, metrics = policy_loss(
        logp,
        old_logp,
        torch.tensor([1.0], dtype=torch.float64),
        torch.ones(1, 2),
        eps_low=3e-4,
        ratio_level="sequence",
    )
    loss.backward()
    assert logp.grad.eq(0).all() and metrics["clip_frac_high"].item() == 1.0
    assert loss.item() == pytest.approx(-(1 + 3e-4), abs=1e-15)


# ---------------------------------------------------------------- padding never reaches exp


@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.04, 0.0])
@pytest.mark.parametrize("old_shift", [0.0, 100.0, -100.0])
def test_padding_never_reaches_exp_so_gradients_stay_finite(ratio_level, beta, old_shift):
    # The reference's log-probs are 0 after EOS, so at the padded position k3 would read
    # exp(0 - (-100)) = inf in float32, and an old_logp 100 below logp a ratio exp(100) = inf: masked in
    # the forward, but 0 * inf = NaN in the backward. The gradient must be that of the loss without the
    # padded position. By hand (ratio 1, A = 1): d loss / d logp_0 = -(A + beta * (pi_ref / pi - 1))
    # = -(1 + beta * (e^-0.1 - 1)) = -0.996193 for beta = 0.04, -1 for beta = 0; 0 at the padding.
    logp = torch.tensor([[-1.0, -100.0]], requires_grad=True)
    old_logp = logp.detach() + torch.tensor([[0.0, old_shift]])
    ref_logp, adv = torch.tensor([[-1.1, 0.0]]), torch.tensor([1.0])
    kwargs = {"ref_logp": ref_logp, "beta": beta, "ratio_level": ratio_level}
    loss, metrics = policy_loss(logp, old_logp, adv, torch.tensor([[1, 0]]), **kwargs)
    loss.backward()
    short = logp.detach()[:, :1].requires_grad_()
    kwargs["ref_logp"] = ref_logp[:, :1]
    short_loss, short_metrics = policy_loss(short, old_logp[:, :1], adv, torch.tensor([[1]]), **kwargs)
    short_loss.backward()
    assert torch.isfinite(logp.grad).all(), logp.grad
    assert logp.grad[0, 0].item() == short.grad[0, 0].item() and logp.grad[0, 1].item() == 0.0
    assert logp.grad[0, 0].item() == pytest.approx(-(1 + beta * (math.exp(-0.1) - 1)), abs=1e-6)
    assert loss.item() == short_loss.item()
    assert {k: v.item() for k, v in metrics.items()} == {k: v.item() for k, v in short_metrics.items()}


@pytest.mark.parametrize("pad_ref", [0.0, -math.inf])
@pytest.mark.parametrize("estimator", [kl_k1, kl_k2, kl_k3])
def test_kl_estimators_with_a_mask_give_zero_value_and_gradient_on_padding(estimator, pad_ref):
    # logp = -100 and ref 0 at the padding: unmasked k3 = e^100 (inf in float32); ref -inf: k1, k2
    # and k3 are inf. With the mask the padded value is 0, its gradient 0 (not NaN), and the valid
    # positions equal the unmasked estimator's.
    logp = torch.tensor([[-1.0, -2.0, -100.0]], requires_grad=True)
    ref_logp, mask = torch.tensor([[-2.0, -1.5, pad_ref]]), torch.tensor([[1, 1, 0]])
    kl = estimator(logp, ref_logp, mask)  # [1, 3]
    (grad,) = torch.autograd.grad(kl.sum(), logp)
    (valid_grad,) = torch.autograd.grad(estimator(logp[:, :2], ref_logp[:, :2]).sum(), logp)
    assert kl[0, 2].item() == 0.0 and torch.isfinite(grad).all() and grad[0, 2].item() == 0.0
    assert torch.equal(kl[:, :2], estimator(logp[:, :2], ref_logp[:, :2]))
    assert torch.equal(grad[:, :2], valid_grad[:, :2])


# ---------------------------------------------------------------- gradient accumulation


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_micro_batches_sum_to_the_whole_batch(aggregation):
    rng = random.Random(f"accumulate-{aggregation}")
    logp_list, old_list, ref_list, mask_list, adv_list = random_batch(rng, B=6, T=5)
    logp = torch.tensor(logp_list, dtype=torch.float64, requires_grad=True)
    old_logp, ref_logp = (
        torch.tensor(old_list, dtype=torch.float64),
        torch.tensor(ref_list, dtype=torch.float64),
    )
    mask, adv = torch.tensor(mask_list), torch.tensor(adv_list, dtype=torch.float64)
    kwargs = {"aggregation": aggregation, "beta": 0.04, "max_completion_length": 5}
    whole, _ = policy_loss(logp, old_logp, adv, mask, ref_logp=ref_logp, **kwargs)
    (whole_grad,) = torch.autograd.grad(whole, logp)

    def micro_batch_losses(**totals):
        return [
            policy_loss(
                logp[rows], old_logp[rows], adv[rows], mask[rows], ref_logp=ref_logp[rows], **kwargs, **totals
            ).loss
            for rows in (slice(0, 2), slice(2, 5), slice(5, 6))
        ]

    accumulated = sum(micro_batch_losses(total_tokens=int(mask.sum()), total_sequences=5))  # one row empty
    (accumulated_grad,) = torch.autograd.grad(accumulated, logp)
    torch.testing.assert_close(accumulated, whole, atol=1e-12, rtol=0)
    torch.testing.assert_close(accumulated_grad, whole_grad, atol=1e-12, rtol=0)
    # Without the totals each micro-batch normalises by itself and the sum is a different number.
    assert abs(sum(micro_batch_losses()).item() - whole.item()) > 1e-3


# ---------------------------------------------------------------- mu = 1 and errors


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.floats(-2, 2), min_size=4, max_size=4), st.lists(st.integers(1, 5), min_size=4, max_size=4)
)
def test_on_policy_loss_value_is_minus_the_mean_advantage(adv_values, lengths):
    # mu = 1: ratio 1, so with one A per output and seq_mean_token_mean the loss is -mean(A) exactly.
    adv = torch.tensor(adv_values, dtype=torch.float64)
    mask = torch.tensor([[1] * n + [0] * (5 - n) for n in lengths])
    logp = torch.randn(4, 5, dtype=torch.float64)
    loss, _ = policy_loss(logp, logp, adv, mask)
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-12)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"aggregation": "sum"}, "aggregation"),
        ({"ratio_level": "segment"}, "ratio_level"),
        ({"aggregation": "seq_mean_token_sum_norm"}, "max_completion_length"),
        ({"beta": 0.04}, "ref_logp"),
    ],
)
def test_policy_loss_rejects_bad_options(bad, match):
    logp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=match):
        policy_loss(logp, logp, torch.zeros(2), torch.ones(2, 3), **bad)


def test_policy_loss_rejects_misshaped_advantages():
    logp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(logp, logp, torch.zeros(3), torch.ones(2, 3))
