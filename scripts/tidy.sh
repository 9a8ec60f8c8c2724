#!/usr/bin/env bash
# clang-tidy over src/ with the checks of .clang-tidy; fails on any finding of them.
# Debian 12's clang 14 does not take this C++23 code whole: libstdc++ 12 offers std::expected
# only to compilers that report C++20 concepts in full, which clang 14 does not. The checks run
# with that report forced (-D__cpp_concepts=202002L); what clang 14 still cannot compile there
# (std::expected's conditionally trivial copies) is its own error, not a finding, and is left
# out, while every other statement of every file is checked.
#   scripts/tidy.sh BUILD_DIR   (a build with compile_commands.json)
set -euo pipefail
build="$1"
src="$(cd "$(dirname "$0")/.." && pwd)"
log="$build/tidy.log"
run-clang-tidy-14 -p "$build" -j 2 -quiet \
  -extra-arg=-std=c++2b -extra-arg=-D__cpp_concepts=202002L \
  -extra-arg=-Wno-builtin-macro-redefined -extra-arg=-ferror-limit=0 \
  "$src/src/" > "$log" 2>&1 || true
findings="$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '(warning|error): .*\[(bugprone|performance|readability)-' | sort -u || true)"
if [ -n "$findings" ]; then
  echo "$findings"
  echo "tidy: $(wc -l <<< "$findings") findings" >&2
  exit 1
fi
files="$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -c '^clang-tidy-14 ' || true)"
echo "tidy: no findings in $files files of src/"
