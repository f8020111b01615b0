#!/bin/sh
# layering_check.sh ROOT: every `#include "moelab/X/..."` in ROOT/include/moelab and ROOT/src must
# point to the including file's own folder or a lower layer. Prints each back-edge as
#   FILE: includes "moelab/X/..." (layer X is above layer Y)
# and fails if there is one. The layers, lowest first (a folder may include its own and lower
# ones; folders on one rank may not include each other):
#   util < io = config < nn < data = perf < models < train < dist < run < analysis
# data sits below models because a model reads a data::Batch.
root=$1
rank() {
  case $1 in
    util) echo 0 ;; io|config) echo 1 ;; nn) echo 2 ;; data|perf) echo 3 ;; models) echo 4 ;;
    train) echo 5 ;; dist) echo 6 ;; run) echo 7 ;; analysis) echo 8 ;; *) echo unknown ;;
  esac
}
status=0
checked=0
for file in $(find "$root/include/moelab" "$root/src" -name '*.h' -o -name '*.cpp' | sort); do
  case $file in
    "$root/include/moelab/"*) folder=${file#"$root/include/moelab/"} ;;
    *) folder=${file#"$root/src/"} ;;
  esac
  folder=${folder%%/*}
  own=$(rank "$folder")
  if [ "$own" = unknown ]; then
    echo "${file#"$root/"}: folder '$folder' has no layer; add it to tests/layering_check.sh"
    status=1
    continue
  fi
  for target in $(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"moelab\/\([a-z_]*\)\/.*/\1/p' "$file"); do
    checked=$((checked + 1))
    [ "$target" = "$folder" ] && continue
    theirs=$(rank "$target")
    if [ "$theirs" = unknown ] || [ "$theirs" -ge "$own" ]; then
      line=$(grep -n "#include \"moelab/$target/" "$file" | head -1)
      echo "${file#"$root/"}:${line%%:*}: includes \"moelab/$target/...\" (layer $target is not below layer $folder)"
      status=1
    fi
  done
done
echo "layering: $checked includes checked"
exit $status
