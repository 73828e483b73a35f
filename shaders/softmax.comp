#version 450
// out = softmax(x * scale) per row of K floats (max subtracted first). One workgroup per row.
#include "common.glsl"

layout(std430, set = 0, binding = 0) readonly buffer X { float x[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params {
    uint K, n_rows, x_stride, o_stride;
    float scale;
} p;

shared float red[WG];

void main() {
    const uint r = flat_group();
    if (r >= p.n_rows) return;
    const uint tid = gl_LocalInvocationID.x;
    const uint xb = r * p.x_stride, ob = r * p.o_stride;
    float m = -1.0 / 0.0;
    for (uint i = tid; i < p.K; i += WG) m = max(m, x[xb + i] * p.scale);
    red[tid] = m;
    barrier();
    for (uint h = WG / 2u; h > 0u; h >>= 1) {
        if (tid < h) red[tid] = max(red[tid], red[tid + h]);
        barrier();
    }
    m = red[0];
    barrier();
    float s = 0.0;
    for (uint i = tid; i < p.K; i += WG) s += exp(x[xb + i] * p.scale - m);
    red[tid] = s;
    barrier();
    for (uint h = WG / 2u; h > 0u; h >>= 1) {
        if (tid < h) red[tid] += red[tid + h];
        barrier();
    }
    const float inv = 1.0 / red[0];
    for (uint i = tid; i < p.K; i += WG) o[ob + i] = exp(x[xb + i] * p.scale - m) * inv;
}
