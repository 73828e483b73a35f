// Context::truncate: dropping the tail of the sequence and decoding other tokens gives the same
// logits as decoding the kept prefix plus those tokens into a fresh context.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <vector>

#include "kiln/kiln.h"
#include "model/synthetic.h"
#include "support/shared.h"

TEST(ContextTruncate, ReusesThePrefix) {
    kiln::SyntheticLlama s;
    s.n_ctx = 64;
    const std::string path = kiln::test::temp_path("truncate-" + std::to_string(::getpid()) + ".gguf").string();
    kiln::write_synthetic_llama(path, s);
    const kiln::Model model = kiln::Model::load(path);
    kiln::ContextOptions o;
    o.n_ctx = 64;
    o.n_threads = 1;
    const std::vector<int32_t> prefix = {1, 5, 9, 13}, a = {20, 21, 22}, b = {30, 31};

    kiln::Context ctx(model, o);
    ctx.decode(prefix);
    ctx.decode(a);
    EXPECT_EQ(ctx.n_past(), 7);
    ctx.truncate(4);
    EXPECT_EQ(ctx.n_past(), 4);
    EXPECT_EQ(ctx.n_logits(), 0);
    ctx.decode(b);
    const auto got = std::vector<float>(ctx.logits().begin(), ctx.logits().end());

    kiln::Context fresh(model, o);
    std::vector<int32_t> all = prefix;
    all.insert(all.end(), b.begin(), b.end());
    fresh.decode(all);
    const auto want = fresh.logits();
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-3f * (1.0f + std::abs(want[i]))) << i;

    EXPECT_THROW(ctx.truncate(7), kiln::Error);
    EXPECT_THROW(ctx.truncate(-1), kiln::Error);
    ctx.truncate(0);
    EXPECT_EQ(ctx.n_past(), 0);
}

// Gemma 3's sliding-window layers keep a ring of window + n_batch - 1 slots: a prefix whose
// window is still in the ring is kept exactly, one whose window was overwritten is not kept at all.
TEST(ContextTruncate, SlidingWindowRing) {
    KILN_REQUIRE_SHARED("models");
    const kiln::Model model = kiln::Model::load((kiln::test::shared_dir() / "models" / "gemma3-tiny.f32.gguf").string());
    kiln::ContextOptions o;
    o.n_ctx = 64;
    o.n_threads = 1;
    o.n_batch = 4;  // window 16: rings of 19 slots
    std::vector<int32_t> seq;
    for (int32_t i = 0; i < 30; ++i) seq.push_back(10 + (i * 7) % 50);
    const std::vector<int32_t> other = {77, 78};

    kiln::Context ctx(model, o);
    ctx.decode(seq);
    ASSERT_EQ(ctx.truncate(28), 28);  // positions 12..27 still in the ring (it holds 11..29)
    ctx.decode(other);
    const auto got = std::vector<float>(ctx.logits().begin(), ctx.logits().end());
    kiln::Context fresh(model, o);
    std::vector<int32_t> want_seq(seq.begin(), seq.begin() + 28);
    want_seq.insert(want_seq.end(), other.begin(), other.end());
    fresh.decode(want_seq);
    const auto want = fresh.logits();
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-3f * (1.0f + std::abs(want[i]))) << i;

    kiln::Context lost(model, o);
    lost.decode(seq);
    EXPECT_EQ(lost.truncate(20), 0);  // position 4's row was overwritten by 23
    EXPECT_EQ(lost.n_past(), 0);
}

// Truncating twice: the ring keeps the rows of the furthest position decoded, not of the first
// truncation. After 30 tokens the rings (19 slots) hold 11..29; truncate(29) keeps 29, and then
// 27 can still be kept (its window 11..26 is there) but 26 cannot (position 10 was overwritten by
// 29, which the first truncation dropped).
TEST(ContextTruncate, SlidingWindowRingTruncatedTwice) {
    KILN_REQUIRE_SHARED("models");
    const kiln::Model model = kiln::Model::load((kiln::test::shared_dir() / "models" / "gemma3-tiny.f32.gguf").string());
    kiln::ContextOptions o;
    o.n_ctx = 64;
    o.n_threads = 1;
    o.n_batch = 4;
    std::vector<int32_t> seq;
    for (int32_t i = 0; i < 30; ++i) seq.push_back(10 + (i * 7) % 50);
    const std::vector<int32_t> other = {77, 78};
    kiln::Context ctx(model, o);
    ctx.decode(seq);
    ASSERT_EQ(ctx.truncate(29), 29);
    ASSERT_EQ(ctx.truncate(27), 27);
    ctx.decode(other);
    const auto got = std::vector<float>(ctx.logits().begin(), ctx.logits().end());
    kiln::Context fresh(model, o);
    std::vector<int32_t> want_seq(seq.begin(), seq.begin() + 27);
    want_seq.insert(want_seq.end(), other.begin(), other.end());
    fresh.decode(want_seq);
    const auto want = fresh.logits();
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-3f * (1.0f + std::abs(want[i]))) << i;

    kiln::Context twice(model, o);
    twice.decode(seq);
    ASSERT_EQ(twice.truncate(29), 29);
    EXPECT_EQ(twice.truncate(26), 0);
}
