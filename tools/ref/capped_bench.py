#!/usr/bin/env python3
"""Decode and prefill speed under a real memory cap: our engine with --mem-budget and llama.cpp with its
defaults, each in a cgroup v1 memory group (which counts the page cache) after the page cache is dropped, plus
our uncapped run for the ratio. Needs root and cgroup v1's memory controller (/sys/fs/cgroup/memory).

    sudo /work/ref/REF/bin/python tools/ref/capped_bench.py MODEL.gguf --cap 1G [-t 2] [--prompt 128] [--gen 64]
        [--budget 1G] [--policy lru|freq] [--no-llama] [--json]

The workload is `smallthinker bench`'s (tools/ref/llama_speed.py runs the same one on llama.cpp). A run that the
kernel's OOM killer stops is reported as "oom-killed", and one still going after --llama-timeout seconds as
"thrashing", each with the group's peak usage, OOM kills, limit hits, major faults and the last progress line. Prints a table, or with
--json one JSON line per run.
"""
import argparse, json, os, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CG = "/sys/fs/cgroup/memory"


def size(s):
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    s = s.strip().lower().rstrip("ib").rstrip("b")
    if s and s[-1] in units:
        return int(float(s[:-1]) * units[s[-1]])
    return int(s)


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def read(path):
    with open(path) as f:
        return f.read().strip()


def group_stat(name):
    """The group's OOM kills, limit hits and major page faults (memory.oom_control, failcnt, memory.stat)."""
    kills = next((int(l.split()[1]) for l in read(f"{name}/memory.oom_control").splitlines()
                  if l.startswith("oom_kill ")), 0)
    stat = dict(l.split() for l in read(f"{name}/memory.stat").splitlines())
    return {"oom_kills": kills, "limit_hits": int(read(f"{name}/memory.failcnt")),
            "major_faults": int(stat.get("total_pgmajfault", stat.get("pgmajfault", 0)))}


def run_capped(cmd, cap, timeout=None):
    """Runs cmd inside a fresh memory cgroup limited to cap bytes; returns (json or None, status, peak bytes).
    A run still going after `timeout` seconds is killed and reported as thrashing, with the last progress
    line it printed on stderr, the group's page faults and how often it hit the limit."""
    name = f"{CG}/smallthinker-bench-{os.getpid()}-{time.monotonic_ns()}"
    os.mkdir(name)
    try:
        with open(f"{name}/memory.limit_in_bytes", "w") as f:
            f.write(str(cap))
        if os.path.exists(f"{name}/memory.memsw.limit_in_bytes"):
            with open(f"{name}/memory.memsw.limit_in_bytes", "w") as f:
                f.write(str(cap))
        drop_caches()
        # The shell joins the group, then becomes the benchmark: everything it maps or reads is charged there.
        wrapped = ["sh", "-c", f'echo $$ > {name}/cgroup.procs && exec "$@"', "sh"] + cmd
        t0 = time.monotonic()
        p = subprocess.Popen(wrapped, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        timed_out = False
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            p.kill()
            stdout, stderr = p.communicate()
        secs = time.monotonic() - t0
        peak = int(read(f"{name}/memory.max_usage_in_bytes"))
        g = group_stat(name)
        out = None
        for line in stdout.splitlines():
            if line.startswith("{"):
                out = json.loads(line)
        progress = [l for l in stderr.splitlines() if l.startswith("phase ")]
        reached = progress[-1] if progress else "no progress line"
        facts = (f"{secs:.0f} s, {g['oom_kills']} OOM kills, {g['limit_hits']} limit hits, "
                 f"{g['major_faults']} major faults, last: {reached}")
        if p.returncode == 0 and out is not None:
            status = "ok"
            # Evidence of memory pressure: faults back in from disk, and how often the group hit its limit.
            out["major_faults"] = g["major_faults"]
            out["limit_hits"] = g["limit_hits"]
        elif timed_out:
            status = f"thrashing: no result in {timeout} s, killed ({facts})"
        elif g["oom_kills"] > 0:
            status = f"oom-killed ({facts})"
        else:
            status = f"failed ({p.returncode}): {stderr.strip().splitlines()[-1:]} ({facts})"
        return out, status, peak
    finally:
        # The group can only be removed once empty; the benchmark has exited.
        for _ in range(50):
            try:
                os.rmdir(name)
                break
            except OSError:
                time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--cap", required=True, help="cgroup memory limit, e.g. 1G")
    ap.add_argument("--budget", help="our --mem-budget (default: the cap)")
    ap.add_argument("--policy", default="lru", choices=["lru", "freq"])
    ap.add_argument("--profile", help="our --expert-profile PROFILE.json")
    ap.add_argument("--ours-arg", action="append", default=[],
                    help="extra argument of our capped run, e.g. --ours-arg=--io-backend=pread (repeatable)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--no-llama", action="store_true", help="skip llama.cpp under the cap")
    ap.add_argument("--llama-timeout", type=float, default=600,
                    help="seconds after which llama.cpp under the cap is stopped and reported as thrashing")
    ap.add_argument("--no-uncapped", action="store_true", help="skip our uncapped run")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "smallthinker"))
    ap.add_argument("--python", default=sys.executable, help="python with llama_cpp")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0 or not os.path.isdir(CG):
        sys.exit(f"needs root and cgroup v1's memory controller at {CG}")
    if not os.path.exists(a.model):
        sys.exit(f"{a.model}: no such file")
    cap = size(a.cap)
    budget = a.budget or a.cap
    work = ["--prompt", str(a.prompt), "--gen", str(a.gen), "-t", str(a.threads)]
    ours = [a.bin, "bench", "-m", a.model, "--json"] + work
    capped = ours + ["--mem-budget", budget, "--cache-policy", a.policy]
    if a.profile:
        capped += ["--expert-profile", a.profile]
    capped += a.ours_arg
    runs = []
    if not a.no_uncapped:
        drop_caches()
        p = subprocess.run(ours, capture_output=True, text=True)
        line = next((json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")), None)
        runs.append(("ours uncapped", line, "ok" if p.returncode == 0 and line else f"failed: {p.stderr[-300:]}", None))
    r = run_capped(capped, cap)
    runs.append((f"ours --mem-budget {budget} ({a.policy}{''.join(' ' + x for x in a.ours_arg)})", *r))
    if not a.no_llama:
        llama = [a.python, os.path.join(ROOT, "tools", "ref", "llama_speed.py"), a.model] + work
        r = run_capped(llama, cap, a.llama_timeout)
        runs.append(("llama.cpp", *r))

    base = runs[0][1] if not a.no_uncapped and runs[0][1] else None
    for name, out, status, peak in runs:
        row = {"run": name, "cap_mb": cap >> 20 if peak is not None else None, "status": status,
               "cgroup_peak_mb": peak >> 20 if peak else None}
        if out:
            row.update({k: out.get(k) for k in ["prefill_tps", "decode_tps", "peak_rss_mb", "cache_hit_rate",
                                                "cache_read_mb_per_token", "io_wait_ms_per_token",
                                                "prefetch_coverage", "prefetch_hidden", "major_faults", "limit_hits"]})
            if base and out is not base:
                row["decode_vs_uncapped"] = out["decode_tps"] / base["decode_tps"]
        if a.json:
            print(json.dumps(row))
        else:
            fields = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in row.items() if k != "run" and v is not None)
            print(f"{name:40s} {fields}")


if __name__ == "__main__":
    main()
