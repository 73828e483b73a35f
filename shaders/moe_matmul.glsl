// The body of moe_matmul.comp and moe_matmul_subgroup.comp (which defines KILN_SUBGROUP first:
// the threads' partial sums meet by subgroupAdd, then one per subgroup in shared memory).
// Grouped matrix-vector products over a stack of G matrices (R rows of K elements each, in a
// stored GGUF type, packed one after another): for token t and slot s,
//   y[t][s][r] = W[g][r] . x(t, s) (+ bias[g][r]),
// with g = ids[t][s] (MoE: the experts the router chose) or g = s (HAS_IDS false: per-head
// projections, one matrix per head). x(t, s) is x[t] (shared by the slots, x_slot = 0) or the
// slot's own K floats (x_slot = K). Only the chosen matrices' rows are read.
// One workgroup per output element (r, t, s): the threads walk the row in steps of four
// elements and meet in shared memory (or by subgroupAdd), as in matmul_vec.glsl.
// KILN_DOT (moe_matmul_dot*.comp; Q8_0, Q4_0, Q4_K, Q6_K weights): x is the 8-bit codes of
// quantize_q8.comp of x's rows (x_stride / x_slot then count words: a quarter of the floats) and
// the threads walk the row in units of 32 by integer dot products, as matmul_vec.glsl does.
#include "common.glsl"

layout(constant_id = 1) const uint TYPE = 0;
layout(constant_id = 2) const uint BLOCK = 1;
layout(constant_id = 3) const uint BLOCK_BYTES = 4;
layout(constant_id = 4) const bool HAS_IDS = true;
layout(constant_id = 5) const bool HAS_BIAS = false;

layout(std430, set = 0, binding = 0) readonly buffer Weights { uint wq[]; };
#ifdef KILN_DOT
layout(std430, set = 0, binding = 1) readonly buffer X { uint xq[]; };
#else
layout(std430, set = 0, binding = 1) readonly buffer X { float x[]; };
#endif
layout(std430, set = 0, binding = 2) readonly buffer Ids { int ids[]; };
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
    uint xs_off;     // KILN_DOT: word of the first scale in xq
} p;

#include "quant.glsl"
#ifdef KILN_DOT
#include "dot.glsl"
#endif

shared float red[WG];

void main() {
    const uint idx = flat_group();  // (t * S + s) * R + r
    if (idx >= p.R * p.S * p.n_tok) return;  // uniform across the workgroup
    const uint tid = gl_LocalInvocationID.x;
    const uint r = idx % p.R, pair = idx / p.R;
    const uint t = pair / p.S, s = pair % p.S;
    const int g = HAS_IDS ? ids[pair] : int(s);
    if (g < 0 || uint(g) >= p.G) {  // a bad expert id is a visible NaN, never a stray read
        if (tid == 0u) y[idx] = uintBitsToFloat(0x7fc00000u);
        return;
    }
    const uint base = (uint(g) * p.R + r) * p.row_bytes;
    const uint xb = t * p.x_stride + s * p.x_slot;
    float acc = 0.0;
#ifdef KILN_DOT
    // x's scales: one per XG elements of each row of x_stride words (4 x_stride elements).
    const uint sb = p.xs_off + (t * 4u * p.x_stride + s * 4u * p.x_slot) / XG;
    for (uint u = tid; u < p.K / 32u; u += WG)
        acc += unit_dot(load_unit(base, u), xb + 8u * u, uintBitsToFloat(xq[sb + 32u * u / XG]));
#else
    for (uint i = 4u * tid; i < p.K; i += 4u * WG)
        acc += dot(load4(base, i), vec4(x[xb + i], x[xb + i + 1u], x[xb + i + 2u], x[xb + i + 3u]));
#endif
#ifdef KILN_SUBGROUP
    const float part = subgroupAdd(acc);
    if (subgroupElect()) red[gl_SubgroupID] = part;
    barrier();
    const uint n_part = gl_NumSubgroups;
#else
    red[tid] = acc;
    barrier();
    const uint n_part = WG;
#endif
    if (tid == 0u) {
        float sum = 0.0;
        for (uint j = 0; j < n_part; ++j) sum += red[j];
        y[idx] = HAS_BIAS ? sum + bias[uint(g) * p.R + r] : sum;
    }
}
