#include "kiln/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include <fmt/format.h>

#include "kernels/cpu.h"
#include "kiln/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KILN_SAMPLER_X86 1
#define KILN_SAMPLER_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace kiln {

Sampler::Sampler(const SamplerParams& params, int32_t n_vocab) : params_(params), n_vocab_(n_vocab) {
    if (n_vocab <= 0) throw Error(fmt::format("sampler: vocabulary size {} is not positive", n_vocab));
    if (params.top_p <= 0.0f) throw Error(fmt::format("sampler: top_p {} must be > 0", params.top_p));
    if (params.repeat_penalty <= 0.0f)
        throw Error(fmt::format("sampler: repeat_penalty {} must be > 0", params.repeat_penalty));
    work_.resize(static_cast<size_t>(n_vocab));
    counts_.assign(static_cast<size_t>(n_vocab), 0);
    keys_.resize(static_cast<size_t>(n_vocab));
    wts_.resize(static_cast<size_t>(n_vocab));
    side_keys_.resize(static_cast<size_t>(n_vocab));
    side_wts_.resize(static_cast<size_t>(n_vocab));
    sel_wts_.resize(static_cast<size_t>(n_vocab));
    edge_.resize(static_cast<size_t>(n_vocab));
    bsum_.resize(std::max(static_cast<size_t>(n_vocab) / kBlock + 1, kSamples));  // also holds collect's samples
    if (params.repeat_last_n > 0) history_.reserve(static_cast<size_t>(params.repeat_last_n));
    reset();
}

void Sampler::reset() {
    history_.clear();
    history_pos_ = 0;
    n_cand_ = 0;
    by_id_ = false;
    cand_valid_ = false;
    seed_ = params_.seed == 0xFFFFFFFF ? std::random_device{}() : params_.seed;
    rng_.seed(seed_);
}

void Sampler::accept(int32_t token) {
    if (token < 0 || token >= n_vocab_) return;
    if (params_.repeat_last_n == 0) return;
    if (params_.repeat_last_n < 0 || history_.size() < static_cast<size_t>(params_.repeat_last_n)) {
        history_.push_back(token);
    } else {
        history_[history_pos_] = token;
        history_pos_ = (history_pos_ + 1) % history_.size();
    }
}

bool Sampler::apply_penalties(std::span<float> logits, float mx) {
    const bool any = params_.repeat_penalty != 1.0f || params_.presence_penalty != 0.0f ||
                     params_.frequency_penalty != 0.0f;
    if (!any || history_.empty()) return false;
    bool moved = false;  // a penalised logit was the largest, or is now above it: the largest is found again
    for (int32_t t : history_) ++counts_[static_cast<size_t>(t)];
    for (int32_t t : history_) {
        int32_t& c = counts_[static_cast<size_t>(t)];
        if (c == 0) continue;  // already applied for this token
        float& l = logits[static_cast<size_t>(t)];
        moved |= !(l < mx);
        if (l > 0) l /= params_.repeat_penalty;
        else l *= params_.repeat_penalty;
        l -= static_cast<float>(c) * params_.frequency_penalty + params_.presence_penalty;
        moved |= !(l < mx);
        c = 0;
    }
    return moved;
}

namespace {

// exp(x) for x <= 0 (0 below -87), within 3e-7 relative: plain arithmetic and bit operations, so
// that a loop of it vectorises (a loop of std::exp, or of std::max on floats, does not).
[[gnu::always_inline]] inline float exp_neg(float x) {
    const uint32_t keep = -static_cast<uint32_t>(x >= -87.0f);  // all ones, or 0 (below -87, and NaN)
    const float xc = std::bit_cast<float>((std::bit_cast<uint32_t>(x) & keep) | (std::bit_cast<uint32_t>(-87.0f) & ~keep));
    const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
    float r = xc - n * 0.693145751953125f;
    r -= n * 1.428606765330187e-06f;  // |r| <= ln2 / 2
    float q = 1.0f / 720;
    q = q * r + 1.0f / 120;
    q = q * r + 1.0f / 24;
    q = q * r + 1.0f / 6;
    q = q * r + 0.5f;
    q = q * r + 1.0f;
    q = q * r + 1.0f;
    const uint32_t scale = (static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23) & keep;  // 2^n, or 0
    return q * std::bit_cast<float>(scale);
}

// A candidate's key: larger ranks first (higher logit, then lower id). Branch-free, to vectorise.
[[gnu::always_inline]] inline uint64_t make_key(float logit, int32_t id) {
    const uint32_t b = std::bit_cast<uint32_t>(logit + 0.0f);  // -0 -> +0
    const uint32_t neg = static_cast<uint32_t>(static_cast<int32_t>(b) >> 31);
    return (static_cast<uint64_t>(b ^ (neg | 0x80000000u)) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(id));
}
[[gnu::always_inline]] inline float key_logit(uint64_t key) {
    const uint32_t e = static_cast<uint32_t>(key >> 32);
    const uint32_t pos = static_cast<uint32_t>(static_cast<int32_t>(e) >> 31);
    return std::bit_cast<float>(e ^ (~pos | 0x80000000u));
}
inline int32_t key_id(uint64_t key) { return static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(key)); }

constexpr size_t kLanes = 16;  // float lanes of the reductions (so they vectorise)

[[gnu::always_inline]] inline float max_of_impl(const float* v, size_t n) {
    float acc[kLanes];
    std::fill(acc, acc + kLanes, v[0]);
    size_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (size_t j = 0; j < kLanes; ++j) acc[j] = v[i + j] > acc[j] ? v[i + j] : acc[j];
    float mx = v[0];
    for (; i < n; ++i) mx = v[i] > mx ? v[i] : mx;
    for (float a : acc) mx = a > mx ? a : mx;
    return mx;
}

[[gnu::always_inline]] inline float sum_of(const float* v, size_t n) {
    float acc[kLanes] = {};
    size_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (size_t j = 0; j < kLanes; ++j) acc[j] += v[i + j];
    float s = 0;
    for (; i < n; ++i) s += v[i];
    for (float a : acc) s += a;
    return s;
}

// The sum of each block of kBlock weights (what a draw walks first); returns the total.
[[gnu::always_inline]] inline double block_sums(const float* w, float* bsum, size_t n) {
    double z = 0;
    for (size_t b0 = 0, blk = 0; b0 < n; b0 += Sampler::kBlock, ++blk) z += bsum[blk] = sum_of(w + b0, std::min(n - b0, Sampler::kBlock));
    return z;
}

// w[i] = exp((logit(i) - mx) * inv_t) and the sum of each block of kBlock weights; returns the total.
template <class Logit>
[[gnu::always_inline]] inline double weigh_impl(Logit logit, float* w, float* bsum, size_t n, float mx, float inv_t) {
    for (size_t i = 0; i < n; ++i) w[i] = exp_neg((logit(i) - mx) * inv_t);
    return block_sums(w, bsum, n);
}

// The passes over the whole vocabulary, also built for AVX2 and chosen at run time (kernels/cpu.h).
#ifdef KILN_SAMPLER_X86
template <class Logit>
KILN_SAMPLER_AVX2 double weigh_avx2(Logit logit, float* w, float* bsum, size_t n, float mx, float inv_t) {
    return weigh_impl(logit, w, bsum, n, mx, inv_t);
}
KILN_SAMPLER_AVX2 float max_of_avx2(const float* v, size_t n) { return max_of_impl(v, n); }
#endif
template <class Logit>
double weigh(Logit logit, float* w, float* bsum, size_t n, float mx, float inv_t) {
#ifdef KILN_SAMPLER_X86
    if (kernels::use_avx2()) return weigh_avx2(logit, w, bsum, n, mx, inv_t);
#endif
    return weigh_impl(logit, w, bsum, n, mx, inv_t);
}
float max_of(const float* v, size_t n) {
#ifdef KILN_SAMPLER_X86
    if (kernels::use_avx2()) return max_of_avx2(v, n);
#endif
    return max_of_impl(v, n);
}

// The bins of the logit that the cut by bins counts and weighs: over [base, base + kBins / scale),
// lower logits (-inf, NaN) in bin 0 and the best in the last. Monotone: a higher bin ranks above.
constexpr int kBins = 4096;
[[gnu::always_inline]] inline int32_t bin_of(float l, float base, float scale) {
    // Branch-free (so that the loops using it vectorise): NaN compares false and lands in bin 0.
    const float x = (l - base) * scale;
    const uint32_t pos = -static_cast<uint32_t>(x > 0.0f), low = -static_cast<uint32_t>(x < kBins - 1.0f);
    return static_cast<int32_t>(std::bit_cast<float>(((std::bit_cast<uint32_t>(x) & low) | (std::bit_cast<uint32_t>(kBins - 1.0f) & ~low)) & pos));
}
[[gnu::always_inline]] inline float masked(float w, bool keep) {
    return std::bit_cast<float>(std::bit_cast<uint32_t>(w) & -static_cast<uint32_t>(keep));
}

// The histogram's pass, a chunk of up to kChunk tokens at a time: their bins and (kMass) weights
// at temperature 1 into bin/w (vectorised), then the adds, one by one. With kSkip0 the tokens of
// bin 0 are left out: the chunk step says which groups of 8 have any other (bit g: group g). Returns
// the total weight (of every token, bin 0 too).
constexpr size_t kChunk = 256;
template <bool kMass>
uint32_t chunk_generic(const float* v, size_t m, float base, float scale, float mx, int32_t* bin, float* w, double& z) {
    uint32_t groups = 0;
    float s = 0;
    for (size_t j = 0; j < m; ++j) {
        bin[j] = bin_of(v[j], base, scale);
        if constexpr (kMass) s += w[j] = exp_neg(v[j] - mx);
        groups |= static_cast<uint32_t>(bin[j] != 0) << (j / 8);
    }
    z += s;
    return groups;
}
template <bool kCount, bool kMass, bool kSkip0, class Chunk>
[[gnu::always_inline]] inline double histogram_with(Chunk chunk, const float* v, size_t n, float base, float scale, float mx, uint32_t* count,
                                                    double* mass) {
    double z = 0;
    int32_t bin[kChunk];
    float w[kChunk];
    auto add = [&](size_t j) {
        if constexpr (kCount) ++count[bin[j]];
        if constexpr (kMass) mass[bin[j]] += w[j];
    };
    for (size_t i0 = 0; i0 < n; i0 += kChunk) {
        const size_t m = std::min(kChunk, n - i0);
        uint32_t groups = chunk(v + i0, m, base, scale, mx, bin, w, z);
        if constexpr (kSkip0) {
            for (; groups; groups &= groups - 1) {
                const size_t j0 = static_cast<size_t>(std::countr_zero(groups)) * 8;
                for (size_t j = j0; j < std::min(m, j0 + 8); ++j)
                    if (bin[j]) add(j);
            }
        } else {
            for (size_t j = 0; j < m; ++j) add(j);
        }
    }
    return z;
}

// The smallest logit in bin b or above (bin_of is monotone in the logit, so a bin's tokens are those
// in [bin_start(b), bin_start(b + 1))): a bisection over the floats in order.
float bin_start(int32_t b, float base, float scale) {
    const float inf = std::numeric_limits<float>::infinity();
    if (b <= 0) return -inf;
    if (b >= kBins) return inf;
    auto ord = [](float f) { const int32_t i = std::bit_cast<int32_t>(f); return i >= 0 ? i : std::numeric_limits<int32_t>::min() - i; };
    auto unord = [](int32_t o) { return std::bit_cast<float>(o >= 0 ? o : std::numeric_limits<int32_t>::min() - o); };
    int64_t lo = ord(-inf), hi = ord(inf);  // bin_of(unord(lo)) < b <= bin_of(unord(hi))
    while (hi - lo > 1) {
        const int64_t mid = (lo + hi) / 2;
        (bin_of(unord(static_cast<int32_t>(mid)), base, scale) >= b ? hi : lo) = mid;
    }
    return unord(static_cast<int32_t>(hi));
}

// The draw's weights, exp((logit - mx) * inv_t), of the tokens from `first` on with a logit >=
// keep, summed per block of kBlock into bsum (nothing is stored per token); with kEdge the ids of
// the tokens in [edge_lo, edge_hi) are written to `edge`. Returns the total.
template <bool kEdge>
double draw_sums_generic(const float* v, size_t first, size_t n, float keep, float edge_lo, float edge_hi, float mx, float inv_t, float* bsum,
                         int32_t* edge, size_t& n_edge) {
    double z = 0;
    for (size_t b0 = first, blk = first / Sampler::kBlock; b0 < n; b0 += Sampler::kBlock, ++blk) {
        const size_t len = std::min(Sampler::kBlock, n - b0);
        const float* x = v + b0;
        float s = 0;
        int32_t in_edge = 0;
        for (size_t j = 0; j < len; ++j) {
            s += masked(exp_neg((x[j] - mx) * inv_t), x[j] >= keep);
            if constexpr (kEdge) in_edge |= (x[j] >= edge_lo) & (x[j] < edge_hi);
        }
        bsum[blk] = s;
        z += s;
        if (kEdge && in_edge)
            for (size_t j = 0; j < len; ++j)
                if (x[j] >= edge_lo && x[j] < edge_hi) edge[n_edge++] = static_cast<int32_t>(b0 + j);
    }
    return z;
}

// The ids of the tokens with a logit in [lo, hi), into edge; returns how many.
[[gnu::always_inline]] inline size_t gather_impl(const float* v, size_t n, float lo, float hi, int32_t* edge) {
    size_t m = 0;
    constexpr size_t B = 64;
    for (size_t i0 = 0; i0 < n; i0 += B) {
        const size_t i1 = std::min(n, i0 + B);
        int32_t in = 0;
        for (size_t i = i0; i < i1; ++i) in += (v[i] >= lo) & (v[i] < hi);
        if (in)
            for (size_t i = i0; i < i1; ++i)
                if (v[i] >= lo && v[i] < hi) edge[m++] = static_cast<int32_t>(i);
    }
    return m;
}

#ifdef KILN_SAMPLER_X86
// exp_neg on 8 lanes (the same steps).
KILN_SAMPLER_AVX2 inline __m256 exp_neg8(__m256 x) {
    const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_GE_OQ);
    const __m256 xc = _mm256_blendv_ps(_mm256_set1_ps(-87.0f), x, keep);
    const __m256 big = _mm256_set1_ps(12582912.0f);
    const __m256 n = _mm256_sub_ps(_mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), big), big);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
    __m256 q = _mm256_set1_ps(1.0f / 720);
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f / 120));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f / 24));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f / 6));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(0.5f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(q, _mm256_and_ps(_mm256_castsi256_ps(e), keep));
}
KILN_SAMPLER_AVX2 inline float hsum8(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
template <bool kMass>
KILN_SAMPLER_AVX2 uint32_t chunk_avx2(const float* v, size_t m, float base, float scale, float mx, int32_t* bin, float* w, double& z) {
    const __m256 vb = _mm256_set1_ps(base), vs = _mm256_set1_ps(scale), vmx = _mm256_set1_ps(mx);
    const __m256 zero = _mm256_setzero_ps(), top = _mm256_set1_ps(kBins - 1.0f);
    __m256 acc = _mm256_setzero_ps();
    uint32_t groups = 0;
    size_t j = 0;
    for (; j + 8 <= m; j += 8) {
        const __m256 x = _mm256_loadu_ps(v + j);
        // bin_of: max_ps gives its second operand (0) for NaN.
        const __m256 c = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_sub_ps(x, vb), vs), zero), top);
        const __m256i b = _mm256_cvttps_epi32(c);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(bin + j), b);
        if constexpr (kMass) {
            const __m256 wx = exp_neg8(_mm256_sub_ps(x, vmx));
            _mm256_storeu_ps(w + j, wx);
            acc = _mm256_add_ps(acc, wx);
        }
        groups |= static_cast<uint32_t>(!_mm256_testz_si256(b, b)) << (j / 8);
    }
    float s = hsum8(acc);
    for (; j < m; ++j) {
        bin[j] = bin_of(v[j], base, scale);
        if constexpr (kMass) s += w[j] = exp_neg(v[j] - mx);
        groups |= static_cast<uint32_t>(bin[j] != 0) << (j / 8);
    }
    z += s;
    return groups;
}
template <bool kEdge>
KILN_SAMPLER_AVX2 double draw_sums_avx2(const float* v, size_t n, float keep, float edge_lo, float edge_hi, float mx, float inv_t, float* bsum,
                                        int32_t* edge, size_t& n_edge) {
    static_assert(Sampler::kBlock % 16 == 0);
    const __m256 vkeep = _mm256_set1_ps(keep), vlo = _mm256_set1_ps(edge_lo), vhi = _mm256_set1_ps(edge_hi);
    const __m256 vmx = _mm256_set1_ps(mx), vit = _mm256_set1_ps(inv_t);
    double z = 0;
    size_t b0 = 0, blk = 0;
    for (; b0 + Sampler::kBlock <= n; b0 += Sampler::kBlock, ++blk) {
        const float* x = v + b0;
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        uint64_t in_edge = 0;  // bit j: x[j] is in the edge
        for (size_t j = 0; j < Sampler::kBlock; j += 16) {
            const __m256 x0 = _mm256_loadu_ps(x + j), x1 = _mm256_loadu_ps(x + j + 8);
            const __m256 k0 = _mm256_cmp_ps(x0, vkeep, _CMP_GE_OQ), k1 = _mm256_cmp_ps(x1, vkeep, _CMP_GE_OQ);
            if (!_mm256_testz_ps(_mm256_or_ps(k0, k1), _mm256_or_ps(k0, k1))) {  // none kept (a high cut, mostly): not weighed
                acc0 = _mm256_add_ps(acc0, _mm256_and_ps(exp_neg8(_mm256_mul_ps(_mm256_sub_ps(x0, vmx), vit)), k0));
                acc1 = _mm256_add_ps(acc1, _mm256_and_ps(exp_neg8(_mm256_mul_ps(_mm256_sub_ps(x1, vmx), vit)), k1));
            }
            if constexpr (kEdge) {
                const uint32_t m0 = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(x0, vlo, _CMP_GE_OQ), _mm256_cmp_ps(x0, vhi, _CMP_LT_OQ))));
                const uint32_t m1 = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(x1, vlo, _CMP_GE_OQ), _mm256_cmp_ps(x1, vhi, _CMP_LT_OQ))));
                in_edge |= static_cast<uint64_t>(m0 | (m1 << 8)) << j;
            }
        }
        const float s = hsum8(_mm256_add_ps(acc0, acc1));
        bsum[blk] = s;
        z += s;
        for (; kEdge && in_edge; in_edge &= in_edge - 1) edge[n_edge++] = static_cast<int32_t>(b0 + static_cast<size_t>(std::countr_zero(in_edge)));
    }
    return z + draw_sums_generic<kEdge>(v, b0, n, keep, edge_lo, edge_hi, mx, inv_t, bsum, edge, n_edge);
}
// dst = src, and the largest (NaN ignored, as max_of does), in one pass.
KILN_SAMPLER_AVX2 float copy_max_avx2(const float* src, float* dst, size_t n) {
    __m256 acc0 = _mm256_set1_ps(src[0]), acc1 = acc0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 x0 = _mm256_loadu_ps(src + i), x1 = _mm256_loadu_ps(src + i + 8);
        _mm256_storeu_ps(dst + i, x0);
        _mm256_storeu_ps(dst + i + 8, x1);
        acc0 = _mm256_max_ps(x0, acc0);  // max_ps gives its second operand when the first is NaN
        acc1 = _mm256_max_ps(x1, acc1);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, _mm256_max_ps(acc0, acc1));
    float mx = src[0];
    for (float a : lanes) mx = a > mx ? a : mx;
    for (; i < n; ++i) {
        dst[i] = src[i];
        mx = src[i] > mx ? src[i] : mx;
    }
    return mx;
}
KILN_SAMPLER_AVX2 size_t gather_avx2(const float* v, size_t n, float lo, float hi, int32_t* edge) {
    const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    size_t m = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(v + i);
        for (uint32_t in = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(x, vlo, _CMP_GE_OQ), _mm256_cmp_ps(x, vhi, _CMP_LT_OQ))));
             in; in &= in - 1)
            edge[m++] = static_cast<int32_t>(i + static_cast<size_t>(std::countr_zero(in)));
    }
    for (; i < n; ++i)
        if (v[i] >= lo && v[i] < hi) edge[m++] = static_cast<int32_t>(i);
    return m;
}
#endif
float copy_max(const float* src, float* dst, size_t n) {
#ifdef KILN_SAMPLER_X86
    if (kernels::use_avx2()) return copy_max_avx2(src, dst, n);
#endif
    std::copy(src, src + n, dst);
    return max_of(dst, n);
}
template <bool kCount, bool kMass, bool kSkip0 = false>
double histogram(const float* v, size_t n, float base, float scale, float mx, uint32_t* count, double* mass) {
#ifdef KILN_SAMPLER_X86
    if (kernels::use_avx2()) return histogram_with<kCount, kMass, kSkip0>(chunk_avx2<kMass>, v, n, base, scale, mx, count, mass);
#endif
    return histogram_with<kCount, kMass, kSkip0>(chunk_generic<kMass>, v, n, base, scale, mx, count, mass);
}
template <bool kEdge>
double draw_sums(const float* v, size_t n, float keep, float edge_lo, float edge_hi, float mx, float inv_t, float* bsum, int32_t* edge,
                 size_t& n_edge) {
#ifdef KILN_SAMPLER_X86
    if (kernels::use_avx2()) return draw_sums_avx2<kEdge>(v, n, keep, edge_lo, edge_hi, mx, inv_t, bsum, edge, n_edge);
#endif
    return draw_sums_generic<kEdge>(v, 0, n, keep, edge_lo, edge_hi, mx, inv_t, bsum, edge, n_edge);
}
size_t gather(const float* v, size_t n, float lo, float hi, int32_t* edge) {
#ifdef KILN_SAMPLER_X86
    if (kernels::use_avx2()) return gather_avx2(v, n, lo, hi, edge);
#endif
    return gather_impl(v, n, lo, hi, edge);
}

// The index the draw lands on: target in [0, total of w) (blocks first, then within the block).
size_t walk(const float* w, const float* bsum, size_t n, double target) {
    const size_t nb = (n + Sampler::kBlock - 1) / Sampler::kBlock;
    double cum = 0;
    size_t b = 0;
    for (; b + 1 < nb && cum + bsum[b] <= target; ++b) cum += bsum[b];
    const size_t b0 = b * Sampler::kBlock, b1 = std::min(n, b0 + Sampler::kBlock);
    double left = target - cum;
    size_t last = n;
    for (size_t i = b0; i < b1; ++i) {
        if (w[i] <= 0) continue;
        last = i;
        left -= w[i];
        if (left < 0) return i;
    }
    if (last < n) return last;  // rounding: the block's last token with weight
    for (size_t i = n; i-- > 0;)
        if (w[i] > 0) return i;
    return 0;
}

}  // namespace

size_t Sampler::collect(float floor, size_t k) {
    const size_t n_vocab = work_.size();
    if (k == 0 || k >= n_vocab) k = n_vocab;
    if (k < n_vocab && n_vocab >= 4 * kSamples) {
        if (const size_t n = collect_bracketed(floor, k); n > 0) return n;
    }
    // With k: a buffer of up to cap keys; when it fills, the best k stay (partial selection) and
    // their worst becomes the bar to enter. Each fill costs O(cap) and adds cap - k keys, so the
    // whole pass stays linear, and for a small k almost every logit is turned away by one compare.
    const size_t cap = k == n_vocab ? n_vocab : std::min(n_vocab, std::max<size_t>(2 * k, 256));
    uint64_t bar = 0;
    float bar_logit = floor;
    size_t n = 0;
    constexpr size_t B = 16;
    const float* v = work_.data();
    for (size_t i0 = 0; i0 < n_vocab; i0 += B) {
        const size_t i1 = std::min(n_vocab, i0 + B);
        int any = 0;
        for (size_t i = i0; i < i1; ++i) any += v[i] >= bar_logit;
        if (!any) continue;
        if (k == n_vocab && any > 4) {  // no k, many in the block: keep them branch-free
            for (size_t i = i0; i < i1; ++i) {
                keys_[n] = make_key(v[i], static_cast<int32_t>(i));
                n += v[i] >= floor;
            }
            continue;
        }
        for (size_t i = i0; i < i1; ++i) {
            if (!(v[i] >= bar_logit)) continue;
            const uint64_t key = make_key(v[i], static_cast<int32_t>(i));
            if (key < bar) continue;
            keys_[n++] = key;
            if (n == cap && cap > k) {
                std::nth_element(keys_.begin(), keys_.begin() + static_cast<long>(k - 1), keys_.begin() + static_cast<long>(n),
                                 std::greater<>());
                n = k;
                bar = keys_[k - 1] + 1;
                bar_logit = std::max(floor, key_logit(keys_[k - 1]));
            }
        }
    }
    if (n > k) {
        std::nth_element(keys_.begin(), keys_.begin() + static_cast<long>(k - 1), keys_.begin() + static_cast<long>(n), std::greater<>());
        n = k;
    }
    return n;
}

size_t Sampler::collect_bracketed(float floor, size_t k) {
    // The k-th best logit, bracketed from an even sample of the vocabulary: above hi a logit is in
    // the top k (with high probability), under lo it is not. One pass keeps the sure ones (front of
    // keys_) and the bracketed ones (back); only those are selected among. The bracket is checked:
    // if it missed (0 returned), the caller takes the buffered pass.
    const size_t n_vocab = work_.size();
    float* smp = bsum_.data();  // free until the draw
    for (size_t j = 0; j < kSamples; ++j) smp[j] = work_[j * n_vocab / kSamples];
    const double rank = static_cast<double>(k) * kSamples / static_cast<double>(n_vocab);
    const double margin = 4.0 * std::sqrt(rank + 1.0) + 4.0;
    const long hi_rank = static_cast<long>(rank - margin), lo_rank = static_cast<long>(rank + margin);
    const float inf = std::numeric_limits<float>::infinity();
    auto nth = [&](long r) {
        std::nth_element(smp, smp + r, smp + kSamples, std::greater<>());
        return smp[r];
    };
    const float hi = hi_rank < 0 ? inf : nth(hi_rank);
    const float lo = std::max(floor, lo_rank >= static_cast<long>(kSamples) ? -inf : nth(lo_rank));
    size_t n_sure = 0, n_edge = 0;
    uint64_t* keys = keys_.data();
    const float* v = work_.data();
    constexpr size_t B = 16;
    for (size_t i0 = 0; i0 < n_vocab; i0 += B) {
        const size_t i1 = std::min(n_vocab, i0 + B);
        int any = 0;
        for (size_t i = i0; i < i1; ++i) any += v[i] >= lo;
        if (!any) continue;
        if (any <= 4) {  // a few: branches predict well
            for (size_t i = i0; i < i1; ++i)
                if (v[i] >= lo) {
                    const uint64_t key = make_key(v[i], static_cast<int32_t>(i));
                    if (v[i] > hi) keys[n_sure++] = key;
                    else keys[n_vocab - 1 - n_edge++] = key;
                }
            continue;
        }
        for (size_t i = i0; i < i1; ++i) {  // many: branch-free, both places written, the right count moves
            const uint64_t key = make_key(v[i], static_cast<int32_t>(i));
            const size_t sure = v[i] > hi, in = v[i] >= lo;
            keys[n_sure] = key;
            keys[n_vocab - 1 - n_edge] = key;
            n_sure += sure;
            n_edge += in & (sure ^ 1);
        }
    }
    if (n_sure > k || (n_sure + n_edge < k && lo > floor)) return 0;  // the bracket missed
    const size_t need = std::min(k - n_sure, n_edge);
    uint64_t* edge = keys + n_vocab - n_edge;
    if (need < n_edge && n_edge > 2048 && hi > lo && std::isfinite(lo) && std::isfinite(hi)) {
        // Many in the bracket (a large k): bins of the logit over [lo, hi] (monotone in the key) are
        // counted, the keys of the bins above the one where the count reaches `need` are kept, and
        // only that bin is selected among.
        constexpr int kBins = 4096;
        const float scale = kBins / (hi - lo);
        auto bin_of = [&](uint64_t key) { return std::clamp(static_cast<int>((key_logit(key) - lo) * scale), 0, kBins - 1); };
        uint32_t count[kBins] = {};
        for (size_t i = 0; i < n_edge; ++i) ++count[bin_of(edge[i])];
        int bin = kBins - 1;
        size_t above = 0;
        for (; bin > 0 && above + count[bin] < need; --bin) above += count[bin];
        size_t nk = 0, nb = 0;
        uint64_t* side = side_keys_.data();
        for (size_t i = 0; i < n_edge; ++i) {  // branch-free: both places written, the right count moves
            const uint64_t key = edge[i];
            const int b = bin_of(key);
            keys[n_sure + nk] = key;  // never ahead of edge + i: n_sure + nk <= n_vocab - n_edge + i
            side[nb] = key;
            nk += b > bin;
            nb += b == bin;
        }
        const size_t rest = need - nk;
        if (rest < nb) std::nth_element(side, side + static_cast<long>(rest), side + nb, std::greater<>());
        std::memcpy(keys + n_sure + nk, side, rest * sizeof(uint64_t));
        return n_sure + need;
    }
    if (need < n_edge) std::nth_element(edge, edge + static_cast<long>(need), edge + n_edge, std::greater<>());
    std::memmove(keys + n_sure, edge, need * sizeof(uint64_t));
    return n_sure + need;
}

size_t Sampler::top_p(uint64_t* keys, float* wts, size_t n, double target, float mx) {
    // Mass-weighted radix selection: [0, lo) is kept (weight acc), [lo, hi) undecided, [hi, n)
    // dropped; each element of a part ranks before every element of the next. A level takes 11 bits
    // of the keys (from the top: the logit's sortable bits, then the id's): one pass sums the weight
    // of each of their 2048 values, the value where the kept mass reaches the target is found from
    // the top, and one three-way pass puts the values above it first and those below it last. The
    // undecided part is what shares that value: a few levels leave a handful, whatever the shape
    // of the distribution (a flat one keeps most of the vocabulary).
    size_t lo = 0, hi = n;
    double acc = 0;
    auto swap = [&](size_t a, size_t b) {
        std::swap(keys[a], keys[b]);
        std::swap(wts[a], wts[b]);
    };
    if (n > 512) {
        // First, bins of the logit itself (uniform over the 32 below the best, everything lower in
        // bin 0: a bin is monotone in the key, so the bins rank as the keys do): one pass sums each
        // bin's weight, the bin where the kept mass reaches the target is found from the top, and
        // one branch-free pass keeps the bins above it in place and sets that bin's keys aside; they
        // come back after the kept ones, the undecided part. Fine bins leave it small.
        constexpr float kRange = 32.0f;
        const float base = mx - kRange, scale = kBins / kRange;
        auto bin_of = [&](uint64_t key) {
            const float x = (key_logit(key) - base) * scale;
            return x <= 0.0f ? 0 : std::min(kBins - 1, static_cast<int>(x));
        };
        double bins[kBins] = {};
        for (size_t i = 0; i < n; ++i) bins[bin_of(keys[i])] += wts[i];
        int bin = kBins - 1;
        double before = 0;
        for (; bin > 0 && before + bins[bin] < target; --bin) before += bins[bin];
        size_t nf = 0, nc = 0;
        for (size_t i = 0; i < n; ++i) {
            const uint64_t key = keys[i];
            const float w = wts[i];
            const int b = bin_of(key);
            keys[nf] = key;
            wts[nf] = w;
            side_keys_[nc] = key;
            side_wts_[nc] = w;
            nf += b > bin;
            nc += b == bin;
        }
        std::copy(side_keys_.begin(), side_keys_.begin() + static_cast<long>(nc), keys + nf);
        std::copy(side_wts_.begin(), side_wts_.begin() + static_cast<long>(nc), wts + nf);
        acc = before;
        lo = nf;
        hi = nf + nc;
    }
    double mass[2048];
    for (const int shift : {53, 42, 31, 20, 9, 0}) {
        if (hi - lo <= 32) break;
        std::fill(std::begin(mass), std::end(mass), 0.0);
        for (size_t i = lo; i < hi; ++i) mass[(keys[i] >> shift) & 0x7FF] += wts[i];
        int bin = 2047;
        double before = acc;
        for (; bin > 0 && before + mass[bin] < target; --bin) before += mass[bin];
        const uint64_t b = static_cast<uint64_t>(bin);
        size_t gt = lo, i = lo, lt = hi;
        while (i < lt) {
            const uint64_t v = (keys[i] >> shift) & 0x7FF;
            if (v > b) swap(i++, gt++);
            else if (v < b) swap(i, --lt);
            else ++i;
        }
        acc = before;
        lo = gt;
        hi = lt;
    }
    for (size_t i = lo + 1; i < hi; ++i)  // a few left: insertion sort, best first
        for (size_t j = i; j > lo && keys[j] > keys[j - 1]; --j) swap(j, j - 1);
    for (size_t i = lo; i < hi; ++i) {
        acc += wts[i];
        if (acc >= target) return i + 1;
    }
    return std::max<size_t>(hi, 1);
}

int32_t Sampler::sample(std::span<const float> logits) {
    if (logits.size() != static_cast<size_t>(n_vocab_))
        throw Error(fmt::format("sampler: got {} logits for a vocabulary of {}", logits.size(), n_vocab_));
    const size_t n_vocab = work_.size();
    float mx = copy_max(logits.data(), work_.data(), n_vocab);
    if (apply_penalties(work_, mx)) mx = max_of(work_.data(), n_vocab);
    cand_valid_ = false;
    by_id_ = false;
    n_cand_ = 0;
    // Greedy; also when the best logit is not finite (+inf dominates; all -inf or NaN: nothing to weigh).
    if (params_.temperature <= 0.0f || !std::isfinite(mx)) return static_cast<int32_t>(std::find(work_.begin(), work_.end(), mx) - work_.begin());

    const uint64_t* keys = keys_.data();
    auto key_at = [keys](size_t i) { return key_logit(keys[i]); };
    const float inf = std::numeric_limits<float>::infinity();
    const float inv_t = 1.0f / params_.temperature;
    // min-p keeps p >= min_p * p_max, i.e. logit >= max + ln(min_p): a floor (the best is always kept).
    const float floor = params_.min_p > 0.0f ? std::min(mx, mx + std::log(params_.min_p)) : -inf;
    const bool use_k = params_.top_k > 0 && static_cast<size_t>(params_.top_k) < n_vocab;
    const bool use_p = params_.top_p < 1.0f;
    const size_t k = use_k ? static_cast<size_t>(params_.top_k) : 0;
    // The truncations weigh at temperature 1 (as established samplers order them); top-p over the
    // top-k survivors, or over the whole vocabulary without top-k. min-p and top-p both keep a best
    // prefix, so a floor applied before top-p gives the same set as min-p after it.
    if (use_k && k <= kSmallK) {
        // A small k: its survivors are gathered (a buffer that keeps the best), truncated and drawn from.
        size_t n = collect(use_p ? -inf : floor, k);
        bool weighed = false;  // wts_[0, n) hold keys_[0, n)'s weights at temperature 1
        if (use_p) {
            n = top_p(keys_.data(), wts_.data(), n, params_.top_p * weigh(key_at, wts_.data(), bsum_.data(), n, mx, 1.0f), mx);
            weighed = true;
        }
        if (floor > -inf) {  // min-p after top-p
            size_t j = 0;
            for (size_t i = 0; i < n; ++i)
                if (key_logit(keys_[i]) >= floor) {
                    wts_[j] = wts_[i];
                    keys_[j++] = keys_[i];
                }
            n = j;
        }
        n_cand_ = n;
        // At temperature 1 the truncation's weights are the draw's: only their block sums are new.
        draw_z_ = weighed && params_.temperature == 1.0f ? block_sums(wts_.data(), bsum_.data(), n)
                                                         : weigh(key_at, wts_.data(), bsum_.data(), n, mx, inv_t);
        return key_id(keys_[walk(wts_.data(), bsum_.data(), n, u01() * draw_z_)]);
    }

    // Otherwise the survivors are never gathered: each truncation keeps a best prefix, so they are
    // the tokens whose key is at least a cut. Bins of the logit (monotone in the key) are counted
    // (top-k) and weighed at temperature 1 (top-p) in one pass; summed from the top they say which
    // bin holds the k-th token or where the mass reaches p: every bin above it is kept whole, and
    // only that edge bin's tokens are selected among. The draw's pass weighs the bins above the edge
    // per block of ids (no weight is stored per token), the edge's kept tokens are added to their
    // blocks, and the draw walks the blocks. No truncation (or min-p alone): no bins, every token
    // (at least the floor) in the draw's pass.
    by_id_ = true;
    mx_ = mx;
    inv_t_ = inv_t;
    const float* v = work_.data();
    int32_t* edge = edge_.data();
    uint64_t cut = floor > -inf ? make_key(floor, static_cast<int32_t>(n_vocab - 1)) : 0;
    int32_t edge_bin = -1;  // -1: none (the cut is the floor's)
    float base = 0, scale = 1;
    size_t n_k = 0;            // top-k's picks from its edge bin
    double need = 0;           // top-p: the mass still needed from its edge bin
    bool picks_ready = false;  // keys_[0, n_k) hold top-k's picks (sel_wts_ their weights): top-p's edge too
    if (use_k || use_p) {
        double z = 0;  // the mass top-p takes its share of: the top-k survivors', or the vocabulary's
        // The bins' span below the best: 32 (a lower logit weighs under e^-32 of the best; top-k's
        // k-th so far down is in bin 0, then selected among all the tokens there).
        float range = 32.0f;
        if (!use_k) {
            // Top-p alone: a token under tau0 = mx + ln((1 - top_p) / n_vocab) weighs under (1 -
            // top_p) / n_vocab of the total (which is at least the best's weight, 1), so all of them
            // together never reach the kept prefix: the bins start there, and the tokens below them
            // (bin 0, only weighed into the total) are not binned.
            const float tau0 = mx + static_cast<float>(std::log((1.0 - params_.top_p) / static_cast<double>(n_vocab)));
            range = std::clamp(mx - tau0, 1.0f, 32.0f);
        }
        base = mx - range;
        scale = kBins / range;
        uint32_t count[kBins];
        double mass[kBins];
        if (use_k) std::fill(std::begin(count), std::end(count), 0u);
        if (use_p) std::fill(std::begin(mass), std::end(mass), 0.0);
        if (use_k && use_p) histogram<true, true>(v, n_vocab, base, scale, mx, count, mass);
        else if (use_k) histogram<true, false>(v, n_vocab, base, scale, mx, count, mass);
        else z = histogram<false, true, true>(v, n_vocab, base, scale, mx, count, mass);
        int32_t bin_k = 0;
        if (use_k) {
            size_t above = 0;
            int32_t b = kBins - 1;
            for (; b > 0 && above + count[b] < k; --b) above += count[b];
            bin_k = edge_bin = b;
            n_k = k - above;
            if (use_p) {  // top-k's picks now: their mass is part of z
                const size_t m = gather(v, n_vocab, bin_start(b, base, scale), bin_start(b + 1, base, scale), edge);
                pick_best(edge, m, n_k);
                for (size_t j = 0; j < n_k; ++j) z += sel_wts_[j] = exp_neg(key_logit(keys_[j]) - mx);
                for (int32_t c = b + 1; c < kBins; ++c) z += mass[c];
                picks_ready = true;
            }
        }
        if (use_p) {
            const double target = static_cast<double>(params_.top_p) * z;
            double before = 0;
            int32_t b = kBins - 1;
            for (; b > bin_k && before + mass[b] < target; --b) before += mass[b];
            need = target - before;
            if (!use_k || b > bin_k) {
                edge_bin = b;
                picks_ready = false;
            }
        }
    }
    size_t n_edge = 0;
    if (edge_bin >= 0) {  // the bins above the edge (at least the floor), and the edge's ids
        const float lo = bin_start(edge_bin, base, scale), hi = bin_start(edge_bin + 1, base, scale);
        draw_z_ = draw_sums<true>(v, n_vocab, std::max(hi, floor), lo, hi, mx, inv_t, bsum_.data(), edge, n_edge);
    } else {
        draw_z_ = draw_sums<false>(v, n_vocab, floor, 0, 0, mx, inv_t, bsum_.data(), edge, n_edge);
    }
    if (edge_bin >= 0) {
        size_t n_cand = n_k;  // keys_[0, n_cand): the edge's candidates
        if (!picks_ready) {
            if (use_p) {
                for (size_t j = 0; j < n_edge; ++j) {
                    keys_[j] = make_key(v[edge[j]], edge[j]);
                    sel_wts_[j] = exp_neg(v[edge[j]] - mx);
                }
                n_cand = n_edge;
            } else {
                pick_best(edge, n_edge, n_k);
            }
        }
        if (use_p && n_cand > 0) n_cand = top_p(keys_.data(), sel_wts_.data(), n_cand, need, mx);
        if (n_cand > 0) cut = std::max(cut, *std::min_element(keys_.begin(), keys_.begin() + static_cast<long>(n_cand)));
        for (size_t j = 0; j < n_edge; ++j) {  // the edge's kept tokens join their blocks
            const int32_t id = edge[j];
            if (make_key(v[id], id) < cut) continue;
            const float w = exp_neg((v[id] - mx) * inv_t);
            bsum_[static_cast<size_t>(id) / kBlock] += w;
            draw_z_ += w;
        }
    }
    cut_ = cut;
    return static_cast<int32_t>(walk_by_id(u01() * draw_z_));
}

void Sampler::pick_best(const int32_t* ids, size_t m, size_t n) {
    const float* v = work_.data();
    for (size_t j = 0; j < m; ++j) keys_[j] = make_key(v[ids[j]], ids[j]);
    if (n < m) std::nth_element(keys_.begin(), keys_.begin() + static_cast<long>(n - 1), keys_.begin() + static_cast<long>(m), std::greater<>());
}

size_t Sampler::walk_by_id(double target) const {
    const size_t n = work_.size();
    const float* v = work_.data();
    auto weight = [&](size_t i) {
        return cut_ == 0 || make_key(v[i], static_cast<int32_t>(i)) >= cut_ ? exp_neg((v[i] - mx_) * inv_t_) : 0.0f;
    };
    const size_t nb = (n + kBlock - 1) / kBlock;
    double cum = 0;
    size_t b = 0;
    for (; b + 1 < nb && cum + bsum_[b] <= target; ++b) cum += bsum_[b];
    double left = target - cum;
    size_t last = n;
    for (size_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) {
        const float w = weight(i);
        if (w <= 0) continue;
        last = i;
        left -= w;
        if (left < 0) return i;
    }
    if (last < n) return last;  // rounding: the block's last token with weight
    for (size_t i = n; i-- > 0;)
        if (weight(i) > 0) return i;
    return static_cast<size_t>(std::max_element(work_.begin(), work_.end()) - work_.begin());
}

double Sampler::u01() {
    std::uniform_real_distribution<double> u(0.0, 1.0);
    return u(rng_);
}

float token_logprobs(std::span<const float> logits, int32_t token, size_t n_top, std::vector<TokenLogprob>& top) {
    const size_t n = logits.size();
    top.clear();
    if (n == 0 || token < 0 || static_cast<size_t>(token) >= n) throw Error(fmt::format("logprobs: token {} outside the vocabulary", token));
    const float mx = max_of(logits.data(), n);
    std::vector<float> w(n), bsum(n / Sampler::kBlock + 1);
    const double z = weigh([&](size_t i) { return logits[i]; }, w.data(), bsum.data(), n, mx, 1.0f);
    const double lz = static_cast<double>(mx) + std::log(z);
    // The n_top best: a small sorted list, entered only by a logit above its worst.
    n_top = std::min(n_top, n);
    auto better = [&](size_t a, size_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    std::vector<size_t> best;
    best.reserve(n_top + 1);
    for (size_t i = 0; i < n && n_top > 0; ++i) {
        if (best.size() == n_top && !better(i, best.back())) continue;
        best.insert(std::upper_bound(best.begin(), best.end(), i, better), i);
        if (best.size() > n_top) best.pop_back();
    }
    for (size_t i : best) top.push_back({static_cast<int32_t>(i), static_cast<float>(logits[i] - lz)});
    return static_cast<float>(logits[static_cast<size_t>(token)] - lz);
}

std::span<const Sampler::Candidate> Sampler::last_candidates() const {
    if (!cand_valid_) {
        cand_.clear();
        if (by_id_) {
            for (size_t i = 0; i < work_.size(); ++i)
                if (cut_ == 0 || make_key(work_[i], static_cast<int32_t>(i)) >= cut_)
                    cand_.push_back(Candidate{static_cast<int32_t>(i), work_[i], static_cast<float>(exp_neg((work_[i] - mx_) * inv_t_) / draw_z_)});
        } else {
            for (size_t i = 0; i < n_cand_; ++i)
                cand_.push_back(Candidate{key_id(keys_[i]), key_logit(keys_[i]), static_cast<float>(wts_[i] / draw_z_)});
        }
        std::sort(cand_.begin(), cand_.end(),
                  [](const Candidate& a, const Candidate& b) { return a.logit > b.logit || (a.logit == b.logit && a.id < b.id); });
        cand_valid_ = true;
    }
    return {cand_.data(), cand_.size()};
}

}  // namespace kiln
