// Output forced to parse as JSON matching a schema (GenerateOptions::json_schema; kiln serve's
// Anthropic output_config.format and OpenAI response_format). The schema becomes a plan of pieces:
// text it fixes (Forced) and values sampled under a mask (String: the characters of a JSON string,
// then its closing quote; Number: digits; Choice: one of the texts, e.g. an enum). JsonSteps walks
// the plan one step at a time, so the one per-sequence step (runtime/sequence.h) runs it.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/sampler.h"
#include "kiln/tokenizer.h"

namespace kiln {

struct JsonPiece {
    enum Kind { Forced, String, Number, Choice } kind = Forced;
    std::string text;                  // Forced
    std::vector<std::string> choices;  // Choice
    int64_t max_chars = -1;            // String: the schema's maxLength (characters), -1: none
};

// Objects: every property in the schema's order, then required names the properties do not list;
// arrays: minItems items (at least 1, at most maxItems); strings: at most maxLength characters.
// Throws kiln::Error when the text is not JSON or the schema is not an object.
std::vector<JsonPiece> plan_json(std::string_view schema_json);

// Which tokens may be sampled inside JSON values (built once per tokenizer).
struct JsonVocab {
    std::vector<uint8_t> string_safe;  // whole UTF-8, nothing to escape: may appear in a string
    std::vector<uint8_t> n_chars;      // UTF-8 characters of each token's text (at most 255)
    std::array<int32_t, 10> digit{};   // the token of each digit (-1 if none)
    int32_t quote = -1;                // the token of '"'
    static JsonVocab build(const Tokenizer& tok);
};

// The plan, step by step: each next() gives the tokens that follow (forced text, or one token
// sampled from the logits under the piece's mask) and the text they add.
class JsonSteps {
public:
    JsonSteps(std::vector<JsonPiece> plan, const JsonVocab& vocab, const Tokenizer& tok);
    // false: the plan is complete (nothing more to generate).
    bool next(std::span<const float> logits, Sampler& sampler, std::vector<int32_t>& tokens, std::string& text);

private:
    int32_t sample(std::span<const float> logits, Sampler& sampler, const auto& allowed);
    void advance();
    std::vector<JsonPiece> plan_;
    const JsonVocab& v_;
    const Tokenizer& tok_;
    size_t piece_ = 0;
    int n_ = 0;         // String: tokens so far; Number: digits so far; Choice: tokens matched so far
    int64_t used_ = 0;  // String: characters so far
    std::vector<std::vector<int32_t>> seqs_;  // Choice: each choice's tokens
    std::vector<size_t> alive_;               // Choice: those that still match
    std::vector<float> masked_;
};

}  // namespace kiln
