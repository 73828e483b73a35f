// Synthetic gpt-oss models written with the GGUF writer (no shared data needed), against a naive
// double-precision forward written here from the definitions: attention sinks, sliding-window and
// full layers alternating, biases on Q/K/V/O, a router with bias choosing the top-k experts by
// their logits and weighting them by a softmax over the chosen ones, experts with biases and the
// clamped SwiGLU. Plus the load errors for values kiln does not support. (YaRN is checked against
// llama.cpp on the shared gpt-oss-tiny files; here RoPE is unscaled.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "gguf/writer.h"
#include "kiln/kiln.h"

namespace {

namespace fs = std::filesystem;

struct Config {
    int n_vocab = 47, n_embd = 32, n_layer = 3, n_head = 4, n_head_kv = 2, head_dim = 8;
    int n_expert = 4, n_used = 2, n_ff = 24;
    int window = 5, period = 0;  // period 0: key absent (default 2)
    float freq_base = 150000.0f;
    uint32_t seed = 1;
    // Knobs for the load-error tests.
    int gating_func = 0;  // 0: key absent
    bool pattern_array = false;

    bool sliding(int il) const {
        const int p = period > 0 ? period : 2;
        return il % p < p - 1;
    }
};

struct LayerW {
    std::vector<float> attn_norm, wq, wk, wv, wo, bq, bk, bv, bo, sinks, ffn_norm, router, router_b;
    std::vector<float> gate, up, down, gate_b, up_b, down_b;  // [X][F][E], [X][F][E], [X][E][F]; biases [X][F], [X][E]
};
struct Weights {
    std::vector<float> tok_embd, output_norm, output;
    std::vector<LayerW> layers;
};

Weights make_weights(const Config& c) {
    std::mt19937 rng(c.seed);
    std::uniform_real_distribution<float> U(-1.0f, 1.0f);
    auto vec = [&](size_t n, float center, float spread) {
        std::vector<float> v(n);
        for (float& x : v) x = center + U(rng) * spread;
        return v;
    };
    const size_t E = static_cast<size_t>(c.n_embd), HD = static_cast<size_t>(c.head_dim);
    const size_t QD = static_cast<size_t>(c.n_head) * HD, KD = static_cast<size_t>(c.n_head_kv) * HD;
    const size_t X = static_cast<size_t>(c.n_expert), F = static_cast<size_t>(c.n_ff);
    const float se = 1.0f / std::sqrt(static_cast<float>(E));
    Weights w;
    w.tok_embd = vec(E * static_cast<size_t>(c.n_vocab), 0.0f, 1.0f);
    w.output_norm = vec(E, 1.0f, 0.2f);
    w.output = vec(E * static_cast<size_t>(c.n_vocab), 0.0f, se);
    for (int il = 0; il < c.n_layer; ++il) {
        LayerW L;
        L.attn_norm = vec(E, 1.0f, 0.2f);
        L.wq = vec(QD * E, 0.0f, 2.0f * se);
        L.wk = vec(KD * E, 0.0f, 2.0f * se);
        L.wv = vec(KD * E, 0.0f, se);
        L.wo = vec(E * QD, 0.0f, 1.0f / std::sqrt(static_cast<float>(QD)));
        L.bq = vec(QD, 0.0f, 0.5f);
        L.bk = vec(KD, 0.0f, 0.5f);
        L.bv = vec(KD, 0.0f, 0.5f);
        L.bo = vec(E, 0.0f, 0.2f);
        L.sinks = vec(static_cast<size_t>(c.n_head), 0.0f, 2.0f);
        L.ffn_norm = vec(E, 1.0f, 0.2f);
        L.router = vec(X * E, 0.0f, 3.0f * se);
        L.router_b = vec(X, 0.0f, 0.5f);
        // Large enough that the clamps at +-7 are reached.
        L.gate = vec(X * F * E, 0.0f, 6.0f * se);
        L.up = vec(X * F * E, 0.0f, 6.0f * se);
        L.down = vec(X * E * F, 0.0f, 1.0f / std::sqrt(static_cast<float>(F)));
        L.gate_b = vec(X * F, 0.0f, 1.0f);
        L.up_b = vec(X * F, 0.0f, 1.0f);
        L.down_b = vec(X * E, 0.0f, 0.2f);
        w.layers.push_back(std::move(L));
    }
    return w;
}

std::string write_model(const Config& c, const Weights& w, const std::string& file) {
    kiln::gguf::Writer wr;
    const std::string a = "gpt-oss.";
    wr.set_string("general.architecture", "gpt-oss");
    wr.set_string("general.name", "synthetic-gpt-oss");
    wr.set_u32(a + "context_length", 4096);
    wr.set_u32(a + "embedding_length", static_cast<uint32_t>(c.n_embd));
    wr.set_u32(a + "block_count", static_cast<uint32_t>(c.n_layer));
    wr.set_u32(a + "feed_forward_length", static_cast<uint32_t>(c.n_ff));
    wr.set_u32(a + "expert_feed_forward_length", static_cast<uint32_t>(c.n_ff));
    wr.set_u32(a + "expert_count", static_cast<uint32_t>(c.n_expert));
    wr.set_u32(a + "expert_used_count", static_cast<uint32_t>(c.n_used));
    wr.set_u32(a + "attention.head_count", static_cast<uint32_t>(c.n_head));
    wr.set_u32(a + "attention.head_count_kv", static_cast<uint32_t>(c.n_head_kv));
    wr.set_u32(a + "attention.key_length", static_cast<uint32_t>(c.head_dim));
    wr.set_u32(a + "attention.value_length", static_cast<uint32_t>(c.head_dim));
    wr.set_f32(a + "attention.layer_norm_rms_epsilon", 1e-5f);
    wr.set_u32(a + "attention.sliding_window", static_cast<uint32_t>(c.window));
    if (c.period > 0) wr.set_u32(a + "attention.sliding_window_pattern", static_cast<uint32_t>(c.period));
    if (c.pattern_array) wr.set_i32s(a + "attention.sliding_window_pattern", std::vector<int32_t>(static_cast<size_t>(c.n_layer), 1));
    if (c.gating_func > 0) wr.set_u32(a + "expert_gating_func", static_cast<uint32_t>(c.gating_func));
    wr.set_u32(a + "rope.dimension_count", static_cast<uint32_t>(c.head_dim));
    wr.set_f32(a + "rope.freq_base", c.freq_base);
    std::vector<std::string> toks;
    for (int i = 0; i < c.n_vocab; ++i) toks.push_back(fmt::format("t{}", i));
    wr.set_strings("tokenizer.ggml.tokens", toks);

    auto add = [&](const std::string& name, const std::vector<float>& data, std::vector<uint64_t> shape) {
        wr.add_tensor_f32(name, kiln::TensorType::F32, std::move(shape), data);
    };
    const uint64_t E = static_cast<uint64_t>(c.n_embd), V = static_cast<uint64_t>(c.n_vocab);
    const uint64_t HD = static_cast<uint64_t>(c.head_dim);
    const uint64_t QD = static_cast<uint64_t>(c.n_head) * HD, KD = static_cast<uint64_t>(c.n_head_kv) * HD;
    const uint64_t X = static_cast<uint64_t>(c.n_expert), F = static_cast<uint64_t>(c.n_ff);
    add("token_embd.weight", w.tok_embd, {E, V});
    add("output_norm.weight", w.output_norm, {E});
    add("output.weight", w.output, {E, V});
    for (int il = 0; il < c.n_layer; ++il) {
        const LayerW& L = w.layers[static_cast<size_t>(il)];
        auto n = [&](const char* s) { return fmt::format("blk.{}.{}", il, s); };
        add(n("attn_norm.weight"), L.attn_norm, {E});
        add(n("attn_q.weight"), L.wq, {E, QD});
        add(n("attn_k.weight"), L.wk, {E, KD});
        add(n("attn_v.weight"), L.wv, {E, KD});
        add(n("attn_output.weight"), L.wo, {QD, E});
        add(n("attn_q.bias"), L.bq, {QD});
        add(n("attn_k.bias"), L.bk, {KD});
        add(n("attn_v.bias"), L.bv, {KD});
        add(n("attn_output.bias"), L.bo, {E});
        add(n("attn_sinks.weight"), L.sinks, {static_cast<uint64_t>(c.n_head)});
        add(n("post_attention_norm.weight"), L.ffn_norm, {E});
        add(n("ffn_gate_inp.weight"), L.router, {E, X});
        add(n("ffn_gate_inp.bias"), L.router_b, {X});
        add(n("ffn_gate_exps.weight"), L.gate, {E, F, X});
        add(n("ffn_up_exps.weight"), L.up, {E, F, X});
        add(n("ffn_down_exps.weight"), L.down, {F, E, X});
        add(n("ffn_gate_exps.bias"), L.gate_b, {F, X});
        add(n("ffn_up_exps.bias"), L.up_b, {F, X});
        add(n("ffn_down_exps.bias"), L.down_b, {E, X});
    }
    const fs::path dir = fs::path(KILN_BINARY_DIR) / "test_models";
    fs::create_directories(dir);
    const std::string path = (dir / file).string();
    wr.write(path);
    return path;
}

// ---- the naive forward ------------------------------------------------------------------------

using Vec = std::vector<double>;

// y = W x (+ b), W: rows of `cols` floats starting at W + offset.
Vec affine(const std::vector<float>& W, size_t offset, int cols, int rows, const Vec& x, const std::vector<float>* b = nullptr,
           size_t boff = 0) {
    Vec y(static_cast<size_t>(rows), 0.0);
    for (int r = 0; r < rows; ++r) {
        double s = b ? (*b)[boff + static_cast<size_t>(r)] : 0.0;
        const float* wr = W.data() + offset + static_cast<size_t>(r) * static_cast<size_t>(cols);
        for (int i = 0; i < cols; ++i) s += static_cast<double>(wr[i]) * x[static_cast<size_t>(i)];
        y[static_cast<size_t>(r)] = s;
    }
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

std::vector<Vec> naive_forward(const Config& c, const Weights& w, const std::vector<int32_t>& tokens) {
    const int E = c.n_embd, QD = c.n_head * c.head_dim, KD = c.n_head_kv * c.head_dim, hd = c.head_dim, F = c.n_ff;
    const size_t T = tokens.size();
    std::vector<Vec> x(T);
    for (size_t t = 0; t < T; ++t)
        x[t] = Vec(w.tok_embd.begin() + static_cast<long>(tokens[t]) * E, w.tok_embd.begin() + (static_cast<long>(tokens[t]) + 1) * E);
    for (int il = 0; il < c.n_layer; ++il) {
        const LayerW& L = w.layers[static_cast<size_t>(il)];
        const bool local = c.sliding(il);
        std::vector<Vec> q(T), k(T), v(T);
        for (size_t t = 0; t < T; ++t) {
            const Vec h = rmsnorm(x[t], L.attn_norm);
            q[t] = affine(L.wq, 0, E, QD, h, &L.bq);
            k[t] = affine(L.wk, 0, E, KD, h, &L.bk);
            v[t] = affine(L.wv, 0, E, KD, h, &L.bv);
            rope_neox(q[t], c.n_head, hd, static_cast<double>(t), c.freq_base);
            rope_neox(k[t], c.n_head_kv, hd, static_cast<double>(t), c.freq_base);
        }
        for (size_t t = 0; t < T; ++t) {
            const size_t first = local && t + 1 > static_cast<size_t>(c.window) ? t + 1 - static_cast<size_t>(c.window) : 0;
            Vec att(static_cast<size_t>(QD), 0.0);
            for (int h = 0; h < c.n_head; ++h) {
                const int kh = h / (c.n_head / c.n_head_kv);
                std::vector<double> s;
                for (size_t j = first; j <= t; ++j) {
                    double d = 0;
                    for (int i = 0; i < hd; ++i) d += q[t][static_cast<size_t>(h * hd + i)] * k[j][static_cast<size_t>(kh * hd + i)];
                    s.push_back(d / std::sqrt(static_cast<double>(hd)));
                }
                const double sink = L.sinks[static_cast<size_t>(h)];
                const double mx = std::max(sink, *std::max_element(s.begin(), s.end()));
                double sum = std::exp(sink - mx);  // the sink takes part in the denominator only
                for (double& e : s) sum += (e = std::exp(e - mx));
                for (size_t j = first; j <= t; ++j)
                    for (int i = 0; i < hd; ++i)
                        att[static_cast<size_t>(h * hd + i)] += s[j - first] / sum * v[j][static_cast<size_t>(kh * hd + i)];
            }
            const Vec o = affine(L.wo, 0, QD, E, att, &L.bo);
            for (int i = 0; i < E; ++i) x[t][static_cast<size_t>(i)] += o[static_cast<size_t>(i)];

            // Experts: top-k by the router logits, softmax over the chosen.
            const Vec h = rmsnorm(x[t], L.ffn_norm);
            const Vec logits = affine(L.router, 0, E, c.n_expert, h, &L.router_b);
            std::vector<int> order(static_cast<size_t>(c.n_expert));
            std::iota(order.begin(), order.end(), 0);
            std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)]; });
            double wsum = 0;
            std::vector<double> wts;
            for (int j = 0; j < c.n_used; ++j) wts.push_back(std::exp(logits[static_cast<size_t>(order[static_cast<size_t>(j)])] - logits[static_cast<size_t>(order[0])]));
            for (double e : wts) wsum += e;
            for (int j = 0; j < c.n_used; ++j) {
                const size_t e = static_cast<size_t>(order[static_cast<size_t>(j)]);
                const Vec g = affine(L.gate, e * static_cast<size_t>(F * E), E, F, h, &L.gate_b, e * static_cast<size_t>(F));
                const Vec u = affine(L.up, e * static_cast<size_t>(F * E), E, F, h, &L.up_b, e * static_cast<size_t>(F));
                Vec a(static_cast<size_t>(F));
                for (size_t i = 0; i < a.size(); ++i) {
                    const double gx = std::min(g[i], 7.0), uy = std::clamp(u[i], -7.0, 7.0);
                    a[i] = gx / (1.0 + std::exp(-1.702 * gx)) * (uy + 1.0);
                }
                const Vec d = affine(L.down, e * static_cast<size_t>(E * F), F, E, a, &L.down_b, e * static_cast<size_t>(E));
                for (int i = 0; i < E; ++i) x[t][static_cast<size_t>(i)] += wts[static_cast<size_t>(j)] / wsum * d[static_cast<size_t>(i)];
            }
        }
    }
    std::vector<Vec> out(T);
    for (size_t t = 0; t < T; ++t) out[t] = affine(w.output, 0, E, c.n_vocab, rmsnorm(x[t], w.output_norm));
    return out;
}

std::vector<int32_t> random_tokens(size_t n, int n_vocab, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<int32_t> t(n);
    for (auto& x : t) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(n_vocab));
    return t;
}

TEST(GptOssNaive, MatchesDoublePrecisionReference) {
    for (const int period : {0, 3}) {
        Config c;
        c.period = period;
        c.seed = 3 + static_cast<uint32_t>(period);
        SCOPED_TRACE(fmt::format("sliding_window_pattern {}", period));
        const Weights w = make_weights(c);
        const std::string path = write_model(c, w, fmt::format("gpt-oss-p{}.gguf", period));
        const auto tokens = random_tokens(23, c.n_vocab, 99);
        const auto ref = naive_forward(c, w, tokens);
        const kiln::Model model = kiln::Model::load(path);
        for (const int64_t n_batch : {int64_t{512}, int64_t{1}, int64_t{3}}) {
            kiln::ContextOptions o;
            o.n_ctx = 32;
            o.n_threads = 2;
            o.n_batch = n_batch;
            o.kv_type_k = o.kv_type_v = kiln::KvType::F32;
            kiln::Context ctx(model, o);
            int n_sliding = 0;
            for (int il = 0; il < c.n_layer; ++il) n_sliding += c.sliding(il);
            if (n_batch < 8) {
                EXPECT_EQ(ctx.kv_stats().n_sliding_layers, n_sliding);
                EXPECT_EQ(ctx.kv_stats().sliding_slots, c.window + n_batch - 1);
            }
            std::vector<std::vector<float>> ours;
            if (n_batch == 1) {
                for (const int32_t t : tokens) {
                    ctx.decode(std::span<const int32_t>(&t, 1));
                    const auto r = ctx.logits();
                    ours.emplace_back(r.begin(), r.end());
                }
            } else {
                ctx.decode(tokens, true);
                for (size_t i = 0; i < tokens.size(); ++i) {
                    const auto r = ctx.logits(static_cast<int64_t>(i));
                    ours.emplace_back(r.begin(), r.end());
                }
            }
            double md = 0, mx = 0;
            for (size_t p = 0; p < ref.size(); ++p)
                for (size_t i = 0; i < ref[p].size(); ++i) {
                    md = std::max(md, std::abs(ours[p][i] - ref[p][i]));
                    mx = std::max(mx, std::abs(ref[p][i]));
                }
            std::printf("[ gpt-oss   ] pattern %d n_batch %3lld: max|d|/max|ref| = %.3g\n", period, static_cast<long long>(n_batch),
                        md / mx);
            EXPECT_LT(md / mx, 2e-4) << "n_batch " << n_batch;
        }
    }
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

TEST(GptOssLoad, UnsupportedValuesAreLoadErrors) {
    Config gating;
    gating.gating_func = 1;
    expect_load_error(gating, "gpt-oss-gating1.gguf", "expert_gating_func");
    Config arr;
    arr.pattern_array = true;
    expect_load_error(arr, "gpt-oss-pattern-array.gguf", "sliding_window_pattern");
    Config win;
    win.window = 0;
    expect_load_error(win, "gpt-oss-window0.gguf", "sliding_window");
}

}  // namespace
