#!/bin/sh
# same_output.sh [--or-refused REGEX] A B -- COMMAND_A... -- COMMAND_B...
# Runs COMMAND_A (which writes file A) and COMMAND_B (which writes file B) and fails unless
# both succeed and the two files are identical byte for byte. With --or-refused, COMMAND_B
# may instead fail with output matching REGEX (a resource this machine lacks, refused at
# start with a clear message): that passes without comparing.
set -u
refusal=""
if [ "$1" = "--or-refused" ]; then refusal=$2; shift 2; fi
a=$1 b=$2
shift 2
[ "$1" = "--" ] || { echo "usage: same_output.sh [--or-refused REGEX] A B -- CMD_A... -- CMD_B..." >&2; exit 2; }
shift
cmd_a=""
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do cmd_a="$cmd_a '$1'"; shift; done
[ "$#" -gt 0 ] || { echo "same_output.sh: missing -- before COMMAND_B" >&2; exit 2; }
shift
rm -f "$a" "$b"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$@" >"$log" 2>&1
rc=$?
cat "$log"
if [ "$rc" -ne 0 ]; then
  if [ -n "$refusal" ] && grep -Eq "$refusal" "$log"; then
    echo "same_output.sh: COMMAND_B was refused as allowed ('$refusal'), exit status $rc"
    exit 0
  fi
  echo "same_output.sh: COMMAND_B failed (exit status $rc)" >&2
  exit 1
fi
eval "$cmd_a" || { echo "same_output.sh: COMMAND_A failed" >&2; exit 1; }
if cmp "$a" "$b"; then
  echo "same_output.sh: $a and $b are identical ($(wc -c < "$a") bytes)"
else
  echo "same_output.sh: $a and $b differ" >&2
  exit 1
fi
