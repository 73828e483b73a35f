// Decode (one token against every weight row) at the avx512vnni level, straight from the file's
// block layout: no repacked copy of the weights. Q4_0, Q8_0, Q4_K and Q6_K (what Q4_0, Q8_0 and
// Q4_K_M files are made of); the other types keep the AVX2 dots.
//
// The per-row AVX2 dots spend most of their instructions per 32-element block on the block's own
// bookkeeping (a scalar f16 scale, a broadcast, an int->float conversion and an FMA for 32
// products). Here four blocks share one zmm: their 4 x 16 code bytes are loaded side by side (the
// low and high nibbles make two zmm of codes) and one word permute puts each block's f16 scale
// under its four int32 lanes. Two vpdpbusd against activations laid out in the same order give
// the 16 lanes, starting from the format's integer offset precomputed per lane; one conversion
// and one FMA apply the scales. (Codes are loaded 16 bytes at a time: gathering them from two
// 64-byte loads with vpermt2w was as fast from L2 but half as fast streaming from memory.)
#include "kernels/matmul_impl.h"

#ifdef KILN_KERNELS_X86

#include <algorithm>
#include <cstring>

#include "kernels/avx512.h"

namespace kiln::kernels::detail {
namespace {

using namespace blk;

// Activation layout (per token), for k = nb blocks of 32 and ng = ceil(nb / 4) groups of four
// blocks, 256 bytes per group:
//   lo[64]:   the low halves (elements 0..15) of the group's four blocks, 16 bytes each
//   hi[64]:   their high halves (elements 16..31)
//   d[16]:    float, lane 4j + i holds block j's scale (the int32 lanes of a group's dot)
//   corr[16]: int32, -offset * (the sum of the codes lane 4j + i meets in lo and hi): the weight
//             format's integer offset, applied by starting the lane's accumulator there.
// Blocks past nb are zero.
constexpr size_t kGroupBytes = 256;
int64_t n_groups(int64_t k) { return (k / QK + 3) / 4; }

// Quantises x (the q8_0 grid of 32, the codes quantize_x_q8x32_avx2 makes) into the layout above.
KILN_VNNI void prepare_x32(const float* x, int64_t k, int offset, uint8_t* out) {
    const int64_t nb = k / QK, ng = n_groups(k);
    std::memset(out, 0, static_cast<size_t>(ng) * kGroupBytes);
    for (int64_t b = 0; b < nb; ++b) {
        xq32 q;
        quantize_x_q8x32_avx2(x + b * QK, &q, QK);
        uint8_t* g = out + static_cast<size_t>(b / 4) * kGroupBytes;
        const int j = static_cast<int>(b % 4);
        std::memcpy(g + 16 * j, q.qs, 16);
        std::memcpy(g + 64 + 16 * j, q.qs + 16, 16);
        float* d = reinterpret_cast<float*>(g + 128);
        int32_t* corr = reinterpret_cast<int32_t*>(g + 192);
        for (int i = 0; i < 4; ++i) {
            d[4 * j + i] = q.d;
            int s = 0;
            for (int e = 0; e < 4; ++e) s += q.qs[4 * i + e] + q.qs[16 + 4 * i + e];
            corr[4 * j + i] = -offset * s;
        }
    }
}

// Word indices for vpermw over the first 64 bytes of a group of four Q4_0 blocks: words 4j ..
// 4j+3 take block j's f16 scale (words 16..31 unused).
KILN_VNNI inline __m512i q4_0_scale_index() {
    alignas(64) uint16_t d[32] = {};
    for (int o = 0; o < 16; ++o) d[o] = static_cast<uint16_t>(9 * (o / 4));
    return _mm512_load_si512(d);
}

KILN_VNNI inline float hsum512(__m512 v) { return _mm512_reduce_add_ps(v); }

// One group: acc += (int dot of the four blocks, offset applied) * d_w * d_x, lane-wise.
KILN_VNNI inline __m512 q4_0_group(const uint8_t* wg, const uint8_t* xg, __m512i scale_index, __m512 acc) {
    __m512i q = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wg + 2)));
    q = _mm512_inserti32x4(q, _mm_loadu_si128(reinterpret_cast<const __m128i*>(wg + 20)), 1);
    q = _mm512_inserti32x4(q, _mm_loadu_si128(reinterpret_cast<const __m128i*>(wg + 38)), 2);
    q = _mm512_inserti32x4(q, _mm_loadu_si128(reinterpret_cast<const __m128i*>(wg + 56)), 3);
    const __m512 dw = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(scale_index, _mm512_loadu_si512(wg))));
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512i p = _mm512_dpbusd_epi32(_mm512_loadu_si512(xg + 192), _mm512_and_si512(q, m4), _mm512_loadu_si512(xg));
    p = _mm512_dpbusd_epi32(p, _mm512_and_si512(_mm512_srli_epi16(q, 4), m4), _mm512_loadu_si512(xg + 64));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dw, _mm512_loadu_ps(reinterpret_cast<const float*>(xg + 128))), acc);
}

// y[r - r0] = row r . x for rows [r0, r1).
KILN_VNNI void gemv_q4_0(const uint8_t* w, size_t row_bytes, int64_t r0, int64_t r1, int64_t k, const uint8_t* xs, float* y) {
    const int64_t nb = k / QK, full = nb / 4;
    const int tail = static_cast<int>(nb % 4);
    const __m512i ix = q4_0_scale_index();
    constexpr size_t kGroupW = 4 * sizeof(q4_0);  // 72 bytes
    for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* row = w + static_cast<size_t>(r) * row_bytes;
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        int64_t g = 0;
        for (; g + 2 <= full; g += 2) {
            acc0 = q4_0_group(row + g * kGroupW, xs + g * kGroupBytes, ix, acc0);
            acc1 = q4_0_group(row + (g + 1) * kGroupW, xs + (g + 1) * kGroupBytes, ix, acc1);
        }
        if (g < full) acc0 = q4_0_group(row + g * kGroupW, xs + g * kGroupBytes, ix, acc0);
        if (tail) {
            alignas(64) uint8_t buf[kGroupW + 64] = {};
            std::memcpy(buf, row + full * kGroupW, static_cast<size_t>(tail) * sizeof(q4_0));
            acc1 = q4_0_group(buf, xs + full * kGroupBytes, ix, acc1);
        }
        y[r - r0] = hsum512(_mm512_add_ps(acc0, acc1));
    }
}

// Q8_0: signed codes made unsigned (q + 128, the 128 * sum(x) taken back through the accumulator's
// start), two blocks per zmm. Activations per group of four blocks (384 bytes): the codes in
// element order, int32[32] -128 * (each lane's four codes), float[32] each lane's block scale.
constexpr size_t kQ80XBytes = 384;

KILN_VNNI void prepare_x_q8_0(const float* x, int64_t k, uint8_t* out) {
    const int64_t nb = k / QK, ng = n_groups(k);
    std::memset(out, 0, static_cast<size_t>(ng) * kQ80XBytes);
    for (int64_t b = 0; b < nb; ++b) {
        xq32 q;
        quantize_x_q8x32_avx2(x + b * QK, &q, QK);
        uint8_t* g = out + static_cast<size_t>(b / 4) * kQ80XBytes;
        const int j = static_cast<int>(b % 4);
        std::memcpy(g + 32 * j, q.qs, 32);
        int32_t* corr = reinterpret_cast<int32_t*>(g + 128) + 8 * j;
        float* d = reinterpret_cast<float*>(g + 256) + 8 * j;
        for (int l = 0; l < 8; ++l) {
            corr[l] = -128 * (q.qs[4 * l] + q.qs[4 * l + 1] + q.qs[4 * l + 2] + q.qs[4 * l + 3]);
            d[l] = q.d;
        }
    }
}

// Two blocks (68 bytes at wp) against their 64 activation codes: acc += lanes * d_w * d_x.
KILN_VNNI inline __m512 q8_0_pair(const uint8_t* wp, const uint8_t* xg, int half, __m512i scale_index, __m512 acc) {
    const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 2))),
                                         _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 36)), 1);
    const __m512 dw = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(scale_index, _mm512_loadu_si512(wp))));
    const __m512i p = _mm512_dpbusd_epi32(_mm512_loadu_si512(xg + 128 + 64 * half), _mm512_xor_si512(q, _mm512_set1_epi8(static_cast<char>(0x80))),
                                          _mm512_loadu_si512(xg + 64 * half));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dw, _mm512_loadu_ps(reinterpret_cast<const float*>(xg + 256) + 16 * half)), acc);
}

KILN_VNNI void gemv_q8_0(const uint8_t* w, size_t row_bytes, int64_t r0, int64_t r1, int64_t k, const uint8_t* xs, float* y) {
    const int64_t nb = k / QK, full = nb / 4;
    const int tail = static_cast<int>(nb % 4);
    alignas(64) uint16_t idx[32] = {};
    for (int o = 0; o < 16; ++o) idx[o] = static_cast<uint16_t>(o < 8 ? 0 : 17);  // the f16 scales at bytes 0 and 34
    const __m512i ix = _mm512_load_si512(idx);
    constexpr size_t kGroupW = 4 * sizeof(q8_0);  // 136 bytes
    for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* row = w + static_cast<size_t>(r) * row_bytes;
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        for (int64_t g = 0; g < full; ++g) {
            const uint8_t* wg = row + g * kGroupW;
            const uint8_t* xg = xs + g * kQ80XBytes;
            acc0 = q8_0_pair(wg, xg, 0, ix, acc0);
            acc1 = q8_0_pair(wg + 2 * sizeof(q8_0), xg, 1, ix, acc1);
        }
        if (tail) {
            alignas(64) uint8_t buf[kGroupW + 64] = {};
            std::memcpy(buf, row + full * kGroupW, static_cast<size_t>(tail) * sizeof(q8_0));
            const uint8_t* xg = xs + full * kQ80XBytes;
            acc0 = q8_0_pair(buf, xg, 0, ix, acc0);
            if (tail > 2) acc1 = q8_0_pair(buf + 2 * sizeof(q8_0), xg, 1, ix, acc1);
        }
        y[r - r0] = hsum512(_mm512_add_ps(acc0, acc1));
    }
}

// ---- K-quants: super-blocks of 256 on the activation grid of 256 --------------------------------

// Q4_K: qs[32c + i] holds element 64c + i (low nibble) and 64c + 32 + i (high nibble); sub-block
// s of 32 elements has a 6-bit scale and min. Two zmm loads of qs give four zmm of codes:
// low(qs[0..63]) = sub-blocks 0 | 2, high = 1 | 3, and 4 | 6, 5 | 7 from qs[64..127].
// Activations per super-block (320 bytes): the codes in that order, then float d, then
// float[8] d * (sum of sub-block s's codes).
constexpr size_t kQ4KXBytes = 320;
constexpr int kQ4KOrder[8] = {0, 2, 1, 3, 4, 6, 5, 7};

KILN_VNNI void prepare_x_q4_K(const float* x, int64_t k, uint8_t* out) {
    for (int64_t b = 0; b < k / QKK; ++b, out += kQ4KXBytes) {
        xq256 q;
        quantize_x_q8x256_avx2(x + b * QKK, &q, QKK);
        for (int i = 0; i < 8; ++i) std::memcpy(out + 32 * i, q.qs + 32 * kQ4KOrder[i], 32);
        float* f = reinterpret_cast<float*>(out + 256);
        f[0] = q.d;
        for (int i = 1; i < 8; ++i) f[i] = 0.0f;
        for (int s8 = 0; s8 < 8; ++s8) f[8 + s8] = q.d * static_cast<float>(q.bsums[2 * s8] + q.bsums[2 * s8 + 1]);
    }
}

// Lanes 0..7 take entry a, lanes 8..15 entry b.
KILN_VNNI inline __m512i pair_index(int a, int b) {
    return _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b);
}

KILN_VNNI void gemv_q4_K(const uint8_t* w, size_t row_bytes, int64_t r0, int64_t r1, int64_t k, const uint8_t* xs, float* y) {
    const int64_t nb = k / QKK;
    const __m512i ix[4] = {pair_index(0, 2), pair_index(1, 3), pair_index(4, 6), pair_index(5, 7)};
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int64_t r = r0; r < r1; ++r) {
        const q4_K* row = reinterpret_cast<const q4_K*>(w + static_cast<size_t>(r) * row_bytes);
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        __m256 macc = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; ++b) {
            const q4_K& blk = row[b];
            const uint8_t* xb = xs + b * kQ4KXBytes;
            const float* xf = reinterpret_cast<const float*>(xb + 256);
            uint32_t u[3], sm[4];
            std::memcpy(u, blk.scales, 12);
            sm[0] = u[0] & 0x3f3f3f3fu;                                               // scales 0..3
            sm[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);        // scales 4..7
            sm[2] = u[1] & 0x3f3f3f3fu;                                               // mins 0..3
            sm[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);  // mins 4..7
            const __m128i scmn = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sm));
            const __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(blk.d | (static_cast<uint32_t>(blk.dmin) << 16))));
            const float dx = xf[0];
            const __m256 mins = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(scmn, 8)));
            macc = _mm256_fmadd_ps(_mm256_mul_ps(mins, _mm256_loadu_ps(xf + 8)), _mm256_set1_ps(_mm_cvtss_f32(_mm_movehdup_ps(dd))), macc);
            const __m512 sc = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(scmn)), _mm512_set1_ps(_mm_cvtss_f32(dd) * dx));
            const __m512i z0 = _mm512_loadu_si512(blk.qs), z1 = _mm512_loadu_si512(blk.qs + 64);
            const __m512i c[4] = {_mm512_and_si512(z0, m4), _mm512_and_si512(_mm512_srli_epi16(z0, 4), m4),
                                  _mm512_and_si512(z1, m4), _mm512_and_si512(_mm512_srli_epi16(z1, 4), m4)};
            for (int i = 0; i < 4; ++i) {
                const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c[i], _mm512_loadu_si512(xb + 64 * i));
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(ix[i], sc), acc[i]);
            }
        }
        const __m512 a = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        __m128 m = _mm_add_ps(_mm256_castps256_ps128(macc), _mm256_extractf128_ps(macc, 1));
        m = _mm_add_ps(m, _mm_movehl_ps(m, m));
        m = _mm_add_ss(m, _mm_movehdup_ps(m));
        y[r - r0] = hsum512(a) - _mm_cvtss_f32(m);
    }
}

// Q6_K: per half h (128 elements) ql[64h .. 64h+63] holds elements 0..63 in its low nibbles and
// 64..127 in its high ones; qh[32h + i] adds bits 4-5 for elements i, 32 + i, 64 + i, 96 + i
// (bit pairs 0, 1, 2, 3). Codes 0..63, offset 32, a signed scale per 16 elements. Activations
// per super-block (576 bytes): the codes in element order, int32[64] -32 * (the sum of the four
// codes of each vpdpbusd lane), float d.
constexpr size_t kQ6KXBytes = 576;

KILN_VNNI void prepare_x_q6_K(const float* x, int64_t k, uint8_t* out) {
    for (int64_t b = 0; b < k / QKK; ++b, out += kQ6KXBytes) {
        xq256 q;
        quantize_x_q8x256_avx2(x + b * QKK, &q, QKK);
        std::memcpy(out, q.qs, 256);
        int32_t* corr = reinterpret_cast<int32_t*>(out + 256);
        for (int l = 0; l < 64; ++l)
            corr[l] = -32 * (q.qs[4 * l] + q.qs[4 * l + 1] + q.qs[4 * l + 2] + q.qs[4 * l + 3]);
        float* f = reinterpret_cast<float*>(out + 512);
        f[0] = q.d;
        for (int i = 1; i < 16; ++i) f[i] = 0.0f;
    }
}

KILN_VNNI void gemv_q6_K(const uint8_t* w, size_t row_bytes, int64_t r0, int64_t r1, int64_t k, const uint8_t* xs, float* y) {
    const int64_t nb = k / QKK;
    // zmm j of a super-block (elements 64j .. 64j+63): lane l takes scale 4j + l / 4.
    __m512i ix[4];
    for (int j = 0; j < 4; ++j) {
        const int b = 4 * j;
        ix[j] = _mm512_setr_epi32(b, b, b, b, b + 1, b + 1, b + 1, b + 1, b + 2, b + 2, b + 2, b + 2, b + 3, b + 3, b + 3, b + 3);
    }
    const __m512i m4 = _mm512_set1_epi8(0x0F), m3 = _mm512_set1_epi8(0x03);
    for (int64_t r = r0; r < r1; ++r) {
        const q6_K* row = reinterpret_cast<const q6_K*>(w + static_cast<size_t>(r) * row_bytes);
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int64_t b = 0; b < nb; ++b) {
            const q6_K& blk = row[b];
            const uint8_t* xb = xs + b * kQ6KXBytes;
            const float dx = reinterpret_cast<const float*>(xb + 512)[0];
            const __m512 sc = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.scales)))),
                                            _mm512_set1_ps(_cvtsh_ss(blk.d) * dx));
            for (int h = 0; h < 2; ++h) {
                const __m512i ql = _mm512_loadu_si512(blk.ql + 64 * h);
                const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qh + 32 * h));
                // bytes 0..31: bit pair 0 of qh (elements 0..31), bytes 32..63: pair 1 (32..63).
                const __m512i hb = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
                const __m512i lo = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_slli_epi16(_mm512_and_si512(hb, m3), 4));
                const __m512i hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                                   _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(hb, 4), m3), 4));
                const int j0 = 2 * h, j1 = 2 * h + 1;
                const __m512i p0 = _mm512_dpbusd_epi32(_mm512_loadu_si512(xb + 256 + 64 * j0), lo, _mm512_loadu_si512(xb + 64 * j0));
                const __m512i p1 = _mm512_dpbusd_epi32(_mm512_loadu_si512(xb + 256 + 64 * j1), hi, _mm512_loadu_si512(xb + 64 * j1));
                acc[j0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), _mm512_permutexvar_ps(ix[j0], sc), acc[j0]);
                acc[j1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), _mm512_permutexvar_ps(ix[j1], sc), acc[j1]);
            }
        }
        y[r - r0] = hsum512(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
    }
}

}  // namespace

VnniGemv vnni_gemv(TensorType t) {
    switch (t) {
        case TensorType::Q4_0:
            return {[](int64_t k) { return static_cast<size_t>(n_groups(k)) * kGroupBytes; },
                    [](const float* x, int64_t k, uint8_t* out) { prepare_x32(x, k, 8, out); }, gemv_q4_0};
        case TensorType::Q8_0:
            return {[](int64_t k) { return static_cast<size_t>(n_groups(k)) * kQ80XBytes; }, prepare_x_q8_0, gemv_q8_0};
        case TensorType::Q4_K:
            return {[](int64_t k) { return static_cast<size_t>(k / QKK) * kQ4KXBytes; }, prepare_x_q4_K, gemv_q4_K};
        case TensorType::Q6_K:
            return {[](int64_t k) { return static_cast<size_t>(k / QKK) * kQ6KXBytes; }, prepare_x_q6_K, gemv_q6_K};
        default: return {};
    }
}

}  // namespace kiln::kernels::detail

#endif  // KILN_KERNELS_X86
