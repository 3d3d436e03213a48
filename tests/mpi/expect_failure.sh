#!/bin/sh
# expect_failure.sh SECONDS REGEX -- COMMAND...
# Passes when COMMAND exits non-zero within SECONDS and its output (stdout + stderr) matches
# the extended regular expression REGEX. A command still running after SECONDS + 20 is killed
# (and fails the test): a job that hangs instead of ending is exactly what this catches.
set -u
limit=$1 regex=$2
shift 2
[ "$1" = "--" ] || { echo "usage: expect_failure.sh SECONDS REGEX -- COMMAND..." >&2; exit 2; }
shift
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s%N)
timeout --kill-after=5 $((limit + 20)) "$@" >"$log" 2>&1
rc=$?
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
cat "$log"
echo "expect_failure.sh: exit status $rc after $elapsed_ms ms (limit $limit s)"
if [ "$rc" -eq 0 ]; then echo "expect_failure.sh: the command succeeded" >&2; exit 1; fi
if [ "$elapsed_ms" -gt $((limit * 1000)) ]; then
  echo "expect_failure.sh: took longer than $limit s" >&2; exit 1
fi
if ! grep -Eq "$regex" "$log"; then
  echo "expect_failure.sh: output does not match '$regex'" >&2; exit 1
fi
