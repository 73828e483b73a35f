// Whole models on the Vulkan backend: the shared reference models' logits against llama.cpp's with
// the bounds of the CPU test (tests/model_reference_test.cpp, /work/shared/models/README.md):
//   f32 / f16 / bf16: max|ours - ref| <= 3e-3 * max|ref|, argmax equal where top2_margin > 1e-2 * max|ref|
//   quantized:        RMS(ours - ref) <= 2 * rms_quantization_error, argmax equal where
//                     top2_margin > 0.1 * max|ref|
// Every architecture of ../shared/models runs: llama, qwen2, gemma3 (the sliding-window layers also
// as rings, fed in batches of 8 and token by token), gpt-oss, deepseek2 (DeepSeek-V2-Lite and
// GLM-4.7-Flash layouts, MLA at real head sizes K 576 / V 512 in glm4.7-flash-dims). Plus Vulkan
// against the CPU on a synthetic model, `kiln run --backend vulkan` on the story model, and the
// refusal of graphs the shaders cannot run. Skipped (loudly) without a Vulkan device.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "backend/vulkan/backend.h"
#include "backend/vulkan/graph_executor.h"
#include "graph/graph.h"
#include "kiln/error.h"
#include "kiln/kiln.h"
#include "backend/vulkan/context.h"
#include "model/model_impl.h"
#include "model/synthetic.h"
#include "runtime/shared_backend.h"
#include "support/reference.h"
#include "support/run.h"
#include "support/shared.h"
#include "support/vulkan.h"

namespace {

namespace fs = std::filesystem;

namespace ref = kiln::test::reference;

// The prompt one batch at a time, in batches of 8, or one token at a time: the last two make the
// sliding-window layers of gemma3 / gpt-oss rings of window + n_batch - 1 slots.
void check_vulkan(const std::string& name, ref::Mode mode, int64_t small_batch = 8) {
    KILN_REQUIRE_VULKAN();
    ref::check_model(name, ref::Run{mode, kiln::KvType::F16, "vulkan", small_batch});
}

class VulkanReferenceLogits : public ::testing::TestWithParam<std::string> {};
TEST_P(VulkanReferenceLogits, OneBatch) { check_vulkan(GetParam(), ref::Mode::Batch); }

INSTANTIATE_TEST_SUITE_P(Models, VulkanReferenceLogits,
                         ::testing::Values("llama-tiny.f32", "llama-tiny.f16", "llama-tiny.bf16", "llama-tiny.q8_0",
                                           "llama-tiny.q4_0", "llama-tiny.q4_1", "llama-tiny.q5_0", "llama-tiny.q5_1",
                                           "llama-tiny.q2_k", "llama-tiny.q3_k_m", "llama-tiny.q4_k_m",
                                           "llama-tiny.q5_k_m", "llama-tiny.q6_k", "llama-tiny.iq4_nl",
                                           "llama-tiny.iq4_xs", "qwen2-tiny.f32", "qwen2-tiny.q8_0",
                                           "qwen2-tiny.q4_k_m", "gemma3-tiny.f32", "gemma3-tiny.q8_0",
                                           "gemma3-tiny.q4_k_m", "gpt-oss-tiny.f32", "gpt-oss-tiny.q8_0",
                                           "gpt-oss-tiny.mxfp4_moe", "deepseek2-lite-tiny.f32",
                                           "deepseek2-lite-tiny.q8_0", "glm4.7-flash-tiny.f32",
                                           "glm4.7-flash-tiny.q8_0", "glm4.7-flash-dims.q8_0", "qwen3-tiny.f32",
                                           "qwen3-tiny.q8_0", "qwen3-tiny.q4_k_m", "qwen3moe-tiny.f32",
                                           "qwen3moe-tiny.q8_0", "qwen3moe-tiny.q4_k_m", "glm4moe-tiny.f32",
                                           "glm4moe-tiny.q8_0", "glm4moe-tiny.q4_k_m"),
                         [](const auto& info) { return ref::test_name(info.param); });

TEST(VulkanReferenceLogitsIncremental, Qwen3MoeF32TokenByToken) { check_vulkan("qwen3moe-tiny.f32", ref::Mode::TokenByToken); }
TEST(VulkanReferenceLogitsIncremental, Glm4MoeF32TokenByToken) { check_vulkan("glm4moe-tiny.f32", ref::Mode::TokenByToken); }
TEST(VulkanReferenceLogitsIncremental, LlamaF32TokenByToken) { check_vulkan("llama-tiny.f32", ref::Mode::TokenByToken); }
TEST(VulkanReferenceLogitsIncremental, Qwen2F32TokenByToken) { check_vulkan("qwen2-tiny.f32", ref::Mode::TokenByToken); }
// The sliding-window layers as rings (window + n_batch - 1 slots), fed in batches and token by token.
TEST(VulkanReferenceLogitsIncremental, Gemma3F32RingInBatchesOf8) { check_vulkan("gemma3-tiny.f32", ref::Mode::SmallBatches); }
TEST(VulkanReferenceLogitsIncremental, Gemma3F32RingTokenByToken) { check_vulkan("gemma3-tiny.f32", ref::Mode::TokenByToken); }
TEST(VulkanReferenceLogitsIncremental, GptOssF32RingInBatchesOf8) { check_vulkan("gpt-oss-tiny.f32", ref::Mode::SmallBatches); }
TEST(VulkanReferenceLogitsIncremental, GptOssF32RingTokenByToken) { check_vulkan("gpt-oss-tiny.f32", ref::Mode::TokenByToken); }
// MLA decode step by step (4 layers; deepseek2-lite-tiny's 26 take 12 s token by token on lavapipe).
TEST(VulkanReferenceLogitsIncremental, Glm47FlashF32TokenByToken) { check_vulkan("glm4.7-flash-tiny.f32", ref::Mode::TokenByToken); }

// Quantized KV caches on Vulkan. q8_0: the q8_0 files of every architecture against the
// reference under the quantized-file bound, as on the CPU. q8_0 and q4_0: the whole model's
// logits against the CPU backend's with the same cache type (both quantize K and V by the rules
// of kernels/kv_quant.h), max|vulkan - cpu| <= 3e-3 * max|cpu| - the f32 files' bound - on the
// f32 files (on quantized files the two backends' 8-bit activation rounding differs more).
class VulkanReferenceLogitsQ8Cache : public ::testing::TestWithParam<std::string> {};
TEST_P(VulkanReferenceLogitsQ8Cache, OneBatch) {
    KILN_REQUIRE_VULKAN();
    ref::check_model(GetParam(), ref::Run{ref::Mode::Batch, kiln::KvType::Q8_0, "vulkan", 8});
}
INSTANTIATE_TEST_SUITE_P(Models, VulkanReferenceLogitsQ8Cache,
                         ::testing::Values("llama-tiny.q8_0", "gemma3-tiny.q8_0", "gpt-oss-tiny.q8_0",
                                           "deepseek2-lite-tiny.q8_0", "glm4.7-flash-tiny.q8_0", "glm4.7-flash-dims.q8_0"),
                         [](const auto& info) { return ref::test_name(info.param); });

// The integer-dot decode kernels, dense and MoE / per-head (KILN_VK_INTEGER_DOT=1 forces them
// where the device has the dot product without accelerating it, as lavapipe), token by token on
// quantized files of the dense, MoE and MLA architectures: within the reference bound. That they
// ran is seen in the pipelines built (matmul_vec_dot*, moe_matmul_dot*); they round x themselves,
// so a decode step runs no more dispatches than on the float path (no quantize_x before them).
class ScopedEnv {
public:
    ScopedEnv(const char* name, const char* value) : name_(name) {
        if (const char* old = std::getenv(name)) old_ = old;
        ::setenv(name, value, 1);
    }
    ~ScopedEnv() {
        if (old_) ::setenv(name_, old_->c_str(), 1);
        else ::unsetenv(name_);
    }
    ScopedEnv(const ScopedEnv&) = delete;
    ScopedEnv& operator=(const ScopedEnv&) = delete;

private:
    const char* name_;
    std::optional<std::string> old_;
};

class VulkanIntegerDotDecode : public ::testing::TestWithParam<std::string> {};
TEST_P(VulkanIntegerDotDecode, MatchesTheReferenceTokenByToken) {
    KILN_REQUIRE_VULKAN();
    KILN_REQUIRE_SHARED("models");
    const std::string name = GetParam();
    {
        ScopedEnv env("KILN_VK_INTEGER_DOT", "1");
        try {
            kiln::backend::VulkanOptions vo;
            kiln::backend::make_vulkan_backend(vo);
        } catch (const kiln::Error& e) {
            std::printf("[  SKIPPED ] %s\n", e.what());
            GTEST_SKIP() << "SKIPPED: " << e.what();
        }
        ref::check_model(name, ref::Run{ref::Mode::TokenByToken, kiln::KvType::F16, "vulkan", 8});
    }
    const fs::path dir = kiln::test::shared_dir() / "models";
    const kiln::Model model = kiln::Model::load((dir / (name + ".gguf")).string());
    // The matmuls of one decode step with an integer-dot weight type: dense, and MoE / per-head.
    uint64_t dense_dot = 0, grouped_dot = 0, matmuls = 0;
    const kiln::graph::Graph g = model.impl()->arch->build({1, 1});
    for (const auto& n : g.nodes()) {
        if (n.op != kiln::graph::Op::MatMul && n.op != kiln::graph::Op::MoeMatMul && n.op != kiln::graph::Op::HeadMatMul)
            continue;
        ++matmuls;
        if (kiln::vk::Backend::supports_integer_dot(g.tensor(n.src[0]).wtype))
            ++(n.op == kiln::graph::Op::MatMul ? dense_dot : grouped_dot);
    }
    struct Step {
        uint64_t dispatches;
        size_t dense_variants, grouped_variants;  // integer-dot pipelines built
    };
    auto step = [&](const char* dot) {
        ScopedEnv env("KILN_VK_INTEGER_DOT", dot);
        kiln::ContextOptions o;
        o.n_ctx = 8;
        o.backend = "vulkan";
        kiln::Context ctx(model, o);
        ctx.decode(std::vector<int32_t>{1});
        const auto be = model.impl()->vulkan_backends.begin()->second.lock();
        const kiln::vk::ContextStats& st = *kiln::backend::vulkan_stats(*be->backend);
        const uint64_t d0 = st.dispatches;
        ctx.decode(std::vector<int32_t>{2});
        auto variants = [&](const char* a, const char* b) {
            return kiln::backend::vulkan_pipeline_variants(*be->backend, a) +
                   kiln::backend::vulkan_pipeline_variants(*be->backend, b);
        };
        return Step{st.dispatches - d0, variants("matmul_vec_dot", "matmul_vec_dot_subgroup"),
                    variants("moe_matmul_dot", "moe_matmul_dot_subgroup")};
    };
    const Step off = step("0"), on = step("1");
    std::printf("[ vulkan    ] %-24s decode step: %llu dispatches on the float path, %llu with integer dots (%llu dense "
                "and %llu grouped of %llu matmuls)\n",
                name.c_str(), static_cast<unsigned long long>(off.dispatches), static_cast<unsigned long long>(on.dispatches),
                static_cast<unsigned long long>(dense_dot), static_cast<unsigned long long>(grouped_dot),
                static_cast<unsigned long long>(matmuls));
    EXPECT_GT(dense_dot + grouped_dot, 0u);
    EXPECT_EQ(on.dispatches, off.dispatches);
    EXPECT_EQ(off.dense_variants + off.grouped_variants, 0u);
    EXPECT_EQ(on.dense_variants > 0, dense_dot > 0);
    EXPECT_EQ(on.grouped_variants > 0, grouped_dot > 0);
}
INSTANTIATE_TEST_SUITE_P(Models, VulkanIntegerDotDecode,
                         // q4_k_m holds Q4_K and Q6_K weights; GLM-4.7-Flash's MoE and MLA cover deepseek2.
                         ::testing::Values("llama-tiny.q4_k_m", "llama-tiny.q4_0", "gpt-oss-tiny.q8_0",
                                           "glm4.7-flash-tiny.q8_0"),
                         [](const auto& info) { return ref::test_name(info.param); });

class VulkanQuantizedCacheMatchesCpu : public ::testing::TestWithParam<std::tuple<std::string, kiln::KvType>> {};
TEST_P(VulkanQuantizedCacheMatchesCpu, SameLogits) {
    KILN_REQUIRE_VULKAN();
    KILN_REQUIRE_SHARED("models");
    const auto& [name, kv] = GetParam();
    const fs::path dir = kiln::test::shared_dir() / "models";
    const ref::Reference r = ref::load(dir / "reference" / (name + ".json"));
    const kiln::Model model = kiln::Model::load((dir / (name + ".gguf")).string());
    auto run = [&](const char* backend, ref::Mode mode) {
        kiln::ContextOptions o;
        o.n_ctx = static_cast<int64_t>(r.tokens.size());
        o.n_threads = 2;
        o.kv_type_k = o.kv_type_v = kv;
        o.backend = backend;
        if (mode == ref::Mode::SmallBatches) o.n_batch = 8;  // rings for the sliding-window layers
        kiln::Context ctx(model, o);
        EXPECT_STREQ(ctx.backend_name(), backend);
        return ref::run_batch(ctx, r.tokens);
    };
    for (const ref::Mode mode : {ref::Mode::Batch, ref::Mode::SmallBatches}) {
        const auto cpu = run("cpu", mode), gpu = run("vulkan", mode);
        ASSERT_EQ(cpu.size(), gpu.size());
        double max_ref = 0.0, max_d = 0.0;
        for (size_t p = 0; p < cpu.size(); ++p)
            for (size_t i = 0; i < cpu[p].size(); ++i) {
                ASSERT_TRUE(std::isfinite(gpu[p][i])) << "position " << p;
                max_ref = std::max(max_ref, std::fabs(static_cast<double>(cpu[p][i])));
                max_d = std::max(max_d, std::fabs(static_cast<double>(gpu[p][i]) - cpu[p][i]));
            }
        std::printf("[ vulkan    ] %-24s kv %-4s %s: max|vulkan - cpu| = %.4g (%.2e of max|cpu|, bound 3e-3)\n",
                    name.c_str(), kiln::kv_type_name(kv), mode == ref::Mode::Batch ? "one batch " : "batches of 8",
                    max_d, max_d / max_ref);
        EXPECT_LE(max_d, 3e-3 * max_ref) << name << " " << kiln::kv_type_name(kv);
    }
}
INSTANTIATE_TEST_SUITE_P(Models, VulkanQuantizedCacheMatchesCpu,
                         ::testing::Combine(::testing::Values("llama-tiny.f32", "gemma3-tiny.f32", "gpt-oss-tiny.f32",
                                                              "glm4.7-flash-tiny.f32"),
                                            ::testing::Values(kiln::KvType::Q8_0, kiln::KvType::Q4_0)),
                         [](const auto& info) {
                             return ref::test_name(std::get<0>(info.param)) + "_" + kiln::kv_type_name(std::get<1>(info.param));
                         });

// Vulkan against the CPU on a synthetic llama (no ../shared needed): one batch, uneven chunks, and
// token by token, all logits.
TEST(VulkanModel, MatchesCpuOnSyntheticModel) {
    KILN_REQUIRE_VULKAN();
    // F32 weights: only accumulation order and the f16 KV cache differ. Q8_0: both round the
    // activations to 8-bit codes per 32 as llama.cpp does (the CPU's decode path and Vulkan's
    // quantize_x); the CPU's prefill may keep them float, so the bound allows that effect's size.
    for (const auto& [type, tied, rel] : {std::tuple{kiln::TensorType::F32, false, 1e-3},
                                          std::tuple{kiln::TensorType::Q8_0, true, 2e-2}}) {
        SCOPED_TRACE(std::string(kiln::type_name(type)) + (tied ? " tied output" : " separate output"));
        kiln::SyntheticLlama s;
        s.type = type;
        s.tied_output = tied;
        const std::string path = kiln::test::temp_path(tied ? "vk-synth-tied.gguf" : "vk-synth.gguf").string();
        kiln::write_synthetic_llama(path, s);
        const kiln::Model model = kiln::Model::load(path);
        std::vector<int32_t> tokens;
        for (int i = 0; i < 19; ++i) tokens.push_back(1 + (i * 37) % static_cast<int>(model.info().n_vocab - 1));

        kiln::ContextOptions co;
        co.n_ctx = 32;
        co.n_threads = 2;
        kiln::Context cpu(model, co);
        const auto want = ref::run_batch(cpu, tokens);
        co.backend = "vulkan";
        co.n_batch = 8;  // chunks of 8, 8, 3
        kiln::Context vk(model, co);
        const auto got_batch = ref::run_batch(vk, tokens);
        const auto got_step = ref::run_token_by_token(vk, tokens);
        // Only the last row asked for (the graph's rows op): the same logits as row n-1.
        vk.clear();
        vk.decode(tokens);
        ASSERT_EQ(vk.n_logits(), 1);
        const auto last = vk.logits();
        double d_last = 0;
        for (size_t i = 0; i < last.size(); ++i)
            d_last = std::max(d_last, static_cast<double>(std::abs(last[i] - got_batch.back()[i])));
        EXPECT_LE(d_last, 1e-4 * std::abs(static_cast<double>(got_batch.back()[0])) + 1e-4);
        double max_ref = 0, d_batch = 0, d_step = 0;
        for (size_t p = 0; p < tokens.size(); ++p)
            for (size_t i = 0; i < want[p].size(); ++i) {
                max_ref = std::max(max_ref, static_cast<double>(std::abs(want[p][i])));
                d_batch = std::max(d_batch, static_cast<double>(std::abs(got_batch[p][i] - want[p][i])));
                d_step = std::max(d_step, static_cast<double>(std::abs(got_step[p][i] - want[p][i])));
            }
        std::printf("[ vulkan    ] synthetic %s %s: vs CPU max|d| batch %.3g, token by token %.3g (max|logit| %.3g, "
                    "bound %.3g)\n",
                    kiln::type_name(type), tied ? "tied" : "untied", d_batch, d_step, max_ref, rel * max_ref);
        EXPECT_GT(max_ref, 0.0);
        EXPECT_LE(d_batch, rel * max_ref);
        EXPECT_LE(d_step, rel * max_ref);
    }
}

TEST(VulkanModel, KilnRunTellsTheStory) {
    KILN_REQUIRE_VULKAN();
    kiln::SyntheticLlama s;
    s.story = true;
    s.type = kiln::TensorType::Q8_0;
    const std::string path = kiln::test::temp_path("vk-story-" + std::to_string(::getpid()) + ".gguf").string();
    kiln::write_synthetic_llama(path, s);
    auto r = kiln::test::run_kiln(
        {"run", "-m", path, "-p", "the kiln", "-n", "12", "--temp", "0", "-q", "--backend", "vulkan"});
    ASSERT_EQ(r.code, 0) << r.err;
    ASSERT_EQ(r.out.rfind("the kiln was", 0), 0u) << r.out;
    // The story's chain (tests/cli_run_test.cpp): every word is followed by one of its successors.
    const std::map<std::string, std::set<std::string>> next = {
        {"once", {"upon"}},     {"upon", {"a"}},       {"a", {"time", "kiln", "pot"}},
        {"time", {"there"}},    {"there", {"was"}},    {"was", {"a", "hot", "cool"}},
        {"kiln", {"was"}},      {"pot", {"was"}},      {"hot", {"and", "."}},
        {"cool", {"and", "."}}, {"and", {"the"}},      {"the", {"clay", "fire", "glaze", "kiln", "pot"}},
        {"clay", {"was"}},      {"fire", {"was"}},     {"glaze", {"was"}},
        {".", {"the", "once"}},
    };
    std::string spaced;
    for (char c : r.out) spaced += c == '.' ? std::string(" . ") : std::string(1, c);
    std::istringstream in(spaced);
    std::vector<std::string> w;
    for (std::string x; in >> x;) w.push_back(x);
    ASSERT_GE(w.size(), 10u) << r.out;
    for (size_t i = 0; i + 1 < w.size(); ++i) {
        const auto it = next.find(w[i]);
        ASSERT_NE(it, next.end()) << "'" << w[i] << "' is not a story word in: " << r.out;
        EXPECT_TRUE(it->second.count(w[i + 1])) << "'" << w[i] << "' -> '" << w[i + 1] << "' in: " << r.out;
    }
    // kiln logits --backend vulkan prints the same JSON shape as the CPU.
    auto l = kiln::test::run_kiln({"logits", "-m", path, "--tokens", "1,2,3", "--backend", "vulkan"});
    ASSERT_EQ(l.code, 0) << l.err;
    const auto j = nlohmann::json::parse(l.out);
    EXPECT_EQ(j.at("logits").size(), 3u);
}

// Decoding token by token on the executor of the decode shape: exactly one submit per token and no
// device memory taken after the first token (weights, workspace, KV cache, frequency tables and
// the staging ring all exist by then).
TEST(VulkanModel, DecodeIsOneSubmitAndNoNewBuffers) {
    KILN_REQUIRE_VULKAN();
    kiln::SyntheticLlama s;
    s.type = kiln::TensorType::Q4_K;
    s.n_embd = 256;
    s.n_ff = 512;
    const std::string path = kiln::test::temp_path("vk-decode-" + std::to_string(::getpid()) + ".gguf").string();
    kiln::write_synthetic_llama(path, s);
    const kiln::Model model = kiln::Model::load(path);
    const auto& arch = *model.impl()->arch;
    kiln::backend::VulkanOptions vo;
    auto be = kiln::backend::make_vulkan_backend(vo);
    ASSERT_TRUE(be);
    const kiln::vk::ContextStats* st = kiln::backend::vulkan_stats(*be);
    ASSERT_NE(st, nullptr);
    EXPECT_EQ(kiln::backend::vulkan_stats(*kiln::backend::make_cpu_backend(1)), nullptr);

    kiln::backend::KvLayout layout;
    layout.n_ctx = 16;
    const auto& hp = arch.hparams();
    for (int64_t il = 0; il < hp.n_layer; ++il)
        layout.layers.push_back({static_cast<int>(hp.n_head_kv), static_cast<int>(hp.head_dim_k), static_cast<int>(hp.head_dim_v)});
    auto kv = be->alloc_kv(layout);
    auto exe = be->compile(arch.build({1, 1}));
    const auto& g = exe->graph();
    const auto tok = g.find(kiln::model::kInputTokens), pos = g.find(kiln::model::kInputPositions);
    const auto logits = g.find(kiln::model::kOutputLogits);
    auto step = [&](int32_t t, int32_t p) {
        exe->set_input(tok, &t, 4);
        exe->set_input(pos, &p, 4);
        kiln::backend::RunArgs a;
        a.kv = kv.get();
        a.kv_base = p;
        exe->run(a);
        return exe->output(logits)[0];
    };
    step(1, 0);
    const uint64_t submits = st->submits, buffers = st->buffers, pipelines = st->pipelines;
    for (int32_t p = 1; p < 9; ++p) EXPECT_TRUE(std::isfinite(step(p + 3, p)));
    std::printf("[ vulkan    ] decode: %llu submits, %llu new buffers, %llu new pipelines for 8 tokens\n",
                static_cast<unsigned long long>(st->submits - submits),
                static_cast<unsigned long long>(st->buffers - buffers),
                static_cast<unsigned long long>(st->pipelines - pipelines));
    EXPECT_EQ(st->submits - submits, 8u);
    EXPECT_EQ(st->buffers, buffers);
    EXPECT_EQ(st->pipelines, pipelines);
}

// The contexts of one model on one device share one backend: the second context uploads no
// weights and compiles nothing; it adds its page table, and its KV pages as its tokens arrive
// (the backend's pool of pages grows by one page of every layer), and no other device memory.
// The backend goes with the last context.
TEST(VulkanShared, ContextsShareOneCopyOfTheWeights) {
    KILN_REQUIRE_VULKAN();
    kiln::SyntheticLlama s;
    s.type = kiln::TensorType::Q8_0;
    s.n_layer = 3;
    const std::string path = kiln::test::temp_path("vk-shared-" + std::to_string(::getpid()) + ".gguf").string();
    kiln::write_synthetic_llama(path, s);
    const kiln::Model model = kiln::Model::load(path);
    const kiln::Model::Impl& m = *model.impl();
    kiln::ContextOptions o;
    o.n_ctx = 64;
    o.backend = "vulkan";
    int progress_calls = 0;
    o.progress = [&](float) { ++progress_calls; };
    auto a = std::make_unique<kiln::Context>(model, o);
    ASSERT_EQ(m.vulkan_backends.size(), 1u);
    const std::shared_ptr<kiln::runtime::SharedBackend> be = m.vulkan_backends.begin()->second.lock();
    ASSERT_TRUE(be);
    const kiln::backend::Backend& b = *be->backend;
    const kiln::vk::ContextStats& st = *kiln::backend::vulkan_stats(b);
    const uint64_t weights = kiln::backend::vulkan_weight_bytes(b);
    EXPECT_EQ(weights, model.info().weight_bytes);  // every weight, once
    EXPECT_GT(progress_calls, 0);
    const uint64_t used1 = kiln::backend::vulkan_device_bytes(b), buffers1 = st.buffers, pipelines1 = st.pipelines;

    progress_calls = 0;
    auto c = std::make_unique<kiln::Context>(model, o);
    const uint64_t used2 = kiln::backend::vulkan_device_bytes(b);
    std::printf("[ vulkan    ] weights %llu bytes; the second context took %llu bytes of device memory (its KV cache: "
                "%zu) in %llu buffers\n",
                static_cast<unsigned long long>(weights), static_cast<unsigned long long>(used2 - used1), c->kv_bytes(),
                static_cast<unsigned long long>(st.buffers - buffers1));
    EXPECT_EQ(m.vulkan_backends.begin()->second.lock(), be);
    EXPECT_EQ(kiln::backend::vulkan_weight_bytes(b), weights);  // nothing uploaded again
    EXPECT_EQ(progress_calls, 0);
    EXPECT_EQ(st.buffers - buffers1, 1u);  // its page table, nothing else
    EXPECT_EQ(st.pipelines, pipelines1);
    EXPECT_EQ(c->kv_bytes_held(), 0u);
    EXPECT_LE(used2 - used1, 4096u);

    // Both decode on it (one after the other, each on its own cache) and agree. Each takes one
    // page (64 positions: one page of 64): the pool holds 2, K and V per layer.
    const std::vector<int32_t> prompt = {1, 7, 11, 19, 23};
    a->decode(prompt);
    c->decode(std::span<const int32_t>(prompt.data(), 2));
    c->decode(std::span<const int32_t>(prompt.data() + 2, 3));
    const auto la = a->logits(), lc = c->logits();
    ASSERT_EQ(la.size(), lc.size());
    for (size_t i = 0; i < la.size(); ++i) ASSERT_EQ(la[i], lc[i]) << i;
    EXPECT_EQ(c->kv_bytes_held(), c->kv_bytes());
    EXPECT_EQ(kiln::backend::vulkan_kv_pool_bytes(b), 2 * c->kv_bytes());
    EXPECT_EQ(kiln::backend::vulkan_kv_pool_held_bytes(b), 2 * c->kv_bytes());
    const uint64_t used3 = kiln::backend::vulkan_device_bytes(b);

    // Freeing a context gives its pages back (the pool shrinks to c's page, each tensor's 16 bytes
    // of slack rounded up to the allocation granularity); the last one takes the backend with it.
    const size_t kv_a = a->kv_bytes();
    a.reset();
    EXPECT_EQ(kiln::backend::vulkan_kv_pool_bytes(b), c->kv_bytes());
    EXPECT_GE(used3 - kiln::backend::vulkan_device_bytes(b), kv_a);
    EXPECT_LE(used3 - kiln::backend::vulkan_device_bytes(b), kv_a + 2u * static_cast<uint64_t>(s.n_layer) * 4096u + 4096u);
    EXPECT_EQ(be.use_count(), 2);  // this test's and c's
    // c reads its page where the pool moved it.
    c->decode(std::span<const int32_t>(prompt.data(), 1));
    a = std::make_unique<kiln::Context>(model, o);
    a->decode(prompt);
    a->decode(std::span<const int32_t>(prompt.data(), 1));
    const auto la2 = a->logits(), lc2 = c->logits();
    for (size_t i = 0; i < la2.size(); ++i) ASSERT_EQ(la2[i], lc2[i]) << i;
}

// Contexts of one shared backend created and driven from two threads at once take turns on it
// (its lock): each gets the logits it gets alone.
TEST(VulkanShared, ContextsInTwoThreadsTakeTurns) {
    KILN_REQUIRE_VULKAN();
    kiln::SyntheticLlama s;
    s.type = kiln::TensorType::Q8_0;
    const std::string path = kiln::test::temp_path("vk-threads-" + std::to_string(::getpid()) + ".gguf").string();
    kiln::write_synthetic_llama(path, s);
    const kiln::Model model = kiln::Model::load(path);
    kiln::ContextOptions o;
    o.n_ctx = 64;
    o.n_batch = 4;  // prompts in chunks: several passes, and shapes compiled while the other thread runs
    o.backend = "vulkan";
    auto generate = [&](int seed) {
        kiln::Context c(model, o);
        std::vector<int32_t> prompt;
        for (int i = 0; i < 11; ++i) prompt.push_back(1 + (seed * 17 + i * 7) % 200);
        c.decode(prompt);
        std::vector<float> out(c.logits().begin(), c.logits().end());
        for (int i = 0; i < 12; ++i) {
            const int32_t t = static_cast<int32_t>(1 + (seed + i * 13) % 200);
            c.decode(std::span<const int32_t>(&t, 1));
            out.insert(out.end(), c.logits().begin(), c.logits().end());
        }
        return out;
    };
    const std::vector<float> want0 = generate(0), want1 = generate(1);
    std::vector<float> got0, got1;
    std::thread a([&] { got0 = generate(0); });
    std::thread b([&] { got1 = generate(1); });
    a.join();
    b.join();
    EXPECT_EQ(got0, want0);
    EXPECT_EQ(got1, want1);
    EXPECT_NE(want0, want1);
}

// A batch of several sequences through the per-sequence scratch (the path of devices whose
// storage-buffer alignment the rows of tiny heads miss) equals the per-token views, and both equal
// each sequence decoded alone: on the executor, two caches of different lengths.
TEST(VulkanModel, SequenceBatchThroughTheScratchEqualsViews) {
    KILN_REQUIRE_VULKAN();
    kiln::SyntheticLlama s;
    s.type = kiln::TensorType::F32;
    const std::string path = kiln::test::temp_path("vk-seq-" + std::to_string(::getpid()) + ".gguf").string();
    kiln::write_synthetic_llama(path, s);
    const kiln::Model model = kiln::Model::load(path);
    const auto& arch = *model.impl()->arch;
    const auto& hp = arch.hparams();
    kiln::backend::KvLayout layout;
    layout.n_ctx = 32;
    for (int64_t il = 0; il < hp.n_layer; ++il)
        layout.layers.push_back({static_cast<int>(hp.n_head_kv), static_cast<int>(hp.head_dim_k), static_cast<int>(hp.head_dim_v)});
    const std::vector<std::vector<int32_t>> prompts = {{3, 5, 7}, {9, 4, 6, 8, 10, 12, 2}};
    auto run = [&](bool copies) {
        kiln::backend::VulkanOptions vo;
        vo.seq_row_copies = copies;
        auto be = kiln::backend::make_vulkan_backend(vo);
        auto one = be->compile(arch.build({1, 1}));
        auto batch = be->compile(arch.build({2, 2}));
        const auto& g1 = one->graph();
        const auto& g2 = batch->graph();
        std::vector<std::unique_ptr<kiln::backend::KvBuffers>> kv;
        std::vector<float> out;  // per step: the batch's two rows, then each sequence alone
        uint64_t batch_copies = 0;  // buffer copies recorded by the batch's runs
        auto step1 = [&](kiln::backend::KvBuffers* c, int32_t tok, int32_t pos) {
            one->set_input(g1.find(kiln::model::kInputTokens), &tok, 4);
            one->set_input(g1.find(kiln::model::kInputPositions), &pos, 4);
            kiln::backend::RunArgs a;
            a.kv = c;
            a.kv_base = pos;
            one->run(a);
            return one->output(g1.find(kiln::model::kOutputLogits));
        };
        for (int i = 0; i < 4; ++i) kv.push_back(be->alloc_kv(layout));  // 0, 1: batched; 2, 3: alone
        for (size_t p = 0; p < 2; ++p)
            for (size_t t = 0; t < prompts[p].size(); ++t) {
                step1(kv[p].get(), prompts[p][t], static_cast<int32_t>(t));
                step1(kv[p + 2].get(), prompts[p][t], static_cast<int32_t>(t));
            }
        const int64_t n_vocab = hp.n_vocab;
        for (int step = 0; step < 3; ++step) {
            const int32_t toks[2] = {static_cast<int32_t>(20 + step), static_cast<int32_t>(30 + step)};
            const int32_t pos32[2] = {static_cast<int32_t>(prompts[0].size()) + step, static_cast<int32_t>(prompts[1].size()) + step};
            const int64_t pos[2] = {pos32[0], pos32[1]};
            kiln::backend::KvBuffers* seq[2] = {kv[0].get(), kv[1].get()};
            const uint64_t copies0 = kiln::backend::vulkan_stats(*be)->copies;
            batch->set_input(g2.find(kiln::model::kInputTokens), toks, 8);
            batch->set_input(g2.find(kiln::model::kInputPositions), pos32, 8);
            kiln::backend::RunArgs a;
            a.seq_kv = seq;
            a.seq_pos = pos;
            batch->run(a);
            batch_copies += kiln::backend::vulkan_stats(*be)->copies - copies0;
            const float* rows = batch->output(g2.find(kiln::model::kOutputLogits));
            out.insert(out.end(), rows, rows + 2 * n_vocab);
            for (int i = 0; i < 2; ++i) {
                const float* alone = step1(kv[static_cast<size_t>(i) + 2].get(), toks[i], pos32[i]);
                out.insert(out.end(), alone, alone + n_vocab);
            }
        }
        // Refused: a cache of another device's backend (here: another backend), a position past the cache.
        auto other = kiln::backend::make_vulkan_backend({});
        auto foreign = other->alloc_kv(layout);
        kiln::backend::KvBuffers* bad[2] = {kv[0].get(), foreign.get()};
        const int64_t pos[2] = {10, 10}, past[2] = {10, 32};
        kiln::backend::RunArgs a;
        a.seq_kv = bad;
        a.seq_pos = pos;
        EXPECT_THROW(batch->run(a), kiln::Error);
        kiln::backend::KvBuffers* good[2] = {kv[0].get(), kv[1].get()};
        a.seq_kv = std::span<kiln::backend::KvBuffers* const>(good, 1);
        a.seq_pos = std::span<const int64_t>(pos, 1);
        try {
            batch->run(a);
            ADD_FAILURE() << "no error for 1 sequence in a batch of 2";
        } catch (const kiln::Error& e) {
            EXPECT_NE(std::string(e.what()).find("1 sequences (1 positions) given for a batch of 2"), std::string::npos)
                << e.what();
        }
        a.seq_kv = good;
        a.seq_pos = past;
        try {
            batch->run(a);
            ADD_FAILURE() << "no error for a position past the cache";
        } catch (const kiln::Error& e) {
            EXPECT_NE(std::string(e.what()).find("sequence 1"), std::string::npos) << e.what();
        }
        return std::make_pair(out, batch_copies);
    };
    const auto [views, view_copies] = run(false);
    const auto [copies, copy_copies] = run(true);
    // Per step, layer and sequence: K and V in, q in, out back.
    EXPECT_EQ(copy_copies - view_copies, 3u * 2u * 4u * static_cast<uint64_t>(hp.n_layer));
    const size_t n_vocab = static_cast<size_t>(hp.n_vocab);
    ASSERT_EQ(views.size(), 3 * 4 * n_vocab);
    EXPECT_EQ(views, copies);
    for (size_t step = 0; step < 3; ++step)
        for (size_t i = 0; i < 2; ++i)
            for (size_t j = 0; j < n_vocab; ++j)
                ASSERT_EQ(views[(step * 4 + i) * n_vocab + j], views[(step * 4 + 2 + i) * n_vocab + j])
                    << "step " << step << " sequence " << i << " logit " << j;
}

// Graphs the shaders cannot run are refused before anything runs, naming the op and its shapes
// (no device needed: this is the check compile() makes first).
TEST(VulkanModel, UnsupportedOpsAreNamed) {
    auto error_of = [](const kiln::graph::Graph& g) {
        try {
            kiln::backend::vulkan_check_graph(g, kiln::KvType::F16, kiln::KvType::F16);
        } catch (const kiln::Error& e) {
            return std::string(e.what());
        }
        return std::string();
    };
    {
        kiln::graph::Graph g;
        const auto q = g.input("q", kiln::graph::DType::F32, 4 * 1024, 1);
        kiln::graph::AttentionParams p;
        p.n_head = 4;
        p.n_head_kv = 4;
        p.head_dim_k = p.head_dim_v = 1024;
        g.attention(q, p);
        const std::string msg = error_of(g);
        EXPECT_NE(msg.find("vulkan: op 'attention' ([4096, 1])"), std::string::npos) << msg;
        EXPECT_NE(msg.find("1024"), std::string::npos) << msg;
        EXPECT_NE(msg.find("--backend cpu"), std::string::npos) << msg;
    }
    {
        static const std::vector<uint8_t> bytes(64 * 1024);
        kiln::graph::Graph g;
        const auto w = g.weight("blk.0.ffn_up.weight", kiln::TensorType::Q8_K, bytes.data(), 256, 2);
        g.matmul(w, g.input("x", kiln::graph::DType::F32, 256, 1));
        const std::string msg = error_of(g);
        EXPECT_NE(msg.find("op 'matmul'"), std::string::npos) << msg;
        EXPECT_NE(msg.find("blk.0.ffn_up.weight"), std::string::npos) << msg;
    }
    {
        kiln::graph::Graph g;
        const auto k = g.input("k", kiln::graph::DType::F32, 64, 1);
        kiln::graph::AttentionParams p;
        p.n_head = p.n_head_kv = 1;
        p.head_dim_k = p.head_dim_v = 64;
        g.store_kv(k, k, p);
        const std::string msg = [&] {
            try {
                kiln::backend::vulkan_check_graph(g, kiln::KvType::F16, kiln::KvType::F32);
            } catch (const kiln::Error& e) {
                return std::string(e.what());
            }
            return std::string();
        }();
        EXPECT_NE(msg.find("op 'store_kv'"), std::string::npos) << msg;
        EXPECT_NE(msg.find("f32"), std::string::npos) << msg;
    }
    {
        // Group-limited routing over more groups than top_k.comp holds.
        kiln::graph::Graph g;
        kiln::graph::TopKParams p;
        p.k = 8;
        p.n_group = 128;
        p.n_group_used = 4;
        g.top_k(g.input("scores", kiln::graph::DType::F32, 1024, 1), kiln::graph::kNone, p);
        const std::string msg = error_of(g);
        EXPECT_NE(msg.find("vulkan: op 'top_k' ([1024, 1])"), std::string::npos) << msg;
        EXPECT_NE(msg.find("128 expert groups"), std::string::npos) << msg;
    }
    {
        // More experts than moe_route.comp lists.
        static const std::vector<uint8_t> bytes(8 * 4 * 2048 * 4);
        kiln::graph::Graph g;
        const auto w = g.weight3("blk.0.ffn_up_exps.weight", kiln::TensorType::F32, bytes.data(), 8, 4, 2048);
        g.moe_matmul(w, g.input("x", kiln::graph::DType::F32, 8, 1), g.input("ids", kiln::graph::DType::I32, 4, 1));
        const std::string msg = error_of(g);
        EXPECT_NE(msg.find("op 'moe_matmul'"), std::string::npos) << msg;
        EXPECT_NE(msg.find("2048 experts"), std::string::npos) << msg;
    }
    {
        // K rows past the attention shader's 576.
        kiln::graph::Graph g;
        kiln::graph::AttentionParams p;
        p.n_head = 16;
        p.n_head_kv = 1;
        p.head_dim_k = 640;
        p.head_dim_v = 512;
        p.v_in_k = true;
        g.attention(g.input("q", kiln::graph::DType::F32, 16 * 640, 1), p);
        const std::string msg = error_of(g);
        EXPECT_NE(msg.find("op 'attention'"), std::string::npos) << msg;
        EXPECT_NE(msg.find("K 640 / V 512"), std::string::npos) << msg;
    }
}

}  // namespace
