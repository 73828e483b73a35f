#version 450
// out[i] = 1 / (1 + e^-a[i]) (sigmoid expert gating). One invocation per element.
#include "common.glsl"

layout(std430, set = 0, binding = 0) readonly buffer A { float a[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params { uint n; } p;

void main() {
    const uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i < p.n) o[i] = 1.0 / (1.0 + exp(-a[i]));
}
