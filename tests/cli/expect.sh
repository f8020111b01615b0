#!/bin/sh
# expect.sh EXIT REGEX COMMAND [ARGS...]: runs COMMAND, then passes only if it exited with EXIT
# and its output (stdout and stderr together) matches the extended regular expression REGEX.
# CTest's PASS_REGULAR_EXPRESSION alone ignores the exit code; this checks both.
expected_exit=$1
regex=$2
shift 2
output=$("$@" 2>&1)
status=$?
printf '%s\n' "$output"
if [ "$status" -ne "$expected_exit" ]; then
  echo "expect.sh: exit status $status, expected $expected_exit" >&2
  exit 1
fi
if ! printf '%s' "$output" | tr '\n' '\001' | grep -Eq "$(printf '%s' "$regex" | tr '\n' '\001')"; then
  echo "expect.sh: output does not match: $regex" >&2
  exit 1
fi
echo "expect.sh: exit $status and output as expected"
