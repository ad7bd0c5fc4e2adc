"""grpo: Group Relative Policy Optimization (DeepSeekMath, arXiv 2402.03300) for Hugging Face causal LMs."""

__version__ = "0.1.0"
