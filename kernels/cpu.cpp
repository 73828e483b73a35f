#include "kernels/cpu.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace kiln::kernels {
namespace {

#if defined(__x86_64__) || defined(__i386__)
// F16C straight from CPUID.1:ECX[29] (not every compiler's __builtin_cpu_supports knows it); it
// is only used together with AVX2, whose check covers the OS saving the ymm state.
bool cpu_has_f16c() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    return (c >> 29) & 1u;
}
#endif

CpuFeatures detect() {
    CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
    f.avx512vnni = f.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
    return f;
}

KernelLevel best_level() {
    const CpuFeatures& f = cpu_features();
    return f.avx512vnni ? KernelLevel::Avx512Vnni : f.avx2 ? KernelLevel::Avx2 : KernelLevel::Scalar;
}

KernelLevel env_cap() {
    const char* fs = std::getenv("KILN_FORCE_SCALAR");
    if (fs && *fs && std::strcmp(fs, "0") != 0) return KernelLevel::Scalar;
    const char* v = std::getenv("KILN_KERNEL_LEVEL");
    if (v && *v) {
        if (std::strcmp(v, "scalar") == 0) return KernelLevel::Scalar;
        if (std::strcmp(v, "avx2") == 0) return KernelLevel::Avx2;
        if (std::strcmp(v, "avx512vnni") != 0)
            std::fprintf(stderr, "kiln: warning: KILN_KERNEL_LEVEL=%s is not scalar, avx2 or avx512vnni; ignored\n", v);
    }
    return KernelLevel::Avx512Vnni;
}

std::atomic<int>& cap() {
    static std::atomic<int> c{static_cast<int>(env_cap())};
    return c;
}

}  // namespace

const CpuFeatures& cpu_features() {
    static const CpuFeatures f = detect();
    return f;
}

void set_max_kernel_level(KernelLevel level) { cap().store(static_cast<int>(level), std::memory_order_relaxed); }

KernelLevel kernel_level() {
    const int c = cap().load(std::memory_order_relaxed);
    const int b = static_cast<int>(best_level());
    return static_cast<KernelLevel>(c < b ? c : b);
}

const char* kernel_level_name() {
    switch (kernel_level()) {
        case KernelLevel::Scalar: return "scalar";
        case KernelLevel::Avx2: return "avx2";
        case KernelLevel::Avx512Vnni: return "avx512vnni";
    }
    return "?";
}

void set_force_scalar(bool on) { set_max_kernel_level(on ? KernelLevel::Scalar : KernelLevel::Avx512Vnni); }
bool force_scalar() { return kernel_level() == KernelLevel::Scalar; }

bool use_avx2() { return kernel_level() >= KernelLevel::Avx2; }
bool use_avx512vnni() { return kernel_level() >= KernelLevel::Avx512Vnni; }

}  // namespace kiln::kernels
