#!/usr/bin/env python3
"""Copies a GGUF file with metadata values added or replaced (the tensors are copied as they are):
reference models for load-time overrides, e.g. a qwen2 model with YaRN scaling in its metadata
for llama.cpp's llama-logits to make the reference kiln's --rope-scaling yarn must match.

    scripts/gguf_set_metadata.py IN.gguf OUT.gguf KEY=TYPE:VALUE ...   (TYPE: str, u32, f32)
"""
import struct
import sys

SIZES = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_str(f):
    (n,) = struct.unpack("<Q", f.read(8))
    return f.read(n)


def skip_value(f, t):
    """Returns the raw bytes of a value of type t."""
    if t in SIZES:
        return f.read(struct.calcsize("<" + SIZES[t]))
    if t == 8:
        (n,) = struct.unpack("<Q", f.read(8))
        return struct.pack("<Q", n) + f.read(n)
    if t == 9:
        head = f.read(12)
        et, n = struct.unpack("<IQ", head)
        return head + b"".join(skip_value(f, et) for _ in range(n))
    raise ValueError(f"unknown GGUF value type {t}")


def encode(spec):
    kind, _, text = spec.partition(":")
    if kind == "str":
        b = text.encode()
        return 8, struct.pack("<Q", len(b)) + b
    if kind == "u32":
        return 4, struct.pack("<I", int(text))
    if kind == "f32":
        return 6, struct.pack("<f", float(text))
    raise ValueError(f"type {kind}: str, u32 or f32")


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    src, dst, sets = sys.argv[1], sys.argv[2], sys.argv[3:]
    with open(src, "rb") as f:
        magic, version, n_t, n_kv = struct.unpack("<4sIQQ", f.read(24))
        assert magic == b"GGUF", "not a GGUF file"
        kvs = []
        align = 32
        for _ in range(n_kv):
            key = read_str(f)
            (t,) = struct.unpack("<I", f.read(4))
            raw = skip_value(f, t)
            if key == b"general.alignment":
                (align,) = struct.unpack("<I", raw)
            kvs.append([key, t, raw])
        infos_start = f.tell()
        for _ in range(n_t):
            read_str(f)
            (nd,) = struct.unpack("<I", f.read(4))
            f.read(8 * nd + 12)
        infos = open(src, "rb").read()[infos_start:f.tell()]
        data_start = (f.tell() + align - 1) // align * align
        f.seek(data_start)
        data = f.read()
    for s in sets:
        key, _, spec = s.partition("=")
        t, raw = encode(spec)
        for kv in kvs:
            if kv[0] == key.encode():
                kv[1], kv[2] = t, raw
                break
        else:
            kvs.append([key.encode(), t, raw])
    out = bytearray(struct.pack("<4sIQQ", b"GGUF", version, n_t, len(kvs)))
    for key, t, raw in kvs:
        out += struct.pack("<Q", len(key)) + key + struct.pack("<I", t) + raw
    out += infos
    out += b"\0" * ((-len(out)) % align)
    with open(dst, "wb") as f:
        f.write(out)
        f.write(data)


if __name__ == "__main__":
    main()
