// Run-time CPU feature selection for the kernels. Generic code is always compiled; x86 fast
// paths are built per function with __attribute__((target(...))) and chosen here at run time,
// so the binary runs on any x86-64 (and the x86 parts are left out on other architectures).
#pragma once

namespace kiln::kernels {

struct CpuFeatures {
    bool avx2 = false;        // AVX2 + FMA + F16C (our "avx2" level)
    bool avx512vnni = false;  // AVX-512 F + BW + VL + VNNI on top of avx2 (our "avx512vnni" level)
};

// What this CPU supports (detected once).
const CpuFeatures& cpu_features();

// Kernel levels, each including the ones below it.
enum class KernelLevel { Scalar = 0, Avx2 = 1, Avx512Vnni = 2 };

// Caps the level the kernels use (tests use it to run every path on one machine; the
// environment variable KILN_KERNEL_LEVEL=scalar|avx2|avx512vnni sets it at start-up, and
// KILN_FORCE_SCALAR=1 means scalar). The level in use is min(cap, what the CPU supports).
void set_max_kernel_level(KernelLevel level);
KernelLevel kernel_level();
const char* kernel_level_name();

// Forces the portable scalar kernels (set_max_kernel_level(Scalar)); false restores the best.
void set_force_scalar(bool on);
bool force_scalar();

// Shorthands for kernel_level() >= Avx2 / Avx512Vnni.
bool use_avx2();
bool use_avx512vnni();

}  // namespace kiln::kernels
