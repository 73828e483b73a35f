// Tiny random deepseek2 models written with kiln's GGUF writer, and a naive double-precision
// forward pass written from the definitions (MLA in its plain, non-absorbed form: every head's
// K and V expanded from the latent; MoE routed from the full score list), for the tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "gguf/writer.h"

namespace kiln::test::ds2 {

struct Config {
    int n_vocab = 53, n_embd = 32, n_layer = 3, n_head = 4;
    int q_lora = 0;  // 0: plain attn_q
    int kv_lora = 16, n_rot = 8, nope = 8, head_v = 12;
    int n_ff = 40;                                     // dense layers
    int n_expert = 6, n_used = 2, n_ff_exp = 16, n_shared = 1, n_dense = 1;
    bool joined_kv_b = false;  // attn_kv_b (DeepSeek-V2 files) instead of attn_k_b / attn_v_b
    bool mla_keys = true;      // split layout: write key_length_mla / value_length_mla (GLM-4.7-Flash)
    int gating = 1;            // expert_gating_func; 0: key absent
    bool probs_b = false;      // exp_probs_b per MoE layer
    bool norm_w = false;
    float w_scale = 1.0f;
    int n_group = 0, n_group_used = 0;  // expert_group_count / _used_count (0: absent)
    float yarn = 0.0f;                  // rope.scaling.factor with type yarn (0: no scaling)
    int yarn_orig_ctx = 16;
    float yarn_log_mul = 0.0707f;  // stored as 0.1 * mscale_all_dim
    float freq_base = 10000.0f;
    int n_nextn = 0;  // trailing MTP layers (counted in n_layer)
    uint32_t seed = 1;
};

using Mat = std::vector<float>;  // row-major

struct Layer {
    Mat attn_norm, wq, q_a, q_a_norm, q_b, kv_a, kv_a_norm;
    std::vector<Mat> k_b;  // per head [nope][kv_lora]
    std::vector<Mat> v_b;  // per head [head_v][kv_lora]
    Mat wo, ffn_norm;
    Mat gate, up, down;                  // dense
    Mat gate_inp, probs_b;               // router
    std::vector<Mat> g_e, u_e, d_e;      // per expert [F][E], [F][E], [E][F]
    Mat g_s, u_s, d_s;                   // shared
};
struct Weights {
    Mat tok_embd, output_norm, output;
    std::vector<Layer> layers;
};

inline Weights make_weights(const Config& c) {
    std::mt19937 rng(c.seed);
    std::uniform_real_distribution<float> U(-1.0f, 1.0f);
    auto mat = [&](int cols, int rows, float gain = 1.0f) {
        Mat m(static_cast<size_t>(cols) * static_cast<size_t>(rows));
        const float s = gain / std::sqrt(static_cast<float>(cols));
        for (float& x : m) x = U(rng) * s * 1.7f;
        return m;
    };
    auto vec = [&](int n, float center, float spread) {
        Mat v(static_cast<size_t>(n));
        for (float& x : v) x = center + U(rng) * spread;
        return v;
    };
    const int E = c.n_embd, H = c.n_head, HK = c.nope + c.n_rot;
    Weights w;
    w.tok_embd = mat(E, c.n_vocab, std::sqrt(static_cast<float>(E)));
    w.output_norm = vec(E, 1.0f, 0.2f);
    w.output = mat(E, c.n_vocab);
    for (int il = 0; il < c.n_layer; ++il) {
        Layer L;
        L.attn_norm = vec(E, 1.0f, 0.2f);
        if (c.q_lora > 0) {
            L.q_a = mat(E, c.q_lora);
            L.q_a_norm = vec(c.q_lora, 1.0f, 0.2f);
            L.q_b = mat(c.q_lora, H * HK, 1.5f);
        } else {
            L.wq = mat(E, H * HK, 1.5f);
        }
        L.kv_a = mat(E, c.kv_lora + c.n_rot, 1.5f);
        L.kv_a_norm = vec(c.kv_lora, 1.0f, 0.2f);
        for (int h = 0; h < H; ++h) {
            L.k_b.push_back(mat(c.kv_lora, c.nope, 1.5f));
            L.v_b.push_back(mat(c.kv_lora, c.head_v));
        }
        L.wo = mat(H * c.head_v, E);
        L.ffn_norm = vec(E, 1.0f, 0.2f);
        if (il < c.n_dense) {
            L.gate = mat(E, c.n_ff);
            L.up = mat(E, c.n_ff);
            L.down = mat(c.n_ff, E);
        } else {
            L.gate_inp = mat(E, c.n_expert, 2.0f);
            if (c.probs_b) L.probs_b = vec(c.n_expert, 0.0f, 0.3f);
            for (int e = 0; e < c.n_expert; ++e) {
                L.g_e.push_back(mat(E, c.n_ff_exp));
                L.u_e.push_back(mat(E, c.n_ff_exp));
                L.d_e.push_back(mat(c.n_ff_exp, E));
            }
            if (c.n_shared > 0) {
                const int FS = c.n_ff_exp * c.n_shared;
                L.g_s = mat(E, FS);
                L.u_s = mat(E, FS);
                L.d_s = mat(FS, E);
            }
        }
        w.layers.push_back(std::move(L));
    }
    return w;
}

// Called with each tensor's name and data before it is written (to poison or drop weights).
using Edit = std::function<void(const std::string& name, std::vector<float>& data)>;

inline std::string write_model(const Config& c, const Weights& w, const std::string& file, const Edit& edit = {}) {
    gguf::Writer wr;
    const std::string a = "deepseek2.";
    const int E = c.n_embd, H = c.n_head, HK = c.nope + c.n_rot;
    wr.set_string("general.architecture", "deepseek2");
    wr.set_string("general.name", "synthetic-deepseek2");
    wr.set_u32(a + "context_length", 256);
    wr.set_u32(a + "embedding_length", static_cast<uint32_t>(E));
    wr.set_u32(a + "block_count", static_cast<uint32_t>(c.n_layer));
    wr.set_u32(a + "feed_forward_length", static_cast<uint32_t>(c.n_ff));
    wr.set_u32(a + "attention.head_count", static_cast<uint32_t>(H));
    if (c.joined_kv_b || !c.mla_keys) {
        wr.set_u32(a + "attention.head_count_kv", static_cast<uint32_t>(H));
        wr.set_u32(a + "attention.key_length", static_cast<uint32_t>(HK));
        wr.set_u32(a + "attention.value_length", static_cast<uint32_t>(c.head_v));
    } else {
        wr.set_u32(a + "attention.head_count_kv", 1);
        wr.set_u32(a + "attention.key_length", static_cast<uint32_t>(c.kv_lora + c.n_rot));
        wr.set_u32(a + "attention.value_length", static_cast<uint32_t>(c.kv_lora));
        wr.set_u32(a + "attention.key_length_mla", static_cast<uint32_t>(HK));
        wr.set_u32(a + "attention.value_length_mla", static_cast<uint32_t>(c.head_v));
    }
    wr.set_f32(a + "attention.layer_norm_rms_epsilon", 1e-6f);
    if (c.q_lora > 0) wr.set_u32(a + "attention.q_lora_rank", static_cast<uint32_t>(c.q_lora));
    wr.set_u32(a + "attention.kv_lora_rank", static_cast<uint32_t>(c.kv_lora));
    wr.set_u32(a + "rope.dimension_count", static_cast<uint32_t>(c.n_rot));
    wr.set_f32(a + "rope.freq_base", c.freq_base);
    if (c.yarn > 0) {
        wr.set_string(a + "rope.scaling.type", "yarn");
        wr.set_f32(a + "rope.scaling.factor", c.yarn);
        wr.set_u32(a + "rope.scaling.original_context_length", static_cast<uint32_t>(c.yarn_orig_ctx));
        wr.set_f32(a + "rope.scaling.yarn_log_multiplier", c.yarn_log_mul);
    }
    wr.set_u32(a + "leading_dense_block_count", static_cast<uint32_t>(c.n_dense));
    wr.set_u32(a + "expert_count", static_cast<uint32_t>(c.n_expert));
    wr.set_u32(a + "expert_used_count", static_cast<uint32_t>(c.n_used));
    wr.set_u32(a + "expert_feed_forward_length", static_cast<uint32_t>(c.n_ff_exp));
    wr.set_u32(a + "expert_shared_count", static_cast<uint32_t>(c.n_shared));
    wr.set_bool(a + "expert_weights_norm", c.norm_w);
    wr.set_f32(a + "expert_weights_scale", c.w_scale);
    if (c.gating) wr.set_u32(a + "expert_gating_func", static_cast<uint32_t>(c.gating));
    if (c.n_group) {
        wr.set_u32(a + "expert_group_count", static_cast<uint32_t>(c.n_group));
        wr.set_u32(a + "expert_group_used_count", static_cast<uint32_t>(c.n_group_used));
    }
    if (c.n_nextn) wr.set_u32(a + "nextn_predict_layers", static_cast<uint32_t>(c.n_nextn));
    std::vector<std::string> toks;
    for (int i = 0; i < c.n_vocab; ++i) toks.push_back(fmt::format("t{}", i));
    wr.set_strings("tokenizer.ggml.tokens", toks);

    auto add = [&](const std::string& name, Mat data, std::vector<uint64_t> shape) {
        if (edit) edit(name, data);
        if (data.empty()) return;
        wr.add_tensor_f32(name, TensorType::F32, shape, data);
    };
    auto u = [](int v) { return static_cast<uint64_t>(v); };
    add("token_embd.weight", w.tok_embd, {u(E), u(c.n_vocab)});
    add("output_norm.weight", w.output_norm, {u(E)});
    add("output.weight", w.output, {u(E), u(c.n_vocab)});
    for (int il = 0; il < c.n_layer; ++il) {
        const Layer& L = w.layers[static_cast<size_t>(il)];
        auto n = [&](const char* s) { return fmt::format("blk.{}.{}", il, s); };
        add(n("attn_norm.weight"), L.attn_norm, {u(E)});
        if (c.q_lora > 0) {
            add(n("attn_q_a.weight"), L.q_a, {u(E), u(c.q_lora)});
            add(n("attn_q_a_norm.weight"), L.q_a_norm, {u(c.q_lora)});
            add(n("attn_q_b.weight"), L.q_b, {u(c.q_lora), u(H * HK)});
        } else {
            add(n("attn_q.weight"), L.wq, {u(E), u(H * HK)});
        }
        add(n("attn_kv_a_mqa.weight"), L.kv_a, {u(E), u(c.kv_lora + c.n_rot)});
        add(n("attn_kv_a_norm.weight"), L.kv_a_norm, {u(c.kv_lora)});
        const size_t R = static_cast<size_t>(c.kv_lora);
        if (c.joined_kv_b) {  // per head: nope K rows, then head_v V rows, each of kv_lora
            Mat kv;
            for (int h = 0; h < H; ++h) {
                kv.insert(kv.end(), L.k_b[static_cast<size_t>(h)].begin(), L.k_b[static_cast<size_t>(h)].end());
                kv.insert(kv.end(), L.v_b[static_cast<size_t>(h)].begin(), L.v_b[static_cast<size_t>(h)].end());
            }
            add(n("attn_kv_b.weight"), kv, {u(c.kv_lora), u(H * (c.nope + c.head_v))});
        } else {  // attn_k_b [nope, kv_lora, H]: per head the transpose of its K rows
            Mat kb(static_cast<size_t>(H) * R * static_cast<size_t>(c.nope));
            for (int h = 0; h < H; ++h)
                for (size_t cc = 0; cc < R; ++cc)
                    for (int i = 0; i < c.nope; ++i)
                        kb[(static_cast<size_t>(h) * R + cc) * static_cast<size_t>(c.nope) + static_cast<size_t>(i)] =
                            L.k_b[static_cast<size_t>(h)][static_cast<size_t>(i) * R + cc];
            add(n("attn_k_b.weight"), kb, {u(c.nope), u(c.kv_lora), u(H)});
            Mat vb;
            for (int h = 0; h < H; ++h)
                vb.insert(vb.end(), L.v_b[static_cast<size_t>(h)].begin(), L.v_b[static_cast<size_t>(h)].end());
            add(n("attn_v_b.weight"), vb, {u(c.kv_lora), u(c.head_v), u(H)});
        }
        add(n("attn_output.weight"), L.wo, {u(H * c.head_v), u(E)});
        add(n("ffn_norm.weight"), L.ffn_norm, {u(E)});
        if (il < c.n_dense) {
            add(n("ffn_gate.weight"), L.gate, {u(E), u(c.n_ff)});
            add(n("ffn_up.weight"), L.up, {u(E), u(c.n_ff)});
            add(n("ffn_down.weight"), L.down, {u(c.n_ff), u(E)});
        } else {
            add(n("ffn_gate_inp.weight"), L.gate_inp, {u(E), u(c.n_expert)});
            if (c.probs_b) add(n("exp_probs_b.bias"), L.probs_b, {u(c.n_expert)});
            auto stack = [&](const std::vector<Mat>& m) {
                Mat s;
                for (const Mat& x : m) s.insert(s.end(), x.begin(), x.end());
                return s;
            };
            add(n("ffn_gate_exps.weight"), stack(L.g_e), {u(E), u(c.n_ff_exp), u(c.n_expert)});
            add(n("ffn_up_exps.weight"), stack(L.u_e), {u(E), u(c.n_ff_exp), u(c.n_expert)});
            add(n("ffn_down_exps.weight"), stack(L.d_e), {u(c.n_ff_exp), u(E), u(c.n_expert)});
            if (c.n_shared > 0) {
                const int FS = c.n_ff_exp * c.n_shared;
                add(n("ffn_gate_shexp.weight"), L.g_s, {u(E), u(FS)});
                add(n("ffn_up_shexp.weight"), L.u_s, {u(E), u(FS)});
                add(n("ffn_down_shexp.weight"), L.d_s, {u(FS), u(E)});
            }
        }
        if (il >= c.n_layer - c.n_nextn) {  // the MTP head's own tensors
            add(n("nextn.eh_proj.weight"), Mat(static_cast<size_t>(2 * E * E), 0.01f), {u(2 * E), u(E)});
            add(n("nextn.enorm.weight"), Mat(static_cast<size_t>(E), 1.0f), {u(E)});
            add(n("nextn.hnorm.weight"), Mat(static_cast<size_t>(E), 1.0f), {u(E)});
            add(n("nextn.shared_head_norm.weight"), Mat(static_cast<size_t>(E), 1.0f), {u(E)});
        }
    }
    const auto dir = std::filesystem::path(KILN_BINARY_DIR) / "test_models";
    std::filesystem::create_directories(dir);
    const std::string path = (dir / file).string();
    wr.write(path);
    return path;
}

// ---- the naive forward --------------------------------------------------------------------------

using Vec = std::vector<double>;

inline Vec matvec(const Mat& W, int cols, int rows, const Vec& x) {
    Vec y(static_cast<size_t>(rows), 0.0);
    for (int r = 0; r < rows; ++r)
        for (int i = 0; i < cols; ++i)
            y[static_cast<size_t>(r)] += static_cast<double>(W[static_cast<size_t>(r) * static_cast<size_t>(cols) + static_cast<size_t>(i)]) * x[static_cast<size_t>(i)];
    return y;
}
inline Vec rmsnorm(const Vec& x, const Mat& w, double eps = 1e-6) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double s = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + eps);
    Vec y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * s * w[i];
    return y;
}
inline Vec swiglu_ffn(const Mat& g, const Mat& u, const Mat& d, int E, int F, const Vec& h) {
    const Vec a = matvec(g, E, F, h), b = matvec(u, E, F, h);
    Vec m(static_cast<size_t>(F));
    for (size_t i = 0; i < m.size(); ++i) m[i] = a[i] / (1.0 + std::exp(-a[i])) * b[i];
    return matvec(d, F, E, m);
}

// Normal (adjacent pairs) RoPE of n_rot values at v[off..], with YaRN when c.yarn > 0 (DeepSeek:
// cos/sin unscaled; the magnitude goes into the attention scale).
inline void rope(double* v, const Config& c, int pos) {
    const int half = c.n_rot / 2;
    double lo = 0, hi = 0;
    if (c.yarn > 0) {
        auto corr = [&](double beta) {
            return c.n_rot * std::log(c.yarn_orig_ctx / (beta * 2 * M_PI)) / (2 * std::log(static_cast<double>(c.freq_base)));
        };
        lo = std::max(0.0, std::floor(corr(32.0)));
        hi = std::min(static_cast<double>(c.n_rot - 1), std::ceil(corr(1.0)));
    }
    for (int i = 0; i < half; ++i) {
        const double extrap = pos * std::pow(static_cast<double>(c.freq_base), -2.0 * i / c.n_rot);
        double theta = extrap;
        if (c.yarn > 0) {
            const double ramp = 1.0 - std::clamp((i - lo) / std::max(0.001, hi - lo), 0.0, 1.0);
            theta = extrap / c.yarn * (1.0 - ramp) + extrap * ramp;
        }
        const double x0 = v[2 * i], x1 = v[2 * i + 1];
        v[2 * i] = x0 * std::cos(theta) - x1 * std::sin(theta);
        v[2 * i + 1] = x0 * std::sin(theta) + x1 * std::cos(theta);
    }
}

inline std::vector<int> route(const Config& c, const Layer& L, const Vec& h, std::vector<double>& weights) {
    const Vec logits = matvec(L.gate_inp, c.n_embd, c.n_expert, h);
    Vec probs(logits.size());
    if (c.gating == 2 || (c.gating == 0 && c.probs_b)) {
        for (size_t i = 0; i < probs.size(); ++i) probs[i] = 1.0 / (1.0 + std::exp(-logits[i]));
    } else {
        const double mx = *std::max_element(logits.begin(), logits.end());
        double s = 0;
        for (size_t i = 0; i < probs.size(); ++i) s += (probs[i] = std::exp(logits[i] - mx));
        for (double& p : probs) p /= s;
    }
    Vec sel = probs;
    if (c.probs_b)
        for (size_t i = 0; i < sel.size(); ++i) sel[i] += L.probs_b[i];
    if (c.n_group > 1 && c.n_group_used < c.n_group) {
        const int per = c.n_expert / c.n_group;
        std::vector<std::pair<double, int>> gs;
        for (int g = 0; g < c.n_group; ++g) {
            Vec m(sel.begin() + g * per, sel.begin() + (g + 1) * per);
            std::sort(m.rbegin(), m.rend());
            gs.push_back({m[0] + m[1], g});
        }
        std::stable_sort(gs.begin(), gs.end(), [](auto& x, auto& y) { return x.first > y.first; });
        for (size_t k = static_cast<size_t>(c.n_group_used); k < gs.size(); ++k)
            for (int i = 0; i < per; ++i) sel[static_cast<size_t>(gs[k].second * per + i)] = -1e300;
    }
    std::vector<int> idx(static_cast<size_t>(c.n_expert));
    for (int i = 0; i < c.n_expert; ++i) idx[static_cast<size_t>(i)] = i;
    std::stable_sort(idx.begin(), idx.end(), [&](int x, int y) { return sel[static_cast<size_t>(x)] > sel[static_cast<size_t>(y)]; });
    idx.resize(static_cast<size_t>(c.n_used));
    weights.clear();
    double sum = 0;
    for (int e : idx) sum += probs[static_cast<size_t>(e)];
    for (int e : idx) weights.push_back(probs[static_cast<size_t>(e)] / (c.norm_w ? sum : 1.0) * c.w_scale);
    return idx;
}

inline std::vector<Vec> naive_forward(const Config& c, const Weights& w, const std::vector<int32_t>& tokens) {
    const int E = c.n_embd, H = c.n_head, HK = c.nope + c.n_rot, R = c.kv_lora;
    const size_t T = tokens.size();
    double mscale = 1.0;
    if (c.yarn > 1) mscale = 1.0 + c.yarn_log_mul * std::log(static_cast<double>(c.yarn));
    const double scale = mscale * mscale / std::sqrt(static_cast<double>(HK));
    std::vector<Vec> x(T);
    for (size_t t = 0; t < T; ++t)
        x[t] = Vec(w.tok_embd.begin() + tokens[t] * E, w.tok_embd.begin() + (tokens[t] + 1) * E);
    for (int il = 0; il < c.n_layer - c.n_nextn; ++il) {
        const Layer& L = w.layers[static_cast<size_t>(il)];
        std::vector<Vec> q(T), k(T), v(T);  // per token: H heads of HK (q, k) and head_v (v)
        for (size_t t = 0; t < T; ++t) {
            const Vec h = rmsnorm(x[t], L.attn_norm);
            q[t] = c.q_lora > 0 ? matvec(L.q_b, c.q_lora, H * HK, rmsnorm(matvec(L.q_a, E, c.q_lora, h), L.q_a_norm))
                                : matvec(L.wq, E, H * HK, h);
            const Vec kv = matvec(L.kv_a, E, R + c.n_rot, h);
            const Vec lat = rmsnorm(Vec(kv.begin(), kv.begin() + R), L.kv_a_norm);
            Vec kpe(kv.begin() + R, kv.end());
            rope(kpe.data(), c, static_cast<int>(t));
            k[t].assign(static_cast<size_t>(H * HK), 0.0);
            v[t].assign(static_cast<size_t>(H * c.head_v), 0.0);
            for (int hh = 0; hh < H; ++hh) {
                rope(q[t].data() + hh * HK + c.nope, c, static_cast<int>(t));
                const Vec kn = matvec(L.k_b[static_cast<size_t>(hh)], R, c.nope, lat);
                const Vec vv = matvec(L.v_b[static_cast<size_t>(hh)], R, c.head_v, lat);
                std::copy(kn.begin(), kn.end(), k[t].begin() + hh * HK);
                std::copy(kpe.begin(), kpe.end(), k[t].begin() + hh * HK + c.nope);
                std::copy(vv.begin(), vv.end(), v[t].begin() + hh * c.head_v);
            }
        }
        for (size_t t = 0; t < T; ++t) {
            Vec att(static_cast<size_t>(H * c.head_v), 0.0);
            for (int hh = 0; hh < H; ++hh) {
                std::vector<double> s(t + 1);
                double mx = -1e300;
                for (size_t j = 0; j <= t; ++j) {
                    double d = 0;
                    for (int i = 0; i < HK; ++i) d += q[t][static_cast<size_t>(hh * HK + i)] * k[j][static_cast<size_t>(hh * HK + i)];
                    s[j] = d * scale;
                    mx = std::max(mx, s[j]);
                }
                double sum = 0;
                for (double& e : s) sum += (e = std::exp(e - mx));
                for (size_t j = 0; j <= t; ++j)
                    for (int i = 0; i < c.head_v; ++i)
                        att[static_cast<size_t>(hh * c.head_v + i)] += s[j] / sum * v[j][static_cast<size_t>(hh * c.head_v + i)];
            }
            const Vec o = matvec(L.wo, H * c.head_v, E, att);
            for (int i = 0; i < E; ++i) x[t][static_cast<size_t>(i)] += o[static_cast<size_t>(i)];
            const Vec h = rmsnorm(x[t], L.ffn_norm);
            Vec f;
            if (il < c.n_dense) {
                f = swiglu_ffn(L.gate, L.up, L.down, E, c.n_ff, h);
            } else {
                std::vector<double> wts;
                const std::vector<int> ids = route(c, L, h, wts);
                f.assign(static_cast<size_t>(E), 0.0);
                for (size_t s = 0; s < ids.size(); ++s) {
                    const size_t e = static_cast<size_t>(ids[s]);
                    const Vec y = swiglu_ffn(L.g_e[e], L.u_e[e], L.d_e[e], E, c.n_ff_exp, h);
                    for (int i = 0; i < E; ++i) f[static_cast<size_t>(i)] += wts[s] * y[static_cast<size_t>(i)];
                }
                if (c.n_shared > 0) {
                    const Vec y = swiglu_ffn(L.g_s, L.u_s, L.d_s, E, c.n_ff_exp * c.n_shared, h);
                    for (int i = 0; i < E; ++i) f[static_cast<size_t>(i)] += y[static_cast<size_t>(i)];
                }
            }
            for (int i = 0; i < E; ++i) x[t][static_cast<size_t>(i)] += f[static_cast<size_t>(i)];
        }
    }
    std::vector<Vec> logits(T);
    for (size_t t = 0; t < T; ++t) logits[t] = matvec(w.output, E, c.n_vocab, rmsnorm(x[t], w.output_norm));
    return logits;
}

}  // namespace kiln::test::ds2
