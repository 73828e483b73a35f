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

// X as matmul sees it: quantised per group of `group` elements (d = amax / 127, codes rounded
// to nearest even, as every kernel level does it) and expanded back; group 0 = unchanged.
std::vector<float> as_seen(int group, const std::vector<float>& x) {
    std::vector<float> out = x;
    if (group == 0) return out;
    for (size_t g0 = 0; g0 < x.size(); g0 += static_cast<size_t>(group)) {
        float amax = 0;
        for (int i = 0; i < group; ++i) amax = std::max(amax, std::fabs(x[g0 + i]));
        const float d = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0.0f;
        for (int i = 0; i < group; ++i) out[g0 + i] = d * std::nearbyint(x[g0 + i] * id);
    }
    return out;
}

struct Param {
    TensorType type;
    kk::KernelLevel level;
};

const char* level_name(kk::KernelLevel l) {
    switch (l) {
        case kk::KernelLevel::Scalar: return "Scalar";
        case kk::KernelLevel::Avx2: return "Avx2";
        case kk::KernelLevel::Avx512Vnni: return "Avx512Vnni";
    }
    return "?";
}

bool cpu_has(kk::KernelLevel l) {
    switch (l) {
        case kk::KernelLevel::Scalar: return true;
        case kk::KernelLevel::Avx2: return kk::cpu_features().avx2;
        case kk::KernelLevel::Avx512Vnni: return kk::cpu_features().avx512vnni;
    }
    return false;
}

// Each kernel level the CPU has is tested by capping the level; the scalar one always runs.
class KernelMatmul : public ::testing::TestWithParam<Param> {
protected:
    void SetUp() override {
        if (!cpu_has(GetParam().level)) GTEST_SKIP() << "CPU lacks " << level_name(GetParam().level);
        kk::set_max_kernel_level(GetParam().level);
        ASSERT_EQ(kk::kernel_level(), GetParam().level);
    }
    void TearDown() override { kk::set_force_scalar(false); }
};

void check_matmul(TensorType t, int64_t rows, int64_t k, int64_t n, int threads, uint32_t seed) {
    SCOPED_TRACE(std::string(kiln::type_name(t)) + " rows=" + std::to_string(rows) + " k=" +
                 std::to_string(k) + " n=" + std::to_string(n) + " threads=" + std::to_string(threads) +
                 " level=" + kk::kernel_level_name());
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

    // Every path and level rounds X to 8 bits per group of kiln::activation_grid(t) (llama.cpp's
    // rule) for quantized weights: the result must match the reference applied to that rounded X
    // closely (float summation order only), and the true reference within the rounding error.
    const auto xs = as_seen(kiln::activation_grid(t), x);
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
    for (int64_t n : {1, 3, 11, 17, 64}) {  // tile kernels: 8 or 4 tokens at a time, and every tail
        check_matmul(t, 37, k, n, 3, seed++);   // rows not a multiple of the thread count
        check_matmul(t, 130, k, n, 2, seed++);  // more than one row tile, with a tail
    }
    check_matmul(t, 5, 256, 2, 1, seed++);  // single thread
}

// Float types take any k: vector loops must handle the tails.
TEST(KernelMatmulOddK, FloatTypes) {
    for (auto level : {kk::KernelLevel::Scalar, kk::KernelLevel::Avx2, kk::KernelLevel::Avx512Vnni}) {
        kk::set_max_kernel_level(level);
        for (TensorType t : {TensorType::F32, TensorType::F16, TensorType::BF16})
            for (int64_t n : {1, 5}) check_matmul(t, 9, 77, n, 2, 7);
    }
    kk::set_force_scalar(false);
}

// OpenBLAS's path for float weights (Auto: F32 from 32 tokens; All: F16 / BF16 too): the same
// answers as the reference, rows not a multiple of its 64-row blocks, odd k, 1 and 3 threads.
TEST(KernelMatmulBlas, FloatTypesMatchTheReference) {
    EXPECT_TRUE(kk::matmul_uses_blas(TensorType::F32, 32));
    EXPECT_FALSE(kk::matmul_uses_blas(TensorType::F32, 31));
    EXPECT_FALSE(kk::matmul_uses_blas(TensorType::F16, 512));
    EXPECT_FALSE(kk::matmul_uses_blas(TensorType::Q8_0, 512));
    kk::set_matmul_blas(kk::BlasUse::All);
    for (TensorType t : {TensorType::F32, TensorType::F16, TensorType::BF16}) {
        EXPECT_TRUE(kk::matmul_uses_blas(t, 40)) << kiln::type_name(t);
        check_matmul(t, 130, 320, 40, 3, 31);
        check_matmul(t, 9, 77, 33, 1, 32);
    }
    kk::set_matmul_blas(kk::BlasUse::Off);
    EXPECT_FALSE(kk::matmul_uses_blas(TensorType::F32, 512));
    check_matmul(TensorType::F32, 130, 320, 40, 3, 33);  // kiln's float tiles
    kk::set_matmul_blas(kk::BlasUse::Auto);
}

std::vector<Param> all_params() {
    std::vector<Param> p;
    for (TensorType t : kTypes)
        for (auto l : {kk::KernelLevel::Scalar, kk::KernelLevel::Avx2, kk::KernelLevel::Avx512Vnni})
            p.push_back({t, l});
    return p;
}

INSTANTIATE_TEST_SUITE_P(Kernels, KernelMatmul, ::testing::ValuesIn(all_params()),
                         [](const auto& info) {
                             return std::string(kiln::type_name(info.param.type)) + "_" + level_name(info.param.level);
                         });

// The integer-tile unpackers: w = s * code + o reproduces dequantize_row, codes fit the
// kernel's assumptions, and the fast unpackers agree with the scalar ones exactly.
TEST(KernelUnpack, UnpackersMatchDequantizeRow) {
    for (TensorType t : kTypes) {
        const kd::CodeFormat f = kd::code_format(t);
        if (f.group == 0) continue;
        SCOPED_TRACE(kiln::type_name(t));
        const int64_t k = 512;
        const auto w = make_weights(t, 2, k, 11);
        const auto ref = dequant_all(t, w, 2, k);
        for (int r = 0; r < 2; ++r) {
            std::vector<uint8_t> codes(k);
            std::vector<float> s(k / f.group), o(k / f.group);
            kd::unpacker_scalar(t)(w.data() + r * row_bytes(t, k), k, codes.data(), s.data(), o.data());
            for (int64_t i = 0; i < k; ++i) {
                const float got = s[i / f.group] * codes[i] + o[i / f.group];
                const float want = ref[static_cast<size_t>(r * k + i)];
                ASSERT_NEAR(got, want, 1e-6 * (std::abs(want) + std::abs(o[i / f.group])) + 1e-12) << "element " << i;
                if (!f.has_min) {
                    ASSERT_EQ(o[i / f.group], -static_cast<float>(f.offset) * s[i / f.group]);
                }
            }
#ifdef KILN_KERNELS_X86
            if (kk::cpu_features().avx512vnni && kd::unpacker_vnni(t)) {
                std::vector<uint8_t> codes2(k);
                std::vector<float> s2(k / f.group), o2(k / f.group);
                kd::unpacker_vnni(t)(w.data() + r * row_bytes(t, k), k, codes2.data(), s2.data(), o2.data());
                ASSERT_EQ(codes, codes2);
                ASSERT_EQ(s, s2);
                ASSERT_EQ(o, o2);
            }
#endif
        }
    }
}

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

// What this machine's CPU runs (scripts/test.sh prints this line, so CI says which kernel levels
// the level-parametrised tests ran and which they skipped).
TEST(KernelLevels, ThisCpu) {
    std::string runs, lacks;
    for (auto l : {kk::KernelLevel::Scalar, kk::KernelLevel::Avx2, kk::KernelLevel::Avx512Vnni})
        (cpu_has(l) ? runs : lacks) += std::string(" ") + level_name(l);
    std::printf("[ levels ] CPU kernel levels run:%s; skipped (CPU lacks them):%s\n", runs.c_str(),
                lacks.empty() ? " none" : lacks.c_str());
    EXPECT_TRUE(cpu_has(kk::KernelLevel::Scalar));
    EXPECT_TRUE(!kk::cpu_features().avx512vnni || kk::cpu_features().avx2) << "avx512vnni implies avx2";
}

// The grid is llama.cpp's vec_dot_type per weight type: q8_0/q8_1 blocks of 32 for the legacy
// types, IQ4_NL and MXFP4; q8_K blocks of 256 for the K-quants and IQ4_XS; float for float weights.
TEST(KernelActivationGrid, IsLlamaCppsPerType) {
    EXPECT_EQ(kiln::activation_grid(TensorType::F32), 0);
    EXPECT_EQ(kiln::activation_grid(TensorType::F16), 0);
    EXPECT_EQ(kiln::activation_grid(TensorType::BF16), 0);
    for (TensorType t : {TensorType::Q4_0, TensorType::Q4_1, TensorType::Q5_0, TensorType::Q5_1, TensorType::Q8_0,
                         TensorType::IQ4_NL, TensorType::MXFP4})
        EXPECT_EQ(kiln::activation_grid(t), 32) << kiln::type_name(t);
    for (TensorType t : {TensorType::Q2_K, TensorType::Q3_K, TensorType::Q4_K, TensorType::Q5_K, TensorType::Q6_K,
                         TensorType::IQ4_XS})
        EXPECT_EQ(kiln::activation_grid(t), 256) << kiln::type_name(t);
#ifdef KILN_KERNELS_X86
    // The AVX2 integer dots take X in exactly that grid (they quantise it themselves).
    for (TensorType t : kTypes) {
        const kd::Avx2Kernels ak = kd::avx2_kernels(t);
        if (!ak.vec_dot) continue;
        const int g = ak.xfmt == kd::XFormat::Q8x32 ? 32 : ak.xfmt == kd::XFormat::Q8x256 ? 256 : 0;
        EXPECT_EQ(g, kiln::activation_grid(t)) << kiln::type_name(t);
    }
#endif
}

// One prompt-sized matmul gives the same numbers at every kernel level up to float summation
// order: each level rounds X to the same codes (the integer tiles included).
TEST(KernelMatmulLevels, AgreeUpToSummationOrder) {
    const int64_t rows = 70, k = 512, n = 40;
    for (TensorType t : kTypes) {
        if (kiln::activation_grid(t) == 0) continue;
        SCOPED_TRACE(kiln::type_name(t));
        const auto w = make_weights(t, rows, k, 21);
        auto x = make_x(n, k, 22);
        for (size_t i = 0; i < x.size(); i += 97) x[i] *= 9.0f;  // outliers make the grid matter
        kiln::ThreadPool pool(2);
        std::vector<uint8_t> scratch(kk::matmul_scratch_bytes(t, k, n, pool.size()));
        std::vector<std::vector<float>> ys;
        std::vector<std::string> names;
        for (auto level : {kk::KernelLevel::Scalar, kk::KernelLevel::Avx2, kk::KernelLevel::Avx512Vnni}) {
            if (!cpu_has(level)) continue;
            kk::set_max_kernel_level(level);
            for (int64_t nt : {n, int64_t{2}}) {  // the tile paths and the per-token dots
                std::vector<float> y(static_cast<size_t>(nt * rows));
                kk::matmul(t, w.data(), rows, k, x.data(), nt, y.data(), scratch.data(), pool);
                y.resize(static_cast<size_t>(2 * rows));
                ys.push_back(y);
                names.push_back(std::string(level_name(level)) + (nt == n ? " tiles" : " rows"));
            }
        }
        kk::set_force_scalar(false);
        for (size_t v = 1; v < ys.size(); ++v)
            for (size_t i = 0; i < ys[0].size(); ++i)
                ASSERT_NEAR(ys[v][i], ys[0][i], 1e-4 * (std::abs(ys[0][i]) + 1.0))
                    << names[v] << " vs " << names[0] << " at " << i;
    }
}

// The per-token dots at every level against the scalar one, at lengths that end inside a group
// of blocks (the avx512vnni dots take four blocks of 32 at a time; K-quants one or three
// super-blocks), with a zero input row.
TEST(KernelMatmulLevels, DecodeDotsAtOddLengths) {
    const int64_t rows = 37;
    for (TensorType t : kTypes) {
        const int grid = kiln::activation_grid(t);
        if (grid == 0) continue;
        const std::vector<int64_t> lengths = grid == 32 ? std::vector<int64_t>{32, 64, 96, 160, 608} : std::vector<int64_t>{256, 768};
        for (int64_t k : lengths) {
            SCOPED_TRACE(std::string(kiln::type_name(t)) + " k=" + std::to_string(k));
            const auto w = make_weights(t, rows, k, 31);
            auto x = make_x(3, k, 32);
            std::fill(x.begin() + k, x.begin() + 2 * k, 0.0f);  // token 1: all zero
            kiln::ThreadPool pool(2);
            std::vector<uint8_t> scratch(kk::matmul_scratch_bytes(t, k, 3, pool.size()));
            std::vector<float> ref(static_cast<size_t>(3 * rows));
            kk::set_max_kernel_level(kk::KernelLevel::Scalar);
            kk::matmul(t, w.data(), rows, k, x.data(), 3, ref.data(), scratch.data(), pool);
            for (auto level : {kk::KernelLevel::Avx2, kk::KernelLevel::Avx512Vnni}) {
                if (!cpu_has(level)) continue;
                kk::set_max_kernel_level(level);
                std::vector<float> y(ref.size(), -1.0f);
                kk::matmul(t, w.data(), rows, k, x.data(), 3, y.data(), scratch.data(), pool);
                for (size_t i = 0; i < y.size(); ++i)
                    ASSERT_NEAR(y[i], ref[i], 1e-4 * (std::abs(ref[i]) + 1.0)) << level_name(level) << " at " << i;
                for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(y[static_cast<size_t>(rows + r)], 0.0f) << "zero input, row " << r;
            }
            kk::set_force_scalar(false);
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
    // X rounded back to floats: the same at both levels, and d * code of the quantisers.
    for (int grid : {32, 256}) {
        std::vector<float> r1(k), r2(k);
        kd::round_x_scalar(x.data(), r1.data(), k, grid);
        kd::round_x_avx2(x.data(), r2.data(), k, grid);
        ASSERT_EQ(std::memcmp(r1.data(), r2.data(), k * sizeof(float)), 0) << "grid " << grid;
        const float want = grid == 32 ? a[300 / 32].d * a[300 / 32].qs[300 % 32] : c[300 / 256].d * c[300 / 256].qs[300 % 256];
        EXPECT_EQ(r1[300], want) << "grid " << grid;
        EXPECT_EQ(r1[5], 0.0f);
    }
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
