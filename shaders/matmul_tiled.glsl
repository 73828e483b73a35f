// The tile loop of matmul_tiled.comp (one weight matrix, consecutive tokens) and
// moe_matmul_tiled.comp (a stack of matrices, each applied to the token slots routed to it).
// A workgroup computes BM weight rows by BN columns (a column is one input vector x and one
// output vector y). Each step stages a BK-wide slice of W (decoded from its block format, four
// elements per thread) and of the columns' x in shared memory; each of the 256 threads then
// accumulates a patch of 4 rows by BN / 16 columns. Edges (rows, columns, K) are masked.
//
// The including shader declares `uint wq[]`, `float x[]`, `float y[]`, the push constants
// p.K and p.row_bytes, the specialization constants of quant.glsl and BN (16, 32 or 64: fewer
// columns waste less work when a matrix has few of them, as MoE experts do), then (after this file)
// fills col_x / col_y (float offsets of each column's x and y) and calls matmul_tile. It defines
// `float finish(uint r, float v)` before including: the value stored for row r (a bias added).
#include "quant.glsl"

const uint BM = 64, BK = 16;  // needs WG == 256: (BM / 4) * 16 threads
const uint PN = BN / 16u;     // columns per thread

shared float ws[BM][BK + 1];
shared float xs[BN][BK + 1];
shared uint col_x[BN], col_y[BN];

// Rows [row0, row0 + BM) of the matrix whose row 0 is weight row w_row0 (rows < n_rows), times
// the tile's first n_cols columns (col_x / col_y filled, a barrier passed).
void matmul_tile(uint w_row0, uint row0, uint n_rows, uint n_cols) {
    const uint tid = gl_LocalInvocationID.x;
    const uint tr = tid / 16u, tc = tid % 16u;  // this thread: rows tr + 16i, columns tc + 16j

    float acc[4][PN];
    for (uint i = 0; i < 4u; ++i)
        for (uint j = 0; j < PN; ++j) acc[i][j] = 0.0;

    for (uint k0 = 0; k0 < p.K; k0 += BK) {
        // W slice: BM rows x BK/4 quads, one quad per thread.
        {
            const uint r = tid / (BK / 4u), q = tid % (BK / 4u);
            const uint k = k0 + 4u * q;
            vec4 w = vec4(0.0);
            if (row0 + r < n_rows && k < p.K) w = load4((w_row0 + row0 + r) * p.row_bytes, k);
            ws[r][4u * q] = w.x; ws[r][4u * q + 1u] = w.y; ws[r][4u * q + 2u] = w.z; ws[r][4u * q + 3u] = w.w;
        }
        // x slice: BN columns x BK floats, BN*BK/256 per thread.
        for (uint e = tid; e < BN * BK; e += WG) {
            const uint c = e / BK, kk = e % BK;
            xs[c][kk] = (c < n_cols && k0 + kk < p.K) ? x[col_x[c] + k0 + kk] : 0.0;
        }
        barrier();
        for (uint kk = 0; kk < BK; ++kk) {
            float a[4], b[PN];
            for (uint i = 0; i < 4u; ++i) a[i] = ws[tr + 16u * i][kk];
            for (uint j = 0; j < PN; ++j) b[j] = xs[tc + 16u * j][kk];
            for (uint i = 0; i < 4u; ++i)
                for (uint j = 0; j < PN; ++j) acc[i][j] += a[i] * b[j];
        }
        barrier();
    }
    for (uint i = 0; i < 4u; ++i) {
        const uint r = row0 + tr + 16u * i;
        if (r >= n_rows) continue;
        for (uint j = 0; j < PN; ++j) {
            const uint c = tc + 16u * j;
            if (c < n_cols) y[col_y[c] + r] = finish(r, acc[i][j]);
        }
    }
}
