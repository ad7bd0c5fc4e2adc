"""Which transformers classes each of grpo's fast paths reproduces, and the RoPE types the lean decoder
tables: plain data without torch, so that `grpo plan` reads them without loading torch.
`grpo.models.fast_paths` gives a model its paths from PROVEN (and checks them); `grpo.rollout.lean`
builds its decoder only for the RoPE types in STATIC_ROPE.
"""

FAST_PATHS = ("lean_mlp", "gqa_attention", "chunked_head", "shared_prompts", "lean_decoder")
NAMES = {"lean_mlp": "lean MLP", "gqa_attention": "GQA attention", "chunked_head": "chunked LM head",
         "shared_prompts": "shared prompts", "lean_decoder": "lean decoder"}

_ALL = frozenset(FAST_PATHS)
PROVEN: dict[str, frozenset[str]] = {
    "LlamaForCausalLM": _ALL,
    "MistralForCausalLM": _ALL,
    "Qwen2ForCausalLM": _ALL,
    "Qwen3ForCausalLM": _ALL,
    # post-norm layers and q/k norms over all heads at once: not the lean decoder's layer
    "Olmo2ForCausalLM": _ALL - {"lean_decoder"},
}
"""transformers class name -> the fast paths that reproduce its forward."""
CAUSAL_LM_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                     "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "olmo2": "Olmo2ForCausalLM"}
"""config.json's model_type -> the class `AutoModelForCausalLM` builds for it (grpo loads models so), for
the classes in PROVEN: how `grpo plan` knows a model's class without loading it."""

STATIC_ROPE = ("default", "linear", "llama3", "yarn")
"""RoPE types whose cos/sin depend on the position only (so the lean decoder's table built once is exact)."""
