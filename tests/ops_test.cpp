#include "kernels/ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu.h"
#include "kernels/half.h"

namespace {

using namespace kiln::kernels;

std::vector<float> randv(int64_t n, uint32_t seed, float lo = -2.0f, float hi = 2.0f) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = d(rng);
    return v;
}

// Runs the body once with the dispatched kernels and once with the scalar ones forced.
class Ops : public ::testing::TestWithParam<bool> {
protected:
    void SetUp() override { set_force_scalar(GetParam()); }
    void TearDown() override { set_force_scalar(false); }
};

const int64_t kSizes[] = {1, 7, 8, 15, 16, 33, 100, 4096, 4099};

TEST_P(Ops, RmsNorm) {
    for (int64_t n : kSizes) {
        auto x = randv(n, 1), w = randv(n, 2);
        std::vector<float> out(static_cast<size_t>(n));
        rms_norm(x.data(), w.data(), n, 1e-5f, out.data());
        double ss = 0;
        for (float v : x) ss += static_cast<double>(v) * v;
        const double inv = 1.0 / std::sqrt(ss / static_cast<double>(n) + 1e-5);
        for (int64_t i = 0; i < n; ++i)
            ASSERT_NEAR(out[i], x[i] * inv * w[i], 1e-5 * std::abs(x[i] * inv * w[i]) + 1e-7);
        rms_norm(x.data(), nullptr, n, 1e-5f, x.data());  // in place, no weight
        for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(x[i] * w[i], out[i], 1e-5 * std::abs(out[i]) + 1e-7);
    }
}

TEST_P(Ops, LayerNorm) {
    for (int64_t n : kSizes) {
        auto x = randv(n, 3, 1.0f, 3.0f), w = randv(n, 4), b = randv(n, 5);
        std::vector<float> out(static_cast<size_t>(n));
        layer_norm(x.data(), w.data(), b.data(), n, 1e-5f, out.data());
        double m = 0, v = 0;
        for (float e : x) m += e;
        m /= static_cast<double>(n);
        for (float e : x) v += (e - m) * (e - m);
        const double inv = 1.0 / std::sqrt(v / static_cast<double>(n) + 1e-5);
        for (int64_t i = 0; i < n; ++i) {
            const double ref = (x[i] - m) * inv * w[i] + b[i];
            ASSERT_NEAR(out[i], ref, 1e-4 * (std::abs(ref) + 1));
        }
    }
}

TEST_P(Ops, Softmax) {
    for (int64_t n : kSizes) {
        auto x = randv(n, 6, -20.0f, 20.0f);
        if (n > 2) x[1] = -std::numeric_limits<float>::infinity();  // a masked entry
        auto y = x;
        softmax_inplace(y.data(), n);
        double mx = -INFINITY, sum = 0;
        for (float v : x) mx = std::max<double>(mx, v);
        for (float v : x) sum += std::exp(v - mx);
        double total = 0;
        for (int64_t i = 0; i < n; ++i) {
            const double ref = std::exp(x[i] - mx) / sum;
            ASSERT_NEAR(y[i], ref, 1e-6 * ref + 1e-12);
            total += y[i];
        }
        ASSERT_NEAR(total, 1.0, 1e-5);
        if (n > 2) {
            ASSERT_EQ(y[1], 0.0f);
        }
    }
}

TEST_P(Ops, SiluGeluAddMulScale) {
    for (int64_t n : kSizes) {
        auto a = randv(n, 7, -8.0f, 8.0f), b = randv(n, 8);
        std::vector<float> o(static_cast<size_t>(n));
        silu(a.data(), o.data(), n);
        for (int64_t i = 0; i < n; ++i) {
            const double v = a[i], ref = v / (1.0 + std::exp(-v));
            ASSERT_NEAR(o[i], ref, 1e-6 * (std::abs(ref) + 1));
        }
        gelu_tanh(a.data(), o.data(), n);
        for (int64_t i = 0; i < n; ++i) {
            const double v = a[i];
            const double ref = 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
            ASSERT_NEAR(o[i], ref, 1e-6 * (std::abs(ref) + 1));
        }
        add(a.data(), b.data(), o.data(), n);
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(o[i], a[i] + b[i]);
        mul(a.data(), b.data(), o.data(), n);
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(o[i], a[i] * b[i]);
        o = a;
        scale(o.data(), 0.25f, n);
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(o[i], a[i] * 0.25f);
        o = a;
        silu(o.data(), o.data(), n);  // in place
        for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(o[i], a[i] / (1.0 + std::exp(-double(a[i]))), 1e-5);
    }
}

std::vector<uint16_t> to_half(const std::vector<float>& v) {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = float_to_half(v[i]);
    return h;
}

TEST_P(Ops, DotAndAxpy) {
    for (int64_t n : kSizes) {
        auto a = randv(n, 9), b = randv(n, 10), y0 = randv(n, 11);
        auto bh = to_half(b);
        double ref = 0, refh = 0, norm = 0;
        for (int64_t i = 0; i < n; ++i) {
            ref += static_cast<double>(a[i]) * b[i];
            refh += static_cast<double>(a[i]) * half_to_float(bh[i]);
            norm += std::abs(static_cast<double>(a[i]) * b[i]);
        }
        ASSERT_NEAR(dot_f32(a.data(), b.data(), n), ref, 1e-6 * norm);
        ASSERT_NEAR(dot_f32_f16(a.data(), bh.data(), n), refh, 1e-6 * norm);
        auto y = y0;
        axpy_f32(0.75f, b.data(), y.data(), n);
        for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(y[i], y0[i] + 0.75 * b[i], 1e-6);
        y = y0;
        axpy_f16(-1.5f, bh.data(), y.data(), n);
        for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(y[i], y0[i] - 1.5 * half_to_float(bh[i]), 1e-6);
    }
}

TEST_P(Ops, HalfRowConversions) {
    // Every half value survives half -> float -> half (NaNs stay NaN).
    std::vector<uint16_t> all(65536), back(65536);
    for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
    std::vector<float> f(65536);
    f16_to_f32(all.data(), f.data(), 65536);
    f32_to_f16(f.data(), back.data(), 65536);
    for (uint32_t i = 0; i < 65536; ++i) {
        if (std::isnan(f[i])) {
            ASSERT_TRUE(std::isnan(half_to_float(back[i])));
            continue;
        }
        ASSERT_EQ(back[i], all[i]) << i;
        ASSERT_EQ(f[i], half_to_float(all[i]));
    }
}

INSTANTIATE_TEST_SUITE_P(Kernels, Ops, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Scalar" : "Dispatched"; });

// The scalar float -> half rounding must match the hardware one bit for bit (both are round to
// nearest even), including halfway cases, subnormals, overflow and NaN.
TEST(OpsHalf, ScalarRoundingMatchesDispatched) {
    if (!cpu_features().avx2) GTEST_SKIP() << "no F16C on this CPU";
    std::mt19937 rng(42);
    std::vector<float> x;
    for (int i = 0; i < 200000; ++i) {
        uint32_t bits = rng();
        if (i % 4 == 0) bits = (bits & 0x80000000u) | (0x33000000u + (bits % 0x14000000u));  // half range
        if (i % 8 == 1) bits = (bits & 0xffffe000u) | 0x1000u;  // exact ties
        float v;
        std::memcpy(&v, &bits, 4);
        x.push_back(v);
    }
    for (float v : {0.0f, -0.0f, 65504.0f, 65519.0f, 65520.0f, 1e-8f, 5.96e-8f, 2.98e-8f,
                    std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()})
        x.push_back(v);
    std::vector<uint16_t> hw(x.size()), sw(x.size());
    set_force_scalar(false);
    f32_to_f16(x.data(), hw.data(), static_cast<int64_t>(x.size()));
    for (size_t i = 0; i < x.size(); ++i) sw[i] = float_to_half(x[i]);
    for (size_t i = 0; i < x.size(); ++i) {
        if (std::isnan(x[i])) {
            ASSERT_EQ(sw[i] & 0x7e00u, 0x7e00u);
            continue;
        }
        ASSERT_EQ(sw[i], hw[i]) << "x=" << x[i];
    }
}

}  // namespace
