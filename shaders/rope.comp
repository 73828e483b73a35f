#version 450
// Rotary position embedding of x [n_tok][n_head][head_dim] (floats, rows of head_dim).
// Pairs are (2i, 2i+1) in normal mode (llama) and (i, i + n_dims/2) in neox mode (qwen2, gemma,
// gpt-oss); only the first n_dims dimensions rotate, the rest are copied. Pair i of the token at
// position pos turns by pos * freqs[i]; the host fills freqs[i] = freq_scale * freq_base^(-2i/n_dims)
// in double precision (freq_scale < 1: linear scaling), so no pow() of uneven accuracy runs here.
// YaRN mixes the scaled and unscaled angle of each pair by a ramp that depends on the pair only,
// so it is part of the same table; its magnitude factor mscale multiplies cos and sin.
// One invocation per pair; out may be the same buffer as x.
#include "common.glsl"

layout(constant_id = 1) const bool NEOX = false;

layout(std430, set = 0, binding = 0) readonly buffer X { float x[]; };
layout(std430, set = 0, binding = 1) readonly buffer Pos { int pos[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Out { float o[]; };
layout(std430, set = 0, binding = 3) readonly buffer Freqs { float freqs[]; };

layout(push_constant) uniform Params {
    uint head_dim, n_head, n_tok, n_dims;
    float mscale;
} p;

void main() {
    const uint half_dim = p.head_dim / 2u;  // pairs per head (head_dim is even)
    const uint idx = flat_group() * WG + gl_LocalInvocationID.x;
    if (idx >= half_dim * p.n_head * p.n_tok) return;
    const uint pair = idx % half_dim, head_row = idx / half_dim;  // head_row = tok * n_head + head
    const uint tok = head_row / p.n_head;
    const uint base = head_row * p.head_dim;
    uint a, b;
    if (NEOX) { a = pair; b = pair + p.n_dims / 2u; } else { a = 2u * pair; b = a + 1u; }
    if (pair >= p.n_dims / 2u) {  // not rotated: copy this pair of the tail
        a = p.n_dims + 2u * (pair - p.n_dims / 2u);
        b = a + 1u;
        o[base + a] = x[base + a];
        o[base + b] = x[base + b];
        return;
    }
    const float theta = float(pos[tok]) * freqs[pair];
    const float c = cos(theta) * p.mscale, s = sin(theta) * p.mscale;
    const float x0 = x[base + a], x1 = x[base + b];
    o[base + a] = x0 * c - x1 * s;
    o[base + b] = x0 * s + x1 * c;
}
