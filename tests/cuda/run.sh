#!/usr/bin/env bash
# Builds moelab's library against the LibTorch inside python3's PyTorch (CUDA, NCCL) and runs
# tests/cuda/cuda_check.cpp on one process and, with two GPUs or more, on two.
#   tests/cuda/run.sh DEPS [BUILD_DIR]
# DEPS: a folder with include/ and lib/ of yaml-cpp, fmt, spdlog, nlohmann-json and CLI11 (the
# Debian packages' files; a machine with those packages installed can pass /usr), and
# optionally fallback-include/ (searched after everything else: gloo's headers, for a LibTorch
# that does not ship them). BUILD_SECONDS (default 1200) bounds the build.
set -euo pipefail
deps=$(realpath "${1:?usage: tests/cuda/run.sh DEPS [BUILD_DIR]}")
build=${2:-/tmp/moelab-cuda-build}
here=$(cd "$(dirname "$0")" && pwd)
torch_cmake=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
nccl_include=$(python3 -c 'import os, nvidia.nccl as n; print(os.path.join(list(n.__path__)[0], "include"))' 2>/dev/null || true)
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
configure() {
  cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$torch_cmake" \
        -DMOELAB_DEPS="$deps" -DNCCL_INCLUDE_DIR="$nccl_include" -DCMAKE_CXX_STANDARD="$1" \
        -DCMAKE_CXX_FLAGS="-O1 -idirafter $deps/fallback-include" > "$build.configure.log" 2>&1 ||
    { tail -40 "$build.configure.log"; exit 1; }
}
compile() {
  timeout "${BUILD_SECONDS:-1200}" cmake --build "$build" -j"$(nproc)" -- -k > "$build.build.log" 2>&1 || true
}
configure 17
compile
if grep -q "C++20" "$build.build.log" && ! test -x "$build/cuda_check"; then
  echo "this LibTorch needs C++20: building again with it"
  configure 20
  compile
fi
grep -E "error|warning: .*deprecated" "$build.build.log" | sort | uniq -c | sort -rn | head -60 || true
test -x "$build/cuda_check" || { echo "cuda_check did not build"; tail -30 "$build.build.log"; exit 1; }
export LD_LIBRARY_PATH="$deps/lib:${LD_LIBRARY_PATH:-}"
RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=29531 "$build/cuda_check"
if [ "$(python3 -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  for r in 0 1; do
    RANK=$r LOCAL_RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29532 "$build/cuda_check" &
  done
  wait -n && wait -n
fi
