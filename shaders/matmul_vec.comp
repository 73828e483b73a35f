#version 450
// y = W x for a few tokens (decode): W is N rows of K elements in a stored GGUF type (read in its
// block format, see quant.glsl), x is n_tok rows of K floats, y is n_tok rows of N floats.
// One workgroup per weight row and per group of up to NCOL tokens: each thread walks the row in
// steps of four elements, decodes them once and dots them with every token's x; the threads'
// partial sums meet in shared memory.
#include "common.glsl"

layout(constant_id = 1) const uint TYPE = 0;
layout(constant_id = 2) const uint BLOCK = 1;
layout(constant_id = 3) const uint BLOCK_BYTES = 4;
const uint NCOL = 8;

layout(std430, set = 0, binding = 0) readonly buffer Weights { uint wq[]; };
layout(std430, set = 0, binding = 1) readonly buffer X { float x[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Y { float y[]; };

layout(push_constant) uniform Params {
    uint K;          // elements per row (a multiple of 4 and of the block size)
    uint N;          // rows of W
    uint n_tok;      // tokens
    uint row_bytes;  // bytes per row of W
    uint x_stride;   // floats between tokens in x
    uint y_stride;   // floats between tokens in y
} p;

#include "quant.glsl"

shared float red[NCOL][WG];

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint row = gl_WorkGroupID.x + gl_NumWorkGroups.x * gl_WorkGroupID.z;
    const uint tok0 = gl_WorkGroupID.y * NCOL;
    if (row >= p.N) return;  // uniform across the workgroup
    const uint nc = min(NCOL, p.n_tok - tok0);

    float acc[NCOL];
    for (uint c = 0; c < NCOL; ++c) acc[c] = 0.0;
    const uint base = row * p.row_bytes;
    // Loops over the constant NCOL (masked by nc) so that acc stays in registers: an index
    // unknown at compile time would put the array in memory on some drivers (lavapipe).
    for (uint i = 4u * tid; i < p.K; i += 4u * WG) {
        const vec4 w = load4(base, i);
        for (uint c = 0; c < NCOL; ++c) {
            if (c < nc) {
                const uint xo = (tok0 + c) * p.x_stride + i;
                acc[c] += dot(w, vec4(x[xo], x[xo + 1u], x[xo + 2u], x[xo + 3u]));
            }
        }
    }
    // One barrier, then thread c sums token c's partial sums: cheaper than a log2(WG)-barrier tree
    // where barriers are expensive (lavapipe runs them as coroutine switches). A subgroup-add
    // variant is the next step on devices with subgroup arithmetic.
    for (uint c = 0; c < NCOL; ++c) red[c][tid] = acc[c];
    barrier();
    if (tid < nc) {
        float s = 0.0;
        for (uint j = 0; j < WG; ++j) s += red[tid][j];
        y[(tok0 + tid) * p.y_stride + row] = s;
    }
}
