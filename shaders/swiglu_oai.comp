#version 450
// gpt-oss's clamped SwiGLU: x = min(gate, limit), y = clamp(up, -limit, limit),
// out = x * sigmoid(alpha * x) * (y + 1). One invocation per element.
#include "common.glsl"

layout(std430, set = 0, binding = 0) readonly buffer Gate { float g[]; };
layout(std430, set = 0, binding = 1) readonly buffer Up { float u[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params { uint n; float alpha, limit; } p;

void main() {
    const uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i >= p.n) return;
    const float x = min(g[i], p.limit);
    const float y = clamp(u[i], -p.limit, p.limit);
    o[i] = x / (1.0 + exp(-p.alpha * x)) * (y + 1.0);
}
