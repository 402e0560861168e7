#!/usr/bin/env bash
# The tensor-core updates (kernels/cuda/mira_mmarows.cu, MiraPlanOptions::mma_rows) on a GPU in
# one short device call (~4 minutes): builds only bench/mira_assign and test_mira_assign_gpu and
# runs that test (tools/device_check.sh with MIRA_BUILD_TARGETS / MIRA_GPU_TESTS); times the
# kernel against the f16 copy's default kernel with the per-phase trace at N 4096 (PyTorch in
# the same run), 256 and 64; Nsight Compute on one launch with the stall reasons and the
# per-instruction samples (LOG_DIR/mmarows_source.csv.gz); the kernel's SASS
# (LOG_DIR/mmarows.sass.gz, for tools/sass_loops.py); racecheck and synccheck at N 256.
# Rows that would start after MIRA_DEADLINE_S (default 200 s) are skipped.
#   tools/device_mmarows.sh [LOG_DIR]
set -u
T0=$(date +%s)
cd "$(dirname "$0")/.." || exit 2
LOG_DIR=${1:-${OUT:-./device_logs}}
R=$LOG_DIR/assign.log
DEADLINE=${MIRA_DEADLINE_S:-200}
ROW_TIMEOUT=${MIRA_ROW_TIMEOUT:-90}
export MIRA_BUILD_TARGETS="mira_assign test_mira_assign_gpu" MIRA_GPU_TESTS=test_mira_assign_gpu
# shellcheck source=tools/device_rows.sh
source tools/device_rows.sh
BUILD=${MIRA_DEVICE_BUILD:-build-device}
B=$BUILD/bench
V="fused f16-cache,fused f16-cache counter-sync,fused f16-cache mma-rows concurrent,fused f16-cache mma-rows sequential"
V="$V,fused f16-cache mma-rows counter-sync,fused f16-cache mma-rows cluster-sync,fused"
run assign "$B/mira_assign" --time --device cuda --trace --variants "$V"
run assign_n256 "$B/mira_assign" --time --device cuda --n 256 --pytorch none --trace --variants "$V"
run assign_n64 "$B/mira_assign" --time --device cuda --n 64 --pytorch none --trace --variants "$V"
run assign_iters60 "$B/mira_assign" --time --device cuda --iters 60 --pytorch none --variants "$V"
OBJ=$(find "$BUILD" -name 'mira_mmarows.cu.o' | head -n 1)
if command -v cuobjdump >/dev/null && [[ -n "$OBJ" ]]; then
  cuobjdump -sass "$OBJ" | gzip >"$LOG_DIR/mmarows.sass.gz"
fi
if command -v ncu >/dev/null; then
  STALLS='regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio'
  run ncu_mmarows ncu --clock-control none -k regex:mira_ --launch-count 1 --section SpeedOfLight \
    --section SchedulerStats --section WarpStateStats --section SourceCounters --metrics "$STALLS" \
    -o "$LOG_DIR/mmarows" "$B/mira_assign" --time --device cuda --pytorch none --reps 1 --warmup 0 \
    --variants "fused f16-cache mma-rows concurrent"
  if [[ -f $LOG_DIR/mmarows.ncu-rep ]]; then
    ncu -i "$LOG_DIR/mmarows.ncu-rep" --print-details all >>"$R" 2>&1
    ncu -i "$LOG_DIR/mmarows.ncu-rep" --page source --csv --print-source sass 2>&1 | gzip >"$LOG_DIR/mmarows_source.csv.gz"
    rm -f "$LOG_DIR/mmarows.ncu-rep"
  fi
fi
sanitize_rows mmarows_n256 256 "fused f16-cache mma-rows concurrent"
python3 tools/assign_summary.py "$R" --predictions bench/assign_predictions.json
grep -A8 -E '^== sanitize' "$R" | grep -E '^== sanitize|^rc|ERROR SUMMARY|hazard|error' | cut -c1-160
grep -E 'stalled_.*ratio|Warp Cycles Per Issued|Issued Warp|No Eligible' "$R" | awk '$NF + 0 > 0.2 || /Warp|Eligible/' | cut -c1-150
(cd "$LOG_DIR" && tar czf check.tgz check && rm -rf check && tar czf stderr.tgz stderr_*.log && rm -f stderr_*.log)
ls -la "$LOG_DIR"
