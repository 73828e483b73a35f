// Run-time CPU feature selection for the kernels. Generic code is always compiled; x86 fast
// paths are built per function with __attribute__((target(...))) and chosen here at run time,
// so the binary runs on any x86-64 (and the x86 parts are left out on other architectures).
#pragma once

namespace kiln::kernels {

struct CpuFeatures {
    bool avx2 = false;     // AVX2 + FMA + F16C (our "avx2" level)
    bool avx512 = false;   // AVX-512 F + BW + VL
    bool avx512vnni = false;
};

// What this CPU supports (detected once).
const CpuFeatures& cpu_features();

// Forces the portable scalar kernels even where a fast path exists (tests use it to check the
// scalar path; setting the environment variable KILN_FORCE_SCALAR=1 does the same at start-up).
void set_force_scalar(bool on);
bool force_scalar();

// The AVX2 level is usable and not disabled.
bool use_avx2();
// Short name of the kernel level in use: "scalar", "avx2".
const char* kernel_level_name();

}  // namespace kiln::kernels
