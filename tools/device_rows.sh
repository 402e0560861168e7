# Sourced by tools/device_profile.sh, device_assign.sh and device_focus.sh: the build and
# the GPU tests, the CUDA libraries on LD_LIBRARY_PATH, and `run`, which adds one row of output
# to a log.
# The caller sets T0 (start, date +%s), LOG_DIR, R (the rows' log), DEADLINE (s after T0 past
# which no row starts) and ROW_TIMEOUT (s per row).
mkdir -p "$LOG_DIR/check"
MIRA_SKIP_BENCH=1 bash tools/device_check.sh "$LOG_DIR/check" >"$LOG_DIR/check/stdout.log" 2>&1
tail -n 14 "$LOG_DIR/check/table.txt"
NV_DIR=$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])' 2>/dev/null)
for pkg in "$NV_DIR"/*/; do [[ -d "$pkg/lib" ]] && export LD_LIBRARY_PATH="${pkg}lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; done
export LD_LIBRARY_PATH="$(pwd)/.device_deps/lib:$LD_LIBRARY_PATH"
: >"$R"
run() {  # label command...
  local label=$1
  shift
  if (($(date +%s) - T0 > DEADLINE)); then
    echo "== $label: skipped, past the ${DEADLINE} s deadline" >>"$R"
    return
  fi
  echo "== $label: $*" >>"$R"
  timeout "$ROW_TIMEOUT" "$@" >>"$R" 2>>"$LOG_DIR/stderr_$label.log"
  echo "rc $? at $(($(date +%s) - T0)) s" >>"$R"
}
# compute-sanitizer's TOOLS (default racecheck and synccheck) on one launch of a
# bench/mira_assign variant at N per view, a row each (sanitize_TOOL_NAME); the caller sets B
# (the build's bench folder).
sanitize_rows() {  # name N variant [tools...]
  local name=$1 n=$2 variant=$3
  shift 3
  local tools=("$@")
  ((${#tools[@]})) || tools=(racecheck synccheck)
  if ! command -v compute-sanitizer >/dev/null; then
    echo "== compute-sanitizer: not found" >>"$R"
    return
  fi
  for tool in "${tools[@]}"; do
    run "sanitize_${tool}_$name" compute-sanitizer --tool "$tool" --error-exitcode 9 \
      "$B/mira_assign" --time --device cuda --n "$n" --pytorch none --reps 1 --warmup 0 --variants "$variant"
  done
}
