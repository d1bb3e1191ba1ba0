#!/bin/bash
# The benchmark models of the memory-capped issue (expert cache), all Q4_0 "pure" (every matrix but the router in
# Q4_0, llama-quantize --pure), seed 0, written straight to GGUF (`synth --gguf-only`: no safetensors):
#   st4b-q4_0-pure.gguf         4B shape, the default random routers (a few experts per layer take most tokens)
#   st4b-skew-q4_0-pure.gguf    4B shape, --routing-skew 0.25 (8 hot experts of 32 per layer)
#   st21b-skew-q4_0-pure.gguf   21B shape (12.1 GB), --routing-skew 0.25 (16 hot of 64)
#   st21b-q4_0-pure.gguf        21B shape, default routers
#   st4b-token-q4_0-pure.gguf   4B shape, --token-routing (near-uniform routing)
#   st21b-token-q4_0-pure.gguf  21B shape, --token-routing
# Then the expert profiles of the 4B files and the skewed and near-uniform 21B files on ~2000 tokens of the KJV
# bible (apt-get install bible-kjv).
# Usage: tools/bench-models.sh [OUT_DIR=/work/bench] [NAME ...]   (NAMEs: a subset of the above, e.g. st4b-skew;
# about 45 GB of disk for all; 21B files ~6-13 min each on 2 cores)
set -euo pipefail
OUT=${1:-/work/bench}
B=${SMALLTHINKER:-$(dirname "$0")/../target/release/smallthinker}
shift || true
WANT=" $* "
wanted() { [ "$WANT" = "  " ] || [[ "$WANT" == *" $1 "* ]]; }
PROFILED="st4b st4b-skew st4b-token st21b-skew st21b-token"
profiles=false
for name in $PROFILED; do wanted "$name" && profiles=true; done
if $profiles && [ ! -s "$OUT/kjv.txt" ] && ! command -v bible > /dev/null; then
    echo "tools/bench-models.sh: the expert profiles read the KJV bible from \`bible\`: apt-get install bible-kjv" >&2
    exit 1
fi
mkdir -p "$OUT/synth"
gen() { # name shape flags...
    local name=$1 shape=$2
    shift 2
    wanted "$name" || return 0
    echo "== $name $(date -u +%T)"
    nice -n 10 "$B" synth "$OUT/synth/$name" --shape "$shape" --seed 0 "$@" \
        --gguf "$OUT/$name-q4_0-pure.gguf" --type q4_0-pure --gguf-only
}
gen st4b 4b
gen st4b-skew 4b --routing-skew 0.25
gen st21b-skew 21b --routing-skew 0.25
gen st21b 21b
gen st4b-token 4b --token-routing
gen st21b-token 21b --token-routing
if $profiles && [ ! -s "$OUT/kjv.txt" ]; then
    bible "gen1:1-rev22:21" > "$OUT/kjv.txt.tmp" && mv "$OUT/kjv.txt.tmp" "$OUT/kjv.txt"
fi
for name in $PROFILED; do
    wanted "$name" || continue
    nice -n 10 "$B" profile-experts -m "$OUT/$name-q4_0-pure.gguf" -f "$OUT/kjv.txt" -n 2000 -t 2 \
        -o "$OUT/$name.profile.json"
done
