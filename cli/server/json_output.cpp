// kiln serve: output that parses as JSON matching a schema (Anthropic output_config.format, OpenAI
// response_format). The schema becomes a plan: text the schema fixes (braces, keys, separators,
// constants) is forced; values are sampled with every token that could break the JSON masked.
#include <algorithm>

#include <fmt/format.h>

#include "cli/server/server.h"

namespace kiln::serve {

namespace {

void add_forced(std::vector<JsonPiece>& out, const std::string& text) {
    if (!out.empty() && out.back().kind == JsonPiece::Forced) out.back().text += text;
    else out.push_back(JsonPiece{JsonPiece::Forced, text, {}});
}

std::string first_type(const json& s) {
    const auto it = s.find("type");
    if (it == s.end()) return s.contains("properties") ? "object" : s.contains("items") ? "array" : "";
    if (it->is_string()) return it->get<std::string>();
    if (it->is_array())  // ["string", "null"]: the first that is not null
        for (const auto& t : *it)
            if (t.is_string() && t.get<std::string>() != "null") return t.get<std::string>();
    return "";
}

void plan(const json& s, int depth, std::vector<JsonPiece>& out) {
    if (depth > 16 || !s.is_object()) {
        add_forced(out, "null");
        return;
    }
    for (const char* k : {"anyOf", "oneOf", "allOf"})
        if (auto it = s.find(k); it != s.end() && it->is_array() && !it->empty()) return plan((*it)[0], depth + 1, out);
    if (auto it = s.find("const"); it != s.end()) return add_forced(out, it->dump());
    if (auto it = s.find("enum"); it != s.end() && it->is_array() && !it->empty()) {
        JsonPiece p{JsonPiece::Choice, {}, {}};
        for (const auto& v : *it) p.choices.push_back(v.dump());
        out.push_back(std::move(p));
        return;
    }
    const std::string type = first_type(s);
    if (type == "object") {
        add_forced(out, "{");
        bool first = true;
        if (auto props = s.find("properties"); props != s.end() && props->is_object())
            for (const auto& [name, sub] : props->items()) {
                add_forced(out, (first ? "" : ", ") + json(name).dump() + ": ");
                first = false;
                plan(sub, depth + 1, out);
            }
        add_forced(out, "}");
    } else if (type == "array") {
        const auto items = s.find("items");
        if (items == s.end() || !items->is_object()) return add_forced(out, "[]");
        add_forced(out, "[");
        plan(*items, depth + 1, out);
        add_forced(out, "]");
    } else if (type == "integer" || type == "number") {
        out.push_back(JsonPiece{JsonPiece::Number, {}, {}});
    } else if (type == "boolean") {
        out.push_back(JsonPiece{JsonPiece::Choice, {}, {"true", "false"}});
    } else if (type == "null") {
        add_forced(out, "null");
    } else {  // "string" or no type: a string
        add_forced(out, "\"");
        out.push_back(JsonPiece{JsonPiece::String, {}, {}});
    }
}

// Whole, valid UTF-8 with no character that needs escaping in a JSON string.
bool safe_in_json_string(const std::string& s) {
    if (s.empty()) return false;
    for (size_t i = 0; i < s.size();) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x20 || c == '"' || c == '\\' || c == 0x7f) return false;
        const size_t n = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : 4;
        if (n == 4 || i + n > s.size() - 1) return false;  // not a lead byte, or cut short
        for (size_t k = 1; k <= n; ++k)
            if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return false;
        i += n + 1;
    }
    return true;
}

}  // namespace

std::vector<JsonPiece> plan_json(const json& schema) {
    if (!schema.is_object()) throw bad_request("the JSON schema must be an object");
    std::vector<JsonPiece> out;
    plan(schema, 0, out);
    return out;
}

JsonVocab JsonVocab::build(const Tokenizer& tok) {
    JsonVocab v;
    const int32_t n = tok.n_vocab();
    v.string_safe.assign(static_cast<size_t>(n), 0);
    v.digit.fill(-1);
    for (int32_t id = 0; id < n; ++id) {
        if (tok.is_eog(id) || tok.is_control(id)) continue;
        const std::string piece = tok.token_to_piece(id, /*special=*/false);
        v.string_safe[static_cast<size_t>(id)] = safe_in_json_string(piece) ? 1 : 0;
        if (piece.size() == 1 && piece[0] >= '0' && piece[0] <= '9' && v.digit[static_cast<size_t>(piece[0] - '0')] < 0)
            v.digit[static_cast<size_t>(piece[0] - '0')] = id;
        if (piece == "\"" && v.quote < 0) v.quote = id;
    }
    return v;
}

}  // namespace kiln::serve
