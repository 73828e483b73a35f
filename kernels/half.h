// Scalar binary16 / bfloat16 <-> binary32 conversions for the kernels' portable paths
// (header-only so they inline into hot loops). Rounding is to nearest, ties to even, which is
// what F16C's vcvtps2ph does with _MM_FROUND_TO_NEAREST_INT, so scalar and SIMD paths agree.
#pragma once

#include <cstdint>
#include <cstring>

#include "quant/quant.h"

namespace kiln::kernels {

// Decoding is quant.h's (exact, inline); encoding is kept here inline for the KV-cache hot path.
inline float half_to_float(uint16_t h) { return fp16_to_fp32(h); }

inline uint16_t float_to_half(float f) {
    uint32_t x;
    std::memcpy(&x, &f, sizeof x);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)  // inf or NaN (NaN made quiet)
        return static_cast<uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0u));
    if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65536
    if (ax < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
        if (ax < 0x33000000u) return sign;  // < 2^-25: rounds to zero (2^-25 is a tie to 0)
        const uint32_t e = ax >> 23;
        const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126u - e;  // 14 + (113 - e) ... so value = m >> shift in half ulps
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1u);
        const uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u))) ++r;
        return static_cast<uint16_t>(sign | r);
    }
    uint32_t r = ax - 0x38000000u;  // rebias exponent 127 -> 15 (still shifted by 13)
    const uint32_t rem = r & 0x1fffu;
    r >>= 13;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
}

inline float bf16_to_float(uint16_t h) { return bf16_to_fp32(h); }

}  // namespace kiln::kernels
