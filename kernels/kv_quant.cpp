#include "kernels/kv_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu.h"
#include "kernels/half.h"

#if defined(__x86_64__) || defined(__i386__)
#include "kernels/avx2.h"
#define KILN_X86 1
#endif

namespace kiln::kernels {
namespace {

inline int64_t block_len(int64_t n, int64_t b) { return std::min(kKvBlock, n - b * kKvBlock); }

inline float q4_value(const uint8_t* codes, int64_t i) {
    const uint8_t byte = codes[i >> 1];
    return static_cast<float>(static_cast<int>((i & 1) ? byte >> 4 : byte & 0x0f) - 8);
}

#ifdef KILN_X86
// Eight int8 codes as floats.
KILN_AVX2 inline __m256 load_q8x8(const int8_t* c) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c))));
}

// Eight 4-bit codes (four bytes, low nibble first) as floats, minus 8.
KILN_AVX2 inline __m256 load_q4x8(const uint8_t* c) {
    int32_t w;
    std::memcpy(&w, c, 4);
    const __m128i x = _mm_cvtsi32_si128(w);
    const __m128i m = _mm_set1_epi8(0x0f);
    const __m128i lo = _mm_and_si128(x, m), hi = _mm_and_si128(_mm_srli_epi16(x, 4), m);
    const __m256i v = _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi));
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(v, _mm256_set1_epi32(8)));
}

template <bool Q4>
KILN_AVX2 float dot_avx2(const float* a, const uint8_t* codes, const uint16_t* scales, int64_t n) {
    __m256 total = _mm256_setzero_ps();
    float tail = 0.0f;
    for (int64_t b = 0; b * kKvBlock < n; ++b) {
        const int64_t off = b * kKvBlock, len = block_len(n, b);
        __m256 acc = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 8 <= len; i += 8) {
            const __m256 c = Q4 ? load_q4x8(codes + (off + i) / 2) : load_q8x8(reinterpret_cast<const int8_t*>(codes) + off + i);
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + off + i), c, acc);
        }
        const float d = half_to_float(scales[b]);
        float t = 0.0f;
        for (; i < len; ++i)
            t += a[off + i] * (Q4 ? q4_value(codes, off + i) : static_cast<float>(reinterpret_cast<const int8_t*>(codes)[off + i]));
        total = _mm256_fmadd_ps(acc, _mm256_set1_ps(d), total);
        tail += t * d;
    }
    return hsum256(total) + tail;
}

// out = the n stored values (a block's codes times its scale: the scalar path's products).
template <bool Q4>
KILN_AVX2 void dequantize_avx2(const uint8_t* codes, const uint16_t* scales, int64_t n, float* out) {
    for (int64_t b = 0; b * kKvBlock < n; ++b) {
        const int64_t off = b * kKvBlock, len = block_len(n, b);
        const float d = half_to_float(scales[b]);
        const __m256 vd = _mm256_set1_ps(d);
        int64_t i = 0;
        for (; i + 8 <= len; i += 8) {
            const __m256 c = Q4 ? load_q4x8(codes + (off + i) / 2) : load_q8x8(reinterpret_cast<const int8_t*>(codes) + off + i);
            _mm256_storeu_ps(out + off + i, _mm256_mul_ps(c, vd));
        }
        for (; i < len; ++i)
            out[off + i] = (Q4 ? q4_value(codes, off + i) : static_cast<float>(reinterpret_cast<const int8_t*>(codes)[off + i])) * d;
    }
}

template <bool Q4>
KILN_AVX2 void axpy_avx2(float w, const uint8_t* codes, const uint16_t* scales, float* y, int64_t n) {
    for (int64_t b = 0; b * kKvBlock < n; ++b) {
        const int64_t off = b * kKvBlock, len = block_len(n, b);
        const float wd = w * half_to_float(scales[b]);
        const __m256 vw = _mm256_set1_ps(wd);
        int64_t i = 0;
        for (; i + 8 <= len; i += 8) {
            const __m256 c = Q4 ? load_q4x8(codes + (off + i) / 2) : load_q8x8(reinterpret_cast<const int8_t*>(codes) + off + i);
            _mm256_storeu_ps(y + off + i, _mm256_fmadd_ps(vw, c, _mm256_loadu_ps(y + off + i)));
        }
        for (; i < len; ++i)
            y[off + i] += wd * (Q4 ? q4_value(codes, off + i) : static_cast<float>(reinterpret_cast<const int8_t*>(codes)[off + i]));
    }
}
#endif

template <bool Q4>
float dot_scalar(const float* a, const uint8_t* codes, const uint16_t* scales, int64_t n) {
    float total = 0.0f;
    for (int64_t b = 0; b * kKvBlock < n; ++b) {
        const int64_t off = b * kKvBlock, len = block_len(n, b);
        float acc = 0.0f;
        for (int64_t i = 0; i < len; ++i)
            acc += a[off + i] * (Q4 ? q4_value(codes, off + i) : static_cast<float>(reinterpret_cast<const int8_t*>(codes)[off + i]));
        total += acc * half_to_float(scales[b]);
    }
    return total;
}

template <bool Q4>
void axpy_scalar(float w, const uint8_t* codes, const uint16_t* scales, float* y, int64_t n) {
    for (int64_t b = 0; b * kKvBlock < n; ++b) {
        const int64_t off = b * kKvBlock, len = block_len(n, b);
        const float wd = w * half_to_float(scales[b]);
        for (int64_t i = 0; i < len; ++i)
            y[off + i] += wd * (Q4 ? q4_value(codes, off + i) : static_cast<float>(reinterpret_cast<const int8_t*>(codes)[off + i]));
    }
}

}  // namespace

void quantize_q8kv(const float* x, int64_t n, int8_t* codes, uint16_t* scales) {
    for (int64_t b = 0; b * kKvBlock < n; ++b) {
        const int64_t off = b * kKvBlock, len = block_len(n, b);
        float amax = 0.0f;
        for (int64_t i = 0; i < len; ++i) amax = std::max(amax, std::fabs(x[off + i]));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        scales[b] = float_to_half(d);
        for (int64_t i = 0; i < len; ++i) codes[off + i] = static_cast<int8_t>(std::round(x[off + i] * id));
    }
}

void quantize_q4kv(const float* x, int64_t n, uint8_t* codes, uint16_t* scales) {
    for (int64_t b = 0; b * kKvBlock < n; ++b) {
        const int64_t off = b * kKvBlock, len = block_len(n, b);
        float amax = 0.0f, m = 0.0f;
        for (int64_t i = 0; i < len; ++i)
            if (std::fabs(x[off + i]) > amax) {
                amax = std::fabs(x[off + i]);
                m = x[off + i];
            }
        const float d = m / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        scales[b] = float_to_half(d);
        for (int64_t i = 0; i < len; i += 2) {
            const int lo = std::min(15, static_cast<int>(x[off + i] * id + 8.5f));
            const int hi = std::min(15, static_cast<int>(x[off + i + 1] * id + 8.5f));
            codes[(off + i) / 2] = static_cast<uint8_t>(lo | (hi << 4));
        }
    }
}

void dequantize_q8kv(const int8_t* codes, const uint16_t* scales, int64_t n, float* out) {
#ifdef KILN_X86
    if (use_avx2()) return dequantize_avx2<false>(reinterpret_cast<const uint8_t*>(codes), scales, n, out);
#endif
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(codes[i]) * half_to_float(scales[i / kKvBlock]);
}

void dequantize_q4kv(const uint8_t* codes, const uint16_t* scales, int64_t n, float* out) {
#ifdef KILN_X86
    if (use_avx2()) return dequantize_avx2<true>(codes, scales, n, out);
#endif
    for (int64_t i = 0; i < n; ++i) out[i] = q4_value(codes, i) * half_to_float(scales[i / kKvBlock]);
}

float dot_f32_q8kv(const float* a, const int8_t* codes, const uint16_t* scales, int64_t n) {
    const auto* c = reinterpret_cast<const uint8_t*>(codes);
#ifdef KILN_X86
    if (use_avx2()) return dot_avx2<false>(a, c, scales, n);
#endif
    return dot_scalar<false>(a, c, scales, n);
}

void axpy_q8kv(float w, const int8_t* codes, const uint16_t* scales, float* y, int64_t n) {
    const auto* c = reinterpret_cast<const uint8_t*>(codes);
#ifdef KILN_X86
    if (use_avx2()) return axpy_avx2<false>(w, c, scales, y, n);
#endif
    axpy_scalar<false>(w, c, scales, y, n);
}

float dot_f32_q4kv(const float* a, const uint8_t* codes, const uint16_t* scales, int64_t n) {
#ifdef KILN_X86
    if (use_avx2()) return dot_avx2<true>(a, codes, scales, n);
#endif
    return dot_scalar<true>(a, codes, scales, n);
}

void axpy_q4kv(float w, const uint8_t* codes, const uint16_t* scales, float* y, int64_t n) {
#ifdef KILN_X86
    if (use_avx2()) return axpy_avx2<true>(w, codes, scales, y, n);
#endif
    axpy_scalar<true>(w, codes, scales, y, n);
}

}  // namespace kiln::kernels
