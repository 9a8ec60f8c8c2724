#!/usr/bin/env bash
# Installs the build into a temporary prefix, then builds and runs two downstream programs
# against the installed files only: one through find_package(conveyor), one through
# pkg-config.  run.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build="$(cd "$1" && pwd)"
src="$(cd "$2" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
prefix="$tmp/prefix"

cmake --install "$build" --prefix "$prefix" > "$tmp/install.log"
for f in include/conveyor/client.hpp include/conveyor/version.hpp lib/libconveyor.a \
         lib/cmake/conveyor/conveyorConfig.cmake lib/cmake/conveyor/conveyorConfigVersion.cmake \
         lib/pkgconfig/conveyor.pc bin/conveyor; do
  [ -e "$prefix/$f" ] || { echo "install: $f is missing" >&2; exit 1; }
done

# find_package: a project of its own, outside this tree, seeing only the prefix.
mkdir -p "$tmp/cmake-user"
cp "$src/examples/quickstart.cpp" "$tmp/cmake-user/"
cat > "$tmp/cmake-user/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.25)
project(downstream LANGUAGES CXX)
find_package(conveyor 0.1 REQUIRED)
add_executable(quickstart quickstart.cpp)
target_link_libraries(quickstart PRIVATE conveyor::conveyor)
CMAKE
cmake -S "$tmp/cmake-user" -B "$tmp/cmake-user/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" > "$tmp/cmake-user.log" || { cat "$tmp/cmake-user.log"; exit 1; }
cmake --build "$tmp/cmake-user/build" > "$tmp/cmake-build.log" || { cat "$tmp/cmake-build.log"; exit 1; }
(cd "$tmp" && "$tmp/cmake-user/build/quickstart" "sqlite://$tmp/cmake.db")

# pkg-config: a plain compiler command line.
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
[ "$(pkg-config --modversion conveyor)" = "$("$prefix/bin/conveyor" --version | cut -d' ' -f2)" ]
# shellcheck disable=SC2046
g++ -std=c++23 -O1 -o "$tmp/workflow" "$src/examples/workflow.cpp" \
  $(pkg-config --cflags conveyor) $(pkg-config --static --libs conveyor)
"$tmp/workflow" "sqlite://$tmp/pkg.db"
# add_subdirectory: only the library is built for a parent project (configured, not built).
mkdir -p "$tmp/parent"
cat > "$tmp/parent/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.25)
project(parent LANGUAGES CXX)
add_subdirectory("$src" conveyor)
add_executable(app "$src/examples/quickstart.cpp")
target_link_libraries(app PRIVATE conveyor::conveyor)
CMAKE
cmake -S "$tmp/parent" -B "$tmp/parent/build" -G Ninja > "$tmp/parent.log" || { cat "$tmp/parent.log"; exit 1; }
targets="$(ninja -C "$tmp/parent/build" -t targets all)"
for t in conveyor/libconveyor.a app; do
  grep -q "^$t:" <<< "$targets" || { echo "subproject: no target $t" >&2; exit 1; }
done
for t in conveyor/conveyor conveyor/tests/unit_tests conveyor/bench/bench_engines \
         conveyor/examples/example_quickstart; do
  if grep -q "^$t:" <<< "$targets"; then echo "subproject: $t is built for a parent" >&2; exit 1; fi
done
echo "install: find_package and pkg-config builds ran; a parent project builds only the library"
