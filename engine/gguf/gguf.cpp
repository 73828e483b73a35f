#include "gguf/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>

#include <fmt/format.h>

namespace kiln::gguf {

const char* value_type_name(ValueType t) {
    switch (t) {
        case ValueType::UINT8: return "uint8";
        case ValueType::INT8: return "int8";
        case ValueType::UINT16: return "uint16";
        case ValueType::INT16: return "int16";
        case ValueType::UINT32: return "uint32";
        case ValueType::INT32: return "int32";
        case ValueType::FLOAT32: return "float32";
        case ValueType::BOOL: return "bool";
        case ValueType::STRING: return "string";
        case ValueType::ARRAY: return "array";
        case ValueType::UINT64: return "uint64";
        case ValueType::INT64: return "int64";
        case ValueType::FLOAT64: return "float64";
    }
    return "invalid";
}

// ---------------------------------------------------------------------------------------------
// Value

Value Value::make_array(ValueType elem, Array items) {
    Value v(ValueType::ARRAY, std::move(items));
    v.elem_ = elem;
    return v;
}

bool Value::is_integer() const {
    switch (type_) {
        case ValueType::UINT8: case ValueType::INT8: case ValueType::UINT16: case ValueType::INT16:
        case ValueType::UINT32: case ValueType::INT32: case ValueType::UINT64: case ValueType::INT64:
            return true;
        default:
            return false;
    }
}

static Error type_error(const Value& v, const char* wanted) {
    return Error(fmt::format("metadata value of type {} used as {}", value_type_name(v.type()), wanted));
}

int64_t Value::as_int() const {
    if (const auto* i = std::get_if<int64_t>(&data_)) return *i;
    if (const auto* u = std::get_if<uint64_t>(&data_); u && is_integer()) {
        if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
            throw Error(fmt::format("metadata integer {} is out of range", *u));
        return static_cast<int64_t>(*u);
    }
    throw type_error(*this, "an integer");
}

uint64_t Value::as_uint() const {
    if (const auto* u = std::get_if<uint64_t>(&data_); u && is_integer()) return *u;
    if (const auto* i = std::get_if<int64_t>(&data_)) {
        if (*i < 0) throw Error(fmt::format("metadata integer {} is negative where a count was expected", *i));
        return static_cast<uint64_t>(*i);
    }
    throw type_error(*this, "an unsigned integer");
}

double Value::as_float() const {
    if (const auto* d = std::get_if<double>(&data_)) return *d;
    if (is_integer()) {
        if (const auto* i = std::get_if<int64_t>(&data_)) return static_cast<double>(*i);
        return static_cast<double>(std::get<uint64_t>(data_));
    }
    throw type_error(*this, "a number");
}

bool Value::as_bool() const {
    if (const auto* b = std::get_if<bool>(&data_)) return *b;
    if (is_integer()) {
        const int64_t i = as_int();
        if (i == 0 || i == 1) return i == 1;
    }
    throw type_error(*this, "a bool");
}

const std::string& Value::as_string() const {
    if (const auto* s = std::get_if<std::string>(&data_)) return *s;
    throw type_error(*this, "a string");
}

const Value::Array& Value::as_array() const {
    if (const auto* a = std::get_if<Array>(&data_)) return *a;
    throw type_error(*this, "an array");
}

std::vector<std::string> Value::as_string_array() const {
    const Array& a = as_array();
    std::vector<std::string> out;
    out.reserve(a.size());
    for (const Value& v : a) out.push_back(v.as_string());
    return out;
}

std::vector<float> Value::as_float_array() const {
    const Array& a = as_array();
    std::vector<float> out;
    out.reserve(a.size());
    for (const Value& v : a) out.push_back(static_cast<float>(v.as_float()));
    return out;
}

std::vector<int64_t> Value::as_int_array() const {
    const Array& a = as_array();
    std::vector<int64_t> out;
    out.reserve(a.size());
    for (const Value& v : a) out.push_back(v.as_int());
    return out;
}

static std::string quote(const std::string& s, size_t max_len = 60) {
    std::string out = "\"";
    for (size_t i = 0; i < s.size() && i < max_len; ++i) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c == '\n') out += "\\n";
        else if (c == '\t') out += "\\t";
        else if (c == '"') out += "\\\"";
        else if (c == '\\') out += "\\\\";
        else if (c < 0x20) out += fmt::format("\\x{:02x}", c);
        else out += static_cast<char>(c);
    }
    if (s.size() > max_len) out += "...";
    return out + "\"";
}

std::string Value::to_string(size_t max_items) const {
    switch (type_) {
        case ValueType::STRING: return quote(as_string());
        case ValueType::BOOL: return as_bool() ? "true" : "false";
        case ValueType::FLOAT32: case ValueType::FLOAT64: return fmt::format("{}", as_float());
        case ValueType::ARRAY: {
            const Array& a = as_array();
            std::string out = fmt::format("[{} x {}]", a.size(), value_type_name(elem_));
            if (a.empty()) return out;
            out += " [";
            for (size_t i = 0; i < a.size() && i < max_items; ++i) {
                if (i) out += ", ";
                out += a[i].to_string(max_items);
            }
            if (a.size() > max_items) out += ", ...";
            return out + "]";
        }
        default:
            if (const auto* i = std::get_if<int64_t>(&data_)) return std::to_string(*i);
            return std::to_string(std::get<uint64_t>(data_));
    }
}

bool Value::operator==(const Value& o) const {
    if (type_ != o.type_) return false;
    if (type_ == ValueType::ARRAY && elem_ != o.elem_) return false;
    if (type_ == ValueType::FLOAT32 || type_ == ValueType::FLOAT64) {
        const double a = std::get<double>(data_), b = std::get<double>(o.data_);
        return a == b || (std::isnan(a) && std::isnan(b));
    }
    return data_ == o.data_;
}

std::string TensorInfo::shape_string() const { return kiln::shape_string(shape); }

// ---------------------------------------------------------------------------------------------
// Parsing

namespace {

constexpr int kMaxArrayDepth = 8;
constexpr uint32_t kMaxDims = 4;

// A bounds-checked little-endian cursor over the mapped bytes.
class Cursor {
public:
    Cursor(const uint8_t* base, uint64_t size, const std::string& path) : base_(base), size_(size), path_(path) {}

    uint64_t pos() const { return pos_; }
    uint64_t remaining() const { return size_ - pos_; }

    [[noreturn]] void fail(uint64_t at, const std::string& what) const {
        throw Error(fmt::format("{}: {} (at byte offset {}, file size {})", path_, what, at, size_));
    }

    void need(uint64_t n, const char* what) const {
        if (n > remaining())
            fail(pos_, fmt::format("truncated file: {} needs {} bytes but only {} remain", what, n, remaining()));
    }

    template <class T>
    T read(const char* what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, base_ + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }

    std::string read_string(const char* what) {
        const uint64_t at = pos_;
        const uint64_t len = read<uint64_t>(what);
        if (len > remaining())
            fail(at, fmt::format("{}: string length {} runs past end of file ({} bytes remain)", what, len, remaining()));
        std::string s(reinterpret_cast<const char*>(base_ + pos_), static_cast<size_t>(len));
        pos_ += len;
        return s;
    }

private:
    const uint8_t* base_;
    uint64_t size_;
    uint64_t pos_ = 0;
    const std::string& path_;
};

// Smallest encoded size of one element of a type, used to bound counts before allocating.
uint64_t min_encoded_size(ValueType t) {
    switch (t) {
        case ValueType::UINT8: case ValueType::INT8: case ValueType::BOOL: return 1;
        case ValueType::UINT16: case ValueType::INT16: return 2;
        case ValueType::UINT32: case ValueType::INT32: case ValueType::FLOAT32: return 4;
        case ValueType::UINT64: case ValueType::INT64: case ValueType::FLOAT64: return 8;
        case ValueType::STRING: return 8;
        case ValueType::ARRAY: return 12;
    }
    return 1;
}

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::FLOAT64); }

Value read_value(Cursor& c, ValueType t, const std::string& key, int depth) {
    switch (t) {
        case ValueType::UINT8: return Value::make_uint(t, c.read<uint8_t>("uint8 value"));
        case ValueType::INT8: return Value::make_int(t, c.read<int8_t>("int8 value"));
        case ValueType::UINT16: return Value::make_uint(t, c.read<uint16_t>("uint16 value"));
        case ValueType::INT16: return Value::make_int(t, c.read<int16_t>("int16 value"));
        case ValueType::UINT32: return Value::make_uint(t, c.read<uint32_t>("uint32 value"));
        case ValueType::INT32: return Value::make_int(t, c.read<int32_t>("int32 value"));
        case ValueType::UINT64: return Value::make_uint(t, c.read<uint64_t>("uint64 value"));
        case ValueType::INT64: return Value::make_int(t, c.read<int64_t>("int64 value"));
        case ValueType::FLOAT32: return Value::make_float(t, c.read<float>("float32 value"));
        case ValueType::FLOAT64: return Value::make_float(t, c.read<double>("float64 value"));
        case ValueType::BOOL: {
            const uint64_t at = c.pos();
            const uint8_t b = c.read<uint8_t>("bool value");
            if (b > 1) c.fail(at, fmt::format("metadata '{}': bool value {} is neither 0 nor 1", key, b));
            return Value::make_bool(b != 0);
        }
        case ValueType::STRING: return Value::make_string(c.read_string("string value"));
        case ValueType::ARRAY: {
            const uint64_t at = c.pos();
            if (depth >= kMaxArrayDepth)
                c.fail(at, fmt::format("metadata '{}': arrays nested deeper than {}", key, kMaxArrayDepth));
            const uint32_t et = c.read<uint32_t>("array element type");
            if (!valid_value_type(et)) c.fail(at, fmt::format("metadata '{}': unknown array element type {}", key, et));
            const uint64_t n = c.read<uint64_t>("array length");
            const ValueType elem = static_cast<ValueType>(et);
            if (n > c.remaining() / min_encoded_size(elem))
                c.fail(at, fmt::format("metadata '{}': array of {} {} elements cannot fit in the {} bytes that remain",
                                       key, n, value_type_name(elem), c.remaining()));
            Value::Array items;
            items.reserve(static_cast<size_t>(n));
            for (uint64_t i = 0; i < n; ++i) items.push_back(read_value(c, elem, key, depth + 1));
            return Value::make_array(elem, std::move(items));
        }
    }
    c.fail(c.pos(), fmt::format("metadata '{}': unknown value type {}", key, static_cast<uint32_t>(t)));
}

}  // namespace

std::unique_ptr<File> File::open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        const int e = errno;
        ::close(fd);
        throw Error(fmt::format("{}: cannot stat: {}", path, std::strerror(e)));
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        throw Error(fmt::format("{}: not a regular file", path));
    }
    if (st.st_size == 0) {
        ::close(fd);
        throw Error(fmt::format("{}: empty file, not a GGUF model", path));
    }
    void* map = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
    const int e = errno;
    ::close(fd);
    if (map == MAP_FAILED) throw Error(fmt::format("{}: cannot map {} bytes: {}", path, st.st_size, std::strerror(e)));

    std::unique_ptr<File> f(new File());
    f->path_ = path;
    f->map_ = map;
    f->base_ = static_cast<const uint8_t*>(map);
    f->size_ = static_cast<uint64_t>(st.st_size);
    f->parse();
    return f;
}

std::unique_ptr<File> File::from_memory(const void* data, size_t size, std::string name) {
    std::unique_ptr<File> f(new File());
    f->path_ = std::move(name);
    f->base_ = static_cast<const uint8_t*>(data);
    f->size_ = size;
    f->parse();
    return f;
}

File::~File() {
    if (map_) ::munmap(map_, static_cast<size_t>(size_));
}

void File::parse() {
    Cursor c(base_, size_, path_);
    const uint32_t magic = c.read<uint32_t>("magic");
    if (magic != kMagic) c.fail(0, "not a GGUF file (bad magic)");
    const uint32_t version = c.read<uint32_t>("version");
    if (version == 1) c.fail(4, "GGUF version 1 is not supported (re-convert the model to v3)");
    if (version != 2 && version != 3) {
        if ((version & 0xFFFF) == 0) c.fail(4, "big-endian GGUF files are not supported");
        c.fail(4, fmt::format("unsupported GGUF version {} (2 and 3 are supported)", version));
    }
    version_ = version;
    const uint64_t n_tensors = c.read<uint64_t>("tensor count");
    const uint64_t n_kv = c.read<uint64_t>("metadata count");
    // Each key/value takes at least 12 bytes, each tensor info at least 24: bound before reserving.
    if (n_kv > c.remaining() / 12) c.fail(16, fmt::format("metadata count {} cannot fit in the file", n_kv));
    if (n_tensors > c.remaining() / 24) c.fail(8, fmt::format("tensor count {} cannot fit in the file", n_tensors));

    kv_.reserve(static_cast<size_t>(n_kv));
    for (uint64_t i = 0; i < n_kv; ++i) {
        const uint64_t at = c.pos();
        std::string key = c.read_string("metadata key");
        if (key.empty()) c.fail(at, fmt::format("metadata #{} has an empty key", i));
        const uint64_t type_at = c.pos();
        const uint32_t t = c.read<uint32_t>("metadata value type");
        if (!valid_value_type(t)) c.fail(type_at, fmt::format("metadata '{}': unknown value type {}", key, t));
        Value v = read_value(c, static_cast<ValueType>(t), key, 0);
        if (kv_index_.count(key)) c.fail(at, fmt::format("duplicate metadata key '{}'", key));
        kv_index_.emplace(key, kv_.size());
        kv_.emplace_back(std::move(key), std::move(v));
    }

    if (const Value* a = find("general.alignment")) {
        if (a->type() != ValueType::UINT32)
            throw Error(fmt::format("{}: general.alignment must be uint32, found {}", path_, value_type_name(a->type())));
        const uint64_t al = a->as_uint();
        if (al == 0 || (al & (al - 1)) != 0)
            throw Error(fmt::format("{}: general.alignment {} is not a power of two", path_, al));
        alignment_ = al;
    }

    tensors_.reserve(static_cast<size_t>(n_tensors));
    for (uint64_t i = 0; i < n_tensors; ++i) {
        const uint64_t at = c.pos();
        TensorInfo ti;
        ti.name = c.read_string("tensor name");
        const std::string label = fmt::format("tensor '{}'", ti.name);
        const uint32_t n_dims = c.read<uint32_t>("tensor dimension count");
        if (n_dims == 0 || n_dims > kMaxDims)
            c.fail(at, fmt::format("{}: {} dimensions (1 to {} supported)", label, n_dims, kMaxDims));
        uint64_t n_el = 1;
        for (uint32_t d = 0; d < n_dims; ++d) {
            const uint64_t dim = c.read<uint64_t>("tensor dimension");
            if (dim == 0 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
                c.fail(at, fmt::format("{}: dimension {} has invalid size {}", label, d, dim));
            if (n_el > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / dim)
                c.fail(at, fmt::format("{}: element count overflows", label));
            n_el *= dim;
            ti.shape.push_back(dim);
        }
        const uint64_t type_at = c.pos();
        const uint32_t type_id = c.read<uint32_t>("tensor type");
        const TypeTraits* tr = type_traits(type_id);
        if (!tr) c.fail(type_at, fmt::format("{}: unknown tensor type id {}", label, type_id));
        ti.type = tr->type;
        if (ti.shape[0] % tr->block_size != 0)
            c.fail(at, fmt::format("{}: row length {} is not a multiple of the {} block size {}", label,
                                   ti.shape[0], tr->name, tr->block_size));
        ti.n_elements = n_el;
        if (n_el / tr->block_size > std::numeric_limits<uint64_t>::max() / tr->type_size)
            c.fail(at, fmt::format("{}: byte size overflows", label));
        ti.n_bytes = n_el / tr->block_size * tr->type_size;
        ti.offset = c.read<uint64_t>("tensor data offset");
        if (ti.offset % alignment_ != 0)
            c.fail(at, fmt::format("{}: data offset {} is not a multiple of the alignment {}", label, ti.offset, alignment_));
        if (tensor_index_.count(ti.name)) c.fail(at, fmt::format("duplicate tensor name '{}'", ti.name));
        tensor_index_.emplace(ti.name, tensors_.size());
        tensors_.push_back(std::move(ti));
    }

    const uint64_t header_end = c.pos();
    data_offset_ = header_end + (alignment_ - header_end % alignment_) % alignment_;
    for (TensorInfo& ti : tensors_) {
        // data_offset_ may lie past the end only when there is no tensor data at all.
        const uint64_t avail = data_offset_ <= size_ ? size_ - data_offset_ : 0;
        if (ti.offset > avail || ti.n_bytes > avail - ti.offset)
            throw Error(fmt::format("{}: tensor '{}': data [offset {}, {} bytes] runs past end of file (size {})", path_,
                                    ti.name, data_offset_ + ti.offset, ti.n_bytes, size_));
        ti.data = base_ + data_offset_ + ti.offset;
    }
}

const Value* File::find(std::string_view key) const {
    auto it = kv_index_.find(std::string(key));
    return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

void File::set_metadata(const std::string& key, Value v) {
    if (auto it = kv_index_.find(key); it != kv_index_.end()) {
        kv_[it->second].second = std::move(v);
        return;
    }
    kv_index_.emplace(key, kv_.size());
    kv_.emplace_back(key, std::move(v));
}

const Value& File::get(std::string_view key) const {
    if (const Value* v = find(key)) return *v;
    throw Error(fmt::format("{}: missing metadata key '{}'", path_, key));
}

template <class F>
static auto with_key(const std::string& path, std::string_view key, F&& f) -> decltype(f()) {
    try {
        return f();
    } catch (const Error& e) {
        throw Error(fmt::format("{}: metadata '{}': {}", path, key, e.what()));
    }
}

std::string File::get_string(std::string_view key) const {
    const Value& v = get(key);
    return with_key(path_, key, [&] { return v.as_string(); });
}
std::string File::get_string_or(std::string_view key, std::string fallback) const {
    const Value* v = find(key);
    return v ? with_key(path_, key, [&] { return v->as_string(); }) : fallback;
}
int64_t File::get_int(std::string_view key) const {
    const Value& v = get(key);
    return with_key(path_, key, [&] { return v.as_int(); });
}
int64_t File::get_int_or(std::string_view key, int64_t fallback) const {
    const Value* v = find(key);
    return v ? with_key(path_, key, [&] { return v->as_int(); }) : fallback;
}
double File::get_float(std::string_view key) const {
    const Value& v = get(key);
    return with_key(path_, key, [&] { return v.as_float(); });
}
double File::get_float_or(std::string_view key, double fallback) const {
    const Value* v = find(key);
    return v ? with_key(path_, key, [&] { return v->as_float(); }) : fallback;
}
bool File::get_bool_or(std::string_view key, bool fallback) const {
    const Value* v = find(key);
    return v ? with_key(path_, key, [&] { return v->as_bool(); }) : fallback;
}

const TensorInfo* File::find_tensor(std::string_view name) const {
    auto it = tensor_index_.find(std::string(name));
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& File::tensor(std::string_view name) const {
    if (const TensorInfo* t = find_tensor(name)) return *t;
    throw Error(fmt::format("{}: missing tensor '{}'", path_, name));
}

}  // namespace kiln::gguf
