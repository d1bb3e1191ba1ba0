#!/usr/bin/env bash
# Regenerates the committed ggml bindings (src/ggml/sys.rs) from vendor/ggml/include, or with --check fails when
# they are out of date. Needs libclang: apt-get install -y libclang1-14 libclang-common-14-dev
set -euo pipefail
cd "$(dirname "$0")/.."
export LIBCLANG_PATH=${LIBCLANG_PATH:-/usr/lib/llvm-14/lib}
cargo run --quiet --release --manifest-path tools/gen-bindings/Cargo.toml --target-dir target/gen-bindings -- "$@"
