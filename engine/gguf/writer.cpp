#include "gguf/writer.h"

#include <cstdio>
#include <cstring>
#include <memory>

#include <fmt/format.h>

#include "quant/quant.h"

namespace kiln::gguf {

namespace {

class Out {
public:
    std::vector<uint8_t> bytes;
    template <class T>
    void put(T v) {
        const size_t at = bytes.size();
        bytes.resize(at + sizeof(T));
        std::memcpy(bytes.data() + at, &v, sizeof(T));
    }
    void put_string(const std::string& s) {
        put<uint64_t>(s.size());
        bytes.insert(bytes.end(), s.begin(), s.end());
    }
    void pad_to(uint64_t alignment) {
        while (bytes.size() % alignment) bytes.push_back(0);
    }
};

void put_value(Out& o, const Value& v) {
    switch (v.type()) {
        case ValueType::UINT8: o.put<uint8_t>(static_cast<uint8_t>(v.as_uint())); break;
        case ValueType::INT8: o.put<int8_t>(static_cast<int8_t>(v.as_int())); break;
        case ValueType::UINT16: o.put<uint16_t>(static_cast<uint16_t>(v.as_uint())); break;
        case ValueType::INT16: o.put<int16_t>(static_cast<int16_t>(v.as_int())); break;
        case ValueType::UINT32: o.put<uint32_t>(static_cast<uint32_t>(v.as_uint())); break;
        case ValueType::INT32: o.put<int32_t>(static_cast<int32_t>(v.as_int())); break;
        case ValueType::UINT64: o.put<uint64_t>(v.as_uint()); break;
        case ValueType::INT64: o.put<int64_t>(v.as_int()); break;
        case ValueType::FLOAT32: o.put<float>(static_cast<float>(v.as_float())); break;
        case ValueType::FLOAT64: o.put<double>(v.as_float()); break;
        case ValueType::BOOL: o.put<uint8_t>(v.as_bool() ? 1 : 0); break;
        case ValueType::STRING: o.put_string(v.as_string()); break;
        case ValueType::ARRAY:
            o.put<uint32_t>(static_cast<uint32_t>(v.array_type()));
            o.put<uint64_t>(v.as_array().size());
            for (const Value& e : v.as_array()) {
                if (e.type() != v.array_type())
                    throw Error(fmt::format("GGUF writer: array of {} holds a {}", value_type_name(v.array_type()),
                                            value_type_name(e.type())));
                put_value(o, e);
            }
            break;
    }
}

}  // namespace

Writer::Writer(uint32_t alignment) : alignment_(alignment) {
    if (alignment == 0 || (alignment & (alignment - 1)) != 0)
        throw Error(fmt::format("GGUF writer: alignment {} is not a power of two", alignment));
    if (alignment != kDefaultAlignment) set_u32("general.alignment", alignment);
}

void Writer::set(const std::string& key, Value v) {
    for (auto& kv : kv_)
        if (kv.first == key) {
            kv.second = std::move(v);
            return;
        }
    kv_.emplace_back(key, std::move(v));
}

void Writer::set_strings(const std::string& key, const std::vector<std::string>& v) {
    Value::Array a;
    a.reserve(v.size());
    for (const auto& s : v) a.push_back(Value::make_string(s));
    set(key, Value::make_array(ValueType::STRING, std::move(a)));
}

void Writer::set_f32s(const std::string& key, const std::vector<float>& v) {
    Value::Array a;
    a.reserve(v.size());
    for (float f : v) a.push_back(Value::make_float(ValueType::FLOAT32, f));
    set(key, Value::make_array(ValueType::FLOAT32, std::move(a)));
}

void Writer::set_i32s(const std::string& key, const std::vector<int32_t>& v) {
    Value::Array a;
    a.reserve(v.size());
    for (int32_t i : v) a.push_back(Value::make_int(ValueType::INT32, i));
    set(key, Value::make_array(ValueType::INT32, std::move(a)));
}

void Writer::add_tensor(const std::string& name, TensorType type, std::vector<uint64_t> shape,
                        std::vector<uint8_t> data) {
    if (shape.empty() || shape.size() > 4)
        throw Error(fmt::format("GGUF writer: tensor '{}' has {} dimensions", name, shape.size()));
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    const TypeTraits& tr = traits(type);
    if (shape[0] % tr.block_size != 0)
        throw Error(fmt::format("GGUF writer: tensor '{}': row length {} is not a multiple of {}'s block {}", name,
                                shape[0], tr.name, tr.block_size));
    const uint64_t want = n / tr.block_size * tr.type_size;
    if (data.size() != want)
        throw Error(fmt::format("GGUF writer: tensor '{}' needs {} bytes, got {}", name, want, data.size()));
    for (const auto& t : tensors_)
        if (t.name == name) throw Error(fmt::format("GGUF writer: duplicate tensor '{}'", name));
    tensors_.push_back({name, type, std::move(shape), std::move(data)});
}

void Writer::add_tensor_f32(const std::string& name, TensorType type, std::vector<uint64_t> shape,
                            const std::vector<float>& data) {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    if (data.size() != n)
        throw Error(fmt::format("GGUF writer: tensor '{}' has {} elements, got {} values", name, n, data.size()));
    const TypeTraits& tr = traits(type);
    if (shape.empty() || shape[0] % tr.block_size != 0)
        throw Error(fmt::format("GGUF writer: tensor '{}': row length is not a multiple of {}'s block {}", name,
                                tr.name, tr.block_size));
    const uint64_t row = shape[0];
    const uint64_t rb = row / tr.block_size * tr.type_size;
    std::vector<uint8_t> bytes(n / row * rb);
    for (uint64_t r = 0; r < n / row; ++r)
        quantize_row(type, data.data() + r * row, bytes.data() + r * rb, static_cast<int64_t>(row));
    add_tensor(name, type, std::move(shape), std::move(bytes));
}

std::vector<uint8_t> Writer::to_bytes() const {
    Out o;
    o.put<uint32_t>(kMagic);
    o.put<uint32_t>(3);
    o.put<uint64_t>(tensors_.size());
    o.put<uint64_t>(kv_.size());
    for (const auto& [k, v] : kv_) {
        o.put_string(k);
        o.put<uint32_t>(static_cast<uint32_t>(v.type()));
        put_value(o, v);
    }
    uint64_t offset = 0;
    for (const auto& t : tensors_) {
        o.put_string(t.name);
        o.put<uint32_t>(static_cast<uint32_t>(t.shape.size()));
        for (uint64_t d : t.shape) o.put<uint64_t>(d);
        o.put<uint32_t>(static_cast<uint32_t>(t.type));
        o.put<uint64_t>(offset);
        offset += t.data.size();
        offset += (alignment_ - offset % alignment_) % alignment_;
    }
    o.pad_to(alignment_);
    for (const auto& t : tensors_) {
        o.bytes.insert(o.bytes.end(), t.data.begin(), t.data.end());
        o.pad_to(alignment_);
    }
    return o.bytes;
}

void Writer::write(const std::string& path) const {
    const std::vector<uint8_t> bytes = to_bytes();
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
    if (!f) throw Error(fmt::format("{}: cannot create: {}", path, std::strerror(errno)));
    if (std::fwrite(bytes.data(), 1, bytes.size(), f.get()) != bytes.size())
        throw Error(fmt::format("{}: write failed: {}", path, std::strerror(errno)));
    if (std::fflush(f.get()) != 0) throw Error(fmt::format("{}: write failed: {}", path, std::strerror(errno)));
}

}  // namespace kiln::gguf
