// Tokenizer for GGUF vocabularies: SentencePiece-style BPE with byte fallback
// (tokenizer.ggml.model = "llama") and GPT-2 byte-level BPE with merges ("gpt2"), with the
// pre-tokenizer regexes selected by tokenizer.ggml.pre. Behaviour follows llama.cpp's tokenizer,
// which is what GGUF files are made for: the same ids for the same text.
//
// kiln public API. Built from metadata only, so it works on vocab-only files as well as on full models. The
// Tokenizer is immutable after construction; encode/decode are const and safe to call from
// several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

namespace gguf {
class File;
}

using TokenId = int32_t;
inline constexpr TokenId kNoToken = -1;

// GGUF token types (tokenizer.ggml.token_type).
enum class TokenType : int32_t {
    UNDEFINED = 0, NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6,
};

// Token attributes as bit flags (one token may carry several, e.g. CONTROL | UNUSED).
namespace token_attr {
inline constexpr uint32_t UNDEFINED = 0;
inline constexpr uint32_t UNKNOWN = 1u << 0;
inline constexpr uint32_t UNUSED = 1u << 1;
inline constexpr uint32_t NORMAL = 1u << 2;
inline constexpr uint32_t CONTROL = 1u << 3;
inline constexpr uint32_t USER_DEFINED = 1u << 4;
inline constexpr uint32_t BYTE = 1u << 5;
}  // namespace token_attr

enum class VocabType { SPM, BPE };

struct DecodeOptions {
    // Drop a leading BOS and a trailing EOS when the vocab adds them (llama.cpp's remove_special).
    bool remove_special = false;
    // Render control/unknown tokens as their text (e.g. "<|im_end|>"); when false they render as "".
    bool unparse_special = true;
};

class Tokenizer {
public:
    // The tokenizer of a GGUF file (a model or a vocab-only file), without loading any weights;
    // a loaded model has its own (Model::tokenizer()). Throws kiln::Error naming the file and the
    // key when the metadata is missing, malformed, or uses an unsupported model / pre-tokenizer.
    static Tokenizer from_file(const std::string& gguf_path);
    // The same from an opened file (engine-internal: gguf::File is no public type).
    explicit Tokenizer(const gguf::File& file);
    ~Tokenizer();
    Tokenizer(Tokenizer&&) noexcept;
    Tokenizer& operator=(Tokenizer&&) noexcept;
    Tokenizer(const Tokenizer&) = delete;
    Tokenizer& operator=(const Tokenizer&) = delete;

    // Text to ids. add_special: add BOS / EOS as the vocab asks (tokenizer.ggml.add_bos_token /
    // add_eos_token, llama.cpp's defaults when absent). parse_special: recognise the text of control
    // tokens (e.g. "<|im_start|>") in the input as single tokens; user-defined tokens are always
    // recognised, as in llama.cpp / HF tokenizers. Invalid UTF-8 is tokenized as U+FFFD (BPE) or as
    // byte-fallback tokens (SPM).
    std::vector<TokenId> encode(std::string_view text, bool add_special, bool parse_special) const;

    // Ids to text (bytes; may be invalid UTF-8 if the ids split a character). For SPM vocabs with
    // add_space_prefix, the space the encoder prefixed is removed from the first token, so
    // decode(encode(s)) == s. Throws kiln::Error on an id outside [0, n_vocab).
    std::string decode(std::span<const TokenId> ids, const DecodeOptions& opts = {}) const;

    // The bytes one token stands for. special=false renders control/unknown tokens as "".
    std::string token_to_piece(TokenId id, bool special = true) const;

    // ---- vocab ----
    VocabType type() const;
    const std::string& model() const;  // tokenizer.ggml.model: "llama" or "gpt2"
    const std::string& pre() const;    // tokenizer.ggml.pre ("default" when absent; "" for SPM)
    int32_t n_vocab() const;
    const std::string& token_text(TokenId id) const;  // the raw vocab string ("Ġthe", "▁the", "<0x0A>")
    float token_score(TokenId id) const;
    uint32_t token_attrs(TokenId id) const;  // token_attr:: flags
    bool is_control(TokenId id) const;
    bool is_user_defined(TokenId id) const;
    bool is_byte(TokenId id) const;
    bool is_eog(TokenId id) const;  // ends generation: EOS, EOT, EOM and the model's end-of-turn tokens
    TokenId find_token(std::string_view text) const;  // exact vocab string, kNoToken when absent

    // Special ids; kNoToken when the vocab has none.
    TokenId bos() const;
    TokenId eos() const;
    TokenId eot() const;
    TokenId eom() const;
    TokenId pad() const;
    TokenId unk() const;
    TokenId linefeed() const;
    const std::vector<TokenId>& eog_ids() const;
    bool add_bos() const;
    bool add_eos() const;
    bool add_space_prefix() const;

private:
    friend class Detokenizer;
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Streaming detokenizer: push ids one at a time and get back only complete UTF-8 characters; an
// incomplete multi-byte sequence (e.g. from SPM byte-fallback tokens <0xE2><0x80><0x9C>, or a BPE
// token that ends mid-character) is held until the bytes that complete it arrive. Bytes that can
// never form a valid character are passed through rather than held, so the concatenation of every
// push() and flush() equals Tokenizer::decode() of the same ids.
class Detokenizer {
public:
    explicit Detokenizer(const Tokenizer& tok, const DecodeOptions& opts = {});
    std::string push(TokenId id);
    std::string flush();  // returns whatever is held (possibly an incomplete sequence) and resets
    void reset();
    size_t pending() const { return held_.size(); }

private:
    const Tokenizer* tok_;
    DecodeOptions opts_;
    std::string held_;
    bool first_ = true;
    bool bos_skipped_ = false;
    TokenId pending_eos_ = kNoToken;  // with remove_special, a trailing EOS is held back
};

// Length of the longest prefix of `s` that does not end in an incomplete UTF-8 sequence.
size_t utf8_complete_prefix(std::string_view s);

}  // namespace kiln
