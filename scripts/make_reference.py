#!/usr/bin/env python3
"""Reference logits for the small models of tests/data/models, in the format of ../shared/models/reference.

    python3 scripts/make_reference.py tests/data/models/NAME.TYPE.gguf [...]

Runs llama.cpp's llama-logits (../shared/peer/bin, 1 thread, no flash attention, f16 KV cache) on the
prompt of tests/data/models/prompt.txt and writes tests/data/models/reference/NAME.TYPE.json with
tokens, logits, argmax, top2_margin, max_abs_logit and, against NAME.f32's logits, the quantization
error (quantization_error_vs_f32: max |d|, rms_quantization_error: RMS). The f32 file of each model is
done first. Kiln never runs llama.cpp: the JSON files are committed and the tests read them.
"""
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.environ.get("KILN_PEER_BIN", os.path.join(ROOT, "..", "shared", "peer", "bin"))
DATA = os.path.join(ROOT, "tests", "data", "models")


def logits(path, tokens):
    out = subprocess.run([os.path.join(PEER, "llama-logits"), path, ",".join(map(str, tokens)), "1", "0"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["logits"]


def reference(path, tokens, f32=None):
    rows = logits(path, tokens)
    argmax, margin = [], []
    for r in rows:
        order = sorted(range(len(r)), key=lambda i: -r[i])
        argmax.append(order[0])
        margin.append(r[order[0]] - r[order[1]])
    ref = {"model": os.path.basename(path), "arch_model": "kiln_make_bench_model", "tokens": tokens,
           "n_vocab": len(rows[0]), "max_abs_logit": max(abs(x) for r in rows for x in r),
           "quantization_error_vs_f32": 0.0, "rms_quantization_error": 0.0, "top2_margin": margin,
           "argmax": argmax, "logits": rows}
    if f32 is not None:
        d = [a - b for r, s in zip(rows, f32) for a, b in zip(r, s)]
        ref["quantization_error_vs_f32"] = max(abs(x) for x in d)
        ref["rms_quantization_error"] = math.sqrt(sum(x * x for x in d) / len(d))
    return ref


def main():
    tokens = [int(t) for t in open(os.path.join(DATA, "prompt.txt")).read().strip().split(",")]
    os.makedirs(os.path.join(DATA, "reference"), exist_ok=True)
    f32_cache = {}
    for path in sys.argv[1:]:
        base = os.path.basename(path)[: -len(".gguf")]
        name, _, kind = base.rpartition(".")
        if name not in f32_cache:
            f32_cache[name] = reference(os.path.join(DATA, name + ".f32.gguf"), tokens)
        ref = f32_cache[name] if kind == "f32" else reference(path, tokens, f32_cache[name]["logits"])
        with open(os.path.join(DATA, "reference", base + ".json"), "w") as f:
            json.dump(ref, f, separators=(",", ":"))
        print(f"{base}: max|logit| {ref['max_abs_logit']:.4g}, rms quantization error {ref['rms_quantization_error']:.4g}")


if __name__ == "__main__":
    main()
