"""Every algorithm function stays on the device of its inputs.

The "meta" device has no data, so any tensor the library created on the default device (CPU)
would meet a meta tensor and raise: this checks device-following without a GPU. The CUDA test
compares values with the CPU and is skipped without a GPU."""

import pytest
import torch

from grpo.algorithm import (
    gae,
    leave_one_out_advantages,
    mask_truncated,
    outcome_advantages,
    policy_loss,
    process_advantages,
    soft_overlong_penalty,
    value_loss,
    zero_std_fraction,
)
from grpo.algorithm.ppo import whiten

AGGREGATIONS = ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]


def run_everything(device: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Calls every tensor function once on fixed inputs placed on `device`."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=dtype).to(device)

    rewards = torch.tensor([0.9, 0.3, 0.8, 0.2, 1.0, 1.0, float("nan"), 0.0], dtype=dtype, device=device)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], device=device)
    step_end_index = torch.tensor([[0, 2], [1, 4], [0, 9], [1, -1]], device=device)
    out = {
        "zero_std": zero_std_fraction(rewards, 4),
        "rloo": leave_one_out_advantages(rewards, 4),
        "process": process_advantages(rand(4, 2), step_end_index, 2, mask),
        "overlong": soft_overlong_penalty(torch.tensor([3, 8, 12], device=device), 10, 4),
        "truncated": mask_truncated(mask, torch.tensor([True, False, False, True], device=device)),
    }
    for scale in ("group", "batch", "none"):
        out[f"outcome_{scale}"] = outcome_advantages(rewards, 4, scale=scale)
    logp, old_logp, ref_logp, adv = -rand(4, 5), -rand(4, 5), -rand(4, 5), out["outcome_group"][:4]
    for aggregation in AGGREGATIONS:
        for ratio_level in ("token", "sequence"):
            x = logp.clone().requires_grad_(True)
            loss, metrics = policy_loss(
                x,
                old_logp,
                adv,
                mask,
                aggregation=aggregation,
                ref_logp=ref_logp,
                beta=0.04,
                ratio_level=ratio_level,
                max_completion_length=5,
                total_tokens=torch.tensor(11, device=device),
                total_sequences=4,
            )
            loss.backward()
            out[f"loss_{aggregation}_{ratio_level}"] = loss.detach()
            out[f"grad_{aggregation}_{ratio_level}"] = x.grad
            out.update({f"{name}_{aggregation}_{ratio_level}": v for name, v in metrics.items()})
    values, returns = rand(4, 5), rand(4, 5)
    out["gae"], out["returns"] = gae(rand(4, 5), values, mask, gamma=0.99, lam=0.95)
    out["value_loss"] = value_loss(values, rand(4, 5), returns, mask)
    out["whiten"] = whiten(values, mask)
    return out


def test_meta_device_is_followed():
    for name, value in run_everything("meta").items():
        assert value.device.type == "meta", name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    cpu, cuda = run_everything("cpu", torch.float64), run_everything("cuda", torch.float64)
    for name in cpu:
        assert cuda[name].device.type == "cuda", name
        torch.testing.assert_close(cuda[name].cpu(), cpu[name], atol=1e-12, rtol=0, msg=name)
