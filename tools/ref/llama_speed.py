#!/usr/bin/env python3
"""Prefill and decode speed of llama.cpp (llama-cpp-python 0.3.36) on a GGUF, with the workload of
`smallthinker bench` (tools/smallthinker/bench.rs), step for step:

1. warm-up: tokens 1000..1003 evaluated, then the cache cleared;
2. --depth D: D tokens (ids 3000, 3001, ...) evaluated in batches of 512, untimed;
3. prefill, timed: prompt token ids 1000, 1001, ..., 1000+N-1;
4. decode, timed: --gen single-token steps feeding 2000, 2001, ...

Ids wrap modulo the vocabulary, as ours do.

    /work/ref/REF/bin/python tools/ref/llama_speed.py MODEL.gguf [--prompt 128] [--gen 64] [--depth 0] [-t 2]

Prints one JSON line: engine, prefill_tps, decode_tps, peak_rss_mb, threads, prompt, gen, depth.
"""
import argparse, json, resource, sys, time

import llama_cpp


def ids(base, n, n_vocab):
    return [(base + i) % n_vocab for i in range(n)]


def phase(name, t_start):
    """Progress on stderr, so that a run stopped from outside (a memory cap, a timeout) shows how far it got."""
    print(f"phase {name} at {time.perf_counter() - t_start:.1f} s", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--depth", type=int, default=0)
    ap.add_argument("-t", "--threads", type=int, default=2)
    a = ap.parse_args()
    if a.prompt < 1 or a.gen < 1 or a.depth < 0 or a.threads < 1:
        ap.error("--prompt and --gen must be >= 1, --depth >= 0, --threads >= 1")
    start = time.perf_counter()
    m = llama_cpp.Llama(model_path=a.model, n_ctx=a.depth + a.prompt + a.gen + 16, n_threads=a.threads,
                        n_batch=512, logits_all=False, verbose=False)
    phase("loaded", start)
    n_vocab = m.n_vocab()
    m.eval(ids(1000, 4, n_vocab))  # warm-up
    m.reset()
    if a.depth:
        m.eval(ids(3000, a.depth, n_vocab))  # Llama.eval splits into n_batch chunks
    prompt = ids(1000, a.prompt, n_vocab)
    t0 = time.perf_counter()
    m.eval(prompt)
    t1 = time.perf_counter()
    phase("prefilled", start)
    for t in ids(2000, a.gen, n_vocab):
        m.eval([t])
    t2 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"engine": "llama.cpp", "prefill_tps": a.prompt / (t1 - t0), "decode_tps": a.gen / (t2 - t1),
                      "peak_rss_mb": round(rss), "threads": a.threads, "prompt": a.prompt, "gen": a.gen,
                      "depth": a.depth}))


if __name__ == "__main__":
    main()
