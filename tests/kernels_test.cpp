// kernels::matmul against matmul_reference for every weight type, on both the dispatched fast
// path and the forced scalar path.
#include "kernels/matmul.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/matmul_impl.h"
#include "kiln/error.h"
#include "quant/quant.h"

namespace {

using kiln::TensorType;
namespace kk = kiln::kernels;
namespace kd = kiln::kernels::detail;

const TensorType kTypes[] = {
    TensorType::F32,  TensorType::F16,  TensorType::BF16, TensorType::Q4_0,   TensorType::Q4_1,
    TensorType::Q5_0, TensorType::Q5_1, TensorType::Q8_0, TensorType::Q8_1,   TensorType::Q2_K,
    TensorType::Q3_K, TensorType::Q4_K, TensorType::Q5_K, TensorType::Q6_K,   TensorType::Q8_K,
    TensorType::IQ4_NL, TensorType::IQ4_XS, TensorType::MXFP4,
};

size_t row_bytes(TensorType t, int64_t k) { return static_cast<size_t>(*kiln::row_bytes(t, static_cast<uint64_t>(k))); }

void put_f16(uint8_t* p, float v) {
    const uint16_t h = kiln::kernels::float_to_half(v);
    std::memcpy(p, &h, 2);
}

// Random weights: quantized random floats where a quantizer exists, else random block bytes with
// the f16 scale fields set to small finite values (every code pattern is then a valid block).
std::vector<uint8_t> make_weights(TensorType t, int64_t rows, int64_t k, uint32_t seed) {
    std::mt19937 rng(seed);
    const auto& tr = kiln::traits(t);
    const size_t rb = row_bytes(t, k);
    std::vector<uint8_t> w(rb * static_cast<size_t>(rows));
    if (tr.can_quantize) {
        std::normal_distribution<float> nd(0.0f, 1.0f);
        std::vector<float> row(static_cast<size_t>(k));
        for (int64_t r = 0; r < rows; ++r) {
            const float row_scale = 0.02f * (1.0f + static_cast<float>(r % 7));
            for (auto& v : row) v = nd(rng) * row_scale;
            kiln::quantize_row(t, row.data(), w.data() + static_cast<size_t>(r) * rb, k);
        }
        return w;
    }
    for (auto& b : w) b = static_cast<uint8_t>(rng());
    std::uniform_real_distribution<float> sd(0.001f, 0.01f);
    const size_t nb = w.size() / tr.type_size;
    for (size_t i = 0; i < nb; ++i) {
        uint8_t* blk = w.data() + i * tr.type_size;
        switch (t) {
            case TensorType::Q2_K: put_f16(blk + 80, sd(rng)); put_f16(blk + 82, sd(rng)); break;
            case TensorType::Q3_K: put_f16(blk + 108, sd(rng)); break;
            case TensorType::IQ4_XS: put_f16(blk + 0, sd(rng)); break;
            default: ADD_FAILURE() << "no random-block recipe for " << tr.name; break;
        }
    }
    return w;
}

std::vector<float> make_x(int64_t n, int64_t k, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> ud(0.05f, 1.0f);
    std::vector<float> x(static_cast<size_t>(n * k));
    for (auto& v : x) v = (rng() & 1 ? 1.0f : -1.0f) * ud(rng);  // never zero
    return x;
}

std::vector<float> dequant_all(TensorType t, const std::vector<uint8_t>& w, int64_t rows, int64_t k) {
    std::vector<float> f(static_cast<size_t>(rows * k));
    for (int64_t r = 0; r < rows; ++r)
        kiln::dequantize_row(t, w.data() + static_cast<size_t>(r) * row_bytes(t, k), f.data() + r * k, k);
    return f;
}

// X as the decode path sees it: quantised to the activation format and expanded back.
std::vector<float> as_seen_by_decode(kd::XFormat f, const std::vector<float>& x, int64_t n, int64_t k) {
    std::vector<float> out = x;
    if (f == kd::XFormat::F32) return out;
    for (int64_t t = 0; t < n; ++t) {
        const float* src = x.data() + t * k;
        float* dst = out.data() + t * k;
        if (f == kd::XFormat::Q8x32) {
            std::vector<kiln::kernels::blk::xq32> q(static_cast<size_t>(k / 32));
            kd::quantize_x_q8x32_scalar(src, q.data(), k);
            for (int64_t i = 0; i < k; ++i) dst[i] = q[i / 32].d * q[i / 32].qs[i % 32];
        } else {
            std::vector<kiln::kernels::blk::xq256> q(static_cast<size_t>(k / 256));
            kd::quantize_x_q8x256_scalar(src, q.data(), k);
            for (int64_t i = 0; i < k; ++i) dst[i] = q[i / 256].d * q[i / 256].qs[i % 256];
        }
    }
    return out;
}

struct Param {
    TensorType type;
    bool scalar;
};

class KernelMatmul : public ::testing::TestWithParam<Param> {
protected:
    void SetUp() override { kk::set_force_scalar(GetParam().scalar); }
    void TearDown() override { kk::set_force_scalar(false); }
};

void check_matmul(TensorType t, int64_t rows, int64_t k, int64_t n, int threads, uint32_t seed) {
    SCOPED_TRACE(std::string(kiln::type_name(t)) + " rows=" + std::to_string(rows) + " k=" +
                 std::to_string(k) + " n=" + std::to_string(n) + " threads=" + std::to_string(threads) +
                 (kk::force_scalar() ? " scalar" : " dispatched"));
    const auto w = make_weights(t, rows, k, seed);
    const auto x = make_x(n, k, seed + 1);
    const auto wf = dequant_all(t, w, rows, k);

    kiln::ThreadPool pool(threads);
    std::vector<uint8_t> scratch(kk::matmul_scratch_bytes(t, k, n, pool.size()) + 1);
    std::vector<float> y(static_cast<size_t>(n * rows), std::numeric_limits<float>::quiet_NaN());
    // Misaligned scratch on purpose: matmul aligns it itself.
    kk::matmul(t, w.data(), rows, k, x.data(), n, y.data(), scratch.data() + 1, pool);

    std::vector<float> ref(static_cast<size_t>(n * rows));
    kk::matmul_reference(t, w.data(), rows, k, x.data(), n, ref.data());

    // The fast paths may quantise X to 8 bits (the few-token path dots it, the tile path rounds it
    // the same way): then it must match the reference applied to that quantised X closely, and the
    // true reference within the quantisation error.
    const kd::XFormat xf = kd::decode_xformat(t);
    const auto xs = as_seen_by_decode(xf, x, n, k);
    int bad = 0;
    for (int64_t tok = 0; tok < n && bad < 5; ++tok) {
        for (int64_t r = 0; r < rows && bad < 5; ++r) {
            double exact_seen = 0, abs_sum = 0, qerr_bound = 0;
            for (int64_t i = 0; i < k; ++i) {
                const double wi = wf[static_cast<size_t>(r * k + i)];
                exact_seen += wi * xs[static_cast<size_t>(tok * k + i)];
                abs_sum += std::abs(wi * xs[static_cast<size_t>(tok * k + i)]);
                qerr_bound += std::abs(wi * (x[static_cast<size_t>(tok * k + i)] - xs[static_cast<size_t>(tok * k + i)]));
            }
            const float got = y[static_cast<size_t>(tok * rows + r)];
            const float want = ref[static_cast<size_t>(tok * rows + r)];
            const double tol_seen = 3e-5 * abs_sum + 1e-30;
            const double tol_ref = qerr_bound + tol_seen;
            if (!(std::abs(got - exact_seen) <= tol_seen) || !(std::abs(got - want) <= tol_ref)) {
                ++bad;
                ADD_FAILURE() << "token " << tok << " row " << r << ": got " << got << " reference "
                              << want << " (with X as quantised: " << exact_seen << ", tol " << tol_seen
                              << ", quantisation bound " << qerr_bound << ")";
            }
        }
    }
}

TEST_P(KernelMatmul, MatchesReference) {
    const TensorType t = GetParam().type;
    const int64_t k = 1280;  // 5 super-blocks; two k-slices in the tiled path (512 + 512 + 256)
    uint32_t seed = 100;
    for (int64_t n : {1, 3, 17, 64}) {
        check_matmul(t, 37, k, n, 3, seed++);   // rows not a multiple of the thread count
        check_matmul(t, 130, k, n, 2, seed++);  // more than one row tile, with a tail
    }
    check_matmul(t, 5, 256, 2, 1, seed++);  // single thread
}

// Float types take any k: vector loops must handle the tails.
TEST(KernelMatmulOddK, FloatTypes) {
    for (bool scalar : {false, true}) {
        kk::set_force_scalar(scalar);
        for (TensorType t : {TensorType::F32, TensorType::F16, TensorType::BF16})
            for (int64_t n : {1, 5}) check_matmul(t, 9, 77, n, 2, 7);
    }
    kk::set_force_scalar(false);
}

std::vector<Param> all_params() {
    std::vector<Param> p;
    for (TensorType t : kTypes)
        for (bool s : {false, true}) p.push_back({t, s});
    return p;
}

INSTANTIATE_TEST_SUITE_P(Kernels, KernelMatmul, ::testing::ValuesIn(all_params()),
                         [](const auto& info) {
                             return std::string(kiln::type_name(info.param.type)) +
                                    (info.param.scalar ? "_Scalar" : "_Dispatched");
                         });

// The kernels' own block decoders agree with the reference dequantize_row.
TEST(KernelDecode, DecodersMatchDequantizeRow) {
    for (TensorType t : kTypes) {
        SCOPED_TRACE(kiln::type_name(t));
        const int64_t k = 512;
        const auto w = make_weights(t, 3, k, 5);
        const auto ref = dequant_all(t, w, 3, k);
        std::vector<kd::DecodeFn> decoders = {kd::decoder_scalar(t)};
#ifdef KILN_KERNELS_X86
        if (kk::cpu_features().avx2 && kd::avx2_kernels(t).decode) decoders.push_back(kd::avx2_kernels(t).decode);
#endif
        for (kd::DecodeFn dec : decoders) {
            ASSERT_NE(dec, nullptr);
            std::vector<float> got(static_cast<size_t>(3 * k));
            for (int r = 0; r < 3; ++r) dec(w.data() + r * row_bytes(t, k), got.data() + r * k, k);
            for (size_t i = 0; i < got.size(); ++i)
                ASSERT_NEAR(got[i], ref[i], 1e-6 * std::abs(ref[i]) + 1e-12) << "element " << i;
        }
    }
}

#ifdef KILN_KERNELS_X86
TEST(KernelQuantizeX, Avx2MatchesScalar) {
    if (!kk::cpu_features().avx2) GTEST_SKIP() << "no AVX2";
    const int64_t k = 1024;
    auto x = make_x(1, k, 9);
    x[5] = 0.0f;  // a zero and a large value in the mix
    x[300] = 50.0f;
    std::vector<kiln::kernels::blk::xq32> a(k / 32), b(k / 32);
    kd::quantize_x_q8x32_scalar(x.data(), a.data(), k);
    kd::quantize_x_q8x32_avx2(x.data(), b.data(), k);
    ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])), 0);
    std::vector<kiln::kernels::blk::xq256> c(k / 256), d(k / 256);
    kd::quantize_x_q8x256_scalar(x.data(), c.data(), k);
    kd::quantize_x_q8x256_avx2(x.data(), d.data(), k);
    ASSERT_EQ(std::memcmp(c.data(), d.data(), c.size() * sizeof(c[0])), 0);
    std::vector<float> zeros(256, 0.0f);  // an all-zero block quantises to d = 0, codes 0
    kd::quantize_x_q8x256_avx2(zeros.data(), d.data(), 256);
    EXPECT_EQ(d[0].d, 0.0f);
    EXPECT_EQ(d[0].qs[17], 0);
}
#endif

TEST(KernelMatmulErrors, BadKAndUnsupportedType) {
    kiln::ThreadPool pool(1);
    std::vector<uint8_t> w(4096), scratch(1 << 20);
    std::vector<float> x(1024, 1.0f), y(16);
    try {
        kk::matmul(TensorType::Q4_K, w.data(), 1, 100, x.data(), 1, y.data(), scratch.data(), pool);
        FAIL() << "expected kiln::Error";
    } catch (const kiln::Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("q4_K"), std::string::npos) << msg;
        EXPECT_NE(msg.find("100"), std::string::npos) << msg;
    }
    EXPECT_THROW(kk::matmul(TensorType::IQ2_XXS, w.data(), 1, 256, x.data(), 1, y.data(),
                            scratch.data(), pool),
                 kiln::Error);
    EXPECT_THROW(kk::matmul_reference(TensorType::Q8_0, w.data(), 1, 33, x.data(), 1, y.data()), kiln::Error);
    EXPECT_FALSE(kk::matmul_supports(TensorType::IQ2_XXS));
    EXPECT_TRUE(kk::matmul_supports(TensorType::MXFP4));
    // Empty shapes are no-ops.
    kk::matmul(TensorType::F32, w.data(), 0, 4, x.data(), 1, y.data(), scratch.data(), pool);
    kk::matmul(TensorType::F32, w.data(), 1, 4, x.data(), 0, y.data(), scratch.data(), pool);
}

}  // namespace
