// Built-in filters, tests, str/list/dict methods and globals, following jinja2 3.x and Python 3.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <limits>
#include <unordered_map>

#include <fmt/format.h>

#include "chat/jinja_interp.h"

namespace kiln::jinja {

std::vector<std::optional<Value>> bind_args(std::string_view fname, Args& args, std::initializer_list<std::string_view> names) {
    std::vector<std::optional<Value>> out(names.size());
    if (args.positional.size() > names.size())
        fail("TypeError", fmt::format("{}() takes at most {} argument(s) ({} given)", fname, names.size(), args.positional.size()));
    for (size_t i = 0; i < args.positional.size(); ++i) out[i] = std::move(args.positional[i]);
    for (auto& [key, v] : args.keyword) {
        size_t idx = 0;
        for (auto n : names) {
            if (n == key) break;
            ++idx;
        }
        if (idx == names.size()) fail("TypeError", fmt::format("{}() got an unexpected keyword argument '{}'", fname, key));
        if (out[idx]) fail("TypeError", fmt::format("{}() got multiple values for argument '{}'", fname, key));
        out[idx] = std::move(v);
    }
    return out;
}

namespace {

// ---- helpers ----------------------------------------------------------------------------------------

int64_t int_arg(const std::optional<Value>& v, int64_t dflt, const char* what) {
    if (!v || v->is_none()) return dflt;
    if (v->is_int() || v->is_bool()) return v->to_int();
    fail("TypeError", fmt::format("'{}' must be an integer, not '{}'", what, type_name(*v)));
}

bool bool_arg(const std::optional<Value>& v, bool dflt) { return v ? truthy(*v) : dflt; }

std::string str_arg(const std::optional<Value>& v, const char* what) {
    if (!v || !v->is_string()) fail("TypeError", fmt::format("'{}' must be a string", what));
    return v->str();
}

Value make_tuple(Value a, Value b) { return Value::list({std::move(a), std::move(b)}, true); }

// jinja2's attribute getter: "a.b.0" looks up a, then b, then item 0 (item first, then attribute).
Value attr_path(Interpreter& in, const Value& item, const Value& attribute) {
    if (!attribute.is_string()) return in.get_item(item, attribute);
    Value v = item;
    const std::string& path = attribute.str();
    size_t start = 0;
    for (;;) {
        const size_t dot = path.find('.', start);
        const std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
        const bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
        v = in.get_item(v, digits ? Value(static_cast<int64_t>(std::strtoll(part.c_str(), nullptr, 10))) : Value(part));
        if (dot == std::string::npos) break;
        start = dot + 1;
    }
    return v;
}

Value ignore_case(const Value& v, bool case_sensitive) {
    if (!case_sensitive && v.is_string()) return py_lower(v.str());
    return v;
}

void sort_values(std::vector<Value>& items, const std::vector<Value>& keys, bool reverse) {
    std::vector<size_t> order(items.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    // Python's sort with reverse=True keeps equal elements in their original order too.
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        return reverse ? compare(keys[b], keys[a], "<") : compare(keys[a], keys[b], "<");
    });
    std::vector<Value> out;
    out.reserve(items.size());
    for (size_t i : order) out.push_back(std::move(items[i]));
    items = std::move(out);
}

std::string html_escape(std::string_view s) {
    std::string out;
    for (char c : s) {
        switch (c) {
            case '&': out += "&amp;"; break;
            case '<': out += "&lt;"; break;
            case '>': out += "&gt;"; break;
            case '"': out += "&#34;"; break;
            case '\'': out += "&#39;"; break;
            default: out += c;
        }
    }
    return out;
}

std::vector<uint32_t> code_points(std::string_view s) {
    std::vector<uint32_t> cps;
    for (size_t i = 0; i < s.size();) {
        size_t len;
        cps.push_back(utf8_decode(s, i, &len));
        i += len;
    }
    return cps;
}

std::string from_code_points(const std::vector<uint32_t>& cps, size_t b = 0, size_t e = std::string::npos) {
    std::string out;
    e = std::min(e, cps.size());
    for (size_t i = b; i < e; ++i) utf8_append(out, cps[i]);
    return out;
}

bool is_cased(uint32_t c) { return cp_is_upper(c) || cp_is_lower(c); }

std::string py_capitalize(std::string_view s) {
    auto cps = code_points(s);
    std::string out;
    for (size_t i = 0; i < cps.size(); ++i) {
        if (i == 0 && cps[i] == 0xDF) out += "Ss";
        else utf8_append(out, i == 0 ? cp_upper(cps[i]) : cp_lower(cps[i]));
    }
    return out;
}

// str.title(): a cased character after an uncased one is upper-cased, the rest lower-cased.
std::string py_title(std::string_view s) {
    std::string out;
    bool prev_cased = false;
    for (uint32_t c : code_points(s)) {
        const bool cased = is_cased(c);
        if (cased) utf8_append(out, prev_cased ? cp_lower(c) : cp_upper(c));
        else utf8_append(out, c);
        prev_cased = cased;
    }
    return out;
}

// jinja2's title filter: words start after '-', whitespace, or an opening bracket.
std::string jinja_title(std::string_view s) {
    std::string out;
    bool word_start = true;
    for (uint32_t c : code_points(s)) {
        const bool delim = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || py_isspace(c);
        if (delim) {
            utf8_append(out, c);
            word_start = true;
        } else {
            utf8_append(out, word_start ? cp_upper(c) : cp_lower(c));
            word_start = false;
        }
    }
    return out;
}

bool is_line_break(uint32_t c) {
    return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E || c == 0x85 ||
           c == 0x2028 || c == 0x2029;
}

std::vector<std::string> py_splitlines(std::string_view s, bool keepends) {
    std::vector<std::string> lines;
    size_t start = 0;
    for (size_t i = 0; i < s.size();) {
        size_t len;
        const uint32_t c = utf8_decode(s, i, &len);
        if (!is_line_break(c)) {
            i += len;
            continue;
        }
        size_t end = i + len;
        if (c == '\r' && end < s.size() && s[end] == '\n') ++end;
        lines.emplace_back(s.substr(start, (keepends ? end : i) - start));
        start = i = end;
    }
    if (start < s.size()) lines.emplace_back(s.substr(start));
    return lines;
}

std::vector<Value> py_split(const std::string& s, const std::optional<Value>& sep_v, int64_t maxsplit, bool from_right) {
    std::vector<std::string> parts;
    if (!sep_v || sep_v->is_none()) {
        // Runs of whitespace separate; leading and trailing whitespace is dropped.
        auto cps = code_points(s);
        std::vector<std::pair<size_t, size_t>> words;  // code point ranges
        size_t i = 0;
        while (i < cps.size()) {
            while (i < cps.size() && py_isspace(cps[i])) ++i;
            if (i >= cps.size()) break;
            size_t j = i;
            while (j < cps.size() && !py_isspace(cps[j])) ++j;
            words.emplace_back(i, j);
            i = j;
        }
        if (maxsplit < 0 || static_cast<size_t>(maxsplit) + 1 >= words.size()) {
            for (auto [b, e] : words) parts.push_back(from_code_points(cps, b, e));
        } else if (!from_right) {
            const size_t m = static_cast<size_t>(maxsplit);
            for (size_t k = 0; k < m; ++k) parts.push_back(from_code_points(cps, words[k].first, words[k].second));
            parts.push_back(from_code_points(cps, words[m].first));
        } else {
            const size_t m = static_cast<size_t>(maxsplit);
            const size_t keep = words.size() - m;  // words[keep..] are split off
            parts.push_back(from_code_points(cps, 0, words[keep - 1].second));  // leading whitespace stays
            for (size_t k = keep; k < words.size(); ++k) parts.push_back(from_code_points(cps, words[k].first, words[k].second));
        }
    } else {
        if (!sep_v->is_string()) fail("TypeError", "must be str or None, not " + type_name(*sep_v));
        const std::string& sep = sep_v->str();
        if (sep.empty()) fail("ValueError", "empty separator");
        if (!from_right) {
            size_t start = 0;
            int64_t n = 0;
            for (size_t p = s.find(sep); p != std::string::npos && (maxsplit < 0 || n < maxsplit); p = s.find(sep, start), ++n) {
                parts.push_back(s.substr(start, p - start));
                start = p + sep.size();
            }
            parts.push_back(s.substr(start));
        } else {
            size_t end = s.size();
            int64_t n = 0;
            std::vector<std::string> rev;
            while (maxsplit < 0 || n < maxsplit) {
                if (end < sep.size()) break;
                const size_t p = s.rfind(sep, end - sep.size());
                if (p == std::string::npos) break;
                rev.push_back(s.substr(p + sep.size(), end - p - sep.size()));
                end = p;
                ++n;
            }
            rev.push_back(s.substr(0, end));
            parts.assign(rev.rbegin(), rev.rend());
        }
    }
    std::vector<Value> out;
    out.reserve(parts.size());
    for (auto& p : parts) out.emplace_back(std::move(p));
    return out;
}

std::string py_replace(const std::string& s, const std::string& old, const std::string& repl, int64_t count) {
    std::string out;
    if (old.empty()) {
        // Inserts `repl` before every code point and at the end.
        const auto off = utf8_offsets(s);
        int64_t n = 0;
        for (size_t i = 0; i + 1 < off.size(); ++i) {
            if (count < 0 || n < count) {
                out += repl;
                ++n;
            }
            out.append(s, off[i], off[i + 1] - off[i]);
        }
        if (count < 0 || n < count) out += repl;
        return out;
    }
    size_t start = 0;
    int64_t n = 0;
    for (size_t p = s.find(old); p != std::string::npos && (count < 0 || n < count); p = s.find(old, start), ++n) {
        out.append(s, start, p - start);
        out += repl;
        start = p + old.size();
    }
    out.append(s, start, std::string::npos);
    return out;
}

// The byte range of s[start:end] (code point indices, Python slice clamping) and its first code point index.
struct Range {
    size_t b, e, cp_b;
};
Range cp_range(const std::string& s, const std::optional<Value>& start, const std::optional<Value>& end, std::vector<size_t>* offsets) {
    *offsets = utf8_offsets(s);
    const int64_t n = static_cast<int64_t>(offsets->size()) - 1;
    auto clamp = [&](const std::optional<Value>& v, int64_t dflt) {
        if (!v || v->is_none()) return dflt;
        int64_t x = int_arg(v, dflt, "index");
        if (x < 0) x = std::max<int64_t>(0, x + n);
        return std::min(x, n);
    };
    const int64_t b = clamp(start, 0), e = clamp(end, n);
    if (e < b) return {(*offsets)[static_cast<size_t>(b)], (*offsets)[static_cast<size_t>(b)], static_cast<size_t>(b)};
    return {(*offsets)[static_cast<size_t>(b)], (*offsets)[static_cast<size_t>(e)], static_cast<size_t>(b)};
}

int64_t cp_index(const std::vector<size_t>& offsets, size_t byte) {
    return static_cast<int64_t>(std::lower_bound(offsets.begin(), offsets.end(), byte) - offsets.begin());
}

std::string py_pad(const std::string& s, int64_t width, uint32_t fill, int where /*-1 ljust, 0 center, 1 rjust*/) {
    const int64_t n = static_cast<int64_t>(utf8_length(s));
    if (width <= n) return s;
    const int64_t marg = width - n;
    int64_t left = where < 0 ? 0 : where > 0 ? marg : marg / 2 + (marg & width & 1);
    std::string f;
    utf8_append(f, fill);
    std::string out;
    for (int64_t i = 0; i < left; ++i) out += f;
    out += s;
    for (int64_t i = 0; i < marg - left; ++i) out += f;
    return out;
}

uint32_t fill_char(const std::optional<Value>& v) {
    if (!v) return ' ';
    if (!v->is_string() || utf8_length(v->str()) != 1) fail("TypeError", "The fill character must be exactly one character long");
    size_t len;
    return utf8_decode(v->str(), 0, &len);
}

// Python's str.format for "{}", "{0}", "{name}", "{!r}" fields without format specs.
std::string py_format(const std::string& f, Args& args) {
    std::string out;
    size_t auto_index = 0;
    for (size_t i = 0; i < f.size(); ++i) {
        const char c = f[i];
        if (c == '}') {
            if (i + 1 < f.size() && f[i + 1] == '}') {
                out += '}';
                ++i;
                continue;
            }
            fail("ValueError", "Single '}' encountered in format string");
        }
        if (c != '{') {
            out += c;
            continue;
        }
        if (i + 1 < f.size() && f[i + 1] == '{') {
            out += '{';
            ++i;
            continue;
        }
        const size_t close = f.find('}', i);
        if (close == std::string::npos) fail("ValueError", "Single '{' encountered in format string");
        std::string field = f.substr(i + 1, close - i - 1);
        i = close;
        char conv = 0;
        if (const size_t bang = field.find('!'); bang != std::string::npos) {
            if (bang + 2 != field.size()) fail("ValueError", "invalid conversion in format string");
            conv = field[bang + 1];
            field.resize(bang);
        }
        if (field.find(':') != std::string::npos || field.find('.') != std::string::npos || field.find('[') != std::string::npos)
            fail("Unsupported", "format specs and field attributes in str.format are not supported");
        const Value* v = nullptr;
        if (field.empty()) {
            if (auto_index >= args.positional.size()) fail("IndexError", "Replacement index out of range for positional args tuple");
            v = &args.positional[auto_index++];
        } else if (std::all_of(field.begin(), field.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
            const size_t k = static_cast<size_t>(std::strtoull(field.c_str(), nullptr, 10));
            if (k >= args.positional.size()) fail("IndexError", "Replacement index out of range for positional args tuple");
            v = &args.positional[k];
        } else {
            for (const auto& [key, val] : args.keyword)
                if (key == field) v = &val;
            if (!v) fail("KeyError", py_str_repr(field));
        }
        out += conv == 'r' || conv == 'a' ? repr(*v) : to_str(*v);
    }
    return out;
}

bool parse_py_int(std::string s, int64_t base, int64_t* out) {
    s = py_strip(s, std::nullopt, true, true);
    bool neg = false;
    size_t i = 0;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
    if (base == 16 || base == 8 || base == 2 || base == 0) {
        if (i + 1 < s.size() && s[i] == '0') {
            const char p = static_cast<char>(std::tolower(static_cast<unsigned char>(s[i + 1])));
            const int64_t b = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 0;
            if (b && (base == 0 || base == b)) {
                base = b;
                i += 2;
                if (i < s.size() && s[i] == '_') ++i;
            }
        }
        if (base == 0) base = 10;
    }
    if (base < 2 || base > 36 || i >= s.size()) return false;
    int64_t v = 0;
    bool prev_digit = false;
    for (; i < s.size(); ++i) {
        const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(s[i])));
        if (c == '_') {
            if (!prev_digit || i + 1 >= s.size()) return false;
            prev_digit = false;
            continue;
        }
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'z' ? c - 'a' + 10 : 99;
        if (d >= base) return false;
        if (__builtin_mul_overflow(v, base, &v) || __builtin_add_overflow(v, d, &v)) return false;
        prev_digit = true;
    }
    if (!prev_digit) return false;
    *out = neg ? -v : v;
    return true;
}

bool parse_py_float(std::string s, double* out) {
    s = py_strip(s, std::nullopt, true, true);
    std::string clean;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '_') {
            if (i == 0 || i + 1 >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i - 1])) ||
                !std::isdigit(static_cast<unsigned char>(s[i + 1])))
                return false;
            continue;
        }
        clean += s[i];
    }
    if (clean.empty()) return false;
    std::string low = py_lower(clean);
    size_t k = (low[0] == '+' || low[0] == '-') ? 1 : 0;
    const std::string body = low.substr(k);
    if (body == "inf" || body == "infinity" || body == "nan") {
        const double v = body == "nan" ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
        *out = low[0] == '-' ? -v : v;
        return true;
    }
    for (char c : body)
        if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == 'e' || c == '+' || c == '-')) return false;
    char* end = nullptr;
    *out = std::strtod(clean.c_str(), &end);
    return end && *end == '\0';
}

Value py_round(const Value& v, int64_t precision, const std::string& method) {
    if (method != "common" && method != "ceil" && method != "floor")
        fail("FilterArgumentError", "method must be common, ceil or floor");
    if (!v.is_number()) fail("TypeError", "type " + type_name(v) + " doesn't define __round__ method");
    if (method == "common") {
        if (!v.is_float()) {
            const int64_t x = v.to_int();
            if (precision >= 0) return x;
            if (precision < -18) return int64_t{0};
            int64_t p = 1;
            for (int64_t i = 0; i < -precision; ++i) p *= 10;
            const int64_t q = x / p, r = x % p;
            int64_t rounded = q;
            const int64_t twice = 2 * (r < 0 ? -r : r);
            if (twice > p || (twice == p && (q % 2 != 0))) rounded += x < 0 ? -1 : 1;
            int64_t res;
            if (__builtin_mul_overflow(rounded, p, &res)) fail("OverflowError", "integer result out of the 64-bit range");
            return res;
        }
        const double x = v.as_float();
        if (!std::isfinite(x)) return x;
        if (precision >= 0) {
            if (precision > 300) return x;
            char buf[512];
            std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(precision), x);  // correctly rounded, ties to even
            return std::strtod(buf, nullptr);
        }
        const double p = std::pow(10.0, static_cast<double>(-precision));
        return std::nearbyint(x / p) * p;
    }
    const double p = std::pow(10.0, static_cast<double>(precision));
    const double x = v.to_double() * p;
    return (method == "ceil" ? std::ceil(x) : std::floor(x)) / p;
}

// ---- filters ----------------------------------------------------------------------------------------

Value f_abs(Interpreter&, const Value& v, Args& a) {
    bind_args("abs", a, {});
    if (v.is_float()) return std::fabs(v.as_float());
    if (v.is_int() || v.is_bool()) {
        const int64_t x = v.to_int();
        if (x == std::numeric_limits<int64_t>::min()) fail("OverflowError", "integer result out of the 64-bit range");
        return x < 0 ? -x : x;
    }
    if (v.is_undefined()) v.raise_undefined();
    fail("TypeError", "bad operand type for abs(): '" + type_name(v) + "'");
}

Value f_attr(Interpreter&, const Value& v, Args& a) {
    auto p = bind_args("attr", a, {"name"});
    const std::string name = str_arg(p[0], "name");
    if (v.is_undefined()) v.raise_undefined();
    if (v.is_object())
        if (const Value* x = v.object().attrs.find(std::string_view(name))) return *x;
    if (auto m = find_method(v, name)) return *m;
    return Value::undefined(fmt::format("'{} object' has no attribute '{}'", type_name(v), name));
}

Value f_batch(Interpreter&, const Value& v, Args& a) {
    auto p = bind_args("batch", a, {"linecount", "fill_with"});
    const int64_t n = int_arg(p[0], 0, "linecount");
    if (n < 1) fail("ValueError", "batch size must be at least 1");
    std::vector<Value> out, tmp;
    for (auto& item : iterate(v)) {
        if (static_cast<int64_t>(tmp.size()) == n) {
            out.push_back(Value::list(std::move(tmp)));
            tmp.clear();
        }
        tmp.push_back(std::move(item));
    }
    if (!tmp.empty()) {
        if (p[1] && !p[1]->is_none())
            while (static_cast<int64_t>(tmp.size()) < n) tmp.push_back(*p[1]);
        out.push_back(Value::list(std::move(tmp)));
    }
    return Value::list(std::move(out));
}

Value f_capitalize(Interpreter&, const Value& v, Args& a) {
    bind_args("capitalize", a, {});
    return py_capitalize(to_str(v));
}

Value f_center(Interpreter&, const Value& v, Args& a) {
    auto p = bind_args("center", a, {"width"});
    return py_pad(to_str(v), int_arg(p[0], 80, "width"), ' ', 0);
}

Value f_default(Interpreter&, const Value& v, Args& a) {
    auto p = bind_args("default", a, {"default_value", "boolean"});
    const bool boolean = bool_arg(p[1], false);
    if (v.is_undefined() || (boolean && !truthy(v))) return p[0] ? *p[0] : Value("");
    return v;
}

Value f_dictsort(Interpreter&, const Value& v, Args& a) {
    auto p = bind_args("dictsort", a, {"case_sensitive", "by", "reverse"});
    const bool cs = bool_arg(p[0], false), rev = bool_arg(p[2], false);
    const std::string by = p[1] ? str_arg(p[1], "by") : "key";
    if (by != "key" && by != "value") fail("FilterArgumentError", "You can only sort by either \"key\" or \"value\"");
    if (!v.is_dict()) fail("TypeError", "dictsort expects a mapping, got '" + type_name(v) + "'");
    std::vector<Value> items, keys;
    for (const auto& [k, val] : v.dict().items) {
        keys.push_back(ignore_case(by == "key" ? k : val, cs));
        items.push_back(make_tuple(k, val));
    }
    sort_values(items, keys, rev);
    return Value::list(std::move(items));
}

Value f_escape(Interpreter&, const Value& v, Args& a) {
    bind_args("escape", a, {});
    return html_escape(to_str(v));
}

Value f_first(Interpreter&, const Value& v, Args& a) {
    bind_args("first", a, {});
    if (v.is_list()) return v.items().empty() ? Value::undefined("No first item, sequence was empty.") : v.items().front();
    auto items = iterate(v);
    if (items.empty()) return Value::undefined("No first item, sequence was empty.");
    return items.front();
}

Value f_last(Interpreter&, const Value& v, Args& a) {
    bind_args("last", a, {});
    if (v.is_list()) return v.items().empty() ? Value::undefined("No last item, sequence was empty.") : v.items().back();
    auto items = iterate(v);
    if (items.empty()) return Value::undefined("No last item, sequence was empty.");
    return items.back();
}

Value f_float(Interpreter&, const Value& v, Args& a) {
    auto p = bind_args("float", a, {"default"});
    const Value dflt = p[0] ? *p[0] : Value(0.0);
    if (v.is_number()) return v.to_double();
    double d;
    if (v.is_string() && parse_py_float(v.str(), &d)) return d;
    return dflt;
}

Value f_int(Interpreter&, const Value& v, Args& a) {
    auto p = bind_args("int", a, {"default", "base"});
    const Value dflt = p[0] ? *p[0] : Value(0);
    const int64_t base = int_arg(p[1], 10, "base");
    if (v.is_int() || v.is_bool()) return v.to_int();
    if (v.is_float()) {
        const double d = v.as_float();
        if (!std::isfinite(d) || std::fabs(d) >= 9.2e18) return dflt;
        return static_cast<int64_t>(std::trunc(d));
    }
    if (v.is_string()) {
        int64_t i;
        if (parse_py_int(v.str(), base, &i)) return i;
        double d;
        if (parse_py_float(v.str(), &d) && std::isfinite(d) && std::fabs(d) < 9.2e18) return static_cast<int64_t>(std::trunc(d));
    }
    return dflt;
}

Value f_format(Interpreter&, const Value& v, Args& a) {
    if (!a.positional.empty() && !a.keyword.empty())
        fail("FilterArgumentError", "can't handle positional and keyword arguments at the same time");
    if (!a.keyword.empty()) {
        Dict d;
        for (auto& [k, x] : a.keyword) d.set(Value(k), x);
        return percent_format(to_str(v), Value::dict(std::move(d)));
    }
    return percent_format(to_str(v), Value::list(a.positional, true));
}

std::vector<std::string> indent_lines(const std::string& s) { return py_splitlines(s, false); }

Value f_indent(Interpreter&, const Value& v, Args& a) {
    auto p = bind_args("indent", a, {"width", "first", "blank"});
    std::string ind;
    if (p[0] && p[0]->is_string()) ind = p[0]->str();
    else ind = std::string(static_cast<size_t>(std::clamp<int64_t>(int_arg(p[0], 4, "width"), 0, 4096)), ' ');
    const bool first = bool_arg(p[1], false), blank = bool_arg(p[2], false);
    const std::string s = to_str(v) + "\n";
    auto lines = indent_lines(s);
    std::string rv;
    if (blank) {
        for (size_t i = 0; i < lines.size(); ++i) {
            if (i) rv += "\n" + ind;
            rv += lines[i];
        }
    } else if (!lines.empty()) {
        rv = lines[0];
        for (size_t i = 1; i < lines.size(); ++i) {
            rv += "\n";
            if (!lines[i].empty()) rv += ind;
            rv += lines[i];
        }
    }
    if (first) rv = ind + rv;
    return rv;
}

Value f_items(Interpreter&, const Value& v, Args& a) {
    bind_args("items", a, {});
    if (v.is_undefined()) return Value::list({});
    if (!v.is_dict()) fail("TypeError", "Can only get item pairs from a mapping.");
    std::vector<Value> out;
    for (const auto& [k, val] : v.dict().items) out.push_back(make_tuple(k, val));
    return Value::list(std::move(out));
}

Value f_join(Interpreter& in, const Value& v, Args& a) {
    auto p = bind_args("join", a, {"d", "attribute"});
    const std::string sep = p[0] ? to_str(*p[0]) : "";
    std::string out;
    bool first = true;
    for (const auto& item : iterate(v)) {
        if (!first) out += sep;
        first = false;
        out += to_str(p[1] && !p[1]->is_none() ? attr_path(in, item, *p[1]) : item);
    }
    return out;
}

Value f_length(Interpreter&, const Value& v, Args& a) {
    bind_args("length", a, {});
    if (v.is_object()) fail("TypeError", "object of type '" + type_name(v) + "' has no len()");
    return static_cast<int64_t>(length(v));
}

Value f_list(Interpreter&, const Value& v, Args& a) {
    bind_args("list", a, {});
    return Value::list(iterate(v));
}

Value f_lower(Interpreter&, const Value& v, Args& a) {
    bind_args("lower", a, {});
    return py_lower(to_str(v));
}

Value f_upper(Interpreter&, const Value& v, Args& a) {
    bind_args("upper", a, {});
    return py_upper(to_str(v));
}

Value f_map(Interpreter& in, const Value& v, Args& a) {
    std::optional<Value> attribute, dflt;
    std::vector<std::pair<std::string, Value>> rest_kw;
    for (auto& [k, x] : a.keyword) {
        if (k == "attribute") attribute = x;
        else if (k == "default") dflt = x;
        else rest_kw.emplace_back(k, x);
    }
    std::vector<Value> out;
    if (attribute) {
        if (!a.positional.empty() || !rest_kw.empty()) fail("FilterArgumentError", "map(attribute=...) takes no other arguments");
        for (const auto& item : iterate(v)) {
            Value r = attr_path(in, item, *attribute);
            if (r.is_undefined() && dflt) r = *dflt;
            out.push_back(std::move(r));
        }
        return Value::list(std::move(out));
    }
    if (dflt) rest_kw.emplace_back("default", *dflt);
    if (a.positional.empty()) fail("FilterArgumentError", "map requires a filter argument");
    if (!a.positional[0].is_string()) fail("TypeError", "map: the filter name must be a string");
    const std::string name = a.positional[0].str();
    if (!find_filter(name)) fail("TemplateRuntimeError", fmt::format("No filter named '{}'.", name));
    for (const auto& item : iterate(v)) {
        Args fa;
        fa.positional.assign(a.positional.begin() + 1, a.positional.end());
        fa.keyword = rest_kw;
        out.push_back(in.apply_filter(name, item, fa));
    }
    return Value::list(std::move(out));
}

Value min_max(Interpreter& in, const Value& v, Args& a, bool want_max, const char* fname) {
    auto p = bind_args(fname, a, {"case_sensitive", "attribute"});
    const bool cs = bool_arg(p[0], false);
    const auto items = iterate(v);
    if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
    size_t best = 0;
    Value best_key;
    for (size_t i = 0; i < items.size(); ++i) {
        Value k = ignore_case(p[1] && !p[1]->is_none() ? attr_path(in, items[i], *p[1]) : items[i], cs);
        if (i == 0 || (want_max ? compare(k, best_key, ">") : compare(k, best_key, "<"))) {
            best = i;
            best_key = std::move(k);
        }
    }
    return items[best];
}
Value f_max(Interpreter& in, const Value& v, Args& a) { return min_max(in, v, a, true, "max"); }
Value f_min(Interpreter& in, const Value& v, Args& a) { return min_max(in, v, a, false, "min"); }

Value select_impl(Interpreter& in, const Value& v, Args& a, bool by_attr, bool keep) {
    size_t k = 0;
    Value attribute;
    if (!a.keyword.empty()) fail("FilterArgumentError", "select filters take no keyword arguments");
    if (by_attr) {
        if (a.positional.empty()) fail("FilterArgumentError", "Missing parameter for attribute name");
        attribute = a.positional[k++];
    }
    std::optional<std::string> test;
    if (k < a.positional.size()) {
        if (!a.positional[k].is_string()) fail("TypeError", "the test name must be a string");
        test = a.positional[k++].str();
    }
    std::vector<Value> out;
    for (const auto& item : iterate(v)) {
        const Value subject = by_attr ? attr_path(in, item, attribute) : item;
        bool r;
        if (test) {
            Args ta;
            ta.positional.assign(a.positional.begin() + static_cast<std::ptrdiff_t>(k), a.positional.end());
            r = in.apply_test(*test, subject, ta);
        } else {
            r = truthy(subject);
        }
        if (r == keep) out.push_back(item);
    }
    return Value::list(std::move(out));
}
Value f_select(Interpreter& in, const Value& v, Args& a) { return select_impl(in, v, a, false, true); }
Value f_reject(Interpreter& in, const Value& v, Args& a) { return select_impl(in, v, a, false, false); }
Value f_selectattr(Interpreter& in, const Value& v, Args& a) { return select_impl(in, v, a, true, true); }
Value f_rejectattr(Interpreter& in, const Value& v, Args& a) { return select_impl(in, v, a, true, false); }

Value f_replace(Interpreter&, const Value& v, Args& a) {
    auto p = bind_args("replace", a, {"old", "new", "count"});
    if (!p[0] || !p[1]) fail("TypeError", "replace() missing required arguments 'old' and 'new'");
    return py_replace(to_str(v), to_str(*p[0]), to_str(*p[1]), p[2] && !p[2]->is_none() ? int_arg(p[2], -1, "count") : -1);
}

Value f_reverse(Interpreter&, const Value& v, Args& a) {
    bind_args("reverse", a, {});
    if (v.is_string()) return slice(v, Value::none(), Value::none(), Value(-1));
    auto items = iterate(v);
    std::reverse(items.begin(), items.end());
    return Value::list(std::move(items));
}

Value f_round(Interpreter&, const Value& v, Args& a) {
    auto p = bind_args("round", a, {"precision", "method"});
    return py_round(v, int_arg(p[0], 0, "precision"), p[1] ? str_arg(p[1], "method") : "common");
}

Value f_safe(Interpreter&, const Value& v, Args& a) {
    bind_args("safe", a, {});
    return to_str(v);
}

Value f_sort(Interpreter& in, const Value& v, Args& a) {
    auto p = bind_args("sort", a, {"reverse", "case_sensitive", "attribute"});
    const bool rev = bool_arg(p[0], false), cs = bool_arg(p[1], false);
    auto items = iterate(v);
    std::vector<Value> keys;
    keys.reserve(items.size());
    for (const auto& item : items)
        keys.push_back(ignore_case(p[2] && !p[2]->is_none() ? attr_path(in, item, *p[2]) : item, cs));
    sort_values(items, keys, rev);
    return Value::list(std::move(items));
}

Value f_string(Interpreter&, const Value& v, Args& a) {
    bind_args("string", a, {});
    return to_str(v);
}

Value f_sum(Interpreter& in, const Value& v, Args& a) {
    auto p = bind_args("sum", a, {"attribute", "start"});
    Value total = p[1] ? *p[1] : Value(0);
    for (const auto& item : iterate(v))
        total = binary_op("+", total, p[0] && !p[0]->is_none() ? attr_path(in, item, *p[0]) : item);
    return total;
}

Value f_title(Interpreter&, const Value& v, Args& a) {
    bind_args("title", a, {});
    return jinja_title(to_str(v));
}

// transformers' tojson: json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False).
Value f_tojson(Interpreter&, const Value& v, Args& a) {
    auto p = bind_args("tojson", a, {"ensure_ascii", "indent", "separators", "sort_keys"});
    DumpOptions o;
    o.ensure_ascii = bool_arg(p[0], false);
    o.sort_keys = bool_arg(p[3], false);
    if (p[1] && !p[1]->is_none()) {
        if (p[1]->is_string()) o.indent = p[1]->str();
        else o.indent = std::string(static_cast<size_t>(std::clamp<int64_t>(int_arg(p[1], 0, "indent"), 0, 4096)), ' ');
        o.item_separator = ",";
    }
    if (p[2] && !p[2]->is_none()) {
        const Value& s = *p[2];
        if (!s.is_list() || s.items().size() != 2 || !s.items()[0].is_string() || !s.items()[1].is_string())
            fail("TypeError", "separators must be a pair of strings");
        o.item_separator = s.items()[0].str();
        o.key_separator = s.items()[1].str();
    }
    return json_dumps(v, o);
}

Value f_trim(Interpreter&, const Value& v, Args& a) {
    auto p = bind_args("trim", a, {"chars"});
    std::optional<std::string> chars;
    if (p[0] && !p[0]->is_none()) chars = to_str(*p[0]);
    return py_strip(to_str(v), chars, true, true);
}

Value f_truncate(Interpreter&, const Value& v, Args& a) {
    auto p = bind_args("truncate", a, {"length", "killwords", "end", "leeway"});
    const int64_t len = int_arg(p[0], 255, "length");
    const bool killwords = bool_arg(p[1], false);
    const std::string end = p[2] ? to_str(*p[2]) : "...";
    const int64_t leeway = int_arg(p[3], 5, "leeway");
    const int64_t end_len = static_cast<int64_t>(utf8_length(end));
    if (len < end_len) fail("FilterArgumentError", "expected length >= len(end)");
    if (leeway < 0) fail("FilterArgumentError", "expected leeway >= 0");
    const std::string s = to_str(v);
    if (static_cast<int64_t>(utf8_length(s)) <= len + leeway) return s;
    const std::string head = slice(Value(s), Value::none(), Value(len - end_len), Value::none()).str();
    if (killwords) return head + end;
    const size_t sp = head.rfind(' ');
    return (sp == std::string::npos ? head : head.substr(0, sp)) + end;
}

Value f_unique(Interpreter& in, const Value& v, Args& a) {
    auto p = bind_args("unique", a, {"case_sensitive", "attribute"});
    const bool cs = bool_arg(p[0], false);
    std::vector<Value> out, seen;
    for (auto& item : iterate(v)) {
        Value key = ignore_case(p[1] && !p[1]->is_none() ? attr_path(in, item, *p[1]) : item, cs);
        bool dup = false;
        for (const auto& s : seen)
            if (equals(s, key)) dup = true;
        if (dup) continue;
        seen.push_back(std::move(key));
        out.push_back(std::move(item));
    }
    return Value::list(std::move(out));
}

Value f_wordcount(Interpreter&, const Value& v, Args& a) {
    bind_args("wordcount", a, {});
    int64_t n = 0;
    bool in_word = false;
    for (uint32_t c : code_points(to_str(v))) {
        const bool w = c == '_' || (c >= '0' && c <= '9') || cp_is_alpha(c);
        if (w && !in_word) ++n;
        in_word = w;
    }
    return n;
}

const std::unordered_map<std::string_view, FilterFn>& filters() {
    static const std::unordered_map<std::string_view, FilterFn> m = {
        {"abs", f_abs},         {"attr", f_attr},       {"batch", f_batch},       {"capitalize", f_capitalize},
        {"center", f_center},   {"count", f_length},    {"d", f_default},         {"default", f_default},
        {"dictsort", f_dictsort}, {"e", f_escape},      {"escape", f_escape},     {"first", f_first},
        {"float", f_float},     {"forceescape", f_escape}, {"format", f_format},  {"indent", f_indent},
        {"int", f_int},         {"items", f_items},     {"join", f_join},         {"last", f_last},
        {"length", f_length},   {"list", f_list},       {"lower", f_lower},       {"map", f_map},
        {"max", f_max},         {"min", f_min},         {"reject", f_reject},     {"rejectattr", f_rejectattr},
        {"replace", f_replace}, {"reverse", f_reverse}, {"round", f_round},       {"safe", f_safe},
        {"select", f_select},   {"selectattr", f_selectattr}, {"sort", f_sort},   {"string", f_string},
        {"sum", f_sum},         {"title", f_title},     {"tojson", f_tojson},     {"trim", f_trim},
        {"truncate", f_truncate}, {"unique", f_unique}, {"upper", f_upper},       {"wordcount", f_wordcount},
    };
    return m;
}

// ---- tests ------------------------------------------------------------------------------------------

const Value& one_arg(Args& a, const char* name) {
    if (a.positional.size() + a.keyword.size() != 1) fail("TypeError", fmt::format("test '{}' takes one argument", name));
    return a.positional.empty() ? a.keyword[0].second : a.positional[0];
}
void no_args(Args& a, const char* name) {
    if (!a.positional.empty() || !a.keyword.empty()) fail("TypeError", fmt::format("test '{}' takes no arguments", name));
}

bool t_defined(Interpreter&, const Value& v, Args& a) { return no_args(a, "defined"), !v.is_undefined(); }
bool t_undefined(Interpreter&, const Value& v, Args& a) { return no_args(a, "undefined"), v.is_undefined(); }
bool t_none(Interpreter&, const Value& v, Args& a) { return no_args(a, "none"), v.is_none(); }
bool t_boolean(Interpreter&, const Value& v, Args& a) { return no_args(a, "boolean"), v.is_bool(); }
bool t_true(Interpreter&, const Value& v, Args& a) { return no_args(a, "true"), v.is_bool() && v.as_bool(); }
bool t_false(Interpreter&, const Value& v, Args& a) { return no_args(a, "false"), v.is_bool() && !v.as_bool(); }
bool t_integer(Interpreter&, const Value& v, Args& a) { return no_args(a, "integer"), v.is_int(); }
bool t_float(Interpreter&, const Value& v, Args& a) { return no_args(a, "float"), v.is_float(); }
bool t_number(Interpreter&, const Value& v, Args& a) { return no_args(a, "number"), v.is_number(); }
bool t_string(Interpreter&, const Value& v, Args& a) { return no_args(a, "string"), v.is_string(); }
bool t_mapping(Interpreter&, const Value& v, Args& a) { return no_args(a, "mapping"), v.is_dict(); }
bool t_sequence(Interpreter&, const Value& v, Args& a) {
    no_args(a, "sequence");
    return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
}
bool t_iterable(Interpreter&, const Value& v, Args& a) {
    no_args(a, "iterable");
    return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
}
bool t_callable(Interpreter&, const Value& v, Args& a) { return no_args(a, "callable"), v.is_callable(); }
bool t_escaped(Interpreter&, const Value&, Args& a) { return no_args(a, "escaped"), false; }
bool t_odd(Interpreter&, const Value& v, Args& a) {
    no_args(a, "odd");
    return equals(binary_op("%", v, Value(2)), Value(1));
}
bool t_even(Interpreter&, const Value& v, Args& a) {
    no_args(a, "even");
    return equals(binary_op("%", v, Value(2)), Value(0));
}
bool t_divisibleby(Interpreter&, const Value& v, Args& a) {
    return equals(binary_op("%", v, one_arg(a, "divisibleby")), Value(0));
}
bool t_eq(Interpreter&, const Value& v, Args& a) { return equals(v, one_arg(a, "eq")); }
bool t_ne(Interpreter&, const Value& v, Args& a) { return !equals(v, one_arg(a, "ne")); }
bool t_lt(Interpreter&, const Value& v, Args& a) { return compare(v, one_arg(a, "lt"), "<"); }
bool t_le(Interpreter&, const Value& v, Args& a) { return compare(v, one_arg(a, "le"), "<="); }
bool t_gt(Interpreter&, const Value& v, Args& a) { return compare(v, one_arg(a, "gt"), ">"); }
bool t_ge(Interpreter&, const Value& v, Args& a) { return compare(v, one_arg(a, "ge"), ">="); }
bool t_in(Interpreter&, const Value& v, Args& a) { return contains(one_arg(a, "in"), v); }
bool t_sameas(Interpreter&, const Value& v, Args& a) {
    const Value& o = one_arg(a, "sameas");
    if (v.kind() != o.kind()) return false;
    switch (v.kind()) {
        case Value::Kind::None: case Value::Kind::Undefined: return true;
        case Value::Kind::Bool: return v.as_bool() == o.as_bool();
        case Value::Kind::Int: return v.as_int() == o.as_int() && v.as_int() >= -5 && v.as_int() <= 256;
        case Value::Kind::String: case Value::Kind::Float: return false;
        default: return v.identity() == o.identity();
    }
}
bool t_lower(Interpreter&, const Value& v, Args& a) {
    no_args(a, "lower");
    bool cased = false;
    for (uint32_t c : code_points(to_str(v))) {
        if (cp_is_upper(c)) return false;
        if (cp_is_lower(c)) cased = true;
    }
    return cased;
}
bool t_upper(Interpreter&, const Value& v, Args& a) {
    no_args(a, "upper");
    bool cased = false;
    for (uint32_t c : code_points(to_str(v))) {
        if (cp_is_lower(c)) return false;
        if (cp_is_upper(c)) cased = true;
    }
    return cased;
}
bool t_filter(Interpreter&, const Value& v, Args& a) { return no_args(a, "filter"), v.is_string() && find_filter(v.str()); }
bool t_test(Interpreter&, const Value& v, Args& a) { return no_args(a, "test"), v.is_string() && find_test(v.str()); }

const std::unordered_map<std::string_view, TestFn>& tests() {
    static const std::unordered_map<std::string_view, TestFn> m = {
        {"defined", t_defined}, {"undefined", t_undefined}, {"none", t_none}, {"boolean", t_boolean},
        {"true", t_true}, {"false", t_false}, {"integer", t_integer}, {"float", t_float}, {"number", t_number},
        {"string", t_string}, {"mapping", t_mapping}, {"sequence", t_sequence}, {"iterable", t_iterable},
        {"callable", t_callable}, {"escaped", t_escaped}, {"odd", t_odd}, {"even", t_even},
        {"divisibleby", t_divisibleby}, {"eq", t_eq}, {"equalto", t_eq}, {"==", t_eq}, {"ne", t_ne}, {"!=", t_ne},
        {"lt", t_lt}, {"lessthan", t_lt}, {"<", t_lt}, {"le", t_le}, {"<=", t_le}, {"gt", t_gt},
        {"greaterthan", t_gt}, {">", t_gt}, {"ge", t_ge}, {">=", t_ge}, {"in", t_in}, {"sameas", t_sameas},
        {"lower", t_lower}, {"upper", t_upper}, {"filter", t_filter}, {"test", t_test},
    };
    return m;
}

// ---- methods ----------------------------------------------------------------------------------------

bool is_one_of(std::string_view name, std::initializer_list<std::string_view> names) {
    return std::find(names.begin(), names.end(), name) != names.end();
}

// Every public method of Python's str; the ones not implemented raise Unsupported rather than
// behave as undefined.
const std::initializer_list<std::string_view> kStrMethods = {
    "capitalize", "casefold", "center", "count", "encode", "endswith", "expandtabs", "find", "format",
    "format_map", "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower",
    "isnumeric", "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower", "lstrip", "maketrans",
    "partition", "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rjust", "rpartition", "rsplit",
    "rstrip", "split", "splitlines", "startswith", "strip", "swapcase", "title", "translate", "upper", "zfill"};
const std::initializer_list<std::string_view> kDictMethods = {"get", "items", "keys", "values", "copy"};
const std::initializer_list<std::string_view> kDictUnsafe = {"clear", "pop", "popitem", "setdefault", "update", "fromkeys"};
const std::initializer_list<std::string_view> kListMethods = {"count", "index", "copy"};
const std::initializer_list<std::string_view> kListUnsafe = {"append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort"};

bool affix_match(const std::string& s, const Value& affix, bool start, const std::optional<Value>& b, const std::optional<Value>& e,
                 const char* fname) {
    std::vector<size_t> off;
    const Range r = cp_range(s, b, e, &off);
    const std::string_view sub = std::string_view(s).substr(r.b, r.e - r.b);
    auto test = [&](const Value& x) {
        if (!x.is_string()) fail("TypeError", fmt::format("{} first arg must be str or a tuple of str, not {}", fname, type_name(x)));
        const std::string& p = x.str();
        if (p.size() > sub.size()) return false;
        return start ? sub.compare(0, p.size(), p) == 0 : sub.compare(sub.size() - p.size(), p.size(), p) == 0;
    };
    if (affix.is_tuple()) {
        for (const auto& x : affix.items())
            if (test(x)) return true;
        return false;
    }
    return test(affix);
}

bool all_cps(const std::string& s, bool (*pred)(uint32_t)) {
    if (s.empty()) return false;
    for (uint32_t c : code_points(s))
        if (!pred(c)) return false;
    return true;
}

Value str_method(Interpreter&, const std::string& s, const std::string& name, Args& a) {
    const std::string fname = "str." + name;
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
        auto p = bind_args(fname, a, {"chars"});
        std::optional<std::string> chars;
        if (p[0] && !p[0]->is_none()) {
            if (!p[0]->is_string()) fail("TypeError", name + " arg must be None or str");
            chars = p[0]->str();
        }
        return py_strip(s, chars, name != "rstrip", name != "lstrip");
    }
    if (name == "split" || name == "rsplit") {
        auto p = bind_args(fname, a, {"sep", "maxsplit"});
        return Value::list(py_split(s, p[0], int_arg(p[1], -1, "maxsplit"), name == "rsplit"));
    }
    if (name == "splitlines") {
        auto p = bind_args(fname, a, {"keepends"});
        std::vector<Value> out;
        for (auto& l : py_splitlines(s, bool_arg(p[0], false))) out.emplace_back(std::move(l));
        return Value::list(std::move(out));
    }
    if (name == "startswith" || name == "endswith") {
        auto p = bind_args(fname, a, {"prefix", "start", "end"});
        if (!p[0]) fail("TypeError", name + "() takes at least 1 argument (0 given)");
        return affix_match(s, *p[0], name == "startswith", p[1], p[2], name.c_str());
    }
    if (name == "replace") {
        auto p = bind_args(fname, a, {"old", "new", "count"});
        if (!p[0] || !p[1] || !p[0]->is_string() || !p[1]->is_string()) fail("TypeError", "replace() arguments must be str");
        return py_replace(s, p[0]->str(), p[1]->str(), int_arg(p[2], -1, "count"));
    }
    if (name == "lower" || name == "casefold") {
        bind_args(fname, a, {});
        return Value(py_lower(s));
    }
    if (name == "upper") {
        bind_args(fname, a, {});
        return Value(py_upper(s));
    }
    if (name == "title") {
        bind_args(fname, a, {});
        return Value(py_title(s));
    }
    if (name == "capitalize") {
        bind_args(fname, a, {});
        return Value(py_capitalize(s));
    }
    if (name == "swapcase") {
        bind_args(fname, a, {});
        std::string out;
        for (uint32_t c : code_points(s)) utf8_append(out, cp_is_upper(c) ? cp_lower(c) : cp_upper(c));
        return out;
    }
    if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
        auto p = bind_args(fname, a, {"sub", "start", "end"});
        if (!p[0] || !p[0]->is_string()) fail("TypeError", "must be str, not " + (p[0] ? type_name(*p[0]) : std::string("nothing")));
        const std::string& sub = p[0]->str();
        std::vector<size_t> off;
        const Range r = cp_range(s, p[1], p[2], &off);
        const std::string_view hay = std::string_view(s).substr(r.b, r.e - r.b);
        if (name == "count") {
            if (sub.empty()) return static_cast<int64_t>(utf8_length(hay) + 1);
            int64_t n = 0;
            for (size_t q = hay.find(sub); q != std::string_view::npos; q = hay.find(sub, q + sub.size())) ++n;
            return n;
        }
        const bool right = name[0] == 'r';
        const size_t q = right ? hay.rfind(sub) : hay.find(sub);
        if (q == std::string_view::npos) {
            if (name == "index" || name == "rindex") fail("ValueError", "substring not found");
            return int64_t{-1};
        }
        return cp_index(off, r.b + q);
    }
    if (name == "join") {
        auto p = bind_args(fname, a, {"iterable"});
        if (!p[0]) fail("TypeError", "join() takes exactly one argument (0 given)");
        std::string out;
        size_t i = 0;
        for (const auto& x : iterate(*p[0])) {
            if (!x.is_string()) fail("TypeError", fmt::format("sequence item {}: expected str instance, {} found", i, type_name(x)));
            if (i++) out += s;
            out += x.str();
        }
        return out;
    }
    if (name == "format") return py_format(s, a);
    if (name == "isdigit" || name == "isdecimal" || name == "isnumeric")
        {
        bind_args(fname, a, {});
        return all_cps(s, [](uint32_t c) { return c >= '0' && c <= '9'; });
    }
    if (name == "isalpha") {
        bind_args(fname, a, {});
        return all_cps(s, cp_is_alpha);
    }
    if (name == "isalnum")
        {
        bind_args(fname, a, {});
        return all_cps(s, [](uint32_t c) { return cp_is_alpha(c) || (c >= '0' && c <= '9'); });
    }
    if (name == "isspace") {
        bind_args(fname, a, {});
        return all_cps(s, py_isspace);
    }
    if (name == "isascii") {
        bind_args(fname, a, {});
        return is_ascii(s);
    }
    if (name == "islower" || name == "isupper") {
        bind_args(fname, a, {});
        bool cased = false;
        for (uint32_t c : code_points(s)) {
            if (name == "islower" ? cp_is_upper(c) : cp_is_lower(c)) return false;
            if (name == "islower" ? cp_is_lower(c) : cp_is_upper(c)) cased = true;
        }
        return cased;
    }
    if (name == "ljust" || name == "rjust" || name == "center") {
        auto p = bind_args(fname, a, {"width", "fillchar"});
        if (!p[0]) fail("TypeError", name + "() takes at least 1 argument (0 given)");
        return py_pad(s, int_arg(p[0], 0, "width"), fill_char(p[1]), name == "ljust" ? -1 : name == "rjust" ? 1 : 0);
    }
    if (name == "zfill") {
        auto p = bind_args(fname, a, {"width"});
        const int64_t width = int_arg(p[0], 0, "width"), n = static_cast<int64_t>(utf8_length(s));
        if (width <= n) return s;
        const bool sign = !s.empty() && (s[0] == '+' || s[0] == '-');
        return (sign ? s.substr(0, 1) : "") + std::string(static_cast<size_t>(width - n), '0') + (sign ? s.substr(1) : s);
    }
    if (name == "removeprefix" || name == "removesuffix") {
        auto p = bind_args(fname, a, {"affix"});
        if (!p[0] || !p[0]->is_string()) fail("TypeError", name + "() argument must be str");
        const std::string& x = p[0]->str();
        if (name == "removeprefix") return s.compare(0, x.size(), x) == 0 ? s.substr(x.size()) : s;
        return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0 ? s.substr(0, s.size() - x.size()) : s;
    }
    if (name == "partition" || name == "rpartition") {
        auto p = bind_args(fname, a, {"sep"});
        if (!p[0] || !p[0]->is_string()) fail("TypeError", "must be str");
        const std::string& sep = p[0]->str();
        if (sep.empty()) fail("ValueError", "empty separator");
        const size_t q = name == "partition" ? s.find(sep) : s.rfind(sep);
        if (q == std::string::npos)
            return name == "partition" ? Value::list({Value(s), Value(""), Value("")}, true) : Value::list({Value(""), Value(""), Value(s)}, true);
        return Value::list({Value(s.substr(0, q)), Value(sep), Value(s.substr(q + sep.size()))}, true);
    }
    fail("Unsupported", fmt::format("str.{}() is not supported", name));
}

Value dict_method(const Value& self, const std::string& name, Args& a) {
    const Dict& d = self.dict();
    const std::string fname = "dict." + name;
    if (name == "get") {
        auto p = bind_args(fname, a, {"key", "default"});
        if (!p[0]) fail("TypeError", "get expected at least 1 argument, got 0");
        if (const Value* v = d.find(*p[0])) return *v;
        return p[1] ? *p[1] : Value::none();
    }
    bind_args(fname, a, {});
    if (name == "copy") return self;
    std::vector<Value> out;
    for (const auto& [k, v] : d.items) {
        if (name == "items") out.push_back(make_tuple(k, v));
        else if (name == "keys") out.push_back(k);
        else out.push_back(v);
    }
    return Value::list(std::move(out));
}

Value list_method(const Value& self, const std::string& name, Args& a) {
    const std::string fname = "list." + name;
    if (name == "copy") {
        bind_args(fname, a, {});
        return Value::list(self.items(), self.is_tuple());
    }
    auto p = bind_args(fname, a, {"value"});
    if (!p[0]) fail("TypeError", name + "() takes exactly one argument (0 given)");
    int64_t n = 0, i = 0;
    for (const auto& x : self.items()) {
        if (equals(x, *p[0])) {
            if (name == "index") return i;
            ++n;
        }
        ++i;
    }
    if (name == "index") fail("ValueError", repr(*p[0]) + " is not in list");
    return n;
}

[[noreturn]] void unsafe(const Value& self, const std::string& name) {
    fail("SecurityError", fmt::format("access to attribute '{}' of '{}' object is unsafe.", name, type_name(self)));
}

// ---- globals ----------------------------------------------------------------------------------------

Value g_range(Interpreter&, Args& a) {
    if (!a.keyword.empty()) fail("TypeError", "range() takes no keyword arguments");
    const auto& p = a.positional;
    if (p.empty() || p.size() > 3) fail("TypeError", fmt::format("range expected 1 to 3 arguments, got {}", p.size()));
    for (const auto& x : p)
        if (!x.is_int() && !x.is_bool()) fail("TypeError", "'" + type_name(x) + "' object cannot be interpreted as an integer");
    int64_t start = 0, stop, step = 1;
    if (p.size() == 1) stop = p[0].to_int();
    else {
        start = p[0].to_int();
        stop = p[1].to_int();
        if (p.size() == 3) step = p[2].to_int();
    }
    if (step == 0) fail("ValueError", "range() arg 3 must not be zero");
    std::vector<Value> out;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (out.size() >= 100000)
            fail("OverflowError", "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        out.emplace_back(i);
        if ((step > 0 && i > std::numeric_limits<int64_t>::max() - step) || (step < 0 && i < std::numeric_limits<int64_t>::min() - step)) break;
    }
    return Value::list(std::move(out));
}

// dict(...) / namespace(...): an optional mapping or list of pairs, then keyword arguments.
Dict dict_from_args(Args& a, const char* fname) {
    Dict d;
    if (a.positional.size() > 1) fail("TypeError", fmt::format("{} expected at most 1 argument, got {}", fname, a.positional.size()));
    if (!a.positional.empty()) {
        const Value& src = a.positional[0];
        if (src.is_dict()) {
            d = src.dict();
        } else {
            for (const auto& pair : iterate(src)) {
                if (!pair.is_list() || pair.items().size() != 2)
                    fail("ValueError", fmt::format("{}: sequence elements must be pairs", fname));
                d.set(pair.items()[0], pair.items()[1]);
            }
        }
    }
    for (auto& [k, v] : a.keyword) d.set(Value(k), std::move(v));
    return d;
}

Value g_dict(Interpreter&, Args& a) { return Value::dict(dict_from_args(a, "dict")); }

Value g_namespace(Interpreter& in, Args& a) {
    auto o = std::make_shared<Object>();
    o->type_name = "Namespace";
    o->assignable = true;
    o->attrs = dict_from_args(a, "namespace");
    in.track(o);
    return Value::object(std::move(o));
}

Value g_joiner(Interpreter&, Args& a) {
    auto p = bind_args("joiner", a, {"sep"});
    const std::string sep = p[0] ? to_str(*p[0]) : ", ";
    auto used = std::make_shared<bool>(false);
    return Value::callable("joiner", [sep, used](Interpreter&, Args& args) -> Value {
        bind_args("joiner", args, {});
        if (!*used) {
            *used = true;
            return "";
        }
        return sep;
    });
}

Value g_raise_exception(Interpreter&, Args& a) {
    auto p = bind_args("raise_exception", a, {"message"});
    fail("TemplateError", p[0] ? to_str(*p[0]) : "");
}

Value g_strftime_now(Interpreter& in, Args& a) {
    auto p = bind_args("strftime_now", a, {"format"});
    const std::string f = str_arg(p[0], "format");
    std::tm tm{};
    if (in.options().now) {
        tm = in.options().now();
    } else {
        const std::time_t t = std::time(nullptr);
        localtime_r(&t, &tm);
    }
    if (f.empty()) return std::string();
    std::vector<char> buf(256);
    for (;;) {
        const size_t n = std::strftime(buf.data(), buf.size(), f.c_str(), &tm);
        if (n > 0 || buf.size() > (1u << 20)) return std::string(buf.data(), n);
        buf.resize(buf.size() * 4);
    }
}

}  // namespace

FilterFn find_filter(std::string_view name) {
    const auto& m = filters();
    const auto it = m.find(name);
    return it == m.end() ? nullptr : it->second;
}

TestFn find_test(std::string_view name) {
    const auto& m = tests();
    const auto it = m.find(name);
    return it == m.end() ? nullptr : it->second;
}

bool has_filter(std::string_view name) { return find_filter(name) != nullptr; }
bool has_test(std::string_view name) { return find_test(name) != nullptr; }

std::optional<Value> call_method(Interpreter& in, const Value& self, const std::string& name, Args& args) {
    if (self.is_string()) {
        if (!is_one_of(name, kStrMethods)) return std::nullopt;
        return str_method(in, self.str(), name, args);
    }
    if (self.is_dict()) {
        if (is_one_of(name, kDictUnsafe)) unsafe(self, name);
        if (!is_one_of(name, kDictMethods)) return std::nullopt;
        return dict_method(self, name, args);
    }
    if (self.is_list()) {
        if (is_one_of(name, kListUnsafe) && !self.is_tuple()) unsafe(self, name);
        if (!is_one_of(name, kListMethods) || (self.is_tuple() && name == "copy")) return std::nullopt;
        return list_method(self, name, args);
    }
    return std::nullopt;
}

std::optional<Value> find_method(const Value& self, const std::string& name) {
    bool known = false;
    if (self.is_string()) known = is_one_of(name, kStrMethods);
    else if (self.is_dict()) {
        if (is_one_of(name, kDictUnsafe))
            return Value::undefined(fmt::format("access to attribute '{}' of 'dict' object is unsafe.", name), "SecurityError");
        known = is_one_of(name, kDictMethods);
    } else if (self.is_list()) {
        if (is_one_of(name, kListUnsafe) && !self.is_tuple())
            return Value::undefined(fmt::format("access to attribute '{}' of 'list' object is unsafe.", name), "SecurityError");
        known = is_one_of(name, kListMethods) && !(self.is_tuple() && name == "copy");
    }
    if (!known) return std::nullopt;
    return Value::callable(type_name(self) + "." + name, [self, name](Interpreter& in, Args& args) {
        return *call_method(in, self, name, args);
    });
}

void add_globals(Scope& scope) {
    scope.set("range", Value::callable("range", g_range));
    scope.set("dict", Value::callable("dict", g_dict));
    scope.set("namespace", Value::callable("namespace", g_namespace));
    scope.set("joiner", Value::callable("joiner", g_joiner));
    scope.set("raise_exception", Value::callable("raise_exception", g_raise_exception));
    scope.set("strftime_now", Value::callable("strftime_now", g_strftime_now));
}

}  // namespace kiln::jinja
