#!/usr/bin/env bash
# The MIRA assignment (issue 3) on a GPU, in one device call of about 4 minutes: the build and
# the GPU tests (tools/device_check.sh without its benchmarks; logs packed into
# LOG_DIR/check.tgz), the cluster and grid-barrier probes, then `bench/mira_assign --time` at
# the issue's shape (N 4096, with the per-phase trace and PyTorch in the same run), at the
# training shapes of one GPU (N 64 and 256 per view: batch 64 and 256) and at 60 iterations
# (the slope per pass), Nsight Compute on one launch of each plan named in MIRA_NCU_VARIANTS
# (warp stalls, issue, memory; clocks left as they are: --clock-control none), and last the
# cluster plan under compute-sanitizer. Ends with one line per row (tools/assign_summary.py)
# and each prediction of bench/assign_predictions.json against its measurement.
# Rows that would start after MIRA_DEADLINE_S (default 240 s) are skipped.
#   tools/device_assign.sh [LOG_DIR]
set -u
T0=$(date +%s)
cd "$(dirname "$0")/.." || exit 2
LOG_DIR=${1:-${OUT:-./device_logs}}
R=$LOG_DIR/assign.log
DEADLINE=${MIRA_DEADLINE_S:-240}  # no row starts later than this after the start
ROW_TIMEOUT=${MIRA_ROW_TIMEOUT:-90}
# shellcheck source=tools/device_rows.sh
source tools/device_rows.sh
B=${MIRA_DEVICE_BUILD:-build-device}/bench
# The cluster plan's primitives (cycles per cluster barrier and DSMEM load, clusters at once).
run probe_cluster $B/mira_assign --probe-cluster
# Grid barriers (kernels/cuda/grid_sync.cuh): cycles per cooperative grid.sync() against a
# counter barrier per block and per cluster, each also checked for memory ordering.
run probe_sync $B/mira_assign --probe-sync
run assign $B/mira_assign --time --device cuda --trace
run assign_n64 $B/mira_assign --time --device cuda --n 64 --pytorch none --trace
run assign_n256 $B/mira_assign --time --device cuda --n 256 --pytorch auto --trace
run assign_iters60 $B/mira_assign --time --device cuda --iters 60 --pytorch none \
  --variants "fused,fused f16-cache,fused f16-cache exact3 concurrent,fused f16-cache mma-rows concurrent,fused f16-cache mma-rows sequential"
if command -v ncu >/dev/null; then
  IFS=";" read -r -a NCU_VARIANTS <<<"${MIRA_NCU_VARIANTS-fused f16-cache mma-rows concurrent;fused;fused f16-cache}"
  for v in "${NCU_VARIANTS[@]}"; do
    label=ncu_$(echo "$v" | tr ' ' '_')
    run "$label" ncu --clock-control none -k regex:mira_ --launch-count 1 --section SpeedOfLight \
      --section LaunchStats --section Occupancy --section SchedulerStats --section WarpStateStats \
      --section InstructionStats --section MemoryWorkloadAnalysis \
      $B/mira_assign --time --device cuda --pytorch none --reps 1 --warmup 0 --variants "$v"
  done
else
  echo "== ncu: not found" >>"$R"
fi
# Last, as time allows (each takes ~30-60 s): the tensor-core updates (N 256) under both
# tools, the cluster plan's tensor-core sweeps under
# racecheck (cut off at 50 s in session 15), and its row groups (N 1024) under both tools.
sanitize_rows mmarows_n256 256 "fused f16-cache mma-rows concurrent"
sanitize_rows mma_n64 64 "fused cluster f16-cache mma" racecheck
sanitize_rows n1024 1024 "fused cluster"
python3 tools/assign_summary.py "$R" --predictions bench/assign_predictions.json
# The cluster plan's row groups launch without the cooperative attribute if the driver refuses
# it (kernels/cuda/mira_fused_host.cpp, launch_row_groups): say so here, not only in a log.
grep -rh "driver refused a cooperative" "$LOG_DIR"/stderr_*.log "$LOG_DIR"/check 2>/dev/null | sort | uniq -c | head -3
grep -E '^\{"probe"' "$R" | cut -c1-260
grep -A8 -E '^== sanitize' "$R" | grep -E '^== sanitize|^rc|ERROR SUMMARY|hazard|error' | cut -c1-160
grep -E '^== ncu|^rc|Duration|Registers Per|Achieved Occupancy|Issued Warp|No Eligible|Warp Cycles Per Issued|Stall|stall|Bank|Executed Ipc|Shared Memory|L1/TEX Hit|L2 Hit|Mem Busy|Compute \(SM\)' "$R" | cut -c1-150
(cd "$LOG_DIR" && tar czf check.tgz check && rm -rf check && tar czf stderr.tgz stderr_*.log && rm -f stderr_*.log)
ls "$LOG_DIR"
