#!/usr/bin/env bash
# grpo against Hugging Face TRL's GRPOTrainer on a real model, SmolLM2-135M-Instruct (model.path: smollm2),
# full fine-tuning and LoRA, runs alternating in one invocation; prints medians, floors and ratios.
#
#   bash bench/run_real_bench.sh                     # docs/performance.md, "SmolLM2-135M"
#
# The same work on both sides: the first 64 chat prompts of data/word_problems_train.jsonl rendered by the
# model's chat template, 4 prompts x G=8, up to 64 new tokens at temperature 0.7, beta 0.04, lr 1e-5
# (linear decay, AdamW betas 0.9/0.999, grad clip 1), the whole batch of 32 in one forward, the peer's two
# rewards (last integer = answer; 0.1 for starting with an integer), fp32, 2 threads. LoRA: r 16, alpha 32
# on every projection, no dropout (TRL through bench/trl_lora_bench.py).
# Env: REPEATS (2), STEPS (4), MODES ("full lora"), OUT (.peers/bench/smollm2), VENV (TRL's environment,
# made on first use with torch==2.13.0, the peer's pinned requirements and peft), PEERS, SRC (the grpo
# source tree to import; default the checkout's src), QUIET_LOAD / QUIET_WAIT (as bench/run_bench.sh).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEERS=${PEERS:-$(cd "$HERE/../../shared/peers" 2>/dev/null && pwd || echo "$ROOT/../shared/peers")}
VENV=${VENV:-$ROOT/.peers/trl-venv}
OUT=${OUT:-$ROOT/.peers/bench/smollm2}
PY=${PY:-$ROOT/.venv/bin/python}
SRC=${SRC:-$ROOT/src}
REPEATS=${REPEATS:-2}
STEPS=${STEPS:-4}
MODES=${MODES:-full lora}
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}" PEERS

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==2.13.0"
  "$VENV/bin/pip" install -q -r "$PEERS/trl-requirements.txt"
fi
"$VENV/bin/python" -c "import peft" 2>/dev/null || "$VENV/bin/pip" install -q --no-deps "peft==0.21.2"
MODEL=$("$PY" -c "from grpo.models.convert import resolve_model_path; print(resolve_model_path('smollm2'))")
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT/load.log"
head -64 "$ROOT/data/word_problems_train.jsonl" > "$OUT/prompts.jsonl"
echo "model $MODEL; grpo from $SRC: $(git -C "$SRC" rev-parse --short HEAD 2>/dev/null)$(git -C "$SRC" status --porcelain -- . 2>/dev/null | grep -q . && echo ' + uncommitted changes')"
echo "work: 4 prompts x G=8, up to 64 new tokens at T=0.7, beta 0.04, lr 1e-5, $STEPS steps, $REPEATS alternating repeats; modes: $MODES"

# shellcheck source=bench/quiet.sh
source "$HERE/quiet.sh"  # wait_quiet: before each run, wait for the load average to drop
COMMON_TRL="--prompts-jsonl $OUT/prompts.jsonl --answer-position last --temperature 0.7 --num-generations 8
  --per-device-train-batch-size 32 --max-completion-length 64 --max-prompt-length 256 --learning-rate 1e-5
  --beta 0.04 --max-steps $STEPS"
COMMON_GRPO="--prompts-jsonl $OUT/prompts.jsonl --answer-position last --temperature 0.7 --G 8
  --prompts-per-step 4 --max-new-tokens 64 --max-prompt-length 256 --learning-rate 1e-5 --beta 0.04
  --max-steps $STEPS"
show() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['sec_per_step_median_after_2'], 's/step', d['completion_tokens_per_step_mean'], 'tokens/step', d['peak_rss_mb'], 'MiB')" "$1"; }

for i in $(seq 1 "$REPEATS"); do
  for mode in $MODES; do
    suffix=$([ "$mode" = lora ] && echo _lora || true)
    trl_script=$([ "$mode" = lora ] && echo "$HERE/trl_lora_bench.py" || echo "$PEERS/trl_grpo_bench.py")
    wait_quiet
    # shellcheck disable=SC2086
    "$VENV/bin/python" "$trl_script" "$MODEL" $COMMON_TRL --output-dir "$OUT/runs/trl$suffix-$i" \
      --json-out "$OUT/trl$suffix-$i.json" > "$OUT/trl$suffix-$i.log" 2>&1 \
      || { echo "TRL run failed, see $OUT/trl$suffix-$i.log" >&2; exit 1; }
    echo "run $i  trl$suffix   $(show "$OUT/trl$suffix-$i.json")"
    wait_quiet
    # shellcheck disable=SC2086
    "$PY" "$HERE/bench_grpo.py" "$MODEL" $COMMON_GRPO $([ "$mode" = lora ] && echo --lora) \
      --output-dir "$OUT/runs/grpo$suffix-$i" --json-out "$OUT/grpo$suffix-$i.json" > "$OUT/grpo$suffix-$i.log" 2>&1 \
      || { echo "grpo run failed, see $OUT/grpo$suffix-$i.log" >&2; exit 1; }
    echo "run $i  grpo$suffix  $(show "$OUT/grpo$suffix-$i.json")"
  done
done
cd "$HERE" && "$PY" compare_real.py "$OUT" --model "$MODEL"
