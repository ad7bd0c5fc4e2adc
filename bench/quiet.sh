# Sourced by bench/run_bench.sh and bench/run_real_bench.sh. The machine may be shared: before each run,
# wait_quiet waits (up to QUIET_WAIT s) for the 1-minute load average to fall below QUIET_LOAD and logs
# what it was in $OUT/load.log. Both sides run under whatever load there is.
QUIET_LOAD=${QUIET_LOAD:-1.0}
QUIET_WAIT=${QUIET_WAIT:-60}
wait_quiet() {
  local waited=0
  while awk -v max="$QUIET_LOAD" '{exit !($1 >= max)}' /proc/loadavg && [ "$waited" -lt "$QUIET_WAIT" ]; do
    sleep 5; waited=$((waited + 5))
  done
  echo "load $(cut -d' ' -f1 /proc/loadavg)" >> "$OUT/load.log"
}
