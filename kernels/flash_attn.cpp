// Tiled causal attention (kernels/flash_attn.h): the portable loops here, the AVX2 and AVX-512
// bodies from kernels/flash_attn_simd.h built once per level with that level's target attribute.
#include "kernels/flash_attn.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include <fmt/format.h>

#include "kernels/cpu.h"
#include "kiln/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KILN_X86 1
// GCC 12's AVX-512 intrinsics trip -Wmaybe-uninitialized where they inline (see matmul_vnni.cpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif

namespace kiln::kernels {
namespace {

constexpr int R = FlashAttn::kRows;
constexpr int KB = FlashAttn::kKeys;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

size_t round16(int64_t n) { return static_cast<size_t>((n + 15) / 16 * 16); }

// ---- portable loops (the same layouts; written so that the compiler can vectorise over rows) ----

void scores_scalar(const float* qt, int nr, const float* k, int64_t ks, int64_t dk, int nk, float* s) {
    for (int j = 0; j < nk; ++j) {
        float* sj = s + j * R;
        std::fill(sj, sj + nr, 0.0f);
        for (int64_t d = 0; d < dk; ++d) {
            const float kd = k[j * ks + d];
            const float* q = qt + d * R;
            for (int r = 0; r < nr; ++r) sj[r] += kd * q[r];
        }
    }
}

void softmax_scalar(float* s, int nk, int nr, float* m, float* l, float* alpha, const float* first, const float* last,
                    float pos0, bool mask, float softcap) {
    for (int r = 0; r < nr; ++r) {
        float mx = m[r];
        for (int j = 0; j < nk; ++j) {
            float& x = s[j * R + r];
            if (softcap > 0.0f) x = softcap * std::tanh(x / softcap);
            const float pos = pos0 + static_cast<float>(j);
            if (mask && (pos < first[r] || pos > last[r])) x = kNegInf;
            mx = std::max(mx, x);
        }
        const float ms = mx == kNegInf ? 0.0f : mx;
        const float a = std::exp(m[r] - ms);
        float sum = 0.0f;
        for (int j = 0; j < nk; ++j) {
            float& x = s[j * R + r];
            x = std::exp(x - ms);
            sum += x;
        }
        l[r] = l[r] * a + sum;
        m[r] = mx;
        alpha[r] = a;
    }
}

void pv_scalar(const float* s, int nk, int n, const float* v, int64_t vs, float* o, int64_t dvp, const float* alpha) {
    for (int r = 0; r < n; ++r) {
        float* orow = o + r * dvp;
        const float a = alpha[r];
        for (int64_t d = 0; d < dvp; ++d) orow[d] *= a;
        for (int j = 0; j < nk; ++j) {
            const float p = s[j * R + r];
            const float* vj = v + j * vs;
            for (int64_t d = 0; d < dvp; ++d) orow[d] += p * vj[d];
        }
    }
}

}  // namespace

#ifdef KILN_X86

// ---- AVX2 + FMA: 8 lanes ----------------------------------------------------------------------
namespace fa_avx2 {
namespace {
#define KILN_FA_TARGET __attribute__((target("avx2,fma,f16c")))
using Vf = __m256;
constexpr int W = 8;
constexpr int kSKeys = 4, kSVecs = 3;    // S tile: 12 accumulators
constexpr int kPvRows = 4, kPvVecs = 3;  // PV tile: 12 accumulators

KILN_FA_TARGET inline Vf vzero() { return _mm256_setzero_ps(); }
KILN_FA_TARGET inline Vf vload(const float* p) { return _mm256_loadu_ps(p); }
KILN_FA_TARGET inline void vstore(float* p, Vf v) { _mm256_storeu_ps(p, v); }
KILN_FA_TARGET inline Vf vset(float x) { return _mm256_set1_ps(x); }
KILN_FA_TARGET inline Vf vfma(Vf a, Vf b, Vf c) { return _mm256_fmadd_ps(a, b, c); }
KILN_FA_TARGET inline Vf vmax(Vf a, Vf b) { return _mm256_max_ps(a, b); }
KILN_FA_TARGET inline Vf vadd(Vf a, Vf b) { return _mm256_add_ps(a, b); }
KILN_FA_TARGET inline Vf vsub(Vf a, Vf b) { return _mm256_sub_ps(a, b); }
KILN_FA_TARGET inline Vf vmul(Vf a, Vf b) { return _mm256_mul_ps(a, b); }

// exp(x): x = n ln2 + f, |f| <= ln2 / 2, exp(f) by the Cephes polynomial, times 2^n; 0 below -87.
KILN_FA_TARGET inline Vf vexp(Vf x) {
    const Vf tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    const Vf n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    Vf y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(tiny, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}
// tanh(x) = sign(x) (1 - t) / (1 + t), t = exp(-2|x|).
KILN_FA_TARGET inline Vf vtanh(Vf x) {
    const Vf sign = _mm256_set1_ps(-0.0f);
    const Vf t = vexp(_mm256_mul_ps(_mm256_andnot_ps(sign, x), _mm256_set1_ps(-2.0f)));
    const Vf one = _mm256_set1_ps(1.0f);
    return _mm256_or_ps(_mm256_div_ps(_mm256_sub_ps(one, t), _mm256_add_ps(one, t)), _mm256_and_ps(sign, x));
}
KILN_FA_TARGET inline Vf vmask(Vf x, Vf pos, Vf first, Vf last) {
    const Vf in = _mm256_and_ps(_mm256_cmp_ps(pos, first, _CMP_GE_OQ), _mm256_cmp_ps(pos, last, _CMP_LE_OQ));
    return _mm256_blendv_ps(_mm256_set1_ps(kNegInf), x, in);
}
KILN_FA_TARGET inline Vf vsafe(Vf m) {
    return _mm256_andnot_ps(_mm256_cmp_ps(m, _mm256_set1_ps(kNegInf), _CMP_EQ_OQ), m);
}

#include "kernels/flash_attn_simd.h"
#undef KILN_FA_TARGET
}  // namespace
}  // namespace fa_avx2

// ---- AVX-512 F: 16 lanes ----------------------------------------------------------------------
namespace fa_avx512 {
namespace {
#define KILN_FA_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl")))
using Vf = __m512;
constexpr int W = 16;
constexpr int kSKeys = 6, kSVecs = 4;    // S tile: 24 accumulators
constexpr int kPvRows = 6, kPvVecs = 4;  // PV tile: 24 accumulators

KILN_FA_TARGET inline Vf vzero() { return _mm512_setzero_ps(); }
KILN_FA_TARGET inline Vf vload(const float* p) { return _mm512_loadu_ps(p); }
KILN_FA_TARGET inline void vstore(float* p, Vf v) { _mm512_storeu_ps(p, v); }
KILN_FA_TARGET inline Vf vset(float x) { return _mm512_set1_ps(x); }
KILN_FA_TARGET inline Vf vfma(Vf a, Vf b, Vf c) { return _mm512_fmadd_ps(a, b, c); }
KILN_FA_TARGET inline Vf vmax(Vf a, Vf b) { return _mm512_max_ps(a, b); }
KILN_FA_TARGET inline Vf vadd(Vf a, Vf b) { return _mm512_add_ps(a, b); }
KILN_FA_TARGET inline Vf vsub(Vf a, Vf b) { return _mm512_sub_ps(a, b); }
KILN_FA_TARGET inline Vf vmul(Vf a, Vf b) { return _mm512_mul_ps(a, b); }

// As the AVX2 one; 2^n by scalef.
KILN_FA_TARGET inline Vf vexp(Vf x) {
    const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    const Vf n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
    Vf y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_mov_ps(static_cast<__mmask16>(~tiny), _mm512_scalef_ps(y, n));
}
KILN_FA_TARGET inline Vf vtanh(Vf x) {
    const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
    const __m512i xi = _mm512_castps_si512(x);
    const Vf ax = _mm512_castsi512_ps(_mm512_andnot_si512(sign, xi));
    const Vf t = vexp(_mm512_mul_ps(ax, _mm512_set1_ps(-2.0f)));
    const Vf one = _mm512_set1_ps(1.0f);
    const Vf r = _mm512_div_ps(_mm512_sub_ps(one, t), _mm512_add_ps(one, t));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(r), _mm512_and_si512(sign, xi)));
}
KILN_FA_TARGET inline Vf vmask(Vf x, Vf pos, Vf first, Vf last) {
    const __mmask16 in = _mm512_cmp_ps_mask(pos, first, _CMP_GE_OQ) & _mm512_cmp_ps_mask(pos, last, _CMP_LE_OQ);
    return _mm512_mask_mov_ps(_mm512_set1_ps(kNegInf), in, x);
}
KILN_FA_TARGET inline Vf vsafe(Vf m) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(m, _mm512_set1_ps(kNegInf), _CMP_NEQ_UQ), m);
}

#include "kernels/flash_attn_simd.h"
#undef KILN_FA_TARGET
}  // namespace
}  // namespace fa_avx512

#endif  // KILN_X86

size_t FlashAttn::scratch_bytes(int64_t dk, int64_t dv) {
    const size_t floats = round16(dk) * R                       // qt
                          + static_cast<size_t>(KB) * R         // s
                          + static_cast<size_t>(R) * round16(dv)  // o
                          + 5 * static_cast<size_t>(R)          // m, l, alpha, first, last
                          + round16(KB * dk + 16)               // k block (+ slack)
                          + static_cast<size_t>(KB) * round16(dv);  // v block
    return floats * sizeof(float) + 64;
}

FlashAttn::FlashAttn(void* scratch, int64_t dk, int64_t dv, float scale, float softcap)
    : dk_(dk), dv_(dv), dvp_(static_cast<int64_t>(round16(dv))), scale_(scale), softcap_(softcap), level_(kernel_level()) {
    if (dk <= 0 || dv <= 0) throw Error(fmt::format("flash attention: heads of {} keys and {} values", dk, dv));
    float* p = static_cast<float*>(scratch);
    auto take = [&p](size_t n) {
        float* r = p;
        p += n;
        return r;
    };
    qt_ = take(round16(dk) * R);
    s_ = take(static_cast<size_t>(KB) * R);
    o_ = take(static_cast<size_t>(R) * static_cast<size_t>(dvp_));
    m_ = take(R);
    l_ = take(R);
    alpha_ = take(R);
    first_ = take(R);
    last_ = take(R);
    kbuf_ = take(round16(KB * dk + 16));
    vbuf_ = take(static_cast<size_t>(KB) * static_cast<size_t>(dvp_));
    // The key block's slack (read as MLA values past its last row) and the value padding stay 0.
    std::fill(kbuf_ + KB * dk, kbuf_ + round16(KB * dk + 16), 0.0f);
    std::fill(vbuf_, vbuf_ + KB * dvp_, 0.0f);
}

void FlashAttn::begin(int n, const float* const* q, const int64_t* first, const int64_t* last) {
    if (n < 1 || n > R) throw Error(fmt::format("flash attention: a tile of {} rows (1..{})", n, R));
    n_ = n;
    const int np = static_cast<int>(round16(n));
    // Rows that see nothing count neither for the tile's base nor for the unmasked range (with
    // one of them every block is masked).
    bool any = false, empty = false;
    for (int r = 0; r < n; ++r) {
        if (last[r] < first[r]) {
            empty = true;
            continue;
        }
        pos_base_ = any ? std::min(pos_base_, first[r]) : first[r];
        max_first_ = any ? std::max(max_first_, first[r]) : first[r];
        min_last_ = any ? std::min(min_last_, last[r]) : last[r];
        any = true;
    }
    if (!any) pos_base_ = max_first_ = min_last_ = 0;
    if (empty) min_last_ = std::numeric_limits<int64_t>::min();
    for (int r = 0; r < n; ++r) {
        const bool none = last[r] < first[r];
        if (!none && last[r] - pos_base_ >= (int64_t{1} << 24))
            throw Error(fmt::format("flash attention: row {} sees positions [{}, {}] (a tile spans under 2^24)", r,
                                    first[r], last[r]));
        first_[r] = none ? 1e30f : static_cast<float>(first[r] - pos_base_);
        last_[r] = none ? -1e30f : static_cast<float>(last[r] - pos_base_);
    }
    // Transposed a dimension at a time: each store is a run of rows (the query rows stay in L1).
    for (int64_t d = 0; d < dk_; ++d) {
        float* qd = qt_ + d * R;
        for (int r = 0; r < n; ++r) qd[r] = q[r][d] * scale_;
    }
    for (int r = n; r < np; ++r) {  // padding rows: see nothing, queries 0
        first_[r] = 1e30f;
        last_[r] = -1e30f;
        for (int64_t d = 0; d < dk_; ++d) qt_[d * R + r] = 0.0f;
    }
    std::fill(m_, m_ + np, kNegInf);
    std::fill(l_, l_ + np, 0.0f);
    std::fill(o_, o_ + static_cast<int64_t>(n) * dvp_, 0.0f);
}

void FlashAttn::block(int64_t pos0, int nk, const float* k, int64_t k_stride, const float* v, int64_t v_stride) {
    if (nk < 1 || nk > KB) throw Error(fmt::format("flash attention: a block of {} keys (1..{})", nk, KB));
    const bool mask = pos0 < max_first_ || pos0 + nk - 1 > min_last_;
    const float p0 = static_cast<float>(pos0 - pos_base_);
#ifdef KILN_X86
    if (level_ >= KernelLevel::Avx512Vnni) {
        const int nrv = (n_ + 15) / 16;
        fa_avx512::scores(qt_, nrv, k, k_stride, dk_, nk, s_);
        fa_avx512::softmax(s_, nk, nrv, m_, l_, alpha_, first_, last_, p0, mask, softcap_);
        fa_avx512::pv(s_, nk, n_, v, v_stride, o_, dvp_, alpha_);
        return;
    }
    if (level_ >= KernelLevel::Avx2) {
        const int nrv = (n_ + 7) / 8;
        fa_avx2::scores(qt_, nrv, k, k_stride, dk_, nk, s_);
        fa_avx2::softmax(s_, nk, nrv, m_, l_, alpha_, first_, last_, p0, mask, softcap_);
        fa_avx2::pv(s_, nk, n_, v, v_stride, o_, dvp_, alpha_);
        return;
    }
#endif
    scores_scalar(qt_, n_, k, k_stride, dk_, nk, s_);
    softmax_scalar(s_, nk, n_, m_, l_, alpha_, first_, last_, p0, mask, softcap_);
    pv_scalar(s_, nk, n_, v, v_stride, o_, dvp_, alpha_);
}

void FlashAttn::end(float* const* out, const float* sink) const {
    for (int r = 0; r < n_; ++r) {
        float mul = 1.0f / l_[r];
        if (sink) {  // one more logit: max M = max(m, sink), sum l e^(m - M) + e^(sink - M)
            const float mx = std::max(m_[r], sink[r]);
            const float f = std::exp(m_[r] - mx);
            mul = f / (l_[r] * f + std::exp(sink[r] - mx));
        }
        const float* o = o_ + r * dvp_;
        float* y = out[r];
        for (int64_t d = 0; d < dv_; ++d) y[d] = o[d] * mul;
    }
}

void FlashAttn::end_parts(float* const* o, float* m, float* l) const {
    for (int r = 0; r < n_; ++r) {
        std::copy(o_ + r * dvp_, o_ + r * dvp_ + dv_, o[r]);
        m[r] = m_[r];
        l[r] = l_[r];
    }
}

void merge_attention_parts(int n, const float* const* o, const float* m, const float* l, int64_t dv, const float* sink, float* out) {
    float mx = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < n; ++i)
        if (l[i] > 0.0f) mx = std::max(mx, m[i]);
    if (sink) mx = std::max(mx, *sink);
    float sum = sink ? std::exp(*sink - mx) : 0.0f;
    std::fill(out, out + dv, 0.0f);
    for (int i = 0; i < n; ++i) {
        if (l[i] <= 0.0f) continue;
        const float f = std::exp(m[i] - mx);
        sum += l[i] * f;
        for (int64_t d = 0; d < dv; ++d) out[d] += o[i][d] * f;
    }
    const float inv = 1.0f / sum;
    for (int64_t d = 0; d < dv; ++d) out[d] *= inv;
}

}  // namespace kiln::kernels
