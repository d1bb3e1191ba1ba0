#!/usr/bin/env python3
"""Regenerate tests/fixtures/model/: tiny SmallThinker GGUFs and llama.cpp's logits on them.

Usage: llama_fixtures.py [OUT_DIR [CONFIG...]]   (default tests/fixtures/model, every config)

Needs the reference environment (llama-cpp-python 0.3.36, gguf 0.19, numpy), e.g. /work/ref/REF/bin/python.
For every config in make_tiny_gguf.CONFIGS it writes into OUT_DIR/<config>/:
  f32.gguf, q8_0.gguf, q4_0.gguf   the F32 file from make_tiny_gguf.py and llama.cpp's quantizations of it
                                   (llama_model_quantize with default params, i.e. what llama-quantize does)
  <model>.<sequence>.bin           llama.cpp's logits, little-endian f32, row-major [n_rows][n_vocab]
  manifest.json                    config, token sequences, which rows each .bin holds, sha256 of every GGUF,
                                   the tensor types of each GGUF, greedy continuations, what llama.cpp printed
llama.cpp runs with the parity settings of docs/reference-setup.md: n_threads=2, F32 KV cache (type_k=type_v=0),
flash attention off, logits for every position.
"""
import contextlib
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import gguf
import llama_cpp
from llama_cpp import Llama

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_gguf  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
N_VOCAB = 1024
GREEDY_PROMPT_LEN = 8
GREEDY_TOKENS = 64
LONG_LEN = 4200  # > 4096, so the SWA layers of st21b mask the oldest keys for the last rows
QUANTS = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}


@contextlib.contextmanager
def captured_stderr(sink):
    """Collect what llama.cpp prints on fd 2 (load messages such as the SWA cache notice)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode(errors="replace"))


def load(path, n_ctx, log):
    with captured_stderr(log):
        return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=2, n_batch=512, logits_all=True,
                     type_k=0, type_v=0, flash_attn=False, verbose=True, seed=0)


def logits_for(path, tokens, log):
    m = load(path, max(512, len(tokens) + 16), log)
    with captured_stderr(log):
        m.eval(tokens)
    out = np.array(m.scores[: len(tokens)], dtype=np.float32)
    assert out.shape == (len(tokens), N_VOCAB), out.shape
    m.close()
    return out


def greedy(path, prompt, log):
    """Incremental decode through llama.cpp's KV cache; the margin is top1 - top2 of each step's logits."""
    m = load(path, 512, log)
    with captured_stderr(log):
        m.eval(prompt)
        toks, margins = [], []
        for _ in range(GREEDY_TOKENS):
            row = np.array(m.scores[m.n_tokens - 1], dtype=np.float32)
            order = np.argsort(-row, kind="stable")
            toks.append(int(order[0]))
            margins.append(float(row[order[0]] - row[order[1]]))
            m.eval([toks[-1]])
    m.close()
    return toks, margins


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tensor_types(path):
    r = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in r.tensors}


def sequences(name, c):
    rng = np.random.default_rng(1000 + c["seed"])
    seqs = {
        "a": [int(x) for x in rng.integers(0, N_VOCAB, 12)],
        "b": [int(x) for x in rng.integers(0, N_VOCAB, 24)],
    }
    if c["clamp_tokens"]:
        # the clamp tokens at several positions, including the first
        seqs["a"][0] = c["clamp_tokens"][0]
        seqs["a"][5] = c["clamp_tokens"][1]
        seqs["b"][3] = c["clamp_tokens"][0]
    if c["sliding_window"] is not None:
        # 128 copies of one token first: their values add up coherently, so the keys that fall out of the
        # window at the last rows change the attention output clearly (random tokens would mostly cancel).
        seqs["long"] = [17] * 128 + [int(x) for x in rng.integers(0, N_VOCAB, LONG_LEN - 128)]
    return seqs


def saved_rows(seq_name, n):
    if seq_name == "long":
        # around the first masked key (query 4096 no longer sees key 0) and the last rows
        return list(range(4094, 4100)) + list(range(n - 6, n))
    return list(range(n))


def build(name, c, out_dir):
    d = out_dir / name
    log = []
    make_tiny_gguf.write(name, c, out_dir)
    models = {"f32": d / "f32.gguf"}
    for q, ftype in QUANTS.items():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = 2
        with captured_stderr(log):
            rc = llama_cpp.llama_model_quantize(str(models["f32"]).encode(), str(d / f"{q}.gguf").encode(),
                                                params)
        assert rc == 0, f"llama_model_quantize {q} failed: {rc}"
        models[q] = d / f"{q}.gguf"

    seqs = sequences(name, c)
    logits = []
    for mname, path in models.items():
        for sname, toks in seqs.items():
            if mname != "f32" and sname == "a":
                continue  # quantized models: one short sequence (and the long one) keeps the folder small
            out = logits_for(path, toks, log)
            rows = saved_rows(sname, len(toks))
            fname = f"{mname}.{sname}.bin"
            out[rows].astype("<f4").tofile(d / fname)
            logits.append({"model": mname, "sequence": sname, "file": fname, "rows": rows,
                           "shape": [len(rows), N_VOCAB]})

    prompt = seqs["b"][:GREEDY_PROMPT_LEN]
    greedies = []
    for mname, path in models.items():
        toks, margins = greedy(path, prompt, log)
        greedies.append({"model": mname, "prompt": prompt, "tokens": toks, "margins": margins})

    text = "".join(log)
    notes = sorted({line.strip() for line in text.splitlines()
                    if any(s in line.lower() for s in ("swa", "fallback", "warn", "error", "cannot"))})
    manifest = {
        "generator": "tools/ref/llama_fixtures.py (tiny GGUFs from tools/ref/make_tiny_gguf.py)",
        "llama_cpp_python": llama_cpp.__version__,
        "settings": {"n_threads": 2, "type_k": "f32", "type_v": "f32", "flash_attn": False, "logits_all": True},
        "config": {k: v for k, v in c.items()},
        "n_vocab": N_VOCAB,
        "models": {m: {"file": p.name, "sha256": sha256(p), "bytes": p.stat().st_size,
                       "tensor_types": tensor_types(p)} for m, p in models.items()},
        "sequences": seqs,
        "logits": logits,
        "greedy": greedies,
        "llama_cpp_notes": notes,
    }
    (d / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return d


def main():
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests/fixtures/model"
    only = sys.argv[2:]
    for name, c in make_tiny_gguf.CONFIGS.items():
        if only and name not in only:
            continue
        d = build(name, c, out_dir)
        size = sum(f.stat().st_size for f in d.iterdir())
        print(f"{d}: {size} bytes")


if __name__ == "__main__":
    main()
