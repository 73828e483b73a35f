// The AVX-512 level's target attribute (kernels/cpu.h: "avx512vnni", chosen at run time) shared by
// the kernels' AVX-512 fast paths; include this only on x86.
#pragma once

// GCC 12's AVX-512 intrinsics (the _mm512_undefined_* idiom they use inside) trip
// -Wmaybe-uninitialized wherever they inline; the warning is about the header, not the kernels.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#define KILN_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
