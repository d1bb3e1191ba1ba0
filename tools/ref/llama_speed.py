#!/usr/bin/env python3
"""Prefill and decode speed of llama.cpp (llama-cpp-python 0.3.36) on a GGUF, with the workload our engine uses:
prompt token ids 1000, 1001, ..., 1000+N-1, then --gen decode steps feeding fixed token ids.

    /work/ref/REF/bin/python tools/ref/llama_speed.py MODEL.gguf [--prompt 128] [--gen 64] [-t 2]

Prints one JSON line: prefill_tps, decode_tps, peak_rss_mb.
"""
import argparse, json, resource, time

import llama_cpp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("-t", "--threads", type=int, default=2)
    a = ap.parse_args()
    m = llama_cpp.Llama(model_path=a.model, n_ctx=a.prompt + a.gen + 16, n_threads=a.threads, n_batch=512,
                        logits_all=False, verbose=False)
    m.eval([1000, 1001, 1002, 1003])  # warm-up
    m.reset()
    prompt = [1000 + i for i in range(a.prompt)]
    t0 = time.perf_counter()
    m.eval(prompt)
    t1 = time.perf_counter()
    for i in range(a.gen):
        m.eval([2000 + i])
    t2 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"engine": "llama.cpp", "prefill_tps": a.prompt / (t1 - t0), "decode_tps": a.gen / (t2 - t1),
                      "peak_rss_mb": round(rss), "threads": a.threads}))


if __name__ == "__main__":
    main()
