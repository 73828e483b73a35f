#include "tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <fmt/format.h>

#include "kiln/error.h"

namespace kiln::tok {

namespace {

// ---- regexes of the pre-tokenizers ---------------------------------------------------------
// The patterns are the published pre-tokenizer regexes of each model family, in the form llama.cpp
// evaluates them (its results define what a GGUF file tokenizes to):
//  * "(?i:'s|...)" is spelled out as "'[sS]|..." (same meaning).
//  * llama.cpp evaluates \p{Lu}, \p{Ll}, \p{Lt}, \p{Lm}, \p{Lo} as "any letter" and does not put
//    \p{M} into the letter classes of the o200k (gpt-4o) / tekken regexes, so those are written
//    with "a letter that is not a-z" / "not A-Z" lookaheads and combining marks are not part of
//    words (Devanagari vowel signs split a word there).
//  * llama.cpp's \p{S} does not contain '~' (its ASCII table for symbols lists $+<=>^`| only), so
//    where \p{S} is used, '~' is excluded explicitly.
//  * the GPT-2 regex is evaluated with a trailing "|\s+" (llama.cpp's hand-written matcher for it
//    has that fallback).
//  * in the regexes without \p{..} (deepseek-llm / deepseek-coder), llama.cpp turns every
//    non-ASCII whitespace character into U+000B before matching, so whitespace never falls into
//    the literal CJK ranges (which contain U+3000 and U+2000..U+200A): those ranges exclude \s.

constexpr const char* kContractions = R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]))";

std::string gpt2_regex() {
    return R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
}

std::string llama3_regex() {
    return std::string(kContractions) +
           R"(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
}

std::string qwen2_regex() {
    return std::string(kContractions) +
           R"(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
}

std::string qwen35_regex() {
    return std::string(kContractions) +
           R"(|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
}

// o200k / tekken word alternatives: [^\r\n\p{L}\p{N}]? UPPER* LOWER+ | [^\r\n\p{L}\p{N}]? UPPER+ LOWER*
// where UPPER = a letter other than a-z and LOWER = a letter other than A-Z.
std::string o200k_words(const std::string& suffix) {
    const std::string upper = R"((?:(?=\p{L})[^a-z]))";
    const std::string lower = R"((?:(?=\p{L})[^A-Z]))";
    const std::string lead = R"([^\r\n\p{L}\p{N}]?)";
    return lead + upper + "*" + lower + "+" + suffix + "|" + lead + upper + "+" + lower + "*" + suffix;
}

std::string gpt4o_regex() {
    return o200k_words(std::string(kContractions) + "?") +
           R"(|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
}

std::string tekken_regex() {
    return o200k_words("") + R"(|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
}

// \p{P} or \p{S} as llama.cpp evaluates them (no '~').
constexpr const char* kPunctSym = R"((?:(?!~)[\p{P}\p{S}]))";

std::string deepseek3_regex() {
    return std::string(R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|(?:~|[^\r\n\p{L}\p{P}\p{S}])?[\p{L}\p{M}]+| ?)") +
           kPunctSym + R"(+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
}

const std::vector<PreTokenizerSpec>& specs() {
    static const std::vector<PreTokenizerSpec> all = [] {
        std::vector<PreTokenizerSpec> v;
        auto add = [&](std::string name, std::vector<std::string> regexes, bool ignore_merges = false,
                       bool add_bos = false, bool clear_bos = false) {
            v.push_back({std::move(name), std::move(regexes), ignore_merges, add_bos, clear_bos});
        };
        add("default", {R"([\p{P}\$\+<=>\^~\|]+)", gpt2_regex(), R"(\p{N}+)", "[0-9][0-9][0-9]"});
        add("gpt-2", {gpt2_regex()});
        add("llama3", {llama3_regex()}, /*ignore_merges=*/true, /*add_bos=*/true);
        add("dbrx", {llama3_regex()});
        add("glm4", {llama3_regex()}, false, false, /*clear_bos=*/true);
        add("qwen2", {qwen2_regex()});
        add("qwen35", {qwen35_regex()});
        add("deepseek-llm",
            {"[\r\n]",
             // cased letters (HF regex of deepseek-llm); written as escapes so that no editor can
             // NFC-normalise the compatibility characters in it (U+2126 OHM SIGN, U+212A KELVIN SIGN ...)
             "\\s?[A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}\\x{1C4}-\\x{293}"
             "\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}\\x{37F}\\x{386}\\x{388}-\\x{38A}"
             "\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}\\x{10A0}"
             "-\\x{10C5}\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}\\x{1D00}-"
             "\\x{1D2B}\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}\\x{1F20}-"
             "\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}"
             "\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}\\x{1FD0}-"
             "\\x{1FD3}\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}\\x{2102}"
             "\\x{2107}\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}\\x{2126}\\x{2128}\\x{212A}-"
             "\\x{212D}\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}\\x{214E}\\x{2183}"
             "\\x{2184}\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}\\x{A640}-"
             "\\x{A66D}\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-"
             "\\x{ABBF}\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}\\x{10400}-"
             "\\x{1044F}\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}"
             "\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}]+",
             "\\s?[!-/:-~！-／：-～‘-‟、-。]+", "\\s+$", "(?:(?!\\s)[一-龥ࠀ-一가-퟿])+", "\\p{N}+"});
        add("deepseek-coder", {"[\r\n]", R"(\s?\p{L}+)", R"(\s?\p{P}+)", "(?:(?!\\s)[一-龥ࠀ-一가-퟿])+", R"(\p{N})"});
        add("deepseek-v3", {R"(\p{N}{1,3})", "[一-龥぀-ゟ゠-ヿ]+", deepseek3_regex()});
        add("gpt-4o", {gpt4o_regex()});
        add("tekken", {tekken_regex()}, /*ignore_merges=*/true, /*add_bos=*/true);
        add("starcoder", {R"(\p{N})", gpt2_regex()});
        add("falcon", {R"([\p{P}\$\+<=>\^~\|`]+)", gpt2_regex(), "[0-9][0-9][0-9]"});
        add("poro-chat", {R"( ?[^(\s|.,!?…。，、।۔،)]+)"});
        add("viking", {R"( ?[^(\s|.,!?…。，、।۔،)]+)", R"(\p{N})"});
        add("bailingmoe",
            {R"('(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+)"});
        add("seed-coder",
            {std::string(kContractions) +
             R"(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+)"});
        return v;
    }();
    return all;
}

struct Alias {
    const char* name;
    const char* spec;
};
// tokenizer.ggml.pre values that share a spec (as llama.cpp groups them).
constexpr Alias kAliases[] = {
    {"default", "default"},
    {"gpt-2", "gpt-2"}, {"phi-2", "gpt-2"}, {"jina-es", "gpt-2"}, {"jina-de", "gpt-2"},
    {"gigachat", "gpt-2"}, {"jina-v2-es", "gpt-2"}, {"jina-v2-de", "gpt-2"}, {"a.x-4.0", "gpt-2"},
    {"mellum", "gpt-2"}, {"mpt", "gpt-2"}, {"olmo", "gpt-2"}, {"jais", "gpt-2"}, {"trillion", "gpt-2"},
    {"granite-docling", "gpt-2"}, {"exaone4", "gpt-2"}, {"jina-v1-en", "gpt-2"}, {"jina-v2-code", "gpt-2"},
    {"roberta-bpe", "gpt-2"},
    {"llama3", "llama3"}, {"llama-v3", "llama3"}, {"llama-bpe", "llama3"}, {"falcon3", "llama3"},
    {"falcon-h1", "llama3"}, {"pixtral", "llama3"}, {"midm-2.0", "llama3"}, {"lfm2", "llama3"},
    {"dbrx", "dbrx"}, {"smaug-bpe", "dbrx"},
    {"glm4", "glm4"}, {"chatglm-bpe", "glm4"},
    {"qwen2", "qwen2"}, {"deepseek-r1-qwen", "qwen2"}, {"megrez", "qwen2"}, {"stablelm2", "qwen2"},
    {"hunyuan", "qwen2"}, {"solar-open", "qwen2"}, {"grok-2", "qwen2"},
    {"qwen35", "qwen35"},
    {"deepseek-llm", "deepseek-llm"},
    {"deepseek-coder", "deepseek-coder"},
    {"deepseek-v3", "deepseek-v3"}, {"hunyuan-dense", "deepseek-v3"}, {"joyai-llm", "deepseek-v3"},
    {"gpt-4o", "gpt-4o"}, {"llama4", "gpt-4o"}, {"minimax-m2", "gpt-4o"},
    {"tekken", "tekken"},
    {"starcoder", "starcoder"}, {"refact", "starcoder"}, {"command-r", "starcoder"}, {"smollm", "starcoder"},
    {"codeshell", "starcoder"}, {"exaone", "starcoder"}, {"minerva-7b", "starcoder"},
    {"falcon", "falcon"},
    {"poro-chat", "poro-chat"}, {"bloom", "poro-chat"}, {"gpt3-finnish", "poro-chat"},
    {"viking", "viking"},
    {"bailingmoe", "bailingmoe"}, {"bailingmoe2", "bailingmoe"}, {"llada-moe", "bailingmoe"},
    {"seed-coder", "seed-coder"},
};

}  // namespace

const PreTokenizerSpec* find_pre_tokenizer(std::string_view pre) {
    for (const Alias& a : kAliases) {
        if (pre != a.name) continue;
        for (const PreTokenizerSpec& s : specs())
            if (s.name == a.spec) return &s;
    }
    return nullptr;
}

std::string supported_pre_tokenizers() {
    std::string out;
    for (const Alias& a : kAliases) {
        if (!out.empty()) out += ", ";
        out += a.name;
    }
    return out;
}

// ---- PCRE2 wrapper -------------------------------------------------------------------------

struct PreTokenizer::Regex {
    pcre2_code* code = nullptr;
    std::string pattern;
    ~Regex() {
        if (code) pcre2_code_free(code);
    }
};

namespace {

// Per-thread JIT stack and match data: matching is then allocation-free and thread-safe.
struct MatchScratch {
    pcre2_jit_stack* stack = nullptr;
    pcre2_match_context* mctx = nullptr;
    pcre2_match_data* md = nullptr;
    MatchScratch() {
        stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
        mctx = pcre2_match_context_create(nullptr);
        if (stack && mctx) pcre2_jit_stack_assign(mctx, nullptr, stack);
        md = pcre2_match_data_create(4, nullptr);  // the patterns' groups are never read
    }
    ~MatchScratch() {
        if (md) pcre2_match_data_free(md);
        if (mctx) pcre2_match_context_free(mctx);
        if (stack) pcre2_jit_stack_free(stack);
    }
};

MatchScratch& scratch() {
    thread_local MatchScratch s;
    return s;
}

std::string pcre2_message(int code) {
    PCRE2_UCHAR buf[256];
    if (pcre2_get_error_message(code, buf, sizeof buf) < 0) return fmt::format("PCRE2 error {}", code);
    return reinterpret_cast<const char*>(buf);
}

}  // namespace

PreTokenizer::PreTokenizer(const PreTokenizerSpec& spec) : name_(spec.name) {
    for (const std::string& pattern : spec.regexes) {
        auto re = std::make_unique<Regex>();
        re->pattern = pattern;
        int err = 0;
        PCRE2_SIZE err_off = 0;
        re->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                 PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY, &err, &err_off, nullptr);
        if (!re->code)
            throw Error(fmt::format("pre-tokenizer '{}': regex /{}/ does not compile at offset {}: {}", name_,
                                    pattern, err_off, pcre2_message(err)));
        // JIT is an optimisation; if unavailable the interpreter gives the same matches.
        (void)pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE);
        regexes_.push_back(std::move(re));
    }
}

PreTokenizer::~PreTokenizer() = default;

void PreTokenizer::split(std::string_view text, std::vector<Span>& out) const {
    out.clear();
    if (text.empty()) return;
    std::vector<Span> cur{{0, text.size()}}, next;
    MatchScratch& s = scratch();
    if (!s.md) throw Error("pre-tokenizer: out of memory for PCRE2 match data");
    const auto* subject_all = reinterpret_cast<PCRE2_SPTR>(text.data());
    for (const auto& re : regexes_) {
        next.clear();
        next.reserve(cur.size() * 2);
        for (const Span& seg : cur) {
            // Match inside the segment only: the segment is the whole subject, so lookaheads and
            // '$' see its end, as in llama.cpp's per-piece std::regex_iterator.
            const PCRE2_SPTR subject = subject_all + seg.first;
            const size_t len = seg.second - seg.first;
            size_t pos = 0;      // where the next search starts
            size_t emitted = 0;  // end of the last word emitted
            while (pos < len) {
                const int rc = pcre2_match(re->code, subject, len, pos, PCRE2_NO_UTF_CHECK, s.md, s.mctx);
                if (rc == PCRE2_ERROR_NOMATCH) break;
                if (rc < 0)
                    throw Error(fmt::format("pre-tokenizer '{}': regex /{}/ failed at byte {}: {}", name_,
                                            re->pattern, seg.first + pos, pcre2_message(rc)));
                const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(s.md);
                const size_t mb = ov[0], me = ov[1];
                if (me == mb) {
                    // Empty match: not a word; step over one character and go on searching.
                    size_t step = mb + 1;
                    while (step < len && (static_cast<unsigned char>(text[seg.first + step]) & 0xC0) == 0x80) ++step;
                    pos = step;
                    continue;
                }
                if (mb > emitted) next.emplace_back(seg.first + emitted, seg.first + mb);
                next.emplace_back(seg.first + mb, seg.first + me);
                emitted = me;
                pos = me;
            }
            if (emitted < len) next.emplace_back(seg.first + emitted, seg.second);
        }
        cur.swap(next);
    }
    out.swap(cur);
}

// ---- UTF-8 ---------------------------------------------------------------------------------

namespace {

// Length of the well-formed UTF-8 sequence at s[i], or 0 if the byte there does not start one.
size_t utf8_seq_len(std::string_view s, size_t i) {
    const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char c = b(i);
    if (c < 0x80) return 1;
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;  // bounds of the second byte
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c == 0xE0) n = 3, lo = 0xA0;
    else if (c >= 0xE1 && c <= 0xEC) n = 3;
    else if (c == 0xED) n = 3, hi = 0x9F;  // no surrogates
    else if (c >= 0xEE && c <= 0xEF) n = 3;
    else if (c == 0xF0) n = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) n = 4;
    else if (c == 0xF4) n = 4, hi = 0x8F;
    else return 0;
    if (i + n > s.size()) return 0;
    if (b(i + 1) < lo || b(i + 1) > hi) return 0;
    for (size_t k = 2; k < n; ++k)
        if ((b(i + k) & 0xC0) != 0x80) return 0;
    return n;
}

}  // namespace

bool sanitize_utf8(std::string_view text, std::string& out) {
    size_t i = 0;
    while (i < text.size()) {
        const size_t n = utf8_seq_len(text, i);
        if (n == 0) break;
        i += n;
    }
    if (i == text.size()) return false;
    out.assign(text.substr(0, i));
    while (i < text.size()) {
        const size_t n = utf8_seq_len(text, i);
        if (n == 0) {
            out += "\xEF\xBF\xBD";
            ++i;
        } else {
            out.append(text.substr(i, n));
            i += n;
        }
    }
    return true;
}

}  // namespace kiln::tok
