#version 450
// out[i] = a[i] + b[i % nb]: b has as many elements as a or is repeated over a's rows (a bias or
// a norm weight). One invocation per element.
#include "common.glsl"

layout(std430, set = 0, binding = 0) readonly buffer A { float a[]; };
layout(std430, set = 0, binding = 1) readonly buffer B { float b[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params { uint n, nb; } p;

void main() {
    const uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i < p.n) o[i] = a[i] + b[i % p.nb];
}
