// Reading heads of the KV cache in their stored type (kernels/kv_quant.h, backend::KvRowFormat):
// 0 f16 halves; 1 q8_0, 2 q4_0 (codes, then from word p.k_scale / p.v_scale of the head one f16
// scale per 32 elements). Include after the cache buffers kc / vc, the spec constants K_TYPE /
// V_TYPE and the push constants p are declared. Defines, for K and for V:
//   k_scale(head, b) / v_scale(head, b): the scale of block b of the head starting at word `head`;
//   k_pair(head, i) / v_pair(head, i): its elements 2i and 2i + 1.
#define KILN_KV_READER(PREFIX, BUF, TYPE, SCALE_WORD)                                              \
    float PREFIX##_scale(uint head, uint b) {                                                      \
        const vec2 s = unpackHalf2x16(BUF[head + SCALE_WORD + (b >> 1)]);                          \
        return (b & 1u) == 0u ? s.x : s.y;                                                         \
    }                                                                                              \
    vec2 PREFIX##_pair(uint head, uint i) {                                                        \
        if (TYPE == 0u) return unpackHalf2x16(BUF[head + i]);                                      \
        const float d = PREFIX##_scale(head, i >> 4);                                              \
        if (TYPE == 1u) {                                                                          \
            const int w = int(BUF[head + (i >> 1)]);                                               \
            const int sh = int(16u * (i & 1u));                                                    \
            return vec2(float(bitfieldExtract(w, sh, 8)), float(bitfieldExtract(w, sh + 8, 8))) * d; \
        }                                                                                          \
        const uint b = (BUF[head + (i >> 2)] >> (8u * (i & 3u))) & 255u;                           \
        return vec2(float(b & 15u) - 8.0, float(b >> 4) - 8.0) * d;                                \
    }

KILN_KV_READER(k, kc, K_TYPE, p.k_scale)
KILN_KV_READER(v, vc, V_TYPE, p.v_scale)
