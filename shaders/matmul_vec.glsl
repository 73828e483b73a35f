// The body of matmul_vec.comp and matmul_vec_subgroup.comp (which defines KILN_SUBGROUP first), and
// of matmul_vec_dot*.comp (KILN_DOT: integer dot products, see below).
//
// y = W x for a few tokens (decode): W is N rows of K elements in a stored GGUF type (read in its
// block format, see quant.glsl), x is n_tok rows of K floats, y is n_tok rows of N floats.
// One workgroup per ROWS weight rows and per group of up to NCOL tokens: WG / ROWS threads per
// row each walk it in steps of four elements, decode them once and dot them with every token's x.
// The threads' partial sums of a row then meet:
//  - plain: in shared memory, one barrier, then a thread per token adds its row's partial sums;
//  - KILN_SUBGROUP: subgroupAdd within each subgroup, its first invocation writes one partial per
//    (token, row) to shared memory, one barrier, then a thread per token adds gl_NumSubgroups of
//    them. Rows are reduced separately (a thread of another row adds 0), so nothing is assumed
//    about how invocations are grouped into subgroups.
//
// KILN_DOT (Q8_0, Q4_0, Q4_K, Q6_K weights): x is not floats but the 8-bit codes of quantize_q8.comp
// (per token K/4 words of four signed bytes, then at word xs_off one f32 scale per 32 elements,
// 256 for the K-quants). A thread takes 32 elements per step (a block, or a K-quant group), dots
// its weight codes with x's codes by the signed 4x8-bit packed integer dot product (OpSDot of
// SPV_KHR_integer_dot_product, Vulkan 1.3 core), accumulates in an int and adds the sum times
// the weight and x scales (Q4_K: minus dmin * min * the sum of x's codes; Q6_K: one int8 scale
// per 16): see dot.glsl.
#include "common.glsl"

layout(constant_id = 1) const uint TYPE = 0;
layout(constant_id = 2) const uint BLOCK = 1;
layout(constant_id = 3) const uint BLOCK_BYTES = 4;
layout(constant_id = 4) const uint ROWS = 1;  // rows per workgroup; divides WG
const uint NCOL = 8;
const uint TPR = WG / ROWS;  // threads per row

layout(std430, set = 0, binding = 0) readonly buffer Weights { uint wq[]; };
#ifdef KILN_DOT
layout(std430, set = 0, binding = 1) readonly buffer X { uint xq[]; };
#else
layout(std430, set = 0, binding = 1) readonly buffer X { float x[]; };
#endif
layout(std430, set = 0, binding = 2) writeonly buffer Y { float y[]; };

layout(push_constant) uniform Params {
    uint K;          // elements per row (a multiple of 4 and of the block size)
    uint N;          // rows of W
    uint n_tok;      // tokens
    uint row_bytes;  // bytes per row of W
    uint x_stride;   // floats between tokens in x
    uint y_stride;   // floats between tokens in y
    uint xs_off;     // KILN_DOT: word of the first scale in xq (x_stride is then in words)
} p;

#include "quant.glsl"
#ifdef KILN_DOT
#include "dot.glsl"
#endif

#ifdef KILN_SUBGROUP
shared float red[NCOL * ROWS * WG];  // [token][row][subgroup]
#else
shared float red[NCOL * WG];         // [token][thread]
#endif

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint rr = tid / TPR, lane = tid % TPR;
    const uint row = (gl_WorkGroupID.x + gl_NumWorkGroups.x * gl_WorkGroupID.z) * ROWS + rr;
    const uint tok0 = gl_WorkGroupID.y * NCOL;
    const uint nc = min(NCOL, p.n_tok - tok0);
    const bool valid = row < p.N;  // the last workgroup's rows may pass N: no early return (barrier)

    float acc[NCOL];
    for (uint c = 0; c < NCOL; ++c) acc[c] = 0.0;
    const uint base = row * p.row_bytes;
    // Loops over the constant NCOL (masked by nc) so that acc stays in registers: an index
    // unknown at compile time would put the array in memory on some drivers (lavapipe).
#ifdef KILN_DOT
    for (uint u = lane; valid && u < p.K / 32u; u += TPR) {
        const Unit w = load_unit(base, u);
        for (uint c = 0; c < NCOL; ++c) {
            if (c < nc) {
                const float dx = uintBitsToFloat(xq[p.xs_off + (tok0 + c) * (p.K / XG) + 32u * u / XG]);
                acc[c] += unit_dot(w, (tok0 + c) * p.x_stride + 8u * u, dx);
            }
        }
    }
#else
    for (uint i = 4u * lane; valid && i < p.K; i += 4u * TPR) {
        const vec4 w = load4(base, i);
        for (uint c = 0; c < NCOL; ++c) {
            if (c < nc) {
                const uint xo = (tok0 + c) * p.x_stride + i;
                acc[c] += dot(w, vec4(x[xo], x[xo + 1u], x[xo + 2u], x[xo + 3u]));
            }
        }
    }
#endif
#ifdef KILN_SUBGROUP
    const uint sg = gl_SubgroupID, n_sg = gl_NumSubgroups;
    for (uint c = 0; c < NCOL; ++c) {
        if (c < nc) {  // uniform: the whole workgroup takes the same branch
            for (uint r = 0; r < ROWS; ++r) {
                const float s = subgroupAdd(r == rr ? acc[c] : 0.0);
                if (subgroupElect()) red[(c * ROWS + r) * WG + sg] = s;
            }
        }
    }
    barrier();
    if (lane < nc && valid) {
        float s = 0.0;
        for (uint j = 0; j < n_sg; ++j) s += red[(lane * ROWS + rr) * WG + j];
        y[(tok0 + lane) * p.y_stride + row] = s;
    }
#else
    // One barrier, then thread c of each row sums token c's partial sums: cheaper than a
    // log2(WG)-barrier tree where barriers are expensive (lavapipe runs them as coroutine switches).
    for (uint c = 0; c < NCOL; ++c) red[c * WG + tid] = acc[c];
    barrier();
    if (lane < nc && valid) {
        float s = 0.0;
        for (uint j = 0; j < TPR; ++j) s += red[lane * WG + rr * TPR + j];
        y[(tok0 + lane) * p.y_stride + row] = s;
    }
#endif
}
