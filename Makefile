# The two README commands (`make demo`, `make test`) plus the steps they are made of.
# Each target installs what is missing first, so either works on a fresh Debian machine as root.

BUILD_DIR ?= build
JOBS      ?= $(shell nproc)
# ccache can cache objects built with a precompiled header only with this sloppiness.
export CCACHE_SLOPPINESS := pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_DIR ?= $(HOME)/.cache/ccache

.PHONY: deps configure build test bench demo clean

deps:
	./scripts/install-deps

$(BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release

configure: deps $(BUILD_DIR)/CMakeCache.txt

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 600

bench: build
	$(BUILD_DIR)/bin/moelab_bench --benchmark_min_time=1

# Until the vision study exists, the demo is the MoE layer benchmark at the README's sizes.
demo: build
	$(BUILD_DIR)/bin/moelab bench moe-layer --tokens 4096 --d-model 512 --d-ff 1024 --experts 8 --top-k 2 --mode fwdbwd
	$(BUILD_DIR)/bin/moelab bench moe-layer --tokens 4096 --d-model 512 --d-ff 1024 --experts 64 --top-k 2 --mode fwdbwd

clean:
	rm -rf $(BUILD_DIR)
