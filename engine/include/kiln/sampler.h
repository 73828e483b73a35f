// Sampler chain: repetition / presence / frequency penalties, then top-k, top-p, min-p,
// temperature and a seeded draw (or greedy). Buffers are sized once for the vocabulary, so
// sampling a token allocates nothing.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace kiln {

struct SamplerParams {
    float temperature = 0.8f;      // <= 0: greedy (argmax after penalties)
    int top_k = 40;                // <= 0: off
    float top_p = 0.95f;           // >= 1: off
    float min_p = 0.05f;           // <= 0: off; keeps tokens with p >= min_p * p_max
    float repeat_penalty = 1.0f;   // 1: off; > 1 discourages tokens seen in the last repeat_last_n
    int repeat_last_n = 64;        // window of history the penalties look at (0: off, -1: all)
    float presence_penalty = 0.0f;   // subtracted once from a seen token's logit
    float frequency_penalty = 0.0f;  // subtracted per occurrence
    uint64_t seed = 0xFFFFFFFF;    // 0xFFFFFFFF: a random seed; anything else: reproducible
};

class Sampler {
public:
    Sampler(const SamplerParams& params, int32_t n_vocab);

    // Picks the next token from a row of logits (size n_vocab). Does not record it: call accept().
    int32_t sample(std::span<const float> logits);
    // Adds a token to the history the penalties look at (prompt tokens too, if wanted).
    void accept(int32_t token);
    void reset();  // forgets the history and re-seeds

    const SamplerParams& params() const { return params_; }
    uint64_t seed() const { return seed_; }

    // The candidates left after the last sample() (id, probability), most likely first; for tests
    // and for callers that show alternatives. Empty after a greedy sample.
    struct Candidate {
        int32_t id;
        float logit;
        float p;
    };
    std::span<const Candidate> last_candidates() const { return {cand_.data(), n_cand_}; }

private:
    void apply_penalties(std::span<float> logits);

    SamplerParams params_;
    int32_t n_vocab_;
    uint64_t seed_;
    std::mt19937_64 rng_;
    std::vector<int32_t> history_;  // ring of the last tokens (or all when repeat_last_n < 0)
    size_t history_pos_ = 0;
    std::vector<float> work_;        // penalised logits
    std::vector<int32_t> counts_;    // occurrences per token in the window (zeroed after use)
    std::vector<Candidate> cand_;
    size_t n_cand_ = 0;
};

}  // namespace kiln
