// Scalar reference conversions between float32 and the GGUF tensor types.
//
// These are the slow, obviously-correct versions: CPU/GPU kernels are tested against them, the
// GGUF loader uses them to expand tensors, and the quantizers make our test models. The block
// structs below are the exact on-disk layouts (little-endian, no padding), shared with kernels.
//
// Every function here works on whole rows: n must be a multiple of the type's block size.
#pragma once

#include <cstdint>
#include <cstring>

#include "quant/types.h"

namespace kiln {

// ---- scalar float formats ------------------------------------------------------------------

// IEEE binary16 -> binary32. Exact for every input (subnormals, inf, NaN payloads kept).
inline float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);  // inf or NaN
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);  // rebias 15 -> 127
    } else {
        // zero or subnormal: mant * 2^-24 is exact in float32
        const float f = static_cast<float>(mant) * 0x1p-24f;
        return sign ? -f : f;
    }
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// binary32 -> binary16, round to nearest, ties to even. Overflow gives inf, tiny values become
// subnormals or signed zero, NaN stays NaN (made quiet).
uint16_t fp32_to_fp16(float f);

// bfloat16 is the top half of a binary32.
inline float bf16_to_fp32(uint16_t h) {
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// binary32 -> bfloat16, round to nearest, ties to even; NaN stays NaN (made quiet).
uint16_t fp32_to_bf16(float f);

// MXFP4's shared scale is an E8M0 byte (a bare power of two, 2^(e-127)). The stored 4-bit codes
// are doubled (see kMxfp4Values), so decoding multiplies by half the scale: 2^(e-128).
inline float e8m0_to_fp32_half(uint8_t e) {
    const uint32_t bits = e < 2 ? (0x00200000u << e) : (static_cast<uint32_t>(e) - 1) << 23;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// ---- value grids ---------------------------------------------------------------------------

// IQ4_NL / IQ4_XS: the 16 non-uniform levels a 4-bit code selects (times the block scale).
inline constexpr int8_t kIq4nlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};
// MXFP4: the FP4 (E2M1) values 0, .5, 1, 1.5, 2, 3, 4, 6 and their negatives, stored doubled.
inline constexpr int8_t kMxfp4Values[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// ---- block layouts -------------------------------------------------------------------------
// fp16 fields are uint16_t holding binary16 bits. Codes are packed low nibble first.

constexpr int kQK = 32;    // elements per block of the legacy / IQ4_NL / MXFP4 formats
constexpr int kQKK = 256;  // elements per super-block of the K-quants and IQ4_XS

// Q4_0: x = d * (q - 8), q in 0..15. Byte j holds element j (low nibble) and j+16 (high).
struct block_q4_0 {
    uint16_t d;
    uint8_t qs[kQK / 2];
};
// Q4_1: x = d * q + m, q in 0..15; nibble order as Q4_0.
struct block_q4_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qs[kQK / 2];
};
// Q5_0: x = d * (q - 16), q in 0..31. Low 4 bits as Q4_0; bit i of qh (a little-endian u32) is
// bit 4 of element i.
struct block_q5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[kQK / 2];
};
// Q5_1: x = d * q + m with Q5_0's 5-bit packing.
struct block_q5_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qh[4];
    uint8_t qs[kQK / 2];
};
// Q8_0: x = d * q, q a signed byte per element.
struct block_q8_0 {
    uint16_t d;
    int8_t qs[kQK];
};
// Q8_1: as Q8_0, plus s = d * sum(q) (used by dot-product kernels against Q4_1/Q5_1).
struct block_q8_1 {
    uint16_t d;
    uint16_t s;
    int8_t qs[kQK];
};
// Q2_K: 16 groups of 16. scales[g]: low nibble = group scale, high nibble = group min;
// x = d*sc*q - dmin*m with q in 0..3. qs byte i of a 128-element half holds four 2-bit codes:
// bits 2k..2k+1 belong to element 32k + i of that half.
struct block_q2_K {
    uint8_t scales[kQKK / 16];
    uint8_t qs[kQKK / 4];
    uint16_t d;
    uint16_t dmin;
};
// Q3_K: 16 groups of 16 with signed 6-bit scales (packed in 12 bytes, stored +32);
// x = d * (sc - 32) * (q - 4*(hmask bit clear)), q's 2 low bits packed like Q2_K, the third bit in
// hmask: element 32k + i of the whole block has its bit in hmask[i] bit k.
struct block_q3_K {
    uint8_t hmask[kQKK / 8];
    uint8_t qs[kQKK / 4];
    uint8_t scales[12];
    uint16_t d;
};
// Q4_K: 8 groups of 32 with 6-bit scale and min (see unpack_scale_min_k4);
// x = d*sc*q - dmin*m, q in 0..15. Each 32-byte chunk of qs holds two groups: low nibbles the
// first, high nibbles the second.
struct block_q4_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qs[kQKK / 2];
};
// Q5_K: Q4_K plus a fifth bit: element 32g + i has its bit in qh[i] bit g.
struct block_q5_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qh[kQKK / 8];
    uint8_t qs[kQKK / 2];
};
// Q6_K: 16 groups of 16 with signed 8-bit scales; x = d * sc * (q - 32), q in 0..63. Per
// 128-element half: ql[0..63] low nibbles hold elements 0..63, high nibbles 64..127; qh[0..31]
// bits 2k..2k+1 are the top two bits of element 32k + i.
struct block_q6_K {
    uint8_t ql[kQKK / 2];
    uint8_t qh[kQKK / 4];
    int8_t scales[kQKK / 16];
    uint16_t d;
};
// Q8_K: x = d * q with a float32 scale; bsums[g] = sum of q over group g of 16 (for kernels).
struct block_q8_K {
    float d;
    int8_t qs[kQKK];
    int16_t bsums[kQKK / 16];
};
// IQ4_NL: x = d * kIq4nlValues[code]; nibble order as Q4_0.
struct block_iq4_nl {
    uint16_t d;
    uint8_t qs[kQK / 2];
};
// IQ4_XS: 8 groups of 32, each IQ4_NL-coded with scale d * (ls - 32); ls is 6 bits: low 4 in
// scales_l (group g: byte g/2, nibble g%2), high 2 in scales_h bits 2g..2g+1.
struct block_iq4_xs {
    uint16_t d;
    uint16_t scales_h;
    uint8_t scales_l[kQKK / 64];
    uint8_t qs[kQKK / 2];
};
// MXFP4 (OCP microscaling FP4): x = kMxfp4Values[code] * e8m0_to_fp32_half(e); nibbles as Q4_0.
struct block_mxfp4 {
    uint8_t e;
    uint8_t qs[kQK / 2];
};

static_assert(sizeof(block_q4_0) == 18 && sizeof(block_q4_1) == 20);
static_assert(sizeof(block_q5_0) == 22 && sizeof(block_q5_1) == 24);
static_assert(sizeof(block_q8_0) == 34 && sizeof(block_q8_1) == 36);
static_assert(sizeof(block_q2_K) == 84 && sizeof(block_q3_K) == 110);
static_assert(sizeof(block_q4_K) == 144 && sizeof(block_q5_K) == 176);
static_assert(sizeof(block_q6_K) == 210 && sizeof(block_q8_K) == 292);
static_assert(sizeof(block_iq4_nl) == 18 && sizeof(block_iq4_xs) == 136);
static_assert(sizeof(block_mxfp4) == 17);

// Q4_K / Q5_K: 8 six-bit scales and 8 six-bit mins packed in 12 bytes. Groups 0..3 keep theirs in
// the low 6 bits of bytes 0..3 (scale) and 4..7 (min); groups 4..7 keep the low 4 bits in the
// nibbles of bytes 8..11 and the top 2 bits in the spare top bits of bytes 0..7.
inline void unpack_scale_min_k4(int g, const uint8_t* s, uint8_t* sc, uint8_t* m) {
    if (g < 4) {
        *sc = s[g] & 63;
        *m = s[g + 4] & 63;
    } else {
        *sc = static_cast<uint8_t>((s[g + 4] & 0x0f) | ((s[g - 4] >> 6) << 4));
        *m = static_cast<uint8_t>((s[g + 4] >> 4) | ((s[g] >> 6) << 4));
    }
}

// Q3_K: sixteen 6-bit scales (stored +32) in 12 bytes. Low 4 bits: groups 0..7 in the low
// nibbles of bytes 0..7, groups 8..15 in the high nibbles. Top 2 bits: group g in byte 8 + g%4 at
// bit 2*(g/4). Returns the signed scale.
inline int unpack_scale_q3_K(int g, const uint8_t* s) {
    const int lo = g < 8 ? (s[g] & 0x0f) : (s[g - 8] >> 4);
    const int hi = (s[8 + g % 4] >> (2 * (g / 4))) & 3;
    return (lo | (hi << 4)) - 32;
}

// ---- rows ----------------------------------------------------------------------------------

// Decodes n elements of type t from src (n / block_size consecutive blocks, any alignment) into
// dst. Throws kiln::Error when t cannot be dequantized or n is not a multiple of the block size.
void dequantize_row(TensorType t, const void* src, float* dst, int64_t n);

// Encodes n floats into n / block_size blocks of type t at dst (any alignment). Reference
// quality-first quantizers (no importance matrix). Throws kiln::Error when t cannot be quantized
// or n is not a multiple of the block size.
void quantize_row(TensorType t, const float* src, void* dst, int64_t n);

}  // namespace kiln
