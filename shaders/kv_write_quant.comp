#version 450
// Writes n_tok rows of f32 keys or values (n_head heads of dim floats, rows s_stride floats apart)
// into a q8_0 (Q4 false) or q4_0 (Q4 true) cache of n_slots rows: the token at position pos + t
// goes to row (pos + t) % n_slots, or with `paged` to the row of its page in a pool of pages
// (kv_slot.glsl). A head is head_words 32-bit words: its codes, then from word
// code_words one f16 scale per 32 elements (kernels/kv_quant.h has the rules, which these follow).
// One invocation per (token, head, word of scales): it quantizes that word's two blocks, so no
// two invocations write the same word.
#include "common.glsl"

layout(std430, set = 0, binding = 0) readonly buffer Src { float s[]; };
layout(std430, set = 0, binding = 1) buffer Cache { uint c[]; };
layout(std430, set = 0, binding = 2) readonly buffer Table { uint tbl[]; };  // paged only

layout(constant_id = 1) const bool Q4 = false;

layout(push_constant) uniform Params {
    uint dim, n_head, n_tok, pos, s_stride, n_slots;
    uint head_words, code_words, n_blocks, scale_words;
    uint paged, page_shift;  // kv_slot.glsl
} p;

#include "kv_slot.glsl"

void main() {
    const uint idx = flat_group() * WG + gl_LocalInvocationID.x;
    if (idx >= p.n_tok * p.n_head * p.scale_words) return;
    const uint sw = idx % p.scale_words, th = idx / p.scale_words;
    const uint h = th % p.n_head, t = th / p.n_head;
    const uint src = t * p.s_stride + h * p.dim;
    const uint head = (kv_slot(p.pos + t) * p.n_head + h) * p.head_words;
    vec2 scales = vec2(0.0);
    for (uint k = 0; k < 2u; ++k) {
        const uint b = 2u * sw + k;
        if (b >= p.n_blocks) break;
        const uint e0 = b * 32u, e1 = min(e0 + 32u, p.dim);
        float amax = 0.0, m = 0.0;
        for (uint e = e0; e < e1; ++e) {
            const float x = s[src + e];
            if (abs(x) > amax) {
                amax = abs(x);
                m = x;
            }
        }
        const float d = Q4 ? m / -8.0 : amax / 127.0;
        const float id = d != 0.0 ? 1.0 / d : 0.0;
        scales[k] = d;
        if (Q4) {
            for (uint e = e0; e < e1; e += 8u) {
                uint w = 0u;
                for (uint j = 0; j < 8u; ++j) w |= uint(min(15, int(s[src + e + j] * id + 8.5))) << (4u * j);
                c[head + (e >> 3)] = w;
            }
        } else {
            for (uint e = e0; e < e1; e += 4u) {
                uint w = 0u;
                for (uint j = 0; j < 4u; ++j) {
                    const float v = s[src + e + j] * id;
                    w |= (uint(int(sign(v) * floor(abs(v) + 0.5))) & 255u) << (8u * j);  // ties away from zero
                }
                c[head + (e >> 2)] = w;
            }
        }
    }
    c[head + p.code_words + sw] = packHalf2x16(scales);
}
