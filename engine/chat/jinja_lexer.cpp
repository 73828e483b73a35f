// The Jinja2 lexer: splits the source into text and tags, applies the whitespace rules
// (trim_blocks, lstrip_blocks, `{%-`/`-%}`, `{%+`/`+%}`) and tokenizes the inside of tags.
#include <cctype>
#include <charconv>
#include <cstdlib>

#include <fmt/format.h>

#include "chat/jinja_ast.h"

namespace kiln::jinja {

std::pair<int, int> line_column(std::string_view src, size_t offset) {
    if (offset > src.size()) offset = src.size();
    int line = 1;
    size_t line_start = 0;
    for (size_t i = 0; i < offset; ++i) {
        if (src[i] == '\n') {
            ++line;
            line_start = i + 1;
        }
    }
    return {line, static_cast<int>(utf8_length(src.substr(line_start, offset - line_start))) + 1};
}

void throw_at(std::string_view src, size_t offset, std::string kind, std::string message) {
    const auto [line, col] = line_column(src, offset);
    throw TemplateError(std::move(kind), std::move(message), line, col);
}

namespace {

bool is_ident_start(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool is_ident(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }
bool is_tag_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

class Lexer {
public:
    Lexer(std::string_view src, const Options& opts) : src_(src), opts_(opts) {}

    std::vector<Token> run() {
        while (pos_ < src_.size()) {
            const size_t at = find_tag_start(pos_);
            if (at == std::string_view::npos) {
                emit_text(std::string(src_.substr(pos_)), pos_);
                pos_ = src_.size();
                break;
            }
            const char kind = src_[at + 1];
            size_t p = at + 2;
            char mod = 0;
            if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) mod = src_[p++];
            std::string text(src_.substr(pos_, at - pos_));
            const size_t text_offset = pos_;
            size_t raw_content = 0;
            const bool raw = kind == '%' && match_raw_begin(p, &raw_content);
            strip_before(text, mod, kind == '{');
            emit_text(std::move(text), text_offset);
            if (kind == '#') {
                lex_comment(at, p);
            } else if (raw) {
                lex_raw(at, raw_content);
            } else {
                lex_tag(at, p, kind);
            }
        }
        tokens_.push_back(Token{Tok::Eof, src_.size(), {}, 0, 0});
        return std::move(tokens_);
    }

private:
    [[noreturn]] void error(size_t offset, std::string msg) { throw_at(src_, offset, "TemplateSyntaxError", std::move(msg)); }

    size_t find_tag_start(size_t from) const {
        for (size_t i = src_.find('{', from); i != std::string_view::npos; i = src_.find('{', i + 1))
            if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
        return std::string_view::npos;
    }

    void emit_text(std::string text, size_t offset) {
        if (!text.empty()) tokens_.push_back(Token{Tok::Text, offset, std::move(text), 0, 0});
    }

    // Whitespace Python's regex \s matches (ASCII and the Unicode spaces).
    size_t skip_py_space(size_t p) const {
        while (p < src_.size()) {
            size_t len;
            if (!py_isspace(utf8_decode(src_, p, &len))) break;
            p += len;
        }
        return p;
    }

    // The text before a tag: `{%-` strips all whitespace; otherwise, with lstrip_blocks, a block or
    // comment tag alone on its line takes the line's leading whitespace away.
    void strip_before(std::string& text, char mod, bool is_variable) {
        if (mod == '-') {
            text = py_strip(text, std::nullopt, false, true);
            return;
        }
        if (mod == '+' || !opts_.lstrip_blocks || is_variable) return;
        const size_t nl = text.rfind('\n');
        const size_t line = nl == std::string::npos ? 0 : nl + 1;
        if (line == 0 && !line_starting_) return;
        if (line == text.size()) return;
        for (size_t i = line; i < text.size();) {
            size_t len;
            if (!py_isspace(utf8_decode(text, i, &len))) return;
            i += len;
        }
        text.resize(line);
    }

    // After a tag's closing delimiter: `-` strips all whitespace, `+` nothing, and trim_blocks one
    // newline (block and comment tags only).
    void finish_tag(size_t p, char mod, bool trim) {
        if (mod == '-') p = skip_py_space(p);
        else if (mod != '+' && trim && opts_.trim_blocks && p < src_.size() && src_[p] == '\n') ++p;
        pos_ = p;
        line_starting_ = p > 0 && src_[p - 1] == '\n';
    }

    bool match_raw_begin(size_t p, size_t* content) {
        while (p < src_.size() && is_tag_space(src_[p])) ++p;
        if (src_.compare(p, 3, "raw") != 0 || (p + 3 < src_.size() && is_ident(src_[p + 3]))) return false;
        p += 3;
        while (p < src_.size() && is_tag_space(src_[p])) ++p;
        if (src_.compare(p, 3, "-%}") == 0) {
            *content = skip_py_space(p + 3);
            return true;
        }
        if (src_.compare(p, 2, "%}") == 0) {
            *content = p + 2;
            return true;
        }
        return false;
    }

    void lex_comment(size_t at, size_t p) {
        const size_t end = src_.find("#}", p);
        if (end == std::string_view::npos) error(at, "Missing end of comment tag");
        char mod = 0;
        if (end > p && (src_[end - 1] == '-' || src_[end - 1] == '+')) mod = src_[end - 1];
        finish_tag(end + 2, mod, true);
    }

    void lex_raw(size_t at, size_t content) {
        line_starting_ = content > 0 && src_[content - 1] == '\n';
        for (size_t i = src_.find("{%", content); i != std::string_view::npos; i = src_.find("{%", i + 1)) {
            size_t p = i + 2;
            char mod = 0;
            if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) mod = src_[p++];
            while (p < src_.size() && is_tag_space(src_[p])) ++p;
            if (src_.compare(p, 6, "endraw") != 0) continue;
            p += 6;
            while (p < src_.size() && is_tag_space(src_[p])) ++p;
            char end_mod = 0;
            if (src_.compare(p, 3, "-%}") == 0 || src_.compare(p, 3, "+%}") == 0) {
                end_mod = src_[p];
                p += 3;
            } else if (src_.compare(p, 2, "%}") == 0) {
                p += 2;
            } else {
                continue;
            }
            std::string text(src_.substr(content, i - content));
            strip_before(text, mod, false);
            emit_text(std::move(text), content);
            finish_tag(p, end_mod, true);
            return;
        }
        error(at, "Missing end of raw directive");
    }

    void lex_tag(size_t at, size_t p, char kind) {
        const bool block = kind == '%';
        tokens_.push_back(Token{block ? Tok::BlockBegin : Tok::VarBegin, at, {}, 0, 0});
        std::vector<char> brackets;
        for (;;) {
            while (p < src_.size() && is_tag_space(src_[p])) ++p;
            if (p >= src_.size())
                error(at, block ? "Unexpected end of template, expected end of statement block ('%}')"
                                : "Unexpected end of template, expected end of print statement ('}}')");
            if (brackets.empty()) {
                const char close = block ? '%' : '}';
                char mod = 0;
                size_t q = p;
                if (src_[q] == '-' || (block && src_[q] == '+')) mod = src_[q++];
                if (q + 1 < src_.size() && src_[q] == close && src_[q + 1] == '}') {
                    tokens_.push_back(Token{block ? Tok::BlockEnd : Tok::VarEnd, p, {}, 0, 0});
                    finish_tag(q + 2, mod, block);
                    return;
                }
            }
            p = lex_token(p, brackets);
        }
    }

    size_t lex_token(size_t p, std::vector<char>& brackets) {
        const char c = src_[p];
        if (is_ident_start(c)) {
            size_t e = p + 1;
            while (e < src_.size() && is_ident(src_[e])) ++e;
            tokens_.push_back(Token{Tok::Name, p, std::string(src_.substr(p, e - p)), 0, 0});
            return e;
        }
        if (std::isdigit(static_cast<unsigned char>(c))) return lex_number(p);
        if (c == '\'' || c == '"') return lex_string(p);
        static const char* const kOps[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<",
                                           ">", "=", ".", ",", ":", "|", "(", ")", "[", "]", "{", "}", ";"};
        for (const char* op : kOps) {
            const size_t n = std::char_traits<char>::length(op);
            if (src_.compare(p, n, op) != 0) continue;
            if (n == 1 && (c == '(' || c == '[' || c == '{')) brackets.push_back(c);
            if (n == 1 && (c == ')' || c == ']' || c == '}')) {
                const char open = c == ')' ? '(' : c == ']' ? '[' : '{';
                if (brackets.empty()) error(p, fmt::format("unexpected '{}'", c));
                if (brackets.back() != open) {
                    const char want = brackets.back() == '(' ? ')' : brackets.back() == '[' ? ']' : '}';
                    error(p, fmt::format("unexpected '{}', expected '{}'", c, want));
                }
                brackets.pop_back();
            }
            tokens_.push_back(Token{Tok::Op, p, op, 0, 0});
            return p + n;
        }
        size_t len;
        utf8_decode(src_, p, &len);
        error(p, fmt::format("unexpected char {} at {}", py_str_repr(src_.substr(p, len)), p));
    }

    // Digits with single underscores between them ("1_000").
    size_t digits(size_t p, bool (*ok)(char)) const {
        size_t e = p;
        while (e < src_.size() && (ok(src_[e]) || (src_[e] == '_' && e > p && e + 1 < src_.size() && ok(src_[e + 1])))) ++e;
        return e;
    }

    size_t lex_number(size_t p) {
        auto dec = [](char ch) { return ch >= '0' && ch <= '9'; };
        const bool after_dot = p > 0 && src_[p - 1] == '.';  // x.0.1 is attribute access, not a float
        auto clean = [](std::string_view s) {
            std::string r;
            for (char ch : s)
                if (ch != '_') r += ch;
            return r;
        };
        // Prefixed integers: 0b / 0o / 0x.
        if (src_[p] == '0' && p + 1 < src_.size() && std::string_view("bBoOxX").find(src_[p + 1]) != std::string_view::npos) {
            const char k = static_cast<char>(std::tolower(static_cast<unsigned char>(src_[p + 1])));
            const int base = k == 'b' ? 2 : k == 'o' ? 8 : 16;
            size_t e = p + 2;
            while (e < src_.size() && (src_[e] == '_' || std::isxdigit(static_cast<unsigned char>(src_[e])))) ++e;
            const std::string d = clean(src_.substr(p + 2, e - p - 2));
            int64_t v = 0;
            const auto r = std::from_chars(d.data(), d.data() + d.size(), v, base);
            if (d.empty() || r.ec != std::errc() || r.ptr != d.data() + d.size()) error(p, "invalid integer literal");
            tokens_.push_back(Token{Tok::Int, p, {}, v, 0});
            return e;
        }
        size_t e = digits(p, dec);
        bool is_float = false;
        if (!after_dot) {
            size_t q = e;
            if (q + 1 < src_.size() && src_[q] == '.' && dec(src_[q + 1])) {
                q = digits(q + 1, dec);
                is_float = true;
            }
            if (q < src_.size() && (src_[q] == 'e' || src_[q] == 'E')) {
                size_t r = q + 1;
                if (r < src_.size() && (src_[r] == '+' || src_[r] == '-')) ++r;
                if (r < src_.size() && dec(src_[r])) {
                    q = digits(r, dec);
                    is_float = true;
                }
            }
            if (is_float) e = q;
        }
        if (!is_float && src_[p] == '0') {
            // jinja2's integers have no leading zeros: "01" is "0" followed by "1".
            e = p + 1;
            while (e + 1 < src_.size() && (src_[e] == '0' || (src_[e] == '_' && src_[e + 1] == '0'))) ++e;
            if (e < src_.size() && src_[e] == '0') ++e;
        }
        const std::string text = clean(src_.substr(p, e - p));
        if (is_float) {
            tokens_.push_back(Token{Tok::Float, p, {}, 0, std::strtod(text.c_str(), nullptr)});
        } else {
            int64_t v = 0;
            const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
            if (r.ec != std::errc()) error(p, "integer literal out of the 64-bit range");
            tokens_.push_back(Token{Tok::Int, p, {}, v, 0});
        }
        return e;
    }

    // Python string literal escapes (jinja2 decodes literals with "unicode-escape").
    size_t lex_string(size_t p) {
        const char q = src_[p];
        std::string out;
        size_t i = p + 1;
        auto hex = [&](size_t at, int n) -> uint32_t {
            uint32_t v = 0;
            for (int k = 0; k < n; ++k) {
                const size_t j = at + static_cast<size_t>(k);
                if (j >= src_.size() || !std::isxdigit(static_cast<unsigned char>(src_[j])))
                    error(at - 2, "truncated escape sequence in string literal");
                const char ch = static_cast<char>(std::tolower(static_cast<unsigned char>(src_[j])));
                v = v * 16 + static_cast<uint32_t>(ch <= '9' ? ch - '0' : ch - 'a' + 10);
            }
            return v;
        };
        for (;;) {
            if (i >= src_.size()) error(p, "unexpected end of template inside a string literal");
            const char c = src_[i];
            if (c == q) {
                tokens_.push_back(Token{Tok::String, p, std::move(out), 0, 0});
                return i + 1;
            }
            if (c != '\\') {
                out += c;
                ++i;
                continue;
            }
            if (i + 1 >= src_.size()) error(p, "unexpected end of template inside a string literal");
            const char e = src_[i + 1];
            i += 2;
            switch (e) {
                case '\n': break;
                case '\\': out += '\\'; break;
                case '\'': out += '\''; break;
                case '"': out += '"'; break;
                case 'a': out += '\a'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'v': out += '\v'; break;
                case 'x': utf8_append(out, hex(i, 2)); i += 2; break;
                case 'u': utf8_append(out, hex(i, 4)); i += 4; break;
                case 'U': {
                    const uint32_t cp = hex(i, 8);
                    if (cp > 0x10FFFF) error(i - 2, "illegal Unicode character in string literal");
                    utf8_append(out, cp);
                    i += 8;
                    break;
                }
                case 'N': error(i - 2, "\\N{...} escapes are not supported");
                default:
                    if (e >= '0' && e <= '7') {
                        uint32_t v = static_cast<uint32_t>(e - '0');
                        for (int k = 0; k < 2 && i < src_.size() && src_[i] >= '0' && src_[i] <= '7'; ++k, ++i)
                            v = v * 8 + static_cast<uint32_t>(src_[i] - '0');
                        utf8_append(out, v);
                    } else if (static_cast<unsigned char>(e) >= 0x80) {
                        // Python escapes non-ASCII text before decoding the literal, so a
                        // backslash before it yields the escape text ("\\é" -> "\\xe9").
                        size_t len;
                        const uint32_t cp = utf8_decode(src_, i - 1, &len);
                        out += cp < 0x100 ? fmt::format("\\x{:02x}", cp)
                               : cp < 0x10000 ? fmt::format("\\u{:04x}", cp)
                                              : fmt::format("\\U{:08x}", cp);
                        i += len - 1;
                    } else {
                        out += '\\';  // unknown escapes stay as written
                        out += e;
                    }
            }
        }
    }

    std::string_view src_;
    const Options& opts_;
    size_t pos_ = 0;
    bool line_starting_ = true;
    std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> tokenize(std::string_view src, const Options& opts) { return Lexer(src, opts).run(); }

}  // namespace kiln::jinja
