// AVX2 + FMA + F16C kernels for the matmul, compiled per function with a target attribute and
// chosen at run time (kernels/cpu.h); the rest of the binary stays generic x86-64.
//
// Decode (few tokens): integer dot products of the weight codes with 8-bit activations
// (blk::xq32 / blk::xq256), scales applied once per block or super-block.
// Prefill: weight tiles expanded to float once (the decoders here) and the FMA tile below.
#include "kernels/matmul_impl.h"

#ifdef KILN_KERNELS_X86

#include <algorithm>
#include <cstring>

#include "kernels/avx2.h"

namespace kiln::kernels::detail {
namespace {

using namespace blk;

KILN_AVX2 inline int hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

KILN_AVX2 inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

KILN_AVX2 inline __m256i loadu256(const void* p) {
    return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}
KILN_AVX2 inline __m128i loadu128(const void* p) {
    return _mm_loadu_si128(static_cast<const __m128i*>(p));
}

// 16 packed bytes -> 32 codes: low nibbles (elements 0..15) then high nibbles (16..31).
KILN_AVX2 inline __m256i unpack_nibbles16(const uint8_t* p) {
    const __m128i b = loadu128(p);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m4), _mm_and_si128(b, m4));
}

// Sum of 16 u8 x s8 products per int32 lane pair, as 8 int32 lanes.
KILN_AVX2 inline __m256i dot_u8s8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

// Writes 32 unsigned byte codes as floats: out = q * scale + bias.
KILN_AVX2 inline void store_u8x32(__m256i q, __m256 scale, __m256 bias, float* out) {
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    _mm256_storeu_ps(out, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), scale, bias));
    _mm256_storeu_ps(out + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), scale, bias));
    _mm256_storeu_ps(out + 16, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), scale, bias));
    _mm256_storeu_ps(out + 24, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), scale, bias));
}

// ---- activation quantisation ----------------------------------------------------------------

// Quantises 32 floats with the given inverse scale; returns the codes and their int32 sums per
// 4-element group (lanes 0-3: elements 0..15, lanes 4-7: 16..31).
KILN_AVX2 inline __m256i quant32(const float* x, __m256 id, __m256i* sums) {
    const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), id));
    const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8), id));
    const __m256i c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 16), id));
    const __m256i d = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 24), id));
    // hadd keeps 128-bit lanes apart: [a01 a23 b01 b23 | a45 a67 b45 b67] etc.
    *sums = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    // packs interleave 128-bit lanes; the permute puts the 32 bytes back in order.
    const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
    const __m256i q = _mm256_packs_epi16(ab, cd);
    return _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

KILN_AVX2 inline __m256 absmax32(const float* x, __m256 m) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int j = 0; j < 32; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
    return m;
}

KILN_AVX2 inline float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

// ---- dot products for decode ----------------------------------------------------------------

KILN_AVX2 float vd_f32(const void* w, const void* x, int64_t n) {
    const float* a = static_cast<const float*>(w);
    const float* b = static_cast<const float*>(x);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

KILN_AVX2 inline __m256 load_f16(const uint16_t* p) { return _mm256_cvtph_ps(loadu128(p)); }
KILN_AVX2 inline __m256 load_bf16(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(loadu128(p)), 16));
}

template <bool BF16>
KILN_AVX2 inline __m256 load_half(const uint16_t* p) {
    if constexpr (BF16) return load_bf16(p);
    else return load_f16(p);
}

// 16-bit float rows (f16 or bf16) against f32 activations: four accumulators of 8 lanes.
template <bool BF16>
KILN_AVX2 float vd_half(const void* w, const void* x, int64_t n) {
    const uint16_t* a = static_cast<const uint16_t*>(w);
    const float* b = static_cast<const float*>(x);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(load_half<BF16>(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(load_half<BF16>(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(load_half<BF16>(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(load_half<BF16>(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(load_half<BF16>(a + i), _mm256_loadu_ps(b + i), acc0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; ++i) s += (BF16 ? bf16_to_float(a[i]) : h2f(a[i])) * b[i];
    return s;
}
KILN_AVX2 float vd_f16(const void* w, const void* x, int64_t n) { return vd_half<false>(w, x, n); }
KILN_AVX2 float vd_bf16(const void* w, const void* x, int64_t n) { return vd_half<true>(w, x, n); }

// Q8_0: signed codes; |w| * sign(x, w) makes maddubs' unsigned operand.
KILN_AVX2 float vd_q8_0(const void* w, const void* xv, int64_t n) {
    const q8_0* b = static_cast<const q8_0*>(w);
    const xq32* x = static_cast<const xq32*>(xv);
    const int64_t nb = n / QK;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t ib = 0;
    for (; ib + 2 <= nb; ib += 2) {
        const __m256i w0 = loadu256(b[ib].qs), w1 = loadu256(b[ib + 1].qs);
        const __m256i x0 = loadu256(x[ib].qs), x1 = loadu256(x[ib + 1].qs);
        const __m256i p0 = dot_u8s8(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(x0, w0));
        const __m256i p1 = dot_u8s8(_mm256_sign_epi8(w1, w1), _mm256_sign_epi8(x1, w1));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b[ib].d) * x[ib].d), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b[ib + 1].d) * x[ib + 1].d), _mm256_cvtepi32_ps(p1), acc1);
    }
    for (; ib < nb; ++ib) {
        const __m256i w0 = loadu256(b[ib].qs), x0 = loadu256(x[ib].qs);
        const __m256i p0 = dot_u8s8(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(x0, w0));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b[ib].d) * x[ib].d), _mm256_cvtepi32_ps(p0), acc0);
    }
    return hsum256(_mm256_add_ps(acc0, acc1));
}

// Q4_0: codes 0..15 stay unsigned; the -8 offset is -8 * d * sum(x codes) per block.
KILN_AVX2 float vd_q4_0(const void* w, const void* xv, int64_t n) {
    const q4_0* b = static_cast<const q4_0*>(w);
    const xq32* x = static_cast<const xq32*>(xv);
    const int64_t nb = n / QK;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float off = 0;
    int64_t ib = 0;
    for (; ib + 2 <= nb; ib += 2) {
        const float d0 = h2f(b[ib].d) * x[ib].d, d1 = h2f(b[ib + 1].d) * x[ib + 1].d;
        const __m256i p0 = dot_u8s8(unpack_nibbles16(b[ib].qs), loadu256(x[ib].qs));
        const __m256i p1 = dot_u8s8(unpack_nibbles16(b[ib + 1].qs), loadu256(x[ib + 1].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1), _mm256_cvtepi32_ps(p1), acc1);
        off += d0 * static_cast<float>(x[ib].sum) + d1 * static_cast<float>(x[ib + 1].sum);
    }
    for (; ib < nb; ++ib) {
        const float d0 = h2f(b[ib].d) * x[ib].d;
        const __m256i p0 = dot_u8s8(unpack_nibbles16(b[ib].qs), loadu256(x[ib].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0), _mm256_cvtepi32_ps(p0), acc0);
        off += d0 * static_cast<float>(x[ib].sum);
    }
    return hsum256(_mm256_add_ps(acc0, acc1)) - 8.0f * off;
}

// Q4_K's 12 scale bytes -> 8 scales (low 64 bits) and 8 mins (high 64 bits) as bytes.
inline void q4k_unpack_scales(const uint8_t* s, uint32_t out[4]) {
    uint32_t u[3];
    std::memcpy(u, s, 12);
    out[0] = u[0] & 0x3f3f3f3fu;                                               // scales 0..3
    out[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);        // scales 4..7
    out[2] = u[1] & 0x3f3f3f3fu;                                               // mins 0..3
    out[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);  // mins 4..7
}

// pshufb control broadcasting 16-bit element j of each 128-bit lane.
KILN_AVX2 inline __m256i bcast16_ctrl(int j) {
    return _mm256_set1_epi16(static_cast<short>(((2 * j + 1) << 8) | (2 * j)));
}

// Q4_K: per 32-element group an unsigned 6-bit scale (applied in int32 with madd) and a min
// (applied through the activation group sums, also with madd).
KILN_AVX2 float vd_q4_K(const void* w, const void* xv, int64_t n) {
    const q4_K* b = static_cast<const q4_K*>(w);
    const xq256* x = static_cast<const xq256*>(xv);
    const int64_t nb = n / QKK;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc = _mm256_setzero_ps();
    __m128 macc = _mm_setzero_ps();
    for (int64_t ib = 0; ib < nb; ++ib) {
        uint32_t u[4];
        q4k_unpack_scales(b[ib].scales, u);
        const __m128i scmn = _mm_loadu_si128(reinterpret_cast<const __m128i*>(u));
        const __m128i sc16 = _mm_cvtepu8_epi16(scmn);                     // 8 scales
        const __m128i mn16 = _mm_cvtepu8_epi16(_mm_srli_si128(scmn, 8));  // 8 mins
        const __m256i bs = loadu256(x[ib].bsums);
        const __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
        const __m128i mprod = _mm_madd_epi16(mn16, pairs);
        const float dx = x[ib].d;
        macc = _mm_fmadd_ps(_mm_set1_ps(h2f(b[ib].dmin) * dx), _mm_cvtepi32_ps(mprod), macc);

        const __m256i sc = _mm256_broadcastsi128_si256(sc16);
        __m256i iacc = _mm256_setzero_si256();
        for (int c = 0; c < 4; ++c) {
            const __m256i bytes = loadu256(b[ib].qs + 32 * c);
            const __m256i lo = _mm256_and_si256(bytes, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), m4);
            __m256i plo = _mm256_maddubs_epi16(lo, loadu256(x[ib].qs + 64 * c));
            __m256i phi = _mm256_maddubs_epi16(hi, loadu256(x[ib].qs + 64 * c + 32));
            plo = _mm256_madd_epi16(plo, _mm256_shuffle_epi8(sc, bcast16_ctrl(2 * c)));
            phi = _mm256_madd_epi16(phi, _mm256_shuffle_epi8(sc, bcast16_ctrl(2 * c + 1)));
            iacc = _mm256_add_epi32(iacc, _mm256_add_epi32(plo, phi));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b[ib].d) * dx), _mm256_cvtepi32_ps(iacc), acc);
    }
    __m128 m = _mm_add_ps(macc, _mm_movehl_ps(macc, macc));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    return hsum256(acc) - _mm_cvtss_f32(m);
}

// The four 32-code groups of one Q6_K half (values 0..63, offset 32 applied by the caller).
KILN_AVX2 inline void q6k_codes(const uint8_t* ql, const uint8_t* qh, __m256i q[4]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i l0 = loadu256(ql), l1 = loadu256(ql + 32), h = loadu256(qh);
    q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4),
                           _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(0x03)), 4));
    q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                           _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(0x0C)), 2));
    q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                           _mm256_and_si256(h, _mm256_set1_epi8(0x30)));
    q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                           _mm256_srli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(static_cast<char>(0xC0))), 2));
}

// Q6_K: signed 8-bit scale per 16 elements, applied with madd (16-bit lanes 0-7 hold the first
// 16 elements of a 32-group, 8-15 the second); the -32 offset goes through the group sums.
KILN_AVX2 float vd_q6_K(const void* w, const void* xv, int64_t n) {
    const q6_K* b = static_cast<const q6_K*>(w);
    const xq256* x = static_cast<const xq256*>(xv);
    const int64_t nb = n / QKK;
    // Group g of a half uses scale 2g in the low 128-bit lane and 2g+1 in the high one.
    __m256i ctrl[4];
    for (int g = 0; g < 4; ++g)
        ctrl[g] = _mm256_set_m128i(_mm256_castsi256_si128(bcast16_ctrl(2 * g + 1)),
                                   _mm256_castsi256_si128(bcast16_ctrl(2 * g)));
    __m256 acc = _mm256_setzero_ps(), oacc = _mm256_setzero_ps();
    for (int64_t ib = 0; ib < nb; ++ib) {
        const __m256i sc16 = _mm256_cvtepi8_epi16(loadu128(b[ib].scales));  // 16 scales
        const __m256i offs = _mm256_madd_epi16(sc16, loadu256(x[ib].bsums));
        __m256i iacc = _mm256_setzero_si256();
        for (int h = 0; h < 2; ++h) {
            __m256i q[4];
            q6k_codes(b[ib].ql + 64 * h, b[ib].qh + 32 * h, q);
            const __m128i sh = h == 0 ? _mm256_castsi256_si128(sc16) : _mm256_extracti128_si256(sc16, 1);
            const __m256i sc = _mm256_broadcastsi128_si256(sh);
            const int8_t* xq = x[ib].qs + 128 * h;
            for (int g = 0; g < 4; ++g) {
                const __m256i p = _mm256_maddubs_epi16(q[g], loadu256(xq + 32 * g));
                iacc = _mm256_add_epi32(iacc, _mm256_madd_epi16(p, _mm256_shuffle_epi8(sc, ctrl[g])));
            }
        }
        const __m256 d = _mm256_set1_ps(h2f(b[ib].d) * x[ib].d);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(iacc), acc);
        oacc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(offs), oacc);
    }
    return hsum256(acc) - 32.0f * hsum256(oacc);
}

// ---- decoders (weight tile -> float) --------------------------------------------------------

KILN_AVX2 void dec_f16(const void* w, float* out, int64_t n) {
    const uint16_t* h = static_cast<const uint16_t*>(w);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, load_f16(h + i));
    for (; i < n; ++i) out[i] = h2f(h[i]);
}

KILN_AVX2 void dec_bf16(const void* w, float* out, int64_t n) {
    const uint16_t* h = static_cast<const uint16_t*>(w);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, load_bf16(h + i));
    for (; i < n; ++i) out[i] = bf16_to_float(h[i]);
}

KILN_AVX2 void dec_q8_0(const void* w, float* out, int64_t n) {
    const q8_0* b = static_cast<const q8_0*>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, out += QK) {
        const __m256 d = _mm256_set1_ps(h2f(b[ib].d));
        for (int j = 0; j < 32; j += 8) {
            const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b[ib].qs + j));
            _mm256_storeu_ps(out + j, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
        }
    }
}

KILN_AVX2 void dec_q4_0(const void* w, float* out, int64_t n) {
    const q4_0* b = static_cast<const q4_0*>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, out += QK) {
        const float d = h2f(b[ib].d);
        store_u8x32(unpack_nibbles16(b[ib].qs), _mm256_set1_ps(d), _mm256_set1_ps(-8.0f * d), out);
    }
}

KILN_AVX2 void dec_q4_K(const void* w, float* out, int64_t n) {
    const q4_K* b = static_cast<const q4_K*>(w);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t ib = 0; ib < n / QKK; ++ib, out += QKK) {
        const float d = h2f(b[ib].d), dmin = h2f(b[ib].dmin);
        for (int c = 0; c < 4; ++c) {
            uint8_t sc0, m0, sc1, m1;
            scale_min_k4(2 * c, b[ib].scales, &sc0, &m0);
            scale_min_k4(2 * c + 1, b[ib].scales, &sc1, &m1);
            const __m256i bytes = loadu256(b[ib].qs + 32 * c);
            store_u8x32(_mm256_and_si256(bytes, m4), _mm256_set1_ps(d * sc0),
                        _mm256_set1_ps(-(dmin * m0)), out + 64 * c);
            store_u8x32(_mm256_and_si256(_mm256_srli_epi16(bytes, 4), m4), _mm256_set1_ps(d * sc1),
                        _mm256_set1_ps(-(dmin * m1)), out + 64 * c + 32);
        }
    }
}

KILN_AVX2 void dec_q6_K(const void* w, float* out, int64_t n) {
    const q6_K* b = static_cast<const q6_K*>(w);
    for (int64_t ib = 0; ib < n / QKK; ++ib, out += QKK) {
        const float d = h2f(b[ib].d);
        for (int h = 0; h < 2; ++h) {
            __m256i q[4];
            q6k_codes(b[ib].ql + 64 * h, b[ib].qh + 32 * h, q);
            const int8_t* s = b[ib].scales + 8 * h;
            for (int g = 0; g < 4; ++g) {
                // 16-element scale groups: the first 16 codes use s[2g], the next 16 s[2g+1].
                const float d0 = d * static_cast<float>(s[2 * g]), d1 = d * static_cast<float>(s[2 * g + 1]);
                const __m256 sc = _mm256_set1_ps(d0);
                const __m256 sc1 = _mm256_set1_ps(d1);
                float* o = out + 128 * h + 32 * g;
                const __m128i lo = _mm256_castsi256_si128(q[g]), hi = _mm256_extracti128_si256(q[g], 1);
                const __m256 b0 = _mm256_set1_ps(-32.0f * d0), b1 = _mm256_set1_ps(-32.0f * d1);
                _mm256_storeu_ps(o, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), sc, b0));
                _mm256_storeu_ps(o + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), sc, b0));
                _mm256_storeu_ps(o + 16, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), sc1, b1));
                _mm256_storeu_ps(o + 24, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), sc1, b1));
            }
        }
    }
}

// 16 bytes of 4-bit indices -> 32 int8 table values (low nibbles first), via pshufb.
KILN_AVX2 inline __m256i lut_nibbles16(const uint8_t* q, __m128i lut) {
    const __m128i b = loadu128(q);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(b, 4), m4)),
                            _mm_shuffle_epi8(lut, _mm_and_si128(b, m4)));
}

// Writes 32 signed byte values as floats times d.
KILN_AVX2 inline void store_s8x32(__m256i v, __m256 d, float* out) {
    const __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
    _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), d));
    _mm256_storeu_ps(out + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), d));
    _mm256_storeu_ps(out + 16, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), d));
    _mm256_storeu_ps(out + 24, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), d));
}

KILN_AVX2 void dec_iq4_nl(const void* w, float* out, int64_t n) {
    const iq4_nl* b = static_cast<const iq4_nl*>(w);
    const __m128i lut = loadu128(kIq4nl);
    for (int64_t ib = 0; ib < n / QK; ++ib, out += QK)
        store_s8x32(lut_nibbles16(b[ib].qs, lut), _mm256_set1_ps(h2f(b[ib].d)), out);
}

KILN_AVX2 void dec_iq4_xs(const void* w, float* out, int64_t n) {
    const iq4_xs* b = static_cast<const iq4_xs*>(w);
    const __m128i lut = loadu128(kIq4nl);
    for (int64_t ib = 0; ib < n / QKK; ++ib, out += QKK) {
        const float d = h2f(b[ib].d);
        for (int g = 0; g < 8; ++g) {
            const int ls = ((b[ib].scales_l[g / 2] >> (4 * (g % 2))) & 0xF) | (((b[ib].scales_h >> (2 * g)) & 3) << 4);
            store_s8x32(lut_nibbles16(b[ib].qs + 16 * g, lut), _mm256_set1_ps(d * static_cast<float>(ls - 32)), out + 32 * g);
        }
    }
}

KILN_AVX2 void dec_mxfp4(const void* w, float* out, int64_t n) {
    const mxfp4* b = static_cast<const mxfp4*>(w);
    const __m128i lut = loadu128(kMxfp4);
    for (int64_t ib = 0; ib < n / QK; ++ib, out += QK)
        store_s8x32(lut_nibbles16(b[ib].qs, lut), _mm256_set1_ps(e8m0_half(b[ib].e)), out);
}

// 32 unsigned byte codes as floats, the first 16 with (scale0, bias0), the rest (scale1, bias1).
KILN_AVX2 inline void store_u8x32_2(__m256i q, float s0, float b0, float s1, float b1, float* out) {
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    const __m256 sc0 = _mm256_set1_ps(s0), bi0 = _mm256_set1_ps(b0), sc1 = _mm256_set1_ps(s1), bi1 = _mm256_set1_ps(b1);
    _mm256_storeu_ps(out, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), sc0, bi0));
    _mm256_storeu_ps(out + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), sc0, bi0));
    _mm256_storeu_ps(out + 16, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), sc1, bi1));
    _mm256_storeu_ps(out + 24, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), sc1, bi1));
}

// Bit j of a little-endian u32 -> 0x10 in byte j (the fifth bit of Q5_0 / Q5_1 codes).
KILN_AVX2 inline __m256i qh_bits(const uint8_t* qh) {
    uint32_t v;
    std::memcpy(&v, qh, 4);
    const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(v)),
                                              _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                                               2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201ll);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit), _mm256_set1_epi8(0x10));
}

KILN_AVX2 void dec_q4_1(const void* w, float* out, int64_t n) {
    const q4_1* b = static_cast<const q4_1*>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, out += QK)
        store_u8x32(unpack_nibbles16(b[ib].qs), _mm256_set1_ps(h2f(b[ib].d)), _mm256_set1_ps(h2f(b[ib].m)), out);
}

KILN_AVX2 void dec_q5_0(const void* w, float* out, int64_t n) {
    const q5_0* b = static_cast<const q5_0*>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, out += QK) {
        const float d = h2f(b[ib].d);
        const __m256i c = _mm256_or_si256(unpack_nibbles16(b[ib].qs), qh_bits(b[ib].qh));
        store_u8x32(c, _mm256_set1_ps(d), _mm256_set1_ps(-16.0f * d), out);
    }
}

KILN_AVX2 void dec_q5_1(const void* w, float* out, int64_t n) {
    const q5_1* b = static_cast<const q5_1*>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, out += QK) {
        const __m256i c = _mm256_or_si256(unpack_nibbles16(b[ib].qs), qh_bits(b[ib].qh));
        store_u8x32(c, _mm256_set1_ps(h2f(b[ib].d)), _mm256_set1_ps(h2f(b[ib].m)), out);
    }
}

KILN_AVX2 void dec_q5_K(const void* w, float* out, int64_t n) {
    const q5_K* b = static_cast<const q5_K*>(w);
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    for (int64_t ib = 0; ib < n / QKK; ++ib, out += QKK) {
        const float d = h2f(b[ib].d), dmin = h2f(b[ib].dmin);
        const __m256i qh = loadu256(b[ib].qh);
        for (int c = 0; c < 4; ++c) {
            uint8_t sc0, m0, sc1, m1;
            scale_min_k4(2 * c, b[ib].scales, &sc0, &m0);
            scale_min_k4(2 * c + 1, b[ib].scales, &sc1, &m1);
            const __m256i q = loadu256(b[ib].qs + 32 * c);
            const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one), 4);
            const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one), 4);
            store_u8x32(_mm256_or_si256(_mm256_and_si256(q, m4), h0), _mm256_set1_ps(d * sc0),
                        _mm256_set1_ps(-(dmin * m0)), out + 64 * c);
            store_u8x32(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), h1), _mm256_set1_ps(d * sc1),
                        _mm256_set1_ps(-(dmin * m1)), out + 64 * c + 32);
        }
    }
}

KILN_AVX2 void dec_q2_K(const void* w, float* out, int64_t n) {
    const q2_K* b = static_cast<const q2_K*>(w);
    const __m256i m2 = _mm256_set1_epi8(3);
    for (int64_t ib = 0; ib < n / QKK; ++ib, out += QKK) {
        const float d = h2f(b[ib].d), dmin = h2f(b[ib].dmin);
        for (int h = 0; h < 2; ++h) {
            const __m256i q = loadu256(b[ib].qs + 32 * h);
            for (int s = 0; s < 4; ++s) {
                const uint8_t sa = b[ib].scales[8 * h + 2 * s], sb = b[ib].scales[8 * h + 2 * s + 1];
                store_u8x32_2(_mm256_and_si256(_mm256_srli_epi16(q, 2 * s), m2), d * static_cast<float>(sa & 0xF),
                              -(dmin * static_cast<float>(sa >> 4)), d * static_cast<float>(sb & 0xF),
                              -(dmin * static_cast<float>(sb >> 4)), out + 128 * h + 32 * s);
            }
        }
    }
}

KILN_AVX2 void dec_q3_K(const void* w, float* out, int64_t n) {
    const q3_K* b = static_cast<const q3_K*>(w);
    const __m256i m2 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    for (int64_t ib = 0; ib < n / QKK; ++ib, out += QKK) {
        const float d = h2f(b[ib].d);
        const __m256i hm = loadu256(b[ib].hmask);
        for (int h = 0; h < 2; ++h) {
            const __m256i q = loadu256(b[ib].qs + 32 * h);
            for (int s = 0; s < 4; ++s) {
                const __m256i hb = _mm256_and_si256(_mm256_srli_epi16(hm, 4 * h + s), one);
                const __m256i code = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 2 * s), m2),
                                                     _mm256_slli_epi16(hb, 2));  // value = code - 4
                const float da = d * static_cast<float>(q3k_scale(8 * h + 2 * s, b[ib].scales));
                const float db = d * static_cast<float>(q3k_scale(8 * h + 2 * s + 1, b[ib].scales));
                store_u8x32_2(code, da, -4.0f * da, db, -4.0f * db, out + 128 * h + 32 * s);
            }
        }
    }
}

KILN_AVX2 void dec_q8_1(const void* w, float* out, int64_t n) {
    const q8_1* b = static_cast<const q8_1*>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, out += QK) store_s8x32(loadu256(b[ib].qs), _mm256_set1_ps(h2f(b[ib].d)), out);
}

KILN_AVX2 void dec_q8_K(const void* w, float* out, int64_t n) {
    const q8_K* b = static_cast<const q8_K*>(w);
    for (int64_t ib = 0; ib < n / QKK; ++ib, out += QKK)
        for (int j = 0; j < QKK; j += 32) store_s8x32(loadu256(b[ib].qs + j), _mm256_set1_ps(b[ib].d), out + j);
}

// ---- more integer dots for decode (helpers above) -----------------------------------------

// pshufb control for Q6_K-style 16-element scale groups: group pair g of a 128-bit-lane-broadcast
// int16 scale vector -> scale 2g in the low lane, 2g+1 in the high lane.
KILN_AVX2 inline __m256i pair_ctrl(int g) {
    return _mm256_set_m128i(_mm256_castsi256_si128(bcast16_ctrl(2 * g + 1)), _mm256_castsi256_si128(bcast16_ctrl(2 * g)));
}

KILN_AVX2 inline float hsum128(__m128 v) {
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    v = _mm_add_ss(v, _mm_movehdup_ps(v));
    return _mm_cvtss_f32(v);
}

// Q4_1 / Q5_1: w = d * code + m -> d*dx*sum(code*q) + m*dx*sum(q).
template <typename B, bool FIVE>
KILN_AVX2 float vd_min32(const void* w, const void* xv, int64_t n) {
    const B* b = static_cast<const B*>(w);
    const xq32* x = static_cast<const xq32*>(xv);
    __m256 acc = _mm256_setzero_ps();
    float off = 0;
    for (int64_t ib = 0; ib < n / QK; ++ib) {
        __m256i c = unpack_nibbles16(b[ib].qs);
        if constexpr (FIVE) c = _mm256_or_si256(c, qh_bits(b[ib].qh));
        const __m256i p = dot_u8s8(c, loadu256(x[ib].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b[ib].d) * x[ib].d), _mm256_cvtepi32_ps(p), acc);
        off += h2f(b[ib].m) * x[ib].d * static_cast<float>(x[ib].sum);
    }
    return hsum256(acc) + off;
}

// Q5_0: w = d * (code - 16).
KILN_AVX2 float vd_q5_0(const void* w, const void* xv, int64_t n) {
    const q5_0* b = static_cast<const q5_0*>(w);
    const xq32* x = static_cast<const xq32*>(xv);
    __m256 acc = _mm256_setzero_ps();
    float off = 0;
    for (int64_t ib = 0; ib < n / QK; ++ib) {
        const float dd = h2f(b[ib].d) * x[ib].d;
        const __m256i c = _mm256_or_si256(unpack_nibbles16(b[ib].qs), qh_bits(b[ib].qh));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(dot_u8s8(c, loadu256(x[ib].qs))), acc);
        off += dd * static_cast<float>(x[ib].sum);
    }
    return hsum256(acc) - 16.0f * off;
}

// Signed 8-bit values v against activation codes: |v| * sign(x, v) feeds maddubs.
KILN_AVX2 inline __m256i dot_s8s8(__m256i v, __m256i xq) {
    return dot_u8s8(_mm256_sign_epi8(v, v), _mm256_sign_epi8(xq, v));
}

// IQ4_NL / MXFP4: table values (signed bytes) times one scale per 32.
KILN_AVX2 float vd_iq4_nl(const void* w, const void* xv, int64_t n) {
    const iq4_nl* b = static_cast<const iq4_nl*>(w);
    const xq32* x = static_cast<const xq32*>(xv);
    const __m128i lut = loadu128(kIq4nl);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t ib = 0; ib < n / QK; ++ib) {
        const __m256i p = dot_s8s8(lut_nibbles16(b[ib].qs, lut), loadu256(x[ib].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b[ib].d) * x[ib].d), _mm256_cvtepi32_ps(p), acc);
    }
    return hsum256(acc);
}

KILN_AVX2 float vd_mxfp4(const void* w, const void* xv, int64_t n) {
    const mxfp4* b = static_cast<const mxfp4*>(w);
    const xq32* x = static_cast<const xq32*>(xv);
    const __m128i lut = loadu128(kMxfp4);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t ib = 0; ib < n / QK; ++ib) {
        const __m256i p = dot_s8s8(lut_nibbles16(b[ib].qs, lut), loadu256(x[ib].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(e8m0_half(b[ib].e) * x[ib].d), _mm256_cvtepi32_ps(p), acc);
    }
    return hsum256(acc);
}

// IQ4_XS: IQ4_NL values with a 6-bit scale per 32; activations in 256-blocks (q8_K, as llama.cpp).
KILN_AVX2 float vd_iq4_xs(const void* w, const void* xv, int64_t n) {
    const iq4_xs* b = static_cast<const iq4_xs*>(w);
    const xq256* x = static_cast<const xq256*>(xv);
    const __m128i lut = loadu128(kIq4nl);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t ib = 0; ib < n / QKK; ++ib) {
        const float d = h2f(b[ib].d) * x[ib].d;
        for (int g = 0; g < 8; ++g) {
            const int ls = ((b[ib].scales_l[g / 2] >> (4 * (g % 2))) & 0xF) | (((b[ib].scales_h >> (2 * g)) & 3) << 4);
            const __m256i p = dot_s8s8(lut_nibbles16(b[ib].qs + 16 * g, lut), loadu256(x[ib].qs + 32 * g));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * static_cast<float>(ls - 32)), _mm256_cvtepi32_ps(p), acc);
        }
    }
    return hsum256(acc);
}

// Q5_K: Q4_K plus the fifth bit from qh.
KILN_AVX2 float vd_q5_K(const void* w, const void* xv, int64_t n) {
    const q5_K* b = static_cast<const q5_K*>(w);
    const xq256* x = static_cast<const xq256*>(xv);
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    __m128 macc = _mm_setzero_ps();
    for (int64_t ib = 0; ib < n / QKK; ++ib) {
        uint32_t u[4];
        q4k_unpack_scales(b[ib].scales, u);
        const __m128i scmn = _mm_loadu_si128(reinterpret_cast<const __m128i*>(u));
        const __m128i sc16 = _mm_cvtepu8_epi16(scmn);
        const __m128i mn16 = _mm_cvtepu8_epi16(_mm_srli_si128(scmn, 8));
        const __m256i bs = loadu256(x[ib].bsums);
        const __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
        const float dx = x[ib].d;
        macc = _mm_fmadd_ps(_mm_set1_ps(h2f(b[ib].dmin) * dx), _mm_cvtepi32_ps(_mm_madd_epi16(mn16, pairs)), macc);
        const __m256i sc = _mm256_broadcastsi128_si256(sc16);
        const __m256i qh = loadu256(b[ib].qh);
        __m256i iacc = _mm256_setzero_si256();
        for (int c = 0; c < 4; ++c) {
            const __m256i bytes = loadu256(b[ib].qs + 32 * c);
            const __m256i lo = _mm256_or_si256(_mm256_and_si256(bytes, m4),
                                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one), 4));
            const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bytes, 4), m4),
                                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one), 4));
            const __m256i plo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, loadu256(x[ib].qs + 64 * c)),
                                                  _mm256_shuffle_epi8(sc, bcast16_ctrl(2 * c)));
            const __m256i phi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, loadu256(x[ib].qs + 64 * c + 32)),
                                                  _mm256_shuffle_epi8(sc, bcast16_ctrl(2 * c + 1)));
            iacc = _mm256_add_epi32(iacc, _mm256_add_epi32(plo, phi));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b[ib].d) * dx), _mm256_cvtepi32_ps(iacc), acc);
    }
    return hsum256(acc) - hsum128(macc);
}

// Q2_K: 2-bit codes, 4-bit scale and min per 16 (scales via madd like Q6_K, mins via bsums).
KILN_AVX2 float vd_q2_K(const void* w, const void* xv, int64_t n) {
    const q2_K* b = static_cast<const q2_K*>(w);
    const xq256* x = static_cast<const xq256*>(xv);
    const __m256i m2 = _mm256_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    __m256 acc = _mm256_setzero_ps(), macc = _mm256_setzero_ps();
    for (int64_t ib = 0; ib < n / QKK; ++ib) {
        const __m128i sb = loadu128(b[ib].scales);
        const __m256i sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(sb, m4));
        const __m256i mn16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sb, 4), m4));
        const float dx = x[ib].d;
        macc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b[ib].dmin) * dx),
                               _mm256_cvtepi32_ps(_mm256_madd_epi16(mn16, loadu256(x[ib].bsums))), macc);
        __m256i iacc = _mm256_setzero_si256();
        for (int h = 0; h < 2; ++h) {
            const __m256i q = loadu256(b[ib].qs + 32 * h);
            const __m256i sch = _mm256_broadcastsi128_si256(h == 0 ? _mm256_castsi256_si128(sc16) : _mm256_extracti128_si256(sc16, 1));
            for (int s = 0; s < 4; ++s) {
                const __m256i c = _mm256_and_si256(_mm256_srli_epi16(q, 2 * s), m2);
                const __m256i p = _mm256_maddubs_epi16(c, loadu256(x[ib].qs + 128 * h + 32 * s));
                iacc = _mm256_add_epi32(iacc, _mm256_madd_epi16(p, _mm256_shuffle_epi8(sch, pair_ctrl(s))));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b[ib].d) * dx), _mm256_cvtepi32_ps(iacc), acc);
    }
    return hsum256(acc) - hsum256(macc);
}

// Q3_K: 3-bit codes (value = code - 4), signed 6-bit scale per 16.
KILN_AVX2 float vd_q3_K(const void* w, const void* xv, int64_t n) {
    const q3_K* b = static_cast<const q3_K*>(w);
    const xq256* x = static_cast<const xq256*>(xv);
    const __m256i m2 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps(), oacc = _mm256_setzero_ps();
    for (int64_t ib = 0; ib < n / QKK; ++ib) {
        alignas(16) int8_t scb[16];
        for (int g = 0; g < 16; ++g) scb[g] = static_cast<int8_t>(q3k_scale(g, b[ib].scales));
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(scb)));
        const __m256i offs = _mm256_madd_epi16(sc16, loadu256(x[ib].bsums));
        const __m256i hm = loadu256(b[ib].hmask);
        __m256i iacc = _mm256_setzero_si256();
        for (int h = 0; h < 2; ++h) {
            const __m256i q = loadu256(b[ib].qs + 32 * h);
            const __m256i sch = _mm256_broadcastsi128_si256(h == 0 ? _mm256_castsi256_si128(sc16) : _mm256_extracti128_si256(sc16, 1));
            for (int s = 0; s < 4; ++s) {
                const __m256i hb = _mm256_and_si256(_mm256_srli_epi16(hm, 4 * h + s), one);
                const __m256i c = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 2 * s), m2), _mm256_slli_epi16(hb, 2));
                const __m256i p = _mm256_maddubs_epi16(c, loadu256(x[ib].qs + 128 * h + 32 * s));
                iacc = _mm256_add_epi32(iacc, _mm256_madd_epi16(p, _mm256_shuffle_epi8(sch, pair_ctrl(s))));
            }
        }
        const __m256 d = _mm256_set1_ps(h2f(b[ib].d) * x[ib].d);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(iacc), acc);
        oacc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(offs), oacc);
    }
    return hsum256(acc) - 4.0f * hsum256(oacc);
}

// ---- GEMM tile ------------------------------------------------------------------------------

// R rows x T tokens, 8-wide partial sums per pair; T activation vectors loaded once per step and
// reused by the R rows. 4 x 3 = 12 accumulators + 3 x + 1 w fill the 16 ymm registers.
template <int R, int T>
KILN_AVX2 void tile(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t kc, float* y,
                    int64_t ldy, bool accumulate) {
    __m256 acc[R][T];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= kc; i += 8) {
        __m256 xv[T];
        for (int t = 0; t < T; ++t) xv[t] = _mm256_loadu_ps(x + t * ldx + i);
        for (int r = 0; r < R; ++r) {
            const __m256 wv = _mm256_loadu_ps(w + r * ldw + i);
            for (int t = 0; t < T; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    for (int t = 0; t < T; ++t) {
        if constexpr (R == 4) {
            // Horizontal sums of the 4 row accumulators into one vector [s0 s1 s2 s3].
            const __m256 h01 = _mm256_hadd_ps(acc[0][t], acc[1][t]);
            const __m256 h23 = _mm256_hadd_ps(acc[2][t], acc[3][t]);
            const __m256 h = _mm256_hadd_ps(h01, h23);
            __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            if (i < kc) {
                alignas(16) float tail[4];
                for (int r = 0; r < 4; ++r) {
                    float ts = 0;
                    for (int64_t j = i; j < kc; ++j) ts += w[r * ldw + j] * x[t * ldx + j];
                    tail[r] = ts;
                }
                s = _mm_add_ps(s, _mm_load_ps(tail));
            }
            float* out = y + t * ldy;
            if (accumulate) s = _mm_add_ps(s, _mm_loadu_ps(out));
            _mm_storeu_ps(out, s);
        } else {
            for (int r = 0; r < R; ++r) {
                float s = hsum256(acc[r][t]);
                for (int64_t j = i; j < kc; ++j) s += w[r * ldw + j] * x[t * ldx + j];
                float& out = y[t * ldy + r];
                out = accumulate ? out + s : s;
            }
        }
    }
}

template <int R>
KILN_AVX2 void tile_rows(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t kc,
                         float* y, int64_t ldy, int64_t nt, bool accumulate) {
    int64_t t = 0;
    for (; t + 3 <= nt; t += 3) tile<R, 3>(w, ldw, x + t * ldx, ldx, kc, y + t * ldy, ldy, accumulate);
    if (nt - t == 2) tile<R, 2>(w, ldw, x + t * ldx, ldx, kc, y + t * ldy, ldy, accumulate);
    if (nt - t == 1) tile<R, 1>(w, ldw, x + t * ldx, ldx, kc, y + t * ldy, ldy, accumulate);
}

}  // namespace

KILN_AVX2 void gemm_tile_avx2(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t kc,
                    float* y, int64_t ldy, int64_t nr, int64_t nt, bool accumulate) {
    // Tokens in the outer loop: the T activation rows stay in L1 while the weight tile (sized
    // for L2 by the caller) streams past them.
    constexpr int64_t kTokenBlock = 48;
    for (int64_t t0 = 0; t0 < nt; t0 += kTokenBlock) {
        const int64_t tn = std::min(kTokenBlock, nt - t0);
        const float* xt = x + t0 * ldx;
        float* yt = y + t0 * ldy;
        int64_t r = 0;
        for (; r + 4 <= nr; r += 4) tile_rows<4>(w + r * ldw, ldw, xt, ldx, kc, yt + r, ldy, tn, accumulate);
        switch (nr - r) {
            case 3: tile_rows<3>(w + r * ldw, ldw, xt, ldx, kc, yt + r, ldy, tn, accumulate); break;
            case 2: tile_rows<2>(w + r * ldw, ldw, xt, ldx, kc, yt + r, ldy, tn, accumulate); break;
            case 1: tile_rows<1>(w + r * ldw, ldw, xt, ldx, kc, yt + r, ldy, tn, accumulate); break;
            default: break;
        }
    }
}

KILN_AVX2 void quantize_x_q8x32_avx2(const float* x, xq32* out, int64_t k) {
    for (int64_t ib = 0; ib < k / QK; ++ib, x += QK) {
        const float amax = hmax(absmax32(x, _mm256_setzero_ps()));
        const float d = amax / 127.0f;
        const __m256 id = _mm256_set1_ps(d > 0 ? 127.0f / amax : 0.0f);
        __m256i sums;
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[ib].qs), quant32(x, id, &sums));
        out[ib].d = d;
        out[ib].sum = hsum_i32(sums);
    }
}

KILN_AVX2 void quantize_x_q8x256_avx2(const float* x, xq256* out, int64_t k) {
    for (int64_t ib = 0; ib < k / QKK; ++ib, x += QKK) {
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < QKK; j += 32) m = absmax32(x + j, m);
        const float amax = hmax(m);
        const float d = amax / 127.0f;
        const __m256 id = _mm256_set1_ps(d > 0 ? 127.0f / amax : 0.0f);
        for (int c = 0; c < 8; ++c) {
            __m256i sums;
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[ib].qs + 32 * c), quant32(x + 32 * c, id, &sums));
        }
        // Group sums from the stored codes (cheap next to the matmul this feeds).
        for (int g = 0; g < 16; ++g) {
            const __m128i q = loadu128(out[ib].qs + 16 * g);
            const __m128i s16 = _mm_maddubs_epi16(_mm_set1_epi8(1), q);
            __m128i s32 = _mm_madd_epi16(s16, _mm_set1_epi16(1));
            s32 = _mm_add_epi32(s32, _mm_shuffle_epi32(s32, _MM_SHUFFLE(1, 0, 3, 2)));
            s32 = _mm_add_epi32(s32, _mm_shuffle_epi32(s32, _MM_SHUFFLE(2, 3, 0, 1)));
            out[ib].bsums[g] = static_cast<int16_t>(_mm_cvtsi128_si32(s32));
        }
        out[ib].d = d;
    }
}

// X on the grid of 32 / 256 through the quantisers above (the same codes as the integer paths):
// each block quantised, then d * code written back as floats.
namespace {
template <class Block, int N, void (*Quantize)(const float*, Block*, int64_t)>
KILN_AVX2 void round_blocks(const float* x, float* out, int64_t k) {
    Block q;
    for (int64_t i = 0; i < k; i += N) {
        Quantize(x + i, &q, N);
        const __m256 d = _mm256_set1_ps(q.d);
        for (int j = 0; j < N; j += 8)
            _mm256_storeu_ps(out + i + j, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                                               _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q.qs + j))))));
    }
}
}  // namespace

void round_x_avx2(const float* x, float* out, int64_t k, int grid) {
    if (grid == QK)
        round_blocks<xq32, QK, quantize_x_q8x32_avx2>(x, out, k);
    else
        round_blocks<xq256, QKK, quantize_x_q8x256_avx2>(x, out, k);
}

Avx2Kernels avx2_kernels(TensorType t) {
    Avx2Kernels k;
    switch (t) {
        case TensorType::F32: k.vec_dot = vd_f32; break;
        case TensorType::F16: k = {XFormat::F32, vd_f16, dec_f16}; break;
        case TensorType::BF16: k = {XFormat::F32, vd_bf16, dec_bf16}; break;
        case TensorType::Q8_0: k = {XFormat::Q8x32, vd_q8_0, dec_q8_0}; break;
        case TensorType::Q4_0: k = {XFormat::Q8x32, vd_q4_0, dec_q4_0}; break;
        case TensorType::Q4_K: k = {XFormat::Q8x256, vd_q4_K, dec_q4_K}; break;
        case TensorType::Q6_K: k = {XFormat::Q8x256, vd_q6_K, dec_q6_K}; break;
        case TensorType::Q4_1: k = {XFormat::Q8x32, vd_min32<q4_1, false>, dec_q4_1}; break;
        case TensorType::Q5_0: k = {XFormat::Q8x32, vd_q5_0, dec_q5_0}; break;
        case TensorType::Q5_1: k = {XFormat::Q8x32, vd_min32<q5_1, true>, dec_q5_1}; break;
        case TensorType::Q2_K: k = {XFormat::Q8x256, vd_q2_K, dec_q2_K}; break;
        case TensorType::Q3_K: k = {XFormat::Q8x256, vd_q3_K, dec_q3_K}; break;
        case TensorType::Q5_K: k = {XFormat::Q8x256, vd_q5_K, dec_q5_K}; break;
        case TensorType::IQ4_NL: k = {XFormat::Q8x32, vd_iq4_nl, dec_iq4_nl}; break;
        case TensorType::IQ4_XS: k = {XFormat::Q8x256, vd_iq4_xs, dec_iq4_xs}; break;
        case TensorType::MXFP4: k = {XFormat::Q8x32, vd_mxfp4, dec_mxfp4}; break;
        // Float decoders only (rare as weights): rows expand to float and use float dots.
        case TensorType::Q8_1: k.decode = dec_q8_1; break;
        case TensorType::Q8_K: k.decode = dec_q8_K; break;
        default: break;
    }
    return k;
}

}  // namespace kiln::kernels::detail

#endif  // KILN_KERNELS_X86
