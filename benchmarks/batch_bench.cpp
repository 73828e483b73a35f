// Continuous batching (kiln::decode_batch): one decode step for N sequences against N single
// decodes. A 2048-wide, 4-layer Q8_0 llama (~230 MB of weights, written once to the temp dir)
// keeps the weights out of the caches, so each step is bound by reading them.
//
//   ./kiln_bench --benchmark_filter=DecodeBatch
//   KILN_BENCH_BACKEND=vulkan ./kiln_bench --benchmark_filter=DecodeBatch   # on the Vulkan device
//
// Counters: tok/s (tokens of all sequences per second), weight_GB/s (weight bytes read per
// second: one read per step), of_memcpy (weight_GB/s / memcpy bandwidth measured in this
// process; CPU only), and for the batched case x_alone (its tok/s over decoding the same sequences one at a
// time in this run).
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kiln/kiln.h"
#include "model/synthetic.h"
#include "roofline.h"

namespace {

std::string bench_backend() {
    const char* v = std::getenv("KILN_BENCH_BACKEND");
    return v && *v ? v : "cpu";
}

const kiln::Model& batch_model() {
    static const kiln::Model model = [] {
        const auto path = std::filesystem::temp_directory_path() / "kiln-bench-batch-2048x4-q8_0.gguf";
        if (!std::filesystem::exists(path)) {
            kiln::SyntheticLlama s;
            s.n_layer = 4;
            s.n_embd = 2048;
            s.n_head = 16;
            s.n_head_kv = 4;
            s.n_ff = 5632;
            s.type = kiln::TensorType::Q8_0;
            s.name = "kiln-bench-batch";
            const auto tmp = path.string() + ".tmp";
            kiln::write_synthetic_llama(tmp, s);
            std::filesystem::rename(tmp, path);
        }
        return kiln::Model::load(path.string());
    }();
    return model;
}

std::map<int64_t, double> g_alone_tps;  // sequences -> tok/s decoding them one at a time

// range(0): sequences; range(1): 1 = decode_batch, 0 = one decode per sequence.
void DecodeBatch(benchmark::State& state) {
    const int64_t n = state.range(0);
    const bool batched = state.range(1) != 0;
    const kiln::Model& model = batch_model();
    kiln::ContextOptions o;
    o.n_ctx = 512;
    o.n_threads = kiln::bench::bench_threads();
    o.backend = bench_backend();
    std::vector<std::unique_ptr<kiln::Context>> ctx;
    std::vector<kiln::Context*> ptrs;
    std::vector<int32_t> prompt(32), toks(static_cast<size_t>(n));
    for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>(5 + i * 3);
    for (int64_t i = 0; i < n; ++i) {
        ctx.push_back(std::make_unique<kiln::Context>(model, o));
        ctx.back()->decode(prompt);
        ptrs.push_back(ctx.back().get());
        toks[static_cast<size_t>(i)] = static_cast<int32_t>(10 + i);
    }
    double sec = 0;  // timed steps only (refills excluded)
    for (auto _ : state) {
        if (ptrs[0]->n_past() >= o.n_ctx) {
            state.PauseTiming();
            for (auto* c : ptrs) {
                c->clear();
                c->decode(prompt);
            }
            state.ResumeTiming();
        }
        const auto t0 = std::chrono::steady_clock::now();
        if (batched) {
            kiln::decode_batch(ptrs, toks);
        } else {
            for (int64_t i = 0; i < n; ++i)
                ptrs[static_cast<size_t>(i)]->decode(std::span<const int32_t>(&toks[static_cast<size_t>(i)], 1));
        }
        sec += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        benchmark::DoNotOptimize(ptrs[0]->logits().data());
    }
    if (sec <= 0) return;
    const double steps = static_cast<double>(state.iterations()) * (batched ? 1.0 : static_cast<double>(n));
    const double tps = static_cast<double>(state.iterations() * n) / sec;
    const double gbs = static_cast<double>(model.info().weight_bytes) * steps / sec / 1e9;
    state.counters["tok/s"] = tps;
    state.counters["weight_GB/s"] = gbs;
    if (o.backend == "cpu") state.counters["of_memcpy"] = gbs / kiln::bench::measure_memcpy_gbs();
    if (!batched) g_alone_tps[n] = tps;
    else if (g_alone_tps.count(n)) state.counters["x_alone"] = tps / g_alone_tps[n];
}

// The one-at-a-time case of each size runs first, so the batched one can report its speed-up.
BENCHMARK(DecodeBatch)
    ->ArgNames({"seqs", "batched"})
    ->Args({1, 0})
    ->Args({2, 0})
    ->Args({2, 1})
    ->Args({4, 0})
    ->Args({4, 1})
    ->Args({8, 0})
    ->Args({8, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
