#!/usr/bin/env bash
# `make test` once the main build is done: the main tiers' tests (ctest), then the unit and
# system tiers under ASan+UBSan and under TSan, then the fuzz runs, then clang-tidy's verdict.
# Most tests wait on brokers and processes; what needs only CPU (the ASan, TSan and fuzz builds,
# then clang-tidy) runs meanwhile in the background at the lowest priority, in the order the
# tiers need it, and takes the cores the tests leave idle. Fails when any part fails.
#   scripts/test-all.sh BUILD_DIR JOBS   (MAKE: the make to call)
set -uo pipefail
build="$1"
jobs="$2"
make="${MAKE:-make}"
cd "$(dirname "$0")/.."
state="$build/test-all"
rm -rf "$state"
mkdir -p "$state"

# Each background step leaves STEP.rc (its exit code) and STEP.log. It runs in a process
# group of its own (job control), so that a failed or interrupted run stops it at once.
set -m
(
  step() {
    local name="$1"
    shift
    nice -n 19 "$@" > "$state/$name.log" 2>&1
    echo $? > "$state/$name.rc.tmp"
    mv "$state/$name.rc.tmp" "$state/$name.rc"
  }
  step asan-build "$make" --no-print-directory asan-build BUILD="$build" JOBS="$jobs"
  step tsan-build "$make" --no-print-directory tsan-build BUILD="$build" JOBS="$jobs"
  step fuzz-build "$make" --no-print-directory fuzz-build BUILD="$build"
  step tidy scripts/tidy.sh "$build"
) < /dev/null &
background=$!
set +m
trap 'kill -- "-$background" 2> /dev/null' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits for a background step; its log, and a failure, when it failed.
await() {
  while [ ! -f "$state/$1.rc" ]; do
    if ! kill -0 "$background" 2> /dev/null && [ ! -f "$state/$1.rc" ]; then
      echo "test-all: the background builds stopped before $1" >&2
      return 1
    fi
    sleep 1
  done
  if [ "$(cat "$state/$1.rc")" -ne 0 ]; then
    cat "$state/$1.log"
    echo "test-all: $1 failed" >&2
    return 1
  fi
}

started=$SECONDS
phase() { echo "test-all: $1 ($((SECONDS - started)) s in)"; }
rc=0
phase "main tiers"
ctest --test-dir "$build" --output-on-failure -j "$jobs" --timeout 600 || rc=1
if [ $rc -eq 0 ]; then
  phase "ASan+UBSan tier"
  { await asan-build && "$make" --no-print-directory asan-test BUILD="$build" JOBS="$jobs"; } || rc=1
fi
if [ $rc -eq 0 ]; then
  phase "TSan tier"
  { await tsan-build && "$make" --no-print-directory tsan-test BUILD="$build" JOBS="$jobs"; } || rc=1
fi
if [ $rc -eq 0 ]; then
  phase "fuzz runs"
  { await fuzz-build && "$make" --no-print-directory fuzz BUILD="$build"; } || rc=1
fi
if [ $rc -ne 0 ]; then
  phase "failed, rc=$rc"
  exit $rc  # (the EXIT trap stops the background builds)
fi
phase "clang-tidy"
wait "$background"
cat "$state/tidy.log"
[ "$(cat "$state/tidy.rc")" -eq 0 ] || { echo "test-all: clang-tidy failed" >&2; rc=1; }
phase "done, rc=$rc"
exit $rc
