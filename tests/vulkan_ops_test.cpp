// The shaders added for gemma3, gpt-oss and deepseek2 on Vulkan, each against the CPU backend's op:
// the same one-op graph (graph/graph.h) runs on the CPU backend and gives the reference; the
// shader runs through kiln::vk::Backend on random non-zero inputs into an output poisoned with
// NaN first, so an element a shader forgets to write fails. Covered: geglu, swiglu_oai, softcap,
// sigmoid, normalize_sum, top_k (plain, biased, group-limited), gather, moe_matmul (MoE with
// shared and per-slot inputs and biases, per-head), moe_combine, slice_heads, concat_heads, YaRN
// rope, the sliding-window KV ring (kv_write + attention), soft-capped attention, attention
// sinks, and MLA attention with 20 query heads on one KV head, K rows of 576 and V of 512.
// Skipped (loudly) without a Vulkan device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "backend/vulkan/backend.h"
#include "graph/graph.h"
#include "kernels/kv_quant.h"
#include "kiln/error.h"
#include "quant/quant.h"
#include "support/vulkan.h"
#include "support/random.h"

namespace {

using kiln::TensorType;
using kiln::graph::DType;
using kiln::graph::Graph;
using kiln::graph::TensorId;
using kiln::vk::Tensor;

constexpr uint32_t kPoison = 0x7fc00000u;  // quiet NaN
constexpr uint32_t kPoisonHalves = 0x7e007e00u;  // two f16 NaNs: poisons every scale of a quantized KV head

class VulkanOps : public kiln::test::VulkanOpsSuite<VulkanOps> {
protected:
    Tensor i32(const std::vector<int32_t>& v, std::initializer_list<int64_t> ne, const char* name) {
        Tensor t = vk().tensor(TensorType::I32, ne, name);
        vk().upload(t, v.data(), t.bytes());
        return t;
    }
    Tensor poisoned(TensorType type, std::initializer_list<int64_t> ne, const char* name) {
        Tensor t = vk().tensor(type, ne, name);
        vk().fill(t, kPoison);
        return t;
    }
};

using kiln::test::random_nonzero_floats;  // relative errors need nonzero values

std::vector<uint8_t> quantized(TensorType t, const std::vector<float>& f, int64_t k) {
    const uint64_t rb = *kiln::row_bytes(t, static_cast<uint64_t>(k));
    const int64_t rows = static_cast<int64_t>(f.size()) / k;
    std::vector<uint8_t> out(rb * static_cast<uint64_t>(rows));
    for (int64_t r = 0; r < rows; ++r) kiln::quantize_row(t, f.data() + r * k, out.data() + rb * static_cast<uint64_t>(r), k);
    return out;
}

// max |got - want| / max |want|; NaN anywhere: infinity.
double rel_error(const std::vector<float>& got, const std::vector<float>& want) {
    EXPECT_EQ(got.size(), want.size());
    double err = 0, scale = 0;
    for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
        if (!std::isfinite(got[i]) || !std::isfinite(want[i])) return INFINITY;
        err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
        scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
    }
    return scale > 0 ? err / scale : err;
}

void report(const std::string& what, double err) {
    std::printf("    [max rel error vs CPU] %-44s %.3g\n", what.c_str(), err);
    ::testing::Test::RecordProperty(what, std::to_string(err));
}

// The CPU backend running a graph: inputs set by id, one output read back.
struct CpuRun {
    Graph g;
    std::vector<std::pair<TensorId, std::vector<uint8_t>>> inputs;

    TensorId input_f32(const std::vector<float>& v, int64_t ne0, int64_t ne1) {
        const TensorId id = g.input("in" + std::to_string(inputs.size()), DType::F32, ne0, ne1);
        inputs.emplace_back(id, std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(v.data()),
                                                     reinterpret_cast<const uint8_t*>(v.data() + v.size())));
        return id;
    }
    TensorId input_i32(const std::vector<int32_t>& v, int64_t ne0, int64_t ne1) {
        const TensorId id = g.input("in" + std::to_string(inputs.size()), DType::I32, ne0, ne1);
        inputs.emplace_back(id, std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(v.data()),
                                                     reinterpret_cast<const uint8_t*>(v.data() + v.size())));
        return id;
    }
    // Runs on `be` (a fresh one-thread CPU backend unless given) and returns the output's words.
    std::vector<float> run(TensorId out, kiln::backend::Backend* be = nullptr, kiln::backend::KvBuffers* kv = nullptr,
                           int64_t base = 0) {
        std::unique_ptr<kiln::backend::Backend> own;
        if (!be) be = (own = kiln::backend::make_cpu_backend(1)).get();
        g.mark_output(out, "out");
        const int64_t n = g.tensor(out).n_elements();
        auto exe = be->compile(g);
        for (const auto& [id, bytes] : inputs) exe->set_input(id, bytes.data(), bytes.size());
        kiln::backend::RunArgs a;
        a.kv = kv;
        a.kv_base = base;
        exe->run(a);
        const float* p = exe->output(exe->graph().find("out"));
        return std::vector<float>(p, p + n);
    }
};

std::vector<int32_t> as_i32(const std::vector<float>& words) {
    std::vector<int32_t> v(words.size());
    std::memcpy(v.data(), words.data(), words.size() * 4);
    return v;
}

}  // namespace

// ---- gated activations, soft-capping, routing ------------------------------------------------

TEST_F(VulkanOps, GegluSwigluOaiSoftcapSigmoidMatchTheCpu) {
    for (int64_t n : {1, 7, 64}) {
        const int64_t K = 301;
        const auto a = random_nonzero_floats(static_cast<size_t>(K * n), 1, -9, 9), b = random_nonzero_floats(static_cast<size_t>(K * n), 2, -9, 9);
        Tensor ta = f32(a, {K, n}, "a"), tb = f32(b, {K, n}, "b");
        struct Case {
            const char* name;
            std::function<TensorId(CpuRun&, TensorId, TensorId)> cpu;
            std::function<void(const Tensor&)> gpu;
        };
        const std::vector<Case> cases = {
            {"geglu", [](CpuRun& c, TensorId x, TensorId y) { return c.g.geglu(x, y); },
             [&](const Tensor& o) { vk().geglu(ta, tb, o); }},
            {"swiglu_oai", [](CpuRun& c, TensorId x, TensorId y) { return c.g.swiglu_oai(x, y, 1.702f, 7.0f); },
             [&](const Tensor& o) { vk().swiglu_oai(ta, tb, o, 1.702f, 7.0f); }},
            {"softcap", [](CpuRun& c, TensorId x, TensorId) { return c.g.softcap(x, 3.5f); },
             [&](const Tensor& o) { vk().softcap(ta, 3.5f, o); }},
            {"sigmoid", [](CpuRun& c, TensorId x, TensorId) { return c.g.sigmoid(x); },
             [&](const Tensor& o) { vk().sigmoid(ta, o); }},
        };
        for (const Case& c : cases) {
            CpuRun cpu;
            const TensorId x = cpu.input_f32(a, K, n), y = cpu.input_f32(b, K, n);
            const auto want = cpu.run(c.cpu(cpu, x, y));
            Tensor o = poisoned(TensorType::F32, {K, n}, "o");
            c.gpu(o);
            const double err = rel_error(vk().read_f32(o), want);
            report(std::string(c.name) + " n=" + std::to_string(n), err);
            EXPECT_LT(err, 1e-5) << c.name;
        }
    }
}

TEST_F(VulkanOps, NormalizeSumMatchesTheCpu) {
    const int64_t k = 6, n = 37;
    auto a = random_nonzero_floats(static_cast<size_t>(k * n), 3, 0.01f, 1.0f);
    std::fill(a.begin(), a.begin() + k, 0.0f);  // an all-zero row stays finite (zero)
    CpuRun cpu;
    const auto want = cpu.run(cpu.g.normalize_sum(cpu.input_f32(a, k, n)));
    Tensor o = poisoned(TensorType::F32, {k, n}, "o");
    vk().normalize_sum(f32(a, {k, n}, "a"), o);
    const double err = rel_error(vk().read_f32(o), want);
    report("normalize_sum", err);
    EXPECT_LT(err, 1e-6);
}

TEST_F(VulkanOps, TopKAndGatherMatchTheCpu) {
    struct Case {
        int64_t n_expert;
        int k, n_group, n_group_used;
        bool bias;
        const char* name;
    };
    for (const Case c : {Case{4, 2, 1, 1, false, "4 experts top-2"}, Case{64, 6, 1, 1, true, "64 top-6 biased"},
                         Case{256, 8, 8, 4, true, "256 top-8, 4 of 8 groups"}, Case{32, 4, 4, 2, false, "32 top-4, 2 of 4 groups"}}) {
        for (int64_t n : {1, 9, 64}) {
            const auto s = random_nonzero_floats(static_cast<size_t>(c.n_expert * n), 10 + static_cast<uint32_t>(n), -3, 3);
            const auto b = random_nonzero_floats(static_cast<size_t>(c.n_expert), 11, -0.5f, 0.5f);
            kiln::graph::TopKParams tp;
            tp.k = c.k;
            tp.n_group = c.n_group;
            tp.n_group_used = c.n_group_used;
            CpuRun cpu;
            const TensorId sc = cpu.input_f32(s, c.n_expert, n);
            const TensorId bi = c.bias ? cpu.g.weight("bias", TensorType::F32, b.data(), c.n_expert, 1) : kiln::graph::kNone;
            const auto want = as_i32(cpu.run(cpu.g.top_k(sc, bi, tp)));
            CpuRun cpu_gather;
            const auto want_g = cpu_gather.run(
                cpu_gather.g.gather(cpu_gather.input_f32(s, c.n_expert, n), cpu_gather.input_i32(want, c.k, n)));

            Tensor ts = f32(s, {c.n_expert, n}, "scores"), tb = f32(b, {c.n_expert}, "bias");
            Tensor ids = poisoned(TensorType::I32, {c.k, n}, "ids");
            vk().top_k(ts, c.bias ? &tb : nullptr, ids, tp);
            Tensor g = poisoned(TensorType::F32, {c.k, n}, "gathered");
            vk().gather(ts, ids, g);
            std::vector<int32_t> got(want.size());
            vk().read(ids, got.data(), ids.bytes());
            EXPECT_EQ(got, want) << c.name << " n=" << n;
            const double err = rel_error(vk().read_f32(g), want_g);
            report(std::string("top_k + gather ") + c.name + " n=" + std::to_string(n), err);
            EXPECT_EQ(err, 0.0) << c.name;
        }
    }
}

// ---- MoE and per-head matmuls ----------------------------------------------------------------

TEST_F(VulkanOps, MoeMatmulReadsTheChosenExpertsLikeTheCpu) {
    const int64_t K = 256, R = 48, G = 8, S = 3;
    for (TensorType type : {TensorType::F32, TensorType::F16, TensorType::Q8_0, TensorType::Q4_K, TensorType::MXFP4}) {
        const auto wf = random_nonzero_floats(static_cast<size_t>(K * R * G), 20);
        std::vector<uint8_t> wbytes;
        if (type == TensorType::F32) {
            wbytes.assign(reinterpret_cast<const uint8_t*>(wf.data()), reinterpret_cast<const uint8_t*>(wf.data() + wf.size()));
        } else {
            wbytes = quantized(type, wf, K);
        }
        const auto bias = random_nonzero_floats(static_cast<size_t>(R * G), 21);
        Tensor tw = vk().tensor(type, {K, R, G}, "experts");
        vk().upload(tw, wbytes.data(), wbytes.size());
        Tensor tbias = f32(bias, {R, G}, "bias");
        // 1 and 5 tokens: decode's kernel by default; 33 and 80 (13 and 30 slots per expert): the
        // tiled kernel's 16- and 32-column tiles.
        for (int64_t n : {1, 5, 33, 80}) {
            for (const bool per_slot : {false, true}) {
                for (const bool with_bias : {false, true}) {
                    const int64_t xk = per_slot ? S * K : K;
                    const auto x = random_nonzero_floats(static_cast<size_t>(xk * n), 22 + static_cast<uint32_t>(n), -2, 2);
                    std::vector<int32_t> ids(static_cast<size_t>(S * n));
                    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 5 + i / 3) % G);
                    CpuRun cpu;
                    const TensorId w = cpu.g.weight3("experts", type, wbytes.data(), K, R, G);
                    const TensorId b = with_bias ? cpu.g.weight("bias", TensorType::F32, bias.data(), R, G) : kiln::graph::kNone;
                    const auto want = cpu.run(cpu.g.moe_matmul(w, cpu.input_f32(x, xk, n), cpu.input_i32(ids, S, n), b));

                    // The one-output kernel with both reductions (plain, and subgroupAdd where the
                    // device has it), float or integer dot products (where the device has them; Q8_0
                    // and Q4_K here, the other types keep the float path), and the tiled kernel
                    // (routing lists, one product per expert).
                    const kiln::vk::MatvecOptions saved = vk().matvec_options();
                    for (const int variant : {0, 1, 2, 3, 4}) {
                        const bool subgroup = variant == 1 || variant == 4, tiled = variant == 2, dot = variant >= 3;
                        if (subgroup && !vk().device().subgroup_arithmetic) continue;
                        if (dot && !vk().device().integer_dot_product) continue;
                        vk().set_matvec_options({subgroup, 1, dot});
                        Tensor y = poisoned(TensorType::F32, {S * R, n}, "y");
                        Tensor tids = i32(ids, {S, n}, "ids");
                        vk().moe_matmul(tw, f32(x, {xk, n}, "x"), &tids, with_bias ? &tbias : nullptr, y,
                                        tiled ? kiln::vk::MatmulKernel::Tiled : kiln::vk::MatmulKernel::Vector);
                        const double err = rel_error(vk().read_f32(y), want);
                        const std::string what = std::string("moe_matmul ") + kiln::type_name(type) + " n=" +
                                                 std::to_string(n) + (per_slot ? " x per slot" : " x shared") +
                                                 (with_bias ? " +bias" : "") + (dot ? " intdot" : "") +
                                                 (tiled ? " tiled" : subgroup ? " subgroup" : " plain");
                        if (n == 5 || (n > 8 && tiled)) report(what, err);
                        // Quantized: the CPU's per-token kernels (a few slots per expert: n <= 8)
                        // quantize x to 8 bits per group as the integer-dot shaders do; its tiled
                        // kernels (more slots) and the float shaders do not.
                        const bool exact = type == TensorType::F32 || type == TensorType::F16 ||
                                           (dot && !tiled && n <= 8 && kiln::vk::Backend::supports_integer_dot(type));
                        EXPECT_LT(err, exact ? 1e-5 : 2e-2) << what;
                    }
                    vk().set_matvec_options(saved);
                }
            }
        }
    }
}

TEST_F(VulkanOps, TiledMoeMatmulHandlesSkewedAndBadRoutes) {
    // 150 tokens of 3 slots over 9 experts: expert 2 takes the first slot of every token (150
    // slots: more column tiles than the dispatch gives each expert, so a workgroup walks several),
    // expert 7 none, a few tokens repeat an expert in two slots, and ids -1 and 9 (out of range)
    // must come out as NaN without touching the other outputs. The routing order varies; the
    // values must not: two runs are compared bit for bit.
    const int64_t K = 96, R = 80, G = 9, S = 3, n = 150;
    const auto wf = random_nonzero_floats(static_cast<size_t>(K * R * G), 50);
    const auto wbytes = quantized(TensorType::Q8_0, wf, K);
    Tensor tw = vk().tensor(TensorType::Q8_0, {K, R, G}, "experts");
    vk().upload(tw, wbytes.data(), wbytes.size());
    const auto x = random_nonzero_floats(static_cast<size_t>(K * n), 51, -2, 2);
    std::vector<int32_t> ids(static_cast<size_t>(S * n));
    for (int64_t t = 0; t < n; ++t) {
        ids[static_cast<size_t>(t * S)] = 2;
        ids[static_cast<size_t>(t * S + 1)] = static_cast<int32_t>(t % 5 == 0 ? 2 : (t * 3) % 7 == 0 ? 8 : (t % 6) + (t % 6 >= 2));
        ids[static_cast<size_t>(t * S + 2)] = static_cast<int32_t>(t == 17 ? -1 : t == 90 ? G : 3 + (t % 4 == 3 ? 5 : t % 4));
    }
    std::vector<int32_t> valid = ids;
    for (auto& id : valid) id = id < 0 || id >= G ? 0 : id;
    CpuRun cpu;
    const TensorId w = cpu.g.weight3("experts", TensorType::Q8_0, wbytes.data(), K, R, G);
    auto want = cpu.run(cpu.g.moe_matmul(w, cpu.input_f32(x, K, n), cpu.input_i32(valid, S, n)));
    std::vector<float> first;
    for (int run = 0; run < 2; ++run) {
        Tensor y = vk().tensor(TensorType::F32, {S * R, n}, "y");
        vk().fill(y, 0x3f800000u);  // 1.0: the NaNs below must be written by the shader
        Tensor tids = i32(ids, {S, n}, "ids");
        vk().moe_matmul(tw, f32(x, {K, n}, "x"), &tids, nullptr, y, kiln::vk::MatmulKernel::Tiled);
        auto got = vk().read_f32(y);
        size_t nans = 0;
        for (size_t slot = 0; slot < ids.size(); ++slot) {
            if (ids[slot] >= 0 && ids[slot] < G) continue;
            for (int64_t r = 0; r < R; ++r) {
                const size_t i = slot * static_cast<size_t>(R) + static_cast<size_t>(r);
                nans += std::isnan(got[i]) ? 1 : 0;
                got[i] = want[i] = 0;
            }
        }
        EXPECT_EQ(nans, 2u * static_cast<size_t>(R)) << "the two out-of-range slots";
        const double err = rel_error(got, want);
        if (run == 0) report("moe_matmul tiled q8_0, skewed routes", err);
        EXPECT_LT(err, 2e-2);
        if (run == 0) first = got;
        else EXPECT_EQ(got, first) << "the tiled MoE matmul changed between runs";
    }
}

TEST_F(VulkanOps, HeadMatmulIsOneMatrixPerHead) {
    // MLA's absorbed projections: a [192, 512, H] F16 stack and a Q8_0 view with a row stride.
    const int64_t K = 192, R = 512, H = 4;
    const auto wf = random_nonzero_floats(static_cast<size_t>(K * R * H), 30);
    std::vector<uint16_t> wh(wf.size());
    for (size_t i = 0; i < wf.size(); ++i) wh[i] = kiln::fp32_to_fp16(wf[i]);
    Tensor tw = vk().tensor(TensorType::F16, {K, R, H}, "k_b");
    vk().upload(tw, wh.data(), wh.size() * 2);
    // 1 and 6 tokens: one output per workgroup; 70: the tiled kernel (two column tiles).
    for (int64_t n : {1, 6, 70}) {
        const auto x = random_nonzero_floats(static_cast<size_t>(K * H * n), 31, -2, 2);
        CpuRun cpu;
        const auto want = cpu.run(cpu.g.head_matmul(cpu.g.weight3("k_b", TensorType::F16, wh.data(), K, R, H), cpu.input_f32(x, K * H, n)));
        Tensor y = poisoned(TensorType::F32, {R * H, n}, "y");
        vk().moe_matmul(tw, f32(x, {K * H, n}, "x"), nullptr, nullptr, y);
        const double err = rel_error(vk().read_f32(y), want);
        report("head_matmul f16 [192, 512, 4] n=" + std::to_string(n), err);
        EXPECT_LT(err, 1e-5);
    }
}

TEST_F(VulkanOps, MoeCombineSliceAndConcatHeadsMatchTheCpu) {
    const int64_t E = 96, S = 4, n = 11;
    const auto y = random_nonzero_floats(static_cast<size_t>(S * E * n), 40), w = random_nonzero_floats(static_cast<size_t>(S * n), 41, 0.01f, 1);
    {
        CpuRun cpu;
        const auto want = cpu.run(cpu.g.moe_combine(cpu.input_f32(y, S * E, n), cpu.input_f32(w, S, n)));
        Tensor o = poisoned(TensorType::F32, {E, n}, "o");
        vk().moe_combine(f32(y, {S * E, n}, "y"), f32(w, {S, n}, "w"), o);
        const double err = rel_error(vk().read_f32(o), want);
        report("moe_combine", err);
        EXPECT_LT(err, 1e-6);
    }
    const int H = 5, hd = 24;
    const auto x = random_nonzero_floats(static_cast<size_t>(H * hd * n), 42);
    for (auto [first, count] : {std::pair{0, 16}, std::pair{16, 8}, std::pair{3, 21}}) {
        CpuRun cpu;
        const auto want = cpu.run(cpu.g.slice_heads(cpu.input_f32(x, H * hd, n), H, hd, first, count));
        Tensor o = poisoned(TensorType::F32, {static_cast<int64_t>(H) * count, n}, "o");
        vk().slice_heads(f32(x, {H * hd, n}, "x"), o, H, hd, first, count);
        const double err = rel_error(vk().read_f32(o), want);
        report("slice_heads [" + std::to_string(first) + ", +" + std::to_string(count) + ")", err);
        EXPECT_EQ(err, 0.0);
    }
    const auto b = random_nonzero_floats(static_cast<size_t>(H * 8 * n), 43);
    CpuRun cpu;
    const auto want = cpu.run(cpu.g.concat_heads(cpu.input_f32(x, H * hd, n), cpu.input_f32(b, H * 8, n), H));
    Tensor o = poisoned(TensorType::F32, {H * (hd + 8), n}, "o");
    vk().concat_heads(f32(x, {H * hd, n}, "a"), f32(b, {H * 8, n}, "b"), o, H);
    const double err = rel_error(vk().read_f32(o), want);
    report("concat_heads", err);
    EXPECT_EQ(err, 0.0);
}

// ---- YaRN rope -----------------------------------------------------------------------------

TEST_F(VulkanOps, RopeYarnMatchesTheCpu) {
    struct Case {
        kiln::graph::RopeMode mode;
        int head_dim, n_dims;
        float base, scale, attn_factor;
        int n_ctx_orig;
        const char* name;
    };
    for (const Case c : {Case{kiln::graph::RopeMode::Neox, 64, 64, 150000.0f, 1.0f / 32, 1.3466f, 4096, "neox yarn x32 (gpt-oss)"},
                         Case{kiln::graph::RopeMode::Normal, 64, 64, 10000.0f, 1.0f / 40, 1.0f, 4096, "normal yarn x40 (deepseek2)"}}) {
        const int n_head = 3;
        for (int64_t n : {1, 17}) {
            const auto x = random_nonzero_floats(static_cast<size_t>(c.head_dim * n_head * n), 50, -2, 2);
            std::vector<int32_t> pos(static_cast<size_t>(n));
            for (size_t i = 0; i < pos.size(); ++i) pos[i] = static_cast<int32_t>(i * 97 + 3);  // up to ~1.5K
            kiln::graph::RopeParams rp;
            rp.mode = c.mode;
            rp.n_head = n_head;
            rp.head_dim = c.head_dim;
            rp.n_dims = c.n_dims;
            rp.freq_base = c.base;
            rp.freq_scale = c.scale;
            rp.ext_factor = 1.0f;
            rp.attn_factor = c.attn_factor;
            rp.n_ctx_orig = c.n_ctx_orig;
            CpuRun cpu;
            const auto want = cpu.run(cpu.g.rope(cpu.input_f32(x, c.head_dim * n_head, n), cpu.input_i32(pos, n, 1), rp));

            Tensor o = poisoned(TensorType::F32, {c.head_dim, n_head, n}, "o");
            vk().rope(f32(x, {c.head_dim, n_head, n}, "x"), i32(pos, {n}, "pos"), o, rp);
            const double err = rel_error(vk().read_f32(o), want);
            report(std::string("rope ") + c.name + " n=" + std::to_string(n), err);
            EXPECT_LT(err, 1e-4) << c.name;
        }
    }
}

// ---- KV ring, soft-capping, sinks, MLA ----------------------------------------------------------

namespace {

struct AttnCase {
    int n_head, n_head_kv, dk, dv;
    int window = 0;
    int64_t slots = 0;  // 0: a full cache of n_ctx
    float softcap = 0.0f;
    bool sinks = false;
    bool mla = false;
    const char* name = "";
    kiln::KvType kv = kiln::KvType::F16;  // both caches' type
};

}  // namespace

// Two batches (a prefix, then n tokens) stored and attended on the CPU backend and on Vulkan:
// kv_write (the ring where the layer is one) + attention, against store_kv + attention.
class VulkanAttentionOps : public VulkanOps {
protected:
    int f16_tiles_ = -1;  // AttentionRun::f16_tiles of the Vulkan runs
    // batch: the prefix's batch size; attend_prefix: whether the prefix batches attend too (else
    // they only store their keys and values); kernel/chunks: the Vulkan attention's variant.
    double run_case(const AttnCase& c, int64_t prefix, int64_t n, int64_t batch = 8, bool attend_prefix = true,
                    kiln::vk::AttentionKernel kernel = kiln::vk::AttentionKernel::Auto, uint32_t chunks = 0) {
        const int64_t n_ctx = prefix + n + 3;
        kiln::graph::AttentionParams ap;
        ap.n_head = c.n_head;
        ap.n_head_kv = c.n_head_kv;
        ap.head_dim_k = c.dk;
        ap.head_dim_v = c.dv;
        ap.scale = 1.0f / std::sqrt(static_cast<float>(c.dk));
        ap.window = c.window;
        ap.softcap = c.softcap;
        ap.v_in_k = c.mla;
        kiln::backend::KvLayout layout;
        layout.n_ctx = n_ctx;
        layout.type_k = layout.type_v = c.kv;
        kiln::KvLayer ls;
        ls.n_head_kv = c.n_head_kv;
        ls.head_dim_k = c.dk;
        ls.head_dim_v = c.dv;
        ls.v_in_k = c.mla;
        ls.n_slots = c.slots;
        layout.layers.push_back(ls);
        const int64_t slots = layout.slots(0);
        const bool ring = layout.is_ring(0);

        auto cpu_be = kiln::backend::make_cpu_backend(1);
        auto cpu_kv = cpu_be->alloc_kv(layout);
        // Poisoned: every half (an f16 value or a quantized head's scale) is a NaN until written.
        const uint32_t poison = c.kv == kiln::KvType::F16 ? kPoison : kPoisonHalves;
        Tensor kc = vk().kv_cache(c.kv, c.dk, c.n_head_kv, slots, "k_cache");
        vk().fill(kc, poison);
        Tensor vc = kc;
        if (!c.mla) {
            vc = vk().kv_cache(c.kv, c.dv, c.n_head_kv, slots, "v_cache");
            vk().fill(vc, poison);
        }
        const auto sinks = random_nonzero_floats(static_cast<size_t>(c.n_head), 60, -2, 2);
        Tensor tsinks = f32(sinks, {c.n_head}, "sinks");
        std::vector<float> want;
        Tensor out;
        int64_t base = 0;
        // The prefix in batches of at most `batch` (8: what a ring sized for batches of 8 takes), then n.
        std::vector<int64_t> batches;
        for (int64_t done = 0; done < prefix; done += batch) batches.push_back(std::min<int64_t>(batch, prefix - done));
        batches.push_back(n);
        for (size_t bi = 0; bi < batches.size(); ++bi) {
            const int64_t m = batches[bi];
            const bool attend = attend_prefix || bi + 1 == batches.size();
            const auto k = random_nonzero_floats(static_cast<size_t>(c.n_head_kv * c.dk * m), 61 + static_cast<uint32_t>(base), -2, 2);
            const auto v = random_nonzero_floats(static_cast<size_t>(c.n_head_kv * c.dv * m), 62 + static_cast<uint32_t>(base), -2, 2);
            const auto q = random_nonzero_floats(static_cast<size_t>(c.n_head * c.dk * m), 63 + static_cast<uint32_t>(base), -1, 1);
            CpuRun cpu;
            const TensorId tk = cpu.input_f32(k, c.n_head_kv * c.dk, m);
            const TensorId tv = c.mla ? kiln::graph::kNone : cpu.input_f32(v, c.n_head_kv * c.dv, m);
            cpu.g.store_kv(tk, tv, ap);
            if (!attend) {  // store only (the graph's output: a cheap op on its K input)
                cpu.run(cpu.g.add(tk, tk), cpu_be.get(), cpu_kv.get(), base);
                vk().kv_write(f32(k, {c.dk, c.n_head_kv, m}, "k"), kc, static_cast<uint32_t>(base), ring, c.kv);
                if (!c.mla) vk().kv_write(f32(v, {c.dv, c.n_head_kv, m}, "v"), vc, static_cast<uint32_t>(base), ring, c.kv);
                base += m;
                continue;
            }
            const TensorId ts = c.sinks ? cpu.g.weight("sinks", TensorType::F32, sinks.data(), c.n_head, 1) : kiln::graph::kNone;
            want = cpu.run(cpu.g.attention(cpu.input_f32(q, c.n_head * c.dk, m), ap, ts), cpu_be.get(), cpu_kv.get(), base);

            vk().kv_write(f32(k, {c.dk, c.n_head_kv, m}, "k"), kc, static_cast<uint32_t>(base), ring, c.kv);
            if (!c.mla) vk().kv_write(f32(v, {c.dv, c.n_head_kv, m}, "v"), vc, static_cast<uint32_t>(base), ring, c.kv);
            kiln::vk::AttentionRun p;
            p.k_type = p.v_type = c.kv;
            p.pos0 = static_cast<uint32_t>(base);
            p.n_kv = static_cast<uint32_t>(base + m);
            p.ring = ring;
            p.kernel = kernel;
            p.split_chunks = chunks;
            p.f16_tiles = f16_tiles_;
            out = poisoned(TensorType::F32, {c.dv, c.n_head, m}, "out");
            vk().attention(f32(q, {c.dk, c.n_head, m}, "q"), kc, vc, out, ap, p, c.sinks ? &tsinks : nullptr);
            base += m;
        }
        return rel_error(vk().read_f32(out), want);
    }
};

TEST_F(VulkanAttentionOps, SlidingWindowRingSoftcapAndSinksMatchTheCpu) {
    // gemma3: window 16 in a ring of 16 + 8 - 1 slots (batches of up to 8), soft-capped scores;
    // gpt-oss: window 8 with sinks; a full cache with sinks; GQA throughout.
    const std::vector<AttnCase> cases = {
        {4, 1, 64, 64, 16, 23, 0.0f, false, false, "gemma3 ring 23, window 16"},
        {4, 1, 64, 64, 16, 23, 50.0f, false, false, "ring + softcap 50"},
        {8, 2, 64, 64, 0, 0, 2.0f, false, false, "full, softcap 2 (saturating)"},
        {4, 2, 32, 32, 8, 15, 0.0f, true, false, "gpt-oss ring 15, window 8, sinks"},
        {4, 2, 32, 32, 0, 0, 0.0f, true, false, "full + sinks"},
    };
    for (const AttnCase& c : cases)
        for (auto [prefix, n] : {std::pair<int64_t, int64_t>{40, 1}, {45, 7}, {3, 8}}) {
            if (c.slots && c.window + n - 1 > c.slots) continue;
            const double err = run_case(c, prefix, n);
            report(std::string(c.name) + " at " + std::to_string(prefix) + " n=" + std::to_string(n), err);
            EXPECT_LT(err, 1e-4) << c.name << " prefix " << prefix << " n " << n;
        }
}

TEST_F(VulkanAttentionOps, MlaTwentyQueryHeadsOnOneKvHeadK576V512) {
    // GLM-4.7-Flash's absorbed attention: 20 query heads share one cache row of 576 halves (512
    // latent + 64 rope) whose first 512 are the value.
    const AttnCase c{20, 1, 576, 512, 0, 0, 0.0f, false, true, "mla 20:1 K576 V512"};
    for (auto [prefix, n] : {std::pair<int64_t, int64_t>{70, 1}, {66, 5}}) {
        const double err = run_case(c, prefix, n);
        report(std::string(c.name) + " at " + std::to_string(prefix) + " n=" + std::to_string(n), err);
        EXPECT_LT(err, 1e-4) << "prefix " << prefix << " n " << n;
    }
}

TEST_F(VulkanAttentionOps, SplitKDecodeOnALongContextMatchesTheCpu) {
    // Flash-decoding: the keys of a long context cut into chunks run by separate workgroups, then
    // combined. Forced (Split, chosen and odd chunk counts) and as Auto picks it for decode; GQA,
    // a sliding-window ring with sinks, soft-capping, and MLA 20:1 with K 576 / V 512.
    using kiln::vk::AttentionKernel;
    const std::vector<AttnCase> cases = {
        {8, 2, 64, 64, 0, 0, 0.0f, false, false, "gqa 8:2 full"},
        {8, 2, 64, 64, 0, 0, 30.0f, true, false, "gqa 8:2 full, softcap 30, sinks"},
        {4, 1, 64, 64, 1024, 1024 + 64 - 1, 0.0f, true, false, "ring 1087, window 1024, sinks"},
        {20, 1, 576, 512, 0, 0, 0.0f, false, true, "mla 20:1 K576 V512"},
    };
    const std::pair<AttentionKernel, uint32_t> kernels[] = {
        {AttentionKernel::Auto, 0}, {AttentionKernel::Split, 0}, {AttentionKernel::Split, 7}, {AttentionKernel::Single, 0}};
    for (const AttnCase& c : cases)
        for (auto [prefix, n] : {std::pair<int64_t, int64_t>{3100, 1}, {3077, 4}})
            for (auto [kernel, chunks] : kernels) {
                const double err = run_case(c, prefix, n, 64, false, kernel, chunks);
                const char* kname = kernel == AttentionKernel::Auto    ? "auto"
                                    : kernel == AttentionKernel::Split ? "split"
                                                                       : "single";
                report(std::string(c.name) + " at " + std::to_string(prefix) + " n=" + std::to_string(n) + " " + kname +
                           (chunks ? " x" + std::to_string(chunks) : std::string()),
                       err);
                EXPECT_LT(err, 1e-4) << c.name << " prefix " << prefix << " n " << n << " " << kname << " " << chunks;
            }
}

TEST_F(VulkanOps, AttentionKernelChoiceSplitKOnGpusForDecodeOnLongContexts) {
    // Dispatches recorded per attention: 2 (split + combine) or 1 (single pass).
    using kiln::vk::AttentionKernel;
    Tensor kc = poisoned(TensorType::F16, {64, 2, 4096}, "k_cache");
    vk().fill(kc, 0x3c003c00u);
    auto dispatches = [&](int64_t n_tok, uint32_t n_kv, AttentionKernel kernel) {
        Tensor q = f32(random_nonzero_floats(static_cast<size_t>(64 * 8 * n_tok), 5), {64, 8, n_tok}, "q");
        Tensor out = poisoned(TensorType::F32, {64, 8, n_tok}, "out");
        kiln::graph::AttentionParams ap;
        ap.scale = 1.0f / std::sqrt(64.0f);
        kiln::vk::AttentionRun p;
        p.pos0 = n_kv - static_cast<uint32_t>(n_tok);
        p.n_kv = n_kv;
        p.kernel = kernel;
        const uint64_t d0 = vk().stats().dispatches;
        vk().attention(q, kc, kc, out, ap, p);
        const uint64_t d = vk().stats().dispatches - d0;
        for (float v : vk().read_f32(out)) EXPECT_TRUE(std::isfinite(v));
        return d;
    };
    const bool gpu = vk().device().type != kiln::vk::DeviceType::Cpu;
    EXPECT_EQ(dispatches(1, 4000, AttentionKernel::Auto), gpu ? 2u : 1u);
    EXPECT_EQ(dispatches(1, 4000, AttentionKernel::Single), 1u);
    EXPECT_EQ(dispatches(1, 4000, AttentionKernel::Split), 2u);
    EXPECT_EQ(dispatches(1, 300, AttentionKernel::Auto), 1u);   // short context: one pass
    EXPECT_EQ(dispatches(64, 600, AttentionKernel::Auto), 1u);  // a prompt: enough workgroups
}

TEST_F(VulkanAttentionOps, SplitKWithShortRangesAndEmptyChunks) {
    // More chunks than some tokens' ranges cover (a prompt of 8 after 40, a window of 8): chunks
    // empty for a token must drop out of the combine; sinks still count once.
    using kiln::vk::AttentionKernel;
    const std::vector<AttnCase> cases = {
        {4, 2, 32, 32, 8, 15, 0.0f, true, false, "ring 15, window 8, sinks"},
        {4, 2, 32, 32, 0, 0, 0.0f, true, false, "full + sinks"},
    };
    for (const AttnCase& c : cases)
        for (auto [prefix, n] : {std::pair<int64_t, int64_t>{40, 1}, {45, 8}, {0, 5}})
            for (uint32_t chunks : {2u, 5u, 13u}) {
                const double err = run_case(c, prefix, n, 8, true, AttentionKernel::Split, chunks);
                report(std::string(c.name) + " at " + std::to_string(prefix) + " n=" + std::to_string(n) + " split x" +
                           std::to_string(chunks),
                       err);
                EXPECT_LT(err, 1e-4) << c.name << " prefix " << prefix << " n " << n << " chunks " << chunks;
            }
}

TEST_F(VulkanAttentionOps, QuantizedKvCachesMatchTheCpu) {
    // q8_0 and q4_0 caches written by kv_write_quant and read by attention, against the CPU
    // backend's store_kv + attention over the same quantization (kernels/kv_quant.h): GQA, a ring
    // with a window and sinks, soft-capping, MLA 20:1 at K 576 / V 512 and MLA at K 80 / V 64
    // (a head of two blocks and a short one), single pass and split-K.
    using kiln::KvType;
    using kiln::vk::AttentionKernel;
    for (const KvType kv : {KvType::Q8_0, KvType::Q4_0}) {
        const std::vector<AttnCase> cases = {
            {8, 2, 128, 128, 0, 0, 0.0f, false, false, "gqa 8:2 d128", kv},
            {4, 1, 64, 64, 16, 23, 50.0f, false, false, "ring 23, window 16, softcap", kv},
            {4, 2, 32, 32, 8, 15, 0.0f, true, false, "ring 15, window 8, sinks", kv},
            {20, 1, 576, 512, 0, 0, 0.0f, false, true, "mla 20:1 K576 V512", kv},
            {4, 1, 80, 64, 0, 0, 0.0f, false, true, "mla 4:1 K80 V64", kv},
        };
        for (const AttnCase& c : cases)
            for (auto [prefix, n] : {std::pair<int64_t, int64_t>{40, 1}, {45, 7}})
                for (const AttentionKernel kernel : {AttentionKernel::Single, AttentionKernel::Split}) {
                    if (c.slots && c.window + n - 1 > c.slots) continue;
                    const double err = run_case(c, prefix, n, 8, true, kernel, kernel == AttentionKernel::Split ? 3 : 0);
                    report(std::string(kiln::kv_type_name(kv)) + " " + c.name + " at " + std::to_string(prefix) +
                               " n=" + std::to_string(n) + (kernel == AttentionKernel::Split ? " split" : ""),
                           err);
                    EXPECT_LT(err, 1e-4) << kiln::kv_type_name(kv) << " " << c.name << " prefix " << prefix << " n " << n;
                }
    }
}

TEST_F(VulkanAttentionOps, TiledPromptAttentionMatchesTheCpu) {
    // Query rows of a KV head R at a time against shared-memory tiles of keys: prompts of 7 and 33
    // tokens after a prefix (the rows of a tile then span several tokens and GQA heads, with
    // their own causal ranges and windows), f32 and 16-bit tiles, every cache type, MLA 20:1 at
    // K 576 / V 512 (the latent read once for all 20 heads), rings with sinks and soft-capping.
    using kiln::KvType;
    using kiln::vk::AttentionKernel;
    const bool fp16 = vk().device().fp16_arithmetic;
    for (const int f16 : {0, 1}) {
        if (f16 && !fp16) {
            std::printf("    (16-bit tiles not tested: %s has no fp16 arithmetic)\n", vk().device().name.c_str());
            continue;
        }
        f16_tiles_ = f16;
        for (const KvType kv : {KvType::F16, KvType::Q8_0, KvType::Q4_0}) {
            const std::vector<AttnCase> cases = {
                {8, 2, 64, 64, 0, 0, 0.0f, false, false, "gqa 8:2 d64", kv},
                {4, 1, 64, 64, 16, 56, 50.0f, false, false, "ring 56, window 16, softcap", kv},
                {4, 2, 32, 32, 8, 48, 0.0f, true, false, "ring 48, window 8, sinks", kv},
                {20, 1, 576, 512, 0, 0, 0.0f, false, true, "mla 20:1 K576 V512", kv},
                {4, 1, 80, 64, 0, 0, 0.0f, false, true, "mla 4:1 K80 V64", kv},
            };
            for (const AttnCase& c : cases)
                for (auto [prefix, n] : {std::pair<int64_t, int64_t>{0, 33}, {45, 7}, {41, 33}}) {
                    if (c.slots && c.window + n - 1 > c.slots) continue;
                    const double err = run_case(c, prefix, n, 33, true, AttentionKernel::Tiled);
                    report(std::string(f16 ? "f16 tiles " : "f32 tiles ") + kiln::kv_type_name(kv) + " " + c.name + " at " +
                               std::to_string(prefix) + " n=" + std::to_string(n),
                           err);
                    // f16 tiles hold an f16 cache exactly; a quantized cache's values are rounded to halves (2^-11).
                    EXPECT_LT(err, f16 && kv != KvType::F16 ? 2e-3 : 1e-4) << (f16 ? "f16 " : "f32 ") << kiln::kv_type_name(kv) << " " << c.name
                                                      << " prefix " << prefix << " n " << n;
                }
        }
    }
    // Auto takes it for a prompt of kTiledMinTokens or more: one dispatch either way, same result.
    f16_tiles_ = -1;
    const AttnCase c{8, 2, 64, 64, 0, 0, 0.0f, false, false, "auto"};
    EXPECT_LT(run_case(c, 40, kiln::vk::Backend::kTiledMinTokens, 40, true, AttentionKernel::Auto), 1e-4);
}

TEST_F(VulkanOps, QuantizedKvWriteStoresTheCpuBytes) {
    // The shader's codes and scales are the CPU's (kernels/kv_quant.h), byte for byte, for heads of
    // whole and short blocks, in a ring; rows not written keep their poison.
    using kiln::KvType;
    for (const KvType kv : {KvType::Q8_0, KvType::Q4_0})
        for (const int64_t dim : {int64_t{32}, int64_t{80}, int64_t{128}, int64_t{576}}) {
            const int64_t heads = dim == 576 ? 1 : 3, slots = 6, n_tok = 4;
            const kiln::backend::KvRowFormat f{kv, heads, dim};
            const auto x = random_nonzero_floats(static_cast<size_t>(heads * dim * n_tok), 91 + static_cast<uint32_t>(dim), -3, 3);
            Tensor cache = vk().kv_cache(kv, dim, heads, slots, "cache");
            vk().fill(cache, kPoisonHalves);
            vk().kv_write(f32(x, {dim, heads, n_tok}, "x"), cache, 4, true, kv);  // positions 4..7: rows 4, 5, 0, 1
            std::vector<uint8_t> got(cache.bytes());
            vk().read(cache, got.data(), got.size());
            std::vector<uint8_t> want(f.row_bytes());
            size_t mismatched = 0;
            for (int64_t t = 0; t < n_tok; ++t) {
                const int64_t row = (4 + t) % slots;
                std::fill(want.begin(), want.end(), uint8_t{0});
                for (int64_t h = 0; h < heads; ++h) {
                    uint8_t* head = want.data() + static_cast<size_t>(h) * f.head_bytes();
                    auto* scales = reinterpret_cast<uint16_t*>(head + f.head_code_bytes());
                    const float* xh = x.data() + (t * heads + h) * dim;
                    if (kv == KvType::Q8_0) kiln::kernels::quantize_q8kv(xh, dim, reinterpret_cast<int8_t*>(head), scales);
                    else kiln::kernels::quantize_q4kv(xh, dim, head, scales);
                }
                for (int64_t h = 0; h < heads; ++h) {
                    const size_t off = static_cast<size_t>(row) * f.row_bytes() + static_cast<size_t>(h) * f.head_bytes();
                    // Codes and scales; the padding after an odd number of scales is not compared.
                    const size_t used = f.head_code_bytes() + static_cast<size_t>(f.blocks_per_head()) * 2;
                    for (size_t i = 0; i < used; ++i)
                        mismatched += got[off + i] != want[static_cast<size_t>(h) * f.head_bytes() + i];
                }
            }
            EXPECT_EQ(mismatched, 0u) << kiln::kv_type_name(kv) << " dim " << dim;
            for (const int64_t row : {int64_t{2}, int64_t{3}})  // not written
                for (size_t i = 0; i < f.row_bytes(); i += 4) {
                    uint32_t w;
                    std::memcpy(&w, got.data() + static_cast<size_t>(row) * f.row_bytes() + i, 4);
                    ASSERT_EQ(w, kPoisonHalves) << "row " << row;
                }
        }
}

TEST_F(VulkanOps, RingKvWriteWrapsAndRefusesMoreThanItHolds) {
    const int64_t hd = 8, slots = 5;
    const auto src = random_nonzero_floats(static_cast<size_t>(hd * 4), 70);
    Tensor cache = poisoned(TensorType::F16, {hd, 1, slots}, "ring");
    vk().kv_write(f32(src, {hd, 1, 4}, "k"), cache, 13, /*ring=*/true);  // positions 13..16 -> rows 3, 4, 0, 1
    std::vector<uint16_t> got(static_cast<size_t>(hd * slots));
    vk().read(cache, got.data(), cache.bytes());
    for (int64_t t = 0; t < 4; ++t)
        for (int64_t e = 0; e < hd; ++e)
            EXPECT_EQ(got[static_cast<size_t>(((13 + t) % slots) * hd + e)], kiln::fp32_to_fp16(src[static_cast<size_t>(t * hd + e)]));
    for (int64_t e = 0; e < hd; ++e) EXPECT_EQ(got[static_cast<size_t>(2 * hd + e)], e % 2 ? (kPoison >> 16) : (kPoison & 0xffff));
    const auto six = random_nonzero_floats(static_cast<size_t>(hd * 6), 71);
    EXPECT_THROW(vk().kv_write(f32(six, {hd, 1, 6}, "k6"), cache, 0, true), kiln::Error);
    EXPECT_THROW(vk().kv_write(f32(src, {hd, 1, 4}, "k"), cache, 13, false), kiln::Error);
}

TEST_F(VulkanOps, QuantizeXRoundsEachGroupToEightBitCodes) {
    // The activation rounding of the integer dot products: d = amax / 127, codes rounded to
    // nearest even; a zero group stays zero.
    for (int group : {32, 256}) {
        const int64_t K = 512, n = 3;
        auto x = random_nonzero_floats(static_cast<size_t>(K * n), 80, -5, 5);
        std::fill(x.begin(), x.begin() + group, 0.0f);
        x[static_cast<size_t>(group) + 7] = 0.0f;
        std::vector<float> want(x.size());
        for (size_t b = 0; b < x.size(); b += static_cast<size_t>(group)) {
            float amax = 0;
            for (int i = 0; i < group; ++i) amax = std::max(amax, std::fabs(x[b + static_cast<size_t>(i)]));
            const float d = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0.0f;
            for (int i = 0; i < group; ++i)
                want[b + static_cast<size_t>(i)] = std::nearbyint(x[b + static_cast<size_t>(i)] * id) * d;
        }
        Tensor o = poisoned(TensorType::F32, {K, n}, "o");
        vk().quantize_x(f32(x, {K, n}, "x"), o, group);
        const double err = rel_error(vk().read_f32(o), want);
        report("quantize_x group " + std::to_string(group), err);
        EXPECT_LT(err, 1e-6);
    }
    EXPECT_EQ(kiln::vk::Backend::activation_group(TensorType::F16), 0);
    EXPECT_EQ(kiln::vk::Backend::activation_group(TensorType::Q8_0), 32);
    EXPECT_EQ(kiln::vk::Backend::activation_group(TensorType::Q4_K), 256);
}
