#!/usr/bin/env bash
# grpo against Hugging Face TRL 1.16's GRPOTrainer on a real model, SmolLM2-135M-Instruct (model.path:
# smollm2), full fine-tuning and LoRA, runs alternating in one invocation; prints medians and ratios, then
# each side's step against its floor (bench/compare_real.py).
#
#   bash bench/run_real_bench.sh                     # docs/performance.md, "SmolLM2-135M"
#
# Three sides (bench/side_by_side.py): trl (bench/trl_grpo.py), grpo (the command line, `grpo train`: the
# figure a user reproduces) and grpo_api (bench/bench_grpo.py, the same config through the Python API,
# with each phase's time). The same work on every side: the first NUM_PROMPTS chat prompts of
# data/word_problems_train.jsonl rendered by the model's chat template, PPS prompts x G completions of up
# to TOKENS new tokens at temperature 0.7, beta 0.04, lr 1e-5, the whole batch in one forward, the two
# rewards of bench/add_rewards.py (the last integer = the answer; 0.1 for starting with an integer), fp32,
# 2 threads (bench/work.py has every shared setting). LoRA: r 16, alpha 32 on every projection.
#
# Env: REPEATS (2), STEPS (4), MODES ("full lora"), SIDES (trl,grpo,grpo_api), NUM_PROMPTS (64), PPS (4),
# G (8), TOKENS (64), OUT (.peers/bench/smollm2), VENV (TRL's environment, .peers/trl-venv: made by
# bench/setup_trl.sh on first use), PY (grpo's python, .venv/bin/python), SRC (the grpo source tree to
# import, first on PYTHONPATH; default the checkout's src), QUIET_LOAD / QUIET_WAIT (before each run, wait
# up to QUIET_WAIT s for the load average to fall below QUIET_LOAD; 1.0 and 60).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
VENV=${VENV:-$ROOT/.peers/trl-venv}
OUT=${OUT:-$ROOT/.peers/bench/smollm2}
PY=${PY:-$ROOT/.venv/bin/python}
SRC=${SRC:-$ROOT/src}
MODES=${MODES:-full lora}
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"

"$VENV/bin/python" -c "import trl, peft" 2>/dev/null || bash "$HERE/setup_trl.sh" "$VENV"
MODEL=$("$PY" -c "from grpo.models.convert import resolve_model_path; print(resolve_model_path('smollm2'))")
mkdir -p "$OUT"
rm -f "$OUT"/*.json
echo "model $MODEL; grpo from $SRC: $(git -C "$SRC" rev-parse --short HEAD 2>/dev/null)$(git -C "$SRC" status --porcelain -- . 2>/dev/null | grep -q . && echo ' + uncommitted changes')"
"$PY" "$HERE/side_by_side.py" "$MODEL" --out "$OUT" --trl-python "$VENV/bin/python" \
  --prompts-jsonl "$ROOT/data/word_problems_train.jsonl" --num-prompts "${NUM_PROMPTS:-64}" \
  --answer-position last --max-prompt-length 256 --temperature 0.7 --learning-rate 1e-5 --beta 0.04 \
  --prompts-per-step "${PPS:-4}" --G "${G:-8}" --max-new-tokens "${TOKENS:-64}" --max-steps "${STEPS:-4}" \
  --repeats "${REPEATS:-2}" --modes "${MODES// /,}" --sides "${SIDES:-trl,grpo,grpo_api}" \
  --quiet-load "${QUIET_LOAD:-1.0}" --quiet-wait "${QUIET_WAIT:-60}"
echo
cd "$HERE" && "$PY" compare_real.py "$OUT" --model "$MODEL"
