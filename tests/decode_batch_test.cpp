// kiln::decode_batch (continuous batching): one decode step of several sequences in one forward
// pass gives each context the logits it would get from decoding its token alone, for every
// architecture (GQA, sliding-window rings, sinks, MoE, MLA), with sequences of different lengths,
// on the CPU and on Vulkan (where the contexts share one backend: StoreKV / Attention run per
// sequence inside the batch's one submit).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <string>
#include <vector>

#include "backend/vulkan/context.h"
#include "backend/vulkan/graph_executor.h"
#include "kiln/kiln.h"
#include "model/model_impl.h"
#include "runtime/shared_backend.h"
#include "model/synthetic.h"
#include "support/reference.h"
#include "support/shared.h"
#include "support/vulkan.h"

namespace {

// The device counters of the model's (one) shared Vulkan backend; nullptr when it has none.
const kiln::vk::ContextStats* vulkan_stats_of(const kiln::Model& model) {
    const kiln::Model::Impl& m = *model.impl();
    std::lock_guard lk(m.backends_mu);
    if (m.vulkan_backends.size() != 1) return nullptr;
    const auto be = m.vulkan_backends.begin()->second.lock();
    return be ? kiln::backend::vulkan_stats(*be->backend) : nullptr;
}

// Compares the batched contexts with contexts that decode alone, step by step.
float max_rel_diff_over_steps(const kiln::Model& model, const std::vector<std::vector<int32_t>>& prompts, int steps,
                              int n_threads, const std::string& backend = "cpu") {
    kiln::ContextOptions o;
    o.n_ctx = 96;
    o.n_threads = n_threads;
    o.backend = backend;
    o.n_batch = 8;  // prompts go in several chunks: sliding-window rings wrap
    std::vector<kiln::Context> batched, alone;
    for (const auto& p : prompts) {
        batched.emplace_back(model, o);
        alone.emplace_back(model, o);
        batched.back().decode(p);
        alone.back().decode(p);
    }
    std::vector<kiln::Context*> ptrs;
    for (auto& c : batched) ptrs.push_back(&c);
    const int64_t n_vocab = batched.front().n_vocab();
    float worst = 0.0f;
    for (int s = 0; s < steps; ++s) {
        std::vector<int32_t> next;
        for (size_t i = 0; i < prompts.size(); ++i)
            next.push_back(static_cast<int32_t>((7 + 13 * s + 29 * static_cast<int>(i)) % std::min<int64_t>(n_vocab, 200)));
        // On Vulkan the step is one forward pass: one submit on the shared backend.
        const kiln::vk::ContextStats* st = backend == "vulkan" ? vulkan_stats_of(model) : nullptr;
        if (backend == "vulkan") {
            EXPECT_NE(st, nullptr) << "the contexts do not share one Vulkan backend";
        }
        const uint64_t submits = st ? st->submits : 0;
        kiln::decode_batch(ptrs, next);
        if (st) {
            EXPECT_EQ(st->submits - submits, 1u) << "decode_batch did not run as one batch";
        }
        for (size_t i = 0; i < prompts.size(); ++i) {
            alone[i].decode(std::span<const int32_t>(&next[i], 1));
            EXPECT_EQ(batched[i].n_past(), alone[i].n_past());
            EXPECT_EQ(batched[i].n_logits(), 1);
            const auto got = batched[i].logits();
            const auto want = alone[i].logits();
            EXPECT_EQ(got.size(), want.size());
            float scale = 0.0f;
            for (float w : want) scale = std::max(scale, std::abs(w));
            for (size_t j = 0; j < got.size(); ++j) {
                const float d = std::abs(got[j] - want[j]) / std::max(scale, 1e-6f);
                if (!std::isfinite(d)) return INFINITY;  // NaN would slip through std::max
                worst = std::max(worst, d);
            }
        }
    }
    return worst;
}

std::vector<std::vector<int32_t>> prompts_of(std::initializer_list<int> lengths) {
    std::vector<std::vector<int32_t>> out;
    int k = 0;
    for (int len : lengths) {
        std::vector<int32_t> p;
        for (int i = 0; i < len; ++i) p.push_back(3 + (i * 11 + k * 5) % 90);
        out.push_back(p);
        ++k;
    }
    return out;
}

class DecodeBatchShared : public ::testing::TestWithParam<std::string> {};

TEST_P(DecodeBatchShared, EqualsDecodingAlone) {
    KILN_REQUIRE_SHARED("models");
    const kiln::Model model = kiln::Model::load((kiln::test::shared_dir() / "models" / GetParam()).string());
    // Lengths below and above gemma3's / gpt-oss's windows; the longest wraps the rings.
    const float d1 = max_rel_diff_over_steps(model, prompts_of({3, 21, 40}), 6, 1);
    const float d2 = max_rel_diff_over_steps(model, prompts_of({1, 9}), 4, 2);
    std::printf("  %s: max |batched - alone| / max|logit| = %.2e (1 thread), %.2e (2 threads)\n", GetParam().c_str(), d1, d2);
    EXPECT_LT(d1, 1e-4f);
    EXPECT_LT(d2, 1e-4f);
}

// One file of every architecture (dense, sliding rings, MoE, MLA), for the CPU and Vulkan cases.
const std::string kBatchModels[] = {"llama-tiny.q8_0.gguf",          "qwen2-tiny.q4_k_m.gguf",
                                    "gemma3-tiny.f32.gguf",          "gpt-oss-tiny.mxfp4_moe.gguf",
                                    "deepseek2-lite-tiny.q8_0.gguf", "glm4.7-flash-tiny.f32.gguf"};
std::string batch_model_name(const ::testing::TestParamInfo<std::string>& info) {
    return kiln::test::reference::test_name(info.param.substr(0, info.param.find(".gguf")));
}

INSTANTIATE_TEST_SUITE_P(Models, DecodeBatchShared,
                         ::testing::ValuesIn(kBatchModels), batch_model_name);

// Vulkan: the batched contexts and the ones decoding alone all share the model's one backend. Each
// token's rows go through the same shaders as alone (the matrix-vector kernel computes every
// column of a batch of <= 8 the same way, attention runs per sequence with one query token as
// alone), so the logits are equal bit for bit.
class DecodeBatchVulkan : public ::testing::TestWithParam<std::string> {};

TEST_P(DecodeBatchVulkan, EqualsDecodingAlone) {
    KILN_REQUIRE_SHARED("models");
    KILN_REQUIRE_VULKAN();
    const kiln::Model model = kiln::Model::load((kiln::test::shared_dir() / "models" / GetParam()).string());
    const float d1 = max_rel_diff_over_steps(model, prompts_of({3, 21, 40}), 6, 1, "vulkan");
    const float d2 = max_rel_diff_over_steps(model, prompts_of({1, 9}), 4, 1, "vulkan");
    std::printf("  %s on Vulkan: max |batched - alone| / max|logit| = %.2e (3 sequences), %.2e (2)\n", GetParam().c_str(),
                d1, d2);
    EXPECT_EQ(d1, 0.0f);
    EXPECT_EQ(d2, 0.0f);
}

INSTANTIATE_TEST_SUITE_P(Models, DecodeBatchVulkan,
                         ::testing::ValuesIn(kBatchModels), batch_model_name);

TEST(DecodeBatch, RefusesBadBatchesWithoutAdvancing) {
    kiln::SyntheticLlama s;
    s.n_ctx = 8;
    const std::string path = kiln::test::temp_path("decode_batch-" + std::to_string(::getpid()) + ".gguf").string();
    kiln::write_synthetic_llama(path, s);
    const kiln::Model model = kiln::Model::load(path);
    const kiln::Model other = kiln::Model::load(path);
    kiln::ContextOptions o;
    o.n_ctx = 8;
    o.n_threads = 1;
    kiln::Context a(model, o), b(model, o), c(other, o);
    const std::vector<int32_t> one = {1}, two = {1, 2};
    a.decode(one);
    b.decode(one);

    auto expect_error = [&](std::vector<kiln::Context*> ctxs, const std::vector<int32_t>& toks, const std::string& words) {
        try {
            kiln::decode_batch(ctxs, toks);
            ADD_FAILURE() << "no error for: " << words;
        } catch (const kiln::Error& e) {
            EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
        }
        EXPECT_EQ(a.n_past(), 1);
        EXPECT_EQ(b.n_past(), 1);
    };
    expect_error({}, {}, "no contexts");
    expect_error({&a, &b}, one, "1 tokens for 2 contexts");
    expect_error({&a, &a}, two, "are the same");
    expect_error({&a, &c}, two, "another model");
    expect_error({&a, &b}, {1, 1 << 20}, "outside the vocabulary");

    // Fill b: a batch with a full context is refused whole.
    std::vector<int32_t> fill(7, 3);
    b.decode(fill);
    try {
        kiln::decode_batch(std::vector<kiln::Context*>{&a, &b}, two);
        ADD_FAILURE() << "no error for a full context";
    } catch (const kiln::Error& e) {
        EXPECT_NE(std::string(e.what()).find("context 1 is full"), std::string::npos) << e.what();
    }
    EXPECT_EQ(a.n_past(), 1);
}

}  // namespace
