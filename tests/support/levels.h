// Running a test once per CPU kernel level (kernels/cpu.h: scalar, avx2, avx512vnni), so that a
// machine with AVX-512 also tests the AVX2 and scalar paths its CPU would not pick. A level the CPU
// cannot execute is skipped with its name (ctest reports it as skipped, never as passed).
#pragma once

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu.h"

namespace kiln::test {

using kernels::KernelLevel;

inline const std::vector<KernelLevel>& all_kernel_levels() {
    static const std::vector<KernelLevel> v = {KernelLevel::Scalar, KernelLevel::Avx2, KernelLevel::Avx512Vnni};
    return v;
}

inline const char* level_name(KernelLevel l) {
    switch (l) {
        case KernelLevel::Scalar: return "scalar";
        case KernelLevel::Avx2: return "avx2";
        case KernelLevel::Avx512Vnni: return "avx512vnni";
    }
    return "?";
}

inline bool cpu_runs(KernelLevel l) {
    switch (l) {
        case KernelLevel::Scalar: return true;
        case KernelLevel::Avx2: return kernels::cpu_features().avx2;
        case KernelLevel::Avx512Vnni: return kernels::cpu_features().avx512vnni;
    }
    return false;
}

// Caps the kernel level for a scope and restores the level in use before.
class KernelLevelCap {
public:
    explicit KernelLevelCap(KernelLevel l) : before_(kernels::kernel_level()) { kernels::set_max_kernel_level(l); }
    ~KernelLevelCap() { kernels::set_max_kernel_level(before_); }
    KernelLevelCap(const KernelLevelCap&) = delete;
    KernelLevelCap& operator=(const KernelLevelCap&) = delete;

private:
    KernelLevel before_;
};

namespace detail {
// Skips (naming the level) when the CPU lacks it, else caps the level until TearDown.
inline void enter_level(KernelLevel l, std::optional<KernelLevelCap>& cap) {
    if (!cpu_runs(l)) GTEST_SKIP() << "SKIPPED: this CPU cannot run the " << level_name(l) << " kernel level";
    cap.emplace(l);
    ASSERT_EQ(kernels::kernel_level(), l);
}
}  // namespace detail

// A test parametrised by kernel level only.
class AtKernelLevel : public ::testing::TestWithParam<KernelLevel> {
protected:
    void SetUp() override { detail::enter_level(GetParam(), cap_); }
    void TearDown() override { cap_.reset(); }

private:
    std::optional<KernelLevelCap> cap_;
};

// A test parametrised by (P, kernel level); param() is the P.
template <class P>
class AtEveryKernelLevel : public ::testing::TestWithParam<std::tuple<P, KernelLevel>> {
protected:
    void SetUp() override { detail::enter_level(std::get<1>(this->GetParam()), cap_); }
    void TearDown() override { cap_.reset(); }
    const P& param() const { return std::get<0>(this->GetParam()); }

private:
    std::optional<KernelLevelCap> cap_;
};

inline auto kernel_levels() { return ::testing::ValuesIn(all_kernel_levels()); }
template <class P>
auto at_every_kernel_level(const std::vector<P>& values) {
    return ::testing::Combine(::testing::ValuesIn(values), kernel_levels());
}
inline std::string level_test_name(const ::testing::TestParamInfo<KernelLevel>& info) {
    return level_name(info.param);
}

}  // namespace kiln::test
