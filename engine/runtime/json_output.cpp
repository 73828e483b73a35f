// Output that parses as JSON matching a schema (runtime/json_output.h): the schema becomes a plan,
// text the schema fixes (braces, keys, separators, constants) is forced; values are sampled with
// every token that could break the JSON masked.
#include "runtime/json_output.h"

#include <algorithm>
#include <limits>

#include <nlohmann/json.hpp>

#include "kiln/error.h"

namespace kiln {

namespace {

// The schema's keys in the order written (properties are generated in that order).
using json = nlohmann::ordered_json;

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
        const auto props = s.find("properties");
        const bool has_props = props != s.end() && props->is_object();
        if (has_props)
            for (const auto& [name, sub] : props->items()) {
                add_forced(out, (first ? "" : ", ") + json(name).dump() + ": ");
                first = false;
                plan(sub, depth + 1, out);
            }
        // Required names without a property schema: present all the same, as strings.
        if (auto req = s.find("required"); req != s.end() && req->is_array())
            for (const auto& name : *req) {
                if (!name.is_string() || (has_props && props->contains(name.get<std::string>()))) continue;
                add_forced(out, (first ? "" : ", ") + name.dump() + ": ");
                first = false;
                plan(json{{"type", "string"}}, depth + 1, out);
            }
        add_forced(out, "}");
    } else if (type == "array") {
        const auto items = s.find("items");
        auto count = [&](const char* key, int64_t dflt) {
            const auto it = s.find(key);
            return it != s.end() && it->is_number_integer() ? it->get<int64_t>() : dflt;
        };
        constexpr int64_t kMaxItems = 16;  // a bound on what a schema can ask for
        const int64_t n = std::min({std::max<int64_t>(1, count("minItems", 1)), count("maxItems", kMaxItems), kMaxItems});
        if (items == s.end() || !items->is_object() || n <= 0) return add_forced(out, "[]");
        add_forced(out, "[");
        for (int64_t i = 0; i < n; ++i) {
            if (i > 0) add_forced(out, ", ");
            plan(*items, depth + 1, out);
        }
        add_forced(out, "]");
    } else if (type == "integer" || type == "number") {
        out.push_back(JsonPiece{JsonPiece::Number, {}, {}});
    } else if (type == "boolean") {
        out.push_back(JsonPiece{JsonPiece::Choice, {}, {"true", "false"}});
    } else if (type == "null") {
        add_forced(out, "null");
    } else {  // "string" or no type: a string
        add_forced(out, "\"");
        JsonPiece p{JsonPiece::String, {}, {}};
        if (auto it = s.find("maxLength"); it != s.end() && it->is_number_integer()) p.max_chars = std::max<int64_t>(0, it->get<int64_t>());
        out.push_back(std::move(p));
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

std::vector<JsonPiece> plan_json(std::string_view schema_json) {
    const json schema = json::parse(schema_json, nullptr, /*allow_exceptions=*/false);
    if (schema.is_discarded()) throw Error("the JSON schema is not valid JSON");
    if (!schema.is_object()) throw Error("the JSON schema must be an object");
    std::vector<JsonPiece> out;
    plan(schema, 0, out);
    return out;
}

JsonVocab JsonVocab::build(const Tokenizer& tok) {
    JsonVocab v;
    const int32_t n = tok.n_vocab();
    v.string_safe.assign(static_cast<size_t>(n), 0);
    v.n_chars.assign(static_cast<size_t>(n), 0);
    v.digit.fill(-1);
    for (int32_t id = 0; id < n; ++id) {
        if (tok.is_eog(id) || tok.is_control(id)) continue;
        const std::string piece = tok.token_to_piece(id, /*special=*/false);
        v.string_safe[static_cast<size_t>(id)] = safe_in_json_string(piece) ? 1 : 0;
        size_t chars = 0;
        for (unsigned char ch : piece) chars += (ch & 0xc0) != 0x80;
        v.n_chars[static_cast<size_t>(id)] = static_cast<uint8_t>(std::min<size_t>(chars, 255));
        if (piece.size() == 1 && piece[0] >= '0' && piece[0] <= '9' && v.digit[static_cast<size_t>(piece[0] - '0')] < 0)
            v.digit[static_cast<size_t>(piece[0] - '0')] = id;
        if (piece == "\"" && v.quote < 0) v.quote = id;
    }
    return v;
}

JsonSteps::JsonSteps(std::vector<JsonPiece> plan, const JsonVocab& vocab, const Tokenizer& tok)
    : plan_(std::move(plan)), v_(vocab), tok_(tok) {}

void JsonSteps::advance() {
    ++piece_;
    n_ = 0;
    used_ = 0;
    seqs_.clear();
    alive_.clear();
}

int32_t JsonSteps::sample(std::span<const float> logits, Sampler& sampler, const auto& allowed) {
    masked_.assign(logits.begin(), logits.end());
    for (size_t i = 0; i < masked_.size(); ++i)
        if (!allowed(static_cast<int32_t>(i))) masked_[i] = -std::numeric_limits<float>::infinity();
    return sampler.sample(masked_);
}

bool JsonSteps::next(std::span<const float> logits, Sampler& sampler, std::vector<int32_t>& tokens, std::string& text) {
    constexpr int kMaxStringTokens = 48;
    constexpr int kMaxDigits = 4;
    const auto n_tok = static_cast<int32_t>(v_.string_safe.size());
    tokens.clear();
    text.clear();
    auto force = [&](const std::string& t) {
        tokens = tok_.encode(t, false, false);
        text = t;
        advance();
        return true;
    };
    while (piece_ < plan_.size()) {
        const JsonPiece& piece = plan_[piece_];
        switch (piece.kind) {
            case JsonPiece::Forced: return force(piece.text);
            case JsonPiece::String: {
                if (v_.quote < 0) return force("\"");  // no '"' token: close the string at once
                auto chars = [&](int32_t id) { return static_cast<int64_t>(v_.n_chars[static_cast<size_t>(id)]); };
                const int64_t left = piece.max_chars < 0 ? -1 : piece.max_chars - used_;
                const int n = n_;
                const int32_t t = n >= kMaxStringTokens || left == 0 ? v_.quote : sample(logits, sampler, [&](int32_t id) {
                    if (id == v_.quote) return n > 0 || piece.max_chars == 0;
                    return id < n_tok && v_.string_safe[static_cast<size_t>(id)] && (left < 0 || chars(id) <= left);
                });
                tokens = {t};
                if (t == v_.quote) {
                    text = "\"";
                    advance();
                } else {
                    used_ += chars(t);
                    text = tok_.token_to_piece(t, false);
                    ++n_;
                }
                return true;
            }
            case JsonPiece::Number: {
                // A first digit 1-9, then more digits (up to kMaxDigits) while the model's own
                // most likely next token is a digit.
                auto is_digit = [&](int32_t id, int from) {
                    for (int d = from; d <= 9; ++d)
                        if (id == v_.digit[static_cast<size_t>(d)]) return true;
                    return false;
                };
                bool any = false;
                for (int d = 1; d <= 9; ++d) any = any || v_.digit[static_cast<size_t>(d)] >= 0;
                if (!any) return force("0");
                if (n_ >= kMaxDigits) {
                    advance();
                    continue;
                }
                if (n_ > 0) {
                    const auto top = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
                    if (!is_digit(top, 0)) {
                        advance();
                        continue;
                    }
                }
                const int from = n_ == 0 ? 1 : 0;
                const int32_t t = sample(logits, sampler, [&](int32_t id) { return is_digit(id, from); });
                tokens = {t};
                text = tok_.token_to_piece(t, false);
                ++n_;
                return true;
            }
            case JsonPiece::Choice: {
                if (n_ == 0 && seqs_.empty()) {
                    for (const auto& c : piece.choices) seqs_.push_back(tok_.encode(c, false, false));
                    for (size_t i = 0; i < seqs_.size(); ++i) alive_.push_back(i);
                }
                const auto pos = static_cast<size_t>(n_);
                // One choice left, or one that ends here: force the rest of it (its whole text is
                // released then; the tokens sampled before carry none).
                size_t done = seqs_.size();
                for (size_t a : alive_)
                    if (seqs_[a].size() == pos) done = a;
                if (alive_.size() == 1) done = alive_[0];
                if (done < seqs_.size()) {
                    tokens.assign(seqs_[done].begin() + static_cast<std::ptrdiff_t>(pos), seqs_[done].end());
                    text = piece.choices[done];
                    advance();
                    return true;
                }
                const int32_t t = sample(logits, sampler, [&](int32_t id) {
                    for (size_t a : alive_)
                        if (seqs_[a][pos] == id) return true;
                    return false;
                });
                std::erase_if(alive_, [&](size_t a) { return seqs_[a][pos] != t; });
                tokens = {t};
                ++n_;
                return true;
            }
        }
    }
    return false;
}

}  // namespace kiln
