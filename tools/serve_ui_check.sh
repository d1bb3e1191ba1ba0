#!/usr/bin/env bash
# Checks the chat page of `smallthinker serve` in headless Chromium (Debian's `chromium` package): starts a
# server on a free port, loads /?q=... (the page sends that message on load and streams the answer), checks in
# the DOM that an answer arrived, and writes a screenshot.
# usage: tools/serve_ui_check.sh [MODEL.gguf] [OUT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-tests/fixtures/model/st4b/f32.gguf}
out=${2:-target/serve_ui.png}
command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
bin=target/release/smallthinker
[ -x "$bin" ] || cargo build --release
log=$(mktemp)
"$bin" serve -m "$model" --port 0 --ctx 512 -t 1 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q '^listening on' "$log" && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$log" | head -1)
[ -n "$url" ] || { cat "$log"; exit 1; }
page="$url/?q=Hello%2C%20who%20are%20you%3F"
flags=(--headless --no-sandbox --disable-gpu --window-size=900,600 --virtual-time-budget=20000)
dom=$(chromium "${flags[@]}" --dump-dom "$page" 2>/dev/null)
chromium "${flags[@]}" --screenshot="$out" "$page" 2>/dev/null
# The answer bubble must hold streamed text.
answer=$(printf '%s' "$dom" | python3 -c '
import re, sys
m = re.search(r"<div class=\"assistant\"( data-done=\"true\")?>(.+?)</div>", sys.stdin.read(), re.S)
print(f"{len(m.group(2))} characters, finished: {bool(m.group(1))}" if m else "")')
[ -n "$answer" ] || { echo "no answer in the page:"; printf '%s\n' "$dom" | grep -A3 'id="log"'; exit 1; }
echo "answer: $answer"
echo "screenshot: $out"
