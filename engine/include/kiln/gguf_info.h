// kiln public API: what a GGUF file holds, without loading it: the header, every metadata key
// and value, the tensor table, and the KV cache layers kiln would make for its architecture
// (`kiln info` prints these).
//
//   kiln::GgufInfo f = kiln::GgufInfo::read("model.gguf");
//   std::string arch = f.architecture();
//   for (const auto& [key, value] : f.metadata) ...;
//   for (const kiln::GgufTensor& t : f.tensors) ...;
//
// Every failure is a kiln::Error naming the file and what is wrong (offset, field, limit).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kiln/types.h"

namespace kiln {

// One metadata value, as stored: integers keep their signedness, floats are doubles, arrays hold
// values (of one element type; nested arrays are allowed).
struct GgufValue {
    enum class Kind { UInt, Int, Float, Bool, String, Array };
    Kind kind = Kind::Int;
    uint64_t u = 0;                 // UInt
    int64_t i = 0;                  // Int
    double f = 0;                   // Float
    bool b = false;                 // Bool
    std::string s{};                // String (any bytes, NUL included)
    std::vector<GgufValue> items{};  // Array
};

struct GgufTensor {
    std::string name{};
    std::string type{};            // "f32", "q4_K", ... (kiln/types.h names)
    std::vector<uint64_t> shape{};  // ggml order: shape[0] is the contiguous (row) dimension
    uint64_t n_elements = 0;
    uint64_t n_bytes = 0;
    uint64_t offset = 0;           // from the start of the file
    std::string shape_string() const;  // "[4096, 32000]"
};

// A KV cache layer (kiln/types.h): a full layer keeps every token of the context, a
// sliding-window one (window > 0) a ring of its window plus one batch. v_in_k: an MLA layer
// stores K only (V is part of it). n_slots is 0 here (no cache is laid out).
using GgufKvLayer = KvLayer;

struct GgufInfo {
    std::string path{};
    uint32_t version = 0;
    uint64_t file_size = 0;
    uint64_t data_offset = 0;  // where the tensor data starts
    std::vector<std::pair<std::string, GgufValue>> metadata{};  // in file order
    std::vector<GgufTensor> tensors{};                          // in file order

    // Maps and parses the file (header, metadata, tensor table; no weight is read).
    static GgufInfo read(const std::string& path);
    // The KV cache layers of the file's architecture, from its metadata (kiln::Error when kiln
    // does not run that architecture, or its hyper-parameters are wrong).
    static std::vector<GgufKvLayer> read_kv_layers(const std::string& path);

    const GgufValue* find(std::string_view key) const;  // nullptr when absent
    // Missing: the fallback; present with another type: kiln::Error.
    std::string get_string_or(std::string_view key, std::string fallback) const;
    int64_t get_int_or(std::string_view key, int64_t fallback) const;
    std::string architecture() const;  // general.architecture, "" when absent
};

}  // namespace kiln
