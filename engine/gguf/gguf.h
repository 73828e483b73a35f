// GGUF v2/v3 reader. The file is opened once and mapped read-only; every count, length, offset and
// size is checked against the file size before use, so a truncated or hostile file gives a
// kiln::Error naming the file, the byte offset and what was wrong, never a crash or a huge allocation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "kiln/error.h"
#include "quant/types.h"

namespace kiln::gguf {

inline constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as little-endian uint32
inline constexpr uint64_t kDefaultAlignment = 32;

enum class ValueType : uint32_t {
    UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
    STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
const char* value_type_name(ValueType t);

// One metadata value. Scalars keep the type they were stored with; integers are held as int64 or
// uint64, floats as double. Arrays keep their element type (nested arrays are allowed).
class Value {
public:
    using Array = std::vector<Value>;
    Value() = default;
    static Value make_uint(ValueType t, uint64_t v) { return Value(t, v); }
    static Value make_int(ValueType t, int64_t v) { return Value(t, v); }
    static Value make_float(ValueType t, double v) { return Value(t, v); }
    static Value make_bool(bool v) { return Value(ValueType::BOOL, v); }
    static Value make_string(std::string v) { return Value(ValueType::STRING, std::move(v)); }
    static Value make_array(ValueType elem, Array items);

    ValueType type() const { return type_; }
    ValueType array_type() const { return elem_; }  // element type when type() == ARRAY
    bool is_integer() const;
    bool is_number() const { return is_integer() || type_ == ValueType::FLOAT32 || type_ == ValueType::FLOAT64; }
    bool is_string() const { return type_ == ValueType::STRING; }
    bool is_array() const { return type_ == ValueType::ARRAY; }

    // Checked accessors: a wrong type (or an integer out of range) throws kiln::Error.
    int64_t as_int() const;
    uint64_t as_uint() const;
    double as_float() const;  // any number
    bool as_bool() const;     // bool, or an integer 0/1
    const std::string& as_string() const;
    const Array& as_array() const;
    std::vector<std::string> as_string_array() const;
    std::vector<float> as_float_array() const;
    std::vector<int64_t> as_int_array() const;

    // Short human-readable rendering (arrays show their first `max_items` elements).
    std::string to_string(size_t max_items = 8) const;

    bool operator==(const Value& o) const;

private:
    template <class T>
    Value(ValueType t, T v) : type_(t), data_(std::move(v)) {}
    ValueType type_ = ValueType::UINT8;
    ValueType elem_ = ValueType::UINT8;
    std::variant<uint64_t, int64_t, double, bool, std::string, Array> data_ = uint64_t{0};
};

struct TensorInfo {
    std::string name;
    std::vector<uint64_t> shape;  // ggml order: shape[0] is the contiguous (row) dimension
    TensorType type = TensorType::F32;
    uint64_t offset = 0;      // relative to the start of the data section
    uint64_t n_elements = 0;
    uint64_t n_bytes = 0;
    const uint8_t* data = nullptr;  // inside the mapping; valid while the File lives

    uint64_t rows() const { return shape.empty() ? 1 : n_elements / shape[0]; }
    std::string shape_string() const;  // "[4096, 32000]"
};

class File {
public:
    // Maps and parses `path`. Throws kiln::Error on any problem.
    static std::unique_ptr<File> open(const std::string& path);
    // Parses a buffer the caller keeps alive (fuzzing, tests). `name` is used in messages.
    static std::unique_ptr<File> from_memory(const void* data, size_t size, std::string name = "<memory>");

    ~File();
    File(const File&) = delete;
    File& operator=(const File&) = delete;

    const std::string& path() const { return path_; }
    uint32_t version() const { return version_; }
    uint64_t file_size() const { return size_; }
    uint64_t alignment() const { return alignment_; }
    uint64_t data_offset() const { return data_offset_; }
    // Start of the file's own mapping (null when the File parses a caller's buffer).
    const void* mapping() const { return map_; }

    const std::vector<std::pair<std::string, Value>>& metadata() const { return kv_; }
    const Value* find(std::string_view key) const;
    // Replaces (or adds) a metadata value in memory: load-time overrides (the file is not written).
    void set_metadata(const std::string& key, Value v);
    const Value& get(std::string_view key) const;  // throws "missing metadata key 'x' in FILE"
    bool has(std::string_view key) const { return find(key) != nullptr; }

    // Typed getters; `get_*` throw when missing or of the wrong type, `*_or` return the fallback
    // when missing (and still throw on a wrong type).
    std::string get_string(std::string_view key) const;
    std::string get_string_or(std::string_view key, std::string fallback) const;
    int64_t get_int(std::string_view key) const;
    int64_t get_int_or(std::string_view key, int64_t fallback) const;
    double get_float(std::string_view key) const;
    double get_float_or(std::string_view key, double fallback) const;
    bool get_bool_or(std::string_view key, bool fallback) const;

    const std::vector<TensorInfo>& tensors() const { return tensors_; }
    const TensorInfo* find_tensor(std::string_view name) const;
    const TensorInfo& tensor(std::string_view name) const;  // throws naming the tensor and file

    // The architecture string (general.architecture) or "" when absent.
    std::string architecture() const { return get_string_or("general.architecture", ""); }

private:
    File() = default;
    void parse();

    std::string path_;
    const uint8_t* base_ = nullptr;
    uint64_t size_ = 0;
    void* map_ = nullptr;  // non-null when we own an mmap
    uint32_t version_ = 0;
    uint64_t alignment_ = kDefaultAlignment;
    uint64_t data_offset_ = 0;
    std::vector<std::pair<std::string, Value>> kv_;
    std::unordered_map<std::string, size_t> kv_index_;
    std::vector<TensorInfo> tensors_;
    std::unordered_map<std::string, size_t> tensor_index_;
};

}  // namespace kiln::gguf
