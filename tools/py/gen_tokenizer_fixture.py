#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer_llamacpp.json: how llama.cpp itself (llama-cpp-python 0.3.36) tokenizes and
detokenizes extra strings with vendor/qwen2-vocab/ggml-vocab-qwen2.gguf, beyond its own .inp/.out test vectors:
special-token parsing on and off, user-defined tokens, non-NFC text, and per-token pieces.

Run with the reference environment: /work/ref/REF/bin/python tools/py/gen_tokenizer_fixture.py
"""
import json
import pathlib

import llama_cpp

ROOT = pathlib.Path(__file__).resolve().parents[2]
GGUF = ROOT / "vendor/qwen2-vocab/ggml-vocab-qwen2.gguf"
OUT = ROOT / "tests/fixtures/tokenizer_llamacpp.json"

TEXTS = [
    "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n",
    "<|endoftext|><|endoftext|>x",
    "a</s>b",
    "x[PAD151700]y [PAD151646]",
    "<|im_start|",
    "e\u0301 caf\u00e9 \u212b \uff21\uff22",  # combining accent, Angstrom sign, fullwidth: NFC would change these
    "line\r\nnext\r\n\r\n",
    "I'M SURE YOU'LL SEE it's 'RE 'Ve",
    "'Sure 'Tis 'LLAMA 'DOne 'REady 'VEry 'Mine 'sure 'Sorry 'Time 'Dear 'Mother 'Really 'Very 'Llama 'The",  # contractions match case-insensitively, before letters
    "   leading and trailing   ",
    "Ünïcödé 中文 日本語 한국어 العربية हिन्दी",
    "tabs\tand\u00a0nbsp\u2003em space",
    "1234567890 3.14159 1,000,000",
    "def f(x):\n    return x ** 2  # comment\n",
    "🦀🦀 👩‍👩‍👧 🇺🇳",
]

# Token lists to detokenize: special tokens, a NORMAL-but-EOG token, a user-defined token, and single byte tokens.
DECODE = [
    [151644, 872, 198, 6023, 151645],
    [128247],
    [151700],
    [11162],
    [11162, 99, 247],
    [99],
]


def main() -> None:
    llm = llama_cpp.Llama(str(GGUF), vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    encode = []
    for text in TEXTS:
        for parse_special in (False, True):
            ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=parse_special)
            encode.append({"text": text, "parse_special": parse_special, "ids": ids})
    decode = []
    for ids in DECODE:
        for special in (False, True):
            decode.append({"ids": ids, "special": special, "hex": llm.detokenize(ids, special=special).hex()})
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    fixture = {
        "source": "llama-cpp-python 0.3.36, vocab_only, add_special=false",
        "encode": encode,
        "decode": decode,
        "eog": [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)],
        "eot": llama_cpp.llama_vocab_eot(vocab),
        "bos": llama_cpp.llama_vocab_bos(vocab),
        "eos": llama_cpp.llama_vocab_eos(vocab),
    }
    # One case per line keeps diffs readable.
    lines = []
    for key, value in fixture.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            body = ",\n".join("  " + json.dumps(v, ensure_ascii=False) for v in value)
            lines.append(f" {json.dumps(key)}: [\n{body}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    OUT.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
