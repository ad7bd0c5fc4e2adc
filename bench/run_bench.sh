#!/usr/bin/env bash
# Side-by-side GRPO benchmark: grpo against Hugging Face TRL's GRPOTrainer, same model, same work,
# runs alternating in one invocation; prints medians over the repeats and the ratios.
#
#   bash bench/run_bench.sh                  # tiny: 1.07M-param Llama, 8 prompts x G=8, 32 + 32 tokens
#   SIZE=25m bash bench/run_bench.sh         # ~25M-param Llama, 1 prompt x G=8, 128-token completions,
#                                            #   with achieved FLOP/s against this CPU's matmul rate
#
# Env: GC (1: both sides with activation checkpointing: TRL's --gradient-checkpointing, grpo's
# train.gradient_checkpointing; default 0, as in the peer harness), REPEATS (tiny 3, 25m 2), STEPS
# (tiny 20, 25m 8), PROMPTS (prompts per step), MBT (also run grpo with train.micro_batch_tokens=MBT: the
# update in micro-batches of at most MBT padded tokens, longest first; TRL's side stays one forward), BF16 (1: also run
# grpo with model.dtype=bfloat16; default 1 for tiny, 0 for 25m, since a CPU without AVX512-BF16/AMX runs
# bf16 matmuls ~100x slower than fp32 and a 25M run would take hours), PEERS (the peer harness; default ../shared/peers beside the repo),
# VENV (TRL's virtual environment, made on first use), OUT (.peers/bench/SIZE, or SIZE-gc), QUIET_LOAD / QUIET_WAIT
# (wait up to QUIET_WAIT s before each run for the load average to drop below QUIET_LOAD), SRC (the grpo
# source tree to import, put first on PYTHONPATH; default the checkout's src: set it to a snapshot, e.g.
# `git worktree add /tmp/grpo-bench HEAD`, when someone is editing the checkout meanwhile).
# The first run creates VENV with torch==2.13.0 first (so nothing pulls another torch), then the
# peer's pinned trl-requirements.txt. Nothing else is downloaded; the models are built offline.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEERS=${PEERS:-$(cd "$HERE/../../shared/peers" 2>/dev/null && pwd || echo "$ROOT/../shared/peers")}
SIZE=${SIZE:-tiny}
VENV=${VENV:-$ROOT/.peers/trl-venv}
GC=${GC:-0}
GC_FLAG=$([ "$GC" = 1 ] && echo --gradient-checkpointing || true)
OUT=${OUT:-$ROOT/.peers/bench/$SIZE$([ "$GC" = 1 ] && echo -gc || true)}
PY=${PY:-$ROOT/.venv/bin/python}
SRC=${SRC:-$ROOT/src}
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"
[ -x "$PY" ] || PY=python3

case "$SIZE" in
  tiny) MODEL_ARGS=""; TOKENS=32; PROMPTS=${PROMPTS:-8}; STEPS=${STEPS:-20}; REPEATS=${REPEATS:-3}; BF16=${BF16:-1} ;;
  25m)  MODEL_ARGS="--hidden 512 --layers 8 --heads 8 --intermediate 1376"; TOKENS=128
        PROMPTS=${PROMPTS:-1}; STEPS=${STEPS:-8}; REPEATS=${REPEATS:-2}; BF16=${BF16:-0} ;;
  *) echo "SIZE must be tiny or 25m" >&2; exit 2 ;;
esac
G=8
MODEL=$ROOT/.peers/models/$SIZE

[ -f "$PEERS/trl_grpo_bench.py" ] || { echo "peer harness not found in $PEERS (set PEERS=...)" >&2; exit 2; }
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==2.13.0"
  "$VENV/bin/pip" install -q -r "$PEERS/trl-requirements.txt"
fi
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT/load.log"
# shellcheck disable=SC2086
"$PY" "$PEERS/make_tiny_model.py" "$MODEL" $MODEL_ARGS 2>/dev/null > "$OUT/model.json"
"$VENV/bin/python" -c "import torch, trl, transformers; print('peer: torch', torch.__version__, 'trl', trl.__version__, 'transformers', transformers.__version__)"
echo "model $SIZE: $(cut -c1-120 "$OUT/model.json")..."
echo "grpo from $SRC: $(git -C "$SRC" rev-parse --short HEAD 2>/dev/null)$(git -C "$SRC" status --porcelain -- . 2>/dev/null | grep -q . && echo ' + uncommitted changes')"
echo "work: $PROMPTS prompts x G=$G, $TOKENS-token completions, $STEPS steps, $REPEATS alternating repeats$([ "$GC" = 1 ] && echo ', gradient checkpointing on both sides')"

# shellcheck source=bench/quiet.sh
source "$HERE/quiet.sh"  # wait_quiet: before each run, wait for the load average to drop

for i in $(seq 1 "$REPEATS"); do
  wait_quiet
  "$VENV/bin/python" "$PEERS/trl_grpo_bench.py" "$MODEL" --max-steps "$STEPS" \
    --per-device-train-batch-size $((PROMPTS * G)) --num-generations $G --max-completion-length $TOKENS \
    $GC_FLAG --output-dir "$OUT/runs/trl-$i" --json-out "$OUT/trl-$i.json" > "$OUT/trl-$i.log" 2>&1 \
    || { echo "TRL run $i failed, see $OUT/trl-$i.log" >&2; exit 1; }
  echo "run $i  trl        $(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['sec_per_step_median_after_2'], 's/step', d['peak_rss_mb'], 'MiB')" "$OUT/trl-$i.json")"
  for variant in float32 $([ "$BF16" = 1 ] && echo bfloat16) $([ -n "${MBT:-}" ] && echo capped); do
    tag=grpo dtype=float32 extra=""
    [ "$variant" = bfloat16 ] && tag=grpo_bf16 dtype=bfloat16
    [ "$variant" = capped ] && tag=grpo_capped extra="--micro-batch-tokens $MBT"
    wait_quiet
    # shellcheck disable=SC2086
    "$PY" "$HERE/bench_grpo.py" "$MODEL" --max-steps "$STEPS" --prompts-per-step "$PROMPTS" --G $G \
      --max-new-tokens $TOKENS --dtype $dtype $GC_FLAG $extra --output-dir "$OUT/runs/$tag-$i" --json-out "$OUT/$tag-$i.json" \
      > "$OUT/$tag-$i.log" 2>&1 || { echo "grpo run $i failed, see $OUT/$tag-$i.log" >&2; exit 1; }
    echo "run $i  $(printf %-10s $tag) $(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['sec_per_step_median_after_2'], 's/step', d['peak_rss_mb'], 'MiB')" "$OUT/$tag-$i.json")"
  done
done
"$PY" "$HERE/compare.py" "$OUT" --model "$MODEL" $([ "$SIZE" = 25m ] && echo --flops)
