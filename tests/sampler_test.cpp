// Sampler chain: each stage against hand-computed values, and the seeded draw against the softmax
// distribution it should follow.
#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "kiln/error.h"
#include "kiln/sampler.h"

using kiln::Sampler;
using kiln::SamplerParams;

namespace {
SamplerParams plain(float temp) {
    SamplerParams p;
    p.temperature = temp;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 7;
    return p;
}
}  // namespace

TEST(Sampler, GreedyIsArgmax) {
    Sampler s(plain(0.0f), 5);
    EXPECT_EQ(s.sample(std::vector<float>{0.1f, 3.0f, -1.0f, 2.9f, 0.0f}), 1);
    EXPECT_EQ(s.sample(std::vector<float>{5.0f, 3.0f, -1.0f, 2.9f, 0.0f}), 0);
}

TEST(Sampler, SameSeedSameTokens) {
    std::vector<float> logits(100);
    for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(static_cast<float>(i)) * 2.0f;
    SamplerParams p;  // defaults: top-k 40, top-p 0.95, min-p 0.05, temp 0.8
    p.seed = 1234;
    Sampler a(p, 100), b(p, 100);
    std::vector<int32_t> ta, tb;
    for (int i = 0; i < 50; ++i) {
        ta.push_back(a.sample(logits));
        tb.push_back(b.sample(logits));
    }
    EXPECT_EQ(ta, tb);
    EXPECT_GT(std::set<int32_t>(ta.begin(), ta.end()).size(), 1u);  // it does sample
    p.seed = 99;
    Sampler c(p, 100);
    std::vector<int32_t> tc;
    for (int i = 0; i < 50; ++i) tc.push_back(c.sample(logits));
    EXPECT_NE(ta, tc);
    a.reset();
    std::vector<int32_t> again;
    for (int i = 0; i < 50; ++i) again.push_back(a.sample(logits));
    EXPECT_EQ(ta, again);
}

TEST(Sampler, DrawFollowsTheSoftmax) {
    const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f};
    const float temp = 0.7f;
    Sampler s(plain(temp), 4);
    std::vector<double> expected(4);
    double sum = 0;
    for (size_t i = 0; i < 4; ++i) sum += expected[i] = std::exp(logits[i] / temp);
    std::vector<int> counts(4, 0);
    const int n = 40000;
    for (int i = 0; i < n; ++i) ++counts[static_cast<size_t>(s.sample(logits))];
    for (size_t i = 0; i < 4; ++i) {
        const double p = expected[i] / sum;
        const double sd = std::sqrt(p * (1 - p) / n);
        EXPECT_NEAR(counts[i] / static_cast<double>(n), p, 5 * sd) << "token " << i;
    }
}

TEST(Sampler, TopKTopPMinP) {
    const std::vector<float> logits = {0.0f, 4.0f, 3.0f, 1.0f, 2.0f};
    {
        auto p = plain(1.0f);
        p.top_k = 2;
        Sampler s(p, 5);
        for (int i = 0; i < 200; ++i) {
            const int32_t t = s.sample(logits);
            EXPECT_TRUE(t == 1 || t == 2) << t;
        }
        ASSERT_EQ(s.last_candidates().size(), 2u);
        // renormalised over the two survivors
        EXPECT_NEAR(s.last_candidates()[0].p, 1.0 / (1.0 + std::exp(-1.0)), 1e-6);
    }
    {
        // softmax of {4,3,2,1,0}: 0.6364, 0.2341, 0.0861, 0.0317, 0.0117 -> top-p 0.8 keeps 2
        auto p = plain(1.0f);
        p.top_p = 0.8f;
        Sampler s(p, 5);
        s.sample(logits);
        ASSERT_EQ(s.last_candidates().size(), 2u);
        EXPECT_EQ(s.last_candidates()[0].id, 1);
        EXPECT_EQ(s.last_candidates()[1].id, 2);
        p.top_p = 0.9f;  // 0.6364 + 0.2341 = 0.8705 < 0.9 -> 3
        Sampler s3(p, 5);
        s3.sample(logits);
        EXPECT_EQ(s3.last_candidates().size(), 3u);
    }
    {
        // min-p 0.1: threshold 0.0636 keeps p >= 0.0636: ids 1, 2, 4
        auto p = plain(1.0f);
        p.min_p = 0.1f;
        Sampler s(p, 5);
        s.sample(logits);
        ASSERT_EQ(s.last_candidates().size(), 3u);
        EXPECT_EQ(s.last_candidates()[2].id, 4);
    }
}

TEST(Sampler, Penalties) {
    // repeat penalty 2: positive logits halve, negative double; counts feed frequency/presence.
    auto p = plain(1.0f);
    p.repeat_penalty = 2.0f;
    p.frequency_penalty = 0.5f;
    p.presence_penalty = 0.25f;
    p.repeat_last_n = 3;
    Sampler s(p, 4);
    for (int32_t t : {0, 1, 1, 1}) s.accept(t);  // window of 3 keeps {1,1,1}... ring: 0 dropped
    s.sample(std::vector<float>{1.0f, 3.0f, -1.0f, 0.5f});
    std::map<int32_t, float> got;
    for (const auto& c : s.last_candidates()) got[c.id] = c.logit;
    EXPECT_FLOAT_EQ(got[0], 1.0f);                        // dropped out of the window
    EXPECT_FLOAT_EQ(got[1], 3.0f / 2.0f - 3 * 0.5f - 0.25f);  // 3 occurrences
    EXPECT_FLOAT_EQ(got[2], -1.0f);
    EXPECT_FLOAT_EQ(got[3], 0.5f);

    auto g = plain(0.0f);
    g.repeat_penalty = 10.0f;
    Sampler greedy(g, 3);
    greedy.accept(2);
    EXPECT_EQ(greedy.sample(std::vector<float>{1.0f, 0.0f, 5.0f}), 0);  // 5/10 = 0.5 < 1
}

TEST(Sampler, BadInputsAreErrors) {
    EXPECT_THROW(Sampler(plain(1.0f), 0), kiln::Error);
    Sampler s(plain(1.0f), 3);
    EXPECT_THROW(s.sample(std::vector<float>{1.0f, 2.0f}), kiln::Error);
}

namespace {
// The sampler chain as a full sort would do it (the definition the selecting sampler must match):
// the ids kept after top-k, top-p (over the top-k survivors, at temperature 1) and min-p.
std::vector<int32_t> reference_kept(const std::vector<float>& logits, const SamplerParams& p) {
    std::vector<int32_t> ids(logits.size());
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
    std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
        return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)] ||
               (logits[static_cast<size_t>(a)] == logits[static_cast<size_t>(b)] && a < b);
    });
    size_t n = ids.size();
    if (p.top_k > 0 && static_cast<size_t>(p.top_k) < n) n = static_cast<size_t>(p.top_k);
    const double mx = logits[static_cast<size_t>(ids[0])];
    std::vector<double> w(n);
    double z = 0;
    for (size_t i = 0; i < n; ++i) z += w[i] = std::exp(logits[static_cast<size_t>(ids[i])] - mx);
    if (p.top_p < 1.0f) {
        double cum = 0;
        for (size_t i = 0; i < n; ++i) {
            cum += w[i] / z;
            if (cum >= p.top_p) {
                n = i + 1;
                break;
            }
        }
    }
    if (p.min_p > 0.0f) {
        size_t keep = 1;
        while (keep < n && w[keep] >= p.min_p * w[0]) ++keep;
        n = keep;
    }
    ids.resize(n);
    return ids;
}
}  // namespace

// Selection instead of sorting: every combination of truncations keeps exactly the tokens a full
// sort keeps, most likely first, at vocabularies where the sampled-bracket top-k path runs (152K)
// and where it does not, with ties and masked (-inf) logits.
TEST(Sampler, SelectionMatchesAFullSort) {
    std::mt19937 rng(3);
    for (const int32_t n_vocab : {7, 1000, 5000, 151936}) {
        for (int shape = 0; shape < 3; ++shape) {
            std::vector<float> logits(static_cast<size_t>(n_vocab));
            std::normal_distribution<float> body(0.0f, shape == 1 ? 0.7f : 2.5f);
            for (float& x : logits) x = body(rng);
            if (shape == 0)
                for (int i = 0; i < 20; ++i) logits[rng() % logits.size()] = 12.0f + static_cast<float>(i % 5);  // peaks, with ties
            if (shape == 2)
                for (size_t i = 0; i < logits.size(); ++i) {
                    if (i % 3 == 0) logits[i] = -std::numeric_limits<float>::infinity();  // masked
                    else logits[i] = std::round(logits[i]);                                  // many ties
                }
            for (int top_k : {0, 1, 40, 3000, 100000})
                for (float top_p : {1.0f, 0.95f, 0.5f})
                    for (float min_p : {0.0f, 0.05f}) {
                        auto p = plain(0.9f);
                        p.top_k = top_k;
                        p.top_p = top_p;
                        p.min_p = min_p;
                        Sampler s(p, n_vocab);
                        const int32_t t = s.sample(logits);
                        const auto want = reference_kept(logits, p);
                        const auto got = s.last_candidates();
                        SCOPED_TRACE(testing::Message() << "vocab " << n_vocab << " shape " << shape << " top_k " << top_k << " top_p "
                                                        << top_p << " min_p " << min_p);
                        ASSERT_EQ(got.size(), want.size());
                        double sum = 0;
                        bool drawn_kept = false;
                        for (size_t i = 0; i < want.size(); ++i) {
                            ASSERT_EQ(got[i].id, want[i]) << "rank " << i;
                            sum += got[i].p;
                            drawn_kept |= got[i].id == t;
                        }
                        EXPECT_NEAR(sum, 1.0, 1e-4);
                        EXPECT_TRUE(drawn_kept) << "drew " << t;
                    }
        }
    }
}

// With no truncation every token can come out, at the softmax's rate, from a 152K vocabulary.
TEST(Sampler, NoTruncationDrawsFromTheWholeVocabulary) {
    const int32_t n_vocab = 151936;
    std::vector<float> logits(static_cast<size_t>(n_vocab), -5.0f);
    logits[100] = 0.0f;
    logits[151000] = 0.0f;  // two heavy tokens; the rest share the remaining mass
    Sampler s(plain(1.0f), n_vocab);
    const double heavy = 1.0 / (2.0 + (n_vocab - 2) * std::exp(-5.0));  // each heavy token's p
    int n100 = 0, n151000 = 0, other = 0;
    const int n = 20000;
    for (int i = 0; i < n; ++i) {
        const int32_t t = s.sample(logits);
        ASSERT_GE(t, 0);
        ASSERT_LT(t, n_vocab);
        if (t == 100) ++n100;
        else if (t == 151000) ++n151000;
        else ++other;
    }
    const double sd = std::sqrt(heavy * (1 - heavy) / n);
    EXPECT_NEAR(n100 / static_cast<double>(n), heavy, 5 * sd);
    EXPECT_NEAR(n151000 / static_cast<double>(n), heavy, 5 * sd);
    EXPECT_NEAR(other / static_cast<double>(n), 1 - 2 * heavy, 5 * sd);
    EXPECT_EQ(s.last_candidates().size(), static_cast<size_t>(n_vocab));
    EXPECT_EQ(s.last_candidates()[0].id, 100);
    EXPECT_EQ(s.last_candidates()[1].id, 151000);
    EXPECT_NEAR(s.last_candidates()[0].p, heavy, 1e-5);
}

// The truncations at a 152K vocabulary (where they cut by bins, never gathering the survivors) draw
// at the truncated softmax's rate at any temperature: every draw is a kept token, the heavy tokens
// and the lower half of the kept ones (the edge of the cut) come out as often as they should, and
// last_candidates() says each kept token's probability.
TEST(Sampler, TruncatedDrawsFollowTheTruncatedSoftmax) {
    const int32_t n_vocab = 151936;
    std::mt19937 rng(11);
    std::normal_distribution<float> body(0.0f, 1.0f);
    std::vector<float> logits(static_cast<size_t>(n_vocab));
    for (float& x : logits) x = body(rng);
    logits[7] = 12.0f;
    logits[90000] = 11.5f;
    logits[151935] = 11.0f;
    struct Case {
        int top_k;
        float top_p, min_p, temp;
    };
    for (const Case c : {Case{50000, 1.0f, 0.0f, 0.7f}, Case{0, 0.95f, 0.0f, 1.0f}, Case{0, 0.99f, 2e-5f, 1.5f}, Case{100000, 0.95f, 0.0f, 0.8f}}) {
        SCOPED_TRACE(testing::Message() << "top_k " << c.top_k << " top_p " << c.top_p << " min_p " << c.min_p << " temp " << c.temp);
        auto p = plain(c.temp);
        p.top_k = c.top_k;
        p.top_p = c.top_p;
        p.min_p = c.min_p;
        const std::vector<int32_t> kept = reference_kept(logits, p);
        ASSERT_GT(kept.size(), 1000u);
        std::vector<double> want(kept.size());
        double z = 0;
        for (size_t i = 0; i < kept.size(); ++i) z += want[i] = std::exp((logits[static_cast<size_t>(kept[i])] - 12.0) / c.temp);
        std::vector<int64_t> rank(static_cast<size_t>(n_vocab), -1);  // in the kept list
        for (size_t i = 0; i < kept.size(); ++i) {
            want[i] /= z;
            rank[static_cast<size_t>(kept[i])] = static_cast<int64_t>(i);
        }
        const size_t half = kept.size() / 2;
        double want_low = 0;
        for (size_t i = half; i < kept.size(); ++i) want_low += want[i];

        Sampler s(p, n_vocab);
        const int n = 2000;
        int n_top = 0, n_low = 0;
        for (int d = 0; d < n; ++d) {
            const int32_t t = s.sample(logits);
            ASSERT_TRUE(t >= 0 && t < n_vocab);
            const int64_t r = rank[static_cast<size_t>(t)];
            ASSERT_GE(r, 0) << "drew token " << t << ", which is not kept";
            n_top += r == 0;
            n_low += r >= static_cast<int64_t>(half);
        }
        const double sd_top = std::sqrt(want[0] * (1 - want[0]) / n), sd_low = std::sqrt(want_low * (1 - want_low) / n);
        EXPECT_NEAR(n_top / static_cast<double>(n), want[0], 5 * sd_top);
        EXPECT_NEAR(n_low / static_cast<double>(n), want_low, 5 * sd_low + 1e-3);
        const auto got = s.last_candidates();
        ASSERT_EQ(got.size(), kept.size());
        double worst = 0;
        for (size_t i = 0; i < kept.size(); ++i) {
            ASSERT_EQ(got[i].id, kept[i]) << "rank " << i;
            worst = std::max(worst, std::abs(got[i].p - want[i]) / want[i]);
        }
        EXPECT_LT(worst, 1e-4) << "largest relative error of a kept token's probability";
    }
}
