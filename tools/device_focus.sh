#!/usr/bin/env bash
# A few rows of the MIRA assignment on a GPU in one short device call (~3-4 minutes): builds
# only bench/mira_assign and test_mira_assign_gpu and runs that test (tools/device_check.sh
# with MIRA_BUILD_TARGETS / MIRA_GPU_TESTS); times the rows with the per-phase trace at N 4096
# (PyTorch in the same run) and at the MIRA_FOCUS_NS sizes, and at 60 iterations; Nsight
# Compute on one launch of one row (by default the f16 copy's default kernel) with the stall
# reasons and the per-instruction samples (LOG_DIR/focus_source.csv.gz, summarised by loop and
# instruction by tools/ncu_stalls.py into LOG_DIR/focus_stalls.txt), a kernel object's SASS (LOG_DIR/focus.sass.gz, for
# tools/sass_loops.py), and racecheck and synccheck of one row at N 256. Then
# tools/assign_summary.py against bench/assign_predictions.json.
# Rows that would start after MIRA_DEADLINE_S (default 200 s) are skipped.
#   tools/device_focus.sh [LOG_DIR]
# What it runs (environment; the defaults are session 19's automatic barriers and clamped rows,
# and session 20's published largest sums and targets' L2 prefetch, read off the trace's phases):
#   MIRA_FOCUS_VARIANTS  comma-separated bench/mira_assign --variants
#   MIRA_FOCUS_NCU       the row Nsight Compute profiles at N 4096 (default "fused f16-cache", the
#                        f16 copy's default kernel; "" for none)
#   MIRA_FOCUS_SASS      the object whose SASS is dumped (default mira_assign.cu.o; "" for none)
#   MIRA_FOCUS_SANITIZE  the row compute-sanitizer runs at N 256 ("" for none)
#   MIRA_FOCUS_NS        the sizes per view timed after N 4096 (default "1024 256")
# tools/device_mmarows.sh sets them for the tensor-core updates.
set -u
T0=$(date +%s)
cd "$(dirname "$0")/.." || exit 2
LOG_DIR=${1:-${OUT:-./device_logs}}
R=$LOG_DIR/assign.log
DEADLINE=${MIRA_DEADLINE_S:-200}
ROW_TIMEOUT=${MIRA_ROW_TIMEOUT:-90}
# The plain rows first: a row that hangs (a counter barrier's trap) ends its process's rows.
# Session 19's: the plans' own barriers (GridSync::Auto: per-view counters where measured
# faster) against the cooperative ones pinned, each with the row loop's clamped last row, and
# the staggered f16 row for its timeline (trace_timeline: do an SM's blocks overlap their rows),
# and the f16 copy's packed 4-row update (rows8); session 21's workspace rows staged through
# shared memory (stage) beside the rows they would replace; session 22's column sums by
# atomics (atomic: one grid barrier per pass, no reduction phase).
V_DEFAULT="fused f16-cache,fused f16-cache coop-sync,fused f16-cache atomic,fused f16-cache rows8,fused f16-cache stage"
V_DEFAULT="$V_DEFAULT,fused f16-cache rows8 view-sync,fused f16-cache rows8 stage view-sync"
V_DEFAULT="$V_DEFAULT,fused,fused stage,fused cpt8 bps2 concurrent"
V_DEFAULT="$V_DEFAULT,fused cpt8 bps2 concurrent stage,fused cpt8 bps2 concurrent atomic,fused f16-cache exact3"
V_DEFAULT="$V_DEFAULT,fused f16-cache atomic coop-sync,fused atomic"
# Session 23's combination of the two: the packed 4-row batches with atomic sums.
V_DEFAULT="$V_DEFAULT,fused f16-cache rows8 atomic,fused f16-cache rows8 atomic view-sync"
# What a workspace row costs against a shared-memory one: 8 rows per block kept (~18 fit).
V_DEFAULT="$V_DEFAULT,fused f16-cache smem8,fused f16-cache stage smem8"
V=${MIRA_FOCUS_VARIANTS:-$V_DEFAULT}
NCU_ROW=${MIRA_FOCUS_NCU-fused f16-cache}
SASS_OBJ=${MIRA_FOCUS_SASS-mira_assign.cu.o}
SANITIZE_ROW=${MIRA_FOCUS_SANITIZE-}
NS=${MIRA_FOCUS_NS:-1024 256}
export MIRA_BUILD_TARGETS="mira_assign test_mira_assign_gpu" MIRA_GPU_TESTS=test_mira_assign_gpu
# shellcheck source=tools/device_rows.sh
source tools/device_rows.sh
BUILD=${MIRA_DEVICE_BUILD:-build-device}
B=$BUILD/bench
# Nsight Compute on one launch of the NCU_ROW row at N 4096: stall reasons and per-instruction
# samples (where the row loop's warps wait: issue, barrier, L2, shared memory).
ncu_row() {
  [[ -n "$NCU_ROW" ]] && command -v ncu >/dev/null || return 0
  STALLS='regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio'
  run ncu_focus ncu --clock-control none -k regex:mira_ --launch-count 1 --section SpeedOfLight \
    --section SchedulerStats --section WarpStateStats --section SourceCounters --metrics "$STALLS" \
    -o "$LOG_DIR/focus" "$B/mira_assign" --time --device cuda --pytorch none --reps 1 --warmup 0 \
    --variants "$NCU_ROW"
  if [[ -f $LOG_DIR/focus.ncu-rep ]]; then
    ncu -i "$LOG_DIR/focus.ncu-rep" --print-details all >>"$R" 2>&1
    ncu -i "$LOG_DIR/focus.ncu-rep" --page source --csv --print-source sass 2>&1 | gzip >"$LOG_DIR/focus_source.csv.gz"
    rm -f "$LOG_DIR/focus.ncu-rep"
  fi
}
run assign "$B/mira_assign" --time --device cuda --trace --variants "$V"
# Right after the main row: the profile says more than the smaller sizes if the deadline comes.
ncu_row
for n in $NS; do
  run "assign_n$n" "$B/mira_assign" --time --device cuda --n "$n" --pytorch none --trace --variants "$V"
done
run assign_iters60 "$B/mira_assign" --time --device cuda --iters 60 --pytorch none --variants "$V"
if [[ -n "$SASS_OBJ" ]]; then
  OBJ=$(find "$BUILD" -name "$SASS_OBJ" | head -n 1)
  if command -v cuobjdump >/dev/null && [[ -n "$OBJ" ]]; then
    cuobjdump -sass "$OBJ" | gzip >"$LOG_DIR/focus.sass.gz"
  fi
fi
# The 8-column kernels of the f16 copy (cooperative, per-view counters, packed 4 rows, staged
# with per-view counters, 2 and packed 4 rows: the latter spills 8 bytes, ptxas; atomic sums
# with per-view counters, 2 rows, and cooperative, packed 4 rows: 12 bytes) and of f32
# (cooperative, staggered counters, staged cooperative): their loops' instruction mix, spills
# (local memory) included. (The same SASS comes without a GPU: tools/fetch_sass_tools.sh.)
if [[ -f $LOG_DIR/focus.sass.gz && $SASS_OBJ == mira_assign.cu.o ]]; then
  zcat "$LOG_DIR/focus.sass.gz" >"$LOG_DIR/focus.sass"
  for k in f6__halfLi2ELi2ELi0ELi0E f6__halfLi2ELi2ELi3ELi0E f6__halfLi2ELi4ELi0ELi0E \
    f6__halfLi2ELi2ELi3ELi1E f6__halfLi2ELi4ELi3ELi1E f6__halfLi2ELi2ELi3ELi2E \
    f6__halfLi2ELi4ELi0ELi2E \
    ffLi2ELi2ELi0ELi0E ffLi2ELi2ELi4ELi0E ffLi2ELi2ELi0ELi1E; do
    echo "== sass_loops cpt8 $k" >>"$R"
    python3 tools/sass_loops.py "$LOG_DIR/focus.sass" "mira_fused_kernelI$k" --min-ffma 16 >>"$R" 2>&1
  done
  rm -f "$LOG_DIR/focus.sass"
fi
[[ -n "$SANITIZE_ROW" ]] && sanitize_rows focus_n256 256 "$SANITIZE_ROW"
python3 tools/assign_summary.py "$R" --predictions bench/assign_predictions.json
grep -A6 -E '^== sass_loops' "$R" | cut -c1-160
grep -A8 -E '^== sanitize' "$R" | grep -E '^== sanitize|^rc|ERROR SUMMARY|hazard|error' | cut -c1-160
grep -E 'stalled_.*ratio|Warp Cycles Per Issued|Issued Warp|No Eligible' "$R" | awk '$NF + 0 > 0.2 || /Warp|Eligible/' | cut -c1-150
# Where the profiled kernel's warps wait, by loop and instruction (the samples' own summary).
if [[ -f $LOG_DIR/focus_source.csv.gz ]]; then
  python3 tools/ncu_stalls.py "$LOG_DIR/focus_source.csv.gz" --top 10 --loops 6 >"$LOG_DIR/focus_stalls.txt" 2>&1
  cut -c1-200 "$LOG_DIR/focus_stalls.txt"
fi
(cd "$LOG_DIR" && tar czf check.tgz check && rm -rf check && tar czf stderr.tgz stderr_*.log && rm -f stderr_*.log)
ls -la "$LOG_DIR"
