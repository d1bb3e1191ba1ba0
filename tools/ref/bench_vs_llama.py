#!/usr/bin/env python3
"""Our engine against llama.cpp on the same GGUF, threads and workload, alternating, each run in its own process.

    /work/ref/REF/bin/python tools/ref/bench_vs_llama.py MODEL.gguf [-t 2] [--prompt 128] [--gen 64] [--depth 0]
        [--rounds 3] [--bin target/release/smallthinker] [--json]

Each round runs tools/ref/llama_speed.py (llama-cpp-python) and then `smallthinker bench --json` with the same
flags; the workload is the one both document (prompt ids 1000.., decode ids 2000.., depth ids 3000..). It prints
every run's JSON line to stderr, then a table of the medians over the rounds and the ratios ours / llama.cpp for
prefill tok/s, decode tok/s and peak RSS (MiB), with each engine's lowest and highest speed over the rounds (a
wide range means the machine was noisy: read the ratio with it), and the ratio of each round's two runs, which
ran back to back (so a machine that drifts between rounds moves both: their median is the steadier figure). For speed a ratio above 1 means we are faster;
for RSS below 1 means we use less. The decode roofline row is each engine's decode tok/s x the weight bytes a
decode step reads (`weight_mb_per_token` of our bench) over the read bandwidth `smallthinker bench
--read-bandwidth` measures in the same run. --json prints the summary as one JSON line instead of the table.

The machine may be shared: alternating rounds spread background load over both engines, and the medians damp
outliers, but figures from a busy machine remain noisy. Run with the page cache warm (a first pass of either engine
reads the file); round 1 includes that cost for whichever engine comes first, so use --rounds >= 3.
"""
import argparse, json, os, statistics, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIELDS = [("prefill_tps", "prefill tok/s"), ("decode_tps", "decode tok/s"), ("peak_rss_mb", "peak RSS MiB")]


def run_json(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if len(lines) != 1:
        sys.exit(f"{' '.join(cmd)}: expected one JSON line, got:\n{out.stdout}")
    print(lines[0], file=sys.stderr)
    return json.loads(lines[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--depth", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "smallthinker"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error("--rounds must be >= 1")
    work = ["--prompt", str(a.prompt), "--gen", str(a.gen), "--depth", str(a.depth), "-t", str(a.threads)]
    llama_cmd = [sys.executable, os.path.join(HERE, "llama_speed.py"), a.model] + work
    ours_cmd = [a.bin, "bench", "-m", a.model, "--json"] + work
    runs = {"llama.cpp": [], "smallthinker": []}
    for _ in range(a.rounds):
        runs["llama.cpp"].append(run_json(llama_cmd))
        runs["smallthinker"].append(run_json(ours_cmd))
    med = {e: {k: statistics.median(r[k] for r in rs) for k, _ in FIELDS} for e, rs in runs.items()}
    spread = {e: {k: (min(r[k] for r in rs), max(r[k] for r in rs)) for k, _ in FIELDS} for e, rs in runs.items()}
    ratio = {k: med["smallthinker"][k] / med["llama.cpp"][k] for k, _ in FIELDS}
    paired = {k: [o[k] / l[k] for l, o in zip(runs["llama.cpp"], runs["smallthinker"])] for k, _ in FIELDS}
    # Roofline: weight bytes a decode step reads (whole expert matrices) x decode tok/s over the read bandwidth
    # measured now, with the same threads; llama.cpp reads the same matrices per token.
    gbps = run_json([a.bin, "bench", "--read-bandwidth", "-t", str(a.threads), "--json"])["read_gbps"]
    weight_mb = runs["smallthinker"][0]["weight_mb_per_token"]
    roof = {e: weight_mb * 1e6 * med[e]["decode_tps"] / (gbps * 1e9) for e in runs}
    if a.json:
        print(json.dumps({"model": a.model, "threads": a.threads, "prompt": a.prompt, "gen": a.gen,
                          "depth": a.depth, "rounds": a.rounds, "median": med, "range": spread, "ratio": ratio,
                          "round_ratios": paired, "read_gbps": gbps, "weight_mb_per_token": weight_mb,
                          "roofline": roof}))
        return
    print(f"{os.path.basename(a.model)}: -t {a.threads}, prompt {a.prompt}, gen {a.gen}, depth {a.depth}, "
          f"medians of {a.rounds} alternating rounds")
    print(f"{'':16}{'llama.cpp':>12}{'ours':>12}{'ours/llama':>12}")
    for k, label in FIELDS:
        print(f"{label:16}{med['llama.cpp'][k]:12.2f}{med['smallthinker'][k]:12.2f}{ratio[k]:12.3f}")
    if a.rounds > 1:
        for k, label in FIELDS[:2]:
            lo_hi = [f"{spread[e][k][0]:.1f}-{spread[e][k][1]:.1f}" for e in ("llama.cpp", "smallthinker")]
            print(f"{'  min-max':16}{lo_hi[0]:>12}{lo_hi[1]:>12}   ({label})")
        for k, label in FIELDS[:2]:
            each = " ".join(f"{r:.3f}" for r in paired[k])
            print(f"{'  per round':16}{'':12}{'':12}{statistics.median(paired[k]):12.3f}   ({label}: {each})")
    print(f"{'decode roofline':16}{roof['llama.cpp']:12.3f}{roof['smallthinker']:12.3f}"
          f"   ({weight_mb:.0f} MB of weights per token, read bandwidth {gbps:.1f} GB/s)")


if __name__ == "__main__":
    main()
