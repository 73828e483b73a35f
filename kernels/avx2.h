// AVX2 helpers shared by the kernels' x86 fast paths. Those are compiled per function with the
// target attribute below and chosen at run time (kernels/cpu.h); include this only on x86.
#pragma once

#include <immintrin.h>

#define KILN_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace kiln::kernels {

// The sum of the eight lanes.
KILN_AVX2 inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

}  // namespace kiln::kernels
