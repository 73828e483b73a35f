// Forward-pass throughput on the shared tiny models: prompt processing (64 tokens in one batch)
// and decoding (one token per pass, after a 64-token prompt). Reports tokens/s.
//   kiln_bench --benchmark_filter=Forward
#include <benchmark/benchmark.h>

#include <filesystem>
#include <string>
#include <vector>

#include "kiln/kiln.h"

namespace {

std::string model_path(const std::string& name) {
    return (std::filesystem::path(KILN_SHARED_DIR) / "models" / (name + ".gguf")).string();
}

std::vector<int32_t> tokens(int n, int64_t n_vocab) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) t[static_cast<size_t>(i)] = static_cast<int32_t>((i * 37 + 1) % n_vocab);
    return t;
}

void Prefill(benchmark::State& state, const std::string& name) {
    const std::string path = model_path(name);
    if (!std::filesystem::exists(path)) return state.SkipWithError(("missing " + path).c_str());
    const kiln::Model model = kiln::Model::load(path);
    kiln::ContextOptions o;
    o.n_ctx = 256;
    o.n_threads = static_cast<int>(state.range(0));
    kiln::Context ctx(model, o);
    const auto prompt = tokens(64, model.info().n_vocab);
    for (auto _ : state) {
        ctx.clear();
        ctx.decode(prompt);
        benchmark::DoNotOptimize(ctx.logits().data());
    }
    state.counters["tok/s"] = benchmark::Counter(static_cast<double>(state.iterations()) * 64, benchmark::Counter::kIsRate);
}

void Decode(benchmark::State& state, const std::string& name) {
    const std::string path = model_path(name);
    if (!std::filesystem::exists(path)) return state.SkipWithError(("missing " + path).c_str());
    const kiln::Model model = kiln::Model::load(path);
    kiln::ContextOptions o;
    o.n_ctx = 256;
    o.n_threads = static_cast<int>(state.range(0));
    kiln::Context ctx(model, o);
    const auto prompt = tokens(64, model.info().n_vocab);
    ctx.decode(prompt);
    int32_t tok = 1;
    for (auto _ : state) {
        if (ctx.n_past() >= ctx.n_ctx()) {  // stay between 64 and 256 tokens of context
            state.PauseTiming();
            ctx.clear();
            ctx.decode(prompt);
            state.ResumeTiming();
        }
        ctx.decode(std::span<const int32_t>(&tok, 1));
        benchmark::DoNotOptimize(ctx.logits().data());
    }
    state.counters["tok/s"] = benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

#define KILN_FORWARD_BENCH(NAME)                                                                        \
    BENCHMARK_CAPTURE(Prefill, NAME, std::string(NAME))->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond); \
    BENCHMARK_CAPTURE(Decode, NAME, std::string(NAME))->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)

KILN_FORWARD_BENCH("llama-tiny.f32");
KILN_FORWARD_BENCH("llama-tiny.q8_0");
KILN_FORWARD_BENCH("llama-tiny.q4_k_m");
KILN_FORWARD_BENCH("qwen2-tiny.q4_k_m");

}  // namespace
