#!/bin/sh
# Usage: sigint_resume.sh MOELAB CONFIG RUN_DIR
# Starts a long run, sends SIGINT once training has logged, and checks the exit status and the
# resume hint; then resumes the run with a nearer end (train.max_steps may change on resume)
# and checks that it gets there.
set -u
moelab=$1 config=$2 run=$3
rm -rf "$run"
"$moelab" train -c "$config" --run-dir "$run" train.max_steps=100000 train.eval_every=0 \
  train.checkpoint_every=0 > "$run.log" 2>&1 &
pid=$!
i=0
while [ ! -s "$run/metrics.jsonl" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
kill -INT $pid
wait $pid
echo "interrupted: exit $?"
cat "$run.log"
stopped=$(ls "$run/checkpoints" | tail -1 | sed 's/^step-0*//')
target=$((stopped + 20))
"$moelab" resume "$run" train.max_steps=$target > "$run.resume.log" 2>&1
grep -q "^step $target:" "$run.resume.log" && echo "resumed: reached step $target"
