// Matmul throughput per weight type at real layer shapes, next to the machine's memory bandwidth.
//
//   ./kiln_bench --benchmark_filter='Memcpy|ReadBandwidth|Matmul/(q4_K|q8_0|f16)/'
//
// Counters: weight_GB/s (weight bytes read per second: the decode roofline is memory bandwidth),
// GFLOP/s (2*rows*k*n_tokens per second), for decode (n_tokens = 1) of_memcpy = weight_GB/s
// divided by the memcpy bandwidth measured in this process (BM_Memcpy, bytes copied per second),
// and for prompts of_peak = GFLOP/s divided by the compute peak measured in this process
// (BM_ComputePeak: 8-bit dot products for the integer tiles, float FMAs otherwise).
// Threads: KILN_BENCH_THREADS (default: all hardware threads). KILN_FORCE_SCALAR=1 benchmarks
// the portable path.
#include <benchmark/benchmark.h>

#if defined(__x86_64__)
// GCC 12's AVX-512 intrinsics (their _mm512_undefined_* idiom) trip these warnings where they inline.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#endif

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

// ---- compute roofline ------------------------------------------------------------------------
// The machine's peak, measured once in this process on every pool thread: float FMAs (zmm at the
// avx512vnni level, ymm at avx2) and 8-bit dot products (vpdpbusd zmm, avx512vnni only), each from
// 12 independent accumulators so that latency does not hide throughput. GFLOP/s counts a multiply-add
// as 2 (as the matmul counters do).
#if defined(__x86_64__)
#define KILN_PEAK512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))
#define KILN_PEAK256 __attribute__((target("avx2,fma")))
KILN_PEAK512 double fma_loop_512(int64_t iters) {
    __m512 a[12];
    for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(1.0f + 1e-3f * static_cast<float>(i));
    const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (int64_t it = 0; it < iters; ++it)
        for (int i = 0; i < 12; ++i) a[i] = _mm512_fmadd_ps(a[i], m, c);
    float s = 0;
    for (int i = 0; i < 12; ++i) s += _mm512_reduce_add_ps(a[i]);
    benchmark::DoNotOptimize(s);
    return static_cast<double>(iters) * 12 * 16 * 2;
}
KILN_PEAK256 double fma_loop_256(int64_t iters) {
    __m256 a[12];
    for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(1.0f + 1e-3f * static_cast<float>(i));
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (int64_t it = 0; it < iters; ++it)
        for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], m, c);
    alignas(32) float v[8];
    float s = 0;
    for (int i = 0; i < 12; ++i) {
        _mm256_store_ps(v, a[i]);
        for (float x : v) s += x;
    }
    benchmark::DoNotOptimize(s);
    return static_cast<double>(iters) * 12 * 8 * 2;
}
KILN_PEAK512 double dot_loop_512(int64_t iters) {
    __m512i a[12];
    for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_epi32(i);
    const __m512i u = _mm512_set1_epi8(3), v = _mm512_set1_epi8(-2);
    for (int64_t it = 0; it < iters; ++it)
        for (int i = 0; i < 12; ++i) a[i] = _mm512_dpbusd_epi32(a[i], u, v);
    int64_t s = 0;
    for (int i = 0; i < 12; ++i) s += _mm512_reduce_add_epi32(a[i]);
    benchmark::DoNotOptimize(s);
    return static_cast<double>(iters) * 12 * 64 * 2;
}
#endif

struct Peak {
    double fma_gflops = 0;   // float multiply-adds (x2)
    double int8_gops = 0;    // 8-bit multiply-adds (x2), 0 without AVX-512 VNNI
};
// Best of 3 runs of every pool thread at once.
const Peak& measured_peak() {
    static const Peak peak = [] {
        Peak pk;
#if defined(__x86_64__)
        namespace kk = kiln::kernels;
        auto& p = pool();
        auto run = [&](double (*loop)(int64_t)) {
            double best = 0;
            for (int rep = 0; rep < 3; ++rep) {
                std::vector<double> ops(static_cast<size_t>(p.size()));
                const auto t0 = std::chrono::steady_clock::now();
                p.parallel_for(p.size(), [&](int64_t b, int64_t e, int) {
                    for (int64_t i = b; i < e; ++i) ops[static_cast<size_t>(i)] = loop(int64_t{4} << 20);
                });
                const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                double total = 0;
                for (double o : ops) total += o;
                best = std::max(best, total / sec / 1e9);
            }
            return best;
        };
        if (kk::use_avx512vnni()) {
            pk.fma_gflops = run(fma_loop_512);
            pk.int8_gops = run(dot_loop_512);
        } else if (kk::use_avx2()) {
            pk.fma_gflops = run(fma_loop_256);
        }
#endif
        return pk;
    }();
    return peak;
}

void BM_ComputePeak(benchmark::State& state) {
    for (auto _ : state) benchmark::DoNotOptimize(measured_peak());
    state.counters["fma_GFLOP/s"] = measured_peak().fma_gflops;
    state.counters["int8_GOP/s"] = measured_peak().int8_gops;
    state.SetLabel(std::string(kiln::kernels::kernel_level_name()) + " threads=" + std::to_string(pool().size()));
}
BENCHMARK(BM_ComputePeak)->Iterations(1);

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
    } else {
        // GFLOP/s against the peak of the arithmetic the path runs (8-bit dots for the integer
        // tiles, float FMAs otherwise), measured in this process (BM_ComputePeak).
        const Peak& pk = measured_peak();
        const bool int8 = kiln::kernels::use_avx512vnni() && kiln::kernels::matmul_uses_tiles(t, n) && pk.int8_gops > 0 &&
                          t != TensorType::F32 && t != TensorType::F16 && t != TensorType::BF16;
        const double peak = int8 ? pk.int8_gops : pk.fma_gflops;
        if (peak > 0)
            state.counters["of_peak"] = benchmark::Counter(2.0 * static_cast<double>(rows * k) * static_cast<double>(n) * iters / 1e9 / peak,
                                                           benchmark::Counter::kIsRate);
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
