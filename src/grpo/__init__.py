"""grpo: Group Relative Policy Optimization (DeepSeekMath, arXiv 2402.03300) for Hugging Face causal LMs.

From Python: `from grpo.api import TrainConfig, load_config, train, sft, evaluate` (see `grpo.api`).
"""

__version__ = "0.1.0"
