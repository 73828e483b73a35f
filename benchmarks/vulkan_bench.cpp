// Vulkan matmul and attention shaders at model shapes, against the device's own copy bandwidth.
//
//   kiln_bench --benchmark_filter=Vulkan
//
// Shapes are rows x columns of the weight (N x K): 4096x4096 (attention projections of an 8B
// model), 14336x4096 (its FFN up/gate), 2048x1536 (a MoE expert); decode (1 token) and a
// 512-token prefill. Each timed run is one submit holding `reps` matmuls (so the submit cost is
// amortised as in a real graph) and is timed by the wall clock around submit + fence wait.
// Counters: GB/s of weight bytes read, GFLOP/s (2*N*K per token), and roofline = GB/s divided by
// the bandwidth of a plain device buffer copy measured in the same run (read + write bytes).
// Attention: decode (one query token) over an f16 KV cache of 1K, 8K, 32K and 128K positions, GQA
// (32 query heads on 8 KV heads of 128) and MLA (20 query heads on one KV head, K 576 / V 512,
// V read from the K rows), split-K (the chunking Auto picks on a GPU at these shapes) and the
// single pass (what Auto keeps on a CPU device); GB/s counts the KV cache bytes the token reads once (K and V rows; MLA: the 576-wide rows).
// On lavapipe (a CPU driver) the numbers are small and iteration counts are kept low; the same
// binary reports real figures on a GPU. On a CPU device the 128K split-K case is skipped (the
// single pass is what runs there); any case is skipped where the device has too little memory.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "backend/vulkan/backend.h"
#include "kiln/error.h"
#include "quant/quant.h"

namespace {

using kiln::TensorType;
using kiln::vk::Backend;
using kiln::vk::Tensor;

Backend* backend() {
    static std::unique_ptr<Backend> b;
    static bool tried = false;
    if (!tried) {
        tried = true;
        try {
            b = Backend::open({.device = -1, .require = true, .validation = false});
            if (b) std::fprintf(stderr, "kiln_bench: Vulkan device %s\n", b->device().name.c_str());
        } catch (const kiln::Error& e) {
            std::fprintf(stderr, "kiln_bench: no Vulkan device: %s\n", e.what());
        }
    }
    return b.get();
}

double seconds_of(auto&& fn) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Times `fast` (the iteration time Google Benchmark reports) and `slow` alternately in each
// iteration, after one warm-up run of each (pipelines, first touch); each returns its seconds.
// Returns the two totals.
std::pair<double, double> time_against(benchmark::State& state, auto&& fast, auto&& slow) {
    fast();
    slow();
    double a = 0, b = 0;
    for (auto _ : state) {
        const double t = fast();
        state.SetIterationTime(t);
        a += t;
        b += slow();
    }
    return {a, b};
}

// Device copy bandwidth (bytes read + written per second): the roofline's denominator.
double copy_bandwidth() {
    static double bw = 0;
    if (bw > 0) return bw;
    Backend* vk = backend();
    if (!vk) return 0;
    auto& ctx = vk->context();
    const uint64_t bytes = 64ull << 20;
    auto a = ctx.create_buffer(bytes, kiln::vk::MemoryKind::Device, "copy source");
    auto b = ctx.create_buffer(bytes, kiln::vk::MemoryKind::Device, "copy destination");
    ctx.fill(a, 0, bytes, 0x3f800000u);
    ctx.submit();
    double best = 1e30;
    for (int i = 0; i < 5; ++i) {
        ctx.copy(a, 0, b, 0, bytes);
        ctx.copy(b, 0, a, 0, bytes);
        best = std::min(best, seconds_of([&] { ctx.submit(); }));
    }
    bw = 2.0 * 2.0 * static_cast<double>(bytes) / best;
    return bw;
}

void BM_VulkanCopy(benchmark::State& state) {
    if (!backend()) return state.SkipWithError("no Vulkan device");
    const double bw = copy_bandwidth();
    for (auto _ : state) state.SetIterationTime(1.0);
    state.counters["GB/s"] = bw / 1e9;
}
BENCHMARK(BM_VulkanCopy)->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);

// Weight bytes for N rows of K: a few distinct quantized rows, tiled (fast to make, valid blocks).
std::vector<uint8_t> weights(TensorType t, int64_t K, int64_t N) {
    const uint64_t rb = *kiln::row_bytes(t, static_cast<uint64_t>(K));
    const int64_t distinct = 16;
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> d(-1.0f, 1.0f);
    std::vector<float> f(static_cast<size_t>(K));
    std::vector<uint8_t> base(rb * distinct), out(rb * static_cast<uint64_t>(N));
    for (int64_t r = 0; r < distinct; ++r) {
        for (auto& v : f) v = d(rng);
        kiln::quantize_row(t, f.data(), base.data() + r * rb, K);
    }
    for (int64_t r = 0; r < N; ++r) std::memcpy(out.data() + r * rb, base.data() + (r % distinct) * rb, rb);
    return out;
}

void BM_VulkanMatmul(benchmark::State& state, TensorType type, int64_t N, int64_t K, int64_t n_tok, int reps,
                     const kiln::vk::MatvecOptions* variant) {
    Backend* vk = backend();
    if (!vk) return state.SkipWithError("no Vulkan device");
    if (variant && variant->subgroup && !vk->device().subgroup_arithmetic)
        return state.SkipWithError("no subgroup arithmetic on this device");
    if (variant && variant->integer_dot && !vk->device().integer_dot_product)
        return state.SkipWithError("no integer dot product on this device");
    const kiln::vk::MatvecOptions saved = vk->matvec_options();
    struct Restore {
        Backend* vk;
        kiln::vk::MatvecOptions o;
        ~Restore() { vk->set_matvec_options(o); }
    } restore{vk, saved};
    try {
        if (variant) vk->set_matvec_options(*variant);
        const auto wb = weights(type, K, N);
        Tensor w = vk->tensor(type, {K, N}, "w");
        vk->upload(w, wb.data(), wb.size());
        std::vector<float> xs(static_cast<size_t>(K * n_tok), 0.5f);
        Tensor x = vk->tensor(TensorType::F32, {K, n_tok}, "x");
        vk->upload(x, xs.data(), x.bytes());
        Tensor y = vk->tensor(TensorType::F32, {N, n_tok}, "y");
        vk->matmul(w, x, y);  // warm-up: pipeline creation and first touch
        vk->submit();
        double total = 0;
        for (auto _ : state) {
            for (int r = 0; r < reps; ++r) vk->matmul(w, x, y);
            const double t = seconds_of([&] { vk->submit(); });
            state.SetIterationTime(t);
            total += t;
        }
        const double runs = static_cast<double>(state.iterations()) * reps;
        const double bytes = static_cast<double>(w.bytes()) * runs / total;
        const double flops = 2.0 * static_cast<double>(N) * static_cast<double>(K) * static_cast<double>(n_tok) * runs / total;
        state.counters["GB/s"] = bytes / 1e9;
        state.counters["GFLOP/s"] = flops / 1e9;
        state.counters["roofline"] = bytes / copy_bandwidth();
        state.counters["ms/matmul"] = 1e3 * total / runs;
        std::string label = std::string(kiln::type_name(type)) + (n_tok == 1 ? " decode" : " prefill " + std::to_string(n_tok));
        if (n_tok <= 8) {
            const auto& o = vk->matvec_options();
            label += std::string(o.integer_dot && Backend::supports_integer_dot(type) ? " intdot" : "") +
                     (o.subgroup ? " subgroup" : " plain") + " rows " + std::to_string(o.rows);
        }
        state.SetLabel(label);
    } catch (const kiln::Error& e) {
        state.SkipWithError(e.what());
    }
}

struct Shape {
    const char* name;
    int64_t N, K;
};
const Shape kShapes[] = {{"4096x4096", 4096, 4096}, {"14336x4096", 14336, 4096}, {"moe_2048x1536", 2048, 1536}};

const bool registered = [] {
    for (const Shape& s : kShapes) {
        for (TensorType t : {TensorType::F16, TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_K, TensorType::Q6_K}) {
            const std::string name = std::string("BM_VulkanMatmul/") + s.name + "/" + kiln::type_name(t) + "/decode";
            benchmark::RegisterBenchmark(name.c_str(), BM_VulkanMatmul, t, s.N, s.K, 1, 4, nullptr)
                ->Iterations(2)->UseManualTime()->Unit(benchmark::kMillisecond);
        }
        for (TensorType t : {TensorType::F16, TensorType::Q4_K}) {
            const std::string name = std::string("BM_VulkanMatmul/") + s.name + "/" + kiln::type_name(t) + "/prefill512";
            benchmark::RegisterBenchmark(name.c_str(), BM_VulkanMatmul, t, s.N, s.K, 512, 1, nullptr)
                ->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
        }
    }
    // The matrix-vector variants (decode): plain / subgroupAdd reduction, 1, 2 or 4 rows per workgroup.
    // (Q4_K's float path at 1 row is also a case of the integer-dot comparison below.)
    static const kiln::vk::MatvecOptions variants[] = {{false, 1}, {false, 4}, {true, 1}, {true, 2}, {true, 4}};
    for (const auto& v : variants)
        for (TensorType t : {TensorType::F16, TensorType::Q4_K}) {
            if (t == TensorType::Q4_K && v.rows == 1) continue;
            const std::string name = std::string("BM_VulkanMatvecVariant/4096x4096/") + kiln::type_name(t) + "/" +
                                     (v.subgroup ? "subgroup" : "plain") + "_rows" + std::to_string(v.rows);
            benchmark::RegisterBenchmark(name.c_str(), BM_VulkanMatmul, t, 4096, 4096, 1, 4, &v)
                ->Iterations(2)->UseManualTime()->Unit(benchmark::kMillisecond);
        }
    // Q8_0 / Q4_0 / Q4_K / Q6_K decode: the float path against the integer dot product (x's 8-bit codes), both
    // reductions. The float cases set integer_dot off explicitly (it is the default on GPUs that
    // accelerate it).
    static const kiln::vk::MatvecOptions dot_variants[] = {{false, 1, false}, {true, 1, false}, {false, 1, true},
                                                           {true, 1, true}, {true, 4, true}};
    for (const auto& v : dot_variants)
        for (TensorType t : {TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_K, TensorType::Q6_K}) {
            const std::string name = std::string("BM_VulkanMatvecVariant/4096x4096/") + kiln::type_name(t) + "/" +
                                     (v.integer_dot ? "intdot_" : "float_") + (v.subgroup ? "subgroup" : "plain") +
                                     "_rows" + std::to_string(v.rows);
            benchmark::RegisterBenchmark(name.c_str(), BM_VulkanMatmul, t, 4096, 4096, 1, 4, &v)
                ->Iterations(2)->UseManualTime()->Unit(benchmark::kMillisecond);
        }
    return true;
}();

// A MoE prompt: n_tok tokens routed to `used` of G experts of N x K (here 4 of 64 experts of the
// issue's 2048 x 1536 expert shape), by the tiled kernel (the slots of each expert listed,
// one tiled product per expert) and the one-output-per-workgroup kernel (decode's), timed in the
// same run. GB/s counts each chosen expert's bytes once (what a kernel that reads each expert once
// per prompt must move); roofline divides that by the copy bandwidth.
void BM_VulkanMoePrompt(benchmark::State& state, TensorType type, int64_t N, int64_t K, int64_t G, int64_t used,
                        int64_t n_tok) {
    Backend* vk = backend();
    if (!vk) return state.SkipWithError("no Vulkan device");
    if (n_tok > 256 && vk->device().type == kiln::vk::DeviceType::Cpu)
        return state.SkipWithError("long prompt skipped on a CPU device (lavapipe): runs on GPUs");
    using kiln::vk::MatmulKernel;
    try {
        const auto wb = weights(type, K, N * G);
        Tensor w = vk->tensor(type, {K, N, G}, "experts");
        vk->upload(w, wb.data(), wb.size());
        std::vector<float> xs(static_cast<size_t>(K * n_tok));
        for (size_t i = 0; i < xs.size(); ++i) xs[i] = static_cast<float>(static_cast<int>(i % 9) - 4) * 0.125f;
        Tensor x = vk->tensor(TensorType::F32, {K, n_tok}, "x");
        vk->upload(x, xs.data(), x.bytes());
        // Distinct experts per token, spread like a trained router's (every expert gets some).
        std::mt19937 rng(7);
        std::vector<int32_t> ids(static_cast<size_t>(used * n_tok));
        std::vector<int32_t> perm(static_cast<size_t>(G));
        std::vector<bool> chosen(static_cast<size_t>(G), false);
        for (int64_t t = 0; t < n_tok; ++t) {
            for (int64_t e = 0; e < G; ++e) perm[static_cast<size_t>(e)] = static_cast<int32_t>(e);
            std::shuffle(perm.begin(), perm.end(), rng);
            for (int64_t s = 0; s < used; ++s) {
                ids[static_cast<size_t>(t * used + s)] = perm[static_cast<size_t>(s)];
                chosen[static_cast<size_t>(perm[static_cast<size_t>(s)])] = true;
            }
        }
        const double n_chosen = static_cast<double>(std::count(chosen.begin(), chosen.end(), true));
        Tensor tids = vk->tensor(TensorType::I32, {used, n_tok}, "ids");
        vk->upload(tids, ids.data(), tids.bytes());
        Tensor y = vk->tensor(TensorType::F32, {N * used, n_tok}, "y");
        auto run = [&](MatmulKernel k) {
            vk->moe_matmul(w, x, &tids, nullptr, y, k);
            return seconds_of([&] { vk->submit(); });
        };
        const auto [tiled, vector] =
            time_against(state, [&] { return run(MatmulKernel::Tiled); }, [&] { return run(MatmulKernel::Vector); });
        const double it = static_cast<double>(state.iterations());
        const double bytes = static_cast<double>(w.bytes()) / static_cast<double>(G) * n_chosen;
        const double flops = 2.0 * static_cast<double>(N * K * used * n_tok);
        state.counters["GFLOP/s"] = flops * it / tiled / 1e9;
        state.counters["GB/s"] = bytes * it / tiled / 1e9;
        state.counters["roofline"] = bytes * it / tiled / copy_bandwidth();
        state.counters["ms_tiled"] = 1e3 * tiled / it;
        state.counters["ms_per_slot"] = 1e3 * vector / it;
        state.counters["speedup"] = vector / tiled;
        state.SetLabel(std::string(kiln::type_name(type)) + " " + std::to_string(used) + " of " + std::to_string(G) +
                       " experts, auto " + (Backend::moe_kernel(n_tok, used, G) == MatmulKernel::Tiled ? "tiled" : "per slot"));
    } catch (const kiln::Error& e) {
        state.SkipWithError(e.what());
    }
}

const bool moe_registered = [] {
    for (TensorType t : {TensorType::Q4_K, TensorType::Q8_0})
        for (const int64_t n_tok : {64, 256, 512}) {
            const std::string name = std::string("BM_VulkanMoePrompt/64x2048x1536/") + kiln::type_name(t) + "/prompt" +
                                     std::to_string(n_tok);
            benchmark::RegisterBenchmark(name.c_str(), BM_VulkanMoePrompt, t, 2048, 1536, 64, 4, n_tok)
                ->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
        }
    return true;
}();

// One decode token attending over n_kv cache positions: `reps` attentions in one submit.
void BM_VulkanAttention(benchmark::State& state, int64_t n_head, int64_t n_kv_head, int64_t dk, int64_t dv, bool mla,
                        int64_t n_kv, kiln::vk::AttentionKernel kernel, int reps) {
    Backend* vk = backend();
    if (!vk) return state.SkipWithError("no Vulkan device");
    const uint64_t k_bytes = static_cast<uint64_t>(dk * n_kv_head * n_kv) * 2;
    const uint64_t v_bytes = mla ? 0 : static_cast<uint64_t>(dv * n_kv_head * n_kv) * 2;
    if (n_kv > 65536 && vk->device().type == kiln::vk::DeviceType::Cpu && kernel == kiln::vk::AttentionKernel::Split)
        return state.SkipWithError("128K split-K skipped on a CPU device (lavapipe keeps the single pass there)");
    if (!vk->fits(k_bytes + v_bytes + (64ull << 20)))
        return state.SkipWithError("the device has too little memory for this KV cache");
    try {
        Tensor kc = vk->tensor(TensorType::F16, {dk, n_kv_head, n_kv}, "k_cache");
        Tensor vc = mla ? kc : vk->tensor(TensorType::F16, {dv, n_kv_head, n_kv}, "v_cache");
        vk->fill(kc, 0x2e662c00u);  // halves 0.0625 and 0.1: finite, not all equal
        if (!mla) vk->fill(vc, 0x2e662c00u);
        std::vector<float> qs(static_cast<size_t>(dk * n_head));
        for (size_t i = 0; i < qs.size(); ++i) qs[i] = static_cast<float>(static_cast<int>(i % 7) - 3) * 0.25f;
        Tensor q = vk->tensor(TensorType::F32, {dk, n_head, 1}, "q");
        vk->upload(q, qs.data(), q.bytes());
        Tensor out = vk->tensor(TensorType::F32, {dv, n_head, 1}, "out");
        kiln::graph::AttentionParams ap;
        ap.scale = 1.0f / std::sqrt(static_cast<float>(dk));
        ap.v_in_k = mla;
        kiln::vk::AttentionRun p;
        p.pos0 = static_cast<uint32_t>(n_kv - 1);
        p.n_kv = static_cast<uint32_t>(n_kv);
        p.kernel = kernel;
        vk->attention(q, kc, vc, out, ap, p);  // warm-up: pipelines and first touch
        vk->submit();
        const uint64_t d0 = vk->stats().dispatches;
        vk->attention(q, kc, vc, out, ap, p);
        const uint64_t per_op = vk->stats().dispatches - d0;  // 2: split-K, 1: single pass
        vk->submit();
        double total = 0;
        for (auto _ : state) {
            for (int r = 0; r < reps; ++r) vk->attention(q, kc, vc, out, ap, p);
            const double t = seconds_of([&] { vk->submit(); });
            state.SetIterationTime(t);
            total += t;
        }
        const double runs = static_cast<double>(state.iterations()) * reps;
        const double bytes = static_cast<double>(k_bytes + v_bytes) * runs / total;
        state.counters["GB/s"] = bytes / 1e9;
        state.counters["roofline"] = bytes / copy_bandwidth();
        state.counters["ms/token"] = 1e3 * total / runs;
        state.counters["dispatches"] = static_cast<double>(per_op);
        state.SetLabel(per_op > 1 ? "split-K" : "single pass");
    } catch (const kiln::Error& e) {
        state.SkipWithError(e.what());
    }
}

// A prompt of n_tok tokens after `depth` cached positions, by the tiled kernel (query rows of a
// KV head share each tile of keys read into shared memory) and by the one-row-per-workgroup
// kernel, timed in the same run: GFLOP/s of the tiled kernel (2 (dk + dv) per query head and
// visible key) and its speed-up over the one-row kernel.
void BM_VulkanAttentionPrompt(benchmark::State& state, int64_t n_head, int64_t n_kv_head, int64_t dk, int64_t dv, bool mla,
                              int64_t depth, int64_t n_tok) {
    Backend* vk = backend();
    if (!vk) return state.SkipWithError("no Vulkan device");
    if (depth > 2048 && vk->device().type == kiln::vk::DeviceType::Cpu)
        return state.SkipWithError("long prompt skipped on a CPU device (lavapipe): runs on GPUs");
    const int64_t n_kv = depth + n_tok;
    using kiln::vk::AttentionKernel;
    try {
        Tensor kc = vk->tensor(TensorType::F16, {dk, n_kv_head, n_kv}, "k_cache");
        Tensor vc = mla ? kc : vk->tensor(TensorType::F16, {dv, n_kv_head, n_kv}, "v_cache");
        vk->fill(kc, 0x2e662c00u);
        if (!mla) vk->fill(vc, 0x2e662c00u);
        std::vector<float> qs(static_cast<size_t>(dk * n_head * n_tok));
        for (size_t i = 0; i < qs.size(); ++i) qs[i] = static_cast<float>(static_cast<int>(i % 7) - 3) * 0.25f;
        Tensor q = vk->tensor(TensorType::F32, {dk, n_head, n_tok}, "q");
        vk->upload(q, qs.data(), q.bytes());
        Tensor out = vk->tensor(TensorType::F32, {dv, n_head, n_tok}, "out");
        kiln::graph::AttentionParams ap;
        ap.scale = 1.0f / std::sqrt(static_cast<float>(dk));
        ap.v_in_k = mla;
        kiln::vk::AttentionRun p;
        p.pos0 = static_cast<uint32_t>(depth);
        p.n_kv = static_cast<uint32_t>(n_kv);
        auto run = [&](AttentionKernel k) {
            p.kernel = k;
            vk->attention(q, kc, vc, out, ap, p);
            return seconds_of([&] { vk->submit(); });
        };
        const auto [tiled, single] =
            time_against(state, [&] { return run(AttentionKernel::Tiled); }, [&] { return run(AttentionKernel::Single); });
        const double it = static_cast<double>(state.iterations());
        const double flops = 2.0 * static_cast<double>(n_head * n_tok) * (static_cast<double>(depth) + (n_tok + 1) / 2.0) *
                             static_cast<double>(dk + dv);
        state.counters["GFLOP/s"] = flops * it / tiled / 1e9;
        state.counters["ms_tiled"] = 1e3 * tiled / it;
        state.counters["ms_one_row"] = 1e3 * single / it;
        state.counters["speedup"] = single / tiled;
    } catch (const kiln::Error& e) {
        state.SkipWithError(e.what());
    }
}

struct AttnShape {
    const char* name;
    int64_t n_head, n_kv_head, dk, dv;
    bool mla;
    std::vector<int64_t> contexts;
};

const bool attention_registered = [] {
    const AttnShape shapes[] = {{"gqa32x8_d128", 32, 8, 128, 128, false, {1024, 8192, 32768, 131072}},
                                {"mla20x1_k576_v512", 20, 1, 576, 512, true, {1024, 8192, 32768, 131072}}};
    using kiln::vk::AttentionKernel;
    for (const AttnShape& s : shapes)
        for (const int64_t n_kv : s.contexts)
            for (auto [kernel, kname] : {std::pair{AttentionKernel::Split, "split"}, {AttentionKernel::Single, "single"}}) {
                const std::string name = std::string("BM_VulkanAttention/") + s.name + "/decode/" +
                                         std::to_string(n_kv / 1024) + "K/" + kname;
                benchmark::RegisterBenchmark(name.c_str(), BM_VulkanAttention, s.n_head, s.n_kv_head, s.dk, s.dv, s.mla,
                                             n_kv, kernel, 2)
                    ->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
            }
    // Prompts: 128 tokens after 1K (lavapipe too), 512 after 4K and 16K (GPUs).
    for (const AttnShape& s : shapes)
        for (auto [depth, n_tok] : {std::pair<int64_t, int64_t>{1024, 128}, {4096, 512}, {16384, 512}}) {
            const std::string name = std::string("BM_VulkanAttention/") + s.name + "/prompt" + std::to_string(n_tok) + "@" +
                                     std::to_string(depth / 1024) + "K";
            benchmark::RegisterBenchmark(name.c_str(), BM_VulkanAttentionPrompt, s.n_head, s.n_kv_head, s.dk, s.dv, s.mla,
                                         depth, n_tok)
                ->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
        }
    return true;
}();

}  // namespace
