#version 450
// out[t][e] = sum_s w[t][s] * y[t][s][e]: the chosen experts' outputs (S rows of E per token)
// weighted by their gates. One invocation per output element.
#include "common.glsl"

layout(std430, set = 0, binding = 0) readonly buffer Y { float y[]; };
layout(std430, set = 0, binding = 1) readonly buffer W { float w[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params { uint E, S, n_tok; } p;

void main() {
    const uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i >= p.E * p.n_tok) return;
    const uint t = i / p.E, e = i % p.E;
    float acc = 0.0;
    for (uint s = 0; s < p.S; ++s) acc += w[t * p.S + s] * y[(t * p.S + s) * p.E + e];
    o[i] = acc;
}
