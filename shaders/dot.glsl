// Integer dot products of quantized weights with x's 8-bit codes (KILN_DOT in matmul_vec.glsl and
// moe_matmul.glsl), included after quant.glsl and the declaration of `uint xq[]`.
//
// sdot4x8(a, b, 0): the signed dot product of the four bytes of a and b (int8 x int8 summed to an
// int32), SPIR-V OpSDot (4450) with the PackedVectorFormat4x8Bit operand (0), capabilities
// DotProduct (6019) and DotProductInput4x8BitPacked (6018) of SPV_KHR_integer_dot_product.
// Declared through GL_EXT_spirv_intrinsics (the including .comp enables it) because the glslc of
// Debian 12 (glslang 11.13) does not know GL_EXT_integer_dot_product. Needs the device feature
// shaderIntegerDotProduct.
spirv_instruction(extensions = ["SPV_KHR_integer_dot_product"], capabilities = [6019, 6018], id = 4450)
int sdot4x8(uint a, uint b, spirv_literal int packed_format);

// Weights are taken in units of 32 elements (a block of Q8_0 / Q4_0, a group of Q4_K / Q6_K).
// x's codes (quantize_q8.comp) are K/4 words of four signed bytes per row, then one f32 scale
// per XG elements (32, or 256 for the K-quants as quantize_x rounds them).
const uint XG = (TYPE == T_Q4_K || TYPE == T_Q6_K) ? 256u : 32u;

struct Unit {
    uint wc[8];  // the unit's 32 weight codes as signed bytes (Q4_K: unsigned 0..15), element order
    float dw;    // weight scale
    float mw;    // Q4_K: dmin * min, subtracted per x code
    int sc0;     // Q6_K: the int8 scales of the unit's two groups of 16 (1 otherwise)
    int sc1;
};

// Unit u (elements 32u .. 32u + 31) of the weight row starting at byte `row`.
Unit load_unit(uint row, uint u) {
    Unit w;
    const uint blk = row + (32u * u / BLOCK) * BLOCK_BYTES;  // byte offset of the block
    const uint j = (32u * u) % BLOCK;                        // first element within the block
    w.mw = 0.0;
    w.sc0 = 1;
    w.sc1 = 1;
    if (TYPE == T_Q8_0) {
        w.dw = rdh(blk);
        for (uint k = 0; k < 8u; ++k) w.wc[k] = rd32(blk + 2u + 4u * k);
    } else if (TYPE == T_Q4_0) {  // element j in the low nibble of byte j, j + 16 in the high one; code - 8
        w.dw = rdh(blk);
        for (uint k = 0; k < 4u; ++k) {
            const uint v = rd32(blk + 2u + 4u * k);
            const uint lo = v & 0x0f0f0f0fu, hi = (v >> 4) & 0x0f0f0f0fu;
            // Per byte c in 0..15: c - 8 as a signed byte = (c ^ 8) | 0xf0 where bit 3 is clear.
            w.wc[k] = (lo ^ 0x08080808u) | ((~lo & 0x08080808u) * 0x1eu);
            w.wc[k + 4u] = (hi ^ 0x08080808u) | ((~hi & 0x08080808u) * 0x1eu);
        }
    } else if (TYPE == T_Q4_K) {  // group g = j/32: nibble g%2 of qs[32(g/2) + l] (0..15, unsigned)
        const uint g = j / 32u;
        const uvec2 sm = scale_min_k4(blk + 4u, g);
        w.dw = rdh(blk) * float(sm.x);
        w.mw = rdh(blk + 2u) * float(sm.y);
        for (uint k = 0; k < 8u; ++k) w.wc[k] = (rd32(blk + 16u + 32u * (g / 2u) + 4u * k) >> (4u * (g % 2u))) & 0x0f0f0f0fu;
    } else {  // Q6_K, j = 128h + 32k: 6-bit codes as in quant.glsl, minus 32
        const uint h = j / 128u, k2 = (j / 32u) % 4u;
        w.dw = rdh(blk + 208u);
        w.sc0 = bitfieldExtract(int(rd8(blk + 192u + j / 16u)), 0, 8);
        w.sc1 = bitfieldExtract(int(rd8(blk + 193u + j / 16u)), 0, 8);
        for (uint k = 0; k < 8u; ++k) {
            const uint lo = (rd32(blk + 64u * h + 32u * (k2 & 1u) + 4u * k) >> (4u * (k2 >> 1))) & 0x0f0f0f0fu;
            const uint hi = (rd32(blk + 128u + 32u * h + 4u * k) >> (2u * k2)) & 0x03030303u;
            const uint q = lo | (hi << 4);
            // Per byte q in 0..63: q - 32 as a signed byte = (q ^ 32) | 0xc0 where bit 5 is clear.
            w.wc[k] = (q ^ 0x20202020u) | ((~q & 0x20202020u) * 6u);
        }
    }
    return w;
}

// The unit dotted with x's 32 codes at word xo, whose scale is dx.
float unit_dot(Unit w, uint xo, float dx) {
    int s0 = 0, s1 = 0;
    for (uint k = 0; k < 4u; ++k) s0 += sdot4x8(w.wc[k], xq[xo + k], 0);
    for (uint k = 4; k < 8u; ++k) s1 += sdot4x8(w.wc[k], xq[xo + k], 0);
    if (TYPE == T_Q4_K) {
        int xs = 0;  // the sum of x's codes, for the group's min
        for (uint k = 0; k < 8u; ++k) xs += sdot4x8(0x01010101u, xq[xo + k], 0);
        return dx * (w.dw * float(s0 + s1) - w.mw * float(xs));
    }
    return dx * w.dw * float(s0 * w.sc0 + s1 * w.sc1);
}
