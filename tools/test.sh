#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what the cross-checks need, checks the committed ggml bindings
# against the vendored headers, builds once (release) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# gguf-py 0.19 is the reference GGUF reader/writer and quantizer the tests compare against; the official openai
# client drives `smallthinker serve` in tests/serve.rs.
py=target/pyenv
[ -x "$py/bin/python" ] || python3 -m venv "$py"
"$py/bin/python" -c 'import gguf, numpy, openai' 2>/dev/null || "$py/bin/pip" install --quiet gguf==0.19.0 numpy openai==3.51.0
export SMALLTHINKER_PYTHON="$PWD/$py/bin/python"

# The bindings check needs libclang (bindgen loads it at run time).
if [ ! -e /usr/lib/llvm-14/lib/libclang.so.1 ] || [ ! -d /usr/lib/llvm-14/lib/clang ]; then
    apt-get update -qq && apt-get install -y -qq libclang1-14 libclang-common-14-dev >/dev/null
fi
tools/gen-bindings.sh --check

cargo test --release
