// Synthetic gemma3 models written with the GGUF writer (no shared data needed), checked against a
// naive double-precision forward pass written here from the definitions: every position's K/V kept
// (no ring), the sliding window applied as a mask.
//  - short prompts: global and sliding layers, the pattern as a period and as a per-layer array,
//    attention and final soft-capping, rope.freq_base_swa, a window the prompt crosses;
//  - a long context (> 32K tokens, window 512): the sliding layers' KV memory stays the size of the
//    window plus one batch whatever the context, while the logits after the long decode still
//    match the naive forward.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "gguf/writer.h"
#include "kiln/kiln.h"

namespace {

namespace fs = std::filesystem;

struct Config {
    int n_vocab = 53, n_embd = 32, n_layer = 3, n_head = 4, n_head_kv = 2, head_dim = 16, n_ff = 48;
    int window = 8;
    int period = 0;                  // sliding_window_pattern as a period (0: key absent, default 6)
    std::vector<bool> pattern;       // ... or as one flag per layer (true: sliding)
    float freq_base = 1e6f;          // global layers
    float freq_base_swa = 0.0f;      // local layers (0: key absent, default 10000)
    float linear_scale = 8.0f;       // global layers' linear RoPE scaling (0: none)
    float attn_softcap = 0.0f;
    float final_softcap = 0.0f;
    bool yarn = false;               // rope.scaling.type yarn (a load error for gemma3)
    uint32_t seed = 1;

    bool sliding(int il) const {
        if (window <= 0) return false;
        if (!pattern.empty()) return pattern[static_cast<size_t>(il)];
        const int p = period > 0 ? period : 6;
        return il % p < p - 1;
    }
};

struct LayerW {
    std::vector<float> attn_norm, wq, wk, wv, wo, q_norm, k_norm, post_attn_norm, ffn_norm, gate, up, down, post_ffw_norm;
};
struct Weights {
    std::vector<float> tok_embd, output_norm;
    std::vector<LayerW> layers;
};

Weights make_weights(const Config& c) {
    std::mt19937 rng(c.seed);
    std::uniform_real_distribution<float> U(-1.0f, 1.0f);
    auto mat = [&](int cols, int rows, float scale) {
        std::vector<float> m(static_cast<size_t>(cols) * static_cast<size_t>(rows));
        for (float& x : m) x = U(rng) * scale;
        return m;
    };
    auto vec = [&](int n, float center, float spread) {
        std::vector<float> v(static_cast<size_t>(n));
        for (float& x : v) x = center + U(rng) * spread;
        return v;
    };
    const int E = c.n_embd, QD = c.n_head * c.head_dim, KD = c.n_head_kv * c.head_dim;
    const float se = 1.0f / std::sqrt(static_cast<float>(E));
    Weights w;
    w.tok_embd = mat(E, c.n_vocab, 0.2f);
    w.output_norm = vec(E, 1.0f, 0.2f);
    for (int il = 0; il < c.n_layer; ++il) {
        LayerW L;
        L.attn_norm = vec(E, 1.0f, 0.2f);
        L.wq = mat(E, QD, 2.0f * se);
        L.wk = mat(E, KD, 2.0f * se);
        L.wv = mat(E, KD, se);
        L.wo = mat(QD, E, 1.0f / std::sqrt(static_cast<float>(QD)));
        L.q_norm = vec(c.head_dim, 1.0f, 0.5f);
        L.k_norm = vec(c.head_dim, 1.0f, 0.5f);
        L.post_attn_norm = vec(E, 1.0f, 0.3f);
        L.ffn_norm = vec(E, 1.0f, 0.2f);
        L.gate = mat(E, c.n_ff, 2.0f * se);
        L.up = mat(E, c.n_ff, se);
        L.down = mat(c.n_ff, E, 1.0f / std::sqrt(static_cast<float>(c.n_ff)));
        L.post_ffw_norm = vec(E, 1.0f, 0.3f);
        w.layers.push_back(std::move(L));
    }
    return w;
}

std::string write_model(const Config& c, const Weights& w, const std::string& file) {
    kiln::gguf::Writer wr;
    const std::string a = "gemma3.";
    wr.set_string("general.architecture", "gemma3");
    wr.set_string("general.name", "synthetic-gemma3");
    wr.set_u32(a + "context_length", 131072);
    wr.set_u32(a + "embedding_length", static_cast<uint32_t>(c.n_embd));
    wr.set_u32(a + "block_count", static_cast<uint32_t>(c.n_layer));
    wr.set_u32(a + "feed_forward_length", static_cast<uint32_t>(c.n_ff));
    wr.set_u32(a + "attention.head_count", static_cast<uint32_t>(c.n_head));
    wr.set_u32(a + "attention.head_count_kv", static_cast<uint32_t>(c.n_head_kv));
    wr.set_u32(a + "attention.key_length", static_cast<uint32_t>(c.head_dim));
    wr.set_u32(a + "attention.value_length", static_cast<uint32_t>(c.head_dim));
    wr.set_f32(a + "attention.layer_norm_rms_epsilon", 1e-6f);
    wr.set_f32(a + "rope.freq_base", c.freq_base);
    if (c.freq_base_swa > 0) wr.set_f32(a + "rope.freq_base_swa", c.freq_base_swa);
    if (c.yarn) {
        wr.set_string(a + "rope.scaling.type", "yarn");
        wr.set_f32(a + "rope.scaling.factor", 8.0f);
    } else if (c.linear_scale > 0) {
        wr.set_string(a + "rope.scaling.type", "linear");
        wr.set_f32(a + "rope.scaling.factor", c.linear_scale);
    }
    if (c.window > 0) wr.set_u32(a + "attention.sliding_window", static_cast<uint32_t>(c.window));
    if (c.period > 0) wr.set_u32(a + "attention.sliding_window_pattern", static_cast<uint32_t>(c.period));
    if (!c.pattern.empty()) {
        kiln::gguf::Value::Array flags;
        for (bool b : c.pattern) flags.push_back(kiln::gguf::Value::make_bool(b));
        wr.set(a + "attention.sliding_window_pattern", kiln::gguf::Value::make_array(kiln::gguf::ValueType::BOOL, flags));
    }
    if (c.attn_softcap > 0) wr.set_f32(a + "attn_logit_softcapping", c.attn_softcap);
    if (c.final_softcap > 0) wr.set_f32(a + "final_logit_softcapping", c.final_softcap);
    std::vector<std::string> toks;
    for (int i = 0; i < c.n_vocab; ++i) toks.push_back(fmt::format("t{}", i));
    wr.set_strings("tokenizer.ggml.tokens", toks);

    auto add = [&](const std::string& name, const std::vector<float>& data, uint64_t cols, uint64_t rows) {
        const std::vector<uint64_t> shape = rows == 0 ? std::vector<uint64_t>{cols} : std::vector<uint64_t>{cols, rows};
        wr.add_tensor_f32(name, kiln::TensorType::F32, shape, data);
    };
    const uint64_t E = static_cast<uint64_t>(c.n_embd), V = static_cast<uint64_t>(c.n_vocab);
    const uint64_t HD = static_cast<uint64_t>(c.head_dim);
    const uint64_t QD = static_cast<uint64_t>(c.n_head) * HD, KD = static_cast<uint64_t>(c.n_head_kv) * HD;
    const uint64_t F = static_cast<uint64_t>(c.n_ff);
    add("token_embd.weight", w.tok_embd, E, V);
    add("output_norm.weight", w.output_norm, E, 0);
    for (int il = 0; il < c.n_layer; ++il) {
        const LayerW& L = w.layers[static_cast<size_t>(il)];
        auto n = [&](const char* s) { return fmt::format("blk.{}.{}", il, s); };
        add(n("attn_norm.weight"), L.attn_norm, E, 0);
        add(n("attn_q.weight"), L.wq, E, QD);
        add(n("attn_k.weight"), L.wk, E, KD);
        add(n("attn_v.weight"), L.wv, E, KD);
        add(n("attn_output.weight"), L.wo, QD, E);
        add(n("attn_q_norm.weight"), L.q_norm, HD, 0);
        add(n("attn_k_norm.weight"), L.k_norm, HD, 0);
        add(n("post_attention_norm.weight"), L.post_attn_norm, E, 0);
        add(n("ffn_norm.weight"), L.ffn_norm, E, 0);
        add(n("ffn_gate.weight"), L.gate, E, F);
        add(n("ffn_up.weight"), L.up, E, F);
        add(n("ffn_down.weight"), L.down, F, E);
        add(n("post_ffw_norm.weight"), L.post_ffw_norm, E, 0);
    }
    const fs::path dir = fs::path(KILN_BINARY_DIR) / "test_models";
    fs::create_directories(dir);
    const std::string path = (dir / file).string();
    wr.write(path);
    return path;
}

// ---- the naive forward: double precision, every position's K/V kept, the window as a mask ----

using Vec = std::vector<double>;

Vec matvec(const std::vector<float>& W, int cols, int rows, const Vec& x) {
    Vec y(static_cast<size_t>(rows), 0.0);
    for (int r = 0; r < rows; ++r) {
        double s = 0;
        const float* wr = W.data() + static_cast<size_t>(r) * static_cast<size_t>(cols);
        for (int i = 0; i < cols; ++i) s += static_cast<double>(wr[i]) * x[static_cast<size_t>(i)];
        y[static_cast<size_t>(r)] = s;
    }
    return y;
}

// RMS norm of each group of w.size() elements of x.
Vec rmsnorm(const Vec& x, const std::vector<float>& w) {
    const size_t g = w.size();
    Vec y(x.size());
    for (size_t b = 0; b < x.size(); b += g) {
        double ss = 0;
        for (size_t i = 0; i < g; ++i) ss += x[b + i] * x[b + i];
        const double s = 1.0 / std::sqrt(ss / static_cast<double>(g) + 1e-6);
        for (size_t i = 0; i < g; ++i) y[b + i] = x[b + i] * s * w[i];
    }
    return y;
}

void rope_neox(Vec& v, int n_heads, int hd, double pos, double base) {
    for (int h = 0; h < n_heads; ++h) {
        double* x = v.data() + static_cast<size_t>(h) * static_cast<size_t>(hd);
        for (int i = 0; i < hd / 2; ++i) {
            const double theta = pos * std::pow(base, -2.0 * i / hd);
            const double x0 = x[i], x1 = x[i + hd / 2];
            x[i] = x0 * std::cos(theta) - x1 * std::sin(theta);
            x[i + hd / 2] = x0 * std::sin(theta) + x1 * std::cos(theta);
        }
    }
}

double gelu_tanh(double x) { return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }

// Logits of tokens[i] at absolute position pos0 + i. With pos0 > 0 the tokens before are unknown:
// the result is exact only where every layer's window lies inside [pos0, ...) (all layers sliding).
std::vector<Vec> naive_forward(const Config& c, const Weights& w, const std::vector<int32_t>& tokens, int64_t pos0 = 0) {
    const int E = c.n_embd, QD = c.n_head * c.head_dim, KD = c.n_head_kv * c.head_dim, hd = c.head_dim;
    const size_t T = tokens.size();
    std::vector<Vec> x(T);
    for (size_t t = 0; t < T; ++t) {
        x[t].resize(static_cast<size_t>(E));
        for (int i = 0; i < E; ++i)
            x[t][static_cast<size_t>(i)] =
                w.tok_embd[static_cast<size_t>(tokens[t]) * static_cast<size_t>(E) + static_cast<size_t>(i)] *
                std::sqrt(static_cast<double>(E));
    }
    for (int il = 0; il < c.n_layer; ++il) {
        const LayerW& L = w.layers[static_cast<size_t>(il)];
        const bool local = c.sliding(il);
        const double base = local ? (c.freq_base_swa > 0 ? c.freq_base_swa : 10000.0) : c.freq_base;
        const double pscale = !local && c.linear_scale > 0 ? 1.0 / c.linear_scale : 1.0;
        std::vector<Vec> q(T), k(T), v(T);
        for (size_t t = 0; t < T; ++t) {
            const Vec h = rmsnorm(x[t], L.attn_norm);
            q[t] = rmsnorm(matvec(L.wq, E, QD, h), L.q_norm);
            k[t] = rmsnorm(matvec(L.wk, E, KD, h), L.k_norm);
            v[t] = matvec(L.wv, E, KD, h);
            const double pos = static_cast<double>(pos0 + static_cast<int64_t>(t)) * pscale;
            rope_neox(q[t], c.n_head, hd, pos, base);
            rope_neox(k[t], c.n_head_kv, hd, pos, base);
        }
        for (size_t t = 0; t < T; ++t) {
            const size_t first = local && t + 1 > static_cast<size_t>(c.window) ? t + 1 - static_cast<size_t>(c.window) : 0;
            Vec att(static_cast<size_t>(QD), 0.0);
            for (int h = 0; h < c.n_head; ++h) {
                const int kh = h / (c.n_head / c.n_head_kv);
                std::vector<double> s(t + 1 - first);
                double mx = -1e300;
                for (size_t j = first; j <= t; ++j) {
                    double d = 0;
                    for (int i = 0; i < hd; ++i)
                        d += q[t][static_cast<size_t>(h * hd + i)] * k[j][static_cast<size_t>(kh * hd + i)];
                    d /= std::sqrt(static_cast<double>(hd));
                    if (c.attn_softcap > 0) d = c.attn_softcap * std::tanh(d / c.attn_softcap);
                    s[j - first] = d;
                    mx = std::max(mx, d);
                }
                double sum = 0;
                for (double& e : s) sum += (e = std::exp(e - mx));
                for (size_t j = first; j <= t; ++j)
                    for (int i = 0; i < hd; ++i)
                        att[static_cast<size_t>(h * hd + i)] += s[j - first] / sum * v[j][static_cast<size_t>(kh * hd + i)];
            }
            const Vec o = rmsnorm(matvec(L.wo, QD, E, att), L.post_attn_norm);
            for (int i = 0; i < E; ++i) x[t][static_cast<size_t>(i)] += o[static_cast<size_t>(i)];
            const Vec h = rmsnorm(x[t], L.ffn_norm);
            const Vec g = matvec(L.gate, E, c.n_ff, h), u = matvec(L.up, E, c.n_ff, h);
            Vec a(static_cast<size_t>(c.n_ff));
            for (size_t i = 0; i < a.size(); ++i) a[i] = gelu_tanh(g[i]) * u[i];
            const Vec d = rmsnorm(matvec(L.down, c.n_ff, E, a), L.post_ffw_norm);
            for (int i = 0; i < E; ++i) x[t][static_cast<size_t>(i)] += d[static_cast<size_t>(i)];
        }
    }
    std::vector<Vec> logits(T);
    for (size_t t = 0; t < T; ++t) {
        logits[t] = matvec(w.tok_embd, E, c.n_vocab, rmsnorm(x[t], w.output_norm));
        if (c.final_softcap > 0)
            for (double& l : logits[t]) l = c.final_softcap * std::tanh(l / c.final_softcap);
    }
    return logits;
}

std::vector<int32_t> random_tokens(size_t n, int n_vocab, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<int32_t> t(n);
    for (auto& x : t) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(n_vocab));
    return t;
}

// max |ours - ref| / max |ref| over the rows given.
double rel_diff(const std::vector<std::vector<float>>& ours, const std::vector<Vec>& ref) {
    double md = 0, mx = 0;
    for (size_t p = 0; p < ref.size(); ++p)
        for (size_t i = 0; i < ref[p].size(); ++i) {
            md = std::max(md, std::abs(ours[p][i] - ref[p][i]));
            mx = std::max(mx, std::abs(ref[p][i]));
        }
    return md / mx;
}

std::vector<float> row(const kiln::Context& ctx, int64_t i) {
    const auto r = ctx.logits(i);
    return {r.begin(), r.end()};
}

struct Case {
    const char* name;
    Config config;
};

std::vector<Case> cases() {
    std::vector<Case> v;
    Config base;  // 3 layers, period 2: sliding, global, sliding
    base.period = 2;
    v.push_back({"period2_window8", base});
    Config caps = base;
    caps.attn_softcap = 2.0f;   // small enough to bend the scores
    caps.final_softcap = 3.0f;  // ... and the logits
    caps.freq_base_swa = 500.0f;
    caps.seed = 5;
    v.push_back({"softcaps_freq_base_swa", caps});
    Config arr = base;
    arr.n_layer = 4;
    arr.pattern = {false, true, true, false};  // per-layer flags
    arr.window = 5;
    arr.linear_scale = 0.0f;
    arr.seed = 9;
    v.push_back({"pattern_array_window5", arr});
    Config six = base;
    six.period = 0;  // default 6: layers 0-4 slide, layer 5 is global
    six.n_layer = 6;
    six.n_head_kv = 1;
    six.seed = 13;
    v.push_back({"default_period6", six});
    Config none = base;
    none.window = 0;  // no sliding window: every layer global
    none.seed = 17;
    v.push_back({"no_window", none});
    return v;
}

// gtest prints a parameter's name, not its bytes (padding would read as uninitialised).
[[maybe_unused]] void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class Gemma3Naive : public ::testing::TestWithParam<Case> {};

// Whole prompt in one batch, token by token (the sliding layers keep a ring of exactly their
// window) and in batches of 3 (a ring of window + 2), against the naive forward.
TEST_P(Gemma3Naive, MatchesDoublePrecisionReference) {
    const Case& cs = GetParam();
    const Config& c = cs.config;
    const Weights w = make_weights(c);
    const std::string path = write_model(c, w, fmt::format("gemma3-{}.gguf", cs.name));
    const auto tokens = random_tokens(29, c.n_vocab, c.seed + 100);
    const auto ref = naive_forward(c, w, tokens);
    const kiln::Model model = kiln::Model::load(path);

    for (const int64_t n_batch : {int64_t{512}, int64_t{1}, int64_t{3}}) {
        SCOPED_TRACE(fmt::format("n_batch {}", n_batch));
        kiln::ContextOptions o;
        o.n_ctx = 40;
        o.n_threads = 2;
        o.n_batch = n_batch;
        o.kv_type_k = o.kv_type_v = kiln::KvType::F32;
        kiln::Context ctx(model, o);
        const kiln::KvStats kv = ctx.kv_stats();
        int n_sliding = 0;
        for (int il = 0; il < c.n_layer; ++il) n_sliding += c.sliding(il);
        EXPECT_EQ(kv.n_sliding_layers, n_batch < o.n_ctx - c.window ? n_sliding : 0) << ctx.kv_summary();
        if (kv.n_sliding_layers > 0) {
            EXPECT_EQ(kv.sliding_slots, c.window + n_batch - 1);
        }

        std::vector<std::vector<float>> ours;
        if (n_batch == 1) {
            for (const int32_t t : tokens) {
                ctx.decode(std::span<const int32_t>(&t, 1));
                ours.push_back(row(ctx, -1));
            }
        } else {
            ctx.decode(tokens, true);
            for (size_t i = 0; i < tokens.size(); ++i) ours.push_back(row(ctx, static_cast<int64_t>(i)));
        }
        const double d = rel_diff(ours, ref);
        std::printf("[ gemma3    ] %-26s n_batch %3lld: max|d|/max|ref| = %.3g\n", cs.name, static_cast<long long>(n_batch), d);
        EXPECT_LT(d, 2e-4);
    }
}

INSTANTIATE_TEST_SUITE_P(Synthetic, Gemma3Naive, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return std::string(info.param.name); });

// > 32K tokens through two sliding layers (window 512) fed in batches of 4096: the KV memory is
// two rings of 512 + 4095 slots, the same for a 128K context, and the logits at the end (after
// the batches, then token by token) match the naive forward, which keeps every position.
TEST(Gemma3LongContext, SlidingLayersKeepAWindowSizedRing) {
    Config c;
    c.n_vocab = 37;
    c.n_embd = 16;
    c.n_layer = 2;  // both sliding (default period 6)
    c.n_head = 2;
    c.n_head_kv = 1;
    c.head_dim = 8;
    c.n_ff = 24;
    c.window = 512;
    c.seed = 21;
    const Weights w = make_weights(c);
    const std::string path = write_model(c, w, "gemma3-long.gguf");
    const kiln::Model model = kiln::Model::load(path);

    const int64_t n_prefill = 33000, n_step = 4, n_batch = 4096;
    const auto tokens = random_tokens(static_cast<size_t>(n_prefill + n_step), c.n_vocab, 77);

    kiln::ContextOptions o;
    o.n_ctx = 34000;
    o.n_threads = 2;
    o.n_batch = n_batch;
    o.kv_type_k = o.kv_type_v = kiln::KvType::F32;
    kiln::Context ctx(model, o);

    // Memory: window + batch - 1 slots per layer, K and V of one head of 8 floats each.
    const kiln::KvStats kv = ctx.kv_stats();
    const size_t row_bytes = 2 * 8 * 4;
    const size_t ring = static_cast<size_t>(c.window + n_batch - 1);
    EXPECT_EQ(kv.n_full_layers, 0);
    EXPECT_EQ(kv.n_sliding_layers, 2);
    EXPECT_EQ(kv.sliding_slots, static_cast<int64_t>(ring));
    EXPECT_EQ(kv.sliding_bytes_per_token, row_bytes);
    EXPECT_EQ(ctx.kv_bytes(), 2 * ring * row_bytes);
    EXPECT_LT(ctx.kv_bytes() * 7, 2 * static_cast<size_t>(o.n_ctx) * row_bytes);  // not n_ctx-sized
    {
        kiln::ContextOptions big = o;
        big.n_ctx = 131072;
        EXPECT_EQ(kiln::Context(model, big).kv_bytes(), ctx.kv_bytes()) << "a 128K context costs the same";
    }
    std::printf("[ gemma3    ] long context: %s\n", ctx.kv_summary().c_str());

    const auto t0 = std::chrono::steady_clock::now();
    // The prompt in batches of n_batch; the logits of its last 3 positions come with the last batch.
    ctx.decode(std::span<const int32_t>(tokens.data(), static_cast<size_t>(n_prefill)), true);
    std::vector<std::vector<float>> ours;
    std::vector<int64_t> positions;
    for (int64_t p = n_prefill - 3; p < n_prefill; ++p) {
        ours.push_back(row(ctx, p));
        positions.push_back(p);
    }
    // Then a few tokens one at a time.
    for (int64_t p = n_prefill; p < n_prefill + n_step; ++p) {
        ctx.decode(std::span<const int32_t>(tokens.data() + p, 1));
        ours.push_back(row(ctx, -1));
        positions.push_back(p);
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(ctx.n_past(), n_prefill + n_step);

    // The naive forward needs only the 2 * (window - 1) positions before the first one checked:
    // beyond those no sliding layer looks back.
    const int64_t start = positions.front() - 2 * (c.window - 1);
    const std::vector<int32_t> tail(tokens.begin() + start, tokens.end());
    const auto full = naive_forward(c, w, tail, start);
    std::vector<Vec> ref;
    for (const int64_t p : positions) ref.push_back(full[static_cast<size_t>(p - start)]);
    const double d = rel_diff(ours, ref);
    std::printf("[ gemma3    ] long context: %lld tokens in %.2f s; logits at positions %lld..%lld: max|d|/max|ref| = %.3g\n",
                static_cast<long long>(n_prefill + n_step), secs, static_cast<long long>(positions.front()),
                static_cast<long long>(positions.back()), d);
    EXPECT_LT(d, 2e-4);
}

void expect_load_error(const Config& c, const std::string& file, const std::string& needle) {
    const std::string path = write_model(c, make_weights(c), file);
    try {
        (void)kiln::Model::load(path);
        ADD_FAILURE() << file << " loaded; expected an error mentioning '" << needle << "'";
    } catch (const kiln::Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
}

TEST(Gemma3Load, UnsupportedValuesAreLoadErrors) {
    Config short_pattern;
    short_pattern.pattern = {true, false};  // 2 flags for 3 layers
    expect_load_error(short_pattern, "gemma3-short-pattern.gguf", "sliding_window_pattern");
    Config yarn;
    yarn.yarn = true;
    expect_load_error(yarn, "gemma3-yarn.gguf", "YaRN");
}

}  // namespace
