# The two commands: `make demo` (set up, build, run the demo) and `make test` (set up, build,
# run the whole suite). Both install missing Debian packages first (root or sudo).
BUILD ?= build
JOBS ?= 2

.PHONY: all deps test-deps bench-deps build demo test unit integration interop system cluster sanitize asan asan-build asan-test tsan tsan-build tsan-test fuzz fuzz-build tidy bench format clean

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

# The suite: the main tiers, then the sanitizer tiers and the fuzz runs. Most tests wait on
# brokers and processes, so what needs only CPU (the sanitizer and fuzz builds, then clang-tidy)
# runs meanwhile at the lowest priority and takes the cores they leave idle (scripts/test-all.sh).
test: test-deps build
	MAKE="$(MAKE)" scripts/test-all.sh $(BUILD) $(JOBS)

# The unit and system tiers again under AddressSanitizer + UndefinedBehaviorSanitizer, and under
# ThreadSanitizer (the tests that run threads against the embedded engine); any finding fails.
# Unity builds (several sources per compiler run) take 3 minutes instead of 5 per build on 2 cores.
SAN_TARGETS = unit_tests system_tests test_worker conveyor_cli
SAN_CMAKE = -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" \
	-DCMAKE_UNITY_BUILD=ON -DCONVEYOR_BUILD_BENCH=OFF -DCONVEYOR_BUILD_EXAMPLES=OFF
TSAN_TESTS = Lifecycle|Worker|Sqlite|ExecHandler|HttpHandler|Workflow|Scheduler\.|Monitoring|Dashboard\.|Reaper|MemoryBroker
# Left out under TSan (they run in the main and ASan passes): most of their minute goes to waiting
# for a broker to come up or a leadership lease to run out, not to threads meeting.
TSAN_SKIP = LeaderKilledAgainAndAgain|StartedWhileRabbitMqIsDown
sanitize: asan tsan

# clang-tidy with .clang-tidy's checks over src/ (bugprone, performance, naming): no finding.
tidy: test-deps build
	scripts/tidy.sh $(BUILD)

# Each fuzz target for FUZZ_SECONDS from its seed corpus (afl++, see fuzz/run.sh).
FUZZ_SECONDS ?= 10
fuzz: test-deps
	fuzz/run.sh $(BUILD)-fuzz $(FUZZ_SECONDS)

fuzz-build: test-deps
	fuzz/run.sh $(BUILD)-fuzz 0

asan: asan-build asan-test

asan-build: test-deps
	cmake -S . -B $(BUILD)-asan $(SAN_CMAKE) -DCONVEYOR_SANITIZE=address,undefined
	cmake --build $(BUILD)-asan -j $(JOBS) --target $(SAN_TARGETS)

asan-test:
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest --test-dir $(BUILD)-asan -L 'unit|system' -E clang_format --output-on-failure \
	  -j $(JOBS) --timeout 600

tsan: tsan-build tsan-test

tsan-build: test-deps
	cmake -S . -B $(BUILD)-tsan $(SAN_CMAKE) -DCONVEYOR_SANITIZE=thread
	cmake --build $(BUILD)-tsan -j $(JOBS) --target $(SAN_TARGETS)

tsan-test:
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
	  ctest --test-dir $(BUILD)-tsan -L 'unit|system' -R '$(TSAN_TESTS)' -E '$(TSAN_SKIP)' \
	  --output-on-failure \
	  -j $(JOBS) --timeout 600

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
