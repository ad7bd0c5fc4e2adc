"""Which of grpo's fast paths a model gets: an explicit list of transformers classes per path, and a check
against transformers' own forward once per load. Never a silently different model.

The fast paths replace parts of the forward that transformers runs:

| path | what it replaces | where |
|---|---|---|
| `lean_mlp` | the MLP's forward: the SiLU recomputed in backward | `grpo.models.lean_layers` |
| `gqa_attention` | on CPU, the attention function: kv heads read in place | `grpo.models.lean_layers` |
| `chunked_head` | the LM head, log-softmax and gather: chunked, hand-written backward | `grpo.models.logprobs` |
| `shared_prompts` | one forward per row: each distinct prompt once, then its K/V copied | `grpo.models.logprobs` |
| `lean_decoder` | sampling's forward: a fixed-size cache, fused projections | `grpo.rollout.lean` |

A model gets a path only if its class is listed for it in PROVEN (`grpo.models.proven`; the transformers
class, under peft or FSDP wrappers): the classes whose modeling code was read and whose forward the path
reproduces, each tested in tests/test_architectures.py. `prepare_fast_paths` (called by `load_policy`) then runs
the model once with the paths and once without on a small random batch (2 prompts x 2 completions,
9 tokens) and compares: completion log-probs within LOGP_ATOL, and, after one backward of
sum(logp + 0.1 * entropy), the gradients of the last decoder layer, the final norm and an untied LM head
each within GRAD_RTOL of its largest entry. The lean decoder is checked the same way, its prefill and one step
against a full forward, the first time the sampler builds it (`grpo.rollout.lean.LeanDecoder.build`).
A class not in PROVEN, a transformers without a name a path needs (`grpo.models.hf_internals`), or a
failed check: that path is off and the stock forward runs, with one warning line naming the
architecture and what was skipped, e.g.

    grpo: Gemma2ForCausalLM (gemma2) runs transformers' stock forward: lean MLP,
    GQA attention, chunked LM head,
    shared prompts, lean decoder skipped (not on grpo's list of proven architectures)

What a model got is `enabled_paths(model)`. A model built without `load_policy` (tests, a script) gets
PROVEN's paths for its class, unchecked.
"""  # noqa: E501  (the table rows above are longer than a line)

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

from grpo.models.hf_internals import decoder_stack, missing_internals
from grpo.models.lean_layers import lean_layers, remove_lean_layers
from grpo.models.loading import unwrap
from grpo.models.proven import FAST_PATHS, NAMES, PROVEN

LOGP_ATOL = 1e-4
"""Largest |fast - stock| of a completion log-prob (float32) the load check accepts."""
GRAD_RTOL = 1e-3
"""Largest |fast - stock| of a gradient entry, relative to that gradient's largest |entry|."""


class FastPathWarning(UserWarning):
    """A fast path was skipped: the model runs transformers' stock forward there."""


class CheckResult(NamedTuple):
    logp_err: float
    """max |logp_fast - logp_stock| over the batch's completion tokens."""
    grad_err: float
    """max over the checked gradients of max |g_fast - g_stock| / max |g_stock|."""

    @property
    def ok(self) -> bool:
        return self.logp_err <= LOGP_ATOL and self.grad_err <= GRAD_RTOL

    def __str__(self) -> str:
        return f"max |d logp| {self.logp_err:.2g}, max relative |d grad| {self.grad_err:.2g}"


def _hf_class(model) -> type:
    """The transformers class of `model` (under peft: its base; under FSDP2: the class it wraps)."""
    cls = type(unwrap(model))
    for c in cls.__mro__:
        if not c.__module__.startswith("torch."):  # FSDP2 subclasses the model class in torch.distributed
            return c
    return cls


def architecture(model) -> str:
    """The name the warnings use: the transformers class, and config.model_type where it differs."""
    cls = _hf_class(model)
    model_type = getattr(getattr(unwrap(model), "config", None), "model_type", None)
    return cls.__name__ + (f" ({model_type})" if model_type else "")


def proven_paths(model) -> frozenset[str]:
    """PROVEN's paths for the model's class (a class from transformers itself; none for remote code)."""
    cls = _hf_class(model)
    if not cls.__module__.startswith("transformers.models."):
        return frozenset()
    return PROVEN.get(cls.__name__, frozenset())


def enabled_paths(model) -> frozenset[str]:
    """The fast paths `model` runs: what its load check left (`prepare_fast_paths`), else `proven_paths`."""
    paths = getattr(unwrap(model), "grpo_fast_paths", None)
    return proven_paths(model) if paths is None else paths


def warn_skipped(model, skipped: dict[str, str]) -> None:
    """One warning line: the architecture, the paths skipped and why ({path: reason})."""
    if not skipped:
        return
    by_reason: dict[str, list[str]] = {}
    for path, reason in skipped.items():
        by_reason.setdefault(reason, []).append(NAMES[path])
    parts = "; ".join(f"{', '.join(paths)} skipped ({reason})" for reason, paths in by_reason.items())
    warnings.warn(f"grpo: {architecture(model)} runs transformers' stock forward: {parts}", FastPathWarning,
                  stacklevel=3)


def disable_path(model, path: str, reason: str) -> None:
    """Turn `path` off for `model` from now on, with the warning line."""
    base = unwrap(model)
    base.grpo_fast_paths = enabled_paths(model) - {path}
    warn_skipped(model, {path: reason})


class FastPaths(NamedTuple):
    """What `prepare_fast_paths` decided."""

    enabled: frozenset[str]
    """The paths the model runs (also `enabled_paths(model)`)."""
    skipped: dict[str, str]
    """{path: why} for each path not run (not proven, a missing transformers name, a failed check)."""
    check: CheckResult | None
    """The load check of the paths applied together (None where nothing was applied)."""


def prepare_fast_paths(model, check: bool = True) -> FastPaths:
    """Apply the proven fast paths to a freshly loaded transformers model, check them against the stock
    forward (`check_fast_paths`), keep those that pass, and warn once about the rest (module docstring)."""
    proven = proven_paths(model)
    skipped = {p: "not on grpo's list of proven architectures" for p in FAST_PATHS if p not in proven}
    for name, path in missing_internals().items():
        if path in proven:
            skipped[path] = f"this transformers has no {name}"
    candidates = frozenset(p for p in proven if p not in skipped)
    lean_layers(model, candidates)
    result = None
    if check and candidates:
        try:
            result, failed = check_fast_paths(model, candidates)
        except Exception as e:  # noqa: BLE001 (a structure the paths misread: the stock forward, said once)
            result, failed = None, {p: f"its check raised {type(e).__name__}: {e}" for p in candidates}
        if failed:
            remove_lean_layers(model, mlp="lean_mlp" in failed, attention="gqa_attention" in failed)
            skipped.update(failed)
            candidates = candidates - set(failed)
    unwrap(model).grpo_fast_paths = candidates
    warn_skipped(model, {p: skipped[p] for p in FAST_PATHS if p in skipped})
    return FastPaths(candidates, skipped, result)


def check_batch(vocab_size: int, device) -> tuple[torch.Tensor, ...]:
    """prompt_ids, prompt_mask [4, 5], completion_ids, completion_mask [4, 4]: 2 prompts x 2 completions,
    the first prompt left-padded by 2, one completion ending after 2 tokens; ids from a fixed seed."""
    g = torch.Generator().manual_seed(0)
    n = min(vocab_size, 1000)
    prompt_ids = torch.randint(0, n, (2, 5), generator=g).repeat_interleave(2, 0)  # [4, 5]
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[:2, :2] = 0
    completion_ids = torch.randint(0, n, (4, 4), generator=g)  # [4, 4]
    completion_mask = torch.ones_like(completion_ids)
    completion_mask[1, 2:] = 0
    return tuple(t.to(device) for t in (prompt_ids, prompt_mask, completion_ids, completion_mask))


def _checked_parameters(model) -> list[torch.nn.Parameter]:
    """The parameters whose gradients the check compares: the last decoder layer's, the final norm's and
    an untied LM head's (or all, where there are no layers). Not the first layer's or a tied head's: their
    gradients need the backward through every layer, the check's largest cost on a real model, while
    the last layer already runs every replaced backward (MLP, attention, K/V copies, the head's)."""
    stack = decoder_stack(unwrap(model))
    if stack is None or not stack.layers:
        return [p for p in model.parameters() if p.requires_grad]
    modules = [stack.layers[-1], stack.norm]
    if getattr(stack.lm_head, "weight", None) is not getattr(stack.embed_tokens, "weight", None):
        modules.append(stack.lm_head)
    params = list(dict.fromkeys(p for m in modules for p in m.parameters()))
    return [p for p in params if p.requires_grad]


def _run(model, batch, params, paths) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Completion log-probs [4, 4] (0 on padding) and the gradients of sum(logp + 0.1 * entropy)."""
    # not at the top: grpo.models.logprobs imports this module (an import cycle)
    from grpo.models.logprobs import completion_logprobs

    out = completion_logprobs(model, *batch, temperature=0.7, with_entropy=True, entropy_grad=True,
                              share_prompts="shared_prompts" in paths, chunked_head="chunked_head" in paths)
    mask = batch[3]
    loss = ((out.logp + 0.1 * out.entropy) * mask).sum()
    return out.logp.detach() * mask, torch.autograd.grad(loss, params, allow_unused=True)


def compare(fast, stock) -> CheckResult:
    """`CheckResult` of two `_run` results."""
    (lp_fast, g_fast), (lp_stock, g_stock) = fast, stock
    grad_err = 0.0
    for a, b in zip(g_fast, g_stock):
        if a is None or b is None:
            if (a is None) != (b is None):
                grad_err = float("inf")
            continue
        grad_err = max(grad_err, float((a - b).abs().max() / b.abs().max().clamp(min=1e-12)))
    return CheckResult(float((lp_fast - lp_stock).abs().max()), grad_err)


def check_fast_paths(model, paths: frozenset[str]) -> tuple[CheckResult, dict[str, str]]:
    """(the check of `paths` together, {path: reason} of those that fail): the model with `paths` (its lean
    layers already applied) against the same model with none, on `check_batch`, in eval mode (no dropout).
    Where the paths together fail, each is checked alone to find the ones at fault."""
    base = unwrap(model)
    was_training = base.training
    base.eval()
    try:
        batch = check_batch(base.get_input_embeddings().num_embeddings, next(base.parameters()).device)
        params = _checked_parameters(base)
        with torch.enable_grad():
            fast = _run(base, batch, params, paths)
            remove_lean_layers(base)
            stock = _run(base, batch, params, frozenset())
            together = compare(fast, stock)
            failed = {}
            if not together.ok:
                for path in sorted(paths):
                    if path in ("lean_mlp", "gqa_attention"):
                        lean_layers(base, {path})
                    alone = compare(_run(base, batch, params, {path}), stock)
                    remove_lean_layers(base)
                    if not alone.ok:
                        failed[path] = f"failed its check against the stock forward: {alone}"
                if not failed:  # each passes alone, not together: none is kept
                    failed = {p: f"failed its check against the stock forward: {together}" for p in paths}
            lean_layers(base, paths - set(failed))
    finally:
        base.train(was_training)
    return together, failed
