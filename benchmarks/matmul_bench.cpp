// Matmul throughput per weight type at real layer shapes, next to the machine's memory bandwidth.
//
//   ./kiln_bench --benchmark_filter='Memcpy|ReadBandwidth|Matmul/(q4_K|q8_0|f16)/'
//
// Counters: weight_GB/s (weight bytes read per second: the decode roofline is memory bandwidth),
// GFLOP/s (2*rows*k*n_tokens per second), and for decode (n_tokens = 1) of_memcpy = weight_GB/s
// divided by the memcpy bandwidth measured in this process (BM_Memcpy, bytes copied per second).
// Threads: KILN_BENCH_THREADS (default: all hardware threads). KILN_FORCE_SCALAR=1 benchmarks
// the portable path.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <tuple>
#include <utility>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu.h"
#include "kernels/matmul.h"
#include "roofline.h"
#include "kernels/ops.h"
#include "quant/quant.h"

namespace {

using kiln::TensorType;
using namespace kiln::bench;

kiln::ThreadPool& pool() {
    static kiln::ThreadPool p(kiln::bench::bench_threads());
    return p;
}

// ---- memory roofline (benchmarks/roofline.h) ---------------------------------------------

void BM_Memcpy(benchmark::State& state) {
    auto& s = copy_src();
    auto& d = copy_dst();
    for (auto _ : state) {
        std::memcpy(d.data(), s.data(), kCopyBytes);
        benchmark::DoNotOptimize(d.data());
        benchmark::ClobberMemory();
    }
    const double gbs = static_cast<double>(kCopyBytes) * static_cast<double>(state.iterations()) / 1e9;
    state.counters["copy_GB/s"] = benchmark::Counter(gbs, benchmark::Counter::kIsRate);
    state.counters["read+write_GB/s"] = benchmark::Counter(2 * gbs, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Memcpy)->Unit(benchmark::kMillisecond)->MinTime(0.2)->UseRealTime();

// All pool threads summing one large float buffer: the read bandwidth decode can hope for.
void BM_ReadBandwidth(benchmark::State& state) {
    constexpr int64_t n = static_cast<int64_t>(kCopyBytes / sizeof(float));
    static std::vector<float> buf = [] {
        std::vector<float> b(static_cast<size_t>(n));
        std::mt19937 rng(3);
        std::uniform_real_distribution<float> ud(-1.0f, 1.0f);
        for (auto& v : b) v = ud(rng);
        return b;
    }();
    auto& p = pool();
    std::vector<float> partial(static_cast<size_t>(p.size()));
    for (auto _ : state) {
        p.parallel_for(n / 65536, [&](int64_t b, int64_t e, int t) {
            float s = 0;
            for (int64_t c = b; c < e; ++c) s += kiln::kernels::dot_f32(buf.data() + c * 65536, buf.data() + c * 65536, 65536);
            partial[static_cast<size_t>(t)] = s;
        });
        benchmark::DoNotOptimize(partial.data());
    }
    state.counters["read_GB/s"] = benchmark::Counter(
        static_cast<double>(kCopyBytes) * static_cast<double>(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
    state.counters["threads"] = p.size();
}
BENCHMARK(BM_ReadBandwidth)->Unit(benchmark::kMillisecond)->MinTime(0.2)->UseRealTime();

// ---- matmul ---------------------------------------------------------------------------------

struct Weights {
    std::vector<uint8_t> bytes;
};

// Bytes [begin, end) of a block that hold an f16 / f32 / e8m0 scale: left alone when rows are
// made distinct (every other byte is a code or an integer scale, valid with any value).
std::pair<int, int> scale_field(TensorType t) {
    switch (t) {
        case TensorType::Q4_0: case TensorType::Q5_0: case TensorType::Q8_0:
        case TensorType::IQ4_NL: case TensorType::IQ4_XS: return {0, 2};
        case TensorType::Q4_1: case TensorType::Q5_1: case TensorType::Q8_1: case TensorType::Q8_K:
        case TensorType::Q4_K: case TensorType::Q5_K: return {0, 4};
        case TensorType::Q2_K: return {80, 84};
        case TensorType::Q3_K: return {108, 110};
        case TensorType::Q6_K: return {208, 210};
        case TensorType::MXFP4: return {0, 1};
        default: return {0, 0};
    }
}

// Every row distinct (so no cache or memory deduplication flatters the bandwidth): float types
// are converted from random floats; block types quantize 64 random rows (the reference
// quantizers are slow) and give each copy fresh random codes, keeping the scale fields.
const Weights& weights(TensorType t, int64_t rows, int64_t k) {
    static std::map<std::tuple<uint32_t, int64_t, int64_t>, std::unique_ptr<Weights>> cache;
    auto key = std::make_tuple(static_cast<uint32_t>(t), rows, k);
    auto it = cache.find(key);
    if (it != cache.end()) return *it->second;
    cache.clear();  // one weight matrix alive at a time
    auto w = std::make_unique<Weights>();
    const auto& tr = kiln::traits(t);
    const size_t rb = static_cast<size_t>(*kiln::row_bytes(t, static_cast<uint64_t>(k)));
    const int64_t distinct = tr.block_size == 1 ? rows : std::min<int64_t>(rows, 64);
    w->bytes.resize(rb * static_cast<size_t>(rows));
    std::mt19937 rng(1234);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    std::vector<float> row(static_cast<size_t>(k));
    for (int64_t r = 0; r < distinct; ++r) {
        uint8_t* dst = w->bytes.data() + static_cast<size_t>(r) * rb;
        if (tr.can_quantize) {
            for (auto& v : row) v = nd(rng);
            kiln::quantize_row(t, row.data(), dst, k);
        } else {
            // No quantizer (Q2_K, Q3_K, IQ4_XS): random codes, quantized-looking scales.
            for (size_t i = 0; i < rb; ++i) dst[i] = static_cast<uint8_t>(rng());
            const auto [b0, b1] = scale_field(t);
            for (size_t b = 0; b < rb / tr.type_size; ++b)
                for (int i = b0; i < b1; i += 2) {
                    const uint16_t h = 0x1c00;  // 2^-8
                    std::memcpy(dst + b * tr.type_size + i, &h, 2);
                }
        }
    }
    const auto [s0, s1] = scale_field(t);
    uint64_t state = 0x9E3779B97F4A7C15ull;
    for (int64_t r = distinct; r < rows; ++r) {
        uint8_t* dst = w->bytes.data() + static_cast<size_t>(r) * rb;
        std::memcpy(dst, w->bytes.data() + static_cast<size_t>(r % distinct) * rb, rb);
        for (size_t b = 0; b < rb / tr.type_size; ++b) {
            uint8_t* blk = dst + b * tr.type_size;
            for (uint32_t i = 0; i < tr.type_size; ++i) {
                if (static_cast<int>(i) >= s0 && static_cast<int>(i) < s1) continue;
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                blk[i] = static_cast<uint8_t>(state);
            }
        }
    }
    auto& ref = *w;
    cache.emplace(key, std::move(w));
    return ref;
}

// n rows of k activations in [-1, 1).
std::vector<float> activations(int64_t n, int64_t k) {
    std::vector<float> x(static_cast<size_t>(n * k));
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> ud(-1.0f, 1.0f);
    for (auto& v : x) v = ud(rng);
    return x;
}

void BM_Matmul(benchmark::State& state, TensorType t, int64_t rows, int64_t k, int64_t n) {
    const Weights& w = weights(t, rows, k);
    const std::vector<float> x = activations(n, k);
    std::vector<float> y(static_cast<size_t>(n * rows));
    auto& p = pool();
    std::vector<uint8_t> scratch(kiln::kernels::matmul_scratch_bytes(t, k, n, p.size()));
    const double gbs_memcpy = n == 1 ? measure_memcpy_gbs() : 0;
    kiln::kernels::matmul(t, w.bytes.data(), rows, k, x.data(), n, y.data(), scratch.data(), p);  // warm
    for (auto _ : state) {
        kiln::kernels::matmul(t, w.bytes.data(), rows, k, x.data(), n, y.data(), scratch.data(), p);
        benchmark::DoNotOptimize(y.data());
    }
    const double iters = static_cast<double>(state.iterations());
    const double wbytes = static_cast<double>(w.bytes.size());
    state.counters["weight_GB/s"] = benchmark::Counter(wbytes * iters / 1e9, benchmark::Counter::kIsRate);
    state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(rows * k) * static_cast<double>(n) * iters / 1e9,
                                                   benchmark::Counter::kIsRate);
    if (n == 1) {
        // A rate counter divides by the elapsed time: weight_GB/s / memcpy_GB/s.
        state.counters["of_memcpy"] = benchmark::Counter(wbytes * iters / 1e9 / gbs_memcpy, benchmark::Counter::kIsRate);
    }
    state.SetLabel(std::string(kiln::kernels::kernel_level_name()) + " threads=" + std::to_string(p.size()));
}

// OpenBLAS's sgemm (the path matmul takes for float weights and 32+ tokens) against kiln's own
// float tiles, timed alternately in the same run: GFLOP/s of each and blas_speedup.
void BM_MatmulBlas(benchmark::State& state, TensorType t, int64_t rows, int64_t k, int64_t n) {
    const Weights& w = weights(t, rows, k);
    const std::vector<float> x = activations(n, k);
    std::vector<float> y(static_cast<size_t>(n * rows));
    auto& p = pool();
    std::vector<uint8_t> scratch(kiln::kernels::matmul_scratch_bytes(t, k, n, p.size()));
    auto run = [&](bool blas) {
        kiln::kernels::set_matmul_blas(blas ? kiln::kernels::BlasUse::All : kiln::kernels::BlasUse::Off);
        const auto t0 = std::chrono::steady_clock::now();
        kiln::kernels::matmul(t, w.bytes.data(), rows, k, x.data(), n, y.data(), scratch.data(), p);
        benchmark::DoNotOptimize(y.data());
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    run(true);
    run(false);  // warm both
    std::vector<double> tb, tk;
    for (auto _ : state) {
        tb.push_back(run(true));
        tk.push_back(run(false));
        state.SetIterationTime(tb.back());
    }
    kiln::kernels::set_matmul_blas(kiln::kernels::BlasUse::Auto);
    auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
    };
    const double flop = 2.0 * static_cast<double>(rows * k) * static_cast<double>(n);
    state.counters["blas_GFLOP/s"] = flop / median(tb) / 1e9;
    state.counters["kiln_GFLOP/s"] = flop / median(tk) / 1e9;
    state.counters["blas_speedup"] = median(tk) / median(tb);
    state.SetLabel(std::string(kiln::kernels::kernel_level_name()) + " threads=" + std::to_string(p.size()));
}

// Decode (one token) at the avx2 and the avx512vnni kernel level, timed alternately in one run:
// weight_GB/s of each and avx512_speedup. 256 rows fit in L2 (the kernel's own speed); 14336 rows
// stream from memory. Needs a CPU with AVX-512 VNNI (else skipped with a message).
void BM_MatmulDecodeLevels(benchmark::State& state, TensorType t, int64_t rows, int64_t k) {
    namespace kk = kiln::kernels;
    if (!kk::cpu_features().avx512vnni) {
        state.SkipWithError("this CPU has no AVX-512 VNNI: nothing to compare");
        return;
    }
    const Weights& w = weights(t, rows, k);
    const std::vector<float> x = activations(1, k);
    std::vector<float> y(static_cast<size_t>(rows));
    auto& p = pool();
    std::vector<uint8_t> scratch(kk::matmul_scratch_bytes(t, k, 1, p.size()));
    const kk::KernelLevel before = kk::kernel_level();
    auto run = [&](kk::KernelLevel level) {
        kk::set_max_kernel_level(level);
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < 8; ++i) kk::matmul(t, w.bytes.data(), rows, k, x.data(), 1, y.data(), scratch.data(), p);
        benchmark::DoNotOptimize(y.data());
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 8;
    };
    run(kk::KernelLevel::Avx2);
    run(kk::KernelLevel::Avx512Vnni);  // warm both
    std::vector<double> t2, t5;
    for (auto _ : state) {
        t2.push_back(run(kk::KernelLevel::Avx2));
        t5.push_back(run(kk::KernelLevel::Avx512Vnni));
        state.SetIterationTime(t5.back());
    }
    kk::set_max_kernel_level(before);
    auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
    };
    const double gb = static_cast<double>(w.bytes.size()) / 1e9;
    state.counters["avx2_GB/s"] = gb / median(t2);
    state.counters["avx512_GB/s"] = gb / median(t5);
    state.counters["avx512_speedup"] = median(t2) / median(t5);
    state.SetLabel("threads=" + std::to_string(p.size()));
}

const TensorType kBenchTypes[] = {
    TensorType::Q4_K, TensorType::Q8_0, TensorType::F16,  TensorType::Q4_0, TensorType::Q6_K,
    TensorType::F32,  TensorType::BF16, TensorType::Q4_1, TensorType::Q5_0, TensorType::Q5_1,
    TensorType::Q2_K, TensorType::Q3_K, TensorType::Q5_K, TensorType::IQ4_NL, TensorType::IQ4_XS,
    TensorType::MXFP4,
};

[[maybe_unused]] const bool registered = [] {
    struct Shape { int64_t rows, k; };
    for (TensorType t : kBenchTypes)
        for (Shape s : {Shape{4096, 4096}, Shape{14336, 4096}})
            for (int64_t n : {1, 512}) {
                const std::string name = std::string("Matmul/") + kiln::type_name(t) + "/" +
                                         std::to_string(s.rows) + "x" + std::to_string(s.k) + "/n=" + std::to_string(n);
                benchmark::RegisterBenchmark(name.c_str(), BM_Matmul, t, s.rows, s.k, n)
                    ->Unit(benchmark::kMillisecond)
                    ->MinTime(n == 1 ? 0.2 : 0.05)
                    ->UseRealTime();
            }
    for (TensorType t : {TensorType::F32, TensorType::F16, TensorType::BF16})
        for (int64_t n : {32, 128, 512}) {
            const std::string name = std::string("MatmulBlas/") + kiln::type_name(t) + "/4096x4096/n=" + std::to_string(n);
            benchmark::RegisterBenchmark(name.c_str(), BM_MatmulBlas, t, int64_t{4096}, int64_t{4096}, n)
                ->Unit(benchmark::kMillisecond)
                ->Iterations(5)
                ->UseManualTime();
        }
    for (TensorType t : {TensorType::Q4_0, TensorType::Q4_K, TensorType::Q6_K, TensorType::Q8_0})
        for (int64_t rows : {256, 14336}) {
            const std::string name = std::string("MatmulDecodeLevels/") + kiln::type_name(t) + "/" + std::to_string(rows) + "x4096";
            benchmark::RegisterBenchmark(name.c_str(), BM_MatmulDecodeLevels, t, rows, int64_t{4096})
                ->Unit(benchmark::kMillisecond)
                ->MinTime(0.3)
                ->UseManualTime();
        }
    // Small batches around the switch from per-token dots to float tiles (speculative decoding,
    // short prompts).
    for (TensorType t : {TensorType::Q4_K, TensorType::Q8_0, TensorType::F16})
        for (int64_t n : {2, 3, 4, 8, 17}) {
            const std::string name = std::string("MatmulBatch/") + kiln::type_name(t) + "/4096x4096/n=" + std::to_string(n);
            benchmark::RegisterBenchmark(name.c_str(), BM_Matmul, t, int64_t{4096}, int64_t{4096}, n)
                ->Unit(benchmark::kMillisecond)
                ->MinTime(0.1)
                ->UseRealTime();
        }
    return true;
}();

}  // namespace
