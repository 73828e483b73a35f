// deepseek2 (DeepSeek-V2-Lite layout, GLM-4.7-Flash layout): the shared reference models against
// llama.cpp's logits (README bounds, whole prompt and token by token), synthetic models against a
// naive double-precision forward, the latent KV cache's size, expert sparsity (unchosen experts
// poisoned with NaN), the gating fallback and the MTP layer.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "kiln/kiln.h"
#include "support/deepseek2_model.h"
#include "support/levels.h"
#include "support/reference.h"
#include "support/run.h"

namespace {

namespace fs = std::filesystem;
namespace ref = kiln::test::reference;
namespace ds2 = kiln::test::ds2;

// ---- shared reference models ------------------------------------------------------------------

const std::vector<std::string> kFiles = {"deepseek2-lite-tiny.f32", "deepseek2-lite-tiny.q8_0", "glm4.7-flash-tiny.f32",
                              "glm4.7-flash-tiny.q8_0", "glm4.7-flash-dims.q8_0"};

// Each at every CPU kernel level (support/levels.h).
class Deepseek2Reference : public kiln::test::AtEveryKernelLevel<std::string> {};
TEST_P(Deepseek2Reference, OneBatch) { ref::check_model(param(), ref::Mode::Batch); }
TEST_P(Deepseek2Reference, TokenByToken) { ref::check_model(param(), ref::Mode::TokenByToken); }
INSTANTIATE_TEST_SUITE_P(Models, Deepseek2Reference, kiln::test::at_every_kernel_level(kFiles), [](const auto& info) {
    return ref::test_name(std::get<0>(info.param)) + "_" + kiln::test::level_name(std::get<1>(info.param));
});

class Deepseek2ReferenceMore : public kiln::test::AtKernelLevel {};
TEST_P(Deepseek2ReferenceMore, LiteBatchesOf7) { ref::check_model("deepseek2-lite-tiny.f32", ref::Mode::SmallBatches); }
TEST_P(Deepseek2ReferenceMore, GlmDimsBatchesOf7) { ref::check_model("glm4.7-flash-dims.q8_0", ref::Mode::SmallBatches); }
// An f32 latent cache: the reference's own f16 K/V rounding then dominates what is left.
TEST_P(Deepseek2ReferenceMore, LiteF32Cache) {
    ref::check_model("deepseek2-lite-tiny.f32", ref::Mode::Batch, kiln::KvType::F32);
}
INSTANTIATE_TEST_SUITE_P(Levels, Deepseek2ReferenceMore, kiln::test::kernel_levels(), kiln::test::level_test_name);

// GLM-4.7-Flash's real head sizes: the cache row is kv_lora 512 + rope 64 = 576 values per token
// and layer (K rows of 576, V rows of 512), not 2 * heads * head_dim.
TEST(Deepseek2Cache, GlmDimsHoldsTheLatentOnly) {
    const fs::path gguf = ref::models_dir() / "glm4.7-flash-dims.q8_0.gguf";
    KILN_REQUIRE_SHARED("models");
    if (!fs::exists(gguf)) GTEST_SKIP() << "SKIPPED: " << gguf << " is absent";
    const kiln::Model model = kiln::Model::load(gguf.string());
    EXPECT_EQ(model.info().arch, "deepseek2");
    kiln::ContextOptions o;
    o.n_ctx = 100;
    o.n_threads = 2;
    const kiln::Context f16(model, o);
    EXPECT_EQ(f16.kv_bytes(), size_t{100} * 2 /*layers*/ * 576 * 2 /*bytes*/);
    o.kv_type_k = o.kv_type_v = kiln::KvType::F32;
    const kiln::Context f32(model, o);
    EXPECT_EQ(f32.kv_bytes(), size_t{100} * 2 * 576 * 4);
    // kiln info tells the same: 576 f16 values per token and layer.
    const auto r = kiln::test::run_kiln({"info", gguf.string()}, "ds2-info");
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find("2 full layers x 1152 B per token"), std::string::npos) << r.out;
}

// ---- synthetic models against the naive forward ---------------------------------------------

std::vector<int32_t> random_tokens(int n, int n_vocab, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (auto& x : t) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(n_vocab));
    return t;
}

using Rows = std::vector<std::vector<float>>;

double rel_max_diff(const Rows& a, const std::vector<ds2::Vec>& b) {
    double md = 0, mx = 0;
    for (size_t p = 0; p < b.size(); ++p)
        for (size_t i = 0; i < b[p].size(); ++i) {
            md = std::max(md, std::abs(a[p][i] - b[p][i]));
            mx = std::max(mx, std::abs(b[p][i]));
        }
    return md / mx;
}
double rel_max_diff(const Rows& a, const Rows& b) {
    std::vector<ds2::Vec> bd;
    for (const auto& r : b) bd.emplace_back(r.begin(), r.end());
    return rel_max_diff(a, bd);
}

struct Case {
    const char* name;
    ds2::Config config;
    int n_tokens = 29;
};

std::vector<Case> cases() {
    std::vector<Case> v;
    ds2::Config lite;  // DeepSeek-V2-Lite layout: plain attn_q, joined attn_kv_b, softmax, YaRN
    lite.joined_kv_b = true;
    lite.yarn = 40.0f;
    lite.seed = 3;
    v.push_back({"lite_kv_b_softmax_yarn", lite});
    ds2::Config glm;  // GLM-4.7-Flash layout: q_lora, split k_b / v_b, sigmoid + exp_probs_b, norm, scale
    glm.q_lora = 24;
    glm.gating = 2;
    glm.probs_b = true;
    glm.norm_w = true;
    glm.w_scale = 1.8f;
    glm.n_used = 3;
    glm.seed = 5;
    v.push_back({"glm_q_lora_sigmoid_bias_norm", glm});
    ds2::Config grouped = glm;  // DeepSeek-V3-style group-limited routing
    grouped.n_expert = 8;
    grouped.n_group = 4;
    grouped.n_group_used = 2;
    grouped.yarn = 4.0f;
    grouped.seed = 7;
    v.push_back({"grouped_routing_yarn", grouped});
    ds2::Config split_plain = lite;  // split k_b / v_b under the plain key_length keys
    split_plain.joined_kv_b = false;
    split_plain.mla_keys = false;
    split_plain.n_shared = 0;
    split_plain.seed = 9;
    v.push_back({"split_kb_plain_keys_no_shared", split_plain});
    ds2::Config longer = glm;  // 150 positions: the attention's online softmax over several blocks
    longer.n_layer = 2;
    longer.n_head = 12;  // chunks of heads of different sizes
    longer.seed = 13;
    v.push_back({"long_prompt_12_heads", longer, 150});
    return v;
}

Rows all_logits(kiln::Context& ctx, const std::vector<int32_t>& tokens) { return ref::run_batch(ctx, tokens); }

class Deepseek2Naive : public ::testing::TestWithParam<Case> {};

TEST_P(Deepseek2Naive, MatchesDoublePrecisionForward) {
    const Case& tc = GetParam();
    const ds2::Config& c = tc.config;
    const ds2::Weights w = ds2::make_weights(c);
    const std::string path = ds2::write_model(c, w, std::string("ds2_") + tc.name + ".gguf");
    const auto tokens = random_tokens(tc.n_tokens, c.n_vocab, c.seed + 50);
    const auto expect = ds2::naive_forward(c, w, tokens);
    const kiln::Model model = kiln::Model::load(path);
    for (const kiln::KvType kv : {kiln::KvType::F32, kiln::KvType::F16}) {
        kiln::ContextOptions o;
        o.n_ctx = tc.n_tokens + 11;
        o.n_threads = 2;
        o.kv_type_k = o.kv_type_v = kv;
        kiln::Context ctx(model, o);
        const double batch = rel_max_diff(all_logits(ctx, tokens), expect);
        const double step = rel_max_diff(ref::run_token_by_token(ctx, tokens), expect);
        const double bound = kv == kiln::KvType::F32 ? 5e-5 : 3e-3;
        std::printf("[ naive     ] deepseek2 %-32s kv %s: max|d|/max|ref| batch %.3g, token by token %.3g (bound %.0e)\n",
                    tc.name, kiln::kv_type_name(kv), batch, step, bound);
        EXPECT_LE(batch, bound) << tc.name;
        EXPECT_LE(step, bound) << tc.name;
    }
}

INSTANTIATE_TEST_SUITE_P(Synthetic, Deepseek2Naive, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return std::string(info.param.name); });

// ---- the latent cache ------------------------------------------------------------------------

TEST(Deepseek2Cache, KvBytesAreLatentPlusRopePerTokenAndLayer) {
    for (const bool joined : {true, false}) {
        ds2::Config c;
        c.joined_kv_b = joined;
        const std::string path = ds2::write_model(c, ds2::make_weights(c), joined ? "ds2_kv_joined.gguf" : "ds2_kv_split.gguf");
        const kiln::Model model = kiln::Model::load(path);
        kiln::ContextOptions o;
        o.n_ctx = 64;
        const kiln::Context ctx(model, o);
        // (kv_lora + n_rot) f16 values per token and layer; a plain cache would hold
        // 2 * heads * head sizes: n_head * (nope + rot + head_v) = 4 * 28.
        EXPECT_EQ(ctx.kv_bytes(), size_t{64} * 3 * (16 + 8) * 2) << (joined ? "attn_kv_b" : "attn_k_b/attn_v_b");
    }
}

// ---- only the chosen experts are read ----------------------------------------------------------

// Sigmoid routing whose exp_probs_b makes experts 1 and 4 win every choice (the bias steers the
// choice only): the other experts' slices of gate/up/down are NaN. Any read of them would turn the
// logits NaN; the logits must instead equal those of the same model with finite unchosen experts.
TEST(Deepseek2Experts, UnchosenExpertsAreNeverRead) {
    ds2::Config c;
    c.q_lora = 16;
    c.gating = 2;
    c.probs_b = true;
    c.norm_w = true;
    ds2::Weights w = ds2::make_weights(c);
    for (auto& L : w.layers)
        if (!L.probs_b.empty())
            for (int e = 0; e < c.n_expert; ++e) L.probs_b[static_cast<size_t>(e)] = (e == 1 || e == 4) ? 50.0f : -50.0f;
    const std::string clean = ds2::write_model(c, w, "ds2_experts_clean.gguf");
    const size_t slice_ge = static_cast<size_t>(c.n_embd * c.n_ff_exp);  // floats per expert
    const std::string poisoned = ds2::write_model(c, w, "ds2_experts_nan.gguf", [&](const std::string& name, std::vector<float>& d) {
        if (name.find("_exps.weight") == std::string::npos) return;
        for (int e = 0; e < c.n_expert; ++e)
            if (e != 1 && e != 4)
                std::fill(d.begin() + static_cast<std::ptrdiff_t>(e * slice_ge), d.begin() + static_cast<std::ptrdiff_t>((e + 1) * slice_ge),
                          std::numeric_limits<float>::quiet_NaN());
    });
    const auto tokens = random_tokens(23, c.n_vocab, 4);
    kiln::ContextOptions o;
    o.n_ctx = 32;
    o.n_threads = 2;
    kiln::Context a(kiln::Model::load(clean), o), b(kiln::Model::load(poisoned), o);
    const Rows want = all_logits(a, tokens);
    for (const bool step : {false, true}) {
        const Rows got = step ? ref::run_token_by_token(b, tokens) : all_logits(b, tokens);
        for (size_t p = 0; p < got.size(); ++p)
            for (size_t i = 0; i < got[p].size(); ++i) ASSERT_TRUE(std::isfinite(got[p][i])) << "position " << p;
        EXPECT_LE(rel_max_diff(got, want), 1e-5) << (step ? "token by token" : "one batch");
    }
}

// ---- gating ------------------------------------------------------------------------------------

Rows logits_of(const std::string& path, const std::vector<int32_t>& tokens) {
    kiln::ContextOptions o;
    o.n_ctx = 32;
    o.n_threads = 2;
    kiln::Context ctx(kiln::Model::load(path), o);
    return all_logits(ctx, tokens);
}

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const kiln::Error& e) {
        return e.what();
    }
    return "<no error>";
}

// Without expert_gating_func: softmax for DeepSeek-V2-style files, sigmoid where the file carries
// exp_probs_b; the choice is said on stderr. An unknown value is a load error.
TEST(Deepseek2Gating, MissingKeyFallsBackByExpProbsB) {
    const auto tokens = random_tokens(12, 53, 8);
    for (const bool probs_b : {false, true}) {
        ds2::Config c;
        c.probs_b = probs_b;
        c.seed = probs_b ? 12 : 11;
        const ds2::Weights w = ds2::make_weights(c);
        const std::string tag = probs_b ? "b" : "nob";
        c.gating = 0;
        const std::string missing = ds2::write_model(c, w, "ds2_gate_missing_" + tag + ".gguf");
        c.gating = 1;
        const std::string softmax = ds2::write_model(c, w, "ds2_gate_softmax_" + tag + ".gguf");
        c.gating = 2;
        const std::string sigmoid = ds2::write_model(c, w, "ds2_gate_sigmoid_" + tag + ".gguf");
        const Rows m = logits_of(missing, tokens), s = logits_of(softmax, tokens), g = logits_of(sigmoid, tokens);
        const Rows& same = probs_b ? g : s;
        const Rows& other = probs_b ? s : g;
        EXPECT_EQ(rel_max_diff(m, same), 0.0) << "exp_probs_b " << probs_b;
        EXPECT_GT(rel_max_diff(m, other), 1e-3) << "the two gatings must differ for the test to mean anything";

        const auto r = kiln::test::run_kiln({"logits", "-m", missing, "--tokens", "1,2,3", "-t", "2"}, "ds2-gating");
        EXPECT_EQ(r.code, 0) << r.err;
        EXPECT_NE(r.err.find(probs_b ? "sigmoid" : "softmax"), std::string::npos) << r.err;
        EXPECT_NE(r.err.find("expert_gating_func"), std::string::npos) << r.err;
        const auto r2 = kiln::test::run_kiln({"logits", "-m", softmax, "--tokens", "1,2,3", "-t", "2"}, "ds2-gating");
        EXPECT_EQ(r2.err.find("expert_gating_func"), std::string::npos) << "no note when the key is there: " << r2.err;
    }
    ds2::Config c;
    c.gating = 7;
    const std::string bad = ds2::write_model(c, ds2::make_weights(c), "ds2_gate_bad.gguf");
    const std::string msg = error_of([&] { kiln::Model::load(bad); });
    EXPECT_NE(msg.find("expert_gating_func"), std::string::npos) << msg;
    EXPECT_NE(msg.find("7"), std::string::npos) << msg;
}

// ---- the multi-token-prediction layer --------------------------------------------------------

// A file with one trailing MTP layer (nextn_predict_layers = 1) loads it (its tensors bound) but
// runs only the main layers: same logits as the file without it, no cache for it.
TEST(Deepseek2Nextn, MtpLayerIsBoundButNotRun) {
    ds2::Config c;
    c.q_lora = 16;
    c.n_layer = 4;
    c.n_nextn = 1;
    const ds2::Weights w = ds2::make_weights(c);
    const std::string with = ds2::write_model(c, w, "ds2_nextn.gguf");
    ds2::Config main = c;
    main.n_layer = 3;
    main.n_nextn = 0;
    ds2::Weights wm = w;
    wm.layers.pop_back();
    const std::string without = ds2::write_model(main, wm, "ds2_no_nextn.gguf");
    const auto tokens = random_tokens(15, c.n_vocab, 2);
    EXPECT_EQ(rel_max_diff(logits_of(with, tokens), logits_of(without, tokens)), 0.0);

    const kiln::Model a = kiln::Model::load(with), b = kiln::Model::load(without);
    EXPECT_GT(a.info().weight_bytes, b.info().weight_bytes);  // the MTP layer's tensors are bound
    kiln::ContextOptions o;
    o.n_ctx = 16;
    EXPECT_EQ(kiln::Context(a, o).kv_bytes(), kiln::Context(b, o).kv_bytes());

    // A missing tensor of the MTP layer's own block is still an error naming it.
    const std::string broken = ds2::write_model(c, w, "ds2_nextn_broken.gguf", [](const std::string& name, std::vector<float>& d) {
        if (name == "blk.3.attn_kv_a_mqa.weight") d.clear();
    });
    EXPECT_NE(error_of([&] { kiln::Model::load(broken); }).find("blk.3.attn_kv_a_mqa.weight"), std::string::npos);

    // A file whose converter dropped the MTP block altogether still loads and runs the main layers.
    const std::string dropped = ds2::write_model(c, w, "ds2_nextn_dropped.gguf", [](const std::string& name, std::vector<float>& d) {
        if (name.starts_with("blk.3.")) d.clear();
    });
    EXPECT_EQ(rel_max_diff(logits_of(dropped, tokens), logits_of(without, tokens)), 0.0);
}

}  // namespace
