#!/usr/bin/env bash
# TRL's virtual environment for the benchmarks (bench/trl_grpo.py):  bash bench/setup_trl.sh [VENV]
# Makes VENV (default .peers/trl-venv in the checkout, ignored by git) with torch installed first, as
# scripts/setup.sh does for grpo's .venv (so nothing pulls another torch), then the pinned set of
# bench/requirements-trl.txt: TRL 1.16.0 and peft beside the same transformers, accelerate and datasets
# versions as grpo's constraints.txt. bench/run_bench.sh and bench/run_real_bench.sh run it on first use.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${1:-${VENV:-$ROOT/.peers/trl-venv}}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
"$VENV/bin/python" -m pip install -q -r "$ROOT/bench/requirements-trl.txt"
"$VENV/bin/python" -c "import torch, transformers, trl, peft; print('TRL environment $VENV: trl', trl.__version__,
  '| transformers', transformers.__version__, '| peft', peft.__version__, '| torch', torch.__version__)"
