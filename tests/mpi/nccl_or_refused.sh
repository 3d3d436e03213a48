#!/bin/sh
# nccl_or_refused.sh A B -- COMMAND_A... -- COMMAND_B...
# COMMAND_B is a cluster run with --transport nccl writing file B. Where every rank has a GPU
# of its own it must succeed and B must equal file A of COMMAND_A (a single-process run) byte
# for byte; where not, it must be refused at start — non-zero exit, the message "nccl
# transport: no usable GPU" — rather than crash or hang.
set -u
a=$1 b=$2
shift 2
[ "$1" = "--" ] || { echo "usage: nccl_or_refused.sh A B -- CMD_A... -- CMD_B..." >&2; exit 2; }
shift
cmd_a=""
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do cmd_a="$cmd_a '$1'"; shift; done
shift
rm -f "$a" "$b"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$@" >"$log" 2>&1
rc=$?
cat "$log"
if [ "$rc" -ne 0 ]; then
  if grep -q "nccl transport: no usable GPU" "$log"; then
    echo "nccl_or_refused.sh: refused at start (no GPU per rank here), exit status $rc"
    exit 0
  fi
  echo "nccl_or_refused.sh: the nccl cluster failed (exit status $rc)" >&2
  exit 1
fi
eval "$cmd_a" || exit 1
cmp "$a" "$b" || { echo "nccl_or_refused.sh: $a and $b differ" >&2; exit 1; }
echo "nccl_or_refused.sh: the nccl cluster's output equals one process's"
