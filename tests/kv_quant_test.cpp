// Quantized KV heads (kernels/kv_quant.h): the values they store are those of llama.cpp's
// reference q8_0 / q4_0 quantizers (the rules spelled out below), a head's short last block has
// its own scale, the error stays within a step, and the dot / axpy kernels of every kernel level
// agree with the dequantized head.
#include "kernels/kv_quant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "kernels/cpu.h"
#include "kernels/half.h"
#include "kiln/error.h"
#include "quant/quant.h"
#include "support/random.h"

namespace {

namespace kk = kiln::kernels;
using kiln::KvType;
using kiln::TensorType;

using kiln::test::random_floats;

// What kiln stores for a head of n values, as floats.
std::vector<float> stored(KvType t, const std::vector<float>& x) {
    const int64_t n = static_cast<int64_t>(x.size());
    std::vector<uint8_t> codes(static_cast<size_t>(n));
    std::vector<uint16_t> scales(static_cast<size_t>(kk::kv_blocks(n)));
    std::vector<float> out(static_cast<size_t>(n));
    if (t == KvType::Q8_0) {
        kk::quantize_q8kv(x.data(), n, reinterpret_cast<int8_t*>(codes.data()), scales.data());
        kk::dequantize_q8kv(reinterpret_cast<const int8_t*>(codes.data()), scales.data(), n, out.data());
    } else {
        kk::quantize_q4kv(x.data(), n, codes.data(), scales.data());
        kk::dequantize_q4kv(codes.data(), scales.data(), n, out.data());
    }
    return out;
}

// What llama.cpp's reference quantizers (quantize_row_q8_0_ref / quantize_row_q4_0_ref, which its
// CPU KV-cache copies use) store, spelled out block by block: q8_0 d = amax / 127, code =
// roundf(x / d); q4_0 d = m / -8 (m the element of largest magnitude), code = min(15, (int)(x / d
// + 8.5)); codes are taken against the unrounded d, values are code * fp16(d). (quant/'s
// quantize_row fits its scales more carefully, so it is not the comparison here.)
std::vector<float> llama_rule(KvType t, const std::vector<float>& x) {
    std::vector<float> out(x.size());
    for (size_t b0 = 0; b0 < x.size(); b0 += 32) {
        const size_t b1 = std::min(x.size(), b0 + 32);
        float amax = 0.0f, m = 0.0f;
        for (size_t i = b0; i < b1; ++i)
            if (std::fabs(x[i]) > amax) {
                amax = std::fabs(x[i]);
                m = x[i];
            }
        const float d = t == KvType::Q8_0 ? amax / 127.0f : m / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const float dh = kiln::fp16_to_fp32(kk::float_to_half(d));
        for (size_t i = b0; i < b1; ++i) {
            const float code = t == KvType::Q8_0 ? std::round(x[i] * id)
                                                 : static_cast<float>(std::min(15, static_cast<int>(x[i] * id + 8.5f)) - 8);
            out[i] = code * dh;
        }
    }
    return out;
}

class KvQuant : public ::testing::TestWithParam<KvType> {};

TEST_P(KvQuant, StoresWhatLlamaCppsReferenceQuantizerStores) {
    const KvType t = GetParam();
    for (const int64_t n : {int64_t{32}, int64_t{64}, int64_t{80}, int64_t{128}, int64_t{200}, int64_t{576}}) {
        auto x = random_floats(static_cast<size_t>(n), 7 + static_cast<uint32_t>(n), -3.0f, 3.0f);
        x[3] = 0.0f;
        x[static_cast<size_t>(n) - 1] = -40.0f;  // a large negative value in the last block
        const auto got = stored(t, x), want = llama_rule(t, x);
        for (int64_t i = 0; i < n; ++i)
            ASSERT_EQ(got[static_cast<size_t>(i)], want[static_cast<size_t>(i)])
                << kiln::kv_type_name(t) << " n " << n << " element " << i << " of " << x[static_cast<size_t>(i)];
        // And the values are close: half a step (q8_0; plus up to 127 times the f16 rounding of the
        // scale, 2^-11 of it) or one step (q4_0) of the block's scale.
        for (int64_t b = 0; b < kk::kv_blocks(n); ++b) {
            float amax = 0.0f;
            for (int64_t i = b * 32; i < std::min(n, b * 32 + 32); ++i) amax = std::max(amax, std::fabs(x[static_cast<size_t>(i)]));
            const float step = t == KvType::Q8_0 ? amax / 127.0f * (0.5f + 127.0f / 2048.0f) : amax / 8.0f;
            for (int64_t i = b * 32; i < std::min(n, b * 32 + 32); ++i)
                EXPECT_LE(std::fabs(got[static_cast<size_t>(i)] - x[static_cast<size_t>(i)]), step * 1.01f + 1e-6f);
        }
    }
    // An all-zero head: scale 0, values 0.
    const std::vector<float> zeros(64, 0.0f);
    for (float v : stored(t, zeros)) EXPECT_EQ(v, 0.0f);
}

TEST_P(KvQuant, DotAndAxpyOfEveryKernelLevelMatchTheDequantizedHead) {
    const KvType t = GetParam();
    const kk::KernelLevel before = kk::kernel_level();
    for (const int64_t n : {int64_t{32}, int64_t{80}, int64_t{128}, int64_t{576}}) {
        const auto x = random_floats(static_cast<size_t>(n), 100 + static_cast<uint32_t>(n), -3.0f, 3.0f);
        const auto a = random_floats(static_cast<size_t>(n), 200 + static_cast<uint32_t>(n), -1.0f, 1.0f);
        std::vector<uint8_t> codes(static_cast<size_t>(n));
        std::vector<uint16_t> scales(static_cast<size_t>(kk::kv_blocks(n)));
        if (t == KvType::Q8_0) kk::quantize_q8kv(x.data(), n, reinterpret_cast<int8_t*>(codes.data()), scales.data());
        else kk::quantize_q4kv(x.data(), n, codes.data(), scales.data());
        const auto deq = stored(t, x);
        double want_dot = 0.0, norm = 0.0;
        for (int64_t i = 0; i < n; ++i) {
            want_dot += static_cast<double>(a[static_cast<size_t>(i)]) * deq[static_cast<size_t>(i)];
            norm += std::fabs(static_cast<double>(a[static_cast<size_t>(i)]) * deq[static_cast<size_t>(i)]);
        }
        for (const kk::KernelLevel level : {kk::KernelLevel::Scalar, kk::KernelLevel::Avx2}) {
            kk::set_max_kernel_level(level);
            const float dot = t == KvType::Q8_0 ? kk::dot_f32_q8kv(a.data(), reinterpret_cast<const int8_t*>(codes.data()), scales.data(), n)
                                                : kk::dot_f32_q4kv(a.data(), codes.data(), scales.data(), n);
            EXPECT_NEAR(dot, want_dot, 1e-6 * norm + 1e-6) << kiln::kv_type_name(t) << " n " << n << " level " << kk::kernel_level_name();
            std::vector<float> y = a;
            const float w = 0.375f;
            if (t == KvType::Q8_0) kk::axpy_q8kv(w, reinterpret_cast<const int8_t*>(codes.data()), scales.data(), y.data(), n);
            else kk::axpy_q4kv(w, codes.data(), scales.data(), y.data(), n);
            for (int64_t i = 0; i < n; ++i)
                ASSERT_NEAR(y[static_cast<size_t>(i)], a[static_cast<size_t>(i)] + w * deq[static_cast<size_t>(i)], 1e-5)
                    << kiln::kv_type_name(t) << " n " << n << " element " << i << " level " << kk::kernel_level_name();
        }
    }
    kk::set_max_kernel_level(before);
}

INSTANTIATE_TEST_SUITE_P(Types, KvQuant, ::testing::Values(KvType::Q8_0, KvType::Q4_0),
                         [](const auto& info) { return std::string(kiln::kv_type_name(info.param)); });

TEST(KvRowFormat, SizesAndRefusals) {
    using kiln::backend::KvRowFormat;
    // q8_0: 128 codes + 4 scales = 136 bytes a head; q4_0: 64 + 8 = 72; f16: 256.
    EXPECT_EQ((KvRowFormat{KvType::Q8_0, 8, 128}.row_bytes()), 8u * 136u);
    EXPECT_EQ((KvRowFormat{KvType::Q4_0, 8, 128}.row_bytes()), 8u * 72u);
    EXPECT_EQ((KvRowFormat{KvType::F16, 8, 128}.row_bytes()), 8u * 256u);
    // MLA's 576: 18 blocks; 80: 3 blocks, 80 + 6 bytes padded to 88.
    EXPECT_EQ((KvRowFormat{KvType::Q8_0, 1, 576}.row_bytes()), 576u + 36u);
    EXPECT_EQ((KvRowFormat{KvType::Q8_0, 1, 80}.head_bytes()), 88u);
    EXPECT_EQ((KvRowFormat{KvType::Q4_0, 1, 80}.head_bytes()), 48u);
    // Heads that do not fill 32-bit words are refused with the sizes named.
    try {
        KvRowFormat{KvType::Q4_0, 2, 12}.check("layer 3 keys");
        FAIL() << "q4_0 heads of 12 accepted";
    } catch (const kiln::Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("layer 3 keys"), std::string::npos) << msg;
        EXPECT_NE(msg.find("q4_0"), std::string::npos) << msg;
        EXPECT_NE(msg.find("12"), std::string::npos) << msg;
    }
    EXPECT_NO_THROW((KvRowFormat{KvType::Q8_0, 2, 12}.check("ok")));
}

}  // namespace
