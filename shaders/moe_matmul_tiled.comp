#version 450
// Grouped matmul for many tokens (prefill): the operands of moe_matmul.glsl, computed as one
// tiled matrix-matrix product per matrix of the stack, so each expert's weights are read once
// per tile of the token slots routed to it instead of once per slot.
//   Workgroup (x, y, z): rows [64x, 64x + 64) of matrix g = z, column tiles y, y + Y, ... of
//   the slots routed to g (Y = gl_NumWorkGroups.y).
// MoE (HAS_IDS): moe_route.comp has listed the slots per expert in `route`:
//   route[g] = first list entry of expert g, route[G + 1 + g] = its count,
//   route[2 (G + 1) + j] = slot index t * S + s;
// entry G collects the slots whose id is out of range: their outputs become NaN (visible, never
// a stray read), as in moe_matmul.glsl. Per-head (HAS_IDS false): matrix g takes slot g of every
// token.
#include "common.glsl"

layout(constant_id = 1) const uint TYPE = 0;
layout(constant_id = 2) const uint BLOCK = 1;
layout(constant_id = 3) const uint BLOCK_BYTES = 4;
layout(constant_id = 4) const bool HAS_IDS = true;
layout(constant_id = 5) const bool HAS_BIAS = false;
layout(constant_id = 6) const uint BN = 64;  // columns per tile: 16, 32 or 64

layout(std430, set = 0, binding = 0) readonly buffer Weights { uint wq[]; };
layout(std430, set = 0, binding = 1) readonly buffer X { float x[]; };
layout(std430, set = 0, binding = 2) readonly buffer Route { uint route[]; };
layout(std430, set = 0, binding = 3) readonly buffer Bias { float bias[]; };
layout(std430, set = 0, binding = 4) writeonly buffer Y { float y[]; };

layout(push_constant) uniform Params {
    uint K;          // elements per row (a multiple of 4 and of the block size)
    uint R;          // rows per matrix
    uint S;          // slots per token
    uint n_tok;
    uint G;          // matrices in the stack
    uint row_bytes;  // bytes per row
    uint x_stride;   // floats between tokens in x
    uint x_slot;     // floats between the slots' inputs (0: shared)
} p;

// Matrix gl_WorkGroupID.z's bias.
float finish(uint r, float v) { return HAS_BIAS ? v + bias[gl_WorkGroupID.z * p.R + r] : v; }

#include "matmul_tiled.glsl"

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint g = gl_WorkGroupID.z, row0 = gl_WorkGroupID.x * BM;
    const uint first = HAS_IDS ? route[g] : 0u;
    const uint count = HAS_IDS ? route[p.G + 1u + g] : p.n_tok;
    const uint list = 2u * (p.G + 1u);
    for (uint c0 = gl_WorkGroupID.y * BN; c0 < count; c0 += gl_NumWorkGroups.y * BN) {
        const uint n_cols = min(BN, count - c0);
        if (tid < n_cols) {  // BN <= WG
            const uint slot = HAS_IDS ? route[list + first + c0 + tid] : (c0 + tid) * p.S + g;
            const uint t = slot / p.S, s = slot % p.S;
            col_x[tid] = t * p.x_stride + s * p.x_slot;
            col_y[tid] = slot * p.R;
        }
        barrier();
        if (g == p.G) {  // out-of-range ids (uniform in the workgroup)
            for (uint e = tid; e < BM * n_cols; e += WG) {
                const uint r = row0 + e % BM;
                if (r < p.R) y[col_y[e / BM] + r] = uintBitsToFloat(0x7fc00000u);
            }
        } else {
            matmul_tile(g * p.R, row0, p.R, n_cols);
        }
        barrier();  // col_x / col_y are rewritten for the next tile
    }
}
