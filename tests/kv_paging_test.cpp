// Paged KV on the CPU: a context's full layers live in pages taken as the sequence grows; a
// prefix restored from a kiln::PrefixCache whose blocks are pages is read by reference (shared by
// every context that restores it and by the cache), and a context copies a shared page only
// before it writes into it. The logits are bit for bit those of a cold prefill into one
// contiguous page (every architecture: GQA, gemma3's rings, MLA), sequences that share a prefix
// and then diverge do not disturb each other, and four requests sharing an 18K-token prefix hold
// little more KV memory than one.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "backend/backend.h"
#include "kiln/kiln.h"
#include "support/paging.h"
#include "support/shared.h"

namespace {

using kiln::test::all_logits;
using kiln::test::expect_bitwise;
using kiln::test::part;
std::filesystem::path model_path(const std::string& name) { return kiln::test::shared_model_path(name); }
std::vector<int32_t> prompt(const kiln::Model& m, size_t n, size_t salt = 0) { return kiln::test::spread_prompt(m, n, salt); }

// page 256 > n_ctx: one contiguous page, the cold reference.
kiln::ContextOptions ctx_options(kiln::KvType kv, int64_t page) {
    kiln::ContextOptions o;
    o.n_ctx = 128;
    o.n_threads = 2;
    o.n_batch = 8;  // gemma3's window of 16: rings of 23 slots
    o.kv_type_k = o.kv_type_v = kv;
    o.kv_page_tokens = page;
    return o;
}

// The logits of tokens[split, end) of a cold context (one contiguous page) that decoded
// tokens[0, split) first (the same chunks as every context below).
std::vector<float> cold(const kiln::Model& model, kiln::KvType kv, const std::vector<int32_t>& tokens, size_t split) {
    kiln::Context c(model, ctx_options(kv, 256));
    c.decode(part(tokens, 0, split));
    c.decode(part(tokens, split, tokens.size()), true);
    return all_logits(c);
}

using Case = kiln::test::KvModelCase;

class PagedKvModels : public ::testing::TestWithParam<Case> {};

// Context a computes 48 tokens in pages of 16 and saves them (the cache takes its pages); b and c
// restore them by reference; a and b continue with the same tokens, c with others after a
// truncate into a shared page (which it copies). Every one equals its cold contiguous prefill.
TEST_P(PagedKvModels, SharedPrefixIsBitExactAndSequencesDiverge) {
    KILN_REQUIRE_SHARED("models");
    const Case k = GetParam();
    const kiln::Model model = kiln::Model::load(model_path(k.model).string());
    const std::vector<int32_t> tokens = prompt(model, 64);
    std::vector<int32_t> other = tokens;  // the same first 40 tokens, then others
    for (size_t i = 40; i < other.size(); ++i) other[i] = tokens[(i * 7) % 40] + 1;
    const std::vector<float> want = cold(model, k.kv, tokens, 48);
    const std::vector<float> want_other = cold(model, k.kv, other, 40);

    kiln::PrefixCacheOptions po;
    po.block_tokens = 16;
    kiln::PrefixCache cache(model, po);
    kiln::Context a(model, ctx_options(k.kv, 16));
    a.decode(part(tokens, 0, 48));
    const size_t a_held = a.kv_bytes_held();
    EXPECT_LT(a_held, a.kv_bytes()) << "48 of 128 tokens take 3 of 8 pages";
    const size_t live = kiln::backend::kv_page_bytes_live();
    EXPECT_EQ(cache.save(a, tokens), 3u);
    EXPECT_EQ(kiln::backend::kv_page_bytes_live(), live) << "the cache takes a's pages, no copy";

    kiln::Context b(model, ctx_options(k.kv, 16)), c(model, ctx_options(k.kv, 16));
    ASSERT_EQ(cache.restore(b, tokens, 63), 48);
    ASSERT_EQ(cache.restore(c, tokens, 63), 48);
    EXPECT_EQ(kiln::backend::kv_page_bytes_live(), live) << "b and c read the cached pages";
    EXPECT_EQ(b.kv_bytes_held(), a_held);

    // c diverges inside a shared page: it copies that page, nobody else sees its rows. (Where a
    // sliding-window ring no longer holds what position 40 needs, truncate keeps nothing: c then
    // restores what the cache has of `other`, its first 32 tokens at most.)
    int64_t kept = c.truncate(40);
    if (kept == 0) kept = cache.restore(c, other, 63);
    ASSERT_EQ(kept % 8, 0);
    c.decode(part(other, static_cast<size_t>(kept), 64), true);
    EXPECT_GT(kiln::backend::kv_page_bytes_live(), live);
    std::vector<float> got_other = all_logits(c);
    got_other.erase(got_other.begin(), got_other.end() - static_cast<std::ptrdiff_t>(want_other.size()));
    expect_bitwise(got_other, want_other, k.model + ": c after diverging");

    a.decode(part(tokens, 48, 64), true);
    expect_bitwise(all_logits(a), want, k.model + ": a, whose pages the cache took");
    b.decode(part(tokens, 48, 64), true);
    expect_bitwise(all_logits(b), want, k.model + ": b from shared pages");

    // Step by step, interleaved: c's tokens never reach b's attention and the other way round.
    kiln::Context b_cold(model, ctx_options(k.kv, 256)), c_cold(model, ctx_options(k.kv, 256));
    b_cold.decode(tokens);
    c_cold.decode(other);
    for (int32_t s = 0; s < 6; ++s) {
        const int32_t tb = 5 + s, tc = 50 + 3 * s;
        b.decode(std::span<const int32_t>(&tb, 1));
        c.decode(std::span<const int32_t>(&tc, 1));
        b_cold.decode(std::span<const int32_t>(&tb, 1));
        c_cold.decode(std::span<const int32_t>(&tc, 1));
        expect_bitwise(all_logits(b), all_logits(b_cold), k.model + ": b step " + std::to_string(s));
        expect_bitwise(all_logits(c), all_logits(c_cold), k.model + ": c step " + std::to_string(s));
    }
}

INSTANTIATE_TEST_SUITE_P(Shared, PagedKvModels,
                         ::testing::Values(Case{"llama-tiny.f32", kiln::KvType::F16}, Case{"llama-tiny.q4_k_m", kiln::KvType::Q4_0},
                                           Case{"qwen2-tiny.f32", kiln::KvType::F16}, Case{"qwen2-tiny.q8_0", kiln::KvType::Q8_0},
                                           Case{"gemma3-tiny.f32", kiln::KvType::F16}, Case{"gemma3-tiny.q8_0", kiln::KvType::Q8_0},
                                           Case{"gpt-oss-tiny.f32", kiln::KvType::F32},
                                           Case{"deepseek2-lite-tiny.f32", kiln::KvType::F16},
                                           Case{"glm4.7-flash-tiny.f32", kiln::KvType::F16},
                                           Case{"glm4.7-flash-dims.q8_0", kiln::KvType::Q8_0}),
                         kiln::test::kv_model_case_name);

// Every attention path reads through the pages as it reads one contiguous cache: the tiled prompt
// path, decode's split path and the per-row path (split attention off), and a sliding-window layer
// that is not a ring (a small context: window + batch reach n_ctx), whose window starts anywhere
// in a page. Pages of 4 and 16 tokens against one page, bit for bit.
TEST(PagedKv, EveryAttentionPathReadsThroughPages) {
    KILN_REQUIRE_SHARED("models");
    for (const char* name : {"llama-tiny.f32", "gemma3-tiny.f32", "deepseek2-lite-tiny.f32"}) {
        const kiln::Model model = kiln::Model::load(model_path(name).string());
        const std::vector<int32_t> tokens = prompt(model, 37);
        for (bool split : {true, false}) {
            kiln::backend::set_cpu_split_attention(split);
            auto run = [&](int64_t page) {
                kiln::ContextOptions o = ctx_options(kiln::KvType::F16, page);
                o.n_ctx = 44;
                o.n_batch = 32;  // gemma3: window 16 + 31 >= 44, so its windowed layers are not rings
                kiln::Context c(model, o);
                c.decode(part(tokens, 0, 30), true);  // tiled
                std::vector<float> out = all_logits(c);
                for (size_t i = 30; i < tokens.size(); ++i) {  // decode: split or per row
                    c.decode(part(tokens, i, i + 1));
                    out.insert(out.end(), c.logits().begin(), c.logits().end());
                }
                return out;
            };
            const std::vector<float> want = run(64);
            for (int64_t page : {4, 16})
                expect_bitwise(run(page), want, std::string(name) + " pages of " + std::to_string(page) + (split ? " split" : " per row"));
        }
        kiln::backend::set_cpu_split_attention(true);
    }
}

// Pages are taken as the sequence grows and let go when it shrinks (or all taken up front and
// kept); a page size that is not a power of two is refused.
TEST(PagedKv, MemoryFollowsTheTokens) {
    KILN_REQUIRE_SHARED("models");
    const kiln::Model model = kiln::Model::load(model_path("llama-tiny.f32").string());
    kiln::ContextOptions o = ctx_options(kiln::KvType::F16, 16);
    o.n_ctx = 120;  // the last page holds 8 positions
    kiln::Context ctx(model, o);
    EXPECT_EQ(ctx.kv_bytes_held(), 0u);
    const size_t page = ctx.kv_bytes() * 16 / 120;
    ctx.decode(prompt(model, 20));
    EXPECT_EQ(ctx.kv_bytes_held(), 2 * page);
    ctx.decode(prompt(model, 100, 1));
    EXPECT_EQ(ctx.kv_bytes_held(), ctx.kv_bytes()) << "full: exactly what the plan counts";
    EXPECT_EQ(ctx.truncate(33), 33);
    EXPECT_EQ(ctx.kv_bytes_held(), 3 * page);
    ctx.clear();
    EXPECT_EQ(ctx.kv_bytes_held(), 0u);

    // Up front (kiln run, chat, logits, bench): everything from the start, kept.
    kiln::ContextOptions all = o;
    all.kv_up_front = true;
    kiln::Context held(model, all);
    EXPECT_EQ(held.kv_bytes_held(), held.kv_bytes());
    held.decode(prompt(model, 20));
    held.clear();
    EXPECT_EQ(held.kv_bytes_held(), held.kv_bytes());

    for (int64_t bad : {int64_t{0}, int64_t{3}, int64_t{-16}, int64_t{96}}) {
        kiln::ContextOptions b = o;
        b.kv_page_tokens = bad;
        try {
            kiln::Context c(model, b);
            ADD_FAILURE() << bad << " accepted";
        } catch (const kiln::Error& e) {
            EXPECT_NE(std::string(e.what()).find("kv_page_tokens must be a power of two"), std::string::npos) << e.what();
        }
    }
}

// Issue 17's criterion: four concurrent requests sharing an 18K-token prefix hold at most 1.3x
// the KV memory of one. The first request computes the prefix and its pages go to the cache by
// reference; the four restore it and each decodes its own 200-token suffix, at the same time.
TEST(PagedKv, FourRequestsShareAn18KPrefix) {
    KILN_REQUIRE_SHARED("models");
    const auto path = model_path("qwen3-vocab-tiny.f16");
    if (!std::filesystem::exists(path)) GTEST_SKIP() << "SKIPPED: " << path << " is absent";
    const kiln::Model model = kiln::Model::load(path.string());
    constexpr size_t kPrefix = 18 * 1024, kSuffix = 200;
    const std::vector<int32_t> shared = prompt(model, kPrefix);
    auto request = [&](size_t i) {
        std::vector<int32_t> t = shared;
        const std::vector<int32_t> own = prompt(model, kSuffix, 7 + i);
        t.insert(t.end(), own.begin(), own.end());
        return t;
    };
    kiln::ContextOptions o;
    o.n_ctx = 20 * 1024;
    o.n_threads = 1;
    o.n_batch = 2048;
    kiln::PrefixCache cache(model, {});  // blocks of 256 tokens: the contexts' pages

    const size_t before = kiln::backend::kv_page_bytes_live();
    size_t one = 0;
    {
        kiln::Context first(model, o);
        const std::vector<int32_t> t = request(0);
        first.decode(part(t, 0, kPrefix));
        EXPECT_EQ(cache.save(first, t), kPrefix / 256);
        first.decode(part(t, kPrefix, t.size()));
        one = kiln::backend::kv_page_bytes_live() - before;
        EXPECT_EQ(one, first.kv_bytes_held());
        EXPECT_LT(one, first.kv_bytes()) << "what the tokens use, not -c";
    }
    EXPECT_EQ(kiln::backend::kv_page_bytes_live() - before, cache.stats().mem_bytes - cache.stats().mem_blocks * (128 + 256 * 4))
        << "only the cache's blocks are left";

    std::vector<kiln::Context> ctxs;
    for (int i = 0; i < 4; ++i) ctxs.emplace_back(model, o);
    std::vector<std::thread> th;
    std::vector<float> first_logit(4);
    for (size_t i = 0; i < 4; ++i)
        th.emplace_back([&, i] {
            const std::vector<int32_t> t = request(i + 1);
            const int64_t got = cache.restore(ctxs[i], t, static_cast<int64_t>(t.size()) - 1);
            ctxs[i].decode(part(t, static_cast<size_t>(got), t.size()));
            first_logit[i] = ctxs[i].logits()[0];
        });
    for (auto& t : th) t.join();
    const size_t four = kiln::backend::kv_page_bytes_live() - before;
    for (const kiln::Context& c : ctxs) EXPECT_EQ(c.n_past(), static_cast<int64_t>(kPrefix + kSuffix));
    std::printf("[ paged kv  ] one request of %zu tokens: %.2f MiB of KV; four sharing its %zu-token prefix: %.2f MiB (%.3fx); "
                "a context's -c %lld: %.2f MiB\n",
                kPrefix + kSuffix, one / 1048576.0, kPrefix, four / 1048576.0, static_cast<double>(four) / static_cast<double>(one),
                static_cast<long long>(o.n_ctx), ctxs[0].kv_bytes() / 1048576.0);
    EXPECT_LE(static_cast<double>(four), 1.3 * static_cast<double>(one));
    EXPECT_EQ(cache.stats().mem_hit_tokens, 4 * kPrefix);
}

}  // namespace
