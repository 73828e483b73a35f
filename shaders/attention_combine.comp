#version 450
// The second pass of split-K attention (attention.comp with SPLIT): merges the n_chunks partial
// softmaxes of each (token, head). Chunk c has running max m_c, sum l_c and unnormalised
// accumulators a_c (an empty chunk has m_c = -inf, l_c = 0). With M = max_c m_c and
// w_c = e^(m_c - M) (0 for an empty chunk): out = sum_c w_c a_c / sum_c w_c l_c.
// One workgroup per (token, head); thread i owns output dimensions i, i + WG, ...
#include "common.glsl"

layout(std430, set = 0, binding = 0) readonly buffer Part { float part[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params {
    uint Dv, n_head, n_tok, n_chunks, acc_off, o_stride;
} p;

void main() {
    const uint wg = flat_group();
    if (wg >= p.n_tok * p.n_head) return;
    const uint tid = gl_LocalInvocationID.x;
    const uint t = wg / p.n_head, h = wg % p.n_head;
    const uint r0 = wg * p.n_chunks;

    float M = -1.0 / 0.0;
    for (uint c = 0; c < p.n_chunks; ++c) M = max(M, part[2u * (r0 + c)]);
    float L = 0.0;
    for (uint c = 0; c < p.n_chunks; ++c) {
        const float mc = part[2u * (r0 + c)];
        L += mc == -1.0 / 0.0 ? 0.0 : exp(mc - M) * part[2u * (r0 + c) + 1u];
    }
    const float inv = L > 0.0 ? 1.0 / L : 0.0;
    for (uint d = tid; d < p.Dv; d += WG) {
        float s = 0.0;
        for (uint c = 0; c < p.n_chunks; ++c) {
            const float mc = part[2u * (r0 + c)];
            if (mc != -1.0 / 0.0) s += exp(mc - M) * part[p.acc_off + (r0 + c) * p.Dv + d];
        }
        o[t * p.o_stride + h * p.Dv + d] = s * inv;
    }
}
