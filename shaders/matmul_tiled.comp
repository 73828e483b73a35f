#version 450
// y = W x for many tokens (prefill): the same operands as matmul_vec, computed in tiles of
// BM weight rows by BN tokens. Each step stages a BK-wide slice of W (decoded from its block
// format, four elements per thread) and of x in shared memory; each of the 256 threads then
// accumulates a 4x4 patch of the tile. Edges (N, n_tok not multiples of the tile) are masked.
#include "common.glsl"

layout(constant_id = 1) const uint TYPE = 0;
layout(constant_id = 2) const uint BLOCK = 1;
layout(constant_id = 3) const uint BLOCK_BYTES = 4;
const uint BM = 64, BN = 64, BK = 16;  // needs WG == 256: (BM/4) * (BN/4) threads

layout(std430, set = 0, binding = 0) readonly buffer Weights { uint wq[]; };
layout(std430, set = 0, binding = 1) readonly buffer X { float x[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Y { float y[]; };

layout(push_constant) uniform Params {
    uint K, N, n_tok, row_bytes, x_stride, y_stride;
} p;

#include "quant.glsl"

shared float ws[BM][BK + 1];
shared float xs[BN][BK + 1];

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint row0 = gl_WorkGroupID.x * BM, tok0 = gl_WorkGroupID.y * BN;
    const uint tr = tid / (BN / 4u), tc = tid % (BN / 4u);  // this thread: rows tr + 16i, tokens tc + 16j

    float acc[4][4];
    for (uint i = 0; i < 4u; ++i)
        for (uint j = 0; j < 4u; ++j) acc[i][j] = 0.0;

    for (uint k0 = 0; k0 < p.K; k0 += BK) {
        // W slice: BM rows x BK/4 quads, one quad per thread.
        {
            const uint r = tid / (BK / 4u), q = tid % (BK / 4u);
            const uint k = k0 + 4u * q;
            vec4 w = vec4(0.0);
            if (row0 + r < p.N && k < p.K) w = load4((row0 + r) * p.row_bytes, k);
            ws[r][4u * q] = w.x; ws[r][4u * q + 1u] = w.y; ws[r][4u * q + 2u] = w.z; ws[r][4u * q + 3u] = w.w;
        }
        // x slice: BN tokens x BK floats, BN*BK/256 per thread.
        for (uint e = tid; e < BN * BK; e += WG) {
            const uint t = e / BK, kk = e % BK;
            xs[t][kk] = (tok0 + t < p.n_tok && k0 + kk < p.K) ? x[(tok0 + t) * p.x_stride + k0 + kk] : 0.0;
        }
        barrier();
        for (uint kk = 0; kk < BK; ++kk) {
            float a[4], b[4];
            for (uint i = 0; i < 4u; ++i) a[i] = ws[tr + 16u * i][kk];
            for (uint j = 0; j < 4u; ++j) b[j] = xs[tc + 16u * j][kk];
            for (uint i = 0; i < 4u; ++i)
                for (uint j = 0; j < 4u; ++j) acc[i][j] += a[i] * b[j];
        }
        barrier();
    }
    for (uint i = 0; i < 4u; ++i) {
        const uint r = row0 + tr + 16u * i;
        if (r >= p.N) continue;
        for (uint j = 0; j < 4u; ++j) {
            const uint t = tok0 + tc + 16u * j;
            if (t < p.n_tok) y[t * p.y_stride + r] = acc[i][j];
        }
    }
}
