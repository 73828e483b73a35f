// Reproducible random test data: the same seed gives the same values on every machine run.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace kiln::test {

// n floats uniform in [lo, hi).
inline std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng);
    return v;
}

// The same, with every |x| >= 1e-3 (relative errors stay meaningful).
inline std::vector<float> random_nonzero_floats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) {
        do x = d(rng);
        while (std::fabs(x) < 1e-3f);
    }
    return v;
}

}  // namespace kiln::test
