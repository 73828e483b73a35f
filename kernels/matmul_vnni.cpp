// Integer weight tiles for prefill at the avx512vnni level (AVX-512 F/BW/VL + VNNI, chosen at
// run time like the AVX2 kernels).
//
// A thread unpacks 16 weight rows x a k-slice once into unsigned 8-bit codes with per-group
// float (s, o) (w = s * code + o), interleaved so that one zmm holds 4 consecutive codes of each
// of the 16 rows. The activations are quantised to int8 per group once per call. vpdpbusd then
// accumulates 16 rows x 4 products per instruction against a broadcast of 4 activation codes,
// for up to 8 tokens at a time, and the group scale is applied once per group in float.
#include "kernels/matmul_impl.h"

#ifdef KILN_KERNELS_X86

#include <algorithm>
#include <cstring>

#include "kernels/avx512.h"

namespace kiln::kernels::detail {
namespace {

using namespace blk;

KILN_VNNI inline __m256i loadu256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
KILN_VNNI inline __m128i loadu128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }
KILN_VNNI inline void storeu256(void* p, __m256i v) { _mm256_storeu_si256(static_cast<__m256i*>(p), v); }
KILN_VNNI inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

// ---- fast unpackers -------------------------------------------------------------------------

KILN_VNNI void up_q4_0(const void* w, int64_t n, uint8_t* c, float* s, float* o) {
    const q4_0* b = static_cast<const q4_0*>(w);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    for (int64_t ib = 0; ib < n / QK; ++ib, c += QK) {
        const __m128i q = loadu128(b[ib].qs);
        storeu256(c, _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4)));
        s[ib] = h2f(b[ib].d);
        o[ib] = -8.0f * s[ib];
    }
}

KILN_VNNI void up_q8_0(const void* w, int64_t n, uint8_t* c, float* s, float* o) {
    const q8_0* b = static_cast<const q8_0*>(w);
    const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
    for (int64_t ib = 0; ib < n / QK; ++ib, c += QK) {
        storeu256(c, _mm256_xor_si256(loadu256(b[ib].qs), bias));  // q + 128
        s[ib] = h2f(b[ib].d);
        o[ib] = -128.0f * s[ib];
    }
}

KILN_VNNI void up_q4_K(const void* w, int64_t n, uint8_t* c, float* s, float* o) {
    const q4_K* b = static_cast<const q4_K*>(w);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t ib = 0; ib < n / QKK; ++ib, c += QKK, s += 8, o += 8) {
        for (int ch = 0; ch < 4; ++ch) {
            const __m256i q = loadu256(b[ib].qs + 32 * ch);
            storeu256(c + 64 * ch, _mm256_and_si256(q, m4));
            storeu256(c + 64 * ch + 32, _mm256_and_si256(_mm256_srli_epi16(q, 4), m4));
        }
        // The 12 scale bytes -> 8 six-bit scales and 8 mins at once (the layout of scale_min_k4).
        uint32_t u[3], sm[4];
        std::memcpy(u, b[ib].scales, 12);
        sm[0] = u[0] & 0x3f3f3f3fu;
        sm[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
        sm[2] = u[1] & 0x3f3f3f3fu;
        sm[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
        const __m128i scmn = loadu128(sm);
        const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(scmn));
        const __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(scmn, 8)));
        _mm256_storeu_ps(s, _mm256_mul_ps(sc, _mm256_set1_ps(h2f(b[ib].d))));
        _mm256_storeu_ps(o, _mm256_mul_ps(mn, _mm256_set1_ps(-h2f(b[ib].dmin))));
    }
}

KILN_VNNI void up_q6_K(const void* w, int64_t n, uint8_t* c, float* s, float* o) {
    const q6_K* b = static_cast<const q6_K*>(w);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t ib = 0; ib < n / QKK; ++ib, c += QKK, s += 16, o += 16) {
        for (int h = 0; h < 2; ++h) {
            const __m256i l0 = loadu256(b[ib].ql + 64 * h), l1 = loadu256(b[ib].ql + 64 * h + 32);
            const __m256i hb = loadu256(b[ib].qh + 32 * h);
            uint8_t* cc = c + 128 * h;
            storeu256(cc, _mm256_or_si256(_mm256_and_si256(l0, m4),
                                          _mm256_slli_epi16(_mm256_and_si256(hb, _mm256_set1_epi8(0x03)), 4)));
            storeu256(cc + 32, _mm256_or_si256(_mm256_and_si256(l1, m4),
                                               _mm256_slli_epi16(_mm256_and_si256(hb, _mm256_set1_epi8(0x0C)), 2)));
            storeu256(cc + 64, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                               _mm256_and_si256(hb, _mm256_set1_epi8(0x30))));
            storeu256(cc + 96, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                               _mm256_srli_epi16(_mm256_and_si256(hb, _mm256_set1_epi8(static_cast<char>(0xC0))), 2)));
        }
        const float d = h2f(b[ib].d);
        for (int g = 0; g < 16; ++g) {
            s[g] = d * static_cast<float>(b[ib].scales[g]);
            o[g] = -32.0f * s[g];
        }
    }
}

// ---- packing --------------------------------------------------------------------------------

// 8 rows of 8 dwords -> 8 columns of 8 dwords.
KILN_VNNI inline void transpose8x8(__m256i r[8]) {
    __m256i t[8], u[8];
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
        u[4 * i + 0] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int j = 0; j < 4; ++j) {
        r[j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x20);
        r[4 + j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x31);
    }
}

// Codes of one group for 16 rows (row stride `stride` in tmp) -> 16 x G/4 interleaved dwords.
template <int G>
KILN_VNNI inline void interleave_group(const uint8_t* codes, size_t stride, uint8_t* out) {
    if constexpr (G == 32) {
        for (int half = 0; half < 2; ++half) {
            __m256i r[8];
            for (int i = 0; i < 8; ++i) r[i] = loadu256(codes + (8 * half + i) * stride);
            transpose8x8(r);
            for (int j = 0; j < 8; ++j) storeu256(out + 64 * j + 32 * half, r[j]);
        }
    } else {
        for (int q = 0; q < 4; ++q) {
            __m128 r0 = _mm_castsi128_ps(loadu128(codes + (4 * q + 0) * stride));
            __m128 r1 = _mm_castsi128_ps(loadu128(codes + (4 * q + 1) * stride));
            __m128 r2 = _mm_castsi128_ps(loadu128(codes + (4 * q + 2) * stride));
            __m128 r3 = _mm_castsi128_ps(loadu128(codes + (4 * q + 3) * stride));
            _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
            _mm_storeu_ps(reinterpret_cast<float*>(out + 0 * 64 + 16 * q), r0);
            _mm_storeu_ps(reinterpret_cast<float*>(out + 1 * 64 + 16 * q), r1);
            _mm_storeu_ps(reinterpret_cast<float*>(out + 2 * 64 + 16 * q), r2);
            _mm_storeu_ps(reinterpret_cast<float*>(out + 3 * 64 + 16 * q), r3);
        }
    }
}

template <int G>
KILN_VNNI void pack(UnpackFn unpack, const uint8_t* w, size_t row_bytes, int64_t nrows, size_t slice_offset,
                    int64_t kc, uint8_t* out, uint8_t* tmp) {
    const int64_t ng = kc / G;
    uint8_t* codes = tmp;                                                 // [16][kc]
    float* s = reinterpret_cast<float*>(tmp + kVnniRows * kc);            // [16][ng]
    float* o = s + kVnniRows * ng;                                        // [16][ng]
    for (int64_t r = 0; r < kVnniRows; ++r) {
        if (r < nrows) {
            unpack(w + static_cast<size_t>(r) * row_bytes + slice_offset, kc, codes + r * kc, s + r * ng, o + r * ng);
        } else {
            std::memset(codes + r * kc, 0, static_cast<size_t>(kc));
            std::fill(s + r * ng, s + (r + 1) * ng, 0.0f);
            std::fill(o + r * ng, o + (r + 1) * ng, 0.0f);
        }
    }
    const size_t gbytes = static_cast<size_t>(kVnniRows) * G + 2 * kVnniRows * sizeof(float);
    for (int64_t g = 0; g < ng; ++g) {
        uint8_t* dst = out + static_cast<size_t>(g) * gbytes;
        interleave_group<G>(codes + g * G, static_cast<size_t>(kc), dst);
        float* so = reinterpret_cast<float*>(dst + kVnniRows * G);
        for (int r = 0; r < kVnniRows; ++r) {
            so[r] = s[r * ng + g];
            so[kVnniRows + r] = o[r * ng + g];
        }
    }
}

// ---- kernel ---------------------------------------------------------------------------------

KILN_VNNI inline int32_t load_i32(const uint8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
}
KILN_VNNI inline float load_f32(const uint8_t* p) {
    float v;
    std::memcpy(&v, p, 4);
    return v;
}

// RB blocks of 16 rows (packed blocks `bstride` bytes apart; rows_mask: the valid rows of the
// last) x NT tokens over ng groups: each activation dword loaded is used by RB integer dots.
// SHARED: the activation scale d is the same for the pg groups of one activation grid block
// (pg = grid / G > 1), so each group's integer dot is scaled by its weight scale alone and summed
// in floats, and the sum multiplied by d once per grid block (per group and token one convert and
// one multiply-add, two with mins, besides the integer dots). Otherwise (pg = 1) each group's dot
// is scaled by its weight scale times its d.
template <int G, int NT, int RB, bool MIN, bool SHARED>
KILN_VNNI void kern(const uint8_t* packed, size_t bstride, int64_t ng, int64_t pg, const uint8_t* x, size_t xstride,
                    float* y, int64_t ldy, __mmask16 rows_mask, bool accumulate) {
    constexpr size_t kGroupBytes = static_cast<size_t>(kVnniRows) * G + 2 * kVnniRows * sizeof(float);
    constexpr size_t kXGroup = G + 16;
    if constexpr (!SHARED) pg = 1;
    __m512 facc[RB][NT];
    for (int b = 0; b < RB; ++b)
        for (int t = 0; t < NT; ++t) facc[b][t] = _mm512_setzero_ps();
    for (int64_t g0 = 0; g0 < ng; g0 += pg) {
        __m512 sb[RB][NT];
        if constexpr (SHARED)
            for (int b = 0; b < RB; ++b)
                for (int t = 0; t < NT; ++t) sb[b][t] = _mm512_setzero_ps();
        for (int64_t g = g0; g < g0 + pg; ++g) {
            const uint8_t* c = packed + static_cast<size_t>(g) * kGroupBytes;
            const uint8_t* xg = x + static_cast<size_t>(g) * kXGroup;
            __m512i iacc[RB][NT];
            for (int b = 0; b < RB; ++b)
                for (int t = 0; t < NT; ++t) iacc[b][t] = _mm512_setzero_si512();
            for (int j = 0; j < G / 4; ++j) {
                __m512i wv[RB];
                for (int b = 0; b < RB; ++b) wv[b] = _mm512_load_si512(c + b * bstride + 64 * j);
                for (int t = 0; t < NT; ++t) {
                    const __m512i xv = _mm512_set1_epi32(load_i32(xg + t * xstride + 4 * j));
                    for (int b = 0; b < RB; ++b) iacc[b][t] = _mm512_dpbusd_epi32(iacc[b][t], wv[b], xv);
                }
            }
            for (int b = 0; b < RB; ++b) {
                const float* so = reinterpret_cast<const float*>(c + b * bstride + kVnniRows * G);
                const __m512 s = _mm512_load_ps(so);
                for (int t = 0; t < NT; ++t) {
                    const uint8_t* xr = xg + t * xstride + G;  // d, corr, sum of codes, d x sum
                    __m512i acc = iacc[b][t];
                    if constexpr (!MIN) acc = _mm512_sub_epi32(acc, _mm512_set1_epi32(load_i32(xr + 4)));
                    const __m512 o = _mm512_load_ps(so + kVnniRows);
                    if constexpr (SHARED) {
                        sb[b][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), s, sb[b][t]);
                        if constexpr (MIN) sb[b][t] = _mm512_fmadd_ps(o, _mm512_set1_ps(load_f32(xr + 8)), sb[b][t]);
                    } else {
                        const __m512 d = _mm512_set1_ps(load_f32(xr));
                        facc[b][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(s, d), facc[b][t]);
                        if constexpr (MIN) facc[b][t] = _mm512_fmadd_ps(o, _mm512_set1_ps(load_f32(xr + 12)), facc[b][t]);
                    }
                }
            }
        }
        if constexpr (SHARED) {
            const uint8_t* xd = x + static_cast<size_t>(g0) * kXGroup + G;
            for (int t = 0; t < NT; ++t) {
                const __m512 d = _mm512_set1_ps(load_f32(xd + t * xstride));
                for (int b = 0; b < RB; ++b) facc[b][t] = _mm512_fmadd_ps(sb[b][t], d, facc[b][t]);
            }
        }
    }
    for (int b = 0; b < RB; ++b)
        for (int t = 0; t < NT; ++t) {
            float* out = y + t * ldy + b * kVnniRows;
            const __mmask16 m = b == RB - 1 ? rows_mask : static_cast<__mmask16>(0xFFFF);
            __m512 v = facc[b][t];
            if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, out));
            _mm512_mask_storeu_ps(out, m, v);
        }
}

// Every token, NT at a time (8 for one block of rows, 4 for two), then the rest.
template <int G, int RB, bool MIN, bool SHARED>
KILN_VNNI void kern_tokens(const uint8_t* packed, size_t bstride, int64_t ng, int64_t pg, const uint8_t* x,
                           size_t xstride, int64_t nt, float* y, int64_t ldy, __mmask16 mask, bool acc) {
    constexpr int NT = RB == 1 ? 8 : 4;
    int64_t t = 0;
    for (; t + NT <= nt; t += NT)
        kern<G, NT, RB, MIN, SHARED>(packed, bstride, ng, pg, x + t * xstride, xstride, y + t * ldy, ldy, mask, acc);
    const uint8_t* xt = x + t * xstride;
    float* yt = y + t * ldy;
    if constexpr (RB == 1) {  // with two blocks, fewer than 4 are left
        switch (nt - t) {
            case 7: return kern<G, 7, 1, MIN, SHARED>(packed, bstride, ng, pg, xt, xstride, yt, ldy, mask, acc);
            case 6: return kern<G, 6, 1, MIN, SHARED>(packed, bstride, ng, pg, xt, xstride, yt, ldy, mask, acc);
            case 5: return kern<G, 5, 1, MIN, SHARED>(packed, bstride, ng, pg, xt, xstride, yt, ldy, mask, acc);
            case 4: return kern<G, 4, 1, MIN, SHARED>(packed, bstride, ng, pg, xt, xstride, yt, ldy, mask, acc);
            default: break;
        }
    }
    switch (nt - t) {
        case 3: kern<G, 3, RB, MIN, SHARED>(packed, bstride, ng, pg, xt, xstride, yt, ldy, mask, acc); break;
        case 2: kern<G, 2, RB, MIN, SHARED>(packed, bstride, ng, pg, xt, xstride, yt, ldy, mask, acc); break;
        case 1: kern<G, 1, RB, MIN, SHARED>(packed, bstride, ng, pg, xt, xstride, yt, ldy, mask, acc); break;
        default: break;
    }
}

template <int G, bool MIN>
KILN_VNNI void kern_dispatch(const uint8_t* packed, size_t bstride, int n_blocks, int64_t ng, int64_t pg,
                             const uint8_t* x, size_t xstride, int64_t nt, float* y, int64_t ldy, __mmask16 mask,
                             bool acc) {
    if (n_blocks == 2) {
        if (pg > 1)
            kern_tokens<G, 2, MIN, true>(packed, bstride, ng, pg, x, xstride, nt, y, ldy, mask, acc);
        else
            kern_tokens<G, 2, MIN, false>(packed, bstride, ng, 1, x, xstride, nt, y, ldy, mask, acc);
    } else {
        if (pg > 1)
            kern_tokens<G, 1, MIN, true>(packed, bstride, ng, pg, x, xstride, nt, y, ldy, mask, acc);
        else
            kern_tokens<G, 1, MIN, false>(packed, bstride, ng, 1, x, xstride, nt, y, ldy, mask, acc);
    }
}

// One group of G activations -> int8 codes + {d, corr, the codes' sum as a float, d x that sum},
// with amax taken over the group's grid block (llama.cpp's rounding), so d is the same in every
// group of a block. Same rounding as the scalar quantisers (d = amax / 127, codes =
// round-to-nearest-even(x * 127 / amax)).
template <int G>
KILN_VNNI void quant_group(const float* x, float amax, int offset, uint8_t* out) {
    constexpr int V = G / 16;
    __m512 v[V];
    for (int i = 0; i < V; ++i) v[i] = _mm512_loadu_ps(x + 16 * i);
    const float d = amax / 127.0f;
    const __m512 id = _mm512_set1_ps(d > 0 ? 127.0f / amax : 0.0f);
    __m512i sum = _mm512_setzero_si512();
    for (int i = 0; i < V; ++i) {
        const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v[i], id));
        sum = _mm512_add_epi32(sum, q);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16 * i), _mm512_cvtsepi32_epi8(q));
    }
    const int32_t total = _mm512_reduce_add_epi32(sum);
    const int32_t corr = offset * total;
    const auto codes_sum = static_cast<float>(total);
    const float dsum = d * codes_sum;
    std::memcpy(out + G, &d, 4);
    std::memcpy(out + G + 4, &corr, 4);
    std::memcpy(out + G + 8, &codes_sum, 4);
    std::memcpy(out + G + 12, &dsum, 4);
}

}  // namespace

UnpackFn unpacker_vnni(TensorType t) {
    switch (t) {
        case TensorType::Q4_0: return up_q4_0;
        case TensorType::Q8_0: return up_q8_0;
        case TensorType::Q4_K: return up_q4_K;
        case TensorType::Q6_K: return up_q6_K;
        default: return nullptr;
    }
}

static KILN_VNNI float absmax(const float* x, int64_t n) {
    __m512 m = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
    return _mm512_reduce_max_ps(m);
}

KILN_VNNI void quantize_x_vnni(const float* x, int64_t k, const CodeFormat& f, int grid, uint8_t* out) {
    const size_t gb = vnni_xgroup_bytes(f.group);
    for (int64_t b = 0; b < k; b += grid) {
        const float amax = absmax(x + b, grid);
        for (int64_t g = b; g < b + grid; g += f.group) {
            uint8_t* o = out + static_cast<size_t>(g / f.group) * gb;
            if (f.group == 32)
                quant_group<32>(x + g, amax, f.offset, o);
            else
                quant_group<16>(x + g, amax, f.offset, o);
        }
    }
}

void pack_rows_vnni(TensorType, const CodeFormat& f, UnpackFn unpack, const uint8_t* w, size_t row_bytes,
                    int64_t nrows, size_t slice_offset, int64_t kc, uint8_t* out, uint8_t* tmp) {
    if (f.group == 32)
        pack<32>(unpack, w, row_bytes, nrows, slice_offset, kc, out, tmp);
    else
        pack<16>(unpack, w, row_bytes, nrows, slice_offset, kc, out, tmp);
}

void gemm_vnni(const CodeFormat& f, int grid, const uint8_t* packed, size_t bstride, int n_blocks, int64_t kc,
               const uint8_t* x, size_t xstride, int64_t nt, float* y, int64_t ldy, int64_t last_rows, bool accumulate) {
    const __mmask16 mask = static_cast<__mmask16>(last_rows >= 16 ? 0xFFFF : (1u << last_rows) - 1u);
    const int64_t ng = kc / f.group;
    // Groups sharing one activation scale (the slice starts on a grid boundary).
    int64_t pg = std::max<int64_t>(grid / f.group, 1);
    if (ng % pg != 0) pg = 1;
    if (f.group == 32) {
        if (f.has_min)
            kern_dispatch<32, true>(packed, bstride, n_blocks, ng, pg, x, xstride, nt, y, ldy, mask, accumulate);
        else
            kern_dispatch<32, false>(packed, bstride, n_blocks, ng, pg, x, xstride, nt, y, ldy, mask, accumulate);
    } else {
        if (f.has_min)
            kern_dispatch<16, true>(packed, bstride, n_blocks, ng, pg, x, xstride, nt, y, ldy, mask, accumulate);
        else
            kern_dispatch<16, false>(packed, bstride, n_blocks, ng, pg, x, xstride, nt, y, ldy, mask, accumulate);
    }
}

}  // namespace kiln::kernels::detail

#endif  // KILN_KERNELS_X86
