#version 450
// out[t][j] = x[t][ids[t][j]] (the chosen experts' probabilities). One invocation per output
// element; an index outside the row writes NaN (a visible error, never a stray read).
#include "common.glsl"

layout(std430, set = 0, binding = 0) readonly buffer X { float x[]; };
layout(std430, set = 0, binding = 1) readonly buffer Ids { int ids[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params { uint K, k, n_tok; } p;  // x rows of K, k ids per token

void main() {
    const uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i >= p.k * p.n_tok) return;
    const int id = ids[i];
    o[i] = id >= 0 && uint(id) < p.K ? x[(i / p.k) * p.K + uint(id)] : uintBitsToFloat(0x7fc00000u);
}
