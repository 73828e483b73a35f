// Tests for engine/quant: bit-exact dequantization against llama.cpp's reference values
// (${KILN_SHARED_DIR}/quant/*.json), quantize -> dequantize round trips with per-type error
// bounds, and the fp16/bf16 conversions.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <numbers>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kiln/error.h"
#include "quant/quant.h"
#include "quant/types.h"

namespace {

namespace fs = std::filesystem;
using kiln::TensorType;

fs::path quant_dir() { return fs::path(KILN_SHARED_DIR) / "quant"; }

// Dequantizable types with no shared reference file. They are covered by the round-trip tests
// (which decode what our own quantizer wrote) and by the layout checks in QuantFormats below.
const std::set<TensorType> kCoveredByRoundTrip = {TensorType::Q8_1, TensorType::Q8_K};

uint32_t float_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
float bits_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

std::vector<kiln::TypeTraits> table() {
    size_t n = 0;
    const kiln::TypeTraits* t = kiln::all_types(&n);
    return {t, t + n};
}

// ---- reference files -----------------------------------------------------------------------

// One case per reference file present, plus one per dequantizable type that should have a file
// (so a missing file fails under that type's name instead of passing silently).
std::vector<std::string> reference_cases() {
    std::set<std::string> names;
    std::error_code ec;
    if (fs::is_directory(quant_dir(), ec))
        for (const auto& e : fs::directory_iterator(quant_dir(), ec))
            if (e.path().extension() == ".json") names.insert(e.path().stem().string());
    for (const auto& t : table())
        if (t.can_dequantize && !kCoveredByRoundTrip.count(t.type)) names.insert(t.name);
    return {names.begin(), names.end()};
}

std::vector<uint8_t> decode_hex(const std::string& hex) {
    auto nibble = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    if (hex.size() % 2 != 0) throw std::runtime_error("odd-length hex string");
    std::vector<uint8_t> out(hex.size() / 2);
    for (size_t i = 0; i < out.size(); ++i) {
        const int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) throw std::runtime_error("bad hex digit at " + std::to_string(2 * i));
        out[i] = static_cast<uint8_t>(hi << 4 | lo);
    }
    return out;
}

class QuantReference : public testing::TestWithParam<std::string> {};

TEST_P(QuantReference, DequantizeBitExact) {
    if (!fs::is_directory(quant_dir())) {
        std::fprintf(stderr, "\n*** ../shared/quant not found (%s): skipping reference tests ***\n\n",
                     quant_dir().c_str());
        GTEST_SKIP() << "../shared/quant not found: skipping reference tests (looked in " << quant_dir() << ")";
    }
    const fs::path path = quant_dir() / (GetParam() + ".json");
    ASSERT_TRUE(fs::exists(path)) << "no reference file " << path << " for dequantizable type " << GetParam()
                                  << " (add one, or list the type in kCoveredByRoundTrip)";
    std::ifstream in(path);
    const nlohmann::json j = nlohmann::json::parse(in);

    const uint32_t id = j.at("type_id").get<uint32_t>();
    const kiln::TypeTraits* tr = kiln::type_traits(id);
    ASSERT_NE(tr, nullptr) << "unknown type_id " << id;
    EXPECT_EQ(std::string(tr->name), j.at("type").get<std::string>());
    EXPECT_EQ(std::string(tr->name), GetParam());
    EXPECT_EQ(tr->block_size, j.at("block_size").get<uint32_t>());
    EXPECT_EQ(tr->type_size, j.at("type_size").get<uint32_t>());
    ASSERT_TRUE(tr->can_dequantize) << tr->name << " has reference data but no dequantizer";

    const int64_t n_blocks = j.at("n_blocks").get<int64_t>();
    const std::vector<uint8_t> blocks = decode_hex(j.at("blocks_hex").get<std::string>());
    const auto& values = j.at("values");
    ASSERT_EQ(blocks.size(), static_cast<size_t>(n_blocks) * tr->type_size);
    ASSERT_EQ(values.size(), static_cast<size_t>(n_blocks) * tr->block_size);

    const int64_t n = n_blocks * tr->block_size;
    std::vector<float> out(static_cast<size_t>(n), std::nanf(""));
    kiln::dequantize_row(tr->type, blocks.data(), out.data(), n);

    int mismatches = 0;
    for (int64_t i = 0; i < n; ++i) {
        const float want = static_cast<float>(values[static_cast<size_t>(i)].get<double>());
        // JSON writers print -0.0 as "0" or "-0" inconsistently, so zero compares by value.
        const bool same = want == 0.0f ? out[i] == 0.0f : float_bits(out[i]) == float_bits(want);
        if (!same && ++mismatches <= 10)
            ADD_FAILURE() << tr->name << " element " << i << " (block " << i / tr->block_size << "): got "
                          << out[i] << " want " << want;
    }
    EXPECT_EQ(mismatches, 0) << tr->name << ": " << mismatches << " of " << n << " elements differ";
}

INSTANTIATE_TEST_SUITE_P(Shared, QuantReference, testing::ValuesIn(reference_cases()),
                         [](const testing::TestParamInfo<std::string>& p) {
                             std::string s = p.param;
                             for (char& c : s)
                                 if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                             return s;
                         });

TEST(QuantReferenceCoverage, EveryDequantizableTypeIsCovered) {
    for (const auto& t : table()) {
        if (!t.can_dequantize) continue;
        if (kCoveredByRoundTrip.count(t.type)) {
            EXPECT_TRUE(t.can_quantize) << t.name << " is listed as covered by round trip but has no quantizer";
            continue;
        }
        if (!fs::is_directory(quant_dir())) continue;  // QuantReference reports the skip loudly
        EXPECT_TRUE(fs::exists(quant_dir() / (std::string(t.name) + ".json")))
            << t.name << " can be dequantized but has neither a reference file nor round-trip coverage";
    }
    if (!fs::is_directory(quant_dir())) GTEST_SKIP() << "../shared/quant not found: skipping reference tests";
}

// ---- round trips ---------------------------------------------------------------------------

// Deterministic N(0,1) (std::normal_distribution differs between standard libraries).
class Gauss {
public:
    explicit Gauss(uint64_t seed) : rng_(seed) {}
    float operator()() {
        if (has_spare_) {
            has_spare_ = false;
            return spare_;
        }
        double u1, u2;
        do u1 = uniform(); while (u1 <= 0.0);
        u2 = uniform();
        const double r = std::sqrt(-2.0 * std::log(u1)), a = 2.0 * std::numbers::pi * u2;
        spare_ = static_cast<float>(r * std::sin(a));
        has_spare_ = true;
        return static_cast<float>(r * std::cos(a));
    }
    uint64_t bits() { return rng_(); }

private:
    double uniform() { return static_cast<double>(rng_() >> 11) * 0x1p-53; }
    std::mt19937_64 rng_;
    float spare_ = 0.0f;
    bool has_spare_ = false;
};

constexpr int64_t kRow = 4096;

struct RoundTripBound {
    double gauss;    // normalized RMSE on N(0,1) rows
    double outlier;  // normalized RMSE on N(0,1) rows with ~1% of elements scaled by 20
};

// About 1.3x what our quantizers measure (printed as "[ measured ]" by the test), capped by what
// each format is expected to reach; a regression in a quantizer trips them. Measured, gaussian /
// outliers: f16 2.07e-4 / 2.05e-4, bf16 1.66e-3 / 1.73e-3, q8_0 = q8_1 0.00532 / 0.0112,
// q8_K 0.00683 / 0.0259, q6_K 0.0174 / 0.0321, q5_0 0.0404 / 0.0875, q5_1 0.0337 / 0.0470,
// q5_K 0.0349 / 0.0477, q4_0 0.0811 / 0.147, q4_1 0.0700 / 0.0980, q4_K 0.0702 / 0.0986,
// iq4_nl 0.0733 / 0.119, mxfp4 0.111 / 0.169.
const std::map<TensorType, RoundTripBound> kBounds = {
    {TensorType::F32, {0.0, 0.0}},
    {TensorType::F16, {2.7e-4, 2.7e-4}},
    {TensorType::BF16, {2.2e-3, 2.3e-3}},
    {TensorType::Q8_0, {0.0070, 0.0146}},
    {TensorType::Q8_1, {0.0070, 0.0146}},
    {TensorType::Q8_K, {0.0089, 0.034}},
    {TensorType::Q6_K, {0.020, 0.042}},
    {TensorType::Q5_0, {0.050, 0.114}},
    {TensorType::Q5_1, {0.044, 0.061}},
    {TensorType::Q5_K, {0.045, 0.062}},
    {TensorType::Q4_0, {0.100, 0.19}},
    {TensorType::Q4_1, {0.091, 0.127}},
    {TensorType::Q4_K, {0.091, 0.128}},
    {TensorType::IQ4_NL, {0.095, 0.155}},
    {TensorType::MXFP4, {0.144, 0.22}},
};

std::vector<float> gauss_rows(int rows, uint64_t seed, bool outliers) {
    Gauss g(seed);
    std::vector<float> x(static_cast<size_t>(rows * kRow));
    for (float& v : x) v = g();
    if (outliers)
        for (float& v : x)
            if (g.bits() % 100 == 0) v *= 20.0f;
    return x;
}

// Quantizes and dequantizes `x` row by row with type t.
std::vector<float> round_trip(TensorType t, const std::vector<float>& x) {
    const auto& tr = kiln::traits(t);
    const size_t row_bytes = static_cast<size_t>(kRow / tr.block_size * tr.type_size);
    std::vector<uint8_t> q(row_bytes);
    std::vector<float> y(x.size());
    for (size_t r = 0; r < x.size() / kRow; ++r) {
        kiln::quantize_row(t, x.data() + r * kRow, q.data(), kRow);
        kiln::dequantize_row(t, q.data(), y.data() + r * kRow, kRow);
    }
    return y;
}

double nrmse(const std::vector<float>& x, const std::vector<float>& y) {
    double se = 0.0, ss = 0.0;
    for (size_t i = 0; i < x.size(); ++i) {
        const double d = static_cast<double>(y[i]) - x[i];
        se += d * d;
        ss += static_cast<double>(x[i]) * x[i];
    }
    return std::sqrt(se / ss);
}

std::vector<TensorType> quantizable_types() {
    std::vector<TensorType> out;
    for (const auto& t : table())
        if (t.can_quantize) out.push_back(t.type);
    return out;
}

std::vector<std::string> quantizable_names() {
    std::vector<std::string> out;
    for (TensorType t : quantizable_types()) out.emplace_back(kiln::type_name(t));
    return out;
}

// Parameterised by type name so failures print "q4_K" rather than the enum's bytes.
class QuantRoundTrip : public testing::TestWithParam<std::string> {
protected:
    TensorType type() const { return *kiln::type_from_name(GetParam()); }
};

TEST_P(QuantRoundTrip, ErrorWithinBound) {
    const TensorType t = type();
    const char* name = kiln::type_name(t);
    ASSERT_TRUE(kiln::traits(t).can_dequantize) << name << " can be quantized but not dequantized";
    const auto it = kBounds.find(t);
    ASSERT_NE(it, kBounds.end()) << "no round-trip bound for quantizable type " << name;

    const std::vector<float> gauss = gauss_rows(4, 1234, false);
    const std::vector<float> outl = gauss_rows(2, 5678, true);
    const double e_gauss = nrmse(gauss, round_trip(t, gauss));
    const double e_outl = nrmse(outl, round_trip(t, outl));
    std::printf("[ measured ] %-7s round-trip nRMSE: gaussian %.6f, outliers %.6f\n", name, e_gauss, e_outl);
    RecordProperty("nrmse_gauss", std::to_string(e_gauss));
    RecordProperty("nrmse_outliers", std::to_string(e_outl));
    EXPECT_LE(e_gauss, it->second.gauss) << name;
    EXPECT_LE(e_outl, it->second.outlier) << name;

    // An all-zero row decodes to exact zeros (no NaN from a 0/0 scale).
    const std::vector<float> zeros(kRow, 0.0f);
    const std::vector<float> z = round_trip(t, zeros);
    for (int64_t i = 0; i < kRow; ++i) ASSERT_EQ(z[i], 0.0f) << name << " zero row, element " << i;
}

TEST_P(QuantRoundTrip, StructuredRows) {
    // Rows that stress the scale search and the fp16 scale range: constants, a lone spike, tiny
    // and large magnitudes, an all-positive offset band. Each kind must decode to finite values
    // with at most twice the gaussian error bound.
    const TensorType t = type();
    const char* name = kiln::type_name(t);
    const auto it = kBounds.find(t);
    ASSERT_NE(it, kBounds.end());
    const char* kinds[] = {"constant", "spike", "tiny", "large", "offset"};
    for (int kind = 0; kind < 5; ++kind) {
        std::vector<float> x(kRow);
        for (int64_t i = 0; i < kRow; ++i) {
            const float fi = static_cast<float>(i);
            switch (kind) {
                case 0: x[i] = (i / 256) % 2 ? 0.75f : -0.5f; break;
                case 1: x[i] = (i % 256 == 17) ? 3.0f : 0.0f; break;
                case 2: x[i] = 1e-3f * std::sin(0.37f * fi); break;
                case 3: x[i] = 100.0f * std::cos(0.11f * fi); break;
                default: x[i] = 5.0f + 0.5f * std::sin(0.23f * fi); break;
            }
        }
        const std::vector<float> y = round_trip(t, x);
        for (int64_t i = 0; i < kRow; ++i) ASSERT_TRUE(std::isfinite(y[i])) << name << " " << kinds[kind] << " " << i;
        const double e = nrmse(x, y);
        std::printf("[ measured ] %-7s %-8s nRMSE: %.6f\n", name, kinds[kind], e);
        EXPECT_LE(e, 2.0 * it->second.gauss) << name << " " << kinds[kind];
    }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, QuantRoundTrip, testing::ValuesIn(quantizable_names()),
                         [](const testing::TestParamInfo<std::string>& p) { return p.param; });

// ---- format details ------------------------------------------------------------------------

TEST(QuantFormats, BlockStructsMatchTable) {
    // quant.h static_asserts the sizes as literals; this ties them to the type table.
    struct Layout {
        TensorType type;
        size_t bytes;
        int elements;
    };
    const Layout layouts[] = {
        {TensorType::Q4_0, sizeof(kiln::block_q4_0), kiln::kQK},
        {TensorType::Q4_1, sizeof(kiln::block_q4_1), kiln::kQK},
        {TensorType::Q5_0, sizeof(kiln::block_q5_0), kiln::kQK},
        {TensorType::Q5_1, sizeof(kiln::block_q5_1), kiln::kQK},
        {TensorType::Q8_0, sizeof(kiln::block_q8_0), kiln::kQK},
        {TensorType::Q8_1, sizeof(kiln::block_q8_1), kiln::kQK},
        {TensorType::Q2_K, sizeof(kiln::block_q2_K), kiln::kQKK},
        {TensorType::Q3_K, sizeof(kiln::block_q3_K), kiln::kQKK},
        {TensorType::Q4_K, sizeof(kiln::block_q4_K), kiln::kQKK},
        {TensorType::Q5_K, sizeof(kiln::block_q5_K), kiln::kQKK},
        {TensorType::Q6_K, sizeof(kiln::block_q6_K), kiln::kQKK},
        {TensorType::Q8_K, sizeof(kiln::block_q8_K), kiln::kQKK},
        {TensorType::IQ4_NL, sizeof(kiln::block_iq4_nl), kiln::kQK},
        {TensorType::IQ4_XS, sizeof(kiln::block_iq4_xs), kiln::kQKK},
        {TensorType::MXFP4, sizeof(kiln::block_mxfp4), kiln::kQK},
    };
    for (const Layout& l : layouts) {
        EXPECT_EQ(kiln::traits(l.type).type_size, l.bytes) << kiln::type_name(l.type);
        EXPECT_EQ(kiln::traits(l.type).block_size, static_cast<uint32_t>(l.elements)) << kiln::type_name(l.type);
    }
    // Empty rows are fine (no blocks, nothing touched).
    EXPECT_NO_THROW(kiln::dequantize_row(TensorType::Q4_K, nullptr, nullptr, 0));
    EXPECT_NO_THROW(kiln::quantize_row(TensorType::F32, nullptr, nullptr, 0));
}

TEST(QuantFormats, Q8_1SumField) {
    const std::vector<float> x = gauss_rows(1, 42, false);
    std::vector<kiln::block_q8_1> q(kRow / 32);
    kiln::quantize_row(TensorType::Q8_1, x.data(), q.data(), kRow);
    for (const auto& b : q) {
        int sum = 0;
        for (int8_t v : b.qs) sum += v;
        EXPECT_NEAR(kiln::fp16_to_fp32(b.s), kiln::fp16_to_fp32(b.d) * static_cast<float>(sum),
                    1e-3 * std::fabs(kiln::fp16_to_fp32(b.d) * static_cast<float>(sum)) + 1e-6);
    }
}

TEST(QuantFormats, Q8_KBlockSums) {
    const std::vector<float> x = gauss_rows(1, 43, false);
    std::vector<kiln::block_q8_K> q(kRow / 256);
    kiln::quantize_row(TensorType::Q8_K, x.data(), q.data(), kRow);
    for (const auto& b : q)
        for (int g = 0; g < 16; ++g) {
            int sum = 0;
            for (int l = 0; l < 16; ++l) sum += b.qs[16 * g + l];
            EXPECT_EQ(b.bsums[g], sum);
        }
}

TEST(QuantFormats, HandBuiltBlocksDecode) {
    // Q8_0: d = 0.5, q = j - 16.
    kiln::block_q8_0 b8{};
    b8.d = kiln::fp32_to_fp16(0.5f);
    for (int j = 0; j < 32; ++j) b8.qs[j] = static_cast<int8_t>(j - 16);
    float y[256];
    kiln::dequantize_row(TensorType::Q8_0, &b8, y, 32);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], 0.5f * static_cast<float>(j - 16));

    // Q8_K: float d, no fp16 rounding.
    kiln::block_q8_K bk{};
    bk.d = 0.1f;
    for (int j = 0; j < 256; ++j) bk.qs[j] = static_cast<int8_t>(j % 255 - 127);
    kiln::dequantize_row(TensorType::Q8_K, &bk, y, 256);
    for (int j = 0; j < 256; ++j) EXPECT_EQ(y[j], 0.1f * static_cast<float>(j % 255 - 127));

    // Q8_1 decodes like Q8_0 (s is ignored).
    kiln::block_q8_1 b1{};
    b1.d = kiln::fp32_to_fp16(-0.25f);
    b1.s = 0xffff;
    for (int j = 0; j < 32; ++j) b1.qs[j] = static_cast<int8_t>(3 * j - 50);
    kiln::dequantize_row(TensorType::Q8_1, &b1, y, 32);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], -0.25f * static_cast<float>(3 * j - 50));

    // MXFP4: e = 128 -> half-scale 1, so codes decode to the doubled grid itself.
    kiln::block_mxfp4 bm{};
    bm.e = 128;
    for (int j = 0; j < 16; ++j) bm.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
    kiln::dequantize_row(TensorType::MXFP4, &bm, y, 32);
    for (int j = 0; j < 16; ++j) {
        EXPECT_EQ(y[j], kiln::kMxfp4Values[j]);
        EXPECT_EQ(y[j + 16], kiln::kMxfp4Values[15 - j]);
    }
}

TEST(QuantFormats, E8M0HalfScale) {
    EXPECT_EQ(kiln::e8m0_to_fp32_half(128), 1.0f);
    EXPECT_EQ(kiln::e8m0_to_fp32_half(127), 0.5f);
    EXPECT_EQ(kiln::e8m0_to_fp32_half(1), std::ldexp(1.0f, -127));
    EXPECT_EQ(kiln::e8m0_to_fp32_half(0), std::ldexp(1.0f, -128));
    EXPECT_EQ(kiln::e8m0_to_fp32_half(254), std::ldexp(1.0f, 126));
}

TEST(QuantFormats, UnalignedSourceAndDestination) {
    // Rows inside GGUF files and caller buffers need not be aligned to the block struct.
    const std::vector<float> x = gauss_rows(1, 44, false);
    for (TensorType t : quantizable_types()) {
        const auto& tr = kiln::traits(t);
        const size_t bytes = static_cast<size_t>(kRow / tr.block_size * tr.type_size);
        std::vector<uint8_t> a(bytes + 1), b(bytes);
        kiln::quantize_row(t, x.data(), a.data() + 1, kRow);
        kiln::quantize_row(t, x.data(), b.data(), kRow);
        EXPECT_EQ(0, std::memcmp(a.data() + 1, b.data(), bytes)) << tr.name;
        std::vector<float> ya(kRow), yb(kRow);
        kiln::dequantize_row(t, a.data() + 1, ya.data(), kRow);
        kiln::dequantize_row(t, b.data(), yb.data(), kRow);
        EXPECT_EQ(0, std::memcmp(ya.data(), yb.data(), kRow * sizeof(float))) << tr.name;
    }
}

// ---- errors --------------------------------------------------------------------------------

template <class F>
std::string error_message(F&& f) {
    try {
        f();
    } catch (const kiln::Error& e) {
        return e.what();
    }
    return "<no kiln::Error thrown>";
}

TEST(QuantErrors, UnknownTypeIdNamesIdAndTensor) {
    const std::string msg = error_message([] { kiln::type_traits_or_throw(99, "tensor 'x'"); });
    EXPECT_NE(msg.find("99"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'x'"), std::string::npos) << msg;
}

TEST(QuantErrors, RowNotWholeBlocks) {
    std::vector<uint8_t> buf(1024);
    std::vector<float> f(64);
    const std::string d = error_message([&] { kiln::dequantize_row(TensorType::Q4_0, buf.data(), f.data(), 33); });
    EXPECT_NE(d.find("q4_0"), std::string::npos) << d;
    EXPECT_NE(d.find("33"), std::string::npos) << d;
    const std::string q = error_message([&] { kiln::quantize_row(TensorType::Q4_K, f.data(), buf.data(), 64); });
    EXPECT_NE(q.find("q4_K"), std::string::npos) << q;
    EXPECT_NE(q.find("64"), std::string::npos) << q;
    const std::string neg = error_message([&] { kiln::dequantize_row(TensorType::F32, buf.data(), f.data(), -1); });
    EXPECT_NE(neg.find("-1"), std::string::npos) << neg;
}

TEST(QuantErrors, FlagsMatchImplementation) {
    // can_dequantize / can_quantize in the table must say exactly what quantize_row and
    // dequantize_row accept; an unsupported type throws an Error naming it.
    std::vector<uint8_t> buf(4096);
    std::vector<float> f(256, 0.5f);
    for (const auto& t : table()) {
        const int64_t n = t.block_size;
        const std::string d = error_message([&] { kiln::dequantize_row(t.type, buf.data(), f.data(), n); });
        const std::string q = error_message([&] { kiln::quantize_row(t.type, f.data(), buf.data(), n); });
        if (t.can_dequantize) {
            EXPECT_EQ(d, "<no kiln::Error thrown>") << t.name;
        } else {
            EXPECT_NE(d.find(t.name), std::string::npos) << t.name << ": " << d;
        }
        if (t.can_quantize) {
            EXPECT_EQ(q, "<no kiln::Error thrown>") << t.name;
        } else {
            EXPECT_NE(q.find(t.name), std::string::npos) << t.name << ": " << q;
        }
    }
}

// ---- fp16 / bf16 ---------------------------------------------------------------------------

double half_value(uint16_t h) {  // independent decoder, in double
    const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    const double v = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}

// Nearest binary16 by search over the finite values, ties to even; |f| >= 65520 gives inf.
uint16_t reference_fp16(float f) {
    const double a = std::fabs(static_cast<double>(f));
    const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
    if (a >= 65520.0) return sign | 0x7c00;
    uint16_t lo = 0, hi = 0x7bff;  // largest h with half_value(h) <= a
    while (lo < hi) {
        const uint16_t mid = static_cast<uint16_t>((lo + hi + 1) / 2);
        if (half_value(mid) <= a) lo = mid;
        else hi = static_cast<uint16_t>(mid - 1);
    }
    uint16_t h = lo;
    if (h < 0x7bff) {
        const double dl = a - half_value(h), du = half_value(static_cast<uint16_t>(h + 1)) - a;
        if (du < dl || (du == dl && (h & 1))) ++h;
    }
    return sign | h;
}

// Nearest bfloat16, ties to even; the overflow threshold treats 0x7f80 as 2^128.
uint16_t reference_bf16(float f) {
    const uint32_t u = float_bits(f);
    const uint16_t t = static_cast<uint16_t>(u >> 16);
    auto val = [](uint16_t h) {
        return (h & 0x7fff) == 0x7f80 ? std::ldexp(1.0, 128) : std::fabs(static_cast<double>(bits_float(uint32_t{h} << 16)));
    };
    const double a = std::fabs(static_cast<double>(f));
    const double dl = a - val(t), du = val(static_cast<uint16_t>(t + 1)) - a;
    return (du < dl || (du == dl && (t & 1))) ? static_cast<uint16_t>(t + 1) : t;
}

TEST(QuantFloat, Fp16DecodeExhaustive) {
    for (uint32_t h = 0; h < 0x10000; ++h) {
        const float f = kiln::fp16_to_fp32(static_cast<uint16_t>(h));
        const bool nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
        const bool inf = (h & 0x7fff) == 0x7c00;
        if (nan) {
            ASSERT_TRUE(std::isnan(f)) << h;
            ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << h;
            const uint16_t back = kiln::fp32_to_fp16(f);
            ASSERT_TRUE((back & 0x7c00) == 0x7c00 && (back & 0x3ff)) << h << " NaN must stay NaN";
            continue;
        }
        if (inf) {
            ASSERT_TRUE(std::isinf(f)) << h;
        } else {
            ASSERT_EQ(static_cast<double>(f), half_value(static_cast<uint16_t>(h))) << h;
        }
        ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << h;
        ASSERT_EQ(kiln::fp32_to_fp16(f), h) << "round trip of half 0x" << std::hex << h;
    }
}

TEST(QuantFloat, Fp16SpecialValues) {
    using kiln::fp32_to_fp16;
    EXPECT_EQ(fp32_to_fp16(0.0f), 0x0000);
    EXPECT_EQ(fp32_to_fp16(-0.0f), 0x8000);
    EXPECT_EQ(fp32_to_fp16(1.0f), 0x3c00);
    EXPECT_EQ(fp32_to_fp16(-2.0f), 0xc000);
    EXPECT_EQ(fp32_to_fp16(INFINITY), 0x7c00);
    EXPECT_EQ(fp32_to_fp16(-INFINITY), 0xfc00);
    EXPECT_EQ(fp32_to_fp16(65504.0f), 0x7bff);
    EXPECT_EQ(fp32_to_fp16(65519.996f), 0x7bff);  // just below the halfway point
    EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7c00);    // halfway to 2^16 rounds to even = inf
    EXPECT_EQ(fp32_to_fp16(FLT_MAX), 0x7c00);
    EXPECT_EQ(fp32_to_fp16(-1e10f), 0xfc00);
    EXPECT_EQ(fp32_to_fp16(0x1p-14f), 0x0400);          // smallest normal
    EXPECT_EQ(fp32_to_fp16(0x1p-24f), 0x0001);          // smallest subnormal
    EXPECT_EQ(fp32_to_fp16(0x1.ff8p-15f), 0x03ff);      // largest subnormal
    EXPECT_EQ(fp32_to_fp16(0x1.ffcp-15f), 0x0400);      // rounds up into the normals
    EXPECT_EQ(fp32_to_fp16(0x1p-25f), 0x0000);          // tie between 0 and 2^-24 -> even (0)
    EXPECT_EQ(fp32_to_fp16(0x1.000002p-25f), 0x0001);   // just above the tie
    EXPECT_EQ(fp32_to_fp16(0x3p-25f), 0x0002);          // tie between 1 and 2 ulps -> even
    EXPECT_EQ(fp32_to_fp16(-0x1p-26f), 0x8000);         // underflow keeps the sign
    EXPECT_EQ(fp32_to_fp16(FLT_MIN / 4), 0x0000);       // float subnormal
    EXPECT_EQ(fp32_to_fp16(1.0f + 0x1p-11f), 0x3c00);   // tie -> even (down)
    EXPECT_EQ(fp32_to_fp16(1.0f + 0x3p-11f), 0x3c02);   // tie -> even (up)
    EXPECT_EQ(fp32_to_fp16(bits_float(0x3f801001u)), 0x3c01);  // just above the tie
    const uint16_t qnan = fp32_to_fp16(NAN);
    EXPECT_TRUE((qnan & 0x7c00) == 0x7c00 && (qnan & 0x3ff)) << qnan;
    const uint16_t snan = fp32_to_fp16(bits_float(0xff800001u));  // payload only in dropped bits
    EXPECT_TRUE((snan & 0x7c00) == 0x7c00 && (snan & 0x3ff)) << snan;
    EXPECT_TRUE(snan & 0x8000);

    EXPECT_EQ(float_bits(kiln::fp16_to_fp32(0x8000)), 0x80000000u);
    EXPECT_EQ(kiln::fp16_to_fp32(0x0001), 0x1p-24f);
    EXPECT_EQ(kiln::fp16_to_fp32(0x7bff), 65504.0f);
    EXPECT_EQ(kiln::fp16_to_fp32(0xfc00), -INFINITY);
}

TEST(QuantFloat, Fp16EncodeMatchesNearestSearch) {
    std::mt19937_64 rng(7);
    for (int i = 0; i < 400000; ++i) {
        uint32_t u = static_cast<uint32_t>(rng());
        if (i % 2) u = (u & 0x807fffffu) | (static_cast<uint32_t>(100 + rng() % 45) << 23);  // near half range
        if (i % 5 == 0) u &= ~0x0fffu;  // many exact ties / short mantissas
        const float f = bits_float(u);
        if (std::isnan(f)) continue;
        ASSERT_EQ(kiln::fp32_to_fp16(f), reference_fp16(f)) << std::hexfloat << f;
    }
}

TEST(QuantFloat, Bf16ExhaustiveAndSpecial) {
    for (uint32_t h = 0; h < 0x10000; ++h) {
        const float f = kiln::bf16_to_fp32(static_cast<uint16_t>(h));
        ASSERT_EQ(float_bits(f), h << 16);
        const uint16_t back = kiln::fp32_to_bf16(f);
        if (std::isnan(f)) {
            ASSERT_TRUE(std::isnan(kiln::bf16_to_fp32(back))) << h;
        } else {
            ASSERT_EQ(back, h);
        }
    }
    using kiln::fp32_to_bf16;
    EXPECT_EQ(fp32_to_bf16(1.0f), 0x3f80);
    EXPECT_EQ(fp32_to_bf16(-0.0f), 0x8000);
    EXPECT_EQ(fp32_to_bf16(INFINITY), 0x7f80);
    EXPECT_EQ(fp32_to_bf16(-INFINITY), 0xff80);
    EXPECT_EQ(fp32_to_bf16(FLT_MAX), 0x7f80);  // rounds past the largest finite bf16
    EXPECT_EQ(fp32_to_bf16(bits_float(0x3f808000u)), 0x3f80);  // tie -> even (down)
    EXPECT_EQ(fp32_to_bf16(bits_float(0x3f818000u)), 0x3f82);  // tie -> even (up)
    EXPECT_EQ(fp32_to_bf16(bits_float(0x3f808001u)), 0x3f81);
    EXPECT_EQ(fp32_to_bf16(bits_float(0x00000001u)), 0x0000);  // float subnormal
    // NaNs whose payload lives only in the dropped bits must not become inf.
    EXPECT_TRUE(std::isnan(kiln::bf16_to_fp32(fp32_to_bf16(bits_float(0x7f800001u)))));
    EXPECT_TRUE(std::isnan(kiln::bf16_to_fp32(fp32_to_bf16(bits_float(0xff800001u)))));
    EXPECT_TRUE(std::isnan(kiln::bf16_to_fp32(fp32_to_bf16(bits_float(0x7fffffffu)))));
    EXPECT_TRUE(std::isnan(kiln::bf16_to_fp32(fp32_to_bf16(NAN))));

    std::mt19937_64 rng(11);
    for (int i = 0; i < 400000; ++i) {
        uint32_t u = static_cast<uint32_t>(rng());
        if (i % 3 == 0) u &= ~0x7fffu;  // ties
        const float f = bits_float(u);
        if (std::isnan(f) || std::isinf(f)) continue;
        ASSERT_EQ(fp32_to_bf16(f), reference_bf16(f)) << std::hexfloat << f;
    }
}

}  // namespace
