#!/usr/bin/env bash
# The one command to run on a machine with a GPU: everything that needs a device, in one call,
# ending with a compact table (name, status, seconds). Full logs go to LOG_DIR.
#
#   tools/device_check.sh [LOG_DIR]     (default: $OUT if set, else ./device_logs)
#
# Steps: machine facts (nvidia-smi, nvcc, driver); cuDNN / cuBLAS / NCCL located in the PyTorch
# pip wheels (site-packages/nvidia/*) and exported as CUDNN_INCLUDE_DIR / CUDNN_LIB_DIR (hints
# read by cmake/MiraCuda.cmake), NCCL_INCLUDE_DIR / NCCL_LIB_DIR and LD_LIBRARY_PATH; the build:
# a carried build-device/ that already holds test binaries is used as it is, otherwise the
# script configures and builds one (which needs Debian's OpenBLAS, nlohmann-json and doctest
# headers: it says which are missing); `ldd` of a test binary; the GPU tests (ctest -L gpu when
# the build was configured for this checkout, else each gpu-labelled binary directly, since a
# carried build's ctest files name the paths of the machine that configured it); then the
# benchmarks, each against its competitor in the same run: the MIRA assignment (fused kernels
# vs PyTorch), the ResNet-50 multi-crop step in bf16 and f32 vs PyTorch AMP, ResNet-18 at 32 px,
# and the input pipeline (GPU loader vs PIL + torchvision).
#
# At the end every log but table.txt and ctest_gpu.log is packed into LOG_DIR/logs.tgz (the
# device tool returns at most 8 files). Rows are also appended to LOG_DIR/table_rows.txt as they
# come (packed too, unless the run is cut short); steps that would start after
# MIRA_DEADLINE_S (default 520 s from the start) are skipped, so the table always fits a
# 600-second device call.
#
# Environment: MIRA_DEVICE_BUILD (build folder, default build-device), MIRA_BUILD_TARGETS and
# MIRA_GPU_TESTS (space-separated: build / run only these, for a short call), MIRA_TEST_TIMEOUT (s per
# test, default 180), MIRA_BENCH_TIMEOUT (s per benchmark, default 150), MIRA_BENCH_ARGS_mira_assign
# and MIRA_BENCH_ARGS_loader (their arguments), MIRA_STEP_BATCH (crops per view of the step
# benchmarks, default 64), MIRA_SKIP_BENCH=1.
#
# No `set -e`: a failing test or benchmark must not stop the run before the table prints.
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
LOG_DIR=${1:-${OUT:-./device_logs}}
mkdir -p "$LOG_DIR" || exit 2
LOG_DIR=$(cd "$LOG_DIR" && pwd)
BUILD=${MIRA_DEVICE_BUILD:-build-device}
TEST_TIMEOUT=${MIRA_TEST_TIMEOUT:-180}
BENCH_TIMEOUT=${MIRA_BENCH_TIMEOUT:-150}
T_START=$(date +%s.%N)

ROWS=()  # "name|status|seconds|note"
FAILED=0

say() { echo "[device_check] $*" | tee -a "$LOG_DIR/summary.log"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
row() {  # name status seconds note
  ROWS+=("$1|$2|$3|${4:-}")
  case "$2" in PASS|SKIP|OK) ;; *) FAILED=1 ;; esac
  # Row by row as well, so a run cut short by the device's time limit still brings back its table.
  printf "%-34s %-8s %9s  %s\n" "$1" "$2" "$3" "$(n=${4:-}; echo "${n:0:70}")" >>"$LOG_DIR/table_rows.txt"
}
# Whole-run deadline (s): steps that would start after it are skipped with a row saying so.
DEADLINE=${MIRA_DEADLINE_S:-520}
past_deadline() { awk -v a="$T_START" -v b="$(now)" -v d="$DEADLINE" 'BEGIN { exit !(b - a > d) }'; }
left() { awk -v a="$T_START" -v b="$(now)" -v d="$DEADLINE" 'BEGIN { l = d - (b - a); printf "%d", l < 10 ? 10 : l }'; }

print_table() {
  echo
  echo "==================== device check: $(date -u +%Y-%m-%dT%H:%MZ) ===================="
  [[ -s "$LOG_DIR/gpu.txt" ]] && head -n 1 "$LOG_DIR/gpu.txt"
  printf "%-34s %-8s %9s  %s\n" "name" "status" "seconds" "note"
  printf "%-34s %-8s %9s  %s\n" "----" "------" "-------" "----"
  local r name status secs note
  for r in "${ROWS[@]}"; do
    IFS='|' read -r name status secs note <<<"$r"
    printf "%-34s %-8s %9s  %s\n" "$name" "$status" "$secs" "${note:0:70}"
  done
  echo "total $(elapsed "$T_START") s; logs in $LOG_DIR"
}

# ---- machine
say "repository: $ROOT; logs: $LOG_DIR"
{
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  else
    echo "nvidia-smi not found"
  fi
} >"$LOG_DIR/gpu.txt" 2>&1
cat "$LOG_DIR/gpu.txt"
NVCC=$(command -v nvcc || { [[ -x /usr/local/cuda/bin/nvcc ]] && echo /usr/local/cuda/bin/nvcc; } || true)
if [[ -n "$NVCC" ]]; then
  "$NVCC" --version | tail -n 2 | tee "$LOG_DIR/nvcc.txt"
else
  say "nvcc not found (fine for a carried build)"
fi

# ---- vendor libraries from the PyTorch wheels
NV_DIR=$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])' 2>/dev/null || true)
if [[ -n "$NV_DIR" && -d "$NV_DIR" ]]; then
  say "pip nvidia packages in $NV_DIR: $(ls "$NV_DIR" | tr '\n' ' ')"
  for pkg in "$NV_DIR"/*/; do
    [[ -d "$pkg/lib" ]] && export LD_LIBRARY_PATH="${pkg}lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
  if [[ -d "$NV_DIR/cudnn/include" ]]; then
    export CUDNN_INCLUDE_DIR="$NV_DIR/cudnn/include" CUDNN_LIB_DIR="$NV_DIR/cudnn/lib"
    say "cuDNN: $CUDNN_LIB_DIR ($(ls "$CUDNN_LIB_DIR" | grep -m1 -o 'libcudnn\.so\.[0-9]*' || echo '?'))"
  fi
  [[ -d "$NV_DIR/cublas/lib" ]] && say "cuBLAS: $NV_DIR/cublas/lib"
  if [[ -d "$NV_DIR/nccl/include" ]]; then
    export NCCL_INCLUDE_DIR="$NV_DIR/nccl/include" NCCL_LIB_DIR="$NV_DIR/nccl/lib"
    say "NCCL: $NCCL_LIB_DIR"
  fi
else
  say "no pip 'nvidia' package found (python3: $(command -v python3 || echo none)); relying on system libraries"
fi
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())' \
  >"$LOG_DIR/torch.txt" 2>&1 && cat "$LOG_DIR/torch.txt" || say "torch not importable"

# ---- build
have_tests() { compgen -G "$BUILD/tests/test_*" >/dev/null; }
# Dependencies carried from a Debian machine (tools/prepare_device_deps.sh -> .device_deps).
DEPS_ARGS=()
if [[ -d .device_deps ]]; then
  D=$(pwd)/.device_deps
  export LD_LIBRARY_PATH="$D/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  DEPS_ARGS=(-DMIRA_MPI=OFF -Dnlohmann_json_DIR="$D/share/cmake/nlohmann_json" -DDOCTEST_INCLUDE_DIR="$D/include"
    -DMIRA_CBLAS_INCLUDE="$D/include" -DMIRA_BLAS_LIB="$D/lib/libopenblas.so"
    -DJPEG_INCLUDE_DIR="$D/include" -DJPEG_LIBRARY="$D/lib/libjpeg.a"
    -DPNG_PNG_INCLUDE_DIR="$D/include" -DPNG_LIBRARY="$D/lib/libpng16.a"
    -DZLIB_INCLUDE_DIR="$D/include" -DZLIB_LIBRARY="$D/lib/libz.a")
  say "using carried dependencies in $D"
fi
missing_headers() {
  local h miss=()
  for h in cblas.h nlohmann/json.hpp doctest/doctest.h; do
    echo "#include <$h>" | c++ -E -x c++ - -I/usr/include/x86_64-linux-gnu/openblas-pthread -I/usr/include/openblas \
      ${D:+-I$D/include} >/dev/null 2>&1 || miss+=("$h")
  done
  echo "${miss[*]:-}"
}
if have_tests; then
  say "using the build in $BUILD (carried or already built)"
  row "build" "OK" "0" "prepared $BUILD"
else
  t=$(now)
  miss=$(missing_headers)
  if [[ -n "$miss" ]]; then
    say "cannot build here: missing headers: $miss (Debian: libopenblas-dev nlohmann-json3-dev doctest-dev)."
    say "run tools/prepare_device_deps.sh on a Debian machine and carry .device_deps"
    row "build" "FAIL" "$(elapsed "$t")" "missing headers: $miss"
  elif ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
    say "cannot build here: cmake or ninja missing"
    row "build" "FAIL" "$(elapsed "$t")" "cmake/ninja missing"
  else
    # Only what this script runs (the GPU tests, the benchmarks, the apps they start): the CPU
    # tests are CI's business, and device seconds are scarce.
    BUILD_TARGETS=(mira_assign train_step bench_loader mira_pretrain mira_knn mira_linear mira_features)
    for src in tests/test_*.cpp; do
      head -n 1 "$src" | grep -Eq '^// labels:.*\bgpu\b' && BUILD_TARGETS+=("$(basename "$src" .cpp)")
    done
    # MIRA_BUILD_TARGETS (space-separated) builds only those, for a short call on one part.
    # shellcheck disable=SC2206
    [[ -n "${MIRA_BUILD_TARGETS:-}" ]] && BUILD_TARGETS=(${MIRA_BUILD_TARGETS})
    say "configuring and building $BUILD: ${BUILD_TARGETS[*]} (log: build.log)"
    {
      cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMIRA_CUDA=ON -DMIRA_CUDA_ARCHS=90 \
        "${DEPS_ARGS[@]}" && cmake --build "$BUILD" -j "$(nproc)" --target "${BUILD_TARGETS[@]}"
    } >"$LOG_DIR/build.log" 2>&1
    rc=$?
    if [[ $rc -eq 0 ]]; then row "build" "OK" "$(elapsed "$t")"; else
      row "build" "FAIL" "$(elapsed "$t")" "$(grep -m1 -E 'error|Error' "$LOG_DIR/build.log")"
      tail -n 30 "$LOG_DIR/build.log"
    fi
  fi
fi

# ---- link check
first_test=$(compgen -G "$BUILD/tests/test_*" | while read -r f; do [[ -x "$f" && -f "$f" ]] && echo "$f" && break; done)
if [[ -n "$first_test" ]]; then
  ldd "$first_test" >"$LOG_DIR/ldd.txt" 2>&1
  grep -E 'cudart|cublas|cudnn|nccl|openblas|jpeg|not found' "$LOG_DIR/ldd.txt"
  if grep -q 'not found' "$LOG_DIR/ldd.txt"; then
    row "ldd $(basename "$first_test")" "FAIL" "0" "$(grep 'not found' "$LOG_DIR/ldd.txt" | awk '{print $1}' | tr '\n' ' ')"
  fi
fi

# ---- GPU tests
gpu_tests=()
for src in tests/test_*.cpp; do
  head -n 1 "$src" | grep -Eq '^// labels:.*\bgpu\b' && gpu_tests+=("$(basename "$src" .cpp)")
done
configured_here=0
if [[ -f "$BUILD/CMakeCache.txt" ]] && grep -q "^CMAKE_HOME_DIRECTORY:INTERNAL=$ROOT\$" "$BUILD/CMakeCache.txt"; then
  configured_here=1
fi
# MIRA_GPU_TESTS (space-separated names) runs only those GPU test programs, directly.
if [[ -n "${MIRA_GPU_TESTS:-}" ]]; then
  # shellcheck disable=SC2206
  gpu_tests=(${MIRA_GPU_TESTS})
  configured_here=0
fi
if [[ $configured_here -eq 1 ]] && command -v ctest >/dev/null; then
  say "ctest -L gpu (log: ctest_gpu.log)"
  timeout "$(left)" ctest --test-dir "$BUILD" -L gpu --output-on-failure --timeout "$TEST_TIMEOUT" \
    >"$LOG_DIR/ctest_gpu.log" 2>&1
  # "1/2 Test #5: test_ops_gpu ......   Passed    3.21 sec" / "***Failed" / "***Skipped"
  while read -r name status secs; do
    case "$status" in Passed) s=PASS ;; Skipped|Not*) s=SKIP ;; Timeout) s=TIMEOUT ;; *) s=FAIL ;; esac
    row "$name" "$s" "$secs" "$([[ $s == FAIL ]] && grep -m1 -E 'ERROR|FAILED|error' "$LOG_DIR/ctest_gpu.log")"
  done < <(sed -nE 's/.*Test +#[0-9]+: ([^ ]+) \.+ *(\*\*\*)?([A-Za-z]+).* ([0-9.]+) sec.*/\1 \3 \4/p' "$LOG_DIR/ctest_gpu.log")
  grep -E 'tests passed|tests failed' "$LOG_DIR/ctest_gpu.log"
else
  say "running gpu-labelled binaries directly (${gpu_tests[*]:-none})"
  for name in "${gpu_tests[@]}"; do
    exe="$BUILD/tests/$name"
    if [[ ! -x "$exe" ]]; then
      row "$name" "MISSING" "0" "not built"
      continue
    fi
    t=$(now)
    (cd "$BUILD/tests" && timeout "$TEST_TIMEOUT" "./$name") >"$LOG_DIR/$name.log" 2>&1
    rc=$?
    case $rc in
      0) s=PASS ;;
      77) s=SKIP ;;
      124) s=TIMEOUT ;;
      *) s=FAIL ;;
    esac
    note=$(grep -m1 -E '^\[doctest\] test cases|SKIPPED' "$LOG_DIR/$name.log")
    [[ $s == FAIL ]] && note="rc $rc: $(grep -m1 -E 'ERROR|error|what\(\)' "$LOG_DIR/$name.log")"
    row "$name" "$s" "$(elapsed "$t")" "$note"
    [[ $s == FAIL || $s == TIMEOUT ]] && tail -n 40 "$LOG_DIR/$name.log"
  done
fi

# ---- benchmarks
# One explicit list, sized for a 15-minute device budget. Each runs under BENCH_TIMEOUT and
# adds a row with the last line of its log (one JSON object). Override a command's arguments
# with MIRA_BENCH_ARGS_<name>.
bench() {  # name command...
  local name=$1
  shift
  if past_deadline; then
    row "bench $name" "SKIP" "0" "past the ${DEADLINE} s deadline (MIRA_DEADLINE_S)"
    return
  fi
  local t
  t=$(now)
  say "bench $name: $* (log: bench_$name.log)"
  local to
  to=$(left)
  ((to > BENCH_TIMEOUT)) && to=$BENCH_TIMEOUT
  (cd "$ROOT" && timeout "$to" "$@") >"$LOG_DIR/bench_$name.log" 2>&1
  local rc=$?
  local s
  s=$([[ $rc -eq 0 ]] && echo OK || { [[ $rc -eq 124 ]] && echo TIMEOUT || echo FAIL; })
  row "bench $name" "$s" "$(elapsed "$t")" "$(grep -v '^\s*$' "$LOG_DIR/bench_$name.log" | tail -n 1)"
}
# The loader bench needs the photos (data_cache/photos/x, or .device_deps/photos from
# tools/prepare_device_deps.sh): CPU threads, then the GPU loader.
PHOTOS=data_cache/photos/x
[[ -d $PHOTOS ]] || PHOTOS=.device_deps/photos
# The paper's step: ResNet-50, 2 x 224 + 6 x 96 crops, projector 2048/256, K = 3000, LARS.
STEP_ARGS="--device cuda --arch resnet50 --cifar-stem 0 --batch ${MIRA_STEP_BATCH:-64} --global-size 224 \
--local-crops 6 --local-size 96 --proj-hidden 2048 --proj-out 256 --prototypes 3000 --optim lars --steps 10 --warmup 3"
HAVE_TORCH=0
python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null && HAVE_TORCH=1
if [[ "${MIRA_SKIP_BENCH:-0}" != 1 ]]; then
  B=$BUILD/bench
  # shellcheck disable=SC2086
  {
    [[ -x $B/mira_assign ]] && bench mira_assign "$B/mira_assign" ${MIRA_BENCH_ARGS_mira_assign:-}
    # Where the fused kernel's time goes: one row per block (N = 132 on an H100/H200) leaves the
    # fixed cost of the 31 passes (grid barriers, column reductions); 60 iterations gives the
    # slope per pass.
    [[ -x $B/mira_assign ]] && bench mira_assign_n132 "$B/mira_assign" --time --device cuda --n 132 --pytorch none
    [[ -x $B/mira_assign ]] && bench mira_assign_iters60 "$B/mira_assign" --time --device cuda --iters 60 --pytorch none
    [[ -x $B/train_step ]] && bench train_step_bf16 "$B/train_step" $STEP_ARGS --dtype bf16
    [[ -x $B/train_step ]] && bench train_step_f32 "$B/train_step" $STEP_ARGS --dtype f32
    [[ $HAVE_TORCH == 1 ]] && bench pytorch_mira_step python3 bench/pytorch_mira_step.py $STEP_ARGS
    [[ -x $B/train_step ]] && bench train_step_r18_32px "$B/train_step" --device cuda --arch resnet18 --batch 256 \
      --global-size 32 --dtype bf16 --steps 20
    [[ $HAVE_TORCH == 1 ]] && bench pytorch_step_r18_32px python3 bench/pytorch_mira_step.py --device cuda \
      --arch resnet18 --batch 256 --global-size 32 --steps 20
    [[ -x $B/loader && -d $PHOTOS ]] && bench loader "$B/loader" \
      ${MIRA_BENCH_ARGS_loader:---data $PHOTOS --gpu --threads 4,16 --images 2048 --batch 256}
    [[ -d $PHOTOS ]] && python3 -c 'import torchvision, PIL' 2>/dev/null &&
      bench pytorch_loader python3 bench/pytorch_loader.py --data "$PHOTOS" --workers 4,16 --images 2048 --batch 256
  }
fi

print_table | tee "$LOG_DIR/table.txt"
# The device tool brings back at most 8 files from $OUT: keep the table and the GPU tests' log as
# they are and pack every other log into logs.tgz (MIRA_PACK_LOGS=0 leaves them all loose).
if [[ "${MIRA_PACK_LOGS:-1}" != 0 ]]; then
  (
    cd "$LOG_DIR" || exit
    mapfile -t loose < <(find . -maxdepth 1 -type f ! -name table.txt ! -name ctest_gpu.log ! -name logs.tgz -printf '%f\n')
    if ((${#loose[@]})) && tar czf logs.tgz "${loose[@]}"; then rm -f "${loose[@]}"; fi
  )
fi
exit $FAILED
