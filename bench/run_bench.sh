#!/usr/bin/env bash
# Side-by-side GRPO benchmark: grpo against Hugging Face TRL 1.16's GRPOTrainer, same model, same work,
# runs alternating in one invocation; prints medians over the repeats and the ratios.
#
#   bash bench/run_bench.sh                  # tiny: 1.07M-param Llama, 8 prompts x G=8, 32 + 32 tokens
#   SIZE=25m bash bench/run_bench.sh         # ~25M-param Llama, 1 prompt x G=8, 128-token completions,
#                                            #   with achieved FLOP/s against this CPU's matmul rate
#
# Sides (bench/side_by_side.py): trl (bench/trl_grpo.py), grpo (the command line, `grpo train`), grpo_api
# (bench/bench_grpo.py: the same config through the Python API, with each phase's time), and the variants
# below, each `grpo train` with one more override. The models are built offline by bench/make_tiny_model.py
# (a character-level tokenizer, random weights); the work: bench/add_prompts.jsonl ("What is A+B? Answer:")
# and bench/add_rewards.py, temperature 1, beta 0.04, lr 1e-4, fp32, 2 threads (bench/work.py).
#
# Env: REPEATS (tiny 3, 25m 2), STEPS (tiny 20, 25m 8), PROMPTS (prompts per step), SIDES (trl,grpo,grpo_api),
# GC (1: both sides with activation checkpointing; default 0), BF16 (1: also grpo_bf16, `grpo train
# model.dtype=bfloat16`; default 1 for tiny, 0 for 25m: a CPU without AVX512-BF16/AMX runs bf16 matmuls
# ~100x slower than fp32 and a 25M run would take hours), MBT (also grpo_capped, `grpo train
# train.micro_batch_tokens=MBT`; TRL's side stays one forward), OUT (.peers/bench/SIZE, or SIZE-gc), VENV
# (TRL's environment, .peers/trl-venv: made by bench/setup_trl.sh on first use), PY (grpo's python,
# .venv/bin/python), SRC (the grpo source tree to import, first on PYTHONPATH; default the checkout's src:
# set it to a snapshot, e.g. `git worktree add --detach /tmp/grpo-bench HEAD`, when someone is editing the
# checkout meanwhile), QUIET_LOAD / QUIET_WAIT (before each run, wait up to QUIET_WAIT s for the 1-minute
# load average to fall below QUIET_LOAD; 1.0 and 60).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SIZE=${SIZE:-tiny}
VENV=${VENV:-$ROOT/.peers/trl-venv}
GC=${GC:-0}
OUT=${OUT:-$ROOT/.peers/bench/$SIZE$([ "$GC" = 1 ] && echo -gc || true)}
PY=${PY:-$ROOT/.venv/bin/python}
SRC=${SRC:-$ROOT/src}
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"

case "$SIZE" in
  tiny) MODEL_ARGS=""; TOKENS=32; PROMPTS=${PROMPTS:-8}; STEPS=${STEPS:-20}; REPEATS=${REPEATS:-3}; BF16=${BF16:-1} ;;
  25m)  MODEL_ARGS="--hidden 512 --layers 8 --heads 8 --intermediate 1376"; TOKENS=128
        PROMPTS=${PROMPTS:-1}; STEPS=${STEPS:-8}; REPEATS=${REPEATS:-2}; BF16=${BF16:-0} ;;
  *) echo "SIZE must be tiny or 25m" >&2; exit 2 ;;
esac
MODEL=$ROOT/.peers/models/$SIZE
VARIANTS=()
[ "$BF16" = 1 ] && VARIANTS+=(--variant grpo_bf16 model.dtype=bfloat16)
[ -n "${MBT:-}" ] && VARIANTS+=(--variant grpo_capped "train.micro_batch_tokens=$MBT")
SIDES=${SIDES:-trl,grpo,grpo_api}$([ "$BF16" = 1 ] && echo ,grpo_bf16 || true)$([ -n "${MBT:-}" ] && echo ,grpo_capped || true)

"$VENV/bin/python" -c "import trl, peft" 2>/dev/null || bash "$HERE/setup_trl.sh" "$VENV"
mkdir -p "$OUT"
rm -f "$OUT"/*.json
# shellcheck disable=SC2086
"$PY" "$HERE/make_tiny_model.py" "$MODEL" $MODEL_ARGS 2>/dev/null > "$OUT/model.json"
echo "model $SIZE: $(cut -c1-120 "$OUT/model.json")..."
echo "grpo from $SRC: $(git -C "$SRC" rev-parse --short HEAD 2>/dev/null)$(git -C "$SRC" status --porcelain -- . 2>/dev/null | grep -q . && echo ' + uncommitted changes')"
"$PY" "$HERE/side_by_side.py" "$MODEL" --out "$OUT" --trl-python "$VENV/bin/python" \
  --prompts-per-step "$PROMPTS" --G 8 --max-new-tokens "$TOKENS" --max-steps "$STEPS" --repeats "$REPEATS" \
  $([ "$GC" = 1 ] && echo --gradient-checkpointing || true) --sides "$SIDES" "${VARIANTS[@]}" \
  --quiet-load "${QUIET_LOAD:-1.0}" --quiet-wait "${QUIET_WAIT:-60}"
if [ "$SIZE" = 25m ]; then
  echo
  "$PY" "$HERE/compare.py" "$OUT" --model "$MODEL" --flops
fi
