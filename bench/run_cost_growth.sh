#!/usr/bin/env bash
# How cost grows (issue #30, item 4): grpo (`grpo train`) and Hugging Face TRL 1.16's GRPOTrainer on
# SmolLM2-135M-Instruct, step time and peak RSS as the completion length grows (64, 128, 256 new tokens at
# G=8) and as G grows (4, 8, 16 at 64 tokens), one factor at a time; the (64, 8) point runs once.
#
#   bash bench/run_cost_growth.sh            # OUT/cost_growth.md, .json, .png (bench/cost_growth.py)
#   REUSE=1 bash bench/run_cost_growth.sh    # resume: keep the settings already done
#
# Each setting is one bench/side_by_side.py invocation on the work of bench/run_real_bench.sh (the first
# NUM_PROMPTS chat prompts of data/word_problems_train.jsonl, PPS prompts per step, temperature 0.7, beta
# 0.04, lr 1e-5, the last integer = the answer, fp32, 2 threads), into OUT/len{TOKENS}_G{G}/. A side that
# runs out of memory or fails is a row of the table, and the sweep goes on.
#
# Env: LENGTHS (64,128,256), GROUP_SIZES (4,8,16), STEPS (4), REPEATS (1), MODES (full), SIDES (trl,grpo),
# NUM_PROMPTS (64), PPS (4), REUSE (1: --reuse), OUT (.peers/bench/smollm2-growth), VENV (.peers/trl-venv,
# made by bench/setup_trl.sh on first use), PY (.venv/bin/python), SRC (the grpo source tree to import;
# default the checkout's src), QUIET_LOAD / QUIET_WAIT (1.0 and 60, as in run_real_bench.sh).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
VENV=${VENV:-$ROOT/.peers/trl-venv}
OUT=${OUT:-$ROOT/.peers/bench/smollm2-growth}
PY=${PY:-$ROOT/.venv/bin/python}
SRC=${SRC:-$ROOT/src}
MODES=${MODES:-full}
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"

"$VENV/bin/python" -c "import trl, peft" 2>/dev/null || bash "$HERE/setup_trl.sh" "$VENV"
MODEL=$("$PY" -c "from grpo.models.convert import resolve_model_path; print(resolve_model_path('smollm2'))")
echo "model $MODEL; grpo from $SRC: $(git -C "$SRC" rev-parse --short HEAD 2>/dev/null)$(git -C "$SRC" status --porcelain -- . 2>/dev/null | grep -q . && echo ' + uncommitted changes')"
"$PY" "$HERE/cost_growth.py" "$MODEL" --out "$OUT" --trl-python "$VENV/bin/python" \
  --lengths "${LENGTHS:-64,128,256}" --groups "${GROUP_SIZES:-4,8,16}" --base-length 64 --base-G 8 \
  --steps "${STEPS:-4}" --repeats "${REPEATS:-1}" --modes "${MODES// /,}" --sides "${SIDES:-trl,grpo}" \
  $([ "${REUSE:-0}" = 1 ] && echo --reuse || true) \
  --prompts-jsonl "$ROOT/data/word_problems_train.jsonl" --num-prompts "${NUM_PROMPTS:-64}" \
  --answer-position last --max-prompt-length 256 --temperature 0.7 --learning-rate 1e-5 --beta 0.04 \
  --prompts-per-step "${PPS:-4}" --quiet-load "${QUIET_LOAD:-1.0}" --quiet-wait "${QUIET_WAIT:-60}"
