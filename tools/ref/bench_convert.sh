#!/usr/bin/env bash
# Benchmark our converter against llama.cpp's convert_hf_to_gguf.py on one HF checkpoint (issue 3):
# wall time and peak RSS of each, measured with /usr/bin/time -v, one run after the other, cold page cache.
#
# Usage: tools/ref/bench_convert.sh HF_DIR [TYPE...]      (TYPE: f32 f16 bf16 q8_0 q4_0; default: bf16 q8_0)
# Environment (all optional):
#   LLAMA_CPP   llama.cpp tree with convert_hf_to_gguf.py and gguf-py
#               (default: /work/ref/SDIST/llama_cpp_python-0.3.36/vendor/llama.cpp)
#   REF_PY      python with torch, transformers, llama_cpp (default: /work/ref/REF/bin/python)
#   BENCH_DIR   where the temporary outputs go (default: /work/bench); each pair is deleted after it ran
#   CMP=1       also `cmp` the two outputs of each pair (reads both files again: slow on big checkpoints)
#   THREADS     our --threads (default 0 = all cores)
# q4_0: llama.cpp has no direct q4_0 output, so its side is convert to bf16 + llama_model_quantize (all cores),
# and its wall time is the sum of both steps, its peak RSS the larger of the two.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
HF_DIR=$(realpath "$1")
shift
TYPES=("$@")
[[ ${#TYPES[@]} -eq 0 ]] && TYPES=(bf16 q8_0)

LLAMA_CPP=${LLAMA_CPP:-/work/ref/SDIST/llama_cpp_python-0.3.36/vendor/llama.cpp}
REF_PY=${REF_PY:-/work/ref/REF/bin/python}
BENCH_DIR=${BENCH_DIR:-/work/bench}
CMP=${CMP:-0}
THREADS=${THREADS:-0}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

if [[ ! -x /usr/bin/time ]]; then
    echo "error: /usr/bin/time (GNU time) is missing; install it with: apt-get install -y time" >&2
    exit 1
fi
[[ -f "$HF_DIR/config.json" ]] || { echo "error: $HF_DIR has no config.json" >&2; exit 1; }
[[ -f "$LLAMA_CPP/convert_hf_to_gguf.py" ]] || { echo "error: no convert_hf_to_gguf.py in $LLAMA_CPP" >&2; exit 1; }
[[ -x "$REF_PY" ]] || { echo "error: reference python $REF_PY not found" >&2; exit 1; }
for t in "${TYPES[@]}"; do
    case $t in f32|f16|bf16|q8_0|q4_0) ;; *) echo "error: unsupported type $t" >&2; exit 1 ;; esac
done

echo "== building smallthinker (cargo build --release)"
(cd "$ROOT" && cargo build --release --bin smallthinker)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/smallthinker

TMP=$(mktemp -d "$BENCH_DIR/bench_convert.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

if [[ $(id -u) -eq 0 ]]; then
    drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
else
    echo "note: not root, cannot drop the page cache; runs after the first may start warm" >&2
    drop_caches() { :; }
fi

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# wall seconds from GNU time's "Elapsed (wall clock) time (h:mm:ss or m:ss): ..." line
wall_of() {
    sed -n 's/.*Elapsed (wall clock) time.*: //p' "$1" |
        awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; printf "%.1f", s }'
}
# peak RSS in MB from "Maximum resident set size (kbytes): N"
rss_of() { sed -n 's/.*Maximum resident set size (kbytes): //p' "$1" | awk '{ printf "%.0f", $1 / 1024 }'; }

# timed LOGNAME CMD...: runs CMD cold under /usr/bin/time -v; its output goes to $TMP/LOGNAME.out
timed() {
    local name=$1
    shift
    drop_caches
    echo "   [$name] load before: $(loadavg)"
    if ! /usr/bin/time -v -o "$TMP/$name.time" "$@" > "$TMP/$name.out" 2>&1; then
        echo "error: $name failed; last output:" >&2
        tail -n 20 "$TMP/$name.out" >&2
        exit 1
    fi
    echo "   [$name] load after:  $(loadavg)   wall $(wall_of "$TMP/$name.time") s, peak RSS $(rss_of "$TMP/$name.time") MB"
}

# /usr/bin/time runs programs, not shell functions: the converter command line as an array
LLAMA_CONVERT=(env PYTHONPATH="$LLAMA_CPP/gguf-py" "$REF_PY" "$LLAMA_CPP/convert_hf_to_gguf.py" "$HF_DIR")

QUANT_PY='import os, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
p.nthread = os.cpu_count() or 1
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))'

ROWS=()
echo "== $HF_DIR ($(du -sh "$HF_DIR" | cut -f1)), $(nproc) cores, load at start: $(loadavg)"
for t in "${TYPES[@]}"; do
    echo "== $t"
    ref_out=$TMP/llama-$t.gguf
    our_out=$TMP/ours-$t.gguf
    if [[ $t == q4_0 ]]; then
        timed llama-$t-convert "${LLAMA_CONVERT[@]}" --outtype bf16 --outfile "$TMP/llama-bf16-for-q4.gguf"
        timed llama-$t-quantize "$REF_PY" -c "$QUANT_PY" "$TMP/llama-bf16-for-q4.gguf" "$ref_out"
        rm -f "$TMP/llama-bf16-for-q4.gguf"
        ref_wall=$(awk -v a="$(wall_of "$TMP/llama-$t-convert.time")" -v b="$(wall_of "$TMP/llama-$t-quantize.time")" \
            'BEGIN { printf "%.1f", a + b }')
        ref_rss=$(awk -v a="$(rss_of "$TMP/llama-$t-convert.time")" -v b="$(rss_of "$TMP/llama-$t-quantize.time")" \
            'BEGIN { print (a > b ? a : b) }')
        ref_tool="llama.cpp (bf16+quantize)"
    else
        timed llama-$t "${LLAMA_CONVERT[@]}" --outtype "$t" --outfile "$ref_out"
        ref_wall=$(wall_of "$TMP/llama-$t.time")
        ref_rss=$(rss_of "$TMP/llama-$t.time")
        ref_tool="llama.cpp"
    fi
    timed ours-$t "$BIN" convert "$HF_DIR" -o "$our_out" --type "$t" --threads "$THREADS" --quiet
    our_wall=$(wall_of "$TMP/ours-$t.time")
    our_rss=$(rss_of "$TMP/ours-$t.time")
    ratio=$(awk -v a="$our_wall" -v b="$ref_wall" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    ref_size=$(stat -c %s "$ref_out")
    our_size=$(stat -c %s "$our_out")
    same="not compared"
    if [[ $CMP == 1 ]]; then
        if cmp -s "$ref_out" "$our_out"; then same="identical"; else same="DIFFER ($(cmp "$ref_out" "$our_out" 2>&1 | head -n 1))"; fi
    elif [[ $ref_size == "$our_size" ]]; then
        same="same size"
    else
        same="sizes differ"
    fi
    ROWS+=("$(printf '%-6s %-26s %8s %8s %7s %14s' "$t" "$ref_tool" "$ref_wall" "$ref_rss" "" "$ref_size")")
    ROWS+=("$(printf '%-6s %-26s %8s %8s %7s %14s  %s' "$t" "ours" "$our_wall" "$our_rss" "$ratio" "$our_size" "$same")")
    rm -f "$ref_out" "$our_out"
done

echo "== load at end: $(loadavg)"
echo
printf '%-6s %-26s %8s %8s %7s %14s  %s\n' type tool "wall s" "RSS MB" ours/ref "bytes" output
for r in "${ROWS[@]}"; do echo "$r"; done
