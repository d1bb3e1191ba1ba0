#!/usr/bin/env python3
"""Dump a GGUF file as canonical JSON using gguf-py's GGUFReader (the reference reader), for the Rust cross-checks.

Usage: gguf_canon_dump.py FILE.gguf > dump.json

Canonical value encoding (tests/gguf_common/mod.rs builds the same from our reader):
  scalar      -> [type, value]   with floats as their IEEE bit pattern (an int), so NaN and -0.0 compare exactly
  string      -> ["str", text]
  array       -> ["arr", elem_type, [item, ...]], each item a plain value, or for arrays of arrays a full ["arr", ...]
Tensors: name, ggml type id, dims in ggml order (ne[0] first), offset relative to the data section, size in bytes,
sha256 of the bytes.
"""
import hashlib
import json
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType

NAMES = {
    GGUFValueType.UINT8: "u8", GGUFValueType.INT8: "i8", GGUFValueType.UINT16: "u16", GGUFValueType.INT16: "i16",
    GGUFValueType.UINT32: "u32", GGUFValueType.INT32: "i32", GGUFValueType.FLOAT32: "f32",
    GGUFValueType.BOOL: "bool", GGUFValueType.STRING: "str", GGUFValueType.ARRAY: "arr",
    GGUFValueType.UINT64: "u64", GGUFValueType.INT64: "i64", GGUFValueType.FLOAT64: "f64",
}


def plain(part, vtype):
    """One scalar from a reader part (a 1-element numpy array), floats as bits."""
    if vtype == GGUFValueType.FLOAT32:
        return int(part.view(np.uint32)[0])
    if vtype == GGUFValueType.FLOAT64:
        return int(part.view(np.uint64)[0])
    if vtype == GGUFValueType.BOOL:
        return bool(part[0])
    return int(part[0])


def decode(parts, i, vtype):
    """Decode the value starting at parts[i]; returns (item, next index). Walks the parts GGUFReader produced,
    which keeps nested arrays intact (field.contents() flattens them)."""
    if vtype == GGUFValueType.STRING:
        return str(bytes(parts[i + 1]), encoding="utf-8"), i + 2
    if vtype == GGUFValueType.ARRAY:
        itype = GGUFValueType(int(parts[i][0]))
        n = int(parts[i + 1][0])
        i += 2
        items = []
        for _ in range(n):
            item, i = decode(parts, i, itype)
            items.append(item)
        return ["arr", NAMES[itype], items], i
    return plain(parts[i], vtype), i + 1


def main():
    r = GGUFReader(sys.argv[1])
    kv = []
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        vtype = GGUFValueType(int(field.parts[2][0]))
        item, end = decode(field.parts, 3, vtype)
        assert end == len(field.parts), f"{key}: decoded {end} of {len(field.parts)} parts"
        enc = item if vtype == GGUFValueType.ARRAY else [NAMES[vtype], item]
        # Cross-check the part walk against the reader's own accessor where it is defined (not for nested arrays).
        if vtype == GGUFValueType.ARRAY and len(field.types) > 1 and field.types[1] != GGUFValueType.ARRAY:
            want = field.contents()
            got = item[2]
            if field.types[1] not in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
                assert want == got, f"{key}: contents() {want!r:.80} != parts {got!r:.80}"
        elif vtype == GGUFValueType.STRING:
            assert field.contents() == item, key
        kv.append([key, enc])
    tensors = []
    for t in r.tensors:
        raw = bytes(r.data[t.data_offset : t.data_offset + t.n_bytes])
        tensors.append({
            "name": t.name,
            "type": int(t.tensor_type),
            "dims": [int(d) for d in t.shape],
            "offset": int(t.data_offset - r.data_offset),
            "size": int(t.n_bytes),
            "sha256": hashlib.sha256(raw).hexdigest(),
        })
    out = {
        "version": int(r.fields["GGUF.version"].parts[0][0]),
        "alignment": int(r.alignment),
        "data_offset": int(r.data_offset),
        "kv": kv,
        "tensors": tensors,
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
