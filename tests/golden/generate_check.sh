#!/bin/sh
# Greedy generation end to end: moerun-generate (reference kernels) continues the golden's
# greedy sequence (seq1: its decode tokens are the argmax of the official code's own logits)
# and must print exactly those tokens: generate_check.sh GENERATE GOLDEN_DIR
set -eu
generate=$1 golden=$2
read_field() {
  /usr/bin/python3 -c "import json,sys; s=json.load(open('$golden/golden.json'))['sequences'][1]
assert s['decode_tokens_from'].startswith('greedy'), 'seq1 is not a greedy sequence'
print($1)"
}
prompt=$(read_field "','.join(map(str, s['prompt_tokens']))")
want=$(read_field "' '.join(map(str, s['decode_tokens']))")
count=$(read_field "len(s['decode_tokens'])")
got=$("$generate" --model "$golden/checkpoint" --ids "$prompt" --max-tokens "$count" \
        --kernels reference 2>/dev/null | tr -s ' \n' ' ' | sed 's/ *$//')
if [ "$got" != "$want" ]; then
  echo "greedy continuation differs from the golden:"
  echo "  want: $want"
  echo "  got:  $got"
  exit 1
fi
echo "greedy continuation of $count tokens matches the golden"
