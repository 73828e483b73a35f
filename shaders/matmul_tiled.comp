#version 450
// y = W x for many tokens (prefill): the same operands as matmul_vec, computed in tiles of BM
// weight rows by BN tokens (the loop is in matmul_tiled.glsl).
#include "common.glsl"

layout(constant_id = 1) const uint TYPE = 0;
layout(constant_id = 2) const uint BLOCK = 1;
layout(constant_id = 3) const uint BLOCK_BYTES = 4;
const uint BN = 64;  // tokens per tile

layout(std430, set = 0, binding = 0) readonly buffer Weights { uint wq[]; };
layout(std430, set = 0, binding = 1) readonly buffer X { float x[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Y { float y[]; };

layout(push_constant) uniform Params {
    uint K, N, n_tok, row_bytes, x_stride, y_stride;
} p;

float finish(uint r, float v) { return v; }

#include "matmul_tiled.glsl"

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint row0 = gl_WorkGroupID.x * BM, tok0 = gl_WorkGroupID.y * BN;
    if (tid < BN) {
        col_x[tid] = (tok0 + tid) * p.x_stride;
        col_y[tid] = (tok0 + tid) * p.y_stride;
    }
    barrier();
    matmul_tile(0u, row0, p.N, min(BN, p.n_tok - tok0));
}
