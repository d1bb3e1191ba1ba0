#!/usr/bin/env python3
"""Write a sample GGUF with gguf-py's GGUFWriter (the reference writer) and print, as canonical JSON (see
gguf_canon_dump.py), what it was asked to write, without reading the file back.

Usage: gguf_write_sample.py OUT.gguf [ALIGNMENT] > manifest.json

Regenerates the committed fixture: gguf_write_sample.py tests/fixtures/gguf/pyref.gguf > tests/fixtures/gguf/pyref.json
It covers every value type, typed and nested arrays, and tensors of several ggml types with seeded bytes.
"""
import hashlib
import json
import struct
import sys

import numpy as np
from gguf import GGUFWriter, GGUFValueType as T, GGMLQuantizationType as Q
from gguf.constants import GGML_QUANT_SIZES

NAMES = {T.UINT8: "u8", T.INT8: "i8", T.UINT16: "u16", T.INT16: "i16", T.UINT32: "u32", T.INT32: "i32",
         T.FLOAT32: "f32", T.BOOL: "bool", T.STRING: "str", T.ARRAY: "arr", T.UINT64: "u64", T.INT64: "i64",
         T.FLOAT64: "f64"}


def bits(v, t):
    if t == T.FLOAT32:
        return struct.unpack("<I", struct.pack("<f", v))[0]
    if t == T.FLOAT64:
        return struct.unpack("<Q", struct.pack("<d", v))[0]
    return v


def main():
    out = sys.argv[1]
    w = GGUFWriter(out, arch="smallthinker")
    manifest = [["general.architecture", ["str", "smallthinker"]]]
    if len(sys.argv) > 2:
        w.add_uint32("general.alignment", int(sys.argv[2]))
        w.data_alignment = int(sys.argv[2])
        manifest.append(["general.alignment", ["u32", int(sys.argv[2])]])

    scalars = [
        ("t.u8", T.UINT8, 200), ("t.i8", T.INT8, -100), ("t.u16", T.UINT16, 65000), ("t.i16", T.INT16, -30000),
        ("t.u32", T.UINT32, 4000000000), ("t.i32", T.INT32, -2000000000), ("t.f32", T.FLOAT32, 1e-6),
        ("t.bool", T.BOOL, True), ("t.bool_false", T.BOOL, False), ("t.u64", T.UINT64, 2**64 - 1),
        ("t.i64", T.INT64, -(2**63)), ("t.f64", T.FLOAT64, -3.141592653589793), ("t.f32_nan", T.FLOAT32, float("nan")),
    ]
    for key, t, v in scalars:
        w.add_key_value(key, v, t)
        if t == T.FLOAT32 and v != v:
            b = struct.unpack("<I", np.float32("nan").tobytes())[0]
        else:
            b = bits(v, t)
        manifest.append([key, [NAMES[t], b]])
    w.add_string("t.str", "héllo \"gguf\"\n<|im_end|>")
    manifest.append(["t.str", ["str", "héllo \"gguf\"\n<|im_end|>"]])

    arrays = [
        ("t.arr_u8", T.UINT8, [0, 1, 255]), ("t.arr_i8", T.INT8, [-128, 127]), ("t.arr_u16", T.UINT16, [1, 65535]),
        ("t.arr_i16", T.INT16, [-1, 2]), ("t.arr_u32", T.UINT32, [7, 4294967295]),
        ("t.arr_i32", T.INT32, [1, -3, 5]), ("t.arr_f32", T.FLOAT32, [0.5, -2.25, 1e30]),
        ("t.arr_bool", T.BOOL, [True, False, True]), ("t.arr_u64", T.UINT64, [2**63]),
        ("t.arr_i64", T.INT64, [-5]), ("t.arr_f64", T.FLOAT64, [1.0 / 3.0]),
        ("t.arr_str", T.STRING, ["a", "", "Ġthe", "多"]),
    ]
    for key, t, v in arrays:
        w.add_key_value(key, v, T.ARRAY, sub_type=t)
        manifest.append([key, ["arr", NAMES[t], [bits(x, t) for x in v]]])
    # Nested: gguf-py infers the inner types from the Python values (int -> i32, str -> str).
    w.add_array("t.nested", [[1, 2], [3], [4, 5, 6]])
    manifest.append(["t.nested", ["arr", "arr", [["arr", "i32", [1, 2]], ["arr", "i32", [3]],
                                                  ["arr", "i32", [4, 5, 6]]]]])
    w.add_array("t.nested_str", [["x", "y"], ["z"]])
    manifest.append(["t.nested_str", ["arr", "arr", [["arr", "str", ["x", "y"]], ["arr", "str", ["z"]]]]])

    rng = np.random.default_rng(1234)
    tensors = []
    alignment = w.data_alignment
    offset = 0
    # (name, ggml type, dims in ggml order)
    specs = [("f32", Q.F32, [5, 3]), ("f16", Q.F16, [7]), ("bf16", Q.BF16, [4, 2]), ("q4_0", Q.Q4_0, [64, 2]),
             ("q8_0", Q.Q8_0, [32, 3]), ("q6_k", Q.Q6_K, [256]), ("i8", Q.I8, [3, 1, 2]), ("i32", Q.I32, [2, 2, 2, 2]),
             ("f64", Q.F64, [3]), ("empty", Q.F32, [0, 4])]
    for name, q, dims in specs:
        block, tsize = GGML_QUANT_SIZES[q]
        n = int(np.prod(dims))
        nbytes = n // block * tsize
        raw = rng.integers(0, 256, size=nbytes, dtype=np.uint8)
        np_shape = list(reversed(dims))
        np_shape[-1] = np_shape[-1] // block * tsize
        w.add_tensor(f"w.{name}", raw.reshape(np_shape), raw_dtype=q)
        tensors.append({"name": f"w.{name}", "type": int(q), "dims": dims, "offset": offset, "size": nbytes,
                        "sha256": hashlib.sha256(raw.tobytes()).hexdigest()})
        offset += (nbytes + alignment - 1) // alignment * alignment

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    json.dump({"version": 3, "alignment": alignment, "kv": manifest, "tensors": tensors}, sys.stdout)


if __name__ == "__main__":
    main()
