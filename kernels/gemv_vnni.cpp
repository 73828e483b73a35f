// Decode (one token against every weight row) at the avx512vnni level, straight from the file's
// block layout: no repacked copy of the weights.
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

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#define KILN_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

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

}  // namespace

VnniGemv vnni_gemv(TensorType t) {
    switch (t) {
        case TensorType::Q4_0:
            return {[](int64_t k) { return static_cast<size_t>(n_groups(k)) * kGroupBytes; },
                    [](const float* x, int64_t k, uint8_t* out) { prepare_x32(x, k, 8, out); }, gemv_q4_0};
        default: return {};
    }
}

}  // namespace kiln::kernels::detail

#endif  // KILN_KERNELS_X86
