#!/bin/sh
# same_output.sh A B -- COMMAND_A... -- COMMAND_B...
# Runs COMMAND_A (which writes file A) and COMMAND_B (which writes file B) and fails unless
# both succeed and the two files are identical byte for byte.
set -eu
a=$1 b=$2
shift 2
[ "$1" = "--" ] || { echo "usage: same_output.sh A B -- CMD_A... -- CMD_B..." >&2; exit 2; }
shift
cmd_a=""
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do cmd_a="$cmd_a '$1'"; shift; done
[ "$#" -gt 0 ] || { echo "same_output.sh: missing -- before COMMAND_B" >&2; exit 2; }
shift
rm -f "$a" "$b"
eval "$cmd_a"
"$@"
if cmp "$a" "$b"; then
  echo "same_output.sh: $a and $b are identical ($(wc -c < "$a") bytes)"
else
  echo "same_output.sh: $a and $b differ" >&2
  exit 1
fi
