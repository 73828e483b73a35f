// Internal to kernels/: portable block decoders (weight row segment -> float), written as
// simple fixed-length loops that compilers vectorise. matmul_scalar.cpp uses them as the
// portable path; matmul_avx2.cpp inlines the same code into AVX2-targeted wrappers for the types
// without a hand-written AVX2 decoder (a default-target inline function may be inlined into a
// function with a wider target, never the other way round).
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/blocks.h"

#define KILN_DECODE_INLINE inline __attribute__((always_inline))

namespace kiln::kernels::detail::generic {

using namespace blk;

template <typename B>
KILN_DECODE_INLINE const B* blocks(const void* w) {
    return static_cast<const B*>(w);
}

// The helpers take __restrict pointers: the codes are bytes, which may alias anything, and
// without the promise compilers do not vectorise these short loops.

// out[j] = (lo/hi nibble of q[j] - off) * d + m (j < 16), for one 32-element block.
KILN_DECODE_INLINE void nibbles16(const uint8_t* __restrict q, int off, float d, float m, float* __restrict out) {
    for (int j = 0; j < 16; ++j) out[j] = static_cast<float>((q[j] & 0xF) - off) * d + m;
    for (int j = 0; j < 16; ++j) out[j + 16] = static_cast<float>((q[j] >> 4) - off) * d + m;
}

// out[j] = (c[j] - off) * d + m, j < 32.
KILN_DECODE_INLINE void codes32(const uint8_t* __restrict c, int off, float d, float m, float* __restrict out) {
    for (int j = 0; j < 32; ++j) out[j] = static_cast<float>(c[j] - off) * d + m;
}

// out[l] = dl * ((q[l] >> shift) & 3) - ml, l < 16 (Q2_K).
KILN_DECODE_INLINE void crumbs16(const uint8_t* __restrict q, int shift, float dl, float ml, float* __restrict out) {
    for (int l = 0; l < 16; ++l) out[l] = dl * static_cast<float>((q[l] >> shift) & 3) - ml;
}

// out[l] = dl * (((q[l] >> shift) & 3) | (hbit << 2)) - 4), l < 16 (Q3_K).
KILN_DECODE_INLINE void q3_16(const uint8_t* __restrict q, const uint8_t* __restrict hm, int shift, int hshift,
                              float dl, float* __restrict out) {
    for (int l = 0; l < 16; ++l) {
        const int code = ((q[l] >> shift) & 3) | (((hm[l] >> hshift) & 1) << 2);
        out[l] = dl * static_cast<float>(code - 4);
    }
}

// out[l] = dl * (nibble | (qh bit << 4)) - ml, l < 32 (Q4_K with qh == nullptr, Q5_K).
KILN_DECODE_INLINE void k_32(const uint8_t* __restrict q, bool high, const uint8_t* __restrict qh, int hshift,
                             float dl, float ml, float* __restrict out) {
    if (qh) {
        for (int l = 0; l < 32; ++l) {
            const int code = (high ? q[l] >> 4 : q[l] & 0xF) | (((qh[l] >> hshift) & 1) << 4);
            out[l] = dl * static_cast<float>(code) - ml;
        }
    } else {
        for (int l = 0; l < 32; ++l) out[l] = dl * static_cast<float>(high ? q[l] >> 4 : q[l] & 0xF) - ml;
    }
}

// One 128-element half of a Q6_K block, 16 elements (one scale group per output run) at a time.
KILN_DECODE_INLINE void q6_16(const uint8_t* __restrict ql, const uint8_t* __restrict qh, float d1, float d2,
                              float d3, float d4, float* __restrict o) {
    for (int l = 0; l < 16; ++l) {
        o[l] = d1 * static_cast<float>(((ql[l] & 0xF) | ((qh[l] & 0x03) << 4)) - 32);
        o[l + 32] = d2 * static_cast<float>(((ql[l + 32] & 0xF) | ((qh[l] & 0x0C) << 2)) - 32);
        o[l + 64] = d3 * static_cast<float>(((ql[l] >> 4) | (qh[l] & 0x30)) - 32);
        o[l + 96] = d4 * static_cast<float>(((ql[l + 32] >> 4) | ((qh[l] & 0xC0) >> 2)) - 32);
    }
}

KILN_DECODE_INLINE void dec_f32(const void* w, float* out, int64_t n) {
    std::memcpy(out, w, static_cast<size_t>(n) * sizeof(float));
}

KILN_DECODE_INLINE void dec_f16(const void* w, float* out, int64_t n) {
    const auto* h = static_cast<const uint16_t*>(w);
    for (int64_t i = 0; i < n; ++i) out[i] = half_to_float(h[i]);
}

KILN_DECODE_INLINE void dec_bf16(const void* w, float* out, int64_t n) {
    const auto* h = static_cast<const uint16_t*>(w);
    for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_float(h[i]);
}

KILN_DECODE_INLINE void dec_q4_0(const void* w, float* out, int64_t n) {
    const q4_0* b = blocks<q4_0>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, out += QK) {
        nibbles16(b[ib].qs, 8, half_to_float(b[ib].d), 0.0f, out);
    }
}

KILN_DECODE_INLINE void dec_q4_1(const void* w, float* out, int64_t n) {
    const q4_1* b = blocks<q4_1>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, out += QK)
        nibbles16(b[ib].qs, 0, half_to_float(b[ib].d), half_to_float(b[ib].m), out);
}

// 5-bit codes of a Q5_0 / Q5_1 block: low nibbles plus bit j of qh for element j.
template <typename B>
KILN_DECODE_INLINE void q5_codes(const B& b, uint8_t* __restrict c) {
    uint32_t qh;
    std::memcpy(&qh, b.qh, 4);
    for (int j = 0; j < 16; ++j) c[j] = static_cast<uint8_t>((b.qs[j] & 0xF) | (((qh >> j) << 4) & 0x10));
    for (int j = 0; j < 16; ++j) c[j + 16] = static_cast<uint8_t>((b.qs[j] >> 4) | (((qh >> (j + 16)) << 4) & 0x10));
}

KILN_DECODE_INLINE void dec_q5_0(const void* w, float* out, int64_t n) {
    const q5_0* b = blocks<q5_0>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, out += QK) {
        const float d = half_to_float(b[ib].d);
        uint8_t c[32];
        q5_codes(b[ib], c);
        codes32(c, 16, d, 0.0f, out);
    }
}

KILN_DECODE_INLINE void dec_q5_1(const void* w, float* out, int64_t n) {
    const q5_1* b = blocks<q5_1>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, out += QK) {
        const float d = half_to_float(b[ib].d), m = half_to_float(b[ib].m);
        uint8_t c[32];
        q5_codes(b[ib], c);
        codes32(c, 0, d, m, out);
    }
}

// out[j] = q[j] * d, j < n.
KILN_DECODE_INLINE void s8_times(const int8_t* __restrict q, int n, float d, float* __restrict out) {
    for (int j = 0; j < n; ++j) out[j] = static_cast<float>(q[j]) * d;
}

KILN_DECODE_INLINE void dec_q8_0(const void* w, float* out, int64_t n) {
    const q8_0* b = blocks<q8_0>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, out += QK) s8_times(b[ib].qs, QK, half_to_float(b[ib].d), out);
}

KILN_DECODE_INLINE void dec_q8_1(const void* w, float* out, int64_t n) {
    const q8_1* b = blocks<q8_1>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, out += QK) s8_times(b[ib].qs, QK, half_to_float(b[ib].d), out);
}

KILN_DECODE_INLINE void dec_q2_K(const void* w, float* out, int64_t n) {
    const q2_K* b = blocks<q2_K>(w);
    for (int64_t ib = 0; ib < n / QKK; ++ib, out += QKK) {
        const float d = half_to_float(b[ib].d), dmin = half_to_float(b[ib].dmin);
        for (int h = 0; h < 2; ++h) {
            const uint8_t* q = b[ib].qs + 32 * h;
            for (int s = 0; s < 4; ++s) {
                for (int g2 = 0; g2 < 2; ++g2) {
                    const uint8_t sc = b[ib].scales[8 * h + 2 * s + g2];
                    const float dl = d * static_cast<float>(sc & 0xF);
                    const float ml = dmin * static_cast<float>(sc >> 4);
                    crumbs16(q + 16 * g2, 2 * s, dl, ml, out + 128 * h + 32 * s + 16 * g2);
                }
            }
        }
    }
}

KILN_DECODE_INLINE void dec_q3_K(const void* w, float* out, int64_t n) {
    const q3_K* b = blocks<q3_K>(w);
    for (int64_t ib = 0; ib < n / QKK; ++ib, out += QKK) {
        const float d = half_to_float(b[ib].d);
        for (int h = 0; h < 2; ++h) {
            const uint8_t* q = b[ib].qs + 32 * h;
            for (int s = 0; s < 4; ++s) {
                const int hshift = 4 * h + s;  // hmask bit of elements 32 * (4h + s) + i
                for (int g2 = 0; g2 < 2; ++g2) {
                    const float dl = d * static_cast<float>(q3k_scale(8 * h + 2 * s + g2, b[ib].scales));
                    q3_16(q + 16 * g2, b[ib].hmask + 16 * g2, 2 * s, hshift, dl, out + 128 * h + 32 * s + 16 * g2);
                }
            }
        }
    }
}

template <typename B>
KILN_DECODE_INLINE void k4_scales(const B& b, float* dl, float* ml) {
    const float d = half_to_float(b.d), dmin = half_to_float(b.dmin);
    for (int g = 0; g < 8; ++g) {
        uint8_t sc, m;
        scale_min_k4(g, b.scales, &sc, &m);
        dl[g] = d * sc;
        ml[g] = dmin * m;
    }
}

KILN_DECODE_INLINE void dec_q4_K(const void* w, float* out, int64_t n) {
    const q4_K* b = blocks<q4_K>(w);
    for (int64_t ib = 0; ib < n / QKK; ++ib, out += QKK) {
        float dl[8], ml[8];
        k4_scales(b[ib], dl, ml);
        for (int c = 0; c < 4; ++c) {
            k_32(b[ib].qs + 32 * c, false, nullptr, 0, dl[2 * c], ml[2 * c], out + 64 * c);
            k_32(b[ib].qs + 32 * c, true, nullptr, 0, dl[2 * c + 1], ml[2 * c + 1], out + 64 * c + 32);
        }
    }
}

KILN_DECODE_INLINE void dec_q5_K(const void* w, float* out, int64_t n) {
    const q5_K* b = blocks<q5_K>(w);
    for (int64_t ib = 0; ib < n / QKK; ++ib, out += QKK) {
        float dl[8], ml[8];
        k4_scales(b[ib], dl, ml);
        for (int c = 0; c < 4; ++c) {
            k_32(b[ib].qs + 32 * c, false, b[ib].qh, 2 * c, dl[2 * c], ml[2 * c], out + 64 * c);
            k_32(b[ib].qs + 32 * c, true, b[ib].qh, 2 * c + 1, dl[2 * c + 1], ml[2 * c + 1], out + 64 * c + 32);
        }
    }
}

KILN_DECODE_INLINE void dec_q6_K(const void* w, float* out, int64_t n) {
    const q6_K* b = blocks<q6_K>(w);
    for (int64_t ib = 0; ib < n / QKK; ++ib, out += QKK) {
        const float d = half_to_float(b[ib].d);
        for (int h = 0; h < 2; ++h) {
            const uint8_t* ql = b[ib].ql + 64 * h;
            const uint8_t* qh = b[ib].qh + 32 * h;
            const int8_t* sc = b[ib].scales + 8 * h;
            for (int half = 0; half < 2; ++half) {  // 16 elements share a scale
                const int l0 = 16 * half;
                q6_16(ql + l0, qh + l0, d * sc[half], d * sc[half + 2], d * sc[half + 4], d * sc[half + 6],
                      out + 128 * h + l0);
            }
        }
    }
}

KILN_DECODE_INLINE void dec_q8_K(const void* w, float* out, int64_t n) {
    const q8_K* b = blocks<q8_K>(w);
    for (int64_t ib = 0; ib < n / QKK; ++ib, out += QKK) s8_times(b[ib].qs, QKK, b[ib].d, out);
}

KILN_DECODE_INLINE void lut16(const uint8_t* __restrict q, const int8_t* __restrict lut, float d,
                              float* __restrict out) {
    for (int j = 0; j < 16; ++j) out[j] = d * static_cast<float>(lut[q[j] & 0xF]);
    for (int j = 0; j < 16; ++j) out[j + 16] = d * static_cast<float>(lut[q[j] >> 4]);
}

KILN_DECODE_INLINE void dec_iq4_nl(const void* w, float* out, int64_t n) {
    const iq4_nl* b = blocks<iq4_nl>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, out += QK) lut16(b[ib].qs, kIq4nl, half_to_float(b[ib].d), out);
}

KILN_DECODE_INLINE void dec_iq4_xs(const void* w, float* out, int64_t n) {
    const iq4_xs* b = blocks<iq4_xs>(w);
    for (int64_t ib = 0; ib < n / QKK; ++ib, out += QKK) {
        const float d = half_to_float(b[ib].d);
        for (int g = 0; g < 8; ++g) {
            const int ls = ((b[ib].scales_l[g / 2] >> (4 * (g % 2))) & 0xF) | (((b[ib].scales_h >> (2 * g)) & 3) << 4);
            lut16(b[ib].qs + 16 * g, kIq4nl, d * static_cast<float>(ls - 32), out + 32 * g);
        }
    }
}

KILN_DECODE_INLINE void dec_mxfp4(const void* w, float* out, int64_t n) {
    const mxfp4* b = blocks<mxfp4>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, out += QK) lut16(b[ib].qs, kMxfp4, e8m0_half(b[ib].e), out);
}

}  // namespace kiln::kernels::detail::generic
