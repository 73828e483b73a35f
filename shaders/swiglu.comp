#version 450
// out[i] = silu(gate[i]) * up[i] (the gated FFN of llama-style models). One invocation per element.
#include "common.glsl"

layout(std430, set = 0, binding = 0) readonly buffer Gate { float g[]; };
layout(std430, set = 0, binding = 1) readonly buffer Up { float u[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params { uint n; } p;

void main() {
    const uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i < p.n) o[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
}
