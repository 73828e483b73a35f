// CPU prompt attention: the tiled kernel (kernels/flash_attn.h) against the per-row path decode
// takes, on the same cache in the same run. Each iteration attends a prompt at a depth (the
// prompt's keys and values stored after depth others) once tiled and once per row, alternating;
// the benchmark's time is the tiled run's.
//
//   ./kiln_bench --benchmark_filter='PromptAttention/'
//   ./kiln_bench --benchmark_filter='PromptAttentionBatch/'   (2..32 tokens: the threshold)
//   ./kiln_bench --benchmark_filter='DecodeAttention/'        (one token at 1K..128K: the slope)
//
// Counters: GFLOP/s (2 (dk + dv) per (query head, key) it sees, per second of the tiled run),
// per_row_GFLOP/s, tiled_ms and per_row_ms (per run), speedup (per_row_ms / tiled_ms). Threads:
// KILN_BENCH_THREADS (default: all hardware threads); KILN_KERNEL_LEVEL caps the kernel level;
// KILN_BENCH_TILED_ONLY=1 leaves the per-row runs (and their counters) out, e.g. for a profile.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backend/backend.h"
#include "graph/graph.h"
#include "kernels/cpu.h"
#include "roofline.h"

namespace {

using kiln::KvType;
using kiln::graph::DType;
using kiln::graph::Graph;

struct Shape {
    const char* name;
    int n_head, n_head_kv, dk, dv;
    bool mla;
};

std::vector<float> random_floats(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> d(-1.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng);
    return v;
}

double seconds(const std::chrono::steady_clock::time_point& t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// One layer's KV cache of n_ctx tokens on a CPU backend, its first `filled` positions holding random
// keys and values (stored 512 at a time through the backend's own store_kv), and the attention
// parameters of the shape.
struct FilledCache {
    kiln::graph::AttentionParams ap;
    std::unique_ptr<kiln::backend::Backend> backend;
    std::unique_ptr<kiln::backend::KvBuffers> kv;
    size_t row_bytes = 0;  // K (and V) of one token

    FilledCache(const Shape& s, KvType type, int64_t n_ctx, int64_t filled) {
        namespace be = kiln::backend;
        ap.n_head = s.n_head;
        ap.n_head_kv = s.n_head_kv;
        ap.head_dim_k = s.dk;
        ap.head_dim_v = s.dv;
        ap.scale = 1.0f / std::sqrt(static_cast<float>(s.dk));
        ap.v_in_k = s.mla;
        be::KvLayout layout;
        layout.n_ctx = n_ctx;
        layout.type_k = layout.type_v = type;
        kiln::KvLayer ls;
        ls.n_head_kv = s.n_head_kv;
        ls.head_dim_k = s.dk;
        ls.head_dim_v = s.dv;
        ls.v_in_k = s.mla;
        layout.layers.push_back(ls);
        row_bytes = layout.slot_bytes(0);
        backend = be::make_cpu_backend(kiln::bench::bench_threads());
        kv = backend->alloc_kv(layout);
        constexpr int64_t kChunk = 512;
        const int64_t chunk = std::min(kChunk, n_ctx);
        Graph g;
        const auto tk = g.input("k", DType::F32, s.n_head_kv * s.dk, chunk);
        const auto tv = s.mla ? kiln::graph::kNone : g.input("v", DType::F32, s.n_head_kv * s.dv, chunk);
        g.store_kv(tk, tv, ap);
        g.mark_output(g.add(tk, tk), "out");
        auto exe = backend->compile(std::move(g));
        // The same random rows repeated: the values do not change how long attention reads them.
        const auto k = random_floats(static_cast<size_t>(chunk * s.n_head_kv * s.dk), 1);
        const auto v = random_floats(static_cast<size_t>(chunk * s.n_head_kv * s.dv), 2);
        exe->set_input(exe->graph().find("k"), k.data(), k.size() * 4);
        if (!s.mla) exe->set_input(exe->graph().find("v"), v.data(), v.size() * 4);
        for (int64_t base = 0; base < filled; base += chunk) {
            be::RunArgs a;
            a.kv = kv.get();
            a.kv_base = std::min(base, n_ctx - chunk);
            exe->run(a);
        }
    }
};

void BM_PromptAttention(benchmark::State& state, Shape s, KvType type, int64_t depth, int64_t prompt) {
    namespace be = kiln::backend;
    FilledCache cache(s, type, depth + prompt, depth + prompt);
    const kiln::graph::AttentionParams& ap = cache.ap;
    auto& backend = cache.backend;
    auto& kv = cache.kv;
    Graph g;
    g.mark_output(g.attention(g.input("q", DType::F32, s.n_head * s.dk, prompt), ap), "out");
    auto exe = backend->compile(std::move(g));
    const auto q = random_floats(static_cast<size_t>(prompt * s.n_head * s.dk), 7);
    exe->set_input(exe->graph().find("q"), q.data(), q.size() * 4);
    be::RunArgs args;
    args.kv = kv.get();
    args.kv_base = depth;

    const int64_t min_before = be::cpu_tiled_attention_min_tokens();
    auto timed = [&](int64_t min_tokens) {
        be::set_cpu_tiled_attention_min_tokens(min_tokens);
        const auto t0 = std::chrono::steady_clock::now();
        exe->run(args);
        const double sec = seconds(t0);
        be::set_cpu_tiled_attention_min_tokens(min_before);
        return sec;
    };
    const bool tiled_only = std::getenv("KILN_BENCH_TILED_ONLY") != nullptr;
    timed(2);  // warm: pages of the workspace and the tiles
    double tiled = 0, per_row = 0;
    for (auto _ : state) {
        const double t = timed(2);
        if (!tiled_only) per_row += timed(std::numeric_limits<int64_t>::max());
        tiled += t;
        state.SetIterationTime(t);
    }
    // Keys seen: prompt tokens at depth + 1 .. depth + prompt.
    const double keys = static_cast<double>(prompt) * static_cast<double>(depth) +
                        static_cast<double>(prompt) * static_cast<double>(prompt + 1) / 2;
    const double flop = 2.0 * keys * s.n_head * (s.dk + s.dv);
    const double iters = static_cast<double>(state.iterations());
    state.counters["GFLOP/s"] = flop * iters / tiled / 1e9;
    state.counters["tiled_ms"] = tiled / iters * 1e3;
    if (!tiled_only) {
        state.counters["per_row_GFLOP/s"] = flop * iters / per_row / 1e9;
        state.counters["per_row_ms"] = per_row / iters * 1e3;
        state.counters["speedup"] = per_row / tiled;
    }
    const int threads = kiln::bench::bench_threads() > 0 ? kiln::bench::bench_threads()
                                                         : static_cast<int>(std::thread::hardware_concurrency());
    state.SetLabel(std::string(kiln::kernels::kernel_level_name()) + " threads=" + std::to_string(threads));
}

// Decode attention at a depth: one query token against `depth` cached tokens (the split path every
// generated token takes: each KV head's query heads in one pass, the keys in chunks over the
// threads), per layer. Time per token must grow with the KV bytes read, at a steady bandwidth, from
// 1K to 128K tokens: no cliff at long context. Counters: us_per_token, KV_MiB (read per token),
// GB/s (KV bytes per second), memcpy_GB/s (this machine's copy bandwidth, measured in the same run),
// of_memcpy (the fraction of it), and per_head_us / speedup: the per-(token, head) paths decode took
// before (GQA: each query head reads its KV head; MLA: chunks of heads), timed alternately.
void BM_DecodeAttention(benchmark::State& state, Shape s, KvType type, int64_t depth) {
    namespace be = kiln::backend;
    FilledCache cache(s, type, depth + 1, depth + 1);
    Graph g;
    g.mark_output(g.attention(g.input("q", DType::F32, s.n_head * s.dk, 1), cache.ap), "out");
    auto exe = cache.backend->compile(std::move(g));
    const auto q = random_floats(static_cast<size_t>(s.n_head * s.dk), 7);
    exe->set_input(exe->graph().find("q"), q.data(), q.size() * 4);
    be::RunArgs args;
    args.kv = cache.kv.get();
    args.kv_base = depth;
    auto timed = [&](bool split) {
        be::set_cpu_split_attention(split);
        const auto t0 = std::chrono::steady_clock::now();
        exe->run(args);
        const double sec = seconds(t0);
        be::set_cpu_split_attention(true);
        return sec;
    };
    timed(true);  // warm
    timed(false);
    double total = 0, per_head = 0;
    for (auto _ : state) {
        const double t = timed(true);
        per_head += timed(false);
        total += t;
        state.SetIterationTime(t);
    }
    const double iters = static_cast<double>(state.iterations());
    state.counters["per_head_us"] = per_head / iters * 1e6;
    state.counters["speedup"] = per_head / total;
    const double bytes = static_cast<double>(cache.row_bytes) * static_cast<double>(depth + 1);
    const double gbs = bytes * iters / total / 1e9;
    const double copy = kiln::bench::measure_memcpy_gbs();
    state.counters["us_per_token"] = total / iters * 1e6;
    state.counters["KV_MiB"] = bytes / (1 << 20);
    state.counters["GB/s"] = gbs;
    state.counters["memcpy_GB/s"] = copy;
    state.counters["of_memcpy"] = gbs / copy;
    state.SetLabel(std::string(kiln::kernels::kernel_level_name()) + " threads=" +
                   std::to_string(kiln::bench::bench_threads() > 0 ? kiln::bench::bench_threads()
                                                                   : static_cast<int>(std::thread::hardware_concurrency())));
}

[[maybe_unused]] const bool registered = [] {
    const Shape gqa{"gqa32:8_d128", 32, 8, 128, 128, false};
    const Shape mla{"mla20:1_k576_v512", 20, 1, 576, 512, true};
    struct Run {
        Shape s;
        KvType kv;
        int64_t depth;
        int iters;
    };
    for (const Run& r : {Run{gqa, KvType::F16, 4096, 3}, Run{gqa, KvType::Q8_0, 4096, 2}, Run{mla, KvType::F16, 4096, 2},
                         Run{gqa, KvType::F16, 16384, 1}, Run{mla, KvType::F16, 16384, 1}}) {
        const std::string name = std::string("PromptAttention/") + r.s.name + "/" + kiln::kv_type_name(r.kv) +
                                 "/p512/d" + std::to_string(r.depth);
        benchmark::RegisterBenchmark(name.c_str(), BM_PromptAttention, r.s, r.kv, r.depth, int64_t{512})
            ->Unit(benchmark::kMillisecond)
            ->UseManualTime()
            ->Iterations(r.iters);
    }
    // Decode at depth: 1K .. 128K tokens (./kiln_bench --benchmark_filter='DecodeAttention/').
    for (const Shape& sh : {gqa, mla})
        for (int64_t d : {1024, 8192, 32768, 131072}) {
            const std::string name = std::string("DecodeAttention/") + sh.name + "/f16/d" + std::to_string(d);
            benchmark::RegisterBenchmark(name.c_str(), BM_DecodeAttention, sh, KvType::F16, d)
                ->Unit(benchmark::kMicrosecond)
                ->UseManualTime()
                ->Iterations(d >= 32768 ? 20 : 100);
        }
    // Small batches (where the backend switches from per-row to tiled: kCpuTiledAttentionMinTokens).
    for (const Shape& sh : {gqa, mla})
        for (int64_t p : {2, 4, 8, 16, 32}) {
            const std::string name = std::string("PromptAttentionBatch/") + sh.name + "/f16/p" + std::to_string(p) + "/d4096";
            benchmark::RegisterBenchmark(name.c_str(), BM_PromptAttention, sh, KvType::F16, int64_t{4096}, p)
                ->Unit(benchmark::kMillisecond)
                ->UseManualTime()
                ->Iterations(10);
        }
    return true;
}();

}  // namespace
