// GGUF v3 writer: metadata in insertion order, tensors aligned to `general.alignment`. Used by the
// tests and `kiln demo` to make synthetic models; reader(writer(x)) == x.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gguf/gguf.h"

namespace kiln::gguf {

class Writer {
public:
    explicit Writer(uint32_t alignment = static_cast<uint32_t>(kDefaultAlignment));

    // Adds or replaces a key (replacing keeps the original position).
    void set(const std::string& key, Value v);
    void set_string(const std::string& key, std::string v) { set(key, Value::make_string(std::move(v))); }
    void set_u32(const std::string& key, uint32_t v) { set(key, Value::make_uint(ValueType::UINT32, v)); }
    void set_i32(const std::string& key, int32_t v) { set(key, Value::make_int(ValueType::INT32, v)); }
    void set_u64(const std::string& key, uint64_t v) { set(key, Value::make_uint(ValueType::UINT64, v)); }
    void set_f32(const std::string& key, float v) { set(key, Value::make_float(ValueType::FLOAT32, v)); }
    void set_bool(const std::string& key, bool v) { set(key, Value::make_bool(v)); }
    void set_strings(const std::string& key, const std::vector<std::string>& v);
    void set_f32s(const std::string& key, const std::vector<float>& v);
    void set_i32s(const std::string& key, const std::vector<int32_t>& v);

    // `data` must hold exactly the bytes of a tensor of that type and shape (ggml order).
    void add_tensor(const std::string& name, TensorType type, std::vector<uint64_t> shape,
                    std::vector<uint8_t> data);
    // F32 data converted (quantized) to `type` with the reference quantizer.
    void add_tensor_f32(const std::string& name, TensorType type, std::vector<uint64_t> shape,
                        const std::vector<float>& data);

    std::vector<uint8_t> to_bytes() const;
    void write(const std::string& path) const;  // throws kiln::Error on I/O failure

private:
    struct Tensor {
        std::string name;
        TensorType type;
        std::vector<uint64_t> shape;
        std::vector<uint8_t> data;
    };
    uint32_t alignment_;
    std::vector<std::pair<std::string, Value>> kv_;
    std::vector<Tensor> tensors_;
};

}  // namespace kiln::gguf
