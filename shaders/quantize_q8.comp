#version 450
// The 8-bit codes of x for the integer-dot-product matvec (matmul_vec_dot*.comp): per group of G
// (32, or 256 for the K-quants) elements d = amax / 127 and codes roundEven(x * 127 / amax) (zero for a zero group), the rounding
// of quantize_x.comp and of the CPU kernels. q holds every token's K / 4 words of four signed bytes
// (element order, low byte first), then from word p.s_off one f32 d per group. One invocation per
// group of G. Re-quantizing an x that quantize_x already rounded gives the same codes.
#include "common.glsl"

layout(std430, set = 0, binding = 0) readonly buffer X { float x[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Q { uint q[]; };

layout(push_constant) uniform Params { uint n_groups, s_off, G; } p;

void main() {
    const uint g = flat_group() * WG + gl_LocalInvocationID.x;
    if (g >= p.n_groups) return;
    const uint b = g * p.G;
    float amax = 0.0;
    for (uint i = 0; i < p.G; ++i) amax = max(amax, abs(x[b + i]));
    const float id = amax > 0.0 ? 127.0 / amax : 0.0;
    for (uint k = 0; k < p.G / 4u; ++k) {
        uint w = 0u;
        for (uint e = 0; e < 4u; ++e) w |= (uint(int(roundEven(x[b + 4u * k + e] * id))) & 0xffu) << (8u * e);
        q[b / 4u + k] = w;
    }
    q[p.s_off + g] = floatBitsToUint(amax / 127.0);
}
