#include "kiln/tokenizer.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <queue>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>

#include "gguf/gguf.h"
#include "kiln/error.h"
#include "tokenizer/pretokenizer.h"

namespace kiln {

namespace {

constexpr const char* kSpaceEscape = "\xE2\x96\x81";  // U+2581 '▁', SentencePiece's space

// ---- GPT-2 byte <-> unicode mapping ----------------------------------------------------------
// Byte-level BPE vocabularies spell each byte as one printable code point: bytes that are
// printable Latin-1 ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves, the other 68 bytes map,
// in byte order, to U+0100, U+0101, ...
struct ByteMap {
    std::array<std::string, 256> byte_to_utf8;
    std::array<int16_t, 324> cp_to_byte;  // code points 0..323; -1 when not a byte's code point
    ByteMap() {
        cp_to_byte.fill(-1);
        auto printable = [](int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
        int extra = 0;
        for (int b = 0; b < 256; ++b) {
            const int cp = printable(b) ? b : 256 + extra++;
            std::string s;
            if (cp < 0x80) {
                s.push_back(static_cast<char>(cp));
            } else {
                s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
                s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
            }
            byte_to_utf8[b] = std::move(s);
            cp_to_byte[cp] = static_cast<int16_t>(b);
        }
    }
};

const ByteMap& byte_map() {
    static const ByteMap m;
    return m;
}

// Decodes the code point at s[i] (any lead byte; no validation beyond bounds). Returns its length.
size_t decode_cp(std::string_view s, size_t i, uint32_t& cp) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if (c >= 0x80 && c < 0xC0) n = 1;
    if (i + n > s.size()) n = s.size() - i;
    cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    return n;
}

// Bytes of one UTF-8 character as SentencePiece/llama.cpp split text: the length comes from the
// lead byte alone (a stray continuation byte counts as one character).
size_t utf8_len_from_lead(unsigned char c) {
    static constexpr uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[c >> 4];
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
    if (from.empty()) return;
    std::string out;
    out.reserve(s.size());
    size_t pos = 0;
    for (;;) {
        const size_t hit = s.find(from, pos);
        if (hit == std::string::npos) break;
        out.append(s, pos, hit - pos);
        out.append(to);
        pos = hit + from.size();
    }
    if (pos == 0) return;
    out.append(s, pos, std::string::npos);
    s.swap(out);
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// "<0xAB>" -> 0xAB, or -1.
int parse_byte_token(std::string_view t) {
    if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
    const int hi = hex_value(t[3]), lo = hex_value(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

uint32_t attr_from_type(int64_t type) {
    switch (type) {
        case 1: return token_attr::NORMAL;
        case 2: return token_attr::UNKNOWN;
        case 3: return token_attr::CONTROL;
        case 4: return token_attr::USER_DEFINED;
        case 5: return token_attr::UNUSED;
        case 6: return token_attr::BYTE;
        default: return token_attr::UNDEFINED;
    }
}

// A fragment of the input after special-token partitioning: raw text, or one token.
struct Fragment {
    TokenId token;  // kNoToken for raw text
    size_t begin, end;
};

}  // namespace

// =============================================================================================
struct Tokenizer::Impl {
    std::string path;
    VocabType type = VocabType::SPM;
    std::string model, pre;

    std::vector<std::string> texts;
    std::vector<float> scores;
    std::vector<uint32_t> attrs;
    std::unordered_map<std::string_view, TokenId> text_to_id;  // views into `texts`
    std::vector<std::string> pieces;                           // token_to_piece(id, special=true)

    TokenId bos = kNoToken, eos = kNoToken, eot = kNoToken, eom = kNoToken, pad = kNoToken,
            unk = kNoToken, linefeed = kNoToken;
    std::vector<TokenId> eog;
    std::vector<uint8_t> eog_flag;
    bool add_bos = false, add_eos = false, add_space_prefix = false, ignore_merges = false;

    // ---- special tokens (CONTROL | USER_DEFINED | UNKNOWN), recognised before tokenizing -----
    // A byte trie over their texts. rank orders tokens as llama.cpp tries them: longer first.
    struct Special {
        TokenId id;
        uint32_t rank;
        bool needs_parse_special;  // CONTROL or UNKNOWN: only with parse_special
    };
    std::vector<Special> specials;
    std::array<int32_t, 256> trie_root{};                  // child of the root per byte, -1 none
    std::unordered_map<uint64_t, int32_t> trie_children;   // (node << 8 | byte) -> node
    std::vector<int32_t> trie_terminal;                    // node -> index into specials, -1 none

    // ---- SPM ----
    std::array<TokenId, 256> byte_tokens{};  // <0xXX> tokens (or the single-byte token)

    // ---- BPE ----
    std::unique_ptr<tok::PreTokenizer> pretok;
    // Symbol ids: token ids, plus ids >= n_vocab for strings that appear in merges but are not
    // tokens. Merges are keyed by (left symbol, right symbol).
    struct Merge {
        int32_t rank;
        int32_t result;  // symbol id of left+right, -1 if it is neither a token nor a merge part
    };
    std::unordered_map<uint64_t, Merge> merges;
    std::array<int32_t, 256> byte_symbol{};  // symbol of each byte's code point, -1 none

    int32_t n_vocab() const { return static_cast<int32_t>(texts.size()); }

    void check_id(TokenId id) const {
        if (id < 0 || id >= n_vocab())
            throw Error(fmt::format("token id {} is out of range: the vocab of {} has {} tokens (0..{})", id, path,
                                    n_vocab(), n_vocab() - 1));
    }
    TokenId lookup(std::string_view s) const {
        auto it = text_to_id.find(s);
        return it == text_to_id.end() ? kNoToken : it->second;
    }

    void load(const gguf::File& f);
    void load_bpe_merges(const gguf::File& f);
    void detect_special_tokens(const gguf::File& f);
    void build_special_trie();
    std::string compute_piece(TokenId id) const;

    std::vector<Fragment> partition(std::string_view text, bool parse_special) const;
    void encode_spm(std::string_view text, std::vector<TokenId>& out) const;
    void encode_bpe(std::string_view text, std::vector<TokenId>& out) const;
    void bpe_word(std::string_view word, std::vector<TokenId>& out, std::string& scratch) const;
};

// ---- loading ---------------------------------------------------------------------------------

void Tokenizer::Impl::load(const gguf::File& f) {
    path = f.path();
    const gguf::Value* model_v = f.find("tokenizer.ggml.model");
    if (!model_v)
        throw Error(fmt::format("{}: no tokenizer (metadata key 'tokenizer.ggml.model' is missing)", path));
    if (!model_v->is_string())
        throw Error(fmt::format("{}: 'tokenizer.ggml.model' must be a string, found {}", path,
                                gguf::value_type_name(model_v->type())));
    model = model_v->as_string();
    if (model == "llama") {
        type = VocabType::SPM;
    } else if (model == "gpt2") {
        type = VocabType::BPE;
    } else {
        throw Error(fmt::format("{}: tokenizer model '{}' (tokenizer.ggml.model) is not supported; kiln supports "
                                "'llama' (SentencePiece BPE with byte fallback) and 'gpt2' (byte-level BPE)",
                                path, model));
    }

    // ---- token list ----
    const gguf::Value* tokens_v = f.find("tokenizer.ggml.tokens");
    if (!tokens_v) throw Error(fmt::format("{}: tokenizer metadata 'tokenizer.ggml.tokens' is missing", path));
    if (!tokens_v->is_array() || tokens_v->array_type() != gguf::ValueType::STRING)
        throw Error(fmt::format("{}: 'tokenizer.ggml.tokens' must be an array of strings", path));
    texts = tokens_v->as_string_array();
    if (texts.empty()) throw Error(fmt::format("{}: 'tokenizer.ggml.tokens' is empty", path));
    if (texts.size() > static_cast<size_t>(INT32_MAX))
        throw Error(fmt::format("{}: 'tokenizer.ggml.tokens' has {} entries, more than token ids can hold", path,
                                texts.size()));
    const size_t n = texts.size();
    for (size_t i = 0; i < n; ++i)
        if (texts[i].empty()) texts[i] = fmt::format("[EMPTY_{}]", i);  // as llama.cpp names them

    scores.assign(n, 0.0f);
    if (const gguf::Value* v = f.find("tokenizer.ggml.scores")) {
        if (!v->is_array()) throw Error(fmt::format("{}: 'tokenizer.ggml.scores' must be an array", path));
        std::vector<float> s = v->as_float_array();
        if (s.size() < n)
            throw Error(fmt::format("{}: 'tokenizer.ggml.scores' has {} entries for {} tokens", path, s.size(), n));
        std::copy_n(s.begin(), n, scores.begin());
    }
    attrs.assign(n, token_attr::NORMAL);
    if (const gguf::Value* v = f.find("tokenizer.ggml.token_type")) {
        if (!v->is_array()) throw Error(fmt::format("{}: 'tokenizer.ggml.token_type' must be an array", path));
        std::vector<int64_t> t = v->as_int_array();
        if (t.size() < n)
            throw Error(fmt::format("{}: 'tokenizer.ggml.token_type' has {} entries for {} tokens", path, t.size(), n));
        for (size_t i = 0; i < n; ++i) attrs[i] = attr_from_type(t[i]);
    }

    text_to_id.reserve(n * 2);
    for (size_t i = 0; i < n; ++i) {
        auto [it, inserted] = text_to_id.emplace(std::string_view(texts[i]), static_cast<TokenId>(i));
        if (!inserted)
            throw Error(fmt::format("{}: duplicate token in the vocabulary: '{}' has ids {} and {}", path, texts[i],
                                    it->second, i));
    }

    // ---- type-specific defaults (llama.cpp's) ----
    std::optional<TokenId> default_bos, default_eos, default_unk;
    if (type == VocabType::SPM) {
        default_bos = 1;
        default_eos = 2;
        default_unk = 0;
        add_space_prefix = true;
        add_bos = true;
        add_eos = false;
        pre = f.get_string_or("tokenizer.ggml.pre", "");
    } else {
        const gguf::Value* pre_v = f.find("tokenizer.ggml.pre");
        if (pre_v && !pre_v->is_string())
            throw Error(fmt::format("{}: 'tokenizer.ggml.pre' must be a string", path));
        pre = pre_v ? pre_v->as_string() : "default";
        const tok::PreTokenizerSpec* spec = tok::find_pre_tokenizer(pre);
        if (!spec)
            throw Error(fmt::format("{}: pre-tokenizer '{}' (tokenizer.ggml.pre) is not supported; kiln knows: {}", path,
                                    pre, tok::supported_pre_tokenizers()));
        add_space_prefix = false;
        ignore_merges = spec->ignore_merges;
        add_bos = spec->add_bos;
        add_eos = false;
        pretok = std::make_unique<tok::PreTokenizer>(*spec);
        if (spec->clear_bos) default_bos.reset();
        load_bpe_merges(f);
    }
    add_space_prefix = f.get_bool_or("tokenizer.ggml.add_space_prefix", add_space_prefix);

    // ---- special ids ----
    auto special_id = [&](const char* key, std::optional<TokenId> fallback) -> TokenId {
        TokenId id = fallback && *fallback < static_cast<TokenId>(n) ? *fallback : kNoToken;
        if (const gguf::Value* v = f.find(key)) {
            if (!v->is_integer()) throw Error(fmt::format("{}: '{}' must be an integer", path, key));
            const int64_t x = v->as_int();
            if (x >= 0 && x < static_cast<int64_t>(n)) id = static_cast<TokenId>(x);  // else: keep the default
        }
        return id;
    };
    bos = special_id("tokenizer.ggml.bos_token_id", default_bos);
    eos = special_id("tokenizer.ggml.eos_token_id", default_eos);
    unk = special_id("tokenizer.ggml.unknown_token_id", default_unk);
    pad = special_id("tokenizer.ggml.padding_token_id", std::nullopt);
    eot = special_id("tokenizer.ggml.eot_token_id", std::nullopt);
    eom = special_id("tokenizer.ggml.eom_token_id", std::nullopt);

    add_bos = f.get_bool_or("tokenizer.ggml.add_bos_token", add_bos);
    add_eos = f.get_bool_or("tokenizer.ggml.add_eos_token", add_eos);
    if (add_bos && bos == kNoToken)
        throw Error(fmt::format("{}: tokenizer.ggml.add_bos_token is true, but tokenizer.ggml.bos_token_id is not set",
                                path));
    if (add_eos && eos == kNoToken)
        throw Error(fmt::format("{}: tokenizer.ggml.add_eos_token is true, but tokenizer.ggml.eos_token_id is not set",
                                path));

    detect_special_tokens(f);

    // ---- byte tokens (SPM byte fallback) ----
    byte_tokens.fill(kNoToken);
    for (int b = 0; b < 256; ++b) {
        TokenId id = lookup(fmt::format("<0x{:02X}>", b));
        if (id == kNoToken) id = lookup(std::string(1, static_cast<char>(b)));
        byte_tokens[b] = id;
    }

    pieces.resize(n);
    for (size_t i = 0; i < n; ++i) pieces[i] = compute_piece(static_cast<TokenId>(i));

    build_special_trie();

    // newline token, for callers that need one
    if (type == VocabType::SPM) {
        linefeed = byte_tokens['\n'];
    } else {
        std::vector<TokenId> ids;
        encode_bpe("\n", ids);
        linefeed = ids.empty() ? kNoToken : ids[0];
    }
}

void Tokenizer::Impl::load_bpe_merges(const gguf::File& f) {
    const gguf::Value* v = f.find("tokenizer.ggml.merges");
    if (!v)
        throw Error(fmt::format("{}: a 'gpt2' tokenizer needs 'tokenizer.ggml.merges', which is missing", path));
    if (!v->is_array() || v->array_type() != gguf::ValueType::STRING)
        throw Error(fmt::format("{}: 'tokenizer.ggml.merges' must be an array of strings", path));
    const gguf::Value::Array& arr = v->as_array();

    // Symbol ids for merge parts that are not tokens.
    std::unordered_map<std::string, int32_t> extra;
    int32_t next_sym = n_vocab();
    auto symbol_of = [&](std::string_view s, bool create) -> int32_t {
        if (TokenId id = lookup(s); id != kNoToken) return id;
        auto it = extra.find(std::string(s));
        if (it != extra.end()) return it->second;
        if (!create) return -1;
        extra.emplace(std::string(s), next_sym);
        return next_sym++;
    };

    struct Parsed {
        int32_t left, right;
        std::string joined;
    };
    std::vector<Parsed> parsed;
    parsed.reserve(arr.size());
    for (const gguf::Value& m : arr) {
        const std::string& s = m.as_string();
        const size_t sp = s.find(' ', 1);  // a part may itself be " " only in the first position
        if (sp == std::string::npos || sp + 1 > s.size()) {
            parsed.push_back({-1, -1, {}});
            continue;
        }
        const std::string_view a(s.data(), sp), b(s.data() + sp + 1, s.size() - sp - 1);
        parsed.push_back({symbol_of(a, true), symbol_of(b, true), std::string(a) + std::string(b)});
    }
    merges.reserve(parsed.size() * 2);
    for (size_t r = 0; r < parsed.size(); ++r) {
        const Parsed& p = parsed[r];
        if (p.left < 0 || p.right < 0) continue;
        const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(p.left)) << 32) | static_cast<uint32_t>(p.right);
        merges.try_emplace(key, Merge{static_cast<int32_t>(r), symbol_of(p.joined, false)});  // first rank wins
    }
    const ByteMap& bm = byte_map();
    for (int b = 0; b < 256; ++b) byte_symbol[b] = symbol_of(bm.byte_to_utf8[b], false);
}

void Tokenizer::Impl::detect_special_tokens(const gguf::File&) {
    // As llama.cpp: find end-of-turn style tokens by their text (GGUF files rarely name them),
    // make sure they are control tokens, and collect everything that ends generation.
    static constexpr const char* kEot[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                                           "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]",
                                           "<｜end▁of▁sentence｜>", "<end_of_utterance>"};
    static constexpr const char* kEog[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>",
                                           "<|flush|>", "<|calls|>", "<end_of_turn>", "<|endoftext|>",
                                           "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
                                           "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
                                           "<｜end▁of▁sentence｜>"};
    static constexpr const char* kFimEog[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]",
                                              "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>",
                                              "<reponame>", "<|file_sep|>"};
    auto make_control = [&](TokenId id) { attrs[id] |= token_attr::CONTROL; };
    if (eot == kNoToken) {
        for (const char* t : kEot) {
            if (TokenId id = lookup(t); id != kNoToken) {
                eot = id;
                make_control(id);
                break;
            }
        }
    }
    if (eom == kNoToken) {
        if (TokenId id = lookup("<|eom_id|>"); id != kNoToken) {
            eom = id;
            make_control(id);
        }
    }
    // "unused" control tokens
    for (size_t i = 0; i < texts.size(); ++i)
        if ((attrs[i] & token_attr::CONTROL) && texts[i].find("unused") != std::string::npos)
            attrs[i] |= token_attr::UNUSED;

    eog_flag.assign(texts.size(), 0);
    auto add_eog = [&](TokenId id) {
        if (id != kNoToken && !eog_flag[id]) eog_flag[id] = 1;
    };
    for (const char* t : kEog) {
        if (TokenId id = lookup(t); id != kNoToken) {
            add_eog(id);
            make_control(id);
        }
    }
    for (const char* t : kFimEog) add_eog(lookup(t));
    // gpt-oss (harmony): these structure tokens are always rendered and matched like text
    for (const char* t : {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"})
        if (TokenId id = lookup(t); id != kNoToken) attrs[id] = token_attr::USER_DEFINED;
    add_eog(eos);
    add_eog(eot);
    add_eog(eom);
    // harmony: <|end|> ends a message, not the generation, when <|return|> and <|call|> exist
    const TokenId end_id = lookup("<|end|>");
    if (end_id != kNoToken && eog_flag[end_id] &&
        ((lookup("<|return|>") != kNoToken && lookup("<|call|>") != kNoToken) ||
         (lookup("<|calls|>") != kNoToken && lookup("<|flush|>") != kNoToken))) {
        eog_flag[end_id] = 0;
        attrs[end_id] = token_attr::USER_DEFINED;
    }
    eog.clear();
    for (size_t i = 0; i < eog_flag.size(); ++i)
        if (eog_flag[i]) eog.push_back(static_cast<TokenId>(i));
}

void Tokenizer::Impl::build_special_trie() {
    specials.clear();
    std::vector<TokenId> ids;
    for (size_t i = 0; i < texts.size(); ++i)
        if (attrs[i] & (token_attr::CONTROL | token_attr::USER_DEFINED | token_attr::UNKNOWN))
            ids.push_back(static_cast<TokenId>(i));
    std::stable_sort(ids.begin(), ids.end(),
                     [&](TokenId a, TokenId b) { return texts[a].size() > texts[b].size(); });
    trie_root.fill(-1);
    trie_children.clear();
    trie_terminal.assign(1, -1);  // node 0 is the root
    for (size_t r = 0; r < ids.size(); ++r) {
        const TokenId id = ids[r];
        specials.push_back({id, static_cast<uint32_t>(r),
                            (attrs[id] & (token_attr::CONTROL | token_attr::UNKNOWN)) != 0});
        const std::string& t = texts[id];
        int32_t node = 0;
        for (size_t k = 0; k < t.size(); ++k) {
            const auto c = static_cast<unsigned char>(t[k]);
            int32_t child;
            if (node == 0) {
                child = trie_root[c];
                if (child < 0) {
                    child = static_cast<int32_t>(trie_terminal.size());
                    trie_terminal.push_back(-1);
                    trie_root[c] = child;
                }
            } else {
                const uint64_t key = (static_cast<uint64_t>(node) << 8) | c;
                auto it = trie_children.find(key);
                if (it == trie_children.end()) {
                    child = static_cast<int32_t>(trie_terminal.size());
                    trie_terminal.push_back(-1);
                    trie_children.emplace(key, child);
                } else {
                    child = it->second;
                }
            }
            node = child;
        }
        if (trie_terminal[node] < 0) trie_terminal[node] = static_cast<int32_t>(r);
    }
}

std::string Tokenizer::Impl::compute_piece(TokenId id) const {
    const uint32_t a = attrs[id];
    const std::string& t = texts[id];
    if (a & (token_attr::UNKNOWN | token_attr::CONTROL)) return t;
    if (type == VocabType::SPM) {
        if (a & (token_attr::NORMAL | token_attr::USER_DEFINED)) {
            // llama.cpp copies user-defined SPM tokens verbatim; Gemma's whitespace-run tokens
            // ("▁▁", "▁▁▁", ...) are user-defined, and verbatim they would print as '▁'. HF and
            // SentencePiece decode them as spaces, and so does kiln.
            std::string s = t;
            replace_all(s, kSpaceEscape, " ");
            return s;
        }
    } else {
        if (a & token_attr::USER_DEFINED) return t;
        if (a & token_attr::NORMAL) {
            const ByteMap& bm = byte_map();
            std::string out;
            out.reserve(t.size());
            for (size_t i = 0; i < t.size();) {
                uint32_t cp;
                const size_t len = decode_cp(t, i, cp);
                if (cp < bm.cp_to_byte.size() && bm.cp_to_byte[cp] >= 0)
                    out.push_back(static_cast<char>(bm.cp_to_byte[cp]));
                else
                    out.append(t, i, len);  // not a byte-level code point: keep it as text
                i += len;
            }
            return out;
        }
    }
    if (a & token_attr::BYTE) {
        const int b = parse_byte_token(t);
        return b < 0 ? t : std::string(1, static_cast<char>(b));
    }
    return {};
}

// ---- special-token partition ------------------------------------------------------------------
// llama.cpp splits the input at special tokens, trying the tokens longest first and, for each,
// its occurrences left to right inside the text that is still raw. Equivalent here: collect all
// occurrences, then accept them in (token rank, position) order unless they overlap an accepted one.
std::vector<Fragment> Tokenizer::Impl::partition(std::string_view text, bool parse_special) const {
    struct Hit {
        uint32_t rank;
        size_t pos, len;
        TokenId id;
    };
    std::vector<Hit> hits;
    for (size_t i = 0; i < text.size(); ++i) {
        int32_t node = trie_root[static_cast<unsigned char>(text[i])];
        size_t k = i + 1;
        while (node >= 0) {
            if (const int32_t s = trie_terminal[node]; s >= 0) {
                const Special& sp = specials[s];
                if (parse_special || !sp.needs_parse_special) hits.push_back({sp.rank, i, k - i, sp.id});
            }
            if (k >= text.size()) break;
            auto it = trie_children.find((static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(text[k]));
            node = it == trie_children.end() ? -1 : it->second;
            ++k;
        }
    }
    std::vector<Fragment> out;
    if (hits.empty()) {
        if (!text.empty()) out.push_back({kNoToken, 0, text.size()});
        return out;
    }
    std::sort(hits.begin(), hits.end(),
              [](const Hit& a, const Hit& b) { return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos; });
    std::vector<uint8_t> covered(text.size(), 0);
    std::vector<Hit> accepted;
    for (const Hit& h : hits) {
        if (std::any_of(covered.begin() + h.pos, covered.begin() + h.pos + h.len, [](uint8_t c) { return c != 0; }))
            continue;
        std::fill(covered.begin() + h.pos, covered.begin() + h.pos + h.len, 1);
        accepted.push_back(h);
    }
    std::sort(accepted.begin(), accepted.end(), [](const Hit& a, const Hit& b) { return a.pos < b.pos; });
    size_t cur = 0;
    for (const Hit& h : accepted) {
        if (h.pos > cur) out.push_back({kNoToken, cur, h.pos});
        out.push_back({h.id, h.pos, h.pos + h.len});
        cur = h.pos + h.len;
    }
    if (cur < text.size()) out.push_back({kNoToken, cur, text.size()});
    return out;
}

// ---- SPM ---------------------------------------------------------------------------------------
// SentencePiece BPE as llama.cpp runs it: start from UTF-8 characters, repeatedly merge the
// adjacent pair whose concatenation is the vocab token with the highest score (ties: leftmost),
// then emit each final piece as its token or, if it is not one, as byte tokens.
void Tokenizer::Impl::encode_spm(std::string_view text, std::vector<TokenId>& out) const {
    struct Sym {
        size_t begin, len;
        int32_t prev, next;
    };
    struct Bigram {
        float score;
        int32_t left, right;
        size_t size;
    };
    struct Cmp {
        bool operator()(const Bigram& l, const Bigram& r) const {
            return l.score < r.score || (l.score == r.score && l.left > r.left);
        }
    };
    std::vector<Sym> syms;
    syms.reserve(text.size());
    for (size_t off = 0; off < text.size();) {
        const size_t len = std::min(utf8_len_from_lead(static_cast<unsigned char>(text[off])), text.size() - off);
        const auto idx = static_cast<int32_t>(syms.size());
        syms.push_back({off, len, idx - 1, off + len == text.size() ? -1 : idx + 1});
        off += len;
    }
    std::vector<Bigram> heap_storage;
    heap_storage.reserve(syms.size());
    std::priority_queue<Bigram, std::vector<Bigram>, Cmp> queue(Cmp{}, std::move(heap_storage));
    auto try_add = [&](int32_t l, int32_t r) {
        if (l < 0 || r < 0) return;
        const std::string_view s = text.substr(syms[l].begin, syms[l].len + syms[r].len);
        const TokenId id = lookup(s);
        if (id == kNoToken) return;
        queue.push({scores[id], l, r, s.size()});
    };
    for (int32_t i = 1; i < static_cast<int32_t>(syms.size()); ++i) try_add(i - 1, i);
    while (!queue.empty()) {
        const Bigram b = queue.top();
        queue.pop();
        Sym& l = syms[b.left];
        Sym& r = syms[b.right];
        if (l.len == 0 || r.len == 0 || l.len + r.len != b.size) continue;  // stale
        l.len += r.len;
        r.len = 0;
        l.next = r.next;
        if (r.next >= 0) syms[r.next].prev = b.left;
        try_add(l.prev, b.left);
        try_add(b.left, l.next);
    }
    for (int32_t i = syms.empty() ? -1 : 0; i != -1; i = syms[i].next) {
        const std::string_view s = text.substr(syms[i].begin, syms[i].len);
        if (const TokenId id = lookup(s); id != kNoToken) {
            out.push_back(id);
            continue;
        }
        for (const char c : s) {
            const TokenId id = byte_tokens[static_cast<unsigned char>(c)];
            if (id != kNoToken) out.push_back(id);
            else if (unk != kNoToken) out.push_back(unk);
        }
    }
}

// ---- BPE ---------------------------------------------------------------------------------------

void Tokenizer::Impl::encode_bpe(std::string_view text, std::vector<TokenId>& out) const {
    std::string clean;
    if (tok::sanitize_utf8(text, clean)) text = clean;
    std::vector<tok::Span> words;
    pretok->split(text, words);
    std::string scratch;
    for (const tok::Span& w : words) bpe_word(text.substr(w.first, w.second - w.first), out, scratch);
}

// Byte-level BPE of one pre-tokenized word: symbols start as the word's bytes (each spelled as its
// GPT-2 code point); the adjacent pair with the lowest merge rank merges first (ties: leftmost).
void Tokenizer::Impl::bpe_word(std::string_view word, std::vector<TokenId>& out, std::string& scratch) const {
    if (word.empty()) return;
    const ByteMap& bm = byte_map();
    if (ignore_merges) {
        scratch.clear();
        for (const char c : word) scratch += bm.byte_to_utf8[static_cast<unsigned char>(c)];
        if (const TokenId id = lookup(scratch); id != kNoToken) {
            out.push_back(id);
            return;
        }
    }
    const auto n = static_cast<int32_t>(word.size());
    if (n == 1) {
        const int32_t s = byte_symbol[static_cast<unsigned char>(word[0])];
        if (s >= 0 && s < n_vocab()) {
            out.push_back(s);
            return;
        }
    }
    struct Sym {
        int32_t sym;  // symbol id, -1 when the text is neither a token nor a merge part
        int32_t len;  // bytes; 0 once merged into the left neighbour
        int32_t prev, next;
    };
    struct Cand {
        int32_t rank, left, right, lsym, rsym, result;
    };
    struct Cmp {
        bool operator()(const Cand& a, const Cand& b) const {
            return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
        }
    };
    std::vector<Sym> syms(n);
    for (int32_t i = 0; i < n; ++i)
        syms[i] = {byte_symbol[static_cast<unsigned char>(word[i])], 1, i - 1, i + 1 < n ? i + 1 : -1};
    std::vector<Cand> storage;
    storage.reserve(n);
    std::priority_queue<Cand, std::vector<Cand>, Cmp> queue(Cmp{}, std::move(storage));
    auto try_add = [&](int32_t l, int32_t r) {
        if (l < 0 || r < 0) return;
        const int32_t a = syms[l].sym, b = syms[r].sym;
        if (a < 0 || b < 0) return;
        auto it = merges.find((static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b));
        if (it == merges.end()) return;
        queue.push({it->second.rank, l, r, a, b, it->second.result});
    };
    for (int32_t i = 1; i < n; ++i) try_add(i - 1, i);
    while (!queue.empty()) {
        const Cand c = queue.top();
        queue.pop();
        Sym& l = syms[c.left];
        Sym& r = syms[c.right];
        if (l.len == 0 || r.len == 0 || l.next != c.right || l.sym != c.lsym || r.sym != c.rsym) continue;  // stale
        l.sym = c.result;
        l.len += r.len;
        r.len = 0;
        l.next = r.next;
        if (r.next >= 0) syms[r.next].prev = c.left;
        try_add(l.prev, c.left);
        try_add(c.left, l.next);
    }
    size_t byte_pos = 0;
    for (int32_t i = 0; i != -1; i = syms[i].next) {
        const Sym& s = syms[i];
        if (s.sym >= 0 && s.sym < n_vocab()) {
            out.push_back(s.sym);
        } else {
            // Not a token (only with unusual vocabs). llama.cpp then looks up each byte of the
            // piece's GPT-2 spelling as a one-character token: only '!'..'~' can be found.
            for (int32_t k = 0; k < s.len; ++k) {
                const auto c = static_cast<unsigned char>(word[byte_pos + k]);
                if (c >= 0x21 && c <= 0x7E)
                    if (const TokenId id = lookup(std::string_view(&word[byte_pos + k], 1)); id != kNoToken)
                        out.push_back(id);
            }
        }
        byte_pos += s.len;
    }
}

// =============================================================================================
// Tokenizer

Tokenizer::Tokenizer(const gguf::File& file) : impl_(std::make_unique<Impl>()) { impl_->load(file); }

Tokenizer Tokenizer::from_file(const std::string& gguf_path) { return Tokenizer(*gguf::File::open(gguf_path)); }
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<TokenId> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
    const Impl& m = *impl_;
    std::vector<TokenId> out;
    out.reserve(text.size() / 3 + 4);
    const std::vector<Fragment> frags = m.partition(text, parse_special);
    if (m.type == VocabType::SPM) {
        bool prev_special = true;  // the first fragment gets the space prefix
        if (add_special && m.add_bos) out.push_back(m.bos);
        std::string buf;
        for (const Fragment& f : frags) {
            if (f.token != kNoToken) {
                out.push_back(f.token);
                prev_special = true;
                continue;
            }
            buf.clear();
            if (m.add_space_prefix && prev_special) buf.push_back(' ');
            buf.append(text.substr(f.begin, f.end - f.begin));
            replace_all(buf, " ", kSpaceEscape);
            m.encode_spm(buf, out);
            prev_special = false;
        }
        if (add_special && m.add_eos) out.push_back(m.eos);
    } else {
        if (add_special && m.add_bos) out.push_back(m.bos);
        for (const Fragment& f : frags) {
            if (f.token != kNoToken) out.push_back(f.token);
            else m.encode_bpe(text.substr(f.begin, f.end - f.begin), out);
        }
        if (add_special && m.add_eos) out.push_back(m.eos);
    }
    return out;
}

std::string Tokenizer::token_to_piece(TokenId id, bool special) const {
    impl_->check_id(id);
    if (!special && (impl_->attrs[id] & (token_attr::UNKNOWN | token_attr::CONTROL))) return {};
    return impl_->pieces[id];
}

std::string Tokenizer::decode(std::span<const TokenId> ids, const DecodeOptions& opts) const {
    const Impl& m = *impl_;
    bool remove_space = m.add_space_prefix;
    // (llama.cpp also stops removing the space when it drops the BOS; kiln keeps removing it, so
    // that decode(encode(s, add_special = true), remove_special = true) == s.)
    if (opts.remove_special && m.add_bos && !ids.empty() && ids.front() == m.bos) ids = ids.subspan(1);
    if (opts.remove_special && m.add_eos && !ids.empty() && ids.back() == m.eos) ids = ids.first(ids.size() - 1);
    std::string out;
    for (const TokenId id : ids) {
        m.check_id(id);
        if (!opts.unparse_special && (m.attrs[id] & (token_attr::UNKNOWN | token_attr::CONTROL))) {
            remove_space = false;
            continue;
        }
        const std::string& p = m.pieces[id];
        if (remove_space && !p.empty() && p[0] == ' ') out.append(p, 1, std::string::npos);
        else out += p;
        remove_space = false;
    }
    return out;
}

VocabType Tokenizer::type() const { return impl_->type; }
const std::string& Tokenizer::model() const { return impl_->model; }
const std::string& Tokenizer::pre() const { return impl_->pre; }
int32_t Tokenizer::n_vocab() const { return impl_->n_vocab(); }
const std::string& Tokenizer::token_text(TokenId id) const {
    impl_->check_id(id);
    return impl_->texts[id];
}
float Tokenizer::token_score(TokenId id) const {
    impl_->check_id(id);
    return impl_->scores[id];
}
uint32_t Tokenizer::token_attrs(TokenId id) const {
    impl_->check_id(id);
    return impl_->attrs[id];
}
bool Tokenizer::is_control(TokenId id) const { return token_attrs(id) & token_attr::CONTROL; }
bool Tokenizer::is_user_defined(TokenId id) const { return token_attrs(id) & token_attr::USER_DEFINED; }
bool Tokenizer::is_byte(TokenId id) const { return token_attrs(id) & token_attr::BYTE; }
bool Tokenizer::is_eog(TokenId id) const { return id >= 0 && id < n_vocab() && impl_->eog_flag[id]; }
TokenId Tokenizer::find_token(std::string_view text) const { return impl_->lookup(text); }
TokenId Tokenizer::bos() const { return impl_->bos; }
TokenId Tokenizer::eos() const { return impl_->eos; }
TokenId Tokenizer::eot() const { return impl_->eot; }
TokenId Tokenizer::eom() const { return impl_->eom; }
TokenId Tokenizer::pad() const { return impl_->pad; }
TokenId Tokenizer::unk() const { return impl_->unk; }
TokenId Tokenizer::linefeed() const { return impl_->linefeed; }
const std::vector<TokenId>& Tokenizer::eog_ids() const { return impl_->eog; }
bool Tokenizer::add_bos() const { return impl_->add_bos; }
bool Tokenizer::add_eos() const { return impl_->add_eos; }
bool Tokenizer::add_space_prefix() const { return impl_->add_space_prefix; }

// =============================================================================================
// Streaming

size_t utf8_complete_prefix(std::string_view s) {
    const size_t n = s.size();
    for (size_t k = 1; k <= 3 && k <= n; ++k) {
        const auto c = static_cast<unsigned char>(s[n - k]);
        if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back
        if (c < 0xC0 || c >= 0xF8) return n;  // ASCII or a byte that never starts a sequence
        const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
        return need > k ? n - k : n;
    }
    return n;
}

Detokenizer::Detokenizer(const Tokenizer& tok, const DecodeOptions& opts) : tok_(&tok), opts_(opts) {}

void Detokenizer::reset() {
    held_.clear();
    first_ = true;
    bos_skipped_ = false;
    pending_eos_ = kNoToken;
}

std::string Detokenizer::push(TokenId id) {
    const Tokenizer& t = *tok_;
    if (id < 0 || id >= t.n_vocab()) (void)t.token_text(id);  // throws with the range
    auto append = [&](TokenId tid) {
        const bool remove_space = first_ && t.add_space_prefix();
        first_ = false;
        if (!opts_.unparse_special && (t.token_attrs(tid) & (token_attr::UNKNOWN | token_attr::CONTROL))) return;
        const std::string& p = t.impl_->pieces[tid];
        if (remove_space && !p.empty() && p[0] == ' ') held_.append(p, 1, std::string::npos);
        else held_ += p;
    };
    if (opts_.remove_special && first_ && !bos_skipped_ && t.add_bos() && id == t.bos()) {
        bos_skipped_ = true;
        return {};
    }
    if (pending_eos_ != kNoToken) {
        append(pending_eos_);
        pending_eos_ = kNoToken;
    }
    if (opts_.remove_special && t.add_eos() && id == t.eos()) {
        pending_eos_ = id;  // dropped if it turns out to be the last token
    } else {
        append(id);
    }
    const size_t keep = utf8_complete_prefix(held_);
    std::string out = held_.substr(0, keep);
    held_.erase(0, keep);
    return out;
}

std::string Detokenizer::flush() {
    std::string out;
    out.swap(held_);
    reset();
    return out;
}

}  // namespace kiln
