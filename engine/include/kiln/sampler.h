// Sampler chain: repetition / presence / frequency penalties, then top-k, top-p, min-p,
// temperature and a seeded draw (or greedy). Buffers are sized once for the vocabulary, so
// sampling a token allocates nothing. The truncations select (never sort the vocabulary): a small
// top-k keeps the k best by partial selection; otherwise each truncation keeps a best prefix, found
// from bins of the logit (counted for top-k, weighed for top-p, one pass) where only the bin that
// holds the cut is selected among, and the draw weighs the survivors per block of ids without
// gathering them. At a 152K vocabulary one token costs a few linear passes whatever the parameters
// (kiln_bench Sampler*).
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

// log p(token) under softmax(logits) (temperature 1, no truncation), and the n_top most likely
// tokens with theirs, best first (ties: lower id), into `top` (cleared). For OpenAI logprobs.
struct TokenLogprob {
    int32_t id;
    float logprob;
};
float token_logprobs(std::span<const float> logits, int32_t token, size_t n_top, std::vector<TokenLogprob>& top);

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

    // The candidates left after the last sample() (id, penalised logit, probability at the
    // sampling temperature), most likely first (ties: lower id first); for tests and for callers
    // that show alternatives. Empty after a greedy sample. Sorted when asked, not by sample().
    struct Candidate {
        int32_t id;
        float logit;
        float p;
    };
    std::span<const Candidate> last_candidates() const;

    static constexpr size_t kBlock = 64;  // weights summed per block, so a draw walks blocks first

private:
    bool apply_penalties(std::span<float> logits, float mx);  // true: the largest logit (mx before) may have changed
    // Candidates are keys_ (logit and id in one orderable integer: a larger key ranks first, ties
    // going to the lower id) with a weight each in wts_.
    size_t collect(float floor, size_t k);  // the k best (all if k == 0) of the logits >= floor, unordered
    size_t collect_bracketed(float floor, size_t k);  // collect's fast path for k; 0: take the slow one
    static constexpr size_t kSamples = 1024;
    static constexpr size_t kSmallK = 1024;  // a top-k up to this gathers its survivors; a larger one cuts by bins
    // The best prefix of keys[0, n) whose weight (wts, at temperature 1 against the best logit mx)
    // reaches target; keys and wts are reordered so that it comes first.
    size_t top_p(uint64_t* keys, float* wts, size_t n, double target, float mx);
    void pick_best(const int32_t* ids, size_t m, size_t n);  // the n best of ids[0, m) into keys_[0, n) (keys_[0, m) written)
    size_t walk_by_id(double target) const;  // the draw over the tokens whose key is >= cut_, by block sums
    double u01();

    SamplerParams params_;
    int32_t n_vocab_;
    uint64_t seed_;
    std::mt19937_64 rng_;
    std::vector<int32_t> history_;  // ring of the last tokens (or all when repeat_last_n < 0)
    size_t history_pos_ = 0;
    std::vector<float> work_;        // penalised logits
    std::vector<int32_t> counts_;    // occurrences per token in the window (zeroed after use)
    std::vector<uint64_t> keys_;
    std::vector<float> wts_, bsum_;
    std::vector<uint64_t> side_keys_;  // top_p: the keys of its boundary bin
    std::vector<float> side_wts_;
    std::vector<float> sel_wts_;     // the weights of the keys of an edge bin
    std::vector<int32_t> edge_;      // the ids of an edge bin's tokens
    size_t n_cand_ = 0;
    // by_id_: the candidates are the tokens whose key is >= cut_ (0: all of them), weighing
    // exp((logit - mx_) * inv_t_), block sums in bsum_; otherwise keys_[0, n_cand_) with wts_[0, n_cand_).
    bool by_id_ = false;
    uint64_t cut_ = 0;
    float mx_ = 0, inv_t_ = 1;
    double draw_z_ = 1;  // sum of wts_ at the last draw, for last_candidates()
    mutable std::vector<Candidate> cand_;  // built by last_candidates()
    mutable bool cand_valid_ = false;
};

}  // namespace kiln
