#include "kernels/ops.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu.h"
#include "kernels/half.h"

#if defined(__x86_64__) || defined(__i386__)
#include "kernels/avx2.h"
#define KILN_X86 1
#endif

namespace kiln::kernels {
namespace {

// Reductions keep kLanes independent partial sums so the compiler can vectorise them without
// -ffast-math (and the result does not depend on n's alignment to a vector width).
constexpr int kLanes = 16;

float sum_sq(const float* x, int64_t n) {
    float acc[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (int j = 0; j < kLanes; ++j) acc[j] += x[i + j] * x[i + j];
    double s = 0;
    for (int j = 0; j < kLanes; ++j) s += acc[j];
    for (; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
    return static_cast<float>(s);
}

float dot_f32_scalar(const float* a, const float* b, int64_t n) {
    float acc[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
    float s = 0;
    for (int j = 0; j < kLanes; ++j) s += acc[j];
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

float dot_f32_f16_scalar(const float* a, const uint16_t* b, int64_t n) {
    float acc[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * half_to_float(b[i + j]);
    float s = 0;
    for (int j = 0; j < kLanes; ++j) s += acc[j];
    for (; i < n; ++i) s += a[i] * half_to_float(b[i]);
    return s;
}

#ifdef KILN_X86
KILN_AVX2 float dot_f32_avx2(const float* a, const float* b, int64_t n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

KILN_AVX2 inline __m256 load_f16x8(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

KILN_AVX2 float dot_f32_f16_avx2(const float* a, const uint16_t* b, int64_t n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load_f16x8(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), load_f16x8(b + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), load_f16x8(b + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), load_f16x8(b + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load_f16x8(b + i), acc0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; ++i) s += a[i] * half_to_float(b[i]);
    return s;
}

KILN_AVX2 void axpy_f16_avx2(float a, const uint16_t* x, float* y, int64_t n) {
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, load_f16x8(x + i), _mm256_loadu_ps(y + i)));
        _mm256_storeu_ps(y + i + 8,
                         _mm256_fmadd_ps(va, load_f16x8(x + i + 8), _mm256_loadu_ps(y + i + 8)));
    }
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, load_f16x8(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; ++i) y[i] = std::fma(a, half_to_float(x[i]), y[i]);
}

KILN_AVX2 void axpy_f32_avx2(float a, const float* x, float* y, int64_t n) {
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; ++i) y[i] = std::fma(a, x[i], y[i]);
}

KILN_AVX2 void f32_to_f16_avx2(const float* x, uint16_t* out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; ++i) out[i] = float_to_half(x[i]);
}

KILN_AVX2 void f16_to_f32_avx2(const uint16_t* x, float* out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, load_f16x8(x + i));
    for (; i < n; ++i) out[i] = half_to_float(x[i]);
}
#endif  // KILN_X86

}  // namespace

void rms_norm(const float* x, const float* w, int64_t n, float eps, float* out) {
    const float mean = n > 0 ? sum_sq(x, n) / static_cast<float>(n) : 0.0f;
    const float inv = 1.0f / std::sqrt(mean + eps);
    if (w) {
        for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv * w[i];
    } else {
        for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv;
    }
}

void layer_norm(const float* x, const float* w, const float* b, int64_t n, float eps, float* out) {
    if (n <= 0) return;
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += x[i];
    const float mean = static_cast<float>(s / static_cast<double>(n));
    double v = 0;
    for (int64_t i = 0; i < n; ++i) {
        const double d = static_cast<double>(x[i]) - mean;
        v += d * d;
    }
    const float inv = static_cast<float>(1.0 / std::sqrt(v / static_cast<double>(n) + eps));
    for (int64_t i = 0; i < n; ++i) {
        float y = (x[i] - mean) * inv;
        if (w) y *= w[i];
        if (b) y += b[i];
        out[i] = y;
    }
}

void softmax_inplace(float* x, int64_t n) {
    if (n <= 0) return;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
    if (mx == -std::numeric_limits<float>::infinity()) {  // everything masked: uniform
        for (int64_t i = 0; i < n; ++i) x[i] = 1.0f / static_cast<float>(n);
        return;
    }
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) {
        const float e = std::exp(x[i] - mx);
        x[i] = e;
        sum += e;
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void silu(const float* x, float* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] / (1.0f + std::exp(-x[i]));
}

void gelu_tanh(const float* x, float* out, int64_t n) {
    constexpr float kSqrt2OverPi = 0.7978845608028654f;
    for (int64_t i = 0; i < n; ++i) {
        const float v = x[i];
        out[i] = 0.5f * v * (1.0f + std::tanh(kSqrt2OverPi * (v + 0.044715f * v * v * v)));
    }
}

void swiglu_oai(const float* gate, const float* up, float* out, int64_t n, float alpha, float limit) {
    for (int64_t i = 0; i < n; ++i) {
        const float x = std::min(gate[i], limit);
        const float y = std::clamp(up[i], -limit, limit);
        out[i] = x / (1.0f + std::exp(-alpha * x)) * (y + 1.0f);
    }
}

void softcap(const float* x, float* out, int64_t n, float cap) {
    const float inv = 1.0f / cap;
    for (int64_t i = 0; i < n; ++i) out[i] = cap * std::tanh(x[i] * inv);
}

void sigmoid(const float* x, float* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = 1.0f / (1.0f + std::exp(-x[i]));
}

void normalize_sum(const float* x, float* out, int64_t n) {
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += x[i];
    const float inv = static_cast<float>(1.0 / std::max(sum, 6.103515625e-5));
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv;
}

void add(const float* a, const float* b, float* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void mul(const float* a, const float* b, float* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = a[i] * b[i];
}

void scale(float* x, float s, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

float dot_f32(const float* a, const float* b, int64_t n) {
#ifdef KILN_X86
    if (use_avx2()) return dot_f32_avx2(a, b, n);
#endif
    return dot_f32_scalar(a, b, n);
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
#ifdef KILN_X86
    if (use_avx2()) return axpy_f32_avx2(a, x, y, n);
#endif
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

float dot_f32_f16(const float* a, const uint16_t* b_f16, int64_t n) {
#ifdef KILN_X86
    if (use_avx2()) return dot_f32_f16_avx2(a, b_f16, n);
#endif
    return dot_f32_f16_scalar(a, b_f16, n);
}

void axpy_f16(float a, const uint16_t* x_f16, float* y, int64_t n) {
#ifdef KILN_X86
    if (use_avx2()) return axpy_f16_avx2(a, x_f16, y, n);
#endif
    for (int64_t i = 0; i < n; ++i) y[i] += a * half_to_float(x_f16[i]);
}

void f32_to_f16(const float* x, uint16_t* out, int64_t n) {
#ifdef KILN_X86
    if (use_avx2()) return f32_to_f16_avx2(x, out, n);
#endif
    for (int64_t i = 0; i < n; ++i) out[i] = float_to_half(x[i]);
}

void f16_to_f32(const uint16_t* x, float* out, int64_t n) {
#ifdef KILN_X86
    if (use_avx2()) return f16_to_f32_avx2(x, out, n);
#endif
    for (int64_t i = 0; i < n; ++i) out[i] = half_to_float(x[i]);
}

}  // namespace kiln::kernels
