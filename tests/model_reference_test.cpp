// Logits of the shared reference models (random weights, every quant type) against llama.cpp's,
// with the bounds of /work/shared/models/README.md:
//   f32 / f16 / bf16: max|ours - ref| <= 3e-3 * max|ref|, argmax equal where top2_margin > 1e-2 * max|ref|
//   quantized:        RMS(ours - ref) <= 2 * rms_quantization_error, argmax equal where
//                     top2_margin > 0.1 * max|ref|
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kiln/kiln.h"
#include "support/shared.h"

namespace {

namespace fs = std::filesystem;

fs::path models_dir() { return kiln::test::shared_dir() / "models"; }

struct Reference {
    std::vector<int32_t> tokens;
    std::vector<std::vector<float>> logits;
    std::vector<int> argmax;
    std::vector<double> top2_margin;
    double max_abs_logit = 0;
    double rms_quantization_error = 0;
};

Reference load_reference(const fs::path& p) {
    std::ifstream in(p);
    const nlohmann::json j = nlohmann::json::parse(in);
    Reference r;
    r.tokens = j.at("tokens").get<std::vector<int32_t>>();
    r.logits = j.at("logits").get<std::vector<std::vector<float>>>();
    r.argmax = j.at("argmax").get<std::vector<int>>();
    r.top2_margin = j.at("top2_margin").get<std::vector<double>>();
    r.max_abs_logit = j.at("max_abs_logit").get<double>();
    r.rms_quantization_error = j.at("rms_quantization_error").get<double>();
    return r;
}

bool is_float_file(const std::string& name) {
    return name.ends_with(".f32") || name.ends_with(".f16") || name.ends_with(".bf16");
}

struct Measured {
    double max_abs = 0, rms = 0;
    int argmax_checked = 0, argmax_wrong = 0;
    std::string first_wrong;
};

Measured compare(const Reference& ref, const std::vector<std::vector<float>>& ours, double margin_frac) {
    Measured m;
    double ss = 0;
    size_t n = 0;
    for (size_t p = 0; p < ref.logits.size(); ++p) {
        const auto& r = ref.logits[p];
        const auto& o = ours[p];
        for (size_t i = 0; i < r.size(); ++i) {
            const double d = static_cast<double>(o[i]) - r[i];
            m.max_abs = std::max(m.max_abs, std::abs(d));
            ss += d * d;
            ++n;
        }
        if (ref.top2_margin[p] > margin_frac * ref.max_abs_logit) {
            ++m.argmax_checked;
            const int am = static_cast<int>(std::max_element(o.begin(), o.end()) - o.begin());
            if (am != ref.argmax[p]) {
                if (!m.argmax_wrong)
                    m.first_wrong = fmt::format("position {}: ours {} ref {} (margin {:.4g})", p, am, ref.argmax[p],
                                                ref.top2_margin[p]);
                ++m.argmax_wrong;
            }
        }
    }
    m.rms = std::sqrt(ss / static_cast<double>(std::max<size_t>(n, 1)));
    return m;
}

std::vector<std::vector<float>> run_batch(kiln::Context& ctx, const std::vector<int32_t>& tokens) {
    ctx.clear();
    ctx.decode(tokens, /*all_logits=*/true);
    std::vector<std::vector<float>> out;
    for (size_t i = 0; i < tokens.size(); ++i) {
        const auto row = ctx.logits(static_cast<int64_t>(i));
        out.emplace_back(row.begin(), row.end());
    }
    return out;
}

std::vector<std::vector<float>> run_token_by_token(kiln::Context& ctx, const std::vector<int32_t>& tokens) {
    ctx.clear();
    std::vector<std::vector<float>> out;
    for (const int32_t t : tokens) {
        ctx.decode(std::span<const int32_t>(&t, 1));
        const auto row = ctx.logits();
        out.emplace_back(row.begin(), row.end());
    }
    return out;
}

enum class Mode { Batch, TokenByToken, SmallBatches };
const char* mode_name(Mode m) {
    return m == Mode::Batch ? "one batch" : m == Mode::TokenByToken ? "token by token" : "batches of 7";
}

void check_model(const std::string& name, Mode mode) {
    const fs::path gguf = models_dir() / (name + ".gguf");
    const fs::path json = models_dir() / "reference" / (name + ".json");
    KILN_REQUIRE_SHARED("models");
    if (!fs::exists(gguf) || !fs::exists(json)) GTEST_SKIP() << "SKIPPED: " << gguf << " or its reference is absent";

    const Reference ref = load_reference(json);
    const kiln::Model model = kiln::Model::load(gguf.string());
    ASSERT_EQ(model.info().n_vocab, static_cast<int64_t>(ref.logits.at(0).size()));

    kiln::ContextOptions opts;
    opts.n_ctx = static_cast<int64_t>(ref.tokens.size());
    opts.n_threads = 2;
    if (mode == Mode::SmallBatches) opts.n_batch = 7;
    if (mode == Mode::TokenByToken) opts.n_batch = 1;  // sliding layers then keep a ring of exactly their window
    kiln::Context ctx(model, opts);
    const kiln::KvStats kv = ctx.kv_stats();
    if (kv.n_sliding_layers > 0) {
        // Smaller batches than the prompt: the sliding layers are rings the prompt wraps around.
        if (mode != Mode::Batch) {
            EXPECT_LT(kv.sliding_slots, opts.n_ctx) << ctx.kv_summary();
        }
        EXPECT_EQ(kv.sliding_bytes, static_cast<size_t>(kv.n_sliding_layers * kv.sliding_slots) * kv.sliding_bytes_per_token);
    }
    const auto ours = mode == Mode::TokenByToken ? run_token_by_token(ctx, ref.tokens) : run_batch(ctx, ref.tokens);
    ASSERT_EQ(ours.size(), ref.logits.size());

    const bool float_file = is_float_file(name);
    const Measured m = compare(ref, ours, float_file ? 1e-2 : 0.1);
    const double bound = float_file ? 3e-3 * ref.max_abs_logit : 2.0 * ref.rms_quantization_error;
    const double measured = float_file ? m.max_abs : m.rms;
    const char* what = float_file ? "max|d|" : "rms(d)";

    ::testing::Test::RecordProperty("measured_" + std::string(float_file ? "max_abs" : "rms"), fmt::format("{:.6g}", measured));
    ::testing::Test::RecordProperty("bound", fmt::format("{:.6g}", bound));
    std::printf("[ reference ] %-22s %-14s %s = %.6g (bound %.6g, %.1f%% of it); max|d| %.4g rms %.4g; argmax %d/%d equal\n",
                name.c_str(), mode_name(mode), what, measured, bound, 100.0 * measured / bound, m.max_abs, m.rms,
                m.argmax_checked - m.argmax_wrong, m.argmax_checked);

    EXPECT_LE(measured, bound) << name << " (" << mode_name(mode) << "): " << what << " over all logits";
    EXPECT_EQ(m.argmax_wrong, 0) << name << ": argmax differs at " << m.argmax_wrong << " clear positions; first "
                                 << m.first_wrong;
}

class ReferenceLogits : public ::testing::TestWithParam<std::string> {};

TEST_P(ReferenceLogits, OneBatch) { check_model(GetParam(), Mode::Batch); }

INSTANTIATE_TEST_SUITE_P(Models, ReferenceLogits,
                         ::testing::Values("llama-tiny.f32", "llama-tiny.f16", "llama-tiny.bf16", "llama-tiny.q8_0",
                                           "llama-tiny.q4_0", "llama-tiny.q4_1", "llama-tiny.q5_0", "llama-tiny.q5_1",
                                           "llama-tiny.q2_k", "llama-tiny.q3_k_m", "llama-tiny.q4_k_m",
                                           "llama-tiny.q5_k_m", "llama-tiny.q6_k", "llama-tiny.iq4_nl",
                                           "llama-tiny.iq4_xs", "qwen2-tiny.f32", "qwen2-tiny.q8_0",
                                           "qwen2-tiny.q4_k_m", "gemma3-tiny.f32", "gemma3-tiny.q8_0",
                                           "gemma3-tiny.q4_k_m", "gpt-oss-tiny.f32", "gpt-oss-tiny.q8_0",
                                           "gpt-oss-tiny.mxfp4_moe"),
                         [](const auto& info) {
                             std::string s = info.param;
                             std::replace_if(s.begin(), s.end(), [](char c) { return !std::isalnum(static_cast<unsigned char>(c)); }, '_');
                             return s;
                         });

// The same prompt through the decode path (one token per forward pass) and through uneven chunks.
TEST(ReferenceLogitsIncremental, LlamaF32TokenByToken) { check_model("llama-tiny.f32", Mode::TokenByToken); }
TEST(ReferenceLogitsIncremental, Qwen2F32TokenByToken) { check_model("qwen2-tiny.f32", Mode::TokenByToken); }
TEST(ReferenceLogitsIncremental, LlamaQ4KMTokenByToken) { check_model("llama-tiny.q4_k_m", Mode::TokenByToken); }
TEST(ReferenceLogitsIncremental, LlamaF32BatchesOf7) { check_model("llama-tiny.f32", Mode::SmallBatches); }
TEST(ReferenceLogitsIncremental, Qwen2F32BatchesOf7) { check_model("qwen2-tiny.f32", Mode::SmallBatches); }
// gemma3: the 64-token prompt crosses the sliding window of 16 on 5 of 6 layers; token by token
// the sliding layers keep a ring of 16 slots, in batches of 7 a ring of 22.
TEST(ReferenceLogitsIncremental, Gemma3F32TokenByToken) { check_model("gemma3-tiny.f32", Mode::TokenByToken); }
TEST(ReferenceLogitsIncremental, Gemma3Q80TokenByToken) { check_model("gemma3-tiny.q8_0", Mode::TokenByToken); }
TEST(ReferenceLogitsIncremental, Gemma3Q4KMTokenByToken) { check_model("gemma3-tiny.q4_k_m", Mode::TokenByToken); }
TEST(ReferenceLogitsIncremental, Gemma3F32BatchesOf7) { check_model("gemma3-tiny.f32", Mode::SmallBatches); }
// gpt-oss: sinks, a window of 8 on alternating layers, YaRN, experts (MXFP4 in mxfp4_moe).
TEST(ReferenceLogitsIncremental, GptOssF32TokenByToken) { check_model("gpt-oss-tiny.f32", Mode::TokenByToken); }
TEST(ReferenceLogitsIncremental, GptOssQ80TokenByToken) { check_model("gpt-oss-tiny.q8_0", Mode::TokenByToken); }
TEST(ReferenceLogitsIncremental, GptOssMxfp4TokenByToken) { check_model("gpt-oss-tiny.mxfp4_moe", Mode::TokenByToken); }
TEST(ReferenceLogitsIncremental, GptOssF32BatchesOf7) { check_model("gpt-oss-tiny.f32", Mode::SmallBatches); }

// qwen3-vocab-tiny has no reference logits: it must load (151K-token vocabulary, F16 weights,
// no rope.dimension_count), give finite logits, and agree between batch and token-by-token.
TEST(ReferenceLogitsIncremental, Qwen3VocabTinyRunsConsistently) {
    const fs::path gguf = models_dir() / "qwen3-vocab-tiny.f16.gguf";
    KILN_REQUIRE_SHARED("models");
    if (!fs::exists(gguf)) GTEST_SKIP() << "SKIPPED: " << gguf << " is absent";
    const kiln::Model model = kiln::Model::load(gguf.string());
    EXPECT_EQ(model.info().arch, "qwen2");
    EXPECT_EQ(model.info().n_vocab, 151669);
    kiln::ContextOptions opts;
    opts.n_ctx = 64;
    opts.n_threads = 2;
    kiln::Context ctx(model, opts);
    ASSERT_TRUE(model.has_tokenizer());
    const std::vector<int32_t> tokens = model.tokenizer().encode("<|im_start|>user\nHello, how are you?<|im_end|>\n", false, true);
    ASSERT_GE(tokens.size(), 8u);
    EXPECT_EQ(tokens.front(), model.tokenizer().find_token("<|im_start|>"));
    const auto batch = run_batch(ctx, tokens);
    const auto step = run_token_by_token(ctx, tokens);
    double max_abs = 0, max_d = 0;
    for (size_t p = 0; p < tokens.size(); ++p)
        for (size_t i = 0; i < batch[p].size(); ++i) {
            ASSERT_TRUE(std::isfinite(batch[p][i])) << "position " << p << " logit " << i;
            max_abs = std::max(max_abs, static_cast<double>(std::abs(batch[p][i])));
            max_d = std::max(max_d, static_cast<double>(std::abs(batch[p][i] - step[p][i])));
        }
    std::printf("[ reference ] qwen3-vocab-tiny.f16   batch vs token-by-token max|d| = %.3g (max|logit| %.3g)\n", max_d,
                max_abs);
    EXPECT_GT(max_abs, 0.0);
    EXPECT_LE(max_d, 1e-3 * max_abs);
}

}  // namespace
