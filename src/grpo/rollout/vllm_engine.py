"""Rollouts from vLLM on a GPU, colocated with the trainer, behind the same interface as `HFEngine`.

    engine = VLLMEngine(model_dir, eos_token_id=stop_token_ids(policy, tok), pad_token_id=tok.pad_token_id)
    r = engine.generate(prompt_ids, SamplingParams(max_new_tokens=256, temperature=1.0, G=8), gen)
    ...one optimizer step on the policy...
    engine.sync_weights(policy)   # vLLM samples from the updated weights from here on

vLLM is imported when an engine is built, never at import time, so this module loads (and its tests
skip) where vLLM or a GPU is absent. The engine runs in the training process (`LLM` with
`VLLM_ENABLE_V1_MULTIPROCESSING=0`), taking `gpu_memory_utilization` of the GPU for its weights and
KV cache; `sync_weights` copies the policy's state dict into vLLM's model with the model's own
`load_weights` (tensor parallel size 1). Sampled log-probs come back under the sampling
distribution (vLLM's `logprobs_mode="processed_logprobs"`); on a vLLM without that mode they are
the raw model's, which is the sampling distribution only at temperature 1 without top-p, and
`Rollout.logp` is None otherwise (the loop recomputes what it needs).

`rollout_from_outputs` turns vLLM's outputs into the `Rollout` layout; it is pure Python and tested
without vLLM. The stepwise calls of `RolloutEngine` (multi-turn rollouts) raise a UserError: this engine
hands whole completions to vLLM.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import NoReturn

import torch

from grpo.errors import UserError
from grpo.models.loading import hf_weights
from grpo.rollout.engine import Rollout, SamplingParams, pad_left

SYNC_TIMEOUT_S = 300
"""A weight copy into a vLLM worker process that takes longer than this is an error, not a hang."""


def rollout_from_outputs(prompt_ids: list[list[int]], outputs: Sequence, G: int, pad_id: int,
                         device: torch.device | str = "cpu", with_logp: bool = True) -> Rollout:
    """The Rollout of vLLM `RequestOutput`s (one per prompt, each with G `.outputs` that carry
    `token_ids`, `logprobs` (one {token_id: Logprob} per token, or None) and `finish_reason`)."""
    completions = [c for out in outputs for c in out.outputs]  # prompt-major: groups are contiguous
    if len(completions) != len(prompt_ids) * G:
        raise ValueError(f"expected {len(prompt_ids)} x {G} completions, got {len(completions)}")
    N, T = len(completions), max((len(c.token_ids) for c in completions), default=0)
    ids = torch.full((N, T), pad_id, dtype=torch.long)
    mask = torch.zeros((N, T), dtype=torch.long)
    logp = torch.zeros((N, T)) if with_logp else None
    for i, c in enumerate(completions):
        n = len(c.token_ids)
        ids[i, :n] = torch.tensor(list(c.token_ids), dtype=torch.long)
        mask[i, :n] = 1
        if logp is not None:
            if c.logprobs is None:
                logp = None
            else:
                logp[i, :n] = torch.tensor([step[t].logprob for t, step in zip(c.token_ids, c.logprobs)])
    p_ids, p_mask = pad_left(prompt_ids, pad_id)
    truncated = torch.tensor([c.finish_reason == "length" for c in completions])
    return Rollout(prompt_ids=p_ids.repeat_interleave(G, 0).to(device),
                   prompt_mask=p_mask.repeat_interleave(G, 0).to(device),
                   completion_ids=ids.to(device), completion_mask=mask.to(device),
                   truncated=truncated.to(device),
                   logp=None if logp is None else logp.to(device))


class VLLMEngine:
    """vLLM `LLM` in this process, sharing the GPU with the trainer.

    model_path: a local Hugging Face directory (the policy's starting weights).
    gpu_memory_utilization: share of the GPU vLLM may take (weights + KV cache); the trainer needs the rest.
    dtype: vLLM's compute dtype ('bfloat16' on GPUs that have it).
    max_model_len: longest prompt + completion, which sizes vLLM's KV cache (None: the model's own).
    """

    def __init__(self, model_path: str, eos_token_id: int | list[int], pad_token_id: int, *,
                 gpu_memory_utilization: float = 0.3, dtype: str = "bfloat16",
                 max_model_len: int | None = None,
                 seed: int = 0, device: str = "cuda", **llm_kwargs):
        try:
            import vllm
        except ImportError:
            raise UserError(
                "the vLLM rollout engine needs vLLM on a CUDA machine: pip install vllm"
            ) from None
        if not torch.cuda.is_available():
            raise UserError("the vLLM rollout engine needs a CUDA GPU; use the default HF engine on this "
                            "machine")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: weights can be synced
        self._vllm = vllm
        kwargs = dict(model=str(model_path), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                      max_model_len=max_model_len, seed=seed, enable_prefix_caching=True, **llm_kwargs)
        self.processed_logprobs = _accepts(vllm, "logprobs_mode")
        if self.processed_logprobs:
            kwargs["logprobs_mode"] = "processed_logprobs"
        self.llm = vllm.LLM(**{k: v for k, v in kwargs.items() if v is not None})
        self.eos = eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
        self.pad_id, self.device = pad_token_id, torch.device(device)

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams,
                 generator: torch.Generator | None = None) -> Rollout:
        seed = None if generator is None else int(torch.randint(2**31 - 1, (1,), generator=generator,
                                                                device=generator.device))
        exact = self.processed_logprobs or (params.temperature in (0.0, 1.0) and params.top_p == 1.0)
        sp = self._vllm.SamplingParams(
            n=params.G, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens,
            min_tokens=params.min_new_tokens, logprobs=0 if exact else None, seed=seed,
            stop_token_ids=self.eos, skip_special_tokens=False)
        prompts = [{"prompt_token_ids": ids} for ids in prompt_ids]
        outputs = self.llm.generate(prompts, sp, use_tqdm=False)
        return rollout_from_outputs(prompt_ids, outputs, params.G, self.pad_id, self.device, with_logp=exact)

    def prefill(self, prompt_ids: list[list[int]], params: SamplingParams) -> None:
        _refuse_stepwise("prefill")

    def step(self, generator: torch.Generator | None = None) -> bool:
        _refuse_stepwise("step")

    def ended_turns(self) -> dict[int, list[int]]:
        _refuse_stepwise("ended_turns")

    def append(self, row: int, ids: list[int]) -> None:
        _refuse_stepwise("append")

    def finish(self) -> Rollout:
        _refuse_stepwise("finish")

    def sync_weights(self, model) -> None:
        """Load `model`'s current weights into vLLM's copy (after every update). A peft LoRA model's are sent
        with the adapters folded in, under transformers' names (`hf_weights`). Any failure, including a
        worker that does not answer within `SYNC_TIMEOUT_S`, is a UserError: sampling on from stale
        weights would train on the wrong policy without a sign."""
        weights = hf_weights(model)
        try:
            target = _driver_model(self.llm)
            if target is not None:
                loaded = target.load_weights(iter(weights.items()))
            else:  # a multi-process engine: ship the weights to the worker, and do not wait forever
                loaded = self.llm.collective_rpc(_load_weights, args=(weights,), timeout=SYNC_TIMEOUT_S)[0]
        except Exception as e:
            raise UserError(f"rollout.engine=vllm: copying the policy's weights into vLLM failed "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:300]}); stopping rather than "
                            "sampling from stale weights") from None
        if loaded is not None and not loaded:
            raise UserError("rollout.engine=vllm: vLLM took none of the policy's weights (names do not match "
                            "its model); stopping rather than sampling from stale weights")
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()  # cached prompt K/V were computed by the old weights


def _refuse_stepwise(call: str) -> NoReturn:
    raise UserError(f"rollout.engine=vllm samples whole completions only: it has no stepwise {call}(), which "
                    "multi-turn rollouts (rollout.tools / rollout.environment) need; use rollout.engine=hf")


def _accepts(vllm, name: str) -> bool:
    args = getattr(vllm, "EngineArgs", None)
    return (
        args is not None
        and dataclasses.is_dataclass(args)
        and name in {f.name for f in dataclasses.fields(args)}
    )


def _driver_model(llm):
    """vLLM's nn.Module when the engine runs in this process (the attribute path moved across versions)."""
    executor = getattr(getattr(llm, "llm_engine", None), "model_executor", None)
    worker = getattr(executor, "driver_worker", None)
    for path in (("worker", "model_runner", "model"), ("model_runner", "model")):
        obj = worker
        for name in path:
            obj = getattr(obj, name, None)
        if obj is not None and hasattr(obj, "load_weights"):
            return obj
    return None


def _load_weights(worker, weights: dict):
    return worker.model_runner.model.load_weights(iter(weights.items()))
