#!/usr/bin/env python3
"""Writes a GGUF file with a real model's shapes and types whose tensor data is a hole (a sparse
file of the full size: zeros, which read as all-zero weights). For planning memory (`kiln fit`)
and loading at real sizes without the download; the weights are meaningless.

    scripts/make_sparse_gguf.py glm4.7-flash OUT.gguf

Shapes (from the models' published configs):
  glm4.7-flash   GLM-4.7-Flash (deepseek2 layout): 47 layers, 2048 wide, 20 heads on an MLA latent of
                 512 + 64 RoPE (K rows of 576), q_lora 768, 64 experts of 1536 (top 4, sigmoid
                 routing), 1 shared expert, 1 dense lead layer of 10240, vocab 154880, context 202752;
                 Q4_K_M-like types (q4_K, q6_K for the output, q8_0 where a row is not 256 wide).
"""
import os
import struct
import sys

F32, Q8_0, Q4_K, Q6_K = 0, 8, 12, 14
BLOCK = {F32: (1, 4), Q8_0: (32, 34), Q4_K: (256, 144), Q6_K: (256, 210)}
UINT32, FLOAT32, BOOL, STRING, UINT64 = 4, 6, 7, 8, 10
ALIGN = 32


def s(text):
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def value(t, v):
    if t == UINT32:
        return struct.pack("<I", v)
    if t == FLOAT32:
        return struct.pack("<f", v)
    if t == BOOL:
        return struct.pack("<?", v)
    if t == STRING:
        return s(v)
    if t == UINT64:
        return struct.pack("<Q", v)
    raise ValueError(t)


def glm47_flash():
    a = "deepseek2."
    E, L, H, V, CTX = 2048, 47, 20, 154880, 202752
    QL, KVL, ROPE, NOPE, VH = 768, 512, 64, 192, 256
    NEXP, FFE, FF = 64, 1536, 10240
    meta = [
        ("general.architecture", STRING, "deepseek2"),
        ("general.name", STRING, "GLM-4.7-Flash shapes (sparse, no weights)"),
        (a + "block_count", UINT32, L),
        (a + "context_length", UINT32, CTX),
        (a + "embedding_length", UINT32, E),
        (a + "feed_forward_length", UINT32, FF),
        (a + "attention.head_count", UINT32, H),
        (a + "attention.head_count_kv", UINT32, 1),
        (a + "attention.key_length", UINT32, KVL + ROPE),
        (a + "attention.value_length", UINT32, KVL),
        (a + "attention.key_length_mla", UINT32, NOPE + ROPE),
        (a + "attention.value_length_mla", UINT32, VH),
        (a + "attention.q_lora_rank", UINT32, QL),
        (a + "attention.kv_lora_rank", UINT32, KVL),
        (a + "attention.layer_norm_rms_epsilon", FLOAT32, 1e-5),
        (a + "rope.dimension_count", UINT32, ROPE),
        (a + "rope.freq_base", FLOAT32, 1000000.0),
        (a + "expert_count", UINT32, NEXP),
        (a + "expert_used_count", UINT32, 4),
        (a + "expert_shared_count", UINT32, 1),
        (a + "expert_feed_forward_length", UINT32, FFE),
        (a + "expert_gating_func", UINT32, 2),
        (a + "expert_weights_norm", BOOL, True),
        (a + "expert_weights_scale", FLOAT32, 1.8),
        (a + "leading_dense_block_count", UINT32, 1),
    ]

    def mat(ne0):
        return Q4_K if ne0 % 256 == 0 else Q8_0

    tensors = [("token_embd.weight", Q4_K, [E, V]), ("output_norm.weight", F32, [E]), ("output.weight", Q6_K, [E, V])]
    for il in range(L):
        p = f"blk.{il}."
        tensors += [
            (p + "attn_norm.weight", F32, [E]),
            (p + "attn_q_a.weight", mat(E), [E, QL]),
            (p + "attn_q_a_norm.weight", F32, [QL]),
            (p + "attn_q_b.weight", mat(QL), [QL, H * (NOPE + ROPE)]),
            (p + "attn_kv_a_mqa.weight", mat(E), [E, KVL + ROPE]),
            (p + "attn_kv_a_norm.weight", F32, [KVL]),
            (p + "attn_k_b.weight", mat(NOPE), [NOPE, KVL, H]),
            (p + "attn_v_b.weight", mat(KVL), [KVL, VH, H]),
            (p + "attn_output.weight", mat(H * VH), [H * VH, E]),
            (p + "ffn_norm.weight", F32, [E]),
        ]
        if il == 0:
            tensors += [(p + "ffn_gate.weight", mat(E), [E, FF]), (p + "ffn_up.weight", mat(E), [E, FF]),
                        (p + "ffn_down.weight", mat(FF), [FF, E])]
        else:
            tensors += [
                (p + "exp_probs_b.bias", F32, [NEXP]),
                (p + "ffn_gate_inp.weight", F32, [E, NEXP]),
                (p + "ffn_gate_exps.weight", mat(E), [E, FFE, NEXP]),
                (p + "ffn_up_exps.weight", mat(E), [E, FFE, NEXP]),
                (p + "ffn_down_exps.weight", mat(FFE), [FFE, E, NEXP]),
                (p + "ffn_gate_shexp.weight", mat(E), [E, FFE]),
                (p + "ffn_up_shexp.weight", mat(E), [E, FFE]),
                (p + "ffn_down_shexp.weight", mat(FFE), [FFE, E]),
            ]
    return meta, tensors


SHAPES = {"glm4.7-flash": glm47_flash}


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in SHAPES:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(SHAPES)}}} OUT.gguf")
    meta, tensors = SHAPES[sys.argv[1]]()
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta)))
    for key, t, v in meta:
        out += s(key) + struct.pack("<I", t) + value(t, v)
    offset = 0
    for name, t, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        per, size = BLOCK[t]
        assert shape[0] % per == 0, (name, shape)
        out += s(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        out += struct.pack("<IQ", t, offset)
        offset += (n // per * size + ALIGN - 1) // ALIGN * ALIGN
    out += b"\0" * ((-len(out)) % ALIGN)
    with open(sys.argv[2], "wb") as f:
        f.write(out)
        f.truncate(len(out) + offset)  # the data: a hole
    print(f"{sys.argv[2]}: {len(tensors)} tensors, {(len(out) + offset) / 2**30:.2f} GiB (sparse)")


if __name__ == "__main__":
    main()
