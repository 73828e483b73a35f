#version 450
// out = x with each group of G elements of every row rounded to 8-bit codes and back:
// d = amax(group) / 127, out = roundEven(x * 127 / amax) * d (a zero group stays zero). This is
// the activation rounding of the integer dot products that the CPU kernels and llama.cpp run
// against quantized weights (8-bit codes per 32 elements, or per 256 for the K-quants); the
// matmul shaders then read the rounded x, so expert routing and other near-ties see the numbers
// the reference saw. One invocation per group; out may be x.
#include "common.glsl"

layout(std430, set = 0, binding = 0) readonly buffer X { float x[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params { uint n_groups, G; } p;  // rows of K: K / G groups each

void main() {
    const uint g = flat_group() * WG + gl_LocalInvocationID.x;
    if (g >= p.n_groups) return;
    const uint b = g * p.G;
    float amax = 0.0;
    for (uint i = 0; i < p.G; ++i) amax = max(amax, abs(x[b + i]));
    const float d = amax / 127.0;
    const float id = amax > 0.0 ? 127.0 / amax : 0.0;
    for (uint i = 0; i < p.G; ++i) o[b + i] = roundEven(x[b + i] * id) * d;
}
