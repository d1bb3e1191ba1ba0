"""Concurrent greedy requests through `smallthinker serve --parallel 3`: each equals the same request alone.

usage: parallel_test.py SMALLTHINKER_BINARY MODEL.gguf
Starts its own server on a free loopback port and stops it at the end; exits non-zero on failure. Only the
standard library: raw HTTP, one thread per client.
"""
import http.client
import json
import subprocess
import sys
import threading

BIN, MODEL = sys.argv[1], sys.argv[2]
# Different lengths, so that the slots decode at different positions; the longest spans several n_batch chunks.
PROMPTS = ["In the beginning", "And the LORD said unto Moses, Go in unto Pharaoh, and tell him",
           " ".join(["and it came to pass"] * 12)]
N = 24


def health(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/health")
    data = json.loads(conn.getresponse().read())
    conn.close()
    return data


def completion(port, prompt):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/v1/completions", body=json.dumps(
        {"prompt": prompt, "max_tokens": N, "temperature": 0}), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = json.loads(r.read())
    conn.close()
    assert r.status == 200, data
    return data["choices"][0]["text"], data["usage"]["completion_tokens"]


args = [BIN, "serve", "-m", MODEL, "--port", "0", "--parallel", "3", "--ctx", "256", "--batch", "16", "-t", "1"]
proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
try:
    # Start-up log lines (the MoE path, ...) come first; the address line last.
    seen = []
    for _ in range(20):
        line = proc.stderr.readline()
        seen.append(line)
        if line.startswith("listening on http://") or not line:
            break
    assert line.startswith("listening on http://"), f"server did not start: {seen!r}"
    port = int(line.strip().rsplit(":", 1)[1])
    alone = [completion(port, p) for p in PROMPTS]
    assert all(n == N for _, n in alone), alone
    assert len({t for t, _ in alone}) == len(PROMPTS), alone
    h = health(port)
    assert h["decode_graphs"] == h["decode_tokens"], h  # one request at a time: one token per graph
    # Three rounds of all clients at once (a barrier starts them together).
    for _ in range(3):
        got = [None] * len(PROMPTS)
        start = threading.Barrier(len(PROMPTS))

        def client(i):
            start.wait()
            got[i] = completion(port, PROMPTS[i])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, (g, a) in enumerate(zip(got, alone)):
            assert g == a, (i, g, a)
    h2 = health(port)
    graphs, tokens = h2["decode_graphs"] - h["decode_graphs"], h2["decode_tokens"] - h["decode_tokens"]
    # Decode steps were shared: fewer graphs than tokens (all three at once would be a third).
    assert graphs < tokens, h2
    print(f"concurrent rounds: {tokens} tokens decoded in {graphs} graphs")
    assert proc.poll() is None, "the server exited"
    print("serve parallel test: ok")
finally:
    proc.terminate()
    proc.wait(timeout=10)
