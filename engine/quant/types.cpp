#include "quant/types.h"

#include <cctype>

#include "kiln/error.h"

namespace kiln {
namespace {

// can_dequantize / can_quantize say what engine/quant/quant.cpp implements.
constexpr TypeTraits kTypes[] = {
    {TensorType::F32, "f32", 1, 4, true, true},
    {TensorType::F16, "f16", 1, 2, true, true},
    {TensorType::Q4_0, "q4_0", 32, 18, true, true},
    {TensorType::Q4_1, "q4_1", 32, 20, true, true},
    {TensorType::Q5_0, "q5_0", 32, 22, true, true},
    {TensorType::Q5_1, "q5_1", 32, 24, true, true},
    {TensorType::Q8_0, "q8_0", 32, 34, true, true},
    {TensorType::Q8_1, "q8_1", 32, 36, true, true},
    {TensorType::Q2_K, "q2_K", 256, 84, true, false},
    {TensorType::Q3_K, "q3_K", 256, 110, true, false},
    {TensorType::Q4_K, "q4_K", 256, 144, true, true},
    {TensorType::Q5_K, "q5_K", 256, 176, true, true},
    {TensorType::Q6_K, "q6_K", 256, 210, true, true},
    {TensorType::Q8_K, "q8_K", 256, 292, true, true},
    {TensorType::IQ2_XXS, "iq2_xxs", 256, 66, false, false},
    {TensorType::IQ2_XS, "iq2_xs", 256, 74, false, false},
    {TensorType::IQ3_XXS, "iq3_xxs", 256, 98, false, false},
    {TensorType::IQ1_S, "iq1_s", 256, 50, false, false},
    {TensorType::IQ4_NL, "iq4_nl", 32, 18, true, true},
    {TensorType::IQ3_S, "iq3_s", 256, 110, false, false},
    {TensorType::IQ2_S, "iq2_s", 256, 82, false, false},
    {TensorType::IQ4_XS, "iq4_xs", 256, 136, true, false},
    {TensorType::I8, "i8", 1, 1, false, false},
    {TensorType::I16, "i16", 1, 2, false, false},
    {TensorType::I32, "i32", 1, 4, false, false},
    {TensorType::I64, "i64", 1, 8, false, false},
    {TensorType::F64, "f64", 1, 8, false, false},
    {TensorType::IQ1_M, "iq1_m", 256, 56, false, false},
    {TensorType::BF16, "bf16", 1, 2, true, true},
    {TensorType::TQ1_0, "tq1_0", 256, 54, false, false},
    {TensorType::TQ2_0, "tq2_0", 256, 66, false, false},
    {TensorType::MXFP4, "mxfp4", 32, 17, true, true},
};

}  // namespace

int activation_grid(TensorType t) {
    switch (t) {
        case TensorType::Q4_0: case TensorType::Q4_1: case TensorType::Q5_0: case TensorType::Q5_1:
        case TensorType::Q8_0: case TensorType::Q8_1: case TensorType::IQ4_NL: case TensorType::MXFP4:
            return 32;
        case TensorType::Q2_K: case TensorType::Q3_K: case TensorType::Q4_K: case TensorType::Q5_K:
        case TensorType::Q6_K: case TensorType::Q8_K: case TensorType::IQ4_XS:
            return 256;
        default: return 0;
    }
}

const TypeTraits* type_traits(uint32_t type_id) {
    for (const auto& t : kTypes)
        if (static_cast<uint32_t>(t.type) == type_id) return &t;
    return nullptr;
}

const TypeTraits& type_traits_or_throw(uint32_t type_id, std::string_view what) {
    if (const TypeTraits* t = type_traits(type_id)) return *t;
    std::string msg = "unknown tensor type id " + std::to_string(type_id);
    if (!what.empty()) msg += " in " + std::string(what);
    throw Error(msg);
}

const char* type_name(TensorType t) {
    const TypeTraits* tr = type_traits(static_cast<uint32_t>(t));
    return tr ? tr->name : "unknown";
}

std::optional<TensorType> type_from_name(std::string_view name) {
    for (const auto& t : kTypes) {
        std::string_view n = t.name;
        if (n.size() != name.size()) continue;
        bool eq = true;
        for (size_t i = 0; i < n.size() && eq; ++i)
            eq = std::tolower(static_cast<unsigned char>(n[i])) ==
                 std::tolower(static_cast<unsigned char>(name[i]));
        if (eq) return t.type;
    }
    return std::nullopt;
}

namespace {
template <class Int>
std::string dims_string(std::span<const Int> ne) {
    std::string s = "[";
    for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
    return s + "]";
}
}  // namespace

std::string shape_string(std::span<const int64_t> ne) { return dims_string(ne); }
std::string shape_string(std::span<const uint64_t> ne) { return dims_string(ne); }

std::optional<uint64_t> row_bytes(TensorType t, uint64_t n) {
    const TypeTraits& tr = traits(t);
    if (n % tr.block_size != 0) return std::nullopt;
    return n / tr.block_size * tr.type_size;
}

const TypeTraits* all_types(size_t* count) {
    *count = sizeof(kTypes) / sizeof(kTypes[0]);
    return kTypes;
}

}  // namespace kiln
