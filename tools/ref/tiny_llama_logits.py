#!/usr/bin/env python3
"""llama.cpp's logits for the tiny trained model: tests/fixtures/tiny/llama.logits.bin + llama.json.

Usage: tiny_llama_logits.py F32_GGUF [FIXTURE_DIR]   (default tests/fixtures/tiny; F32_GGUF is the F32 GGUF of models/smallthinker-tiny made by our converter:
       cargo run --release -- convert models/smallthinker-tiny -o /tmp/tiny-f32.gguf --type f32)
Needs the reference environment (llama-cpp-python 0.3.36, numpy), e.g. /work/ref/REF/bin/python.

The prompt and its tokens are the ones tools/train_tiny/make_fixtures.py wrote to tests/fixtures/tiny/manifest.json
(run that first). The prompt is shorter than the model's 64-token window: llama.cpp hard-codes a 4096 window for
smallthinker, so beyond 64 tokens its SWA layers see keys ours (and PyTorch) mask. Parity settings as in
llama_fixtures.py: n_threads 2, F32 KV cache, flash attention off, logits for every position. Also records
llama.cpp's own tokenization of the prompt, which must equal the `tokenizers` library's.
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_fixtures  # noqa: E402  (load/captured_stderr with the parity settings)

ROOT = Path(__file__).resolve().parents[2]


def main():
    gguf_path = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "tests" / "fixtures" / "tiny"
    man = json.loads((out / "manifest.json").read_text())
    t = man["trained"]
    log = []
    m = llama_fixtures.load(gguf_path, 512, log)
    toks = m.tokenize(t["prompt"].encode(), add_bos=False, special=False)
    assert toks == t["tokens"], (toks, t["tokens"])
    assert len(toks) < 64, "keep the prompt inside the 64-token window, where llama.cpp agrees"
    with llama_fixtures.captured_stderr(log):
        m.eval(toks)
    scores = np.array(m.scores[: len(toks)], dtype=np.float32)
    m.close()
    assert scores.shape == (len(toks), t["n_vocab"]), scores.shape
    scores.astype("<f4").tofile(out / "llama.logits.bin")
    info = {"prompt": t["prompt"], "tokens": toks, "logits": "llama.logits.bin", "rows": len(toks),
            "n_vocab": t["n_vocab"], "gguf_sha256": llama_fixtures.sha256(gguf_path),
            "settings": {"n_threads": 2, "type_k": "f32", "type_v": "f32", "flash_attn": False},
            "swa_messages": [line for chunk in log for line in chunk.splitlines() if "swa" in line.lower()]}
    (out / "llama.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {len(toks)} rows of llama.cpp logits")


if __name__ == "__main__":
    main()
