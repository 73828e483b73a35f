// "Nothing allocated per token": counts operator new calls (this binary replaces the global one)
// while a context decodes one token at a time after its prompt, and while the CPU backend runs a
// prompt's tiled attention.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <new>
#include <random>
#include <vector>

#include <unistd.h>

#include "backend/backend.h"
#include "graph/graph.h"
#include "gguf/writer.h"
#include "kiln/kiln.h"
#include "support/deepseek2_model.h"
#include "support/shared.h"
#include "support/vulkan.h"

// The replacement pair below is malloc/free on both sides; GCC 12 still flags the inlined library
// deletes as mismatched.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

namespace {
std::atomic<bool> g_counting{false};
std::atomic<int64_t> g_allocations{0};
}  // namespace

// Under AddressSanitizer the runtime owns operator new/delete (and mixes ours with its own), so the
// count is only taken in ordinary builds.
#if defined(__SANITIZE_ADDRESS__)
#define KILN_COUNT_ALLOCATIONS 0
#else
#define KILN_COUNT_ALLOCATIONS 1
void* operator new(std::size_t n) {
    if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1, std::memory_order_relaxed);
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
#endif

namespace {

std::string write_tiny_llama() {
    kiln::gguf::Writer w;
    const int E = 32, F = 64, V = 40, L = 2, H = 4, HKV = 2, HD = 8;
    w.set_string("general.architecture", "llama");
    w.set_u32("llama.context_length", 64);
    w.set_u32("llama.embedding_length", E);
    w.set_u32("llama.block_count", L);
    w.set_u32("llama.feed_forward_length", F);
    w.set_u32("llama.attention.head_count", H);
    w.set_u32("llama.attention.head_count_kv", HKV);
    w.set_u32("llama.vocab_size", V);
    std::mt19937 rng(4);
    std::uniform_real_distribution<float> U(-0.3f, 0.3f);
    auto t = [&](const std::string& name, std::vector<uint64_t> shape, float center = 0.0f) {
        size_t n = 1;
        for (auto s : shape) n *= s;
        std::vector<float> d(n);
        for (float& x : d) x = center + U(rng);
        w.add_tensor_f32(name, kiln::TensorType::F32, shape, d);
    };
    t("token_embd.weight", {E, V});
    t("output_norm.weight", {E}, 1.0f);
    for (int il = 0; il < L; ++il) {
        const std::string b = "blk." + std::to_string(il) + ".";
        t(b + "attn_norm.weight", {E}, 1.0f);
        t(b + "attn_q.weight", {E, H * HD});
        t(b + "attn_k.weight", {E, HKV * HD});
        t(b + "attn_v.weight", {E, HKV * HD});
        t(b + "attn_output.weight", {H * HD, E});
        t(b + "ffn_norm.weight", {E}, 1.0f);
        t(b + "ffn_gate.weight", {E, F});
        t(b + "ffn_up.weight", {E, F});
        t(b + "ffn_down.weight", {F, E});
    }
    const auto dir = std::filesystem::path(KILN_BINARY_DIR) / "test_models";
    std::filesystem::create_directories(dir);
    const std::string path = (dir / "alloc_llama.gguf").string();
    // Written aside and renamed into place: the tests of this file run in parallel processes.
    const std::string tmp = path + "." + std::to_string(::getpid());
    w.write(tmp);
    std::filesystem::rename(tmp, path);
    return path;
}

// Decodes `steps` single tokens (3, then t -> (7t + 1) % vocab) while counting operator new calls.
struct Counted {
    int64_t allocations = 0;
    float sum = 0;  // of each step's first logit: the logits were produced
};
Counted decode_counted(kiln::Context& ctx, int steps, int vocab) {
    Counted c;
    int32_t tok = 3;
    g_allocations = 0;
    g_counting = true;
    for (int i = 0; i < steps; ++i) {
        ctx.decode(std::span<const int32_t>(&tok, 1));
        c.sum += ctx.logits()[0];
        tok = static_cast<int32_t>((tok * 7 + 1) % vocab);
    }
    g_counting = false;
    c.allocations = g_allocations.load();
    return c;
}

// f16, q8_0 and q4_0 caches.
TEST(DecodeAllocations, NoneWhileGeneratingTokens) {
    if (!KILN_COUNT_ALLOCATIONS) GTEST_SKIP() << "SKIPPED: allocation counting is off under AddressSanitizer";
    const kiln::Model model = kiln::Model::load(write_tiny_llama());
    for (const kiln::KvType kv : {kiln::KvType::F16, kiln::KvType::Q8_0, kiln::KvType::Q4_0}) {
        SCOPED_TRACE(kiln::kv_type_name(kv));
        kiln::ContextOptions o;
        o.n_ctx = 48;
        o.n_threads = 2;
        o.kv_type_k = o.kv_type_v = kv;
        kiln::Context ctx(model, o);
        const std::vector<int32_t> prompt = {1, 5, 9, 13, 17, 21, 25};
        ctx.decode(prompt);
        const Counted c = decode_counted(ctx, 30, 40);
        EXPECT_EQ(c.allocations, 0) << "operator new calls during 30 single-token decodes";
        EXPECT_EQ(ctx.n_past(), 37);
        EXPECT_TRUE(std::isfinite(c.sum));
    }
}

// A prompt's attention on the CPU runs tiled (kernels/flash_attn.h) in per-thread tiles sized when
// its graph was compiled: a run allocates nothing (GQA on f16 and q8_0 caches, MLA 20:1 K576 / V512).
TEST(PromptAttentionAllocations, NoneInTheTiledPath) {
    if (!KILN_COUNT_ALLOCATIONS) GTEST_SKIP() << "SKIPPED: allocation counting is off under AddressSanitizer";
    namespace be = kiln::backend;
    struct Shape {
        int n_head, n_head_kv, dk, dv;
        bool mla;
        kiln::KvType kv;
    };
    for (const Shape s : {Shape{8, 2, 64, 64, false, kiln::KvType::F16}, Shape{8, 2, 64, 64, false, kiln::KvType::Q8_0},
                          Shape{20, 1, 576, 512, true, kiln::KvType::F16}}) {
        kiln::graph::AttentionParams ap;
        ap.n_head = s.n_head;
        ap.n_head_kv = s.n_head_kv;
        ap.head_dim_k = s.dk;
        ap.head_dim_v = s.dv;
        ap.v_in_k = s.mla;
        be::KvLayout layout;
        layout.n_ctx = 64;
        layout.type_k = layout.type_v = s.kv;
        layout.layers.push_back({.n_head_kv = s.n_head_kv, .head_dim_k = s.dk, .head_dim_v = s.dv, .v_in_k = s.mla});
        auto backend = be::make_cpu_backend(2);
        auto kv = backend->alloc_kv(layout);
        const int64_t n = 24;
        kiln::graph::Graph g;
        const auto tk = g.input("k", kiln::graph::DType::F32, s.n_head_kv * s.dk, n);
        const auto tv = s.mla ? kiln::graph::kNone : g.input("v", kiln::graph::DType::F32, s.n_head_kv * s.dv, n);
        g.store_kv(tk, tv, ap);
        g.mark_output(g.attention(g.input("q", kiln::graph::DType::F32, s.n_head * s.dk, n), ap), "out");
        auto exe = backend->compile(std::move(g));
        for (const char* name : {"k", "v", "q"}) {
            if (s.mla && name[0] == 'v') continue;
            const auto id = exe->graph().find(name);
            std::vector<float> x(static_cast<size_t>(exe->graph().tensor(id).n_elements()));
            for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 37) % 101) / 50.0f - 1.0f;
            exe->set_input(id, x.data(), x.size() * 4);
        }
        be::RunArgs a;
        a.kv = kv.get();
        a.kv_base = 0;
        exe->run(a);  // the first run may touch lazily created state
        const int64_t runs = be::cpu_tiled_attention_runs();
        g_allocations = 0;
        g_counting = true;
        exe->run(a);
        g_counting = false;
        EXPECT_EQ(be::cpu_tiled_attention_runs(), runs + 1) << "the prompt's attention did not run tiled";
        EXPECT_EQ(g_allocations.load(), 0) << "operator new calls during a prompt's attention, dk " << s.dk;
        const float* out = exe->output(exe->graph().find("out"));
        for (int64_t i = 0; i < n * s.n_head * s.dv; ++i) ASSERT_TRUE(std::isfinite(out[i])) << i;
    }
}

// The same on the Vulkan backend (f16, q8_0 and q4_0 caches): recording a forward pass (pipelines
// found, descriptor sets written, barriers tracked), submitting it and reading the logits back
// allocate nothing once the first passes have sized the recorder's lists. Skipped without a
// Vulkan device.
TEST(DecodeAllocationsVulkan, NoneWhileGeneratingTokens) {
    if (!KILN_COUNT_ALLOCATIONS) GTEST_SKIP() << "SKIPPED: allocation counting is off under AddressSanitizer";
    KILN_REQUIRE_VULKAN();  // loudly; any other error is a failure
    const kiln::Model model = kiln::Model::load(write_tiny_llama());
    for (const kiln::KvType kv : {kiln::KvType::F16, kiln::KvType::Q8_0, kiln::KvType::Q4_0}) {
        SCOPED_TRACE(kiln::kv_type_name(kv));
        kiln::ContextOptions o;
        o.n_ctx = 48;
        o.backend = "vulkan";
        o.kv_type_k = o.kv_type_v = kv;
        auto ctx = std::make_unique<kiln::Context>(model, o);
        const std::vector<int32_t> prompt = {1, 5, 9, 13, 17, 21, 25};
        ctx->decode(prompt);
        const int32_t tok = 3;
        for (int i = 0; i < 2; ++i) ctx->decode(std::span<const int32_t>(&tok, 1));  // sizes the lists
        const Counted c = decode_counted(*ctx, 10, 40);
        EXPECT_EQ(c.allocations, 0) << "operator new calls during 10 single-token decodes on Vulkan";
        EXPECT_EQ(ctx->n_past(), 19);
        EXPECT_TRUE(std::isfinite(c.sum));
    }
}

// Continuous batching on Vulkan: three contexts on the model's one backend, a decode_batch step
// (one forward pass, StoreKV / Attention per sequence) allocates nothing once the batch shape is
// compiled and its per-sequence views made (the first steps).
TEST(DecodeAllocationsVulkan, NoneWhileGeneratingBatches) {
    if (!KILN_COUNT_ALLOCATIONS) GTEST_SKIP() << "SKIPPED: allocation counting is off under AddressSanitizer";
    KILN_REQUIRE_VULKAN();  // loudly; any other error is a failure
    const kiln::Model model = kiln::Model::load(write_tiny_llama());
    kiln::ContextOptions o;
    o.n_ctx = 48;
    o.backend = "vulkan";
    std::vector<kiln::Context> ctxs;
    for (int i = 0; i < 3; ++i) ctxs.emplace_back(model, o);
    std::vector<kiln::Context*> ptrs;
    for (size_t i = 0; i < ctxs.size(); ++i) {
        const std::vector<int32_t> prompt(3 + 2 * i, static_cast<int32_t>(1 + i));
        ctxs[i].decode(prompt);
        ptrs.push_back(&ctxs[i]);
    }
    std::vector<int32_t> toks = {3, 4, 5};
    for (int i = 0; i < 2; ++i) kiln::decode_batch(ptrs, toks);  // compiles the shape, sizes the lists

    g_allocations = 0;
    g_counting = true;
    float sum = 0;
    for (int i = 0; i < 10; ++i) {
        kiln::decode_batch(ptrs, toks);
        for (kiln::Context* c : ptrs) sum += c->logits()[0];
        for (int32_t& t : toks) t = static_cast<int32_t>((t * 7 + 1) % 40);
    }
    g_counting = false;
    EXPECT_EQ(g_allocations.load(), 0) << "operator new calls during 10 batched decode steps on Vulkan";
    for (size_t i = 0; i < ctxs.size(); ++i) EXPECT_EQ(ctxs[i].n_past(), static_cast<int64_t>(3 + 2 * i + 12));
    EXPECT_TRUE(std::isfinite(sum));
}

// deepseek2: MLA (latent cache, per-head projections), MoE (routing, grouped expert matmuls) and
// YaRN in every decode step, on preallocated buffers only.
TEST(DecodeAllocations, NoneWhileGeneratingTokensDeepseek2) {
    if (!KILN_COUNT_ALLOCATIONS) GTEST_SKIP() << "SKIPPED: allocation counting is off under AddressSanitizer";
    for (const bool glm : {false, true}) {
        kiln::test::ds2::Config c;
        c.joined_kv_b = !glm;
        c.q_lora = glm ? 16 : 0;
        c.gating = glm ? 2 : 1;
        c.probs_b = glm;
        c.norm_w = glm;
        c.yarn = glm ? 0.0f : 8.0f;
        const std::string path = kiln::test::ds2::write_model(c, kiln::test::ds2::make_weights(c),
                                                              glm ? "alloc_glm.gguf" : "alloc_ds2.gguf");
        const kiln::Model model = kiln::Model::load(path);
        kiln::ContextOptions o;
        o.n_ctx = 48;
        o.n_threads = 2;
        kiln::Context ctx(model, o);
        const std::vector<int32_t> prompt = {1, 5, 9, 13, 17, 21, 25};
        ctx.decode(prompt);
        const Counted n = decode_counted(ctx, 30, 40);
        EXPECT_EQ(n.allocations, 0) << "operator new calls during 30 single-token decodes, " << (glm ? "GLM" : "V2");
        EXPECT_TRUE(std::isfinite(n.sum));
    }
}

// The other architectures' shared files: sliding-window rings that wrap while decoding, QK-norm,
// soft-caps, sinks, experts.
class DecodeAllocationsShared : public ::testing::TestWithParam<std::string> {};

TEST_P(DecodeAllocationsShared, NoneWhileGeneratingTokens) {
    if (!KILN_COUNT_ALLOCATIONS) GTEST_SKIP() << "SKIPPED: allocation counting is off under AddressSanitizer";
    KILN_REQUIRE_SHARED("models");
    const auto path = kiln::test::shared_dir() / "models" / (GetParam() + ".gguf");
    if (!std::filesystem::exists(path)) GTEST_SKIP() << "SKIPPED: " << path << " is absent";
    const kiln::Model model = kiln::Model::load(path.string());
    kiln::ContextOptions o;
    o.n_ctx = 64;
    o.n_threads = 2;
    o.n_batch = 4;  // sliding layers: a ring of window + 3 slots, wrapped many times below
    kiln::Context ctx(model, o);
    const std::vector<int32_t> prompt = {1, 5, 9, 13, 17, 21, 25};
    ctx.decode(prompt);
    const Counted c = decode_counted(ctx, 50, 200);
    EXPECT_EQ(c.allocations, 0) << "operator new calls during 50 single-token decodes";
    EXPECT_EQ(ctx.n_past(), 57);
    EXPECT_TRUE(std::isfinite(c.sum));
}

INSTANTIATE_TEST_SUITE_P(Models, DecodeAllocationsShared,
                         ::testing::Values("gemma3-tiny.q4_k_m", "gpt-oss-tiny.mxfp4_moe", "gpt-oss-tiny.q8_0",
                                           "deepseek2-lite-tiny.q8_0", "glm4.7-flash-dims.q8_0"),
                         [](const auto& info) {
                             std::string s = info.param;
                             for (char& c : s)
                                 if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                             return s;
                         });

}  // namespace
