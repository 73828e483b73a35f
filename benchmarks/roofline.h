// The memory roofline the benchmarks report against: memcpy bandwidth measured in the same
// process (a decode step can go no faster than reading its weights once at this rate).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace kiln::bench {

// KILN_BENCH_THREADS: the CPU benchmarks' thread count (0 or unset: the machine's default).
inline int bench_threads() {
    const char* v = std::getenv("KILN_BENCH_THREADS");
    return v ? std::atoi(v) : 0;
}

constexpr size_t kCopyBytes = size_t{256} << 20;

// Random contents: pages of identical bytes could be deduplicated by the host.
inline std::vector<char> random_bytes(size_t n, uint64_t seed) {
    std::vector<char> v(n);
    uint64_t s = seed;
    for (size_t i = 0; i + 8 <= n; i += 8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        std::memcpy(v.data() + i, &s, 8);
    }
    return v;
}

inline std::vector<char>& copy_src() {
    static std::vector<char> v = random_bytes(kCopyBytes, 1);
    return v;
}
inline std::vector<char>& copy_dst() {
    static std::vector<char> v = random_bytes(kCopyBytes, 2);
    return v;
}

inline double g_memcpy_gbs = 0;  // bytes copied per second, best seen

inline double measure_memcpy_gbs() {
    if (g_memcpy_gbs > 0) return g_memcpy_gbs;
    auto& s = copy_src();
    auto& d = copy_dst();
    double best = 0;
    for (int i = 0; i < 3; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        std::memcpy(d.data(), s.data(), kCopyBytes);
        const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = std::max(best, static_cast<double>(kCopyBytes) / sec / 1e9);
    }
    g_memcpy_gbs = best;
    return best;
}

}  // namespace kiln::bench
