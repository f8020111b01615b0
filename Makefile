# The two README commands (`make demo`, `make test`) plus the steps they are made of.
# Each target installs what is missing first, so either works on a fresh Debian machine as root.

BUILD_DIR ?= build
JOBS      ?= $(shell nproc)
# ccache can cache objects built with a precompiled header only with this sloppiness.
export CCACHE_SLOPPINESS := pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_DIR ?= $(HOME)/.cache/ccache

.PHONY: deps configure build test test-sanitize bench demo clean clean-runs

deps:
	./scripts/install-deps

$(BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release

configure: deps $(BUILD_DIR)/CMakeCache.txt

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

# One intra-op thread per test process: ctest runs JOBS of them side by side, and two processes
# of two OpenMP threads each on two cores spin against each other (the suite took 40% longer).
test: build
	cd $(BUILD_DIR) && OMP_NUM_THREADS=1 ctest --output-on-failure -j $(JOBS) --timeout 600

# The suite built with AddressSanitizer and UndefinedBehaviorSanitizer (too slow for CI: run it
# when a reader, a parser or the checkpoint code changes). LibTorch itself is not instrumented.
SANITIZE_DIR ?= build-sanitize
test-sanitize: deps
	cmake -S . -B $(SANITIZE_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOELAB_BUILD_BENCH=OFF \
	  -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
	cmake --build $(SANITIZE_DIR) -j $(JOBS)
	cd $(SANITIZE_DIR) && OMP_NUM_THREADS=1 ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0 \
	  UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j $(JOBS) --timeout 1200 -LE "slow|sentencepiece"

bench: build
	$(BUILD_DIR)/bin/moelab_bench --benchmark_min_time=1

# The vision MoE study on Fashion-MNIST: five runs, then runs/fashion_mnist/report/index.html.
# An interrupted demo continues where it stopped; `make clean-runs` starts it over.
DEMO_DIR ?= runs/fashion_mnist
demo: build
	$(BUILD_DIR)/bin/moelab study -c configs/studies/fashion_mnist.yaml --run-dir $(DEMO_DIR)

clean-runs:
	rm -rf $(DEMO_DIR)

clean:
	rm -rf $(BUILD_DIR)
