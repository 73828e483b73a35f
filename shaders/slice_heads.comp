#version 450
// out[t][h][0..count) = x[t][h * head_dim + first ..) for each of the n_head heads of every row
// (a per-head slice: MLA's rope / no-rope split). One invocation per output element.
#include "common.glsl"

layout(std430, set = 0, binding = 0) readonly buffer X { float x[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params { uint n_head, head_dim, first, count, n_tok, x_stride; } p;

void main() {
    const uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i >= p.count * p.n_head * p.n_tok) return;
    const uint e = i % p.count, th = i / p.count;  // th = t * n_head + h
    const uint t = th / p.n_head, h = th % p.n_head;
    o[i] = x[t * p.x_stride + h * p.head_dim + p.first + e];
}
