#!/usr/bin/env bash
# Smoke sweep of variant combinations: each trains 2 steps of the built-in tiny task (hidden 32, 1 layer)
# with a checkpoint per step, then resumes for a third; prints the exit status of both and the last error
# line. One process by default; TORCHRUN=1 runs each under `torchrun --nproc_per_node 2` with FSDP.
#
#   bash scripts/variant_sweep.sh              # one process
#   TORCHRUN=1 bash scripts/variant_sweep.sh   # 2 ranks, train.strategy=fsdp
#
# Env: OUT (default /tmp/grpo-sweep), PY (default .venv/bin/python). About 25-30 s per combination.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-/tmp/grpo-sweep}
mkdir -p "$OUT"
BASE=(train.steps=2 train.prompts_per_step=2 grpo.G=4 train.micro_batch_size=4 sampling.max_new_tokens=8
      data.num_heldout=4 data.num_train=64 train.eval_every=1 model.tiny_hidden_size=32 model.tiny_num_layers=1
      train.threads=1 train.save_every=1)
RM=(rewards.model.path=init rewards.model.retrain=true rewards.model.prompts_per_iteration=2 rewards.model.train_steps=2)
if [ "${TORCHRUN:-0}" = 1 ]; then
  LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m grpo train --quiet)
  BASE+=(train.strategy=fsdp)
  export OMP_NUM_THREADS=1
else
  LAUNCH=("$PY" -m grpo train --quiet)
fi
failed=0
run() {
  local name=$1; shift
  local dir=$OUT/$name log=$OUT/$name.log resumed=""
  rm -rf "$dir"
  timeout 300 "${LAUNCH[@]}" "${BASE[@]}" "train.output_dir=$dir" "$@" > "$log" 2>&1
  local rc=$?
  if [ $rc = 0 ]; then
    timeout 300 "${LAUNCH[@]}" --resume "$dir" train.steps=3 >> "$log" 2>&1
    resumed=" resume=$?"
  fi
  [ "$rc$resumed" = "0 resume=0" ] || failed=$((failed + 1))
  echo "$name: train=$rc$resumed $(grep -E 'Error|^grpo: error' "$log" | grep -v ChildFailedError | tail -1 | cut -c1-200)"
}
run plain
run lora-gc-mu2 "model.lora={}" train.gradient_checkpointing=true grpo.mu=2
run lora-dynamic-tokens "model.lora={}" grpo.dynamic_sampling=true train.micro_batch_tokens=40
run lora-beta0 "model.lora={}" grpo.beta=0
run process-lora grpo.advantage=process rewards.step_fn=arithmetic_steps "model.lora={}"
run gspo-bf16 grpo.ratio_level=sequence model.dtype=bfloat16
run drgrpo grpo.aggregation=seq_mean_token_sum_norm grpo.scale=none
run rloo-batch-overlong grpo.advantage=rloo grpo.scale=batch grpo.mask_truncated=true
run iterative-rm train.iterations=2 "${RM[@]}"
run rm-lora "model.lora={}" "${RM[@]}"
run rft-lora algorithm=rft "model.lora={}"
run ppo-lora algorithm=ppo "model.lora={}"
run ppo-gc algorithm=ppo train.gradient_checkpointing=true
[ "${TORCHRUN:-0}" = 1 ] || run ppo-head algorithm=ppo ppo.value_model=head  # refused under FSDP, by design
echo "$failed failed"
[ $failed = 0 ]
