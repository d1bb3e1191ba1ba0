"""gguf-py's numpy (de)quantizers as a subprocess, for the live cross-checks in tests/quant_gguf_py.rs.

    quant_crosscheck.py version
    quant_crosscheck.py quantize TYPE N_PER_ROW IN.f32 OUT.bin    # little-endian f32 rows in, gguf-py bytes out
    quant_crosscheck.py dequantize TYPE N IN.bin OUT.f32          # type bytes in, little-endian f32 out
TYPE is a GGMLQuantizationType name (Q4_0, Q8_0, F16, BF16, Q6_K, ...).
"""
from __future__ import annotations

import importlib.metadata
import sys

import numpy as np
from gguf import GGMLQuantizationType, quants
from gguf.constants import GGML_QUANT_SIZES


def main(argv: list[str]) -> None:
    if argv[:1] == ["version"]:
        print(importlib.metadata.version("gguf"))
        return
    op, name, n, src, dst = argv
    qtype = GGMLQuantizationType[name]
    n = int(n)
    data = np.fromfile(src, dtype=np.uint8)
    with np.errstate(all="ignore"):
        if op == "quantize":
            x = data.view("<f4").reshape(-1, n)
            out = np.ascontiguousarray(quants.quantize(x, qtype)).tobytes()
        elif op == "dequantize":
            block, size = GGML_QUANT_SIZES[qtype]
            rows = data.reshape(1, n // block * size)
            out = np.ascontiguousarray(quants.dequantize(rows, qtype), dtype="<f4").tobytes()
        else:
            sys.exit(f"unknown op {op}")
    with open(dst, "wb") as f:
        f.write(out)


if __name__ == "__main__":
    main(sys.argv[1:])
