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
// per 16). glslc of Debian 12 (glslang
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
    // Units of 32 elements (a block of Q8_0 / Q4_0, a group of Q4_K / Q6_K); x's scales are per
    // XG elements (32, or 256 for the K-quants as quantize_x rounds them).
    const uint XG = (TYPE == T_Q4_K || TYPE == T_Q6_K) ? 256u : 32u;
    const uint n_units = p.K / 32u;
    for (uint u = lane; valid && u < n_units; u += TPR) {
        const uint blk = base + (32u * u / BLOCK) * BLOCK_BYTES;  // byte offset of the block
        const uint j = (32u * u) % BLOCK;                         // first element within the block
        uint wc[8];  // the unit's 32 weight codes as bytes, in element order
        float dw = 0.0, mw = 0.0;  // weight scale; Q4_K: dmin * min (subtracted per x code)
        int sc0 = 1, sc1 = 1;      // Q6_K: the int8 scales of the unit's two groups of 16
        if (TYPE == T_Q8_0) {
            dw = rdh(blk);
            for (uint k = 0; k < 8u; ++k) wc[k] = rd32(blk + 2u + 4u * k);
        } else if (TYPE == T_Q4_0) {  // element j in the low nibble of byte j, j + 16 in the high one; code - 8
            dw = rdh(blk);
            for (uint k = 0; k < 4u; ++k) {
                const uint v = rd32(blk + 2u + 4u * k);
                const uint lo = v & 0x0f0f0f0fu, hi = (v >> 4) & 0x0f0f0f0fu;
                // Per byte c in 0..15: c - 8 as a signed byte = (c ^ 8) | 0xf0 where bit 3 is clear.
                wc[k] = (lo ^ 0x08080808u) | ((~lo & 0x08080808u) * 0x1eu);
                wc[k + 4u] = (hi ^ 0x08080808u) | ((~hi & 0x08080808u) * 0x1eu);
            }
        } else if (TYPE == T_Q4_K) {  // group g = j/32: nibble g%2 of qs[32(g/2) + l] (0..15, unsigned)
            const uint g = j / 32u;
            const uvec2 sm = scale_min_k4(blk + 4u, g);
            dw = rdh(blk) * float(sm.x);
            mw = rdh(blk + 2u) * float(sm.y);
            for (uint k = 0; k < 8u; ++k) wc[k] = (rd32(blk + 16u + 32u * (g / 2u) + 4u * k) >> (4u * (g % 2u))) & 0x0f0f0f0fu;
        } else {  // Q6_K, j = 128h + 32k: 6-bit codes as in quant.glsl, minus 32
            const uint h = j / 128u, k2 = (j / 32u) % 4u;
            dw = rdh(blk + 208u);
            sc0 = bitfieldExtract(int(rd8(blk + 192u + j / 16u)), 0, 8);
            sc1 = bitfieldExtract(int(rd8(blk + 193u + j / 16u)), 0, 8);
            for (uint k = 0; k < 8u; ++k) {
                const uint lo = (rd32(blk + 64u * h + 32u * (k2 & 1u) + 4u * k) >> (4u * (k2 >> 1))) & 0x0f0f0f0fu;
                const uint hi = (rd32(blk + 128u + 32u * h + 4u * k) >> (2u * k2)) & 0x03030303u;
                const uint q = lo | (hi << 4);
                // Per byte q in 0..63: q - 32 as a signed byte = (q ^ 32) | 0xc0 where bit 5 is clear.
                wc[k] = (q ^ 0x20202020u) | ((~q & 0x20202020u) * 6u);
            }
        }
        for (uint c = 0; c < NCOL; ++c) {
            if (c < nc) {
                const uint xo = (tok0 + c) * p.x_stride + 8u * u;
                const float dx = uintBitsToFloat(xq[p.xs_off + (tok0 + c) * (p.K / XG) + 32u * u / XG]);
                int s0 = 0, s1 = 0;
                for (uint k = 0; k < 4u; ++k) s0 += sdot4x8(wc[k], xq[xo + k], 0);
                for (uint k = 4; k < 8u; ++k) s1 += sdot4x8(wc[k], xq[xo + k], 0);
                if (TYPE == T_Q4_K) {
                    int xs = 0;  // the sum of x's codes, for the group's min
                    for (uint k = 0; k < 8u; ++k) xs += sdot4x8(0x01010101u, xq[xo + k], 0);
                    acc[c] += dx * (dw * float(s0 + s1) - mw * float(xs));
                } else {
                    acc[c] += dx * dw * float(s0 * sc0 + s1 * sc1);
                }
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
