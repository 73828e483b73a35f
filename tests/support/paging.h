// Helpers of the paged-KV tests (CPU: kv_paging_test.cpp, Vulkan: vulkan_paged_kv_test.cpp):
// shared model files, deterministic prompts, every logit of a context, bit-for-bit comparison.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "kiln/kiln.h"
#include "support/shared.h"

namespace kiln::test {

inline std::filesystem::path shared_model_path(const std::string& name) { return shared_dir() / "models" / (name + ".gguf"); }

// n token ids spread over the vocabulary (salt: another prompt), no special ids at the ends.
inline std::vector<int32_t> spread_prompt(const kiln::Model& m, size_t n, size_t salt = 0) {
    std::vector<int32_t> t;
    const auto v = static_cast<size_t>(std::min<int64_t>(m.info().n_vocab, 30000));
    for (size_t i = 0; i < n; ++i) t.push_back(1 + static_cast<int32_t>((i * 37 + i * i * 11 + salt * 101) % (v - 2)));
    return t;
}

// Every row of logits the last decode produced, one after another.
inline std::vector<float> all_logits(const kiln::Context& ctx) {
    std::vector<float> out;
    for (int64_t i = 0; i < ctx.n_logits(); ++i) out.insert(out.end(), ctx.logits(i).begin(), ctx.logits(i).end());
    return out;
}

// got and want are the same bits, every float.
inline void expect_bitwise(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    size_t diff = 0, first = 0;
    for (size_t i = 0; i < got.size(); ++i)
        if (std::memcmp(&got[i], &want[i], 4) != 0 && diff++ == 0) first = i;
    EXPECT_EQ(diff, 0u) << what << ": " << diff << " logits differ, first at " << first;
}

inline std::span<const int32_t> part(const std::vector<int32_t>& t, size_t from, size_t to) {
    return std::span<const int32_t>(t.data() + from, to - from);
}

// The parameter of the model-level paging tests: a file of ../shared/models and a KV cache type.
struct KvModelCase {
    std::string model;
    kiln::KvType kv;
};
inline void PrintTo(const KvModelCase& c, std::ostream* os) { *os << c.model << " KV " << kiln::kv_type_name(c.kv); }
inline std::string kv_model_case_name(const ::testing::TestParamInfo<KvModelCase>& i) {
    std::string s = i.param.model + "_" + kiln::kv_type_name(i.param.kv);
    for (char& ch : s)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
    return s;
}

}  // namespace kiln::test
