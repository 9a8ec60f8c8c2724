#!/usr/bin/env bash
# Builds the fuzz targets with afl++ (afl-g++; AddressSanitizer and UBSan in the targets) and
# runs each for SECONDS from its committed seed corpus (fuzz/corpus/TARGET). Fails when a target
# crashed or hung; the inputs that did are printed and kept in BUILD/findings/TARGET.
#   fuzz/run.sh BUILD_DIR [SECONDS]   (SECONDS 0: build only)
# Reproduce one: BUILD_DIR/fuzz/fuzz_TARGET FILE
set -euo pipefail
build="$(mkdir -p "$1" && cd "$1" && pwd)"
seconds="${2:-20}"
src="$(cd "$(dirname "$0")/.." && pwd)"
targets=(codec config url cron amqp_table)

export AFL_USE_ASAN=1 AFL_USE_UBSAN=1 AFL_QUIET=1
CXX=afl-g++ cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCONVEYOR_BUILD_FUZZ=ON -DCONVEYOR_BUILD_CLI=OFF -DCONVEYOR_BUILD_TESTS=OFF \
  -DCONVEYOR_BUILD_BENCH=OFF -DCONVEYOR_BUILD_EXAMPLES=OFF -DCONVEYOR_INSTALL=OFF > /dev/null
cmake --build "$build" -j 2 --target "${targets[@]/#/fuzz_}"
unset AFL_USE_ASAN AFL_USE_UBSAN
[ "$seconds" = 0 ] && exit 0

# Unattended: no UI, no CPU-governor or core_pattern checks, one core each, stop on time.
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
export AFL_SKIP_CRASHES=1 AFL_FAST_CAL=1
failed=0
for t in "${targets[@]}"; do
  out="$build/findings/$t"
  rm -rf "$out"
  mkdir -p "$build/findings"
  afl-fuzz -i "$src/fuzz/corpus/$t" -o "$out" -V "$seconds" -m none -t 2000 \
    -- "$build/fuzz/fuzz_$t" @@ > "$build/findings-$t.log" 2>&1 || {
    echo "fuzz $t: afl-fuzz did not run:" >&2
    tail -20 "$build/findings-$t.log" >&2
    failed=1
    continue
  }
  stats="$out/default/fuzzer_stats"
  execs="$(awk -F': *' '/^execs_done/ {print $2}' "$stats")"
  paths="$(awk -F': *' '/^corpus_count/ {print $2}' "$stats")"
  found=$(find "$out/default/crashes" "$out/default/hangs" -type f ! -name README.txt | wc -l)
  echo "fuzz $t: $execs runs in ${seconds} s, $paths inputs in the corpus, $found crashes/hangs"
  if [ "$found" -ne 0 ]; then
    find "$out/default/crashes" "$out/default/hangs" -type f ! -name README.txt -print >&2
    failed=1
  fi
done
exit "$failed"
