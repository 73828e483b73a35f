#version 450
// out[i] = cap * tanh(a[i] / cap) (gemma's logit soft-capping). tanh(z) is written
// 1 - 2 / (e^2z + 1): exact at both saturations, no NaN for large |z|.
#include "common.glsl"

layout(std430, set = 0, binding = 0) readonly buffer A { float a[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params { uint n; float cap; } p;

void main() {
    const uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i >= p.n) return;
    o[i] = p.cap * (1.0 - 2.0 / (exp(2.0 * a[i] / p.cap) + 1.0));
}
