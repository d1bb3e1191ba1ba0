#!/usr/bin/env python3
"""Development aid: compare one of our GGUFs with a committed expectation (prints the differences).
Usage: compare_gguf.py OURS.gguf tests/fixtures/convert/CASE.json TYPE"""
import json, sys
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from make_convert_expectations import summarize

ours = summarize(sys.argv[1])
exp = json.load(open(sys.argv[2]))["outputs"][sys.argv[3]]
bad = 0
om = {m["key"]: m for m in ours["metadata"]}
if [m["key"] for m in ours["metadata"]] != [m["key"] for m in exp["metadata"]]:
    print("KV order differs:\n ours", [m["key"] for m in ours["metadata"]], "\n  exp", [m["key"] for m in exp["metadata"]]); bad += 1
for m in exp["metadata"]:
    if om.get(m["key"]) != m:
        print("KV", m["key"], "ours", om.get(m["key"]), "exp", m); bad += 1
if len(ours["tensors"]) != len(exp["tensors"]):
    print("tensor count", len(ours["tensors"]), len(exp["tensors"])); bad += 1
for a, b in zip(ours["tensors"], exp["tensors"]):
    if a != b:
        print("tensor ours", a, "\n       exp", b); bad += 1
print("differences:", bad)
