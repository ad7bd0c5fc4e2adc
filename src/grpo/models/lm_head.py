"""Log-probs (and entropy) of given tokens through the LM head, a chunk of positions at a time, with a
hand-written backward that recomputes each chunk's logits (docs/algorithm.md, DESIGN §9).

For hidden states h [N, H], head weight W [V, H] (bias b [V]), z = (h W^T + b) / tau, per position:

    logp = z[y] - lse(z)                      H = lse(z) - sum_v p_v z_v,  p = softmax(z)
    dlogp/dz = onehot(y) - p                  dH/dz = -p * (log p + H)

Forward keeps only lse and H per position ([N] each), never the [N, V] logits. Backward recomputes one
chunk's z, turns it into p in place, forms dz = g_logp * (onehot - p) + g_H * dH/dz in that same buffer,
and accumulates dh = dz W / tau and dW = dz^T h / tau. Autograd through the same arithmetic (a
checkpointed chunk) allocates several [chunk, V] temporaries per op of logsumexp's and the division's
backward; on SmolLM2's 49,152-token vocabulary that was ~3 s of a 30 s update (bench/run_real_bench.sh).

Under autocast the recompute runs under the forward's autocast state, so it sees the forward's logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float) -> torch.Tensor:
    z = F.linear(h, weight, bias).float()  # [n, V]: log-probs are float32 whatever the model's dtype
    if temperature not in (0.0, 1.0):
        z.div_(temperature)
    return z


class ChunkedHeadLogProbs(torch.autograd.Function):
    """(logp [N], entropy [N]) of index [N] under softmax((hidden W^T + b) / temperature), chunk rows at a
    time. Gradients reach hidden, weight and bias; entropy's gradient is computed only if it is used."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, index, temperature: float, chunk: int, with_entropy: bool):
        device_type = hidden.device.type
        ctx.autocast = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        logps, lses, ents = [], [], []
        with torch.no_grad():
            for h, ix in zip(hidden.split(chunk), index.split(chunk)):
                z = _logits(h, weight, bias, temperature)  # [n, V]
                lse = torch.logsumexp(z, dim=-1)  # [n]
                logps.append(z.gather(-1, ix[:, None]).squeeze(-1) - lse)
                lses.append(lse)
                if with_entropy:
                    z.sub_(lse[:, None])  # log p
                    ents.append(-(z.exp() * z).sum(-1))  # [n]
        logp, lse = torch.cat(logps), torch.cat(lses)
        entropy = torch.cat(ents) if with_entropy else torch.zeros_like(logp)
        ctx.save_for_backward(hidden, weight, bias, index, lse, entropy)
        ctx.temperature, ctx.chunk = temperature, chunk
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_entropy):
        hidden, weight, bias, index, lse, entropy = ctx.saved_tensors
        tau = ctx.temperature if ctx.temperature not in (0.0, 1.0) else 1.0
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        use_entropy = g_entropy is not None and bool(g_entropy.ne(0).any())
        device_type = hidden.device.type
        enabled, dtype = ctx.autocast
        start = 0
        for h, ix in zip(hidden.split(ctx.chunk), index.split(ctx.chunk)):
            n = h.shape[0]
            rows = slice(start, start + n)
            with torch.no_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
                z = _logits(h, weight, bias, ctx.temperature)  # [n, V]
            z.sub_(lse[rows, None])  # log p
            g = g_logp[rows].to(z.dtype)
            if use_entropy:
                p = z.exp()
                ge = g_entropy[rows].to(z.dtype)
                # dz = -g p + g_H * (-p (log p + H)) = -p * (g + g_H (log p + H)); then + g at y
                z.add_(entropy[rows, None]).mul_(ge[:, None]).add_(g[:, None]).mul_(p).neg_()
                dz = z
            else:
                dz = z.exp_().mul_(-g[:, None])  # -g p
            dz.scatter_add_(-1, ix[:, None], g[:, None])  # + g onehot(y)
            if tau != 1.0:
                dz.div_(tau)
            if need_h:
                grad_h[rows] = (dz @ weight.to(dz.dtype)).to(hidden.dtype)
            if need_w:
                grad_w.addmm_(dz.t(), h.to(dz.dtype))
            if need_b:
                grad_b.add_(dz.sum(0))
            start += n
        grad_w = grad_w.to(weight.dtype) if need_w else None
        grad_b = grad_b.to(bias.dtype) if need_b else None
        return grad_h, grad_w, grad_b, None, None, None, None


def chunked_head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          index: torch.Tensor, temperature: float, chunk: int,
                          with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logp [N], entropy [N] or None) for hidden [N, H] and index [N]; see `ChunkedHeadLogProbs`."""
    logp, entropy = ChunkedHeadLogProbs.apply(hidden, weight, bias, index, temperature, chunk, with_entropy)
    return logp, entropy if with_entropy else None
