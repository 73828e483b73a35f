// Sampler chain: each stage against hand-computed values, and the seeded draw against the softmax
// distribution it should follow.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
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
