// Paged KV on the Vulkan backend: the full layers' rows live in pages of a device pool shared by
// the contexts of a model on a device, read and written through each context's page table.
//  - the shaders (kv_write, attention: single, split-K, tiled) give bit for bit the results of one
//    contiguous cache when the pages lie in the pool in any order (unused pool rows are NaN);
//  - whole models (GQA, gemma3's rings, MLA; f16 and q8_0 caches) give bit for bit the logits of
//    one page covering the context, across page boundaries, with two contexts whose pages
//    interleave in the pool, also when decoded as one batch;
//  - a prefix restored from a PrefixCache (from memory, and from disk after a restart) into a paged
//    context equals its cold prefill;
//  - the memory a context holds follows its tokens, and pages given back are reused.
// Skipped (loudly) without a Vulkan device (lavapipe counts) or /work/shared.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/vulkan/backend.h"
#include "backend/vulkan/graph_executor.h"
#include "kiln/error.h"
#include "kiln/kiln.h"
#include "model/model_impl.h"
#include "runtime/shared_backend.h"
#include "support/paging.h"
#include "support/shared.h"
#include "support/vulkan.h"
#include "support/random.h"

namespace {

using kiln::TensorType;
using kiln::vk::Tensor;

constexpr uint32_t kPoison = 0x7e007e00u;  // two f16 NaNs: any unwritten half (value or scale) read is a NaN

using kiln::test::random_floats;

size_t bitwise_diffs(const std::vector<float>& got, const std::vector<float>& want, size_t* first = nullptr) {
    EXPECT_EQ(got.size(), want.size());
    size_t diff = 0;
    for (size_t i = 0; i < std::min(got.size(), want.size()); ++i)
        if (std::memcmp(&got[i], &want[i], 4) != 0 && diff++ == 0 && first) *first = i;
    return diff;
}

// ---- the shaders ------------------------------------------------------------------------------

class VulkanPagedKvOps : public kiln::test::VulkanOpsSuite<VulkanPagedKvOps> {};

struct OpCase {
    const char* name;
    int n_head, n_head_kv, dk, dv;
    bool mla = false;
    kiln::KvType kv = kiln::KvType::F16;
    int window = 0;
    float softcap = 0.0f;
    bool sinks = false;
};

// A contiguous cache of 112 positions and a pool of 10 pages of 16 rows whose page table puts the
// 7 pages of those positions in the order 6, 2, 9, 0, 4, 7, 1 (the other pool rows stay NaN): the
// same keys and values written in batches of 9 into both, then the last batch's attention with
// every kernel. Equal bit for bit: the addressing differs, the arithmetic does not.
TEST_F(VulkanPagedKvOps, EveryKernelReadsThroughShuffledPagesBitExact) {
    using kiln::vk::AttentionKernel;
    constexpr int64_t P = 16, n_ctx = 112, pool_pages = 10;
    const std::vector<int32_t> order = {6, 2, 9, 0, 4, 7, 1};
    const std::vector<OpCase> cases = {
        {"gqa 8:2 f16", 8, 2, 64, 64},
        {"gqa 8:2 q8_0, softcap, sinks", 8, 2, 64, 64, false, kiln::KvType::Q8_0, 0, 30.0f, true},
        {"gqa 4:1 q4_0, window 20", 4, 1, 64, 64, false, kiln::KvType::Q4_0, 20},
        {"mla 20:1 K576 V512 f16", 20, 1, 576, 512, true},
        {"mla 16:1 K96 V64 q8_0", 16, 1, 96, 64, true, kiln::KvType::Q8_0},
    };
    const std::pair<AttentionKernel, uint32_t> kernels[] = {{AttentionKernel::Single, 0},
                                                            {AttentionKernel::Split, 0},
                                                            {AttentionKernel::Split, 3},
                                                            {AttentionKernel::Tiled, 0},
                                                            {AttentionKernel::Auto, 0}};
    Tensor table = vk().tensor(TensorType::I32, {static_cast<int64_t>(order.size())}, "page table");
    vk().upload(table, order.data(), table.bytes());
    const kiln::vk::KvPages pages{&table, 4};
    for (const OpCase& c : cases) {
        SCOPED_TRACE(c.name);
        for (auto [prefix, n] : {std::pair<int64_t, int64_t>{100, 1}, {37, 9}, {14, 3}, {96, 16}}) {
            Tensor kc = vk().kv_cache(c.kv, c.dk, c.n_head_kv, n_ctx, "k contiguous");
            Tensor pk = vk().kv_cache(c.kv, c.dk, c.n_head_kv, pool_pages * P, "k pages");
            vk().fill(kc, kPoison);
            vk().fill(pk, kPoison);
            Tensor vc = kc, pv = pk;
            if (!c.mla) {
                vc = vk().kv_cache(c.kv, c.dv, c.n_head_kv, n_ctx, "v contiguous");
                pv = vk().kv_cache(c.kv, c.dv, c.n_head_kv, pool_pages * P, "v pages");
                vk().fill(vc, kPoison);
                vk().fill(pv, kPoison);
            }
            const std::vector<float> sinks = random_floats(static_cast<size_t>(c.n_head), 7, -2, 2);
            Tensor tsinks = f32(sinks, {c.n_head}, "sinks");
            for (int64_t base = 0; base < prefix + n;) {
                const int64_t m = base < prefix ? std::min<int64_t>(9, prefix - base) : n;
                const auto seed = static_cast<uint32_t>(base);
                Tensor k = f32(random_floats(static_cast<size_t>(c.n_head_kv * c.dk * m), 100 + seed, -2, 2),
                               {c.dk, c.n_head_kv, m}, "k");
                vk().kv_write(k, kc, static_cast<uint32_t>(base), false, c.kv);
                vk().kv_write(k, pk, static_cast<uint32_t>(base), false, c.kv, &pages);
                if (!c.mla) {
                    Tensor v = f32(random_floats(static_cast<size_t>(c.n_head_kv * c.dv * m), 200 + seed, -2, 2),
                                   {c.dv, c.n_head_kv, m}, "v");
                    vk().kv_write(v, vc, static_cast<uint32_t>(base), false, c.kv);
                    vk().kv_write(v, pv, static_cast<uint32_t>(base), false, c.kv, &pages);
                }
                base += m;
            }
            Tensor q = f32(random_floats(static_cast<size_t>(c.n_head * c.dk * n), 300, -1, 1), {c.dk, c.n_head, n}, "q");
            for (auto [kernel, chunks] : kernels) {
                kiln::graph::AttentionParams p;
                p.scale = 1.0f / std::sqrt(static_cast<float>(c.dk));
                p.window = static_cast<int>(c.window);
                p.softcap = c.softcap;
                p.v_in_k = c.mla;
                p.head_dim_v = static_cast<int>(c.dv);
                kiln::vk::AttentionRun r;
                r.k_type = r.v_type = c.kv;
                r.pos0 = static_cast<uint32_t>(prefix);
                r.n_kv = static_cast<uint32_t>(prefix + n);
                r.kernel = kernel;
                r.split_chunks = chunks;
                Tensor want_t = vk().tensor(TensorType::F32, {c.dv, c.n_head, n}, "out contiguous");
                Tensor got_t = vk().tensor(TensorType::F32, {c.dv, c.n_head, n}, "out paged");
                vk().attention(q, kc, vc, want_t, p, r, c.sinks ? &tsinks : nullptr);
                vk().attention(q, pk, pv, got_t, p, r, c.sinks ? &tsinks : nullptr, &pages);
                const std::vector<float> want = vk().read_f32(want_t), got = vk().read_f32(got_t);
                for (float w : want) ASSERT_TRUE(std::isfinite(w)) << "the contiguous cache read an unwritten row";
                size_t first = 0;
                EXPECT_EQ(bitwise_diffs(got, want, &first), 0u)
                    << "prefix " << prefix << " n " << n << " kernel " << static_cast<int>(kernel) << " chunks " << chunks
                    << ": first at " << first;
            }
        }
    }
    // Positions past the table are refused, and a ring is never paged.
    Tensor pk = vk().kv_cache(kiln::KvType::F16, 64, 2, pool_pages * P, "k pages");
    Tensor k = f32(random_floats(64 * 2 * 4, 1), {64, 2, 4}, "k");
    EXPECT_THROW(vk().kv_write(k, pk, static_cast<uint32_t>(n_ctx - 3), false, kiln::KvType::F16, &pages), kiln::Error);
    EXPECT_THROW(vk().kv_write(k, pk, 0, true, kiln::KvType::F16, &pages), kiln::Error);
    vk().kv_write(k, pk, static_cast<uint32_t>(n_ctx - 4), false, kiln::KvType::F16, &pages);
    vk().submit();
}

// ---- whole models -------------------------------------------------------------------------------

using kiln::test::all_logits;
using kiln::test::expect_bitwise;
using kiln::test::part;
std::filesystem::path model_path(const std::string& name) { return kiln::test::shared_model_path(name); }
std::vector<int32_t> prompt(const kiln::Model& m, size_t n, size_t salt = 0) { return kiln::test::spread_prompt(m, n, salt); }

// page >= n_ctx: one page covering the context, the reference.
kiln::ContextOptions vk_options(kiln::KvType kv, int64_t page, int64_t n_ctx = 128) {
    kiln::ContextOptions o;
    o.backend = "vulkan";
    o.n_ctx = n_ctx;
    o.n_threads = 2;
    o.n_batch = 8;  // prompts in batches of 8 (tiled attention); gemma3's window of 16: rings of 23 slots
    o.kv_type_k = o.kv_type_v = kv;
    o.kv_page_tokens = page;
    return o;
}

// Device bytes of the KV page pools of the model's one shared Vulkan backend (held: of the pages
// held by caches or the prefix cache).
uint64_t pool_bytes(const kiln::Model& model, bool held = false) {
    const kiln::Model::Impl& m = *model.impl();
    std::lock_guard lk(m.backends_mu);
    if (m.vulkan_backends.size() != 1) return 0;
    const auto be = m.vulkan_backends.begin()->second.lock();
    if (!be) return 0;
    return held ? kiln::backend::vulkan_kv_pool_held_bytes(*be->backend) : kiln::backend::vulkan_kv_pool_bytes(*be->backend);
}

using ModelCase = kiln::test::KvModelCase;

class VulkanPagedKvModels : public ::testing::TestWithParam<ModelCase> {};

// Two contexts with pages of 16 decode different prompts in turns, so that their pages interleave
// in the pool (b's table starts at page 2): prompts of 37 in chunks (tiled attention across page
// boundaries), then token by token (the single-pass decode), then as one batch of both
// (decode_batch: each sequence's attention through its own table). Every logit equals that of the
// same tokens in a context of one page of 128.
TEST_P(VulkanPagedKvModels, LogitsEqualOnePageAcrossPageBoundaries) {
    KILN_REQUIRE_SHARED("models");
    KILN_REQUIRE_VULKAN();
    const ModelCase k = GetParam();
    const kiln::Model model = kiln::Model::load(model_path(k.model).string());
    const std::vector<int32_t> ta = prompt(model, 60, 0), tb = prompt(model, 60, 3);
    kiln::Context ra(model, vk_options(k.kv, 128)), rb(model, vk_options(k.kv, 128));
    kiln::Context a(model, vk_options(k.kv, 16)), b(model, vk_options(k.kv, 16));
    std::vector<float> want_a, want_b, got_a, got_b;
    auto step = [](kiln::Context& c, const std::vector<int32_t>& t, size_t from, size_t to, std::vector<float>& out) {
        c.decode(part(t, from, to), true);
        const std::vector<float> l = all_logits(c);
        out.insert(out.end(), l.begin(), l.end());
    };
    // Turns: a 20, b 20, a 17, b 17: pages a 0 1, b 2 3, a 4 (position 32..36 -> page 2 of a) ...
    step(a, ta, 0, 20, got_a);
    step(b, tb, 0, 20, got_b);
    step(a, ta, 20, 37, got_a);
    step(b, tb, 20, 37, got_b);
    step(ra, ta, 0, 20, want_a);
    step(ra, ta, 20, 37, want_a);
    step(rb, tb, 0, 20, want_b);
    step(rb, tb, 20, 37, want_b);
    for (size_t i = 37; i < 50; ++i) {
        step(b, tb, i, i + 1, got_b);
        step(a, ta, i, i + 1, got_a);
        step(ra, ta, i, i + 1, want_a);
        step(rb, tb, i, i + 1, want_b);
    }
    expect_bitwise(got_a, want_a, k.model + ": a");
    expect_bitwise(got_b, want_b, k.model + ": b");
    EXPECT_LT(a.kv_bytes_held(), ra.kv_bytes_held()) << "50 tokens: 4 pages of 16, not 128 positions";

    // One batch of both (positions 50..59 cross the page boundary at 48 .. 64).
    for (size_t i = 50; i < 60; ++i) {
        kiln::Context* both[] = {&a, &b};
        const int32_t next[] = {ta[i], tb[i]};
        kiln::decode_batch(both, next);
        ra.decode(part(ta, i, i + 1));
        rb.decode(part(tb, i, i + 1));
        expect_bitwise(std::vector<float>(a.logits().begin(), a.logits().end()),
                       std::vector<float>(ra.logits().begin(), ra.logits().end()), k.model + ": a batched " + std::to_string(i));
        expect_bitwise(std::vector<float>(b.logits().begin(), b.logits().end()),
                       std::vector<float>(rb.logits().begin(), rb.logits().end()), k.model + ": b batched " + std::to_string(i));
    }
}

// A prefix saved to a PrefixCache from one paged context and restored into another (whose pages
// are not where the first one's were: a third context holds pages in between) gives the logits
// of the cold prefill bit for bit; a truncate into a page and a different continuation too.
TEST_P(VulkanPagedKvModels, RestoredPrefixEqualsColdPrefill) {
    KILN_REQUIRE_SHARED("models");
    KILN_REQUIRE_VULKAN();
    const ModelCase k = GetParam();
    const kiln::Model model = kiln::Model::load(model_path(k.model).string());
    const std::vector<int32_t> tokens = prompt(model, 64);
    kiln::PrefixCacheOptions po;
    po.block_tokens = 16;
    po.dir = kiln::test::temp_path("vk-prefix-" + k.model + "-" + std::string(kiln::kv_type_name(k.kv))).string();
    std::filesystem::remove_all(po.dir);
    std::vector<std::string> logged;
    po.log = [&](const std::string& m) { logged.push_back(m); };
    auto cache_ptr = std::make_unique<kiln::PrefixCache>(model, po);
    kiln::PrefixCache& cache = *cache_ptr;
    kiln::Context cold(model, vk_options(k.kv, 16));
    cold.decode(part(tokens, 0, 48));
    EXPECT_EQ(cache.save(cold, tokens), 3u);
    cold.decode(part(tokens, 48, 64), true);
    const std::vector<float> want = all_logits(cold);

    kiln::Context other(model, vk_options(k.kv, 16));
    other.decode(prompt(model, 40, 5));
    kiln::Context warm(model, vk_options(k.kv, 16));
    ASSERT_EQ(cache.restore(warm, tokens, 63), 48);
    EXPECT_LT(warm.kv_bytes_held(), cold.kv_bytes_held()) << "48 tokens: 3 of cold's 4 pages";
    warm.decode(part(tokens, 48, 64), true);
    expect_bitwise(all_logits(warm), want, k.model + ": restored");

    // A single-page reference agrees with the paged cold run as well.
    kiln::Context one(model, vk_options(k.kv, 128));
    one.decode(part(tokens, 0, 48));
    one.decode(part(tokens, 48, 64), true);
    expect_bitwise(all_logits(one), want, k.model + ": one page");

    // The disk tier: the blocks written (read back from the device pages), a new cache on the same
    // directory (a restart) restores them into the pages of a new context.
    EXPECT_EQ(cache.flush(), 3u);
    cache_ptr.reset();
    kiln::PrefixCache restarted(model, po);
    kiln::Context from_disk(model, vk_options(k.kv, 16));
    ASSERT_EQ(restarted.restore(from_disk, tokens, 63), 48);
    EXPECT_EQ(restarted.stats().disk_hit_tokens, 48u);
    from_disk.decode(part(tokens, 48, 64), true);
    expect_bitwise(all_logits(from_disk), want, k.model + ": restored from disk");
    EXPECT_TRUE(logged.empty()) << logged.front();
    std::filesystem::remove_all(po.dir);
}

// Blocks of 16 are the device pages of contexts with pages of 16: the cache takes the saving
// context's pages by reference and a restoring context reads them in place (no page taken for
// the prefix); a context that truncates into a shared page copies it first, and nobody else sees
// its rows.
TEST_P(VulkanPagedKvModels, PrefixSharedByReferenceCopyOnWrite) {
    KILN_REQUIRE_SHARED("models");
    KILN_REQUIRE_VULKAN();
    const ModelCase k = GetParam();
    const kiln::Model model = kiln::Model::load(model_path(k.model).string());
    const std::vector<int32_t> tokens = prompt(model, 64);
    std::vector<int32_t> other = tokens;  // the same first 40 tokens, then others
    for (size_t i = 40; i < other.size(); ++i) other[i] = tokens[(i * 7) % 40] + 1;
    auto cold = [&](const std::vector<int32_t>& t, size_t split) {
        kiln::Context c(model, vk_options(k.kv, 128));
        c.decode(part(t, 0, split));
        c.decode(part(t, split, t.size()), true);
        return all_logits(c);
    };
    const std::vector<float> want = cold(tokens, 48), want_other = cold(other, 40);

    kiln::PrefixCacheOptions po;
    po.block_tokens = 16;
    kiln::PrefixCache cache(model, po);
    kiln::Context a(model, vk_options(k.kv, 16));
    a.decode(part(tokens, 0, 48));
    const uint64_t held_a = pool_bytes(model, true);
    EXPECT_EQ(cache.save(a, tokens), 3u);
    EXPECT_EQ(pool_bytes(model, true), held_a) << "the cache takes a's pages, no copy";
    kiln::Context b(model, vk_options(k.kv, 16)), c(model, vk_options(k.kv, 16));
    ASSERT_EQ(cache.restore(b, tokens, 63), 48);
    ASSERT_EQ(cache.restore(c, tokens, 63), 48);
    EXPECT_EQ(pool_bytes(model, true), held_a) << "b and c read the cached pages";
    EXPECT_EQ(b.kv_bytes_held(), a.kv_bytes_held());

    int64_t kept = c.truncate(40);
    if (kept == 0) kept = cache.restore(c, other, 63);  // a ring that no longer holds position 40
    c.decode(part(other, static_cast<size_t>(kept), 64), true);
    EXPECT_GT(pool_bytes(model, true), held_a);
    std::vector<float> got_other = all_logits(c);
    got_other.erase(got_other.begin(), got_other.end() - static_cast<std::ptrdiff_t>(want_other.size()));
    expect_bitwise(got_other, want_other, k.model + ": c after diverging in a shared page");
    a.decode(part(tokens, 48, 64), true);
    expect_bitwise(all_logits(a), want, k.model + ": a, whose pages the cache took");
    b.decode(part(tokens, 48, 64), true);
    expect_bitwise(all_logits(b), want, k.model + ": b from shared pages");
}

INSTANTIATE_TEST_SUITE_P(Shared, VulkanPagedKvModels,
                         ::testing::Values(ModelCase{"llama-tiny.f32", kiln::KvType::F16},
                                           ModelCase{"llama-tiny.f32", kiln::KvType::Q8_0},
                                           ModelCase{"gemma3-tiny.f32", kiln::KvType::F16},
                                           ModelCase{"gemma3-tiny.f32", kiln::KvType::Q8_0},
                                           ModelCase{"deepseek2-lite-tiny.f32", kiln::KvType::F16},
                                           ModelCase{"glm4.7-flash-tiny.f32", kiln::KvType::F16},
                                           ModelCase{"glm4.7-flash-tiny.f32", kiln::KvType::Q8_0}),
                         kiln::test::kv_model_case_name);

// The pages a context holds follow its tokens (taken as it grows, given back when it shrinks);
// the device pool grows only when no page is free, so pages one context gave back serve the next;
// kept up front, everything is held from the start.
TEST(VulkanPagedKv, MemoryFollowsTheTokens) {
    KILN_REQUIRE_SHARED("models");
    KILN_REQUIRE_VULKAN();
    const kiln::Model model = kiln::Model::load(model_path("llama-tiny.f32").string());
    kiln::ContextOptions o = vk_options(kiln::KvType::F16, 128, 1000);  // 8 pages, the last one whole on the device
    o.n_batch = 256;
    kiln::Context ctx(model, o);
    const size_t page = ctx.kv_bytes() / 8;
    kiln::ContextOptions whole = o;
    whole.n_ctx = 1024;
    EXPECT_EQ(ctx.kv_bytes(), kiln::Context(model, whole).kv_bytes()) << "1000 positions in whole pages of 128: 1024";
    const uint64_t dev0 = pool_bytes(model);
    EXPECT_EQ(ctx.kv_bytes_held(), 0u);
    std::vector<std::pair<int64_t, size_t>> seen;
    ctx.decode(prompt(model, 200));
    EXPECT_EQ(ctx.kv_bytes_held(), 2 * page);
    seen.emplace_back(ctx.n_past(), ctx.kv_bytes_held());
    const uint64_t dev200 = pool_bytes(model);
    EXPECT_EQ(dev200 - dev0, 2 * page) << "the pool took 2 pages, not the whole cache";
    ctx.decode(prompt(model, 200, 1));
    EXPECT_EQ(ctx.kv_bytes_held(), 4 * page);
    seen.emplace_back(ctx.n_past(), ctx.kv_bytes_held());
    ctx.decode(prompt(model, 600, 2));
    EXPECT_EQ(ctx.kv_bytes_held(), ctx.kv_bytes()) << "full: exactly what the plan counts";
    seen.emplace_back(ctx.n_past(), ctx.kv_bytes_held());
    EXPECT_EQ(pool_bytes(model) - dev0, ctx.kv_bytes());
    EXPECT_EQ(ctx.truncate(300), 300);
    EXPECT_EQ(ctx.kv_bytes_held(), 3 * page);
    ctx.clear();
    EXPECT_EQ(ctx.kv_bytes_held(), 0u);

    // A second context takes the pages the first gave back: the device memory does not grow.
    kiln::Context next(model, o);
    const uint64_t dev_next = pool_bytes(model);
    next.decode(prompt(model, 850, 4));
    EXPECT_EQ(next.kv_bytes_held(), 7 * page);
    EXPECT_EQ(pool_bytes(model), dev_next) << "pages reused, nothing allocated";
    for (const auto& [n, held] : seen)
        std::printf("[ vk paged  ] a Vulkan context of -c %lld holds %.1f KiB of KV at %lld tokens (full: %.1f KiB)\n",
                    static_cast<long long>(o.n_ctx), static_cast<double>(held) / 1024, static_cast<long long>(n),
                    static_cast<double>(ctx.kv_bytes()) / 1024);

    // Up front: every page from the start, kept.
    kiln::ContextOptions all = o;
    all.kv_up_front = true;
    kiln::Context held(model, all);
    EXPECT_EQ(held.kv_bytes_held(), held.kv_bytes());
    held.decode(prompt(model, 20));
    held.clear();
    EXPECT_EQ(held.kv_bytes_held(), held.kv_bytes());
}

// Four contexts restoring a 1024-token prefix from the cache (blocks of 64: the contexts' device
// pages) and decoding their own 20 tokens hold well under 4x the device memory of one: the
// prefix's pages once, one page of their own each. The first context stays (a server's slot: the
// cache's device pages live as long as the backend's pool, i.e. while a context of that shape
// does; after that its blocks are restored by copy). A restored context's logits equal a cold one's.
TEST(VulkanPagedKv, FourContextsShareALongPrefix) {
    KILN_REQUIRE_SHARED("models");
    KILN_REQUIRE_VULKAN();
    const kiln::Model model = kiln::Model::load(model_path("llama-tiny.f32").string());
    constexpr size_t kPrefix = 1024, kSuffix = 20;
    const std::vector<int32_t> shared = prompt(model, kPrefix);
    auto request = [&](size_t i) {
        std::vector<int32_t> t = shared;
        const std::vector<int32_t> own = prompt(model, kSuffix, 7 + i);
        t.insert(t.end(), own.begin(), own.end());
        return t;
    };
    kiln::ContextOptions o = vk_options(kiln::KvType::F16, 64, 1088);
    o.n_batch = 256;
    kiln::PrefixCacheOptions po;
    po.block_tokens = 64;
    kiln::PrefixCache cache(model, po);
    kiln::Context first(model, o);
    const std::vector<int32_t> t0 = request(0);
    first.decode(part(t0, 0, kPrefix));
    EXPECT_EQ(cache.save(first, t0), kPrefix / 64);
    first.decode(part(t0, kPrefix, t0.size()));
    const uint64_t one = pool_bytes(model, true);
    EXPECT_EQ(one, first.kv_bytes_held());
    first.clear();  // its pages go back; the prefix's stay with the cache
    std::vector<kiln::Context> ctxs;
    for (int i = 0; i < 4; ++i) ctxs.emplace_back(model, o);
    for (size_t i = 0; i < 4; ++i) {
        const std::vector<int32_t> t = request(i + 1);
        ASSERT_EQ(cache.restore(ctxs[i], t, static_cast<int64_t>(t.size()) - 1), static_cast<int64_t>(kPrefix));
        ctxs[i].decode(part(t, kPrefix, t.size()));
    }
    const uint64_t four = pool_bytes(model, true);
    std::printf("[ vk paged  ] one context of %zu tokens: %.2f MiB of device KV; four sharing its %zu-token prefix: %.2f MiB "
                "(%.3fx; unshared: %.2f MiB); a context's -c %lld: %.2f MiB\n",
                kPrefix + kSuffix, one / 1048576.0, kPrefix, four / 1048576.0, static_cast<double>(four) / static_cast<double>(one),
                4.0 * static_cast<double>(one) / 1048576.0, static_cast<long long>(o.n_ctx), ctxs[0].kv_bytes() / 1048576.0);
    EXPECT_LE(static_cast<double>(four), 1.3 * static_cast<double>(one));
    EXPECT_EQ(cache.stats().mem_hit_tokens, 4 * kPrefix);

    kiln::Context cold(model, o);
    const std::vector<int32_t> t = request(1);
    cold.decode(part(t, 0, kPrefix));
    cold.decode(part(t, kPrefix, t.size()));
    expect_bitwise(std::vector<float>(ctxs[0].logits().begin(), ctxs[0].logits().end()),
                   std::vector<float>(cold.logits().begin(), cold.logits().end()), "restored by reference vs cold");
}

}  // namespace
