#!/usr/bin/env bash
# Run the tests that pin grpo's fast paths to transformers' own forward (the architecture matrix, the lean
# layers, the chunked log-probs, the lean sampler, checkpointing) against another transformers release,
# leaving .venv as it is: the release and its dependencies go to .try/transformers-VERSION, first on the path.
#   bash scripts/try_transformers.sh 5.26.0
# All green: widen the bound in pyproject.toml and the pin in constraints.txt (docs/architectures.md).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:?usage: bash scripts/try_transformers.sh TRANSFORMERS_VERSION}
PY=${PYTHON:-.venv/bin/python}
DIR=.try/transformers-$VERSION
[ -d "$DIR" ] || "$PY" -m pip install -q --target "$DIR" "transformers==$VERSION"
PYTHONPATH="$PWD/$DIR:$PWD/src" "$PY" -c "import transformers; print('transformers', transformers.__version__, 'from', transformers.__file__)"
PYTHONPATH="$PWD/$DIR:$PWD/src" "$PY" -m pytest -q -n 0 -m "not slow" tests/test_architectures.py \
    tests/test_lean_layers.py tests/test_rollout_logprobs.py tests/test_rollout.py tests/test_checkpointing.py
