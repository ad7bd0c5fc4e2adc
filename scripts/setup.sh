#!/usr/bin/env bash
# Set-up used by the README and CI: a .venv in the checkout with torch (CPU wheel pinned first,
# so nothing pulls a multi-GB CUDA build), then grpo and its extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[all]"
.venv/bin/python -c "import torch, transformers, grpo; print('torch', torch.__version__, '| transformers', transformers.__version__, '| grpo', grpo.__version__)"
