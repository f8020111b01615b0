#!/bin/sh
# tiny_chemoe.sh MOELAB: CheMoE's whole path through the tool: simulate a perturbation set (both
# layouts), train on the csv layout, evaluate on the gctx one (the same signatures), a two-run
# study with its baselines and report, and an invalid SMILES named with its file. Prints one line
# per check that passed.
set -e
moelab=$1
here=$(dirname "$0")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$moelab" data simulate-perturbation --cell-lines 3 --genes 40 --samples 150 --programs 4 \
  --genes-per-program 5 --seed 1 --out "$dir/sim" > "$dir/sim.log"
test -s "$dir/sim/csv/treated.csv" && test -s "$dir/sim/gctx/treated.gctx" && test -s "$dir/sim/truth.json" &&
  echo "simulated in both layouts"
common="data.simulate=false data.path=$dir/sim/csv data.cache_dir=$dir/cache"
"$moelab" train -c "$here/tiny_chemoe.yaml" --run-dir "$dir/run" $common > "$dir/train.log"
grep -q 'val r2_top20' "$dir/train.log" && grep -q 'test split: .*r2_top20' "$dir/train.log" && echo "train scores DE"
a=$("$moelab" eval "$dir/run" --json)
b=$("$moelab" eval "$dir/run" --json data.path="$dir/sim/gctx" data.format=gctx)
echo "$a" | grep -q '"r2_top40"' && [ "$a" = "$b" ] && echo "csv and gctx evaluate alike"
"$moelab" study -c "$here/tiny_chemoe_study.yaml" --run-dir "$dir/study" base.data.cache_dir="$dir/cache" > "$dir/study.log"
grep -q '^moe .*test R^2 top-20 DE' "$dir/study.log" && grep -q '^cell_line_mean .*(baseline)' "$dir/study.log" &&
  grep -q 'baseline: no_change' "$dir/study/report/index.html" && test -s "$dir/study/report/program_lift_moe.png" &&
  test -s "$dir/study/report/usage_by_cell_line_moe.png" && echo "study with baselines and routing plots"
printf 'CCO one\nC1CC broken\n' > "$dir/bad.smi"
if "$moelab" data simulate-perturbation --molecules "$dir/bad.smi" --out "$dir/x" 2> "$dir/err.log"; then
  echo "a file with one valid SMILES was accepted"
else
  grep -q "molecules" "$dir/err.log" && echo "too few valid molecules refused"
fi
