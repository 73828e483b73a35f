// BPE pre-tokenizer: splits text into words with a sequence of PCRE2 regexes (UTF + UCP + JIT).
// Internal to the tokenizer.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln::tok {

// What a tokenizer.ggml.pre value selects.
struct PreTokenizerSpec {
    std::string name;                 // canonical name, e.g. "llama3"
    std::vector<std::string> regexes;  // applied in order; each splits the pieces of the previous one
    bool ignore_merges = false;       // look a whole word up in the vocab before merging (llama3)
    bool add_bos = false;             // llama.cpp's default for add_bos_token when the key is absent
    bool clear_bos = false;           // the pre-tokenizer has no BOS by default (glm4)
};

// Looks up a tokenizer.ggml.pre value; nullptr when unknown.
const PreTokenizerSpec* find_pre_tokenizer(std::string_view pre);
// Comma-separated list of the supported values, for error messages.
std::string supported_pre_tokenizers();

// A half-open byte range [begin, end) of the text.
using Span = std::pair<size_t, size_t>;

class PreTokenizer {
public:
    // Compiles the spec's regexes; throws kiln::Error (naming `pre` and the regex) on failure.
    explicit PreTokenizer(const PreTokenizerSpec& spec);
    ~PreTokenizer();
    PreTokenizer(const PreTokenizer&) = delete;
    PreTokenizer& operator=(const PreTokenizer&) = delete;

    // Splits valid UTF-8 `text` into words (byte ranges that tile the text, in order). As in
    // llama.cpp, text a regex does not match is kept as words of its own. Thread-safe.
    void split(std::string_view text, std::vector<Span>& out) const;

private:
    struct Regex;
    std::vector<std::unique_ptr<Regex>> regexes_;
    std::string name_;
};

// Replaces every byte that is not part of a well-formed UTF-8 sequence by U+FFFD, as llama.cpp's
// BPE path does. Returns true (and fills `out`) only when something had to be replaced.
bool sanitize_utf8(std::string_view text, std::string& out);

}  // namespace kiln::tok
