#version 450
// out[r] = x[r] / max(sum(x[r]), 2^-14) per row of K floats (the chosen experts' weights made to
// sum to one; the smallest normal half keeps an all-zero row finite). One invocation per row:
// the rows are a handful of elements.
#include "common.glsl"

layout(std430, set = 0, binding = 0) readonly buffer X { float x[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params { uint K, n_rows; } p;

void main() {
    const uint r = flat_group() * WG + gl_LocalInvocationID.x;
    if (r >= p.n_rows) return;
    float s = 0.0;
    for (uint i = 0; i < p.K; ++i) s += x[r * p.K + i];
    const float inv = 1.0 / max(s, 6.103515625e-5);
    for (uint i = 0; i < p.K; ++i) o[r * p.K + i] = x[r * p.K + i] * inv;
}
