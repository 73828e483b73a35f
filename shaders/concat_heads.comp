#version 450
// out row t, head h = a's head h (da floats) then b's head h (db floats), n_head heads per row.
// One invocation per output element.
#include "common.glsl"

layout(std430, set = 0, binding = 0) readonly buffer A { float a[]; };
layout(std430, set = 0, binding = 1) readonly buffer B { float b[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params { uint n_head, da, db, n_tok; } p;

void main() {
    const uint i = flat_group() * WG + gl_LocalInvocationID.x;
    const uint dh = p.da + p.db;
    if (i >= dh * p.n_head * p.n_tok) return;
    const uint e = i % dh, th = i / dh;  // th = t * n_head + h
    o[i] = e < p.da ? a[th * p.da + e] : b[th * p.db + (e - p.da)];
}
