#version 450
// out = x / sqrt(mean(x^2) + eps) [* w], per row of K floats; w (K floats) is optional.
// One workgroup per row; the sum of squares is reduced in shared memory.
#include "common.glsl"

layout(constant_id = 1) const bool HAS_WEIGHT = true;

layout(std430, set = 0, binding = 0) readonly buffer X { float x[]; };
layout(std430, set = 0, binding = 1) readonly buffer W { float w[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params {
    uint K, n_rows, x_stride, o_stride;
    float eps;
} p;

shared float red[WG];

void main() {
    const uint r = flat_group();
    if (r >= p.n_rows) return;
    const uint tid = gl_LocalInvocationID.x;
    const uint xb = r * p.x_stride, ob = r * p.o_stride;
    float s = 0.0;
    for (uint i = tid; i < p.K; i += WG) s += x[xb + i] * x[xb + i];
    red[tid] = s;
    barrier();
    for (uint h = WG / 2u; h > 0u; h >>= 1) {
        if (tid < h) red[tid] += red[tid + h];
        barrier();
    }
    const float scale = inversesqrt(red[0] / float(p.K) + p.eps);
    for (uint i = tid; i < p.K; i += WG) o[ob + i] = HAS_WEIGHT ? x[xb + i] * scale * w[i] : x[xb + i] * scale;
}
