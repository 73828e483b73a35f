// Vulkan matmul shaders at model shapes, against the device's own copy bandwidth.
//
//   kiln_bench --benchmark_filter=Vulkan
//
// Shapes are rows x columns of the weight (N x K): 4096x4096 (attention projections of an 8B
// model), 14336x4096 (its FFN up/gate), 2048x1536 (a MoE expert); decode (1 token) and a
// 512-token prefill. Each timed run is one submit holding `reps` matmuls (so the submit cost is
// amortised as in a real graph) and is timed by the wall clock around submit + fence wait.
// Counters: GB/s of weight bytes read, GFLOP/s (2*N*K per token), and roofline = GB/s divided by
// the bandwidth of a plain device buffer copy measured in the same run (read + write bytes).
// On lavapipe (a CPU driver) the numbers are small and iteration counts are kept low; the same
// binary reports real figures on a GPU.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
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

void BM_VulkanMatmul(benchmark::State& state, TensorType type, int64_t N, int64_t K, int64_t n_tok, int reps) {
    Backend* vk = backend();
    if (!vk) return state.SkipWithError("no Vulkan device");
    try {
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
        state.SetLabel(std::string(kiln::type_name(type)) + (n_tok == 1 ? " decode" : " prefill " + std::to_string(n_tok)));
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
            benchmark::RegisterBenchmark(name.c_str(), BM_VulkanMatmul, t, s.N, s.K, 1, 4)
                ->Iterations(2)->UseManualTime()->Unit(benchmark::kMillisecond);
        }
        for (TensorType t : {TensorType::F16, TensorType::Q4_K}) {
            const std::string name = std::string("BM_VulkanMatmul/") + s.name + "/" + kiln::type_name(t) + "/prefill512";
            benchmark::RegisterBenchmark(name.c_str(), BM_VulkanMatmul, t, s.N, s.K, 512, 1)
                ->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
        }
    }
    return true;
}();

}  // namespace
