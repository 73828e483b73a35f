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
// KILN_DOT (Q8_0 and Q4_0 weights): x is not floats but the 8-bit codes of quantize_q8.comp (per
// token K/4 words of four signed bytes, then at word xs_off one f32 scale per 32 elements). A
// thread takes a whole block of 32 per step, dots its weight codes with x's codes by the signed
// 4x8-bit packed integer dot product (OpSDot of SPV_KHR_integer_dot_product, Vulkan 1.3 core),
// accumulates the block in an int and adds float(sum) * d_w * d_x. glslc of Debian 12 (glslang
// 11.13) lacks GL_EXT_integer_dot_product, so the instruction is declared through
// GL_EXT_spirv_intrinsics (the including .comp).
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
    const uint n_blk = p.K / 32u;
    for (uint bi = lane; valid && bi < n_blk; bi += TPR) {
        const uint blk = base + bi * BLOCK_BYTES;
        const float dw = rdh(blk);
        uint wc[8];  // the block's 32 weight codes as signed bytes, in element order
        if (TYPE == T_Q8_0) {
            for (uint k = 0; k < 8u; ++k) wc[k] = rd32(blk + 2u + 4u * k);
        } else {  // Q4_0: element j in the low nibble of byte j, j + 16 in the high one; code - 8
            for (uint k = 0; k < 4u; ++k) {
                const uint v = rd32(blk + 2u + 4u * k);
                const uint lo = v & 0x0f0f0f0fu, hi = (v >> 4) & 0x0f0f0f0fu;
                // Per byte c in 0..15: c - 8 as a signed byte = (c ^ 8) | 0xf0 where bit 3 is clear.
                wc[k] = (lo ^ 0x08080808u) | ((~lo & 0x08080808u) * 0x1eu);
                wc[k + 4u] = (hi ^ 0x08080808u) | ((~hi & 0x08080808u) * 0x1eu);
            }
        }
        for (uint c = 0; c < NCOL; ++c) {
            if (c < nc) {
                const uint xo = (tok0 + c) * p.x_stride + 8u * bi;
                int s = 0;
                for (uint k = 0; k < 8u; ++k) s += sdot4x8(wc[k], xq[xo + k], 0);
                acc[c] += float(s) * dw * uintBitsToFloat(xq[p.xs_off + (tok0 + c) * (p.K / 32u) + bi]);
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
