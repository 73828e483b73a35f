// Reading weights in their stored GGUF block format from a uint buffer (no 8- or 16-bit storage
// needed: bytes are unpacked from 32-bit words, so this runs on every Vulkan 1.2 device).
//
// The including shader declares the weight buffer as `uint wq[]` and the specialization
// constants TYPE (GGUF type id), BLOCK (elements per block) and BLOCK_BYTES (bytes per block);
// the host fills them from engine/quant/types.h, so the dead branches vanish at pipeline creation.
//
// load4(row, i) returns elements i .. i+3 of the row starting at byte `row` (i % 4 == 0). Four
// consecutive elements always share one block and one scale in every supported format. Layouts
// are those of the block structs in engine/quant/quant.h.

const uint T_F32 = 0u, T_F16 = 1u, T_Q4_0 = 2u, T_Q4_1 = 3u, T_Q5_0 = 6u, T_Q5_1 = 7u, T_Q8_0 = 8u,
           T_Q2_K = 10u, T_Q3_K = 11u, T_Q4_K = 12u, T_Q5_K = 13u, T_Q6_K = 14u, T_IQ4_NL = 20u,
           T_IQ4_XS = 23u, T_BF16 = 30u, T_MXFP4 = 39u;

uint rd8(uint b) { return (wq[b >> 2] >> ((b & 3u) * 8u)) & 0xffu; }
// b must be even (every 16-bit field of every block is).
uint rd16(uint b) { return (wq[b >> 2] >> ((b & 2u) * 8u)) & 0xffffu; }
// Four bytes at any byte offset, little-endian.
uint rd32(uint b) {
    const uint s = (b & 3u) * 8u;
    const uint lo = wq[b >> 2];
    return s == 0u ? lo : (lo >> s) | (wq[(b >> 2) + 1u] << (32u - s));
}
float rdh(uint b) { return unpackHalf2x16(rd16(b)).x; }

// The four bytes of v as unsigned / signed numbers, and its 4-bit fields at `shift` of each byte.
vec4 bytes_u(uint v) { return vec4(v & 0xffu, (v >> 8) & 0xffu, (v >> 16) & 0xffu, v >> 24); }
vec4 bytes_s(uint v) {
    const int s = int(v);
    return vec4(bitfieldExtract(s, 0, 8), bitfieldExtract(s, 8, 8), bitfieldExtract(s, 16, 8), bitfieldExtract(s, 24, 8));
}
uvec4 fields(uint v, uint shift, uint mask) {
    return uvec4(v >> shift, v >> (shift + 8u), v >> (shift + 16u), v >> (shift + 24u)) & mask;
}

const float kIq4nl[16] = float[16](-127., -104., -83., -65., -49., -35., -22., -10., 1., 13., 25., 38., 53., 69., 89., 113.);
const float kMxfp4[16] = float[16](0., 1., 2., 3., 4., 6., 8., 12., 0., -1., -2., -3., -4., -6., -8., -12.);
vec4 lut_iq4(uvec4 c) { return vec4(kIq4nl[c.x], kIq4nl[c.y], kIq4nl[c.z], kIq4nl[c.w]); }
vec4 lut_mxfp4(uvec4 c) { return vec4(kMxfp4[c.x], kMxfp4[c.y], kMxfp4[c.z], kMxfp4[c.w]); }

// E8M0 shared exponent of MXFP4, halved (the stored codes are doubled): 2^(e-128).
float e8m0_half(uint e) { return uintBitsToFloat(e < 2u ? (0x00200000u << e) : ((e - 1u) << 23)); }

// Q4_K / Q5_K: 6-bit scale (x) and min (y) of group g from the 12 scale bytes at s.
uvec2 scale_min_k4(uint s, uint g) {
    if (g < 4u) return uvec2(rd8(s + g) & 63u, rd8(s + g + 4u) & 63u);
    const uint b = rd8(s + g + 4u);
    return uvec2((b & 15u) | ((rd8(s + g - 4u) >> 6) << 4), (b >> 4) | ((rd8(s + g) >> 6) << 4));
}

vec4 load4(uint row, uint i) {
    if (TYPE == T_F32) {
        const uint w = (row >> 2) + i;
        return vec4(uintBitsToFloat(wq[w]), uintBitsToFloat(wq[w + 1u]), uintBitsToFloat(wq[w + 2u]),
                    uintBitsToFloat(wq[w + 3u]));
    }
    if (TYPE == T_F16) {
        const uint b = row + 2u * i;
        return vec4(unpackHalf2x16(rd32(b)), unpackHalf2x16(rd32(b + 4u)));
    }
    if (TYPE == T_BF16) {
        const uint b = row + 2u * i;
        const uint lo = rd32(b), hi = rd32(b + 4u);
        return vec4(uintBitsToFloat(lo << 16), uintBitsToFloat(lo & 0xffff0000u), uintBitsToFloat(hi << 16),
                    uintBitsToFloat(hi & 0xffff0000u));
    }
    const uint blk = row + (i / BLOCK) * BLOCK_BYTES;  // byte offset of the block
    const uint j = i % BLOCK;                          // first element within the block
    if (TYPE == T_Q8_0) return rdh(blk) * bytes_s(rd32(blk + 2u + j));
    if (TYPE == T_Q4_0 || TYPE == T_IQ4_NL || TYPE == T_Q4_1 || TYPE == T_MXFP4) {
        // 16 bytes of nibbles: element j in the low nibble of byte j, element j+16 in the high one.
        const uint qs = TYPE == T_Q4_1 ? 4u : TYPE == T_MXFP4 ? 1u : 2u;
        const uvec4 c = fields(rd32(blk + qs + (j & 15u)), j < 16u ? 0u : 4u, 15u);
        if (TYPE == T_Q4_0) return rdh(blk) * (vec4(c) - 8.0);
        if (TYPE == T_IQ4_NL) return rdh(blk) * lut_iq4(c);
        if (TYPE == T_MXFP4) return e8m0_half(rd8(blk)) * lut_mxfp4(c);
        return rdh(blk) * vec4(c) + rdh(blk + 2u);  // Q4_1
    }
    if (TYPE == T_Q5_0 || TYPE == T_Q5_1) {
        const uint qh = TYPE == T_Q5_0 ? 2u : 4u;  // then 16 bytes of low nibbles
        const uvec4 lo = fields(rd32(blk + qh + 4u + (j & 15u)), j < 16u ? 0u : 4u, 15u);
        const uvec4 hi = (uvec4(rd32(blk + qh)) >> uvec4(j, j + 1u, j + 2u, j + 3u)) & 1u;
        const vec4 q = vec4(lo | (hi << 4));
        if (TYPE == T_Q5_0) return rdh(blk) * (q - 16.0);
        return rdh(blk) * q + rdh(blk + 2u);
    }
    if (TYPE == T_Q2_K) {
        // scales[16] at 0, qs[64] at 16, d at 80, dmin at 82. Element 128h + 32k + e: 2 bits at
        // 2k of qs[32h + e]; group j/16 has scale = low nibble, min = high nibble of scales[j/16].
        const uint h = j / 128u, k = (j / 32u) % 4u, e = j % 32u;
        const uint sm = rd8(blk + j / 16u);
        const vec4 q = vec4(fields(rd32(blk + 16u + 32u * h + e), 2u * k, 3u));
        return rdh(blk + 80u) * float(sm & 15u) * q - rdh(blk + 82u) * float(sm >> 4);
    }
    if (TYPE == T_Q3_K) {
        // hmask[32] at 0, qs[64] at 32, scales[12] at 96, d at 108. Element 128h + 32k + e:
        // 2 low bits as Q2_K, and 4 is subtracted when bit 4h+k of hmask[e] is clear.
        const uint h = j / 128u, k = (j / 32u) % 4u, e = j % 32u, g = j / 16u;
        const vec4 q = vec4(fields(rd32(blk + 32u + 32u * h + e), 2u * k, 3u));
        const vec4 m = vec4(fields(rd32(blk + e), 4u * h + k, 1u));
        const uint lo = g < 8u ? rd8(blk + 96u + g) & 15u : rd8(blk + 96u + g - 8u) >> 4;
        const uint hi = (rd8(blk + 96u + 8u + g % 4u) >> (2u * (g / 4u))) & 3u;
        const float sc = float(int(lo | (hi << 4)) - 32);
        return rdh(blk + 108u) * sc * (q - 4.0 * (1.0 - m));
    }
    if (TYPE == T_Q4_K || TYPE == T_Q5_K) {
        // d at 0, dmin at 2, scales[12] at 4, (Q5_K: qh[32] at 16), qs[128] after. Element
        // 64c + 32h + l: nibble h of qs[32c + l], group g = 2c + h (Q5_K: bit g of qh[l] is bit 4).
        const uint g = j / 32u, l = j % 32u;
        const uvec2 sm = scale_min_k4(blk + 4u, g);
        const uint qs = TYPE == T_Q4_K ? 16u : 48u;
        uvec4 c = fields(rd32(blk + qs + 32u * (g / 2u) + l), 4u * (g % 2u), 15u);
        if (TYPE == T_Q5_K) c |= fields(rd32(blk + 16u + l), g, 1u) << 4;
        return rdh(blk) * float(sm.x) * vec4(c) - rdh(blk + 2u) * float(sm.y);
    }
    if (TYPE == T_Q6_K) {
        // ql[128] at 0, qh[64] at 128, scales[16] (int8) at 192, d at 208. Element 128h + 32k + l:
        // low nibble from ql[64h + l + 32(k&1)] (high nibble when k >= 2), top 2 bits at 2k of
        // qh[32h + l]; x = d * scales[j/16] * (q - 32).
        const uint h = j / 128u, k = (j / 32u) % 4u, l = j % 32u;
        const uvec4 lo = fields(rd32(blk + 64u * h + l + 32u * (k & 1u)), 4u * (k >> 1), 15u);
        const uvec4 hi = fields(rd32(blk + 128u + 32u * h + l), 2u * k, 3u);
        const float sc = float(bitfieldExtract(int(rd8(blk + 192u + j / 16u)), 0, 8));
        return rdh(blk + 208u) * sc * (vec4(lo | (hi << 4)) - 32.0);
    }
    if (TYPE == T_IQ4_XS) {
        // d at 0, scales_h (u16) at 2, scales_l[4] at 4, qs[128] at 8. Group g = j/32 has
        // ls = (nibble g%2 of scales_l[g/2]) | (bits 2g..2g+1 of scales_h) << 4, scale d*(ls-32);
        // its 16 bytes at qs + 16g are nibble-coded as IQ4_NL.
        const uint g = j / 32u, e = j % 32u;
        const uint ls = ((rd8(blk + 4u + g / 2u) >> (4u * (g % 2u))) & 15u) | (((rd16(blk + 2u) >> (2u * g)) & 3u) << 4);
        const uvec4 c = fields(rd32(blk + 8u + 16u * g + (e & 15u)), e < 16u ? 0u : 4u, 15u);
        return rdh(blk) * float(int(ls) - 32) * lut_iq4(c);
    }
    return vec4(uintBitsToFloat(0x7fc00000u));  // unsupported type: NaN (the host never builds this pipeline)
}
