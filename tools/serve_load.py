#!/usr/bin/env python3
"""Throughput, latency, prompt-cache and load figures for `smallthinker serve` on loopback (stdlib only).

usage: tools/serve_load.py BINARY MODEL.gguf [--parallel 4] [--requests 300] [--concurrency 8] [--max-tokens 16]
                           [--clients 1,2,4,8] [--throughput-only] [--multiturn-only] [--serve-arg=... ...]
Starts the server on a free port, then: (1) aggregate tokens/s and p50/p99 latency at 1, 2, 4, 8 clients;
(2) the prompt-evaluation time of a multi-turn chat with and without the slot's cached prefix; (3) a bounded load
test (mixed streaming and not) that must have zero failures, and the server's RSS at idle before and after.
"""
import sys, argparse
import http.client
import json
import statistics
import subprocess
import threading
import time

ap = argparse.ArgumentParser()
ap.add_argument("binary")
ap.add_argument("model")
ap.add_argument("--parallel", type=int, default=4)
ap.add_argument("--requests", type=int, default=300)
ap.add_argument("--concurrency", type=int, default=8)
ap.add_argument("--max-tokens", type=int, default=16)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--clients", default="1,2,4,8", help="client counts of the throughput table")
ap.add_argument("--throughput-only", action="store_true", help="only the throughput table")
ap.add_argument("--multiturn-only", action="store_true", help="only the multi-turn prompt-cache table")
ap.add_argument("--serve-arg", action="append", default=[], help="extra server argument (repeatable)")
args = ap.parse_args()

proc = subprocess.Popen([args.binary, "serve", "-m", args.model, "--port", "0", "--parallel", str(args.parallel),
                         "--ctx", "1024", "-t", str(args.threads), "--queue", "256", *args.serve_arg], stderr=subprocess.PIPE, text=True)
# Start-up log lines (the MoE path, ...) come first, the address line last.
for _ in range(20):
    line = proc.stderr.readline()
    if line.startswith("listening on http://") or not line:
        break
if not line.startswith("listening on http://"):
    proc.kill()
    sys.exit(f"server did not start: {line!r}")
HOST, PORT = line.strip().removeprefix("listening on http://").rsplit(":", 1)
PORT = int(PORT)


def rss_kib():
    for l in open(f"/proc/{proc.pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1])


def post(path, body, stream=False):
    """Returns (status, completion tokens, seconds, response json or None)."""
    t0 = time.time()
    conn = http.client.HTTPConnection(HOST, PORT, timeout=300)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        r.read()
        conn.close()
        return r.status, 0, time.time() - t0, None
    if not stream:
        j = json.loads(r.read())
        conn.close()
        return 200, j["usage"]["completion_tokens"], time.time() - t0, j
    n, done, buf = 0, False, b""
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            data = ev.decode().removeprefix("data: ").strip()
            if data == "[DONE]":
                done = True
            elif data:
                j = json.loads(data)
                if "error" in j:
                    return 500, n, time.time() - t0, None
                if j["choices"] and j["choices"][0].get("finish_reason") is None:
                    n += 1
    conn.close()
    return (200 if done else 599), n, time.time() - t0, None


PROMPTS = ["The quick brown fox", "Once upon a time", "In a small village", "The answer is", "Hello world"]


def run_clients(n_clients, n_requests, stream_mix):
    results, lock, counter = [], threading.Lock(), [0]

    def worker():
        while True:
            with lock:
                i = counter[0]
                counter[0] += 1
            if i >= n_requests:
                return
            stream = stream_mix and i % 2 == 1
            body = {"prompt": PROMPTS[i % len(PROMPTS)] + f" {i}", "max_tokens": args.max_tokens,
                    "temperature": 0.8, "seed": i, "stream": stream}
            try:
                res = post("/v1/completions", body, stream)
            except Exception as e:  # a failed request is counted, not raised
                res = (0, 0, 0.0, str(e))
            with lock:
                results.append(res)

    t0 = time.time()
    ts = [threading.Thread(target=worker) for _ in range(n_clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.time() - t0
    ok = [r for r in results if r[0] == 200]
    lat = sorted(r[2] for r in ok)
    toks = sum(r[1] for r in ok)
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
    return {"requests": len(results), "failed": len(results) - len(ok), "tokens": toks, "wall_s": wall,
            "tok_per_s": toks / wall, "p50_s": p(0.5), "p99_s": p(0.99)}


def decode_counts():
    conn = http.client.HTTPConnection(HOST, PORT, timeout=30)
    conn.request("GET", "/health")
    h = json.loads(conn.getresponse().read())
    conn.close()
    return h.get("decode_graphs", 0), h.get("decode_tokens", 0)


try:
    post("/v1/completions", {"prompt": "warm up", "max_tokens": 4})
    print(f"model {args.model}, --parallel {args.parallel}, -t {args.threads}, max_tokens {args.max_tokens}"
          f" {' '.join(args.serve_arg)}")
    print("clients  requests  tokens/s  p50 latency  p99 latency  decode tokens/graph")
    for c in [] if args.multiturn_only else map(int, args.clients.split(",")):
        g0, t0 = decode_counts()
        r = run_clients(c, max(8, 4 * c), False)
        g1, t1 = decode_counts()
        per_graph = (t1 - t0) / max(1, g1 - g0)
        print(f"{c:7d}  {r['requests']:8d}  {r['tok_per_s']:8.1f}  {r['p50_s']:9.2f} s  {r['p99_s']:9.2f} s"
              f"  {per_graph:19.2f}  (failed {r['failed']})")
    if args.throughput_only:
        raise SystemExit(0)

    # Multi-turn chat: each turn's prompt extends the previous turn's cache; compare with the same prompt cold.
    msgs, warm, cold = [], [], []
    for turn in range(4):
        msgs.append({"role": "user", "content": f"Tell me more about topic {turn}, " + "please " * 20})
        _, _, _, j = post("/v1/chat/completions", {"messages": msgs, "max_tokens": 16, "temperature": 0})
        warm.append((j["timings"]["prompt_ms"], j["usage"]["prompt_tokens"], j["timings"]["cache_n"]))
        msgs.append({"role": "assistant", "content": j["choices"][0]["message"]["content"]})
    # Cold: the same prompts with a different first word, so that no slot shares more than the chat template's
    # first tokens with them (the server reuses any common prefix).
    for turn in range(4):
        first = dict(msgs[0], content=f"Cold {turn}. " + msgs[0]["content"])
        _, _, _, j = post("/v1/chat/completions", {"messages": [first] + msgs[1:2 * turn + 1], "max_tokens": 1,
                                                   "temperature": 0})
        cold.append((j["timings"]["prompt_ms"], j["timings"]["cache_n"]))
    print("turn  prompt tokens  cached  prompt ms (cache)  prompt ms (cold, cached)  speed-up")
    for t, ((ms, n, cache_n), (cms, ccache)) in enumerate(zip(warm, cold)):
        print(f"{t + 1:4d}  {n:13d}  {cache_n:6d}  {ms:17.1f}  {cms:16.1f} ({ccache:3d})  {cms / max(ms, 1e-3):7.2f}x")
    if args.multiturn_only:
        raise SystemExit(0)

    time.sleep(0.5)
    idle = rss_kib()
    r = run_clients(args.concurrency, args.requests, True)
    time.sleep(1.0)
    after = rss_kib()
    print(f"load: {r['requests']} requests, {args.concurrency} concurrent, half streaming: failed {r['failed']}, "
          f"{r['tokens']} tokens in {r['wall_s']:.1f} s = {r['tok_per_s']:.1f} tokens/s, "
          f"p50 {r['p50_s']:.2f} s, p99 {r['p99_s']:.2f} s; RSS idle {idle} KiB before, {after} KiB after")
    assert r["failed"] == 0, "failed requests"
    assert proc.poll() is None, "the server exited"
finally:
    proc.terminate()
    proc.wait(timeout=10)
