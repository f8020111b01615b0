#!/bin/sh
# Usage: kill_loop.sh MOELAB CONFIG WORK_DIR
# Kills a training run with SIGKILL at many points of its file writes: checkpoint files,
# manifests, fsyncs, renames, metrics appends (MOELAB_INJECT_FAULT=kill@N ends the process at its
# N-th checked I/O operation, a write after half its bytes). Then kills the resume at one of its
# first operations (the metrics rewrite, the run config), and resumes again to the end. Every run
# must end with the weights of a run that was never killed, byte for byte, the same metric lines,
# and no temporary file; a run killed before its first checkpoint must say it has none.
set -u
moelab=$1 config=$2 work=$3
args="train.max_steps=24 train.checkpoint_every=8 train.log_every=3 train.eval_every=8 train.keep_last=1"
final=checkpoints/step-00000024/model.safetensors
fail() { echo "FAIL: $*"; exit 1; }
lines() { sed 's/"samples_per_s":[^,]*,//' "$1/metrics.jsonl"; }  # without the wall-clock speed

rm -rf "$work" && mkdir -p "$work" || fail "cannot create $work"
"$moelab" train -c "$config" --run-dir "$work/straight" $args > /dev/null 2>&1 || fail "the straight run"
n=1 points=0 resumed=0
while :; do
  run="$work/kill$n"
  MOELAB_INJECT_FAULT=kill@$n "$moelab" train -c "$config" --run-dir "$run" $args > /dev/null 2>&1
  rc=$?
  [ $rc -eq 0 ] && break  # past the run's last write
  [ $rc -eq 137 ] || fail "kill@$n: exit $rc"
  points=$((points + 1))
  if ! ls "$run/checkpoints" 2>/dev/null | grep -q '^step-'; then
    "$moelab" resume "$run" > "$run.log" 2>&1
    rc=$?
    [ $rc -eq 2 ] && grep -q "no complete checkpoint" "$run.log" ||
      fail "kill@$n, no checkpoint yet: resume exit $rc: $(cat "$run.log")"
  else
    m=$((n % 5 + 1))
    MOELAB_INJECT_FAULT=kill@$m "$moelab" resume "$run" > /dev/null 2>&1
    rc=$?
    [ $rc -eq 137 ] || [ $rc -eq 0 ] || fail "kill@$n, then kill@$m of the resume: exit $rc"
    "$moelab" resume "$run" > "$run.log" 2>&1 ||
      fail "kill@$n, kill@$m: the resume failed: $(tail -1 "$run.log")"
    cmp -s "$work/straight/$final" "$run/$final" || fail "kill@$n, kill@$m: the final weights differ"
    [ "$(lines "$work/straight")" = "$(lines "$run")" ] ||
      fail "kill@$n, kill@$m: the metric lines differ"
    resumed=$((resumed + 1))
  fi
  leftover=$(find "$run" -name '*.tmp')
  [ -z "$leftover" ] || fail "kill@$n: left $leftover"
  rm -rf "$run" "$run.log"
  n=$((n + 23))
done
[ $resumed -ge 5 ] || fail "only $resumed of $points kills had a checkpoint to resume from"
echo "killed at $points points, $resumed resumed to the same weights and metric lines"
