#include "chat/jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>

#include <fmt/format.h>

namespace kiln::jinja {

namespace {
// Strings and lists a template builds are capped, so it cannot exhaust memory.
constexpr size_t kMaxString = kMaxStringBytes;
constexpr size_t kMaxList = size_t{1} << 20;
}  // namespace

void fail(std::string kind, std::string message) { throw Failure{std::move(kind), std::move(message)}; }

// ---- Value ------------------------------------------------------------------------------------------

Value Value::undefined(std::string message, std::string kind) {
    Value v;
    v.data_ = std::move(message);
    v.undefined_kind_ = std::move(kind);
    return v;
}

Value Value::none() {
    Value v;
    v.kind_ = Kind::None;
    v.data_ = std::monostate{};
    return v;
}

Value Value::list(std::vector<Value> items, bool tuple) {
    Value v;
    v.kind_ = Kind::List;
    auto l = std::make_shared<List>();
    l->items = std::move(items);
    l->tuple = tuple;
    v.data_ = std::shared_ptr<const List>(std::move(l));
    return v;
}

Value Value::dict(Dict d) {
    Value v;
    v.kind_ = Kind::Dict;
    v.data_ = std::shared_ptr<const Dict>(std::make_shared<Dict>(std::move(d)));
    return v;
}

Value Value::object(std::shared_ptr<Object> o) {
    Value v;
    v.kind_ = Kind::Object;
    v.data_ = std::move(o);
    return v;
}

Value Value::callable(std::string name, NativeFn fn) {
    Value v;
    v.kind_ = Kind::Callable;
    v.data_ = std::shared_ptr<const Callable>(std::make_shared<Callable>(Callable{std::move(name), std::move(fn)}));
    return v;
}

bool Value::is_tuple() const { return kind_ == Kind::List && std::get<std::shared_ptr<const List>>(data_)->tuple; }

double Value::to_double() const {
    switch (kind_) {
        case Kind::Bool: return as_bool() ? 1.0 : 0.0;
        case Kind::Int: return static_cast<double>(as_int());
        case Kind::Float: return as_float();
        default: fail("TypeError", "expected a number, got '" + type_name(*this) + "'");
    }
}

int64_t Value::to_int() const {
    if (kind_ == Kind::Bool) return as_bool() ? 1 : 0;
    if (kind_ == Kind::Int) return as_int();
    fail("TypeError", "expected an integer, got '" + type_name(*this) + "'");
}

void Value::raise_undefined() const {
    fail(undefined_kind_.empty() ? "UndefinedError" : undefined_kind_, undefined_message());
}

const void* Value::identity() const {
    switch (kind_) {
        case Kind::List: return std::get<std::shared_ptr<const List>>(data_).get();
        case Kind::Dict: return std::get<std::shared_ptr<const Dict>>(data_).get();
        case Kind::Object: return std::get<std::shared_ptr<Object>>(data_).get();
        case Kind::Callable: return std::get<std::shared_ptr<const Callable>>(data_).get();
        default: return nullptr;
    }
}

const Value* Dict::find(const Value& key) const {
    for (const auto& kv : items)
        if (equals(kv.first, key)) return &kv.second;
    return nullptr;
}

const Value* Dict::find(std::string_view key) const {
    for (const auto& kv : items)
        if (kv.first.is_string() && kv.first.str() == key) return &kv.second;
    return nullptr;
}

void Dict::set(Value key, Value value) {
    for (auto& kv : items) {
        if (equals(kv.first, key)) {
            kv.second = std::move(value);
            return;
        }
    }
    items.emplace_back(std::move(key), std::move(value));
}

// ---- UTF-8 ------------------------------------------------------------------------------------------

uint32_t utf8_decode(std::string_view s, size_t i, size_t* len) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    auto cont = [&](size_t k) { return i + k < s.size() && (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80; };
    auto byte = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(s[i + k]) & 0x3F); };
    if (b0 < 0x80) {
        *len = 1;
        return b0;
    }
    if (b0 >= 0xC2 && b0 <= 0xDF && cont(1)) {
        *len = 2;
        return ((b0 & 0x1Fu) << 6) | byte(1);
    }
    if (b0 >= 0xE0 && b0 <= 0xEF && cont(1) && cont(2)) {
        const uint32_t cp = ((b0 & 0x0Fu) << 12) | (byte(1) << 6) | byte(2);
        if (cp >= 0x800) {
            *len = 3;
            return cp;
        }
    }
    if (b0 >= 0xF0 && b0 <= 0xF4 && cont(1) && cont(2) && cont(3)) {
        const uint32_t cp = ((b0 & 0x07u) << 18) | (byte(1) << 12) | (byte(2) << 6) | byte(3);
        if (cp >= 0x10000 && cp <= 0x10FFFF) {
            *len = 4;
            return cp;
        }
    }
    *len = 1;  // an invalid byte stands for itself
    return 0xDC00 + b0;  // Python's surrogateescape convention
}

void utf8_append(std::string& out, uint32_t cp) {
    if (cp >= 0xDC80 && cp <= 0xDCFF) {  // an escaped invalid byte
        out += static_cast<char>(cp - 0xDC00);
    } else if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

bool is_ascii(std::string_view s) {
    for (char c : s)
        if (static_cast<unsigned char>(c) >= 0x80) return false;
    return true;
}

std::vector<size_t> utf8_offsets(std::string_view s) {
    std::vector<size_t> off;
    off.reserve(s.size() + 1);
    for (size_t i = 0; i < s.size();) {
        off.push_back(i);
        size_t len;
        utf8_decode(s, i, &len);
        i += len;
    }
    off.push_back(s.size());
    return off;
}

size_t utf8_length(std::string_view s) {
    if (is_ascii(s)) return s.size();
    size_t n = 0;
    for (size_t i = 0; i < s.size(); ++n) {
        size_t len;
        utf8_decode(s, i, &len);
        i += len;
    }
    return n;
}

bool py_isspace(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Simple case mapping for ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic (the scripts role
// names and the like are written in); other code points are left as they are.
uint32_t cp_lower(uint32_t c) {
    if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
    if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 32;
    if (c >= 0x100 && c <= 0x137 && c != 0x130) return c | 1;
    if (c >= 0x139 && c <= 0x148) return (c & 1) ? c + 1 : c;
    if (c >= 0x14A && c <= 0x177) return c | 1;
    if (c == 0x178) return 0xFF;
    if (c >= 0x179 && c <= 0x17E) return (c & 1) ? c + 1 : c;
    if (c >= 0x391 && c <= 0x3AB && c != 0x3A2) return c + 32;
    if (c == 0x386) return 0x3AC;
    if (c >= 0x388 && c <= 0x38A) return c + 37;
    if (c == 0x38C) return 0x3CC;
    if (c == 0x38E || c == 0x38F) return c + 63;
    if (c >= 0x410 && c <= 0x42F) return c + 32;
    if (c >= 0x400 && c <= 0x40F) return c + 80;
    if ((c >= 0x460 && c <= 0x481) || (c >= 0x48A && c <= 0x4BF)) return c | 1;
    return c;
}

uint32_t cp_upper(uint32_t c) {
    if (c < 0x80) return (c >= 'a' && c <= 'z') ? c - 32 : c;
    if (c >= 0xE0 && c <= 0xFE && c != 0xF7) return c - 32;
    if (c == 0xFF) return 0x178;
    if (c == 0xB5) return 0x39C;
    if (c == 0x131) return 'I';
    if (c >= 0x101 && c <= 0x137 && (c & 1)) return c - 1;
    if (c >= 0x13A && c <= 0x148 && !(c & 1)) return c - 1;
    if (c >= 0x14B && c <= 0x177 && (c & 1)) return c - 1;
    if (c >= 0x17A && c <= 0x17E && !(c & 1)) return c - 1;
    if (c == 0x17F) return 'S';
    if (c == 0x3C2) return 0x3A3;
    if (c >= 0x3B1 && c <= 0x3CB) return c - 32;
    if (c == 0x3AC) return 0x386;
    if (c >= 0x3AD && c <= 0x3AF) return c - 37;
    if (c == 0x3CC) return 0x38C;
    if (c == 0x3CD || c == 0x3CE) return c - 63;
    if (c >= 0x430 && c <= 0x44F) return c - 32;
    if (c >= 0x450 && c <= 0x45F) return c - 80;
    if (((c >= 0x461 && c <= 0x481) || (c >= 0x48B && c <= 0x4BF)) && (c & 1)) return c - 1;
    return c;
}

bool cp_is_upper(uint32_t c) { return cp_lower(c) != c; }
bool cp_is_lower(uint32_t c) { return cp_upper(c) != c || c == 0xDF; }

bool cp_is_alpha(uint32_t c) {
    if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (cp_is_upper(c) || cp_is_lower(c)) return true;
    return c == 0xAA || c == 0xBA || (c >= 0xC0 && c <= 0x24F && c != 0xD7 && c != 0xF7) ||
           (c >= 0x370 && c <= 0x3FF) || (c >= 0x400 && c <= 0x52F) || (c >= 0x5D0 && c <= 0x5EA) ||
           (c >= 0x620 && c <= 0x64A) || (c >= 0x3041 && c <= 0x30FF) || (c >= 0x4E00 && c <= 0x9FFF) ||
           (c >= 0xAC00 && c <= 0xD7A3);
}

std::string py_upper(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        size_t len;
        const uint32_t c = utf8_decode(s, i, &len);
        if (c == 0xDF) out += "SS";
        else utf8_append(out, cp_upper(c));
        i += len;
    }
    return out;
}

std::string py_lower(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        size_t len;
        const uint32_t c = utf8_decode(s, i, &len);
        utf8_append(out, cp_lower(c));
        i += len;
    }
    return out;
}

std::string py_strip(std::string_view s, const std::optional<std::string>& chars, bool left, bool right) {
    std::vector<uint32_t> set;
    if (chars) {
        for (size_t i = 0; i < chars->size();) {
            size_t len;
            set.push_back(utf8_decode(*chars, i, &len));
            i += len;
        }
    }
    auto strip_it = [&](uint32_t c) {
        return chars ? std::find(set.begin(), set.end(), c) != set.end() : py_isspace(c);
    };
    const auto off = utf8_offsets(s);
    size_t b = 0, e = off.size() - 1;  // code point indices
    if (left)
        while (b < e) {
            size_t len;
            if (!strip_it(utf8_decode(s, off[b], &len))) break;
            ++b;
        }
    if (right)
        while (e > b) {
            size_t len;
            if (!strip_it(utf8_decode(s, off[e - 1], &len))) break;
            --e;
        }
    return std::string(s.substr(off[b], off[e] - off[b]));
}

// ---- str() and repr() -------------------------------------------------------------------------------

std::string py_float_repr(double d) {
    if (std::isnan(d)) return "nan";
    if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
    char buf[64];
    const auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
    std::string_view sci(buf, static_cast<size_t>(res.ptr - buf));  // [-]d[.ddd]e[+-]XX
    std::string out;
    if (sci[0] == '-') {
        out += '-';
        sci.remove_prefix(1);
    }
    const size_t epos = sci.find('e');
    std::string digits;
    for (char c : sci.substr(0, epos))
        if (c != '.') digits += c;
    int exp10 = 0;
    std::from_chars(sci.data() + epos + 1 + (sci[epos + 1] == '+' ? 1 : 0), sci.data() + sci.size(), exp10);
    const int decpt = exp10 + 1;  // digits are d1.d2d3... x 10^exp10
    const int nd = static_cast<int>(digits.size());
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            out += "0.";
            out.append(static_cast<size_t>(-decpt), '0');
            out += digits;
        } else if (decpt >= nd) {
            out += digits;
            out.append(static_cast<size_t>(decpt - nd), '0');
            out += ".0";
        } else {
            out += digits.substr(0, static_cast<size_t>(decpt));
            out += '.';
            out += digits.substr(static_cast<size_t>(decpt));
        }
    } else {
        out += digits[0];
        if (nd > 1) {
            out += '.';
            out += digits.substr(1);
        }
        out += exp10 < 0 ? "e-" : "e+";
        const int a = std::abs(exp10);
        if (a < 10) out += '0';
        out += std::to_string(a);
    }
    return out;
}

namespace {
bool py_printable(uint32_t c) {
    if (c >= 0xDC80 && c <= 0xDCFF) return false;
    if (c < 0x20 || c == 0x7F || (c >= 0x80 && c <= 0xA0) || c == 0xAD) return false;
    if (c == 0x1680 || (c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F) || (c >= 0x205F && c <= 0x206F))
        return false;
    if (c == 0x3000 || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFB) || (c >= 0xD800 && c <= 0xDFFF)) return false;
    if ((c >= 0xE000 && c <= 0xF8FF) || c == 0xFFFE || c == 0xFFFF || c >= 0xF0000) return false;
    return true;
}
}  // namespace

std::string py_str_repr(std::string_view s) {
    const bool has_single = s.find('\'') != std::string_view::npos;
    const bool has_double = s.find('"') != std::string_view::npos;
    const char q = (has_single && !has_double) ? '"' : '\'';
    std::string out(1, q);
    for (size_t i = 0; i < s.size();) {
        size_t len;
        const uint32_t c = utf8_decode(s, i, &len);
        if (c == static_cast<uint32_t>(q) || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c == '\n') {
            out += "\\n";
        } else if (c == '\r') {
            out += "\\r";
        } else if (c == '\t') {
            out += "\\t";
        } else if (!py_printable(c)) {
            if (c < 0x100) out += fmt::format("\\x{:02x}", c);
            else if (c >= 0xDC80 && c <= 0xDCFF) out += fmt::format("\\udc{:02x}", c - 0xDC00);
            else if (c < 0x10000) out += fmt::format("\\u{:04x}", c);
            else out += fmt::format("\\U{:08x}", c);
        } else {
            out.append(s.substr(i, len));
        }
        i += len;
    }
    out += q;
    return out;
}

std::string type_name(const Value& v) {
    switch (v.kind()) {
        case Value::Kind::Undefined: return "Undefined";
        case Value::Kind::None: return "NoneType";
        case Value::Kind::Bool: return "bool";
        case Value::Kind::Int: return "int";
        case Value::Kind::Float: return "float";
        case Value::Kind::String: return "str";
        case Value::Kind::List: return v.is_tuple() ? "tuple" : "list";
        case Value::Kind::Dict: return "dict";
        case Value::Kind::Object: return v.object().type_name;
        case Value::Kind::Callable: return "function";
    }
    return "object";
}

std::string repr(const Value& v) {
    switch (v.kind()) {
        case Value::Kind::Undefined: return "Undefined";
        case Value::Kind::String: return py_str_repr(v.str());
        case Value::Kind::List: {
            std::string out = v.is_tuple() ? "(" : "[";
            const auto& items = v.items();
            for (size_t i = 0; i < items.size(); ++i) {
                if (i) out += ", ";
                out += repr(items[i]);
            }
            if (v.is_tuple() && items.size() == 1) out += ',';
            out += v.is_tuple() ? ")" : "]";
            return out;
        }
        case Value::Kind::Dict: {
            std::string out = "{";
            bool first = true;
            for (const auto& [k, val] : v.dict().items) {
                if (!first) out += ", ";
                first = false;
                out += repr(k);
                out += ": ";
                out += repr(val);
            }
            return out + "}";
        }
        case Value::Kind::Object: {
            const Object& o = v.object();
            if (o.type_name == "Namespace") return "<Namespace " + repr(Value::dict(o.attrs)) + ">";
            fail("Unsupported", "cannot render a '" + o.type_name + "' object");
        }
        case Value::Kind::Callable:
            fail("Unsupported", "cannot render the function '" + v.callable().name + "'");
        default: return to_str(v);
    }
}

std::string to_str(const Value& v) {
    switch (v.kind()) {
        case Value::Kind::Undefined: return "";
        case Value::Kind::None: return "None";
        case Value::Kind::Bool: return v.as_bool() ? "True" : "False";
        case Value::Kind::Int: return std::to_string(v.as_int());
        case Value::Kind::Float: return py_float_repr(v.as_float());
        case Value::Kind::String: return v.str();
        default: return repr(v);
    }
}

bool truthy(const Value& v) {
    switch (v.kind()) {
        case Value::Kind::Undefined: return false;
        case Value::Kind::None: return false;
        case Value::Kind::Bool: return v.as_bool();
        case Value::Kind::Int: return v.as_int() != 0;
        case Value::Kind::Float: return v.as_float() != 0.0;
        case Value::Kind::String: return !v.str().empty();
        case Value::Kind::List: return !v.items().empty();
        case Value::Kind::Dict: return !v.dict().items.empty();
        default: return true;
    }
}

// ---- comparison -------------------------------------------------------------------------------------

bool equals(const Value& a, const Value& b) {
    using K = Value::Kind;
    if (a.is_number() && b.is_number()) {
        if (a.is_float() || b.is_float()) return a.to_double() == b.to_double();
        return a.to_int() == b.to_int();
    }
    if (a.kind() != b.kind()) return false;
    switch (a.kind()) {
        case K::Undefined: case K::None: return true;
        case K::String: return a.str() == b.str();
        case K::List: {
            if (a.is_tuple() != b.is_tuple()) return false;
            const auto &x = a.items(), &y = b.items();
            if (x.size() != y.size()) return false;
            for (size_t i = 0; i < x.size(); ++i)
                if (!equals(x[i], y[i])) return false;
            return true;
        }
        case K::Dict: {
            const auto &x = a.dict(), &y = b.dict();
            if (x.items.size() != y.items.size()) return false;
            for (const auto& [k, v] : x.items) {
                const Value* o = y.find(k);
                if (!o || !equals(v, *o)) return false;
            }
            return true;
        }
        default: return a.identity() == b.identity();
    }
}

namespace {
bool apply_order(std::string_view op, int c) {
    if (op == "<") return c < 0;
    if (op == "<=") return c <= 0;
    if (op == ">") return c > 0;
    return c >= 0;
}
}  // namespace

bool compare(const Value& a, const Value& b, std::string_view op) {
    if (a.is_undefined()) a.raise_undefined();
    if (b.is_undefined()) b.raise_undefined();
    if (a.is_number() && b.is_number()) {
        if (a.is_float() || b.is_float()) {
            const double x = a.to_double(), y = b.to_double();
            if (std::isnan(x) || std::isnan(y)) return false;
            return apply_order(op, x < y ? -1 : x > y ? 1 : 0);
        }
        const int64_t x = a.to_int(), y = b.to_int();
        return apply_order(op, x < y ? -1 : x > y ? 1 : 0);
    }
    if (a.is_string() && b.is_string()) return apply_order(op, a.str().compare(b.str()));  // UTF-8 order = code point order
    if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
        const auto &x = a.items(), &y = b.items();
        for (size_t i = 0; i < x.size() && i < y.size(); ++i)
            if (!equals(x[i], y[i])) return compare(x[i], y[i], op);
        return apply_order(op, x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0);
    }
    fail("TypeError", fmt::format("'{}' not supported between instances of '{}' and '{}'", op, type_name(a), type_name(b)));
}

// ---- arithmetic -------------------------------------------------------------------------------------

namespace {

[[noreturn]] void unsupported_operands(std::string_view op, const Value& a, const Value& b) {
    fail("TypeError", fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(a), type_name(b)));
}

void check_overflow(bool overflow) {
    if (overflow) fail("OverflowError", "integer result out of the 64-bit range");
}

Value repeat(const Value& seq, int64_t n) {
    const size_t unit = seq.is_string() ? seq.str().size() : seq.items().size();
    if (n <= 0 || unit == 0) return seq.is_string() ? Value(std::string()) : Value::list({}, seq.is_tuple());
    if (static_cast<uint64_t>(n) > (seq.is_string() ? kMaxString : kMaxList) / unit)
        fail("MemoryError", "repetition result too large");
    if (seq.is_string()) {
        std::string out;
        out.reserve(unit * static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) out += seq.str();
        return out;
    }
    std::vector<Value> out;
    out.reserve(unit * static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq.items().begin(), seq.items().end());
    return Value::list(std::move(out), seq.is_tuple());
}

double py_fmod(double x, double y, double* floordiv) {
    double mod = std::fmod(x, y);
    double div = (x - mod) / y;
    if (mod != 0.0) {
        if ((y < 0) != (mod < 0)) {
            mod += y;
            div -= 1.0;
        }
    } else {
        mod = std::copysign(0.0, y);
    }
    if (floordiv) {
        if (div != 0.0) {
            double f = std::floor(div);
            if (div - f > 0.5) f += 1.0;
            *floordiv = f;
        } else {
            *floordiv = std::copysign(0.0, x / y);
        }
    }
    return mod;
}

}  // namespace

Value negate(const Value& v) {
    if (v.is_undefined()) v.raise_undefined();
    if (v.is_float()) return -v.as_float();
    if (v.is_int() || v.is_bool()) {
        const int64_t x = v.to_int();
        if (x == std::numeric_limits<int64_t>::min()) fail("OverflowError", "integer result out of the 64-bit range");
        return -x;
    }
    fail("TypeError", "bad operand type for unary -: '" + type_name(v) + "'");
}

Value binary_op(std::string_view op, const Value& a, const Value& b) {
    if (a.is_undefined()) a.raise_undefined();
    if (b.is_undefined()) b.raise_undefined();
    const bool nums = a.is_number() && b.is_number();
    const bool ints = nums && !a.is_float() && !b.is_float();
    if (op == "+") {
        if (ints) {
            int64_t r;
            check_overflow(__builtin_add_overflow(a.to_int(), b.to_int(), &r));
            return r;
        }
        if (nums) return a.to_double() + b.to_double();
        if (a.is_string() && b.is_string()) {
            if (a.str().size() + b.str().size() > kMaxString) fail("MemoryError", "string too large");
            return a.str() + b.str();
        }
        if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
            if (a.items().size() + b.items().size() > kMaxList) fail("MemoryError", "list too large");
            std::vector<Value> out = a.items();
            out.insert(out.end(), b.items().begin(), b.items().end());
            return Value::list(std::move(out), a.is_tuple());
        }
        if (a.is_string() || a.is_list())
            fail("TypeError", fmt::format("can only concatenate {} (not \"{}\") to {}", type_name(a), type_name(b), type_name(a)));
        unsupported_operands(op, a, b);
    }
    if (op == "-") {
        if (ints) {
            int64_t r;
            check_overflow(__builtin_sub_overflow(a.to_int(), b.to_int(), &r));
            return r;
        }
        if (nums) return a.to_double() - b.to_double();
        unsupported_operands(op, a, b);
    }
    if (op == "*") {
        if (ints) {
            int64_t r;
            check_overflow(__builtin_mul_overflow(a.to_int(), b.to_int(), &r));
            return r;
        }
        if (nums) return a.to_double() * b.to_double();
        if ((a.is_string() || a.is_list()) && (b.is_int() || b.is_bool())) return repeat(a, b.to_int());
        if ((b.is_string() || b.is_list()) && (a.is_int() || a.is_bool())) return repeat(b, a.to_int());
        unsupported_operands(op, a, b);
    }
    if (op == "/") {
        if (!nums) unsupported_operands(op, a, b);
        if (b.to_double() == 0.0) fail("ZeroDivisionError", "division by zero");
        return a.to_double() / b.to_double();
    }
    if (op == "//") {
        if (!nums) unsupported_operands(op, a, b);
        if (ints) {
            const int64_t x = a.to_int(), y = b.to_int();
            if (y == 0) fail("ZeroDivisionError", "integer division or modulo by zero");
            if (x == std::numeric_limits<int64_t>::min() && y == -1) fail("OverflowError", "integer result out of the 64-bit range");
            int64_t q = x / y;
            if ((x % y != 0) && ((x < 0) != (y < 0))) --q;
            return q;
        }
        if (b.to_double() == 0.0) fail("ZeroDivisionError", "float floor division by zero");
        double fd;
        py_fmod(a.to_double(), b.to_double(), &fd);
        return fd;
    }
    if (op == "%") {
        if (a.is_string()) return percent_format(a.str(), b);
        if (!nums) unsupported_operands(op, a, b);
        if (ints) {
            const int64_t x = a.to_int(), y = b.to_int();
            if (y == 0) fail("ZeroDivisionError", "integer modulo by zero");
            if (y == -1) return int64_t{0};
            int64_t m = x % y;
            if (m != 0 && ((m < 0) != (y < 0))) m += y;
            return m;
        }
        if (b.to_double() == 0.0) fail("ZeroDivisionError", "float modulo");
        return py_fmod(a.to_double(), b.to_double(), nullptr);
    }
    if (op == "**") {
        if (!nums) unsupported_operands(op, a, b);
        if (ints && b.to_int() >= 0) {
            int64_t base = a.to_int(), e = b.to_int(), r = 1;
            while (e > 0) {
                if (e & 1) check_overflow(__builtin_mul_overflow(r, base, &r));
                e >>= 1;
                if (e) check_overflow(__builtin_mul_overflow(base, base, &base));
            }
            return r;
        }
        const double x = a.to_double(), y = b.to_double();
        if (x == 0.0 && y < 0) fail("ZeroDivisionError", "0.0 cannot be raised to a negative power");
        return std::pow(x, y);
    }
    fail("Unsupported", "unknown operator '" + std::string(op) + "'");
}

// ---- sequences --------------------------------------------------------------------------------------

bool contains(const Value& c, const Value& item) {
    switch (c.kind()) {
        case Value::Kind::Undefined: return false;
        case Value::Kind::String:
            if (!item.is_string())
                fail("TypeError", "'in <string>' requires string as left operand, not " + type_name(item));
            return c.str().find(item.str()) != std::string::npos;
        case Value::Kind::List:
            for (const auto& v : c.items())
                if (equals(v, item)) return true;
            return false;
        case Value::Kind::Dict: return c.dict().find(item) != nullptr;
        default: fail("TypeError", "argument of type '" + type_name(c) + "' is not iterable");
    }
}

std::vector<Value> iterate(const Value& v) {
    switch (v.kind()) {
        case Value::Kind::Undefined: return {};
        case Value::Kind::List: return v.items();
        case Value::Kind::Dict: {
            std::vector<Value> keys;
            for (const auto& kv : v.dict().items) keys.push_back(kv.first);
            return keys;
        }
        case Value::Kind::String: {
            std::vector<Value> out;
            const std::string& s = v.str();
            for (size_t i = 0; i < s.size();) {
                size_t len;
                utf8_decode(s, i, &len);
                out.emplace_back(s.substr(i, len));
                i += len;
            }
            return out;
        }
        default: fail("TypeError", "'" + type_name(v) + "' object is not iterable");
    }
}

size_t length(const Value& v) {
    switch (v.kind()) {
        case Value::Kind::Undefined: return 0;
        case Value::Kind::String: return utf8_length(v.str());
        case Value::Kind::List: return v.items().size();
        case Value::Kind::Dict: return v.dict().items.size();
        default: fail("TypeError", "object of type '" + type_name(v) + "' has no len()");
    }
}

namespace {
// Python's slice.indices(): clamps start/stop for a sequence of length n.
void slice_indices(int64_t n, const Value& start, const Value& stop, const Value& step, int64_t* b, int64_t* e, int64_t* s) {
    auto as_index = [](const Value& v) -> std::optional<int64_t> {
        if (v.is_none() || v.is_undefined()) return std::nullopt;
        if (v.is_int() || v.is_bool()) return v.to_int();
        fail("TypeError", "slice indices must be integers or None");
    };
    *s = as_index(step).value_or(1);
    if (*s == 0) fail("ValueError", "slice step cannot be zero");
    const auto st = as_index(start), sp = as_index(stop);
    auto adjust = [&](std::optional<int64_t> x, int64_t dflt_pos, int64_t dflt_neg) {
        if (!x) return *s > 0 ? dflt_pos : dflt_neg;
        int64_t v = *x;
        if (v < 0) {
            v += n;
            if (v < 0) v = *s > 0 ? 0 : -1;
        } else if (v >= n) {
            v = *s > 0 ? n : n - 1;
        }
        return v;
    };
    *b = adjust(st, 0, n - 1);
    *e = adjust(sp, n, -1);
}
}  // namespace

Value slice(const Value& v, const Value& start, const Value& stop, const Value& step) {
    if (v.is_undefined()) v.raise_undefined();
    if (!v.is_string() && !v.is_list()) fail("TypeError", "'" + type_name(v) + "' object is not subscriptable");
    if (v.is_string()) {
        const std::string& str = v.str();
        const auto off = utf8_offsets(str);
        const int64_t n = static_cast<int64_t>(off.size()) - 1;
        int64_t b, e, s;
        slice_indices(n, start, stop, step, &b, &e, &s);
        std::string out;
        for (int64_t i = b; s > 0 ? i < e : i > e; i += s)
            out.append(str, off[static_cast<size_t>(i)], off[static_cast<size_t>(i) + 1] - off[static_cast<size_t>(i)]);
        return out;
    }
    const auto& items = v.items();
    int64_t b, e, s;
    slice_indices(static_cast<int64_t>(items.size()), start, stop, step, &b, &e, &s);
    std::vector<Value> out;
    for (int64_t i = b; s > 0 ? i < e : i > e; i += s) out.push_back(items[static_cast<size_t>(i)]);
    return Value::list(std::move(out), v.is_tuple());
}

Value index(const Value& v, const Value& key, bool* found) {
    *found = false;
    if (v.is_dict()) {
        if (const Value* r = v.dict().find(key)) {
            *found = true;
            return *r;
        }
        return Value();
    }
    if ((v.is_list() || v.is_string()) && (key.is_int() || key.is_bool())) {
        int64_t i = key.to_int();
        if (v.is_list()) {
            const int64_t n = static_cast<int64_t>(v.items().size());
            if (i < 0) i += n;
            if (i < 0 || i >= n) return Value();
            *found = true;
            return v.items()[static_cast<size_t>(i)];
        }
        const std::string& s = v.str();
        if (is_ascii(s)) {
            const int64_t n = static_cast<int64_t>(s.size());
            if (i < 0) i += n;
            if (i < 0 || i >= n) return Value();
            *found = true;
            return std::string(1, s[static_cast<size_t>(i)]);
        }
        const auto off = utf8_offsets(s);
        const int64_t n = static_cast<int64_t>(off.size()) - 1;
        if (i < 0) i += n;
        if (i < 0 || i >= n) return Value();
        *found = true;
        return s.substr(off[static_cast<size_t>(i)], off[static_cast<size_t>(i) + 1] - off[static_cast<size_t>(i)]);
    }
    return Value();
}

// ---- printf-style formatting ("%s" % x) -------------------------------------------------------------

namespace {

std::string pad(std::string s, int width, bool left, char fill = ' ') {
    const int n = static_cast<int>(utf8_length(s));
    if (width <= n) return s;
    const std::string p(static_cast<size_t>(width - n), fill);
    return left ? s + p : p + s;
}

}  // namespace

std::string percent_format(const std::string& f, const Value& args) {
    std::vector<Value> list;
    const Dict* mapping = nullptr;
    if (args.is_tuple()) list = args.items();
    else if (args.is_dict()) mapping = &args.dict();
    else list.push_back(args);
    size_t next = 0;
    bool used_mapping = false;
    std::string out;
    auto take = [&]() -> const Value& {
        if (next >= list.size()) fail("TypeError", "not enough arguments for format string");
        return list[next++];
    };
    for (size_t i = 0; i < f.size(); ++i) {
        if (f[i] != '%') {
            out += f[i];
            continue;
        }
        if (++i >= f.size()) fail("ValueError", "incomplete format");
        const Value* arg = nullptr;
        Value keyed;
        if (f[i] == '(') {
            const size_t close = f.find(')', i);
            if (close == std::string::npos) fail("ValueError", "incomplete format key");
            if (!mapping) fail("TypeError", "format requires a mapping");
            const Value* v = mapping->find(std::string_view(f).substr(i + 1, close - i - 1));
            if (!v) fail("KeyError", py_str_repr(f.substr(i + 1, close - i - 1)));
            keyed = *v;
            arg = &keyed;
            used_mapping = true;
            i = close + 1;
        }
        bool left = false, plus = false, space = false, zero = false, alt = false;
        for (; i < f.size() && std::string_view("-+ 0#").find(f[i]) != std::string_view::npos; ++i) {
            if (f[i] == '-') left = true;
            if (f[i] == '+') plus = true;
            if (f[i] == ' ') space = true;
            if (f[i] == '0') zero = true;
            if (f[i] == '#') alt = true;
        }
        int width = 0, prec = -1;
        if (i < f.size() && f[i] == '*') {
            width = static_cast<int>(take().to_int());
            ++i;
        }
        for (; i < f.size() && f[i] >= '0' && f[i] <= '9'; ++i) width = std::min(width * 10 + (f[i] - '0'), 4096);
        if (i < f.size() && f[i] == '.') {
            prec = 0;
            for (++i; i < f.size() && f[i] >= '0' && f[i] <= '9'; ++i) prec = std::min(prec * 10 + (f[i] - '0'), 4096);
        }
        if (i >= f.size()) fail("ValueError", "incomplete format");
        const char conv = f[i];
        if (conv == '%') {
            out += '%';
            continue;
        }
        const Value& v = arg ? *arg : take();
        std::string s;
        if (conv == 's' || conv == 'r' || conv == 'a') {
            s = conv == 's' ? to_str(v) : repr(v);
            if (prec >= 0) {
                const auto off = utf8_offsets(s);
                if (static_cast<size_t>(prec) + 1 < off.size()) s.resize(off[static_cast<size_t>(prec)]);
            }
            out += pad(s, width, left);
            continue;
        }
        std::string spec = "%";
        if (left) spec += '-';
        if (plus) spec += '+';
        if (space) spec += ' ';
        if (zero && !left) spec += '0';
        if (alt) spec += '#';
        if (width) spec += std::to_string(width);
        if (prec >= 0) {
            spec += '.';
            spec += std::to_string(prec);
        }
        char buf[8192];
        if (conv == 'd' || conv == 'i' || conv == 'u' || conv == 'x' || conv == 'X' || conv == 'o' || conv == 'c') {
            if (!v.is_number()) fail("TypeError", fmt::format("%{} format: a real number is required, not {}", conv, type_name(v)));
            const long long x = v.is_float() ? static_cast<long long>(std::trunc(v.as_float())) : v.to_int();
            if (conv == 'c') {
                std::string c;
                utf8_append(c, static_cast<uint32_t>(x));
                out += pad(c, width, left);
                continue;
            }
            spec += "ll";
            spec += conv == 'u' ? 'd' : conv == 'i' ? 'd' : conv;
            std::snprintf(buf, sizeof buf, spec.c_str(), x);
        } else if (std::string_view("eEfFgG").find(conv) != std::string_view::npos) {
            if (!v.is_number()) fail("TypeError", "must be real number, not " + type_name(v));
            spec += conv;
            std::snprintf(buf, sizeof buf, spec.c_str(), v.to_double());
        } else {
            fail("ValueError", fmt::format("unsupported format character '{}'", conv));
        }
        out += buf;
    }
    if (!used_mapping && !mapping && next < list.size())
        fail("TypeError", "not all arguments converted during string formatting");
    return out;
}



// ---- JSON -------------------------------------------------------------------------------------------

namespace {

void json_string(std::string& out, std::string_view s, bool ensure_ascii) {
    out += '"';
    for (size_t i = 0; i < s.size();) {
        size_t len;
        const uint32_t c = utf8_decode(s, i, &len);
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            case '\b': out += "\\b"; break;
            case '\f': out += "\\f"; break;
            default:
                if (c < 0x20 || (ensure_ascii && c >= 0x7F)) {
                    if (c >= 0x10000) {
                        const uint32_t v = c - 0x10000;
                        out += fmt::format("\\u{:04x}\\u{:04x}", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
                    } else {
                        out += fmt::format("\\u{:04x}", c);
                    }
                } else {
                    out.append(s.substr(i, len));
                }
        }
        i += len;
    }
    out += '"';
}

std::string json_float(double d) {
    if (std::isnan(d)) return "NaN";
    if (std::isinf(d)) return d < 0 ? "-Infinity" : "Infinity";
    return py_float_repr(d);
}

void dump(std::string& out, const Value& v, const DumpOptions& o, int level) {
    auto newline = [&](int lvl) {
        out += '\n';
        for (int i = 0; i < lvl; ++i) out += *o.indent;
    };
    switch (v.kind()) {
        case Value::Kind::None: out += "null"; return;
        case Value::Kind::Bool: out += v.as_bool() ? "true" : "false"; return;
        case Value::Kind::Int: out += std::to_string(v.as_int()); return;
        case Value::Kind::Float: out += json_float(v.as_float()); return;
        case Value::Kind::String: json_string(out, v.str(), o.ensure_ascii); return;
        case Value::Kind::List: {
            const auto& items = v.items();
            if (items.empty()) {
                out += "[]";
                return;
            }
            out += '[';
            for (size_t i = 0; i < items.size(); ++i) {
                if (i) out += o.item_separator;
                if (o.indent) newline(level + 1);
                dump(out, items[i], o, level + 1);
            }
            if (o.indent) newline(level);
            out += ']';
            return;
        }
        case Value::Kind::Dict: {
            const auto& items = v.dict().items;
            if (items.empty()) {
                out += "{}";
                return;
            }
            std::vector<std::pair<std::string, const Value*>> entries;
            for (const auto& [k, val] : items) {
                std::string key;
                switch (k.kind()) {
                    case Value::Kind::String: key = k.str(); break;
                    case Value::Kind::None: key = "null"; break;
                    case Value::Kind::Bool: key = k.as_bool() ? "true" : "false"; break;
                    case Value::Kind::Int: key = std::to_string(k.as_int()); break;
                    case Value::Kind::Float: key = json_float(k.as_float()); break;
                    default: fail("TypeError", "keys must be str, int, float, bool or None, not " + type_name(k));
                }
                entries.emplace_back(std::move(key), &val);
            }
            if (o.sort_keys)
                std::stable_sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
            out += '{';
            for (size_t i = 0; i < entries.size(); ++i) {
                if (i) out += o.item_separator;
                if (o.indent) newline(level + 1);
                json_string(out, entries[i].first, o.ensure_ascii);
                out += o.key_separator;
                dump(out, *entries[i].second, o, level + 1);
            }
            if (o.indent) newline(level);
            out += '}';
            return;
        }
        case Value::Kind::Object:
            fail("TypeError", "Object of type " + v.object().type_name + " is not JSON serializable");
        case Value::Kind::Callable: fail("TypeError", "Object of type function is not JSON serializable");
        case Value::Kind::Undefined: fail("TypeError", "Object of type Undefined is not JSON serializable");
    }
}

}  // namespace

std::string json_dumps(const Value& v, const DumpOptions& opts) {
    std::string out;
    dump(out, v, opts, 0);
    return out;
}

Value from_json(const nlohmann::ordered_json& j) {
    using T = nlohmann::ordered_json::value_t;
    switch (j.type()) {
        case T::null: return Value::none();
        case T::boolean: return j.get<bool>();
        case T::number_integer: return j.get<int64_t>();
        case T::number_unsigned: {
            const uint64_t u = j.get<uint64_t>();
            if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
                fail("OverflowError", "integer " + std::to_string(u) + " in the context is out of the 64-bit range");
            return static_cast<int64_t>(u);
        }
        case T::number_float: return j.get<double>();
        case T::string: return j.get<std::string>();
        case T::array: {
            std::vector<Value> items;
            items.reserve(j.size());
            for (const auto& e : j) items.push_back(from_json(e));
            return Value::list(std::move(items));
        }
        case T::object: {
            Dict d;
            d.items.reserve(j.size());
            for (auto it = j.begin(); it != j.end(); ++it) d.items.emplace_back(Value(it.key()), from_json(it.value()));
            return Value::dict(std::move(d));
        }
        default: fail("TypeError", "unsupported JSON value in the context");
    }
}

}  // namespace kiln::jinja
