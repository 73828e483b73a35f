// The CPU backend's tiled prompt attention (kernels/flash_attn.h, CpuExecutable::attention_tiled)
// against a naive double-precision attention over the values the cache stores (f32, f16, q8_0,
// q4_0 rounding applied to the same random keys and values), and against the per-row attention
// of the same batch (the path decode takes, forced by the threshold). A prefix is stored first in
// smaller batches, then the prompt is stored and attended: GQA 32:8 at d128, rings with sliding
// windows, sinks, soft-capping, MLA 20:1 with K 576 / V 512, groups of more than one tile's rows,
// dimensions that are not multiples of the vector width, and tails of tiles and key blocks; at
// every kernel level the CPU has (the others skipped by name), on three threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "graph/graph.h"
#include "kernels/half.h"
#include "kernels/kv_quant.h"
#include "support/levels.h"
#include "support/random.h"

namespace {

using kiln::KvType;
using kiln::graph::DType;
using kiln::graph::Graph;
using kiln::graph::TensorId;

struct Case {
    const char* name;
    int n_head, n_head_kv, dk, dv;
    int64_t prefix, n;  // tokens stored before the prompt; the prompt
    KvType kv = KvType::F16;
    int window = 0;
    int64_t slots = 0;  // 0: a full cache
    float softcap = 0.0f;
    bool sinks = false;
    bool mla = false;
};

using kiln::test::random_floats;

// The values a head of `x` reads back from a cache of type t.
std::vector<double> stored(KvType t, const float* x, int64_t n) {
    namespace kk = kiln::kernels;
    std::vector<float> out(x, x + n);
    std::vector<uint8_t> codes(static_cast<size_t>(n));
    std::vector<uint16_t> scales(static_cast<size_t>(kk::kv_blocks(n)));
    switch (t) {
        case KvType::F32: break;
        case KvType::F16:
            for (float& v : out) v = kk::half_to_float(kk::float_to_half(v));
            break;
        case KvType::Q8_0:
            kk::quantize_q8kv(x, n, reinterpret_cast<int8_t*>(codes.data()), scales.data());
            kk::dequantize_q8kv(reinterpret_cast<const int8_t*>(codes.data()), scales.data(), n, out.data());
            break;
        case KvType::Q4_0:
            kk::quantize_q4kv(x, n, codes.data(), scales.data());
            kk::dequantize_q4kv(codes.data(), scales.data(), n, out.data());
            break;
    }
    return std::vector<double>(out.begin(), out.end());
}

// max |got - want| / max |want|; a NaN anywhere: infinity.
double rel_error(const std::vector<float>& got, const std::vector<double>& want) {
    EXPECT_EQ(got.size(), want.size());
    double err = 0, scale = 0;
    for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
        if (!std::isfinite(got[i])) return INFINITY;
        err = std::max(err, std::fabs(got[i] - want[i]));
        scale = std::max(scale, std::fabs(want[i]));
    }
    return scale > 0 ? err / scale : err;
}

// Sets the tiled attention's threshold for a scope.
class TiledFrom {
public:
    explicit TiledFrom(int64_t n) : before_(kiln::backend::cpu_tiled_attention_min_tokens()) {
        kiln::backend::set_cpu_tiled_attention_min_tokens(n);
    }
    ~TiledFrom() { kiln::backend::set_cpu_tiled_attention_min_tokens(before_); }
    TiledFrom(const TiledFrom&) = delete;
    TiledFrom& operator=(const TiledFrom&) = delete;

private:
    int64_t before_;
};

// One case: the cache, its prefix, the prompt's graph (store + attention), and the reference.
class Prompt {
public:
    explicit Prompt(const Case& c) : c_(c) {
        ap_.n_head = c.n_head;
        ap_.n_head_kv = c.n_head_kv;
        ap_.head_dim_k = c.dk;
        ap_.head_dim_v = c.dv;
        ap_.scale = 1.0f / std::sqrt(static_cast<float>(c.dk));
        ap_.window = c.window;
        ap_.softcap = c.softcap;
        ap_.v_in_k = c.mla;
        kiln::backend::KvLayout layout;
        layout.n_ctx = c.prefix + c.n + 5;
        layout.type_k = layout.type_v = c.kv;
        kiln::KvLayer ls;
        ls.n_head_kv = c.n_head_kv;
        ls.head_dim_k = c.dk;
        ls.head_dim_v = c.dv;
        ls.v_in_k = c.mla;
        ls.n_slots = c.slots;
        layout.layers.push_back(ls);
        be_ = kiln::backend::make_cpu_backend(3);
        kv_ = be_->alloc_kv(layout);

        const int64_t T = c.prefix + c.n;
        k_ = random_floats(static_cast<size_t>(T * c.n_head_kv * c.dk), 11, -2, 2);
        v_ = random_floats(static_cast<size_t>(T * c.n_head_kv * c.dv), 12, -2, 2);
        q_ = random_floats(static_cast<size_t>(c.n * c.n_head * c.dk), 13, -1, 1);
        sinks_ = random_floats(static_cast<size_t>(c.n_head), 14, -2, 2);
        // The prefix in batches of at most n tokens (what a ring sized for the prompt takes).
        for (int64_t done = 0; done < c.prefix;) {
            const int64_t m = std::min(c.n, c.prefix - done);
            Graph g;
            const TensorId tk = g.input("k", DType::F32, c.n_head_kv * c.dk, m);
            const TensorId tv = c.mla ? kiln::graph::kNone : g.input("v", DType::F32, c.n_head_kv * c.dv, m);
            g.store_kv(tk, tv, ap_);
            g.mark_output(g.add(tk, tk), "out");  // the graph's output: a cheap op on its K input
            auto exe = be_->compile(std::move(g));
            set(*exe, "k", k_.data() + done * c.n_head_kv * c.dk, m * c.n_head_kv * c.dk);
            if (!c.mla) set(*exe, "v", v_.data() + done * c.n_head_kv * c.dv, m * c.n_head_kv * c.dv);
            run(*exe, done);
            done += m;
        }
        Graph g;
        const TensorId tk = g.input("k", DType::F32, c.n_head_kv * c.dk, c.n);
        const TensorId tv = c.mla ? kiln::graph::kNone : g.input("v", DType::F32, c.n_head_kv * c.dv, c.n);
        g.store_kv(tk, tv, ap_);
        const TensorId ts = c.sinks ? g.weight("sinks", kiln::TensorType::F32, sinks_.data(), c.n_head, 1) : kiln::graph::kNone;
        g.mark_output(g.attention(g.input("q", DType::F32, c.n_head * c.dk, c.n), ap_, ts), "out");
        prompt_ = be_->compile(std::move(g));
        set(*prompt_, "k", k_.data() + c.prefix * c.n_head_kv * c.dk, c.n * c.n_head_kv * c.dk);
        if (!c.mla) set(*prompt_, "v", v_.data() + c.prefix * c.n_head_kv * c.dv, c.n * c.n_head_kv * c.dv);
        set(*prompt_, "q", q_.data(), c.n * c.n_head * c.dk);
    }

    // The prompt's attention (storing its keys and values again: the same bytes).
    std::vector<float> prompt() {
        run(*prompt_, c_.prefix);
        const float* p = prompt_->output(prompt_->graph().find("out"));
        return std::vector<float>(p, p + c_.n * c_.n_head * c_.dv);
    }

    // Naive attention in double over the stored keys and values.
    std::vector<double> reference() const {
        const Case& c = c_;
        const int64_t T = c.prefix + c.n;
        std::vector<std::vector<double>> K(static_cast<size_t>(T * c.n_head_kv)), V(K.size());
        for (int64_t j = 0; j < T * c.n_head_kv; ++j) {
            K[static_cast<size_t>(j)] = stored(c.kv, k_.data() + j * c.dk, c.dk);
            V[static_cast<size_t>(j)] = c.mla ? std::vector<double>(K[static_cast<size_t>(j)].begin(),
                                                                    K[static_cast<size_t>(j)].begin() + c.dv)
                                              : stored(c.kv, v_.data() + j * c.dv, c.dv);
        }
        const int group = c.n_head / c.n_head_kv;
        std::vector<double> out(static_cast<size_t>(c.n * c.n_head * c.dv), 0.0);
        std::vector<double> s;
        for (int64_t t = 0; t < c.n; ++t)
            for (int h = 0; h < c.n_head; ++h) {
                const int64_t last = c.prefix + t, first = c.window > 0 ? std::max<int64_t>(0, last - c.window + 1) : 0;
                const float* q = q_.data() + (t * c.n_head + h) * c.dk;
                s.assign(static_cast<size_t>(last - first + 1), 0.0);
                double mx = c.sinks ? sinks_[static_cast<size_t>(h)] : -INFINITY;
                for (int64_t j = first; j <= last; ++j) {
                    const auto& kj = K[static_cast<size_t>(j * c.n_head_kv + h / group)];
                    double d = 0;
                    for (int i = 0; i < c.dk; ++i) d += static_cast<double>(q[i]) * kj[static_cast<size_t>(i)];
                    d *= ap_.scale;
                    if (c.softcap > 0) d = c.softcap * std::tanh(d / c.softcap);
                    s[static_cast<size_t>(j - first)] = d;
                    mx = std::max(mx, d);
                }
                double sum = c.sinks ? std::exp(sinks_[static_cast<size_t>(h)] - mx) : 0.0;
                for (double& x : s) sum += (x = std::exp(x - mx));
                double* o = out.data() + (t * c.n_head + h) * c.dv;
                for (int64_t j = first; j <= last; ++j) {
                    const auto& vj = V[static_cast<size_t>(j * c.n_head_kv + h / group)];
                    const double w = s[static_cast<size_t>(j - first)] / sum;
                    for (int i = 0; i < c.dv; ++i) o[i] += w * vj[static_cast<size_t>(i)];
                }
            }
        return out;
    }

private:
    static void set(kiln::backend::Executable& exe, const char* name, const float* data, int64_t n) {
        exe.set_input(exe.graph().find(name), data, static_cast<size_t>(n) * 4);
    }
    void run(kiln::backend::Executable& exe, int64_t base) {
        kiln::backend::RunArgs a;
        a.kv = kv_.get();
        a.kv_base = base;
        exe.run(a);
    }

    Case c_;
    kiln::graph::AttentionParams ap_;
    std::unique_ptr<kiln::backend::Backend> be_;
    std::unique_ptr<kiln::backend::KvBuffers> kv_;
    std::unique_ptr<kiln::backend::Executable> prompt_;
    std::vector<float> k_, v_, q_, sinks_;
};

const std::vector<Case>& cases() {
    static const std::vector<Case> v = {
        // name, heads, kv heads, dk, dv, prefix, prompt, cache, window, slots, softcap, sinks, mla
        {"gqa32_8_d128_f16", 32, 8, 128, 128, 70, 37},
        {"gqa32_8_d128_f32_from_empty", 32, 8, 128, 128, 0, 29, KvType::F32},
        {"gqa8_2_d128_q8_0", 8, 2, 128, 128, 50, 21, KvType::Q8_0},
        {"gqa8_2_d64_q4_0", 8, 2, 64, 64, 33, 19, KvType::Q4_0},
        {"ring39_window16_softcap50", 4, 1, 64, 64, 45, 24, KvType::F16, 16, 16 + 24 - 1, 50.0f},
        {"ring24_window8_sinks_q8_0", 8, 2, 64, 64, 40, 17, KvType::Q8_0, 8, 8 + 17 - 1, 0.0f, true},
        {"full_softcap2_sinks_two_key_blocks", 8, 2, 32, 32, 9, 70, KvType::F16, 0, 0, 2.0f, true},
        {"mla20_1_k576_v512_f16", 20, 1, 576, 512, 66, 13, KvType::F16, 0, 0, 0.0f, false, true},
        {"mla20_1_k576_v512_q4_0", 20, 1, 576, 512, 20, 8, KvType::Q4_0, 0, 0, 0.0f, false, true},
        {"mla16_1_k80_v64_q8_0", 16, 1, 80, 64, 10, 9, KvType::Q8_0, 0, 0, 0.0f, false, true},
        {"odd_dims_dk40_dv24_f32", 6, 3, 40, 24, 5, 11, KvType::F32},
        {"group160_split_over_two_tiles", 160, 1, 32, 32, 3, 9},
        {"one_head_d16_three_tiles", 1, 1, 16, 16, 0, 300},
    };
    return v;
}

class TiledAttention : public kiln::test::AtEveryKernelLevel<Case> {};

TEST_P(TiledAttention, MatchesNaiveDoubleAndPerRow) {
    const Case& c = param();
    Prompt r(c);
    const std::vector<double> want = r.reference();
    std::vector<float> tiled, per_row;
    {
        TiledFrom f(2);
        const int64_t runs = kiln::backend::cpu_tiled_attention_runs();
        tiled = r.prompt();
        EXPECT_EQ(kiln::backend::cpu_tiled_attention_runs(), runs + 1) << "the prompt did not run tiled";
    }
    {
        TiledFrom f(std::numeric_limits<int64_t>::max());
        const int64_t runs = kiln::backend::cpu_tiled_attention_runs();
        per_row = r.prompt();
        EXPECT_EQ(kiln::backend::cpu_tiled_attention_runs(), runs) << "the prompt ran tiled";
    }
    const double e_tiled = rel_error(tiled, want);
    const double e_row = rel_error(per_row, want);
    std::vector<double> row_d(per_row.begin(), per_row.end());
    const double e_between = rel_error(tiled, row_d);
    std::printf("    [max rel error] %-36s %-10s tiled %.3g  per-row %.3g  tiled vs per-row %.3g\n", c.name,
                kiln::kernels::kernel_level_name(), e_tiled, e_row, e_between);
    EXPECT_LT(e_tiled, 4e-6);
    EXPECT_LT(e_row, 4e-6);
    EXPECT_LT(e_between, 4e-6);
}

INSTANTIATE_TEST_SUITE_P(Cases, TiledAttention, kiln::test::at_every_kernel_level(cases()), [](const auto& info) {
    return std::string(std::get<0>(info.param).name) + "_" + kiln::test::level_name(std::get<1>(info.param));
});

// The default threshold: a batch of kCpuTiledAttentionMinTokens runs tiled, one token fewer does
// not, and a single token never does (whatever the threshold).
TEST(TiledAttentionThreshold, PromptsTiledDecodePerRow) {
    const int64_t m = kiln::backend::kCpuTiledAttentionMinTokens;
    ASSERT_EQ(kiln::backend::cpu_tiled_attention_min_tokens(), m);
    for (auto [n, tiled] : {std::pair<int64_t, bool>{m, true}, {m - 1, false}, {1, false}}) {
        Prompt r({"threshold", 4, 2, 32, 32, 6, n});
        const int64_t runs = kiln::backend::cpu_tiled_attention_runs();
        const double err = rel_error(r.prompt(), r.reference());
        EXPECT_EQ(kiln::backend::cpu_tiled_attention_runs(), runs + (tiled ? 1 : 0)) << "batch of " << n;
        EXPECT_LT(err, 4e-6) << "batch of " << n;
    }
    TiledFrom f(0);  // below 2: a single token still takes the per-row path
    Prompt r({"threshold", 4, 2, 32, 32, 6, 1});
    const int64_t runs = kiln::backend::cpu_tiled_attention_runs();
    r.prompt();
    EXPECT_EQ(kiln::backend::cpu_tiled_attention_runs(), runs);
}

}  // namespace

namespace {

// Decode (a batch below the tiled threshold): the split path - each KV head's query rows in one
// pass over the keys, the keys in chunks over three threads, the parts merged - against the naive
// double attention, at depths that give several chunks, with rings, sinks, soft-capping, quantized
// caches and MLA.
const std::vector<Case>& decode_cases() {
    static const std::vector<Case> v = {
        // name, heads, kv heads, dk, dv, prefix (depth), tokens, cache, window, slots, softcap, sinks, mla
        {"decode_gqa32_8_d128_f16_depth700", 32, 8, 128, 128, 700, 1},
        {"decode_gqa8_2_d128_q8_0_three_tokens", 8, 2, 128, 128, 600, 3, KvType::Q8_0},
        {"decode_gqa8_2_d64_q4_0", 8, 2, 64, 64, 520, 1, KvType::Q4_0},
        {"decode_ring_window300_sinks_softcap", 8, 2, 64, 64, 900, 2, KvType::F16, 300, 300 + 2 - 1, 30.0f, true},
        {"decode_mla20_1_k576_v512_f16_depth1000", 20, 1, 576, 512, 1000, 1, KvType::F16, 0, 0, 0.0f, false, true},
        {"decode_mla16_1_k80_v64_q8_0_two_tokens", 16, 1, 80, 64, 530, 2, KvType::Q8_0, 0, 0, 0.0f, false, true},
        {"decode_short_context_one_chunk", 4, 1, 32, 32, 5, 1},
    };
    return v;
}

class SplitAttention : public kiln::test::AtEveryKernelLevel<Case> {};

TEST_P(SplitAttention, MatchesNaiveDouble) {
    const Case& c = param();
    Prompt r(c);
    const std::vector<double> want = r.reference();
    TiledFrom f(std::numeric_limits<int64_t>::max());
    const int64_t runs = kiln::backend::cpu_split_attention_runs();
    const std::vector<float> got = r.prompt();
    EXPECT_GT(kiln::backend::cpu_split_attention_runs(), runs) << "the batch did not run split";
    const double err = rel_error(got, want);
    std::printf("    [max rel error] %-40s %-10s split %.3g\n", c.name, kiln::kernels::kernel_level_name(), err);
    EXPECT_LT(err, 4e-6);
}

INSTANTIATE_TEST_SUITE_P(Cases, SplitAttention, kiln::test::at_every_kernel_level(decode_cases()), [](const auto& info) {
    return std::string(std::get<0>(info.param).name) + "_" + kiln::test::level_name(std::get<1>(info.param));
});

}  // namespace
