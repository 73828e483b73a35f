// kiln::GgufInfo (kiln/gguf_info.h): engine/gguf's reader and the architecture's KV layers, as
// public values.
#include "kiln/gguf_info.h"

#include <fmt/format.h>

#include "gguf/gguf.h"
#include "kiln/error.h"
#include "kiln/types.h"
#include "model/architecture.h"
#include "quant/types.h"

namespace kiln {

namespace {

GgufValue to_public(const gguf::Value& v) {
    using T = gguf::ValueType;
    GgufValue out;
    switch (v.type()) {
        case T::STRING:
            out.kind = GgufValue::Kind::String;
            out.s = v.as_string();
            break;
        case T::BOOL:
            out.kind = GgufValue::Kind::Bool;
            out.b = v.as_bool();
            break;
        case T::FLOAT32:
        case T::FLOAT64:
            out.kind = GgufValue::Kind::Float;
            out.f = v.as_float();
            break;
        case T::ARRAY:
            out.kind = GgufValue::Kind::Array;
            out.items.reserve(v.as_array().size());
            for (const gguf::Value& e : v.as_array()) out.items.push_back(to_public(e));
            break;
        case T::UINT64:
        case T::UINT32:
        case T::UINT16:
        case T::UINT8:
            out.kind = GgufValue::Kind::UInt;
            out.u = v.as_uint();
            break;
        default:
            out.kind = GgufValue::Kind::Int;
            out.i = v.as_int();
            break;
    }
    return out;
}

const char* kind_name(GgufValue::Kind k) {
    switch (k) {
        case GgufValue::Kind::UInt: return "an unsigned integer";
        case GgufValue::Kind::Int: return "an integer";
        case GgufValue::Kind::Float: return "a float";
        case GgufValue::Kind::Bool: return "a bool";
        case GgufValue::Kind::String: return "a string";
        case GgufValue::Kind::Array: return "an array";
    }
    return "?";
}

}  // namespace

std::string GgufTensor::shape_string() const { return kiln::shape_string(shape); }

GgufInfo GgufInfo::read(const std::string& path) {
    const auto f = gguf::File::open(path);
    GgufInfo info;
    info.path = path;
    info.version = f->version();
    info.file_size = f->file_size();
    info.data_offset = f->data_offset();
    info.metadata.reserve(f->metadata().size());
    for (const auto& [key, value] : f->metadata()) info.metadata.emplace_back(key, to_public(value));
    info.tensors.reserve(f->tensors().size());
    for (const gguf::TensorInfo& t : f->tensors())
        info.tensors.push_back(GgufTensor{t.name, type_name(t.type), t.shape, t.n_elements, t.n_bytes, f->data_offset() + t.offset});
    return info;
}

std::vector<GgufKvLayer> GgufInfo::read_kv_layers(const std::string& path) {
    const auto f = gguf::File::open(path);
    return model::load_architecture(*f)->kv_layers();
}

const GgufValue* GgufInfo::find(std::string_view key) const {
    for (const auto& [k, v] : metadata)
        if (k == key) return &v;
    return nullptr;
}

std::string GgufInfo::get_string_or(std::string_view key, std::string fallback) const {
    const GgufValue* v = find(key);
    if (!v) return fallback;
    if (v->kind != GgufValue::Kind::String)
        throw Error(fmt::format("{}: metadata '{}': expected a string, got {}", path, key, kind_name(v->kind)));
    return v->s;
}

int64_t GgufInfo::get_int_or(std::string_view key, int64_t fallback) const {
    const GgufValue* v = find(key);
    if (!v) return fallback;
    if (v->kind == GgufValue::Kind::Int) return v->i;
    if (v->kind == GgufValue::Kind::UInt && v->u <= static_cast<uint64_t>(INT64_MAX)) return static_cast<int64_t>(v->u);
    throw Error(fmt::format("{}: metadata '{}': expected an integer, got {}", path, key,
                            v->kind == GgufValue::Kind::UInt ? "one out of range" : kind_name(v->kind)));
}

std::string GgufInfo::architecture() const { return get_string_or("general.architecture", ""); }

}  // namespace kiln
