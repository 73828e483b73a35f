// Internal to kernels/: the on-disk block layouts the matmul reads (GGUF / ggml formats, little-
// endian, no padding) and the 8-bit activation blocks the integer dot products use.
// Field meanings are documented with the reference conversions in engine/quant/quant.h.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/half.h"
#include "quant/quant.h"
#include "quant/types.h"

namespace kiln::kernels::blk {

// The layouts, value grids and scale unpackers are engine/quant/quant.h's (the one source of
// truth); these short names keep the kernels readable.
constexpr int QK = kQK;    // legacy / IQ4_NL / MXFP4 block
constexpr int QKK = kQKK;  // K-quant / IQ4_XS super-block

using q4_0 = block_q4_0;
using q4_1 = block_q4_1;
using q5_0 = block_q5_0;
using q5_1 = block_q5_1;
using q8_0 = block_q8_0;
using q8_1 = block_q8_1;
using q2_K = block_q2_K;
using q3_K = block_q3_K;
using q4_K = block_q4_K;
using q5_K = block_q5_K;
using q6_K = block_q6_K;
using q8_K = block_q8_K;
using iq4_nl = block_iq4_nl;
using iq4_xs = block_iq4_xs;
using mxfp4 = block_mxfp4;

inline constexpr const auto& kIq4nl = kIq4nlValues;
inline constexpr const auto& kMxfp4 = kMxfp4Values;

inline float e8m0_half(uint8_t e) { return e8m0_to_fp32_half(e); }
inline void scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) { unpack_scale_min_k4(j, q, sc, m); }
inline int q3k_scale(int j, const uint8_t* s) { return unpack_scale_q3_K(j, s); }

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
