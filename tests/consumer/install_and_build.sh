#!/bin/sh
# install_and_build.sh BUILD_DIR SOURCE_DIR WORK_DIR: `cmake --install` of the built tree into a
# prefix, then the consumer project configured with find_package(moelab), built and run.
set -eu
build=$1 source=$2 work=$3
rm -rf "$work"
cmake --install "$build" --prefix "$work/prefix" > "$work.install.log" 2>&1 || { cat "$work.install.log"; exit 1; }
test -f "$work/prefix/lib/cmake/moelab/moelabConfig.cmake"
test -f "$work/prefix/include/moelab/nn/moe_layer.h"
CCACHE_DISABLE=1 cmake -S "$source/tests/consumer" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/prefix" > "$work.configure.log" 2>&1 || { cat "$work.configure.log"; exit 1; }
cmake --build "$work/build" > "$work.build.log" 2>&1 || { cat "$work.build.log"; exit 1; }
"$work/build/consumer"
