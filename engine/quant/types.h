// The table of truth for tensor types: GGUF type id, name, elements per block, bytes per block.
// Everything that sizes, reads or converts a tensor asks this table (the GGUF reader included).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace kiln {

// Values are the GGUF (ggml) type ids stored in files.
enum class TensorType : uint32_t {
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3,
    Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
    IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
    IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
    TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

struct TypeTraits {
    TensorType type;
    const char* name;       // as llama.cpp / gguf-py print it: "f32", "q4_K", "iq4_xs", "mxfp4"
    uint32_t block_size;    // elements per block
    uint32_t type_size;     // bytes per block
    bool can_dequantize;    // a reference dequantize_row exists
    bool can_quantize;      // a reference quantize_row exists
};

// nullptr when the id is not a known type.
const TypeTraits* type_traits(uint32_t type_id);
// Throws kiln::Error naming the id (and `what`, e.g. "tensor 'blk.0.attn_q.weight'") when unknown.
const TypeTraits& type_traits_or_throw(uint32_t type_id, std::string_view what = {});
inline const TypeTraits& traits(TensorType t) { return *type_traits(static_cast<uint32_t>(t)); }
const char* type_name(TensorType t);
std::optional<TensorType> type_from_name(std::string_view name);  // case-insensitive

// Bytes of a row of n elements; nullopt when n is not a whole number of blocks.
std::optional<uint64_t> row_bytes(TensorType t, uint64_t n);

// A tensor shape as every message prints it, "[4096, 32000]" (ggml order: the row length first):
// GGUF tensor infos, graph tensors, device tensors, the weights a model expects.
std::string shape_string(std::span<const int64_t> ne);
std::string shape_string(std::span<const uint64_t> ne);

// The group size a matmul rounds its float input to 8-bit codes in before it meets weights of type t
// (d = amax / 127 per group, codes rounded to nearest even), as llama.cpp's CPU dot products do
// (their vec_dot_type): 32 for Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1 IQ4_NL MXFP4 (q8_0 / q8_1), 256 for
// Q2_K..Q8_K and IQ4_XS (q8_K), 0 for the rest (F32 F16 BF16: the input stays float). Every CPU
// kernel level and the Vulkan shaders use it, so routing near-ties go the reference's way.
int activation_grid(TensorType t);

// Every known type, in id order (for tables and tests).
const TypeTraits* all_types(size_t* count);

}  // namespace kiln
