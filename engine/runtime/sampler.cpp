#include "kiln/sampler.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "kiln/error.h"

namespace kiln {

Sampler::Sampler(const SamplerParams& params, int32_t n_vocab) : params_(params), n_vocab_(n_vocab) {
    if (n_vocab <= 0) throw Error(fmt::format("sampler: vocabulary size {} is not positive", n_vocab));
    if (params.top_p <= 0.0f) throw Error(fmt::format("sampler: top_p {} must be > 0", params.top_p));
    if (params.repeat_penalty <= 0.0f)
        throw Error(fmt::format("sampler: repeat_penalty {} must be > 0", params.repeat_penalty));
    work_.resize(static_cast<size_t>(n_vocab));
    counts_.assign(static_cast<size_t>(n_vocab), 0);
    cand_.resize(static_cast<size_t>(n_vocab));
    if (params.repeat_last_n > 0) history_.reserve(static_cast<size_t>(params.repeat_last_n));
    reset();
}

void Sampler::reset() {
    history_.clear();
    history_pos_ = 0;
    n_cand_ = 0;
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

int32_t Sampler::sample(std::span<const float> logits) {
    if (logits.size() != static_cast<size_t>(n_vocab_))
        throw Error(fmt::format("sampler: got {} logits for a vocabulary of {}", logits.size(), n_vocab_));
    std::copy(logits.begin(), logits.end(), work_.begin());
    apply_penalties(work_);

    if (params_.temperature <= 0.0f) {
        n_cand_ = 0;
        return static_cast<int32_t>(std::max_element(work_.begin(), work_.end()) - work_.begin());
    }

    size_t n = work_.size();
    for (size_t i = 0; i < n; ++i) cand_[i] = {static_cast<int32_t>(i), work_[i], 0.0f};
    auto by_logit = [](const Candidate& a, const Candidate& b) { return a.logit > b.logit || (a.logit == b.logit && a.id < b.id); };

    // top-k: keep the k largest, sorted.
    if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < n) {
        const size_t k = static_cast<size_t>(params_.top_k);
        std::partial_sort(cand_.begin(), cand_.begin() + static_cast<long>(k), cand_.begin() + static_cast<long>(n), by_logit);
        n = k;
    } else {
        std::sort(cand_.begin(), cand_.begin() + static_cast<long>(n), by_logit);
    }

    // Probabilities at temperature 1 for the truncations (as established samplers order them).
    auto softmax = [&](float temp) {
        const float mx = cand_[0].logit;
        double sum = 0;
        for (size_t i = 0; i < n; ++i) {
            cand_[i].p = std::exp((cand_[i].logit - mx) / temp);
            sum += cand_[i].p;
        }
        for (size_t i = 0; i < n; ++i) cand_[i].p = static_cast<float>(cand_[i].p / sum);
    };
    softmax(1.0f);

    if (params_.top_p < 1.0f) {
        double cum = 0;
        size_t keep = n;
        for (size_t i = 0; i < n; ++i) {
            cum += cand_[i].p;
            if (cum >= params_.top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }
    if (params_.min_p > 0.0f) {
        const float threshold = params_.min_p * cand_[0].p;
        size_t keep = 1;
        while (keep < n && cand_[keep].p >= threshold) ++keep;
        n = keep;
    }

    softmax(params_.temperature);
    n_cand_ = n;
    std::uniform_real_distribution<double> u(0.0, 1.0);
    const double r = u(rng_);
    double cum = 0;
    for (size_t i = 0; i < n; ++i) {
        cum += cand_[i].p;
        if (r < cum) return cand_[i].id;
    }
    return cand_[n - 1].id;
}

}  // namespace kiln
