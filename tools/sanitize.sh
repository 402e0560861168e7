#!/usr/bin/env bash
# The sanitizer build: configures build-asan with AddressSanitizer + UndefinedBehaviorSanitizer
# (CPU backend only), builds everything, runs the CPU tests (`ctest -L cpu -LE slow`, or the
# ctest arguments given) with every sanitizer report fatal, and ends with ctest's summary.
#
#   tools/sanitize.sh [CTEST_ARGS ...]
#
# Environment: MIRA_ASAN_BUILD (build folder, default build-asan), MIRA_JOBS (parallel jobs).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${MIRA_ASAN_BUILD:-build-asan}
JOBS=${MIRA_JOBS:-$(nproc)}

bash tools/setup.sh
start=$(date +%s)
# RelWithDebInfo: optimised (the suite must fit CI's time) with line numbers in reports.
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMIRA_CUDA=OFF \
  -DMIRA_SANITIZE=address,undefined >/dev/null
# MIRA_ASAN_TARGETS: build only these targets (CI builds the tests it runs, not everything).
if [[ -n "${MIRA_ASAN_TARGETS:-}" ]]; then
  # shellcheck disable=SC2086
  cmake --build "$BUILD" -j "$JOBS" --target $MIRA_ASAN_TARGETS
else
  cmake --build "$BUILD" -j "$JOBS"
fi
built=$(date +%s)

# halt_on_error / abort_on_error: a report fails the test instead of scrolling past.
# detect_leaks: leaks are bugs too. OpenBLAS threads are capped so the tests fit the cores.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
if [[ $# -eq 0 ]]; then
  set -- -L cpu -LE slow
fi
rc=0
ctest --test-dir "$BUILD" --output-on-failure -j "$JOBS" "$@" || rc=$?
echo "sanitize.sh: build $((built - start)) s, tests $(($(date +%s) - built)) s"
exit $rc
