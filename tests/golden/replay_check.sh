#!/bin/sh
# Runs moerun-replay on a golden folder and judges its output with the golden's own
# compare.py (numpy): replay_check.sh REPLAY GOLDEN_DIR OUT_FILE TIER [replay options...]
# Fails if any tensor is out of tolerance or any golden tensor is missing (--require-all).
set -eu
replay=$1 golden=$2 out=$3 tier=$4
shift 4
"$replay" --golden "$golden" --out "$out" "$@"
exec /usr/bin/python3 "$golden/../compare.py" "$golden" "$out" --tier "$tier" --require-all --quiet
