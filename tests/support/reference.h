// Comparing kiln's logits with the reference logits of ../shared/models (llama.cpp's), with the
// bounds of /work/shared/models/README.md:
//   f32 / f16 / bf16: max|ours - ref| <= 3e-3 * max|ref|, argmax equal where top2_margin > 1e-2 * max|ref|
//   quantized:        RMS(ours - ref) <= 2 * rms_quantization_error, argmax equal where
//                     top2_margin > 0.1 * max|ref|
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kernels/cpu.h"
#include "kiln/kiln.h"
#include "support/shared.h"

namespace kiln::test::reference {

namespace fs = std::filesystem;

inline fs::path models_dir() { return shared_dir() / "models"; }
// Small reference models kept in the repository (tests/data/models, written by
// kiln_make_bench_model, reference logits by scripts/make_reference.py): qwen3, qwen3moe, glm4moe.
inline fs::path repo_models_dir() { return fs::path(__FILE__).parent_path().parent_path() / "data" / "models"; }

struct Reference {
    std::vector<int32_t> tokens;
    std::vector<std::vector<float>> logits;
    std::vector<int> argmax;
    std::vector<double> top2_margin;
    double max_abs_logit = 0;
    double rms_quantization_error = 0;
};

inline Reference load(const fs::path& p) {
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

inline bool is_float_file(const std::string& name) {
    return name.ends_with(".f32") || name.ends_with(".f16") || name.ends_with(".bf16");
}

struct Measured {
    double max_abs = 0, rms = 0;
    int argmax_checked = 0, argmax_wrong = 0;
    std::string first_wrong;
};

inline Measured compare(const Reference& ref, const std::vector<std::vector<float>>& ours, double margin_frac) {
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

inline std::vector<std::vector<float>> run_batch(Context& ctx, const std::vector<int32_t>& tokens) {
    ctx.clear();
    ctx.decode(tokens, /*all_logits=*/true);
    std::vector<std::vector<float>> out;
    for (size_t i = 0; i < tokens.size(); ++i) {
        const auto row = ctx.logits(static_cast<int64_t>(i));
        out.emplace_back(row.begin(), row.end());
    }
    return out;
}

inline std::vector<std::vector<float>> run_token_by_token(Context& ctx, const std::vector<int32_t>& tokens) {
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

// How a model is run against its reference: the feed, the KV cache type (the reference used f16),
// the backend, and the batch size of SmallBatches (default 7; TokenByToken runs batches of 1, so
// sliding-window layers keep rings of exactly their window).
struct Run {
    Mode mode = Mode::Batch;
    KvType kv = KvType::F16;
    const char* backend = "cpu";
    int64_t small_batch = 7;
};

// Runs `name` (a file of ../shared/models without .gguf) over its reference prompt and checks the
// bounds; prints the measured error.
inline void check_model(const std::string& name, const Run& run) {
    const bool in_repo = fs::exists(repo_models_dir() / (name + ".gguf"));
    const fs::path dir = in_repo ? repo_models_dir() : models_dir();
    const fs::path gguf = dir / (name + ".gguf");
    const fs::path json = dir / "reference" / (name + ".json");
    if (!in_repo) KILN_REQUIRE_SHARED("models");
    if (!fs::exists(gguf) || !fs::exists(json)) GTEST_SKIP() << "SKIPPED: " << gguf << " or its reference is absent";

    const Reference ref = load(json);
    const Model model = Model::load(gguf.string());
    ASSERT_EQ(model.info().n_vocab, static_cast<int64_t>(ref.logits.at(0).size()));

    ContextOptions opts;
    opts.n_ctx = static_cast<int64_t>(ref.tokens.size());
    opts.n_threads = 2;
    opts.kv_type_k = opts.kv_type_v = run.kv;
    opts.backend = run.backend;
    if (run.mode == Mode::SmallBatches) opts.n_batch = run.small_batch;
    if (run.mode == Mode::TokenByToken) opts.n_batch = 1;
    Context ctx(model, opts);
    ASSERT_STREQ(ctx.backend_name(), run.backend);
    const KvStats kvs = ctx.kv_stats();
    if (kvs.n_sliding_layers > 0) {
        // Smaller batches than the prompt: the sliding layers are rings the prompt wraps around.
        if (run.mode != Mode::Batch) {
            EXPECT_LT(kvs.sliding_slots, opts.n_ctx) << ctx.kv_summary();
        }
        EXPECT_EQ(kvs.sliding_bytes, static_cast<size_t>(kvs.n_sliding_layers * kvs.sliding_slots) * kvs.sliding_bytes_per_token);
    }
    const auto ours = run.mode == Mode::TokenByToken ? run_token_by_token(ctx, ref.tokens) : run_batch(ctx, ref.tokens);
    ASSERT_EQ(ours.size(), ref.logits.size());
    for (size_t p = 0; p < ours.size(); ++p)
        for (size_t i = 0; i < ours[p].size(); ++i) ASSERT_TRUE(std::isfinite(ours[p][i])) << "position " << p << " logit " << i;

    const bool float_file = is_float_file(name);
    const Measured m = compare(ref, ours, float_file ? 1e-2 : 0.1);
    const double bound = float_file ? 3e-3 * ref.max_abs_logit : 2.0 * ref.rms_quantization_error;
    const double measured = float_file ? m.max_abs : m.rms;
    const char* what = float_file ? "max|d|" : "rms(d)";
    const std::string how = run.mode == Mode::Batch          ? "one batch"
                            : run.mode == Mode::TokenByToken ? "token by token"
                                                             : fmt::format("batches of {}", run.small_batch);
    const std::string ring =
        kvs.n_sliding_layers ? fmt::format("; {} ring layers of {} slots", kvs.n_sliding_layers, kvs.sliding_slots) : "";

    ::testing::Test::RecordProperty("measured_" + std::string(float_file ? "max_abs" : "rms"), fmt::format("{:.6g}", measured));
    ::testing::Test::RecordProperty("bound", fmt::format("{:.6g}", bound));
    const std::string where = std::string(run.backend) == "cpu" ? fmt::format("cpu {}", kernels::kernel_level_name()) : run.backend;
    std::printf("[ %-14s ] %-24s %-14s kv %-4s %s = %.6g (bound %.6g, %.1f%% of it); max|d| %.4g rms %.4g; argmax "
                "%d/%d equal%s\n",
                where.c_str(), name.c_str(), how.c_str(), kv_type_name(run.kv), what, measured, bound, 100.0 * measured / bound,
                m.max_abs, m.rms, m.argmax_checked - m.argmax_wrong, m.argmax_checked, ring.c_str());

    EXPECT_LE(measured, bound) << name << " (" << how << "): " << what << " over all logits";
    EXPECT_EQ(m.argmax_wrong, 0) << name << ": argmax differs at " << m.argmax_wrong << " clear positions; first "
                                 << m.first_wrong;
}

inline void check_model(const std::string& name, Mode mode, KvType kv = KvType::F16) {
    check_model(name, Run{mode, kv, "cpu", 7});
}

inline std::string test_name(const std::string& s) {
    std::string out = s;
    std::replace_if(out.begin(), out.end(), [](char c) { return !std::isalnum(static_cast<unsigned char>(c)); }, '_');
    return out;
}

}  // namespace kiln::test::reference
