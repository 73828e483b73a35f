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
    bsum_.resize(std::max(static_cast<size_t>(n_vocab) / kBlock + 1, kSamples));  // also holds collect's samples
    if (params.repeat_last_n > 0) history_.reserve(static_cast<size_t>(params.repeat_last_n));
    reset();
}

void Sampler::reset() {
    history_.clear();
    history_pos_ = 0;
    n_cand_ = 0;
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

void Sampler::apply_penalties(std::span<float> logits) {
    const bool any = params_.repeat_penalty != 1.0f || params_.presence_penalty != 0.0f ||
                     params_.frequency_penalty != 0.0f;
    if (!any || history_.empty()) return;
    for (int32_t t : history_) ++counts_[static_cast<size_t>(t)];
    for (int32_t t : history_) {
        int32_t& c = counts_[static_cast<size_t>(t)];
        if (c == 0) continue;  // already applied for this token
        float& l = logits[static_cast<size_t>(t)];
        if (l > 0) l /= params_.repeat_penalty;
        else l *= params_.repeat_penalty;
        l -= static_cast<float>(c) * params_.frequency_penalty + params_.presence_penalty;
        c = 0;
    }
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

size_t Sampler::top_p(size_t n, double target, float mx) {
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
        std::swap(keys_[a], keys_[b]);
        std::swap(wts_[a], wts_[b]);
    };
    if (n > 512) {
        // First, bins of the logit itself (uniform over the 32 below the best, everything lower in
        // bin 0: a bin is monotone in the key, so the bins rank as the keys do): one pass sums each
        // bin's weight, the bin where the kept mass reaches the target is found from the top, and
        // one branch-free pass keeps the bins above it in place and sets that bin's keys aside; they
        // come back after the kept ones, the undecided part. Fine bins leave it small.
        constexpr int kBins = 4096;
        constexpr float kRange = 32.0f;
        const float base = mx - kRange, scale = kBins / kRange;
        auto bin_of = [&](uint64_t key) {
            const float x = (key_logit(key) - base) * scale;
            return x <= 0.0f ? 0 : std::min(kBins - 1, static_cast<int>(x));
        };
        double bins[kBins] = {};
        for (size_t i = 0; i < n; ++i) bins[bin_of(keys_[i])] += wts_[i];
        int bin = kBins - 1;
        double before = 0;
        for (; bin > 0 && before + bins[bin] < target; --bin) before += bins[bin];
        size_t nf = 0, nc = 0;
        for (size_t i = 0; i < n; ++i) {
            const uint64_t key = keys_[i];
            const float w = wts_[i];
            const int b = bin_of(key);
            keys_[nf] = key;
            wts_[nf] = w;
            side_keys_[nc] = key;
            side_wts_[nc] = w;
            nf += b > bin;
            nc += b == bin;
        }
        std::copy(side_keys_.begin(), side_keys_.begin() + static_cast<long>(nc), keys_.begin() + static_cast<long>(nf));
        std::copy(side_wts_.begin(), side_wts_.begin() + static_cast<long>(nc), wts_.begin() + static_cast<long>(nf));
        acc = before;
        lo = nf;
        hi = nf + nc;
    }
    double mass[2048];
    for (const int shift : {53, 42, 31, 20, 9, 0}) {
        if (hi - lo <= 32) break;
        std::fill(std::begin(mass), std::end(mass), 0.0);
        for (size_t i = lo; i < hi; ++i) mass[(keys_[i] >> shift) & 0x7FF] += wts_[i];
        int bin = 2047;
        double before = acc;
        for (; bin > 0 && before + mass[bin] < target; --bin) before += mass[bin];
        const uint64_t b = static_cast<uint64_t>(bin);
        size_t gt = lo, i = lo, lt = hi;
        while (i < lt) {
            const uint64_t v = (keys_[i] >> shift) & 0x7FF;
            if (v > b) swap(i++, gt++);
            else if (v < b) swap(i, --lt);
            else ++i;
        }
        acc = before;
        lo = gt;
        hi = lt;
    }
    for (size_t i = lo + 1; i < hi; ++i)  // a few left: insertion sort, best first
        for (size_t j = i; j > lo && keys_[j] > keys_[j - 1]; --j) swap(j, j - 1);
    for (size_t i = lo; i < hi; ++i) {
        acc += wts_[i];
        if (acc >= target) return i + 1;
    }
    return std::max<size_t>(hi, 1);
}

int32_t Sampler::sample(std::span<const float> logits) {
    if (logits.size() != static_cast<size_t>(n_vocab_))
        throw Error(fmt::format("sampler: got {} logits for a vocabulary of {}", logits.size(), n_vocab_));
    std::copy(logits.begin(), logits.end(), work_.begin());
    apply_penalties(work_);
    cand_valid_ = false;
    all_ = false;

    if (params_.temperature <= 0.0f) {
        n_cand_ = 0;
        const float mx = max_of(work_.data(), work_.size());
        return static_cast<int32_t>(std::find(work_.begin(), work_.end(), mx) - work_.begin());
    }

    const size_t n_vocab = work_.size();
    const float mx = max_of(work_.data(), n_vocab);
    const uint64_t* keys = keys_.data();
    auto key_at = [keys](size_t i) { return key_logit(keys[i]); };
    const float inf = std::numeric_limits<float>::infinity();
    // min-p keeps p >= min_p * p_max, i.e. logit >= max + ln(min_p): a floor (the best is always kept).
    const float floor = params_.min_p > 0.0f ? std::min(mx, mx + std::log(params_.min_p)) : -inf;
    const bool use_k = params_.top_k > 0 && static_cast<size_t>(params_.top_k) < n_vocab;
    const bool use_p = params_.top_p < 1.0f;
    size_t n;
    bool weighed = false;  // wts_[0, n) hold keys_[0, n)'s weights at temperature 1
    // The truncations weigh at temperature 1 (as established samplers order them); top-p over the
    // top-k survivors, or over the whole vocabulary without top-k. min-p and top-p both keep a best
    // prefix, so a floor applied before top-p gives the same set as min-p after it.
    if (use_k) {
        n = collect(use_p ? -inf : floor, static_cast<size_t>(params_.top_k));
        if (use_p) {
            n = top_p(n, params_.top_p * weigh(key_at, wts_.data(), bsum_.data(), n, mx, 1.0f), mx);
            weighed = true;
        }
    } else if (use_p) {
        // Tokens under tau weigh at most (1 - top_p) of the total together: never in the prefix.
        const float* v = work_.data();
        const double z = weigh([v](size_t i) { return v[i]; }, wts_.data(), bsum_.data(), n_vocab, mx, 1.0f);
        const double tail = (1.0 - params_.top_p) * z / static_cast<double>(n_vocab);
        const float tau = tail > 0 ? mx + static_cast<float>(std::log(tail)) : -inf;
        n = collect(std::min(mx, std::max(tau, floor)), 0);
        weigh(key_at, wts_.data(), bsum_.data(), n, mx, 1.0f);
        n = top_p(n, params_.top_p * z, mx);
        weighed = true;
    } else if (floor > -inf) {
        n = collect(floor, 0);
    } else {
        // No truncation: every token, drawn from in id order straight from the logits.
        all_ = true;
        n_cand_ = n_vocab;
        const float* v = work_.data();
        draw_z_ = weigh([v](size_t i) { return v[i]; }, wts_.data(), bsum_.data(), n_vocab, mx, 1.0f / params_.temperature);
        return static_cast<int32_t>(walk(wts_.data(), bsum_.data(), n_vocab, u01() * draw_z_));
    }
    if (floor > -inf) {  // min-p after top-k / top-p
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
                                                     : weigh(key_at, wts_.data(), bsum_.data(), n, mx, 1.0f / params_.temperature);
    return key_id(keys_[walk(wts_.data(), bsum_.data(), n, u01() * draw_z_)]);
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
        cand_.resize(n_cand_);
        for (size_t i = 0; i < n_cand_; ++i)
            cand_[i] = all_ ? Candidate{static_cast<int32_t>(i), work_[i], static_cast<float>(wts_[i] / draw_z_)}
                            : Candidate{key_id(keys_[i]), key_logit(keys_[i]), static_cast<float>(wts_[i] / draw_z_)};
        std::sort(cand_.begin(), cand_.end(),
                  [](const Candidate& a, const Candidate& b) { return a.logit > b.logit || (a.logit == b.logit && a.id < b.id); });
        cand_valid_ = true;
    }
    return {cand_.data(), cand_.size()};
}

}  // namespace kiln
