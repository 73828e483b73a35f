// The shared ops deepseek2 and gpt-oss build on, run through the graph on the CPU backend and
// checked against plain double-precision loops written here from the definitions: YaRN RoPE,
// the MoE block (router, gating, top-k with bias and groups, weights, expert FFNs with per-expert
// biases, quantized expert stacks), per-head matmuls over strided 3-D weights, head slicing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "graph/graph.h"
#include "model/blocks.h"
#include "quant/quant.h"

namespace {

using namespace kiln;
using graph::Graph;
using graph::TensorId;

std::vector<float> randv(size_t n, uint32_t seed, float scale = 1.0f) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> d(-1.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng) * scale;
    return v;
}

// Compiles g, fills the named inputs, runs, returns output `out` as rows.
struct Runner {
    std::unique_ptr<backend::Backend> be = backend::make_cpu_backend(2);
    std::unique_ptr<backend::Executable> exe;
    explicit Runner(Graph g) : exe(be->compile(std::move(g))) {}
    void in(const char* name, const void* data, size_t bytes) { exe->set_input(exe->graph().find(name), data, bytes); }
    std::vector<float> out(const char* name) {
        exe->run({});
        const TensorId id = exe->graph().find(name);
        const auto& t = exe->graph().tensor(id);
        const float* p = exe->output(id);
        return std::vector<float>(p, p + t.n_elements());
    }
};

// ---- YaRN RoPE --------------------------------------------------------------------------------

TEST(YarnRope, MatchesTheFormula) {
    for (const graph::RopeMode mode : {graph::RopeMode::Normal, graph::RopeMode::Neox}) {
        graph::RopeParams p;
        p.mode = mode;
        p.n_head = 3;
        p.head_dim = 40;
        p.n_dims = 32;
        p.freq_base = 150000.0f;
        p.freq_scale = 1.0f / 32.0f;
        p.ext_factor = 1.0f;
        p.attn_factor = 1.35f;
        p.n_ctx_orig = 4096;
        p.beta_fast = 32.0f;
        p.beta_slow = 1.0f;
        const int T = 6;
        const std::vector<int32_t> pos = {0, 1, 7, 100, 5000, 131000};
        const auto x = randv(static_cast<size_t>(T * p.n_head * p.head_dim), 3);
        Graph g;
        const TensorId xi = g.input("x", graph::DType::F32, p.n_head * p.head_dim, T);
        const TensorId pi = g.input("pos", graph::DType::I32, T, 1);
        g.mark_output(g.rope(xi, pi, p), "y");
        Runner r(std::move(g));
        r.in("x", x.data(), x.size() * 4);
        r.in("pos", pos.data(), pos.size() * 4);
        const auto y = r.out("y");

        // The correction range: pair i turns n_rot times over the original context.
        auto corr = [&](double beta) { return p.n_dims * std::log(p.n_ctx_orig / (beta * 2 * M_PI)) / (2 * std::log(double(p.freq_base))); };
        const double lo = std::max(0.0, std::floor(corr(p.beta_fast))), hi = std::min(p.n_dims - 1.0, std::ceil(corr(p.beta_slow)));
        ASSERT_GT(hi, lo);
        double max_err = 0;
        for (int t = 0; t < T; ++t)
            for (int h = 0; h < p.n_head; ++h) {
                const float* xh = x.data() + (t * p.n_head + h) * p.head_dim;
                const float* yh = y.data() + (t * p.n_head + h) * p.head_dim;
                for (int i = 0; i < p.n_dims / 2; ++i) {
                    const double extrap = pos[static_cast<size_t>(t)] * std::pow(double(p.freq_base), -2.0 * i / p.n_dims);
                    const double ramp = 1.0 - std::clamp((i - lo) / std::max(0.001, hi - lo), 0.0, 1.0);
                    const double theta = extrap * p.freq_scale * (1 - ramp) + extrap * ramp;
                    const int a = mode == graph::RopeMode::Normal ? 2 * i : i;
                    const int b = mode == graph::RopeMode::Normal ? 2 * i + 1 : i + p.n_dims / 2;
                    const double c = std::cos(theta) * p.attn_factor, s = std::sin(theta) * p.attn_factor;
                    max_err = std::max(max_err, std::abs(yh[a] - (xh[a] * c - xh[b] * s)));
                    max_err = std::max(max_err, std::abs(yh[b] - (xh[a] * s + xh[b] * c)));
                }
                for (int i = p.n_dims; i < p.head_dim; ++i) EXPECT_EQ(yh[i], xh[i]);
            }
        EXPECT_LT(max_err, 2e-5) << (mode == graph::RopeMode::Normal ? "normal" : "neox");
    }
}

TEST(YarnRope, HParamsGiveTheYarnMagnitude) {
    model::HParams hp;
    hp.rope_scaling = model::RopeScaling::Yarn;
    hp.rope_scale_factor = 32.0f;
    hp.yarn_ext_factor = 1.0f;
    hp.rope_n_ctx_orig = 4096;
    const graph::RopeParams p = model::blocks::rope_params(hp, graph::RopeMode::Neox, 64, 64);
    EXPECT_FLOAT_EQ(p.freq_scale, 1.0f / 32.0f);
    EXPECT_FLOAT_EQ(p.attn_factor, 1.0f + 0.1f * std::log(32.0f));  // yarn_mscale(factor, 1)
    EXPECT_EQ(p.n_ctx_orig, 4096);
    EXPECT_EQ(p.ext_factor, 1.0f);
}

// ---- the MoE block --------------------------------------------------------------------------

struct MoeCase {
    graph::Gating gating;
    bool probs_b, biases, norm;
    float scale;
    int n_group, n_group_used;
    TensorType type;
};

model::Weight weight(const std::string& name, TensorType t, const std::vector<uint8_t>& bytes, int64_t ne0,
                     int64_t ne1, int64_t ne2 = 1) {
    model::Weight w;
    w.label = name;
    w.dtype = t;
    w.data = bytes.data();
    w.ne0 = ne0;
    w.ne1 = ne1;
    w.ne2 = ne2;
    return w;
}

// Quantizes rows of `cols` to t and back (the values the kernels see) and returns the bytes.
std::vector<uint8_t> store(TensorType t, std::vector<float>& v, int64_t cols) {
    const size_t rb = static_cast<size_t>(*row_bytes(t, static_cast<uint64_t>(cols)));
    const size_t rows = v.size() / static_cast<size_t>(cols);
    std::vector<uint8_t> out(rb * rows);
    for (size_t r = 0; r < rows; ++r) {
        quantize_row(t, v.data() + r * static_cast<size_t>(cols), out.data() + r * rb, cols);
        dequantize_row(t, out.data() + r * rb, v.data() + r * static_cast<size_t>(cols), cols);
    }
    return out;
}
std::vector<uint8_t> bytes_of(const std::vector<float>& v) {
    std::vector<uint8_t> b(v.size() * 4);
    std::memcpy(b.data(), v.data(), b.size());
    return b;
}

TEST(MoeBlock, MatchesNaiveRouting) {
    const int E = 64, F = 32, X = 8, K = 3, T = 9;
    const std::vector<MoeCase> cases = {
        {graph::Gating::Softmax, false, false, false, 1.0f, 1, 1, TensorType::F32},
        {graph::Gating::Sigmoid, true, false, true, 1.8f, 1, 1, TensorType::Q8_0},
        {graph::Gating::Sigmoid, true, false, true, 2.5f, 4, 2, TensorType::F32},
        {graph::Gating::SoftmaxWeight, false, true, false, 1.0f, 1, 1, TensorType::Q4_0},  // gpt-oss style
    };
    for (size_t ci = 0; ci < cases.size(); ++ci) {
        const MoeCase& mc = cases[ci];
        auto router = randv(static_cast<size_t>(X * E), 10 + static_cast<uint32_t>(ci), 0.5f);
        auto probs_b = randv(X, 20, 0.2f);
        auto gate = randv(static_cast<size_t>(X * F * E), 30, 0.2f), up = randv(static_cast<size_t>(X * F * E), 31, 0.2f);
        auto down = randv(static_cast<size_t>(X * E * F), 32, 0.2f);
        auto gb = randv(static_cast<size_t>(X * F), 33, 0.3f), ub = randv(static_cast<size_t>(X * F), 34, 0.3f);
        auto db = randv(static_cast<size_t>(X * E), 35, 0.3f);
        const auto x = randv(static_cast<size_t>(T * E), 40);
        const auto bg = store(mc.type, gate, E), bu = store(mc.type, up, E), bd = store(mc.type, down, F);
        const auto br = bytes_of(router), bb = bytes_of(probs_b), bgb = bytes_of(gb), bub = bytes_of(ub), bdb = bytes_of(db);

        model::blocks::MoeWeights w;
        w.gate_inp = weight("router", TensorType::F32, br, E, X);
        w.gate_exps = weight("gate", mc.type, bg, E, F, X);
        w.up_exps = weight("up", mc.type, bu, E, F, X);
        w.down_exps = weight("down", mc.type, bd, F, E, X);
        if (mc.probs_b) w.exp_probs_b = weight("probs_b", TensorType::F32, bb, X, 1);
        if (mc.biases) {
            w.gate_exps_b = weight("gb", TensorType::F32, bgb, F, X);
            w.up_exps_b = weight("ub", TensorType::F32, bub, F, X);
            w.down_exps_b = weight("db", TensorType::F32, bdb, E, X);
        }
        model::blocks::MoeConfig c;
        c.n_expert = X;
        c.n_used = K;
        c.gating = mc.gating;
        c.norm_weights = mc.norm;
        c.weights_scale = mc.scale;
        c.n_group = mc.n_group;
        c.n_group_used = mc.n_group_used;
        Graph g;
        const TensorId xi = g.input("x", graph::DType::F32, E, T);
        g.mark_output(model::blocks::moe_ffn(g, xi, w, c), "y");
        Runner r(std::move(g));
        r.in("x", x.data(), x.size() * 4);
        const auto y = r.out("y");

        double max_err = 0, max_ref = 0;
        for (int t = 0; t < T; ++t) {
            const float* xt = x.data() + t * E;
            std::vector<double> logit(X), prob(X), sel(X);
            for (int e = 0; e < X; ++e) logit[e] = std::inner_product(xt, xt + E, router.begin() + e * E, 0.0);
            const double mx = *std::max_element(logit.begin(), logit.end());
            double se = 0;
            for (int e = 0; e < X; ++e) se += std::exp(logit[e] - mx);
            for (int e = 0; e < X; ++e)
                prob[e] = mc.gating == graph::Gating::Softmax   ? std::exp(logit[e] - mx) / se
                          : mc.gating == graph::Gating::Sigmoid ? 1 / (1 + std::exp(-logit[e]))
                                                                : logit[e];
            for (int e = 0; e < X; ++e) sel[e] = prob[e] + (mc.probs_b ? probs_b[e] : 0.0);
            if (mc.n_group > 1) {  // keep the n_group_used groups with the best sum of their top two
                const int per = X / mc.n_group;
                std::vector<std::pair<double, int>> gs;
                for (int gi = 0; gi < mc.n_group; ++gi) {
                    std::vector<double> m(sel.begin() + gi * per, sel.begin() + (gi + 1) * per);
                    std::sort(m.rbegin(), m.rend());
                    gs.push_back({m[0] + m[1], gi});
                }
                std::stable_sort(gs.begin(), gs.end(), [](auto& a, auto& b) { return a.first > b.first; });
                for (size_t k = static_cast<size_t>(mc.n_group_used); k < gs.size(); ++k)
                    for (int i = 0; i < per; ++i) sel[gs[k].second * per + i] = -1e300;
            }
            std::vector<int> ids(X);
            std::iota(ids.begin(), ids.end(), 0);
            std::stable_sort(ids.begin(), ids.end(), [&](int a, int b) { return sel[a] > sel[b]; });
            ids.resize(K);
            std::vector<double> wt(K);
            for (int s = 0; s < K; ++s) wt[s] = prob[ids[s]];
            if (mc.gating == graph::Gating::SoftmaxWeight) {
                const double m = *std::max_element(wt.begin(), wt.end());
                double z = 0;
                for (double& v : wt) z += (v = std::exp(v - m));
                for (double& v : wt) v /= z;
            }
            if (mc.norm) {
                const double z = std::accumulate(wt.begin(), wt.end(), 0.0);
                for (double& v : wt) v /= z;
            }
            for (double& v : wt) v *= mc.scale;
            std::vector<double> out(E, 0.0);
            for (int s = 0; s < K; ++s) {
                const int e = ids[s];
                std::vector<double> act(F);
                for (int f = 0; f < F; ++f) {
                    double a = std::inner_product(xt, xt + E, gate.begin() + (e * F + f) * E, 0.0);
                    double b = std::inner_product(xt, xt + E, up.begin() + (e * F + f) * E, 0.0);
                    if (mc.biases) a += gb[e * F + f], b += ub[e * F + f];
                    act[f] = a / (1 + std::exp(-a)) * b;
                }
                for (int o = 0; o < E; ++o) {
                    double d = 0;
                    for (int f = 0; f < F; ++f) d += down[(e * E + o) * F + f] * act[f];
                    if (mc.biases) d += db[e * E + o];
                    out[o] += wt[s] * d;
                }
            }
            for (int o = 0; o < E; ++o) {
                max_err = std::max(max_err, std::abs(y[t * E + o] - out[o]));
                max_ref = std::max(max_ref, std::abs(out[o]));
            }
        }
        // Integer-dot kernels quantize activations to 8 bits: about 1% for quantized experts.
        const double bound = mc.type == TensorType::F32 ? 1e-5 : 3e-2;
        EXPECT_LE(max_err / max_ref, bound) << "case " << ci << " (" << type_name(mc.type) << ")";
    }
}

// ---- per-head matmul over a strided stack, head slicing ---------------------------------------

TEST(HeadOps, HeadMatMulSliceConcat) {
    const int H = 3, K = 8, R = 5, GAP = 2, T = 4;  // matrix h = rows [h*(R+GAP), h*(R+GAP)+R) of a bigger matrix
    auto big = randv(static_cast<size_t>(H * (R + GAP) * K), 5);
    const auto bb = bytes_of(big);
    Graph g;
    const TensorId w = g.weight3("w", TensorType::F32, bb.data() + GAP * K * 4, K, R, H, (R + GAP) * K * 4);
    const TensorId xi = g.input("x", graph::DType::F32, H * (K + 2), T);
    const TensorId x0 = g.slice_heads(xi, H, K + 2, 1, K);      // per head the middle K of K + 2
    const TensorId tail = g.slice_heads(xi, H, K + 2, K + 1, 1);  // and its last value
    g.mark_output(g.concat_heads(g.head_matmul(w, x0), tail, H), "y");
    const auto x = randv(static_cast<size_t>(T * H * (K + 2)), 6);
    Runner r(std::move(g));
    r.in("x", x.data(), x.size() * 4);
    const auto y = r.out("y");
    ASSERT_EQ(y.size(), static_cast<size_t>(T * H * (R + 1)));
    for (int t = 0; t < T; ++t)
        for (int h = 0; h < H; ++h) {
            const float* xh = x.data() + (t * H + h) * (K + 2);
            for (int j = 0; j < R; ++j) {
                double d = 0;
                for (int i = 0; i < K; ++i) d += big[static_cast<size_t>((h * (R + GAP) + GAP + j) * K + i)] * xh[1 + i];
                EXPECT_NEAR(y[static_cast<size_t>((t * H + h) * (R + 1) + j)], d, 1e-5);
            }
            EXPECT_EQ(y[static_cast<size_t>((t * H + h) * (R + 1) + R)], xh[K + 1]);
        }
}

}  // namespace
