"""The PPO baseline's extra parts: a learned value model and GAE advantages (DeepSeekMath §4.1, eq. 1-2).

PPO for LLMs, as the paper describes it: the reward model's score sits on the last token, a KL
penalty to the reference is folded into every token's reward,

    r_t = -beta * (log pi_old(o_t) - log pi_ref(o_t))  +  [t = last] * R(q, o),

advantages come from GAE over a value model V(q, o_<t) (whitened over the batch's tokens), and the
value model is trained with the clipped value loss. Everything else (rollout, rewards, the clipped
policy surrogate, logging, checkpoints) is the GRPO loop's own; the step reaches this module only
through PPO's advantage estimator (`grpo.train.advantages.ppo_gae`). The value model is a second copy
of the policy's transformer with a scalar head, initialised from the policy (the paper's PPO holds
policy, reference, value and reward models; GRPO drops the value model); `ppo.value_model=head` keeps
only a scalar head on the policy's own hidden states instead (no second model, the value loss never
reaches the policy).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn

from grpo.algorithm import gae, kl_k1, value_loss, whiten
from grpo.models.logprobs import position_ids_from_mask
from grpo.models.loading import unwrap
from grpo.rollout.engine import Rollout
from grpo.train.distributed import SINGLE, Dist, all_reduce_grads, all_sum, global_totals
from grpo.train.optim import adamw, clip_gradients
from grpo.train.update import micro_batches


class ValueModel(nn.Module):
    """V(prefix): a transformer body with a zero-initialised scalar head.

    shared=False: the body is a trained copy of the policy's. shared=True: the body is the policy's
    own, run without gradients (not a submodule: neither trained nor saved here); only the head learns.
    """

    def __init__(self, policy, shared: bool = False):
        super().__init__()

        base = unwrap(policy)
        body = base.get_decoder() if hasattr(base, "get_decoder") else base.model
        if shared:
            self._shared_body = (body,)  # a tuple: kept out of parameters() and state_dict()
        else:
            self.body = copy.deepcopy(body)
            self.body.requires_grad_(True)
        self.head = nn.Linear(base.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, r: Rollout) -> torch.Tensor:
        """Value of the state before each completion token. [N, T]"""
        ids = torch.cat([r.prompt_ids, r.completion_ids], dim=1)  # [N, P+T]
        mask = torch.cat([r.prompt_mask, r.completion_mask], dim=1)  # [N, P+T]
        shared = getattr(self, "_shared_body", None)
        with torch.no_grad() if shared else contextlib.nullcontext():
            body = shared[0] if shared else self.body
            hidden = body(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                          use_cache=False).last_hidden_state  # [N, P+T, H]
        T = r.completion_ids.shape[1]
        return self.head(hidden[:, -T - 1:-1]).squeeze(-1).float()  # [N, T]


@dataclass
class PPOBatch:
    advantages: torch.Tensor  # [N, T] whitened GAE advantages
    returns: torch.Tensor  # [N, T] value targets
    old_values: torch.Tensor  # [N, T] values at rollout time
    kl_reward: float  # mean per-token KL penalty folded into the reward


def _global_moments(x: torch.Tensor, mask: torch.Tensor, dist: Dist) -> tuple[float, float] | None:
    """(mean, unbiased variance) of x's valid entries over every rank's batch (None with one process:
    `whiten` takes its own); float64 sums, two collectives."""
    if not dist.enabled:
        return None
    valid = mask.bool()  # [N, T]
    count, total = all_sum([float(valid.sum()), float(torch.where(valid, x, 0.0).sum())], dist)
    mean = total / max(count, 1.0)
    (squares,) = all_sum([float(torch.where(valid, (x - mean) ** 2, 0.0).sum())], dist)
    return mean, squares / max(count - 1.0, 1.0)


class Critic:
    """The value model, its optimizer, and the PPO advantage computation.

    Under torchrun (DDP) every rank holds the same value model (built from the same broadcast policy,
    zero head) and takes the same step: advantages are whitened with the global batch's moments, the
    value loss is normalised by the global token count and its gradients summed over ranks, as the
    policy's are (grpo.train.distributed)."""

    def __init__(self, policy, cfg, dist: Dist = SINGLE):
        self.cfg, self.dist = cfg.ppo, dist
        self.model = (
            ValueModel(policy, shared=self.cfg.value_model == "head")
            .to(next(policy.parameters()).device)
            .train()
        )
        self.optim = cfg.optim  # betas, weight decay and clipping; the learning rate is ppo.value_lr
        self.optimizer = adamw(self.model.parameters(), self.cfg.value_lr, self.optim)
        self.micro, self.micro_tokens = cfg.train.micro_batch_size, cfg.train.micro_batch_tokens

    @torch.no_grad()
    def advantages(self, r: Rollout, rewards: torch.Tensor, old_logp: torch.Tensor,
                   ref_logp: torch.Tensor | None, beta: float) -> PPOBatch:
        mask = r.completion_mask  # [N, T]
        values = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)  # [N, T], 0 past each end
        for mb in micro_batches(r, self.micro, self.micro_tokens, self.dist):  # as the policy's passes
            values[mb.rows, :mb.completion_len] = self.model(mb.select(r)) * mb.completion(mask)
        kl = kl_k1(old_logp, ref_logp, mask) if ref_logp is not None else torch.zeros_like(values)  # [N, T]
        token_rewards = -beta * kl  # [N, T]
        last = (mask.sum(-1) - 1).clamp(min=0)  # [N] index of each completion's last token
        score = torch.nan_to_num(rewards.to(values), nan=0.0)  # [N]
        token_rewards[torch.arange(len(last)), last] += score
        adv, returns = gae(token_rewards, values, mask, gamma=self.cfg.gamma, lam=self.cfg.lam)  # [N, T]
        if self.cfg.whiten:
            adv = whiten(adv, mask, moments=_global_moments(adv, mask, self.dist))
        kl_sum, tokens = all_sum([float((kl * mask).sum()), float(mask.sum())], self.dist)
        return PPOBatch(adv, returns, values, kl_sum / max(tokens, 1.0))

    def update(self, r: Rollout, batch: PPOBatch) -> dict:
        """One optimizer step of the clipped value loss over the batch (micro-batched, summed exactly)."""
        mask = r.completion_mask
        total = global_totals(mask, self.dist)["total_tokens"]  # the global batch's, as the policy loss's
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for mb in micro_batches(r, self.micro, self.micro_tokens, self.dist):
            v = self.model(mb.select(r))  # [n, t]
            loss = value_loss(v, mb.completion(batch.old_values), mb.completion(batch.returns),
                              mb.completion(mask),
                              self.cfg.value_clip, total_tokens=total)
            loss.backward()
            loss_sum += float(loss.detach())
        params = [p for p in self.model.parameters() if p.requires_grad]
        all_reduce_grads(params, self.dist)
        clip_gradients(params, self.optim)
        self.optimizer.step()
        return {"ppo/value_loss": all_sum([loss_sum], self.dist)[0]}
