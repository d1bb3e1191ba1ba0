"""Writes tests/fixtures/quant/: reference bytes for the quantization tests (tests/quant.rs).

Run with the reference environment (gguf 0.19.0, numpy, llama-cpp-python 0.3.36):
    /work/ref/REF/bin/python tools/py/quant_fixtures.py

Inputs are regenerated from seeds on both sides (quant_gen.py, tests/quant_gen/mod.rs); the fixture holds outputs:
- Q4_0, Q8_0, F16, BF16: gguf-py's numpy quantizers (what convert_hf_to_gguf.py writes), after checking that
  llama.cpp's own ggml (libggml-base.so of llama-cpp-python) gives the same bytes, except F16 NaN payloads
  (documented in src/ggml/quant.rs);
- every other type smallthinker quantizes (Q6_K, the K/IQ4/ternary/fp4 types): llama.cpp's ggml_quantize_chunk,
  since gguf-py has no quantizer for them;
- Q6_K dequantized by gguf-py's numpy dequantizer.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import json
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quant_gen  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "quant")

# F32 bit patterns every F16/BF16 case includes besides the seeded ones.
SPECIALS = [
    0x00000000, 0x80000000, 0x7F800000, 0xFF800000,  # +-0, +-inf
    0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FBFFFFF, 0x7FFFFFFF, 0xFFA00000, 0x7F802000, 0x7F801FFF,  # NaNs
    0x00000001, 0x807FFFFF, 0x00400000,  # f32 subnormals
    0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FFFFF, 0x47800000,  # 65504, just below/at the f16 overflow tie
    0x33800000, 0x33000000, 0x33000001, 0x33400000, 0x33C00000, 0x387FC000, 0x38800000,  # f16 subnormal edges
    0x3F808000, 0x3F818000, 0x3F80FFFF, 0x7F7FFFFF, 0x7F7F8000, 0xFF7F7FFF, 0x3F800000, 0xBF800000,  # bf16 ties
]


def libggml() -> ctypes.CDLL:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llama_cpp (llama-cpp-python 0.3.36) is needed to make the llama.cpp reference bytes")
    lib = ctypes.CDLL(os.path.join(spec.submodule_search_locations[0], "lib", "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_type_name.restype = ctypes.c_char_p
    lib.ggml_type_name.argtypes = [ctypes.c_int]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    return lib


def ggml_type_id(lib: ctypes.CDLL, name: str) -> int:
    """The id llama.cpp's ggml gives a type name (gguf 0.19's enum lacks the newest types, e.g. q2_0)."""
    for i in range(64):
        got = lib.ggml_type_name(i)
        if got is not None and got.decode().lower() == name.lower():
            return i
    sys.exit(f"llama.cpp's ggml has no type {name}")


def ggml_quantize(lib: ctypes.CDLL, qtype: int, x: np.ndarray, n_per_row: int) -> bytes:
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows = x.size // n_per_row
    out = np.zeros(lib.ggml_row_size(int(qtype), n_per_row) * rows + 8, dtype=np.uint8)[:-8]
    n = lib.ggml_quantize_chunk(int(qtype), x.ctypes.data, out.ctypes.data, 0, rows, n_per_row, None)
    assert n == out.size, (qtype, n, out.size)
    return out.tobytes()


def gguf_py_quantize(qtype: T, x: np.ndarray, n_per_row: int) -> bytes:
    return np.ascontiguousarray(quants.quantize(x.reshape(-1, n_per_row), qtype)).tobytes()


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    lib = libggml()
    cases = []

    def write(name: str, data: bytes, **meta) -> None:
        file = f"{name}.bin"
        with open(os.path.join(OUT, file), "wb") as f:
            f.write(data)
        cases.append({"name": name, "file": file, "bytes": len(data), **meta})

    # Q4_0 and Q8_0: gguf-py's numpy, checked against llama.cpp's ggml.
    for qtype, seed in [(T.Q4_0, 40), (T.Q8_0, 80)]:
        rows, n_per_row = 64, 256
        x = quant_gen.values(seed, rows * n_per_row)
        with np.errstate(over="ignore"):
            ref = gguf_py_quantize(qtype, x, n_per_row)
        assert ggml_quantize(lib, int(qtype), x, n_per_row) == ref, f"gguf-py and llama.cpp disagree on {qtype.name}"
        write(f"{qtype.name.lower()}_gguf_py", ref, type=qtype.name, source="gguf-py", input="values", seed=seed,
              rows=rows, n_per_row=n_per_row)

    # The candle-style golden vector: 0..128 as f32, Q4_0, and its dequantized values (gguf-py both ways).
    x = np.arange(128, dtype=np.float32)
    golden = gguf_py_quantize(T.Q4_0, x, 128)
    assert ggml_quantize(lib, int(T.Q4_0), x, 128) == golden
    deq = quants.dequantize(np.frombuffer(golden, dtype=np.uint8).reshape(1, -1), T.Q4_0).ravel()
    write("q4_0_arange_golden", golden, type="Q4_0", source="gguf-py", input="arange", rows=1, n_per_row=128,
          dequantized=[float(v) for v in deq])

    # F16 and BF16: gguf-py on edge-case bit patterns.
    n_bits = 4096
    for qtype, seed in [(T.F16, 16), (T.BF16, 30)]:
        b = np.concatenate([np.array(SPECIALS, dtype=np.uint32), quant_gen.bits(seed, n_bits)])
        x = b.view(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            ref = gguf_py_quantize(qtype, x, x.size)
        ggml = ggml_quantize(lib, int(qtype), x, x.size)
        differ = [int(b[i]) for i in range(x.size) if ref[2 * i:2 * i + 2] != ggml[2 * i:2 * i + 2]]
        assert all(np.isnan(np.uint32(v).view(np.float32)) for v in differ), f"{qtype.name}: non-NaN difference"
        print(f"{qtype.name}: gguf-py and llama.cpp ggml differ on {len(differ)} of {x.size} inputs, all NaN")
        write(f"{qtype.name.lower()}_gguf_py", ref, type=qtype.name, source="gguf-py", input="bits", seed=seed,
              n=n_bits, specials=SPECIALS, ggml_differs_on=differ)

    # Types gguf-py cannot quantize: llama.cpp's ggml (no imatrix), 8 rows of 512 mixed values each.
    rows, n_per_row = 8, 512
    names = ["Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS",
             "TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "Q1_0", "Q2_0"]
    for i, name in enumerate(names):
        seed = 1000 + i
        x = quant_gen.values(seed, rows * n_per_row)
        write(f"{name.lower()}_llama_cpp", ggml_quantize(lib, ggml_type_id(lib, name), x, n_per_row), type=name,
              source="llama.cpp ggml_quantize_chunk", input="values", seed=seed, rows=rows, n_per_row=n_per_row)

    # Q6_K dequantized by gguf-py, from the llama.cpp bytes above.
    q6k = next(c for c in cases if c["name"] == "q6_k_llama_cpp")
    with open(os.path.join(OUT, q6k["file"]), "rb") as f:
        deq = quants.dequantize(np.frombuffer(f.read(), dtype=np.uint8).reshape(rows, -1), T.Q6_K)
    write("q6_k_dequant_gguf_py", deq.astype("<f4").tobytes(), type="F32", source="gguf-py dequantize(Q6_K)",
          input=q6k["file"], rows=rows, n_per_row=n_per_row)

    versions = {p: importlib.metadata.version(p) for p in ["gguf", "numpy", "llama_cpp_python"]}
    manifest = {"generated_by": "tools/py/quant_fixtures.py", "versions": versions, "cases": cases}
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
