#!/usr/bin/env python3
"""Regenerates tests/fixtures/convert/<case>.json: what llama.cpp's own converter writes for each synthetic case.

For every case in tests/fixtures/convert/cases.json: `smallthinker synth` writes the HF checkpoint, llama.cpp's
convert_hf_to_gguf.py converts it with --outtype f32/f16/bf16/q8_0, and llama_model_quantize (llama-cpp-python's
binding of llama-quantize, default params) turns the f32 file into Q4_0 (and Q4_0 with params.pure). Each GGUF is
summarised as its metadata (arrays hashed), tensor table and a sha256 per tensor.

Usage (reference env: llama-cpp-python 0.3.36, torch, transformers; see shared/docs/reference-setup.md):
  PYTHONPATH=$LLAMA_CPP/gguf-py /work/ref/REF/bin/python tools/ref/make_convert_expectations.py \
      --llama-cpp $LLAMA_CPP --smallthinker target/release/smallthinker [--work /tmp/convert-ref] [--keep]
"""
import argparse, hashlib, json, os, shutil, struct, subprocess, sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests/fixtures/convert"


def array_hash(values, elem_type):
    """sha256 of the array elements as GGUF encodes them (strings: u64 length + UTF-8)."""
    import gguf
    h = hashlib.sha256()
    for v in values:
        if elem_type == gguf.GGUFValueType.STRING:
            b = v.encode("utf-8") if isinstance(v, str) else bytes(v)
            h.update(struct.pack("<Q", len(b)) + b)
        elif elem_type == gguf.GGUFValueType.INT32:
            h.update(struct.pack("<i", int(v)))
        elif elem_type == gguf.GGUFValueType.UINT32:
            h.update(struct.pack("<I", int(v)))
        else:
            raise ValueError(f"unexpected array element type {elem_type}")
    return h.hexdigest()


def summarize(path):
    import gguf
    r = gguf.GGUFReader(path)
    meta = []
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        t = f.types[0]
        if t == gguf.GGUFValueType.ARRAY:
            et = f.types[1]
            vals = f.contents()
            meta.append({"key": f.name, "type": "array", "elem": et.name.lower(), "len": len(vals),
                         "sha256": array_hash(vals, et)})
        else:
            v = f.contents()
            if t in (gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.FLOAT64):
                v = struct.unpack("<I", struct.pack("<f", v))[0]  # exact bits
                meta.append({"key": f.name, "type": t.name.lower(), "f32_bits": v})
            else:
                meta.append({"key": f.name, "type": t.name.lower(), "value": v})
    tensors = []
    for t in r.tensors:
        tensors.append({"name": t.name, "dims": [int(d) for d in t.shape], "type": t.tensor_type.name,
                        "sha256": hashlib.sha256(bytes(t.data.tobytes())).hexdigest()})
    return {"metadata": meta, "tensors": tensors}


def quantize(src, dst, pure):
    import llama_cpp
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    p.pure = pure
    p.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), p)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src}) returned {rc}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", required=True, type=Path, help="the sdist's vendor/llama.cpp")
    ap.add_argument("--smallthinker", required=True, type=Path, help="our binary (for `synth`)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/convert-ref"))
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints and GGUFs in --work")
    ap.add_argument("--only", help="regenerate just this case")
    a = ap.parse_args()
    cases = json.loads((FIXTURES / "cases.json").read_text())
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for case in cases["cases"]:
        if a.only and case["name"] != a.only:
            continue
        # The converter names the model after its directory; the tests use the same directory name.
        hf = a.work / case["name"] / case["name"]
        shutil.rmtree(hf.parent, ignore_errors=True)
        cmd = [str(a.smallthinker), "synth", str(hf), "--shape", "tiny", "--seed", str(case["seed"]),
               "--dtype", case["dtype"], "--config", json.dumps(case["config"])]
        if case["shards"]:
            cmd += ["--shards", str(case["shards"])]
        if case["no_lm_head"]:
            cmd += ["--no-lm-head"]
        subprocess.run(cmd, check=True)
        out = {"case": case["name"], "outputs": {}}
        types = case.get("types", cases["types"])
        if any(t.startswith("q4_0") for t in types) and not (hf.parent / "f32.gguf").exists():
            # llama-quantize starts from the converter's F32 output.
            subprocess.run([sys.executable, str(a.llama_cpp / "convert_hf_to_gguf.py"), str(hf), "--outtype", "f32",
                            "--outfile", str(hf.parent / "f32.gguf")], check=True, env=env, stdout=subprocess.DEVNULL)
        for ty in types:
            dst = hf.parent / f"{ty}.gguf"
            if ty in ("f32", "f16", "bf16", "q8_0"):
                subprocess.run([sys.executable, str(a.llama_cpp / "convert_hf_to_gguf.py"), str(hf), "--outtype", ty,
                                "--outfile", str(dst)], check=True, env=env, stdout=subprocess.DEVNULL)
            else:
                quantize(hf.parent / "f32.gguf", dst, pure=(ty == "q4_0-pure"))
            out["outputs"][ty] = summarize(dst)
        (FIXTURES / f"{case['name']}.json").write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {case['name']}.json")
        if not a.keep:
            shutil.rmtree(hf.parent)


if __name__ == "__main__":
    main()
