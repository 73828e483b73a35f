#version 450
// out[i] = gelu(gate[i]) * up[i], gelu in its tanh form (gemma's gated FFN). One invocation per
// element; tanh(z) is written 1 - 2 / (e^2z + 1), which saturates cleanly for large |z|.
#include "common.glsl"

layout(std430, set = 0, binding = 0) readonly buffer Gate { float g[]; };
layout(std430, set = 0, binding = 1) readonly buffer Up { float u[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params { uint n; } p;

void main() {
    const uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i >= p.n) return;
    const float v = g[i];
    const float z = 0.7978845608028654 * (v + 0.044715 * v * v * v);
    o[i] = 0.5 * v * (2.0 - 2.0 / (exp(2.0 * z) + 1.0)) * u[i];
}
