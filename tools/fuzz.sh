#!/usr/bin/env bash
# Builds the libFuzzer harnesses (clang, ASan + UBSan with every UB fatal, coverage
# instrumentation of all our libraries) and runs each fuzzer for SECONDS (default 600), two at a
# time, on a working copy of its corpus (fuzz/corpus/<parser> + fuzz/regressions/<parser> + any
# fetched files). New crashes land in $WORK/crashes/<parser>/; each is a bug: fix the parser, then
# copy the input to fuzz/regressions/<parser>/ so tests/test_fuzz_regressions replays it in CI.
#
#   tools/fuzz.sh [SECONDS] [PARSER ...]       parsers: safetensors config npy idx cifar jpeg
#
# Environment: MIRA_FUZZ_BUILD (build folder, default build-fuzz), MIRA_FUZZ_WORK (corpora,
# crashes and logs, default $MIRA_FUZZ_BUILD/work), MIRA_FUZZ_JOBS (fuzzers at once, default 2),
# MIRA_FUZZ_EXTRA_CORPUS (a folder with <parser>/ subfolders of larger seeds, e.g. from
# fuzz/fetch_seeds.sh). A summary line per fuzzer (runs, exec/s, corpus, crashes) ends
# the output and is written to $WORK/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

SECONDS_EACH=${1:-600}
shift || true
PARSERS=("$@")
[[ ${#PARSERS[@]} -eq 0 ]] && PARSERS=(safetensors config npy idx cifar jpeg)
BUILD=${MIRA_FUZZ_BUILD:-build-fuzz}
WORK=${MIRA_FUZZ_WORK:-$BUILD/work}
JOBS=${MIRA_FUZZ_JOBS:-2}

command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found (apt-get install clang libclang-rt-14-dev)"; exit 1; }

SAN="-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMIRA_CUDA=OFF -DMIRA_FUZZ=ON \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_C_FLAGS="$SAN" -DCMAKE_CXX_FLAGS="$SAN" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" -DBUILD_TESTING=OFF >/dev/null
targets=()
for p in "${PARSERS[@]}"; do targets+=("fuzz_$p"); done
cmake --build "$BUILD" -j "${MIRA_JOBS:-$(nproc)}" --target "${targets[@]}"
BIN=$(dirname "$(find "$BUILD" -name "fuzz_${PARSERS[0]}" -type f -perm -u+x | head -1)")

mkdir -p "$WORK"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

run_one() {
  local p=$1
  local corpus="$WORK/corpus/$p" crashes="$WORK/crashes/$p" log="$WORK/$p.log"
  mkdir -p "$corpus" "$crashes"
  for seed in "fuzz/corpus/$p" "fuzz/regressions/$p" "${MIRA_FUZZ_EXTRA_CORPUS:-/nonexistent}/$p"; do
    [[ -d $seed ]] && find "$seed" -maxdepth 1 -type f -exec cp -n {} "$corpus/" \;
  done
  local dict=()
  [[ -f fuzz/dict/$p.dict ]] && dict=(-dict="fuzz/dict/$p.dict")
  # -rss_limit_mb / -malloc_limit_mb: an allocation over 2 GB for inputs this small is a bug.
  "$BIN/fuzz_$p" "$corpus" "${dict[@]}" -max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=20 \
    -rss_limit_mb=2560 -malloc_limit_mb=2048 -artifact_prefix="$crashes/" -print_final_stats=1 >"$log" 2>&1 || true
  local runs execs cov
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  execs=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
  printf '%-12s %6ss  runs %-10s exec/s %-6s cov %-6s corpus %-5s (%s)  crashes %s\n' "$p" "$SECONDS_EACH" "$runs" \
    "$execs" "$cov" "$(ls "$corpus" | wc -l)" "$(du -sh "$corpus" | cut -f1)" "$(ls "$crashes" | wc -l)"
}

: >"$WORK/summary.txt"
running=0
for p in "${PARSERS[@]}"; do
  run_one "$p" >>"$WORK/summary.txt" &
  running=$((running + 1))
  if [[ $running -ge $JOBS ]]; then
    wait -n
    running=$((running - 1))
  fi
done
wait
echo "fuzz.sh: $SECONDS_EACH s per fuzzer; logs in $WORK/<parser>.log"
cat "$WORK/summary.txt"
if grep -qv 'crashes 0$' "$WORK/summary.txt"; then
  echo "fuzz.sh: CRASHES found, inputs in $WORK/crashes/"
  exit 1
fi
