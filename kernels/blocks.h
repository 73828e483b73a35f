// Internal to kernels/: the on-disk block layouts the matmul reads (GGUF / ggml formats, little-
// endian, no padding) and the 8-bit activation blocks the integer dot products use.
// Field meanings are documented with the reference conversions in engine/quant/quant.h.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/half.h"
#include "quant/types.h"

namespace kiln::kernels::blk {

constexpr int QK = 32;    // legacy / IQ4_NL / MXFP4 block
constexpr int QKK = 256;  // K-quant / IQ4_XS super-block

struct q4_0 { uint16_t d; uint8_t qs[16]; };
struct q4_1 { uint16_t d, m; uint8_t qs[16]; };
struct q5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; };
struct q5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; };
struct q8_0 { uint16_t d; int8_t qs[32]; };
struct q8_1 { uint16_t d, s; int8_t qs[32]; };
struct q2_K { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; };
struct q3_K { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; };
struct q4_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; };
struct q5_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; };
struct q6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; };
struct q8_K { float d; int8_t qs[256]; int16_t bsums[16]; };
struct iq4_nl { uint16_t d; uint8_t qs[16]; };
struct iq4_xs { uint16_t d; uint16_t scales_h; uint8_t scales_l[4]; uint8_t qs[128]; };
struct mxfp4 { uint8_t e; uint8_t qs[16]; };

static_assert(sizeof(q4_0) == 18 && sizeof(q4_1) == 20 && sizeof(q5_0) == 22 && sizeof(q5_1) == 24);
static_assert(sizeof(q8_0) == 34 && sizeof(q8_1) == 36 && sizeof(q2_K) == 84 && sizeof(q3_K) == 110);
static_assert(sizeof(q4_K) == 144 && sizeof(q5_K) == 176 && sizeof(q6_K) == 210);
static_assert(sizeof(q8_K) == 292 && sizeof(iq4_nl) == 18 && sizeof(iq4_xs) == 136 && sizeof(mxfp4) == 17);

inline constexpr int8_t kIq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                      1,    13,   25,  38,  53,  69,  89,  113};
inline constexpr int8_t kMxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// E8M0 scale, halved because kMxfp4 holds doubled values: 2^(e - 128).
inline float e8m0_half(uint8_t e) {
    const uint32_t bits = e < 2 ? (0x00200000u << e) : (static_cast<uint32_t>(e) - 1) << 23;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// Q4_K / Q5_K: the 6-bit scale and min of group j (0..7) from the 12 packed bytes.
inline void scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

// Q3_K: the signed scale (-32..31) of group j (0..15) from the 12 packed bytes.
inline int q3k_scale(int j, const uint8_t* s) {
    const int lo = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
    const int hi = (s[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
    return (lo | (hi << 4)) - 32;
}

// ---- 8-bit activation blocks (our own; never stored in files) --------------------------------
// x ~= d * qs[i], qs in [-127, 127]. sum / bsums are the sums of qs, so a weight format with an
// offset or a min (q - 8, d*q - m) corrects with one multiply per block instead of per element.
struct xq32 {
    float d;
    int32_t sum;
    int8_t qs[32];
};
struct xq256 {
    float d;
    int16_t bsums[16];  // sums of each 16 consecutive qs
    int8_t qs[256];
};

}  // namespace kiln::kernels::blk
