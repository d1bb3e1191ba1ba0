#!/usr/bin/env bash
# Recreates vendor/ggml from the PyPI sdist llama-cpp-python==0.3.36 (llama.cpp 0c1e57098, ggml 0.25.3):
# the same ggml that the reference implementation is built from. Only the CPU backend sources are copied.
#
#   tools/vendor-ggml.sh            # downloads the sdist into ~/.cache/smallthinker-rs (or $SDIST_CACHE)
#
# Never add `--no-binary :all:` to the pip call: it makes pip compile cmake from source.
set -euo pipefail

VERSION=0.3.36
top=$(cd "$(dirname "$0")/.." && pwd)
cache=${SDIST_CACHE:-$HOME/.cache/smallthinker-rs}
tarball="$cache/llama_cpp_python-$VERSION.tar.gz"
mkdir -p "$cache"
if [ ! -f "$tarball" ]; then
    python3 -m pip download --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$cache"
fi
tree="$cache/llama_cpp_python-$VERSION"
[ -d "$tree" ] || tar -xzf "$tarball" -C "$cache"
src="$tree/vendor/llama.cpp"

# The CPU build's translation units and every header they include (from a `gcc -MM` scan over ggml-base,
# ggml and ggml-cpu as listed in ggml/src/CMakeLists.txt and ggml/src/ggml-cpu/CMakeLists.txt).
FILES="
include/ggml.h include/ggml-alloc.h include/ggml-backend.h include/ggml-cpu.h include/ggml-cpp.h
include/ggml-opt.h include/gguf.h
src/ggml.c src/ggml.cpp src/ggml-alloc.c src/ggml-backend.cpp src/ggml-backend-meta.cpp src/ggml-opt.cpp
src/ggml-threading.cpp src/ggml-threading.h src/ggml-quants.c src/ggml-quants.h src/gguf.cpp
src/ggml-backend-reg.cpp src/ggml-backend-dl.cpp src/ggml-backend-dl.h src/ggml-backend-impl.h
src/ggml-common.h src/ggml-impl.h src/ggml-feats.h src/ggml-version.h.in
src/ggml-cpu/ggml-cpu.c src/ggml-cpu/ggml-cpu.cpp src/ggml-cpu/quants.c src/ggml-cpu/quants.h
src/ggml-cpu/repack.cpp src/ggml-cpu/repack.h src/ggml-cpu/hbm.cpp src/ggml-cpu/hbm.h
src/ggml-cpu/traits.cpp src/ggml-cpu/traits.h
src/ggml-cpu/binary-ops.cpp src/ggml-cpu/binary-ops.h src/ggml-cpu/unary-ops.cpp src/ggml-cpu/unary-ops.h
src/ggml-cpu/vec.cpp src/ggml-cpu/vec.h src/ggml-cpu/ops.cpp src/ggml-cpu/ops.h
src/ggml-cpu/common.h src/ggml-cpu/ggml-cpu-impl.h src/ggml-cpu/simd-mappings.h src/ggml-cpu/simd-gemm.h
src/ggml-cpu/arch-fallback.h
src/ggml-cpu/amx/amx.cpp src/ggml-cpu/amx/amx.h src/ggml-cpu/amx/common.h src/ggml-cpu/amx/mmq.cpp
src/ggml-cpu/amx/mmq.h
src/ggml-cpu/tiled/tiled.cpp src/ggml-cpu/tiled/tiled.h src/ggml-cpu/tiled/tiled-kernel.cpp
src/ggml-cpu/tiled/tiled-kernel.h
src/ggml-cpu/arch/x86/quants.c src/ggml-cpu/arch/x86/repack.cpp
src/ggml-cpu/arch/arm/quants.c src/ggml-cpu/arch/arm/repack.cpp
src/ggml-cpu/llamafile/sgemm.cpp src/ggml-cpu/llamafile/sgemm.h
"

dst="$top/vendor/ggml"
rm -rf "$dst"
mkdir -p "$dst"
for f in $FILES; do
    mkdir -p "$dst/$(dirname "$f")"
    cp "$src/ggml/$f" "$dst/$f"
done
cp "$src/LICENSE" "$dst/LICENSE"

commit=$(grep -o 'llama.cpp@[0-9a-f]*' "$tree/CHANGELOG.md" | head -1 || true)
ggml_version=$(sed -n 's/^set(GGML_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\))/\2/p' "$src/ggml/CMakeLists.txt" | paste -sd.)
{
    echo "# Vendored ggml"
    echo
    echo "Unmodified ggml sources (CPU backend only), MIT licence (LICENSE, copied from llama.cpp)."
    echo
    echo "- origin: PyPI sdist \`llama-cpp-python==$VERSION\`, folder \`vendor/llama.cpp/ggml\`"
    echo "- llama.cpp commit: 0c1e57098 ${commit:+($commit in the package CHANGELOG)}"
    echo "- ggml version: $ggml_version"
    echo "- files: $(echo $FILES | wc -w) sources and headers, plus LICENSE"
    echo
    echo "## How to update"
    echo "Change VERSION in \`tools/vendor-ggml.sh\`, run it, re-check the file list with a \`gcc -MM\` scan, update"
    echo "GGML_VERSION in build.rs, regenerate the bindings (\`tools/gen-bindings.sh\`) and run the tests."
    echo "Never edit these files by hand."
    echo
    echo "## Files"
    for f in $FILES; do echo "- $f"; done
} > "$dst/VENDORED.md"
echo "vendored $(echo $FILES | wc -w) files into $dst (ggml $ggml_version)"

# The Qwen2 vocabulary (SmallThinker's tokenizer) and llama.cpp's tokenizer test vectors for it, from the same
# package: the synthetic checkpoints use it, and the tokenizer tests reproduce the vectors.
vocab="$top/vendor/qwen2-vocab"
rm -rf "$vocab"
mkdir -p "$vocab"
for f in ggml-vocab-qwen2.gguf ggml-vocab-qwen2.gguf.inp ggml-vocab-qwen2.gguf.out; do
    cp "$src/models/$f" "$vocab/$f"
done
cp "$src/LICENSE" "$vocab/LICENSE"
{
    echo "# Vendored Qwen2 vocabulary"
    echo
    echo "From the PyPI sdist \`llama-cpp-python==$VERSION\`, folder \`vendor/llama.cpp/models/\` (MIT, LICENSE):"
    echo "\`ggml-vocab-qwen2.gguf\` (a vocab-only GGUF: 151,936 tokens, merges, ChatML template) and llama.cpp's"
    echo "tokenizer test vectors for it (\`.inp\`: inputs separated by \`\\n__ggml_vocab_test__\\n\`; \`.out\`: token ids)."
    echo "Recreated by \`tools/vendor-ggml.sh\`; never edited."
} > "$vocab/VENDORED.md"
echo "vendored the Qwen2 vocabulary into $vocab"
