// Values of the Jinja2 interpreter and the Python semantics they follow (str(), repr(), ==, <, +,
// truthiness, json.dumps), since chat templates are written against Python's jinja2.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

namespace kiln::jinja {

// The largest string (and rendered output) a template may build: 64 MiB.
inline constexpr size_t kMaxStringBytes = size_t{1} << 26;

class Value;
class Interpreter;

// Thrown by value operations that fail the way Python would raise; the interpreter turns it into a
// TemplateError carrying the template position of the expression being evaluated.
struct Failure {
    std::string kind;  // "TypeError", "UndefinedError", "SecurityError", "Unsupported", ...
    std::string message;
};
[[noreturn]] void fail(std::string kind, std::string message);

// Call arguments: positional, then keyword in call order.
struct Args {
    std::vector<Value> positional;
    std::vector<std::pair<std::string, Value>> keyword;
};

using NativeFn = std::function<Value(Interpreter&, Args&)>;

struct List {
    std::vector<Value> items;
    bool tuple = false;
};

// A Python dict: insertion-ordered, keys compared with Python == (so 1, 1.0 and True are one key).
struct Dict {
    std::vector<std::pair<Value, Value>> items;
    const Value* find(const Value& key) const;
    const Value* find(std::string_view key) const;
    void set(Value key, Value value);  // replaces in place or appends
};

// An attribute bag: namespace() objects (assignable with {% set ns.x = ... %}) and loop objects.
struct Object {
    std::string type_name;  // "Namespace", "LoopContext"
    Dict attrs;
    bool assignable = false;
};

struct Callable {
    std::string name;  // for messages ("macro 'm'", "str.strip")
    NativeFn fn;
};

class Value {
public:
    enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, List, Dict, Object, Callable };

    Value() = default;  // undefined, with a generic message
    Value(bool b) : kind_(Kind::Bool), data_(b) {}
    Value(int v) : kind_(Kind::Int), data_(int64_t{v}) {}
    Value(int64_t v) : kind_(Kind::Int), data_(v) {}
    Value(double v) : kind_(Kind::Float), data_(v) {}
    Value(std::string s) : kind_(Kind::String), data_(std::move(s)) {}
    Value(std::string_view s) : kind_(Kind::String), data_(std::string(s)) {}
    Value(const char* s) : kind_(Kind::String), data_(std::string(s)) {}

    // An undefined value: renders as "", is falsy and iterates as empty; any other use raises
    // `kind: message` (jinja2's default Undefined).
    static Value undefined(std::string message, std::string kind = "UndefinedError");
    static Value none();
    static Value list(std::vector<Value> items, bool tuple = false);
    static Value dict(Dict d);
    static Value object(std::shared_ptr<Object> o);
    static Value callable(std::string name, NativeFn fn);

    Kind kind() const { return kind_; }
    bool is_undefined() const { return kind_ == Kind::Undefined; }
    bool is_none() const { return kind_ == Kind::None; }
    bool is_bool() const { return kind_ == Kind::Bool; }
    bool is_int() const { return kind_ == Kind::Int; }
    bool is_float() const { return kind_ == Kind::Float; }
    bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Float || kind_ == Kind::Bool; }
    bool is_string() const { return kind_ == Kind::String; }
    bool is_list() const { return kind_ == Kind::List; }  // lists and tuples
    bool is_tuple() const;
    bool is_dict() const { return kind_ == Kind::Dict; }
    bool is_object() const { return kind_ == Kind::Object; }
    bool is_callable() const { return kind_ == Kind::Callable; }

    bool as_bool() const { return std::get<bool>(data_); }
    int64_t as_int() const { return std::get<int64_t>(data_); }
    double as_float() const { return std::get<double>(data_); }
    double to_double() const;  // any number (bool counts as 0/1)
    int64_t to_int() const;    // int or bool
    const std::string& str() const { return std::get<std::string>(data_); }
    const std::vector<Value>& items() const { return std::get<std::shared_ptr<const List>>(data_)->items; }
    const Dict& dict() const { return *std::get<std::shared_ptr<const Dict>>(data_); }
    Object& object() const { return *std::get<std::shared_ptr<Object>>(data_); }
    const Callable& callable() const { return *std::get<std::shared_ptr<const Callable>>(data_); }

    // For undefined values: what using it raises.
    const std::string& undefined_message() const { return std::get<std::string>(data_); }
    const std::string& undefined_kind() const { return undefined_kind_; }
    [[noreturn]] void raise_undefined() const;

    // Identity for objects and callables (Python `is`).
    const void* identity() const;

private:
    Kind kind_ = Kind::Undefined;
    std::variant<std::monostate, bool, int64_t, double, std::string, std::shared_ptr<const List>,
                 std::shared_ptr<const Dict>, std::shared_ptr<Object>, std::shared_ptr<const Callable>>
        data_ = std::string("value is undefined");
    std::string undefined_kind_;
};

// ---- Python semantics ---------------------------------------------------------------------------

bool truthy(const Value& v);
std::string type_name(const Value& v);    // Python's type name: 'int', 'str', 'NoneType', ...
std::string to_str(const Value& v);       // str(v); undefined renders as ""
std::string repr(const Value& v);         // repr(v)
std::string py_float_repr(double d);      // repr(float): shortest round trip, "1.0", "1e+20"
std::string py_str_repr(std::string_view s);
bool equals(const Value& a, const Value& b);                         // a == b
bool compare(const Value& a, const Value& b, std::string_view op);   // a < b etc.; TypeError when unordered
Value binary_op(std::string_view op, const Value& a, const Value& b);  // + - * / // % **
Value negate(const Value& v);
bool contains(const Value& container, const Value& item);            // item in container
std::vector<Value> iterate(const Value& v);                           // list(v)
size_t length(const Value& v);                                        // len(v)
Value slice(const Value& v, const Value& start, const Value& stop, const Value& step);
Value index(const Value& v, const Value& key, bool* found);            // v[key] for list/str/dict

// json.dumps with the options HF's tojson passes through.
struct DumpOptions {
    bool ensure_ascii = false;
    std::optional<std::string> indent;  // None: single line
    std::string item_separator = ", ";
    std::string key_separator = ": ";
    bool sort_keys = false;
};
std::string json_dumps(const Value& v, const DumpOptions& opts);

// Python's `fmt % args` (args a tuple, a mapping, or a single value).
std::string percent_format(const std::string& fmt, const Value& args);

Value from_json(const nlohmann::ordered_json& j);

// ---- strings as sequences of code points ----------------------------------------------------------

// Offsets of each code point in `s`, plus s.size() at the end. Invalid UTF-8 bytes count as one
// code point each, so slicing always gives back the original bytes.
std::vector<size_t> utf8_offsets(std::string_view s);
size_t utf8_length(std::string_view s);
uint32_t utf8_decode(std::string_view s, size_t i, size_t* len);
void utf8_append(std::string& out, uint32_t cp);
bool is_ascii(std::string_view s);

bool py_isspace(uint32_t cp);
std::string py_upper(std::string_view s);
std::string py_lower(std::string_view s);
uint32_t cp_upper(uint32_t cp);
uint32_t cp_lower(uint32_t cp);
bool cp_is_alpha(uint32_t cp);
bool cp_is_upper(uint32_t cp);
bool cp_is_lower(uint32_t cp);

std::string py_strip(std::string_view s, const std::optional<std::string>& chars, bool left, bool right);

}  // namespace kiln::jinja
