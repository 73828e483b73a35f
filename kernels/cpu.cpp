#include "kernels/cpu.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace kiln::kernels {
namespace {

CpuFeatures detect() {
    CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    f.avx512 = f.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl");
    f.avx512vnni = f.avx512 && __builtin_cpu_supports("avx512vnni");
#endif
    return f;
}

bool env_force_scalar() {
    const char* v = std::getenv("KILN_FORCE_SCALAR");
    return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}

std::atomic<bool>& force_flag() {
    static std::atomic<bool> flag{env_force_scalar()};
    return flag;
}

}  // namespace

const CpuFeatures& cpu_features() {
    static const CpuFeatures f = detect();
    return f;
}

void set_force_scalar(bool on) { force_flag().store(on, std::memory_order_relaxed); }
bool force_scalar() { return force_flag().load(std::memory_order_relaxed); }

bool use_avx2() { return cpu_features().avx2 && !force_scalar(); }

const char* kernel_level_name() { return use_avx2() ? "avx2" : "scalar"; }

}  // namespace kiln::kernels
