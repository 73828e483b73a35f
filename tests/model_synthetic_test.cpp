// Tiny random llama / qwen2 models written with the GGUF writer (no shared data needed), checked
// against an independent naive double-precision forward pass written here from the definitions,
// plus the consistency and error paths of the public API.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "gguf/writer.h"
#include "kiln/kiln.h"
#include "quant/quant.h"

namespace {

namespace fs = std::filesystem;

struct Config {
    std::string arch = "llama";
    int n_vocab = 61, n_embd = 48, n_layer = 2, n_head = 6, n_head_kv = 2, n_ff = 80;
    int head_dim = 8;
    int n_rot = 8;
    float freq_base = 10000.0f;
    float linear_scale = 0.0f;  // rope.scaling.factor with type linear when > 0
    bool tied = true;           // no output.weight
    bool qkv_bias = false;
    kiln::TensorType wtype = kiln::TensorType::F32;  // 2-D weights stored as
    uint32_t seed = 1;
};

struct LayerW {
    std::vector<float> attn_norm, wq, wk, wv, wo, bq, bk, bv, ffn_norm, gate, up, down;
};
struct Weights {
    std::vector<float> tok_embd, output_norm, output;
    std::vector<LayerW> layers;
};

// Random weights; the 2-D ones are passed through the storage type (quantize + dequantize) so the
// naive forward computes with exactly what the file holds.
Weights make_weights(const Config& c) {
    std::mt19937 rng(c.seed);
    std::uniform_real_distribution<float> U(-1.0f, 1.0f);
    auto mat = [&](int cols, int rows, float scale) {
        std::vector<float> m(static_cast<size_t>(cols) * rows);
        for (float& x : m) x = U(rng) * scale;
        if (c.wtype != kiln::TensorType::F32) {
            const auto rb = *kiln::row_bytes(c.wtype, static_cast<uint64_t>(cols));
            std::vector<uint8_t> q(rb);
            for (int r = 0; r < rows; ++r) {
                kiln::quantize_row(c.wtype, m.data() + static_cast<size_t>(r) * cols, q.data(), cols);
                kiln::dequantize_row(c.wtype, q.data(), m.data() + static_cast<size_t>(r) * cols, cols);
            }
        }
        return m;
    };
    auto vec = [&](int n, float center, float spread) {
        std::vector<float> v(static_cast<size_t>(n));
        for (float& x : v) x = center + U(rng) * spread;
        return v;
    };
    const int E = c.n_embd, QD = c.n_head * c.head_dim, KD = c.n_head_kv * c.head_dim;
    Weights w;
    w.tok_embd = mat(E, c.n_vocab, 1.0f);
    w.output_norm = vec(E, 1.0f, 0.2f);
    if (!c.tied) w.output = mat(E, c.n_vocab, 1.0f / std::sqrt(static_cast<float>(E)));
    for (int il = 0; il < c.n_layer; ++il) {
        LayerW L;
        L.attn_norm = vec(E, 1.0f, 0.2f);
        L.wq = mat(E, QD, 2.0f / std::sqrt(static_cast<float>(E)));
        L.wk = mat(E, KD, 2.0f / std::sqrt(static_cast<float>(E)));
        L.wv = mat(E, KD, 1.0f / std::sqrt(static_cast<float>(E)));
        L.wo = mat(QD, E, 1.0f / std::sqrt(static_cast<float>(QD)));
        if (c.qkv_bias) {
            L.bq = vec(QD, 0.0f, 0.5f);
            L.bk = vec(KD, 0.0f, 0.5f);
            L.bv = vec(KD, 0.0f, 0.5f);
        }
        L.ffn_norm = vec(E, 1.0f, 0.2f);
        L.gate = mat(E, c.n_ff, 1.0f / std::sqrt(static_cast<float>(E)));
        L.up = mat(E, c.n_ff, 1.0f / std::sqrt(static_cast<float>(E)));
        L.down = mat(c.n_ff, E, 1.0f / std::sqrt(static_cast<float>(c.n_ff)));
        w.layers.push_back(std::move(L));
    }
    return w;
}

// Writes the model; `skip` names a tensor to leave out, `reshape` one to write with a wrong shape.
std::string write_model(const Config& c, const Weights& w, const std::string& file, const std::string& skip = "",
                        const std::string& reshape = "") {
    kiln::gguf::Writer wr;
    const std::string a = c.arch;
    wr.set_string("general.architecture", a);
    wr.set_string("general.name", "synthetic-" + a);
    wr.set_u32(a + ".context_length", 128);
    wr.set_u32(a + ".embedding_length", static_cast<uint32_t>(c.n_embd));
    wr.set_u32(a + ".block_count", static_cast<uint32_t>(c.n_layer));
    wr.set_u32(a + ".feed_forward_length", static_cast<uint32_t>(c.n_ff));
    wr.set_u32(a + ".attention.head_count", static_cast<uint32_t>(c.n_head));
    wr.set_u32(a + ".attention.head_count_kv", static_cast<uint32_t>(c.n_head_kv));
    if (c.head_dim != c.n_embd / c.n_head) {
        wr.set_u32(a + ".attention.key_length", static_cast<uint32_t>(c.head_dim));
        wr.set_u32(a + ".attention.value_length", static_cast<uint32_t>(c.head_dim));
    }
    wr.set_f32(a + ".attention.layer_norm_rms_epsilon", 1e-5f);
    wr.set_u32(a + ".rope.dimension_count", static_cast<uint32_t>(c.n_rot));
    wr.set_f32(a + ".rope.freq_base", c.freq_base);
    if (c.linear_scale > 0) {
        wr.set_string(a + ".rope.scaling.type", "linear");
        wr.set_f32(a + ".rope.scaling.factor", c.linear_scale);
    }
    std::vector<std::string> toks;
    for (int i = 0; i < c.n_vocab; ++i) toks.push_back(fmt::format("t{}", i));
    wr.set_strings("tokenizer.ggml.tokens", toks);

    auto add = [&](const std::string& name, const std::vector<float>& data, uint64_t cols, uint64_t rows) {
        if (name == skip) return;
        std::vector<uint64_t> shape = rows == 0 ? std::vector<uint64_t>{cols} : std::vector<uint64_t>{cols, rows};
        if (name == reshape) shape = {rows == 0 ? cols : rows, rows == 0 ? 1 : cols};
        const kiln::TensorType t = rows == 0 ? kiln::TensorType::F32 : c.wtype;
        wr.add_tensor_f32(name, t, shape, data);
    };
    const uint64_t E = static_cast<uint64_t>(c.n_embd), V = static_cast<uint64_t>(c.n_vocab);
    const uint64_t QD = static_cast<uint64_t>(c.n_head * c.head_dim), KD = static_cast<uint64_t>(c.n_head_kv * c.head_dim);
    const uint64_t F = static_cast<uint64_t>(c.n_ff);
    add("token_embd.weight", w.tok_embd, E, V);
    add("output_norm.weight", w.output_norm, E, 0);
    if (!c.tied) add("output.weight", w.output, E, V);
    for (int il = 0; il < c.n_layer; ++il) {
        const LayerW& L = w.layers[static_cast<size_t>(il)];
        auto n = [&](const char* s) { return fmt::format("blk.{}.{}", il, s); };
        add(n("attn_norm.weight"), L.attn_norm, E, 0);
        add(n("attn_q.weight"), L.wq, E, QD);
        add(n("attn_k.weight"), L.wk, E, KD);
        add(n("attn_v.weight"), L.wv, E, KD);
        if (c.qkv_bias) {
            add(n("attn_q.bias"), L.bq, QD, 0);
            add(n("attn_k.bias"), L.bk, KD, 0);
            add(n("attn_v.bias"), L.bv, KD, 0);
        }
        add(n("attn_output.weight"), L.wo, QD, E);
        add(n("ffn_norm.weight"), L.ffn_norm, E, 0);
        add(n("ffn_gate.weight"), L.gate, E, F);
        add(n("ffn_up.weight"), L.up, E, F);
        add(n("ffn_down.weight"), L.down, F, E);
    }
    const fs::path dir = fs::path(KILN_BINARY_DIR) / "test_models";
    fs::create_directories(dir);
    const std::string path = (dir / file).string();
    wr.write(path);
    return path;
}

// ---- the naive forward: double precision, straight from the definitions ----------------------

using Vec = std::vector<double>;

Vec matvec(const std::vector<float>& W, int cols, int rows, const Vec& x) {  // W: rows of `cols`
    Vec y(static_cast<size_t>(rows), 0.0);
    for (int r = 0; r < rows; ++r)
        for (int i = 0; i < cols; ++i) y[static_cast<size_t>(r)] += static_cast<double>(W[static_cast<size_t>(r) * cols + i]) * x[static_cast<size_t>(i)];
    return y;
}
Vec rmsnorm(const Vec& x, const std::vector<float>& w) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double s = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + 1e-5);
    Vec y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * s * w[i];
    return y;
}
void rope(Vec& v, int n_heads, const Config& c, int pos) {
    const double p = c.linear_scale > 0 ? pos / static_cast<double>(c.linear_scale) : pos;
    const bool neox = c.arch == "qwen2";
    for (int h = 0; h < n_heads; ++h) {
        double* x = v.data() + static_cast<size_t>(h) * c.head_dim;
        for (int i = 0; i < c.n_rot / 2; ++i) {
            const double theta = p * std::pow(static_cast<double>(c.freq_base), -2.0 * i / c.n_rot);
            const int a = neox ? i : 2 * i, b = neox ? i + c.n_rot / 2 : 2 * i + 1;
            const double x0 = x[a], x1 = x[b];
            x[a] = x0 * std::cos(theta) - x1 * std::sin(theta);
            x[b] = x0 * std::sin(theta) + x1 * std::cos(theta);
        }
    }
}

std::vector<Vec> naive_forward(const Config& c, const Weights& w, const std::vector<int32_t>& tokens) {
    const int E = c.n_embd, QD = c.n_head * c.head_dim, KD = c.n_head_kv * c.head_dim, hd = c.head_dim;
    const size_t T = tokens.size();
    std::vector<Vec> x(T);
    for (size_t t = 0; t < T; ++t) {
        x[t].resize(static_cast<size_t>(E));
        for (int i = 0; i < E; ++i) x[t][static_cast<size_t>(i)] = w.tok_embd[static_cast<size_t>(tokens[t]) * E + i];
    }
    for (int il = 0; il < c.n_layer; ++il) {
        const LayerW& L = w.layers[static_cast<size_t>(il)];
        std::vector<Vec> q(T), k(T), v(T);
        for (size_t t = 0; t < T; ++t) {
            const Vec h = rmsnorm(x[t], L.attn_norm);
            q[t] = matvec(L.wq, E, QD, h);
            k[t] = matvec(L.wk, E, KD, h);
            v[t] = matvec(L.wv, E, KD, h);
            if (c.qkv_bias) {
                for (int i = 0; i < QD; ++i) q[t][static_cast<size_t>(i)] += L.bq[static_cast<size_t>(i)];
                for (int i = 0; i < KD; ++i) k[t][static_cast<size_t>(i)] += L.bk[static_cast<size_t>(i)];
                for (int i = 0; i < KD; ++i) v[t][static_cast<size_t>(i)] += L.bv[static_cast<size_t>(i)];
            }
            rope(q[t], c.n_head, c, static_cast<int>(t));
            rope(k[t], c.n_head_kv, c, static_cast<int>(t));
        }
        for (size_t t = 0; t < T; ++t) {
            Vec att(static_cast<size_t>(QD), 0.0);
            for (int h = 0; h < c.n_head; ++h) {
                const int kh = h / (c.n_head / c.n_head_kv);
                std::vector<double> s(t + 1);
                double mx = -1e300;
                for (size_t j = 0; j <= t; ++j) {
                    double d = 0;
                    for (int i = 0; i < hd; ++i) d += q[t][static_cast<size_t>(h * hd + i)] * k[j][static_cast<size_t>(kh * hd + i)];
                    s[j] = d / std::sqrt(static_cast<double>(hd));
                    mx = std::max(mx, s[j]);
                }
                double sum = 0;
                for (double& e : s) sum += (e = std::exp(e - mx));
                for (size_t j = 0; j <= t; ++j)
                    for (int i = 0; i < hd; ++i)
                        att[static_cast<size_t>(h * hd + i)] += s[j] / sum * v[j][static_cast<size_t>(kh * hd + i)];
            }
            const Vec o = matvec(L.wo, QD, E, att);
            for (int i = 0; i < E; ++i) x[t][static_cast<size_t>(i)] += o[static_cast<size_t>(i)];
            const Vec h = rmsnorm(x[t], L.ffn_norm);
            const Vec g = matvec(L.gate, E, c.n_ff, h), u = matvec(L.up, E, c.n_ff, h);
            Vec a(static_cast<size_t>(c.n_ff));
            for (size_t i = 0; i < a.size(); ++i) a[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
            const Vec d = matvec(L.down, c.n_ff, E, a);
            for (int i = 0; i < E; ++i) x[t][static_cast<size_t>(i)] += d[static_cast<size_t>(i)];
        }
    }
    std::vector<Vec> logits(T);
    for (size_t t = 0; t < T; ++t)
        logits[t] = matvec(c.tied ? w.tok_embd : w.output, E, c.n_vocab, rmsnorm(x[t], w.output_norm));
    return logits;
}

std::vector<int32_t> random_tokens(int n, int n_vocab, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (auto& x : t) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(n_vocab));
    return t;
}

std::vector<std::vector<float>> all_logits(kiln::Context& ctx, const std::vector<int32_t>& tokens) {
    ctx.clear();
    ctx.decode(tokens, true);
    std::vector<std::vector<float>> out;
    for (size_t i = 0; i < tokens.size(); ++i) {
        auto r = ctx.logits(static_cast<int64_t>(i));
        out.emplace_back(r.begin(), r.end());
    }
    return out;
}

// max |a - b| / max |b|
double rel_max_diff(const std::vector<std::vector<float>>& a, const std::vector<Vec>& b) {
    double md = 0, mx = 0;
    for (size_t p = 0; p < b.size(); ++p)
        for (size_t i = 0; i < b[p].size(); ++i) {
            md = std::max(md, std::abs(a[p][i] - b[p][i]));
            mx = std::max(mx, std::abs(b[p][i]));
        }
    return md / mx;
}
double rel_max_diff(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
    std::vector<Vec> bd;
    for (const auto& r : b) bd.emplace_back(r.begin(), r.end());
    return rel_max_diff(a, bd);
}

struct NaiveCase {
    const char* name;
    Config config;
};

std::vector<NaiveCase> naive_cases() {
    std::vector<NaiveCase> v;
    Config llama;
    v.push_back({"llama_tied_gqa3", llama});
    Config partial = llama;
    partial.n_rot = 4;  // only the first half of each head rotates
    partial.linear_scale = 4.0f;
    partial.tied = false;
    partial.seed = 7;
    v.push_back({"llama_partial_rope_linear_scaling", partial});
    Config wide = llama;
    wide.n_embd = 64;
    wide.n_head = 4;
    wide.n_head_kv = 4;  // plain multi-head attention
    wide.head_dim = 24;  // head size not n_embd / n_head (key_length)
    wide.n_rot = 24;
    wide.n_layer = 3;
    wide.seed = 11;
    v.push_back({"llama_mha_key_length", wide});
    Config qwen = llama;
    qwen.arch = "qwen2";
    qwen.qkv_bias = true;
    qwen.tied = false;
    qwen.freq_base = 1e6f;
    qwen.seed = 3;
    v.push_back({"qwen2_bias_neox", qwen});
    Config qwen_partial = qwen;
    qwen_partial.n_rot = 6;
    qwen_partial.tied = true;
    qwen_partial.seed = 5;
    v.push_back({"qwen2_partial_neox_tied", qwen_partial});
    return v;
}

class NaiveForward : public ::testing::TestWithParam<NaiveCase> {};

TEST_P(NaiveForward, MatchesDoublePrecisionReference) {
    const NaiveCase& nc = GetParam();
    const Config& c = nc.config;
    const Weights w = make_weights(c);
    const std::string path = write_model(c, w, std::string(nc.name) + ".gguf");
    const auto tokens = random_tokens(21, c.n_vocab, c.seed + 100);
    const auto ref = naive_forward(c, w, tokens);

    const kiln::Model model = kiln::Model::load(path);
    for (const kiln::KvType kv : {kiln::KvType::F32, kiln::KvType::F16}) {
        kiln::ContextOptions o;
        o.n_ctx = 32;
        o.n_threads = 2;
        o.kv_type_k = o.kv_type_v = kv;
        kiln::Context ctx(model, o);
        const double d = rel_max_diff(all_logits(ctx, tokens), ref);
        // f32 everywhere: only accumulation order differs. f16 KV: the cache rounds to 11 bits.
        const double bound = kv == kiln::KvType::F32 ? 2e-5 : 2e-3;
        std::printf("[ naive     ] %-36s kv %s: max|d|/max|ref| = %.3g (bound %.0e)\n", nc.name, kiln::kv_type_name(kv),
                    d, bound);
        EXPECT_LE(d, bound) << nc.name << " kv " << kiln::kv_type_name(kv);
    }
}

INSTANTIATE_TEST_SUITE_P(Synthetic, NaiveForward, ::testing::ValuesIn(naive_cases()),
                         [](const auto& info) { return std::string(info.param.name); });

// A quantized synthetic model: the naive forward uses the dequantized weights, so the only
// differences are kiln's own (activation handling inside the matmul kernels).
TEST(SyntheticModel, QuantizedWeightsMatchNaiveForward) {
    for (const kiln::TensorType t : {kiln::TensorType::Q8_0, kiln::TensorType::Q4_0, kiln::TensorType::F16}) {
        Config c;
        c.n_embd = 64;
        c.n_head = 4;
        c.n_head_kv = 2;
        c.head_dim = 16;
        c.n_rot = 16;
        c.n_ff = 96;
        c.wtype = t;
        c.seed = 21;
        const Weights w = make_weights(c);
        const std::string path = write_model(c, w, fmt::format("llama_{}.gguf", kiln::type_name(t)));
        const auto tokens = random_tokens(17, c.n_vocab, 5);
        const auto ref = naive_forward(c, w, tokens);
        kiln::ContextOptions o;
        o.n_ctx = 32;
        o.kv_type_k = o.kv_type_v = kiln::KvType::F32;
        kiln::Context ctx(kiln::Model::load(path), o);
        const double d = rel_max_diff(all_logits(ctx, tokens), ref);
        std::printf("[ naive     ] llama %-6s weights: max|d|/max|ref| = %.3g\n", kiln::type_name(t), d);
        // Kernels may quantize activations to 8 bits in the dot products: ~1% of a logit's scale.
        EXPECT_LE(d, 2e-2) << kiln::type_name(t);
    }
}

TEST(SyntheticModel, BatchEqualsTokenByTokenEqualsChunks) {
    Config c;
    c.seed = 9;
    const Weights w = make_weights(c);
    const std::string path = write_model(c, w, "llama_consistency.gguf");
    const auto tokens = random_tokens(40, c.n_vocab, 77);
    const kiln::Model model = kiln::Model::load(path);

    kiln::ContextOptions o;
    o.n_ctx = 48;
    o.n_threads = 2;
    kiln::Context ctx(model, o);
    const auto batch = all_logits(ctx, tokens);

    ctx.clear();
    std::vector<std::vector<float>> step;
    for (int32_t t : tokens) {
        ctx.decode(std::span<const int32_t>(&t, 1));
        auto r = ctx.logits();
        step.emplace_back(r.begin(), r.end());
    }
    EXPECT_EQ(ctx.n_past(), 40);
    EXPECT_LE(rel_max_diff(step, batch), 1e-5);

    o.n_batch = 6;  // 40 = 6 * 6 + 4: uneven chunks
    kiln::Context chunked(model, o);
    EXPECT_LE(rel_max_diff(all_logits(chunked, tokens), batch), 1e-5);

    // Last-row-only decode equals the last row of all_logits; a second prompt after clear() too.
    chunked.clear();
    chunked.decode(tokens);
    ASSERT_EQ(chunked.n_logits(), 1);
    const auto last = chunked.logits();
    for (size_t i = 0; i < last.size(); ++i) EXPECT_NEAR(last[i], batch.back()[i], 1e-5 * 50);

    // Continuing a sequence: prompt, then two more tokens, equals the whole sequence at once.
    ctx.clear();
    ctx.decode(std::span<const int32_t>(tokens.data(), 30));
    ctx.decode(std::span<const int32_t>(tokens.data() + 30, 10), true);
    ASSERT_EQ(ctx.n_logits(), 10);
    for (int i = 0; i < 10; ++i) {
        const auto r = ctx.logits(i);
        for (size_t j = 0; j < r.size(); ++j) ASSERT_NEAR(r[j], batch[static_cast<size_t>(30 + i)][j], 1e-4);
    }
}

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const kiln::Error& e) {
        return e.what();
    }
    return "<no error>";
}

TEST(SyntheticModel, MissingTensorIsNamed) {
    Config c;
    const Weights w = make_weights(c);
    const std::string path = write_model(c, w, "llama_missing.gguf", "blk.1.ffn_up.weight");
    const std::string msg = error_of([&] { kiln::Model::load(path); });
    EXPECT_NE(msg.find("blk.1.ffn_up.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("missing"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[48, 80]"), std::string::npos) << msg;  // the expected shape
}

TEST(SyntheticModel, MisShapedTensorShowsBothShapes) {
    Config c;
    const Weights w = make_weights(c);
    const std::string path = write_model(c, w, "llama_misshaped.gguf", "", "blk.0.attn_k.weight");
    const std::string msg = error_of([&] { kiln::Model::load(path); });
    EXPECT_NE(msg.find("blk.0.attn_k.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[16, 48]"), std::string::npos) << msg;  // actual
    EXPECT_NE(msg.find("[48, 16]"), std::string::npos) << msg;  // expected
}

TEST(SyntheticModel, MissingBiasOfQwen2IsNamed) {
    Config c;
    c.arch = "qwen2";
    c.qkv_bias = true;
    const Weights w = make_weights(c);
    const std::string path = write_model(c, w, "qwen2_missing_bias.gguf", "blk.0.attn_v.bias");
    const std::string msg = error_of([&] { kiln::Model::load(path); });
    EXPECT_NE(msg.find("blk.0.attn_v.bias"), std::string::npos) << msg;
}

TEST(SyntheticModel, UnknownArchitectureListsSupported) {
    kiln::gguf::Writer wr;
    wr.set_string("general.architecture", "mamba9");
    const fs::path p = fs::path(KILN_BINARY_DIR) / "test_models" / "unknown_arch.gguf";
    fs::create_directories(p.parent_path());
    wr.write(p.string());
    const std::string msg = error_of([&] { kiln::Model::load(p.string()); });
    EXPECT_NE(msg.find("'mamba9'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("llama"), std::string::npos) << msg;
    EXPECT_NE(msg.find("qwen2"), std::string::npos) << msg;
}

TEST(SyntheticModel, PromptLongerThanContextSaysBothNumbers) {
    Config c;
    const Weights w = make_weights(c);
    const std::string path = write_model(c, w, "llama_ctx.gguf");
    kiln::ContextOptions o;
    o.n_ctx = 16;
    kiln::Context ctx(kiln::Model::load(path), o);
    const auto tokens = random_tokens(20, c.n_vocab, 1);
    const std::string msg = error_of([&] { ctx.decode(tokens); });
    EXPECT_NE(msg.find("20 tokens"), std::string::npos) << msg;
    EXPECT_NE(msg.find("16"), std::string::npos) << msg;
    EXPECT_EQ(ctx.n_past(), 0);  // unchanged

    ctx.decode(std::span<const int32_t>(tokens.data(), 10));
    const std::string msg2 = error_of([&] { ctx.decode(std::span<const int32_t>(tokens.data(), 7)); });
    EXPECT_NE(msg2.find("10 of 16"), std::string::npos) << msg2;
    EXPECT_EQ(ctx.n_past(), 10);

    const int32_t bad = 1000;
    EXPECT_NE(error_of([&] { ctx.decode(std::span<const int32_t>(&bad, 1)); }).find("1000"), std::string::npos);
    EXPECT_NE(error_of([&] {
                  kiln::ContextOptions v;
                  v.backend = "metal";
                  kiln::Context x(kiln::Model::load(path), v);
              }).find("unknown backend 'metal'"),
              std::string::npos);
}

TEST(SyntheticModel, InfoDescribesTheModel) {
    Config c;
    c.tied = false;
    const Weights w = make_weights(c);
    const std::string path = write_model(c, w, "llama_info.gguf");
    int calls = 0;
    kiln::LoadOptions lo;
    lo.progress = [&](float f) {
        EXPECT_GE(f, 0.0f);
        EXPECT_LE(f, 1.0f);
        ++calls;
        return true;
    };
    const kiln::Model m = kiln::Model::load(path, lo);
    EXPECT_GT(calls, 2);
    const kiln::ModelInfo& i = m.info();
    EXPECT_EQ(i.arch, "llama");
    EXPECT_EQ(i.n_vocab, c.n_vocab);
    EXPECT_EQ(i.n_ctx_train, 128);
    EXPECT_EQ(i.n_layer, c.n_layer);
    EXPECT_EQ(i.n_head_kv, c.n_head_kv);
    EXPECT_EQ(i.head_dim, c.head_dim);

    // Its metadata has a token list but no tokenizer.ggml.model: logits work, the tokenizer says why not.
    EXPECT_FALSE(m.has_tokenizer());
    EXPECT_THROW(m.tokenizer(), kiln::Error);

    lo.progress = [](float f) { return f < 0.5f; };
    EXPECT_NE(error_of([&] { kiln::Model::load(path, lo); }).find("cancelled"), std::string::npos);
}

}  // namespace
