# The two commands: `make demo` (set up, build, run the demo) and `make test` (set up, build,
# run the whole suite). Both install missing Debian packages first (root or sudo).
BUILD ?= build
JOBS ?= 2

.PHONY: all deps test-deps bench-deps build demo test unit integration interop system cluster bench format clean

all: build

deps:
	scripts/install-deps.sh build

test-deps:
	scripts/install-deps.sh test

bench-deps:
	scripts/install-deps.sh bench

build:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build $(BUILD) -j $(JOBS)

demo: deps build
	cd $(BUILD) && ./conveyor demo

test: test-deps build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS) --timeout 600

unit: build
	ctest --test-dir $(BUILD) -L unit --output-on-failure -j $(JOBS)

integration: test-deps build
	ctest --test-dir $(BUILD) -L integration --output-on-failure -j $(JOBS)

interop: test-deps build
	ctest --test-dir $(BUILD) -L interop --output-on-failure -j $(JOBS)

system: test-deps build
	ctest --test-dir $(BUILD) -L system --output-on-failure -j $(JOBS)

cluster: test-deps build
	ctest --test-dir $(BUILD) -L cluster --output-on-failure

bench: bench-deps build
	scripts/bench.sh $(BUILD)

format:
	clang-format -i $$(git ls-files '*.cpp' '*.hpp')

clean:
	rm -rf $(BUILD)
