// Tokenizer tests: the shared vocab vectors (ids from llama.cpp for every line of strings.txt),
// decode / streaming round trips, special-token parsing, error messages, and encode speed.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "gguf/gguf.h"
#include "gguf/writer.h"
#include "kiln/error.h"
#include "kiln/tokenizer.h"

namespace fs = std::filesystem;
using kiln::TokenId;
using kiln::Tokenizer;

namespace {

const fs::path kVocabDir = fs::path(KILN_SHARED_DIR) / "vocab";

#define SKIP_WITHOUT_SHARED()                                                                            \
    do {                                                                                                 \
        if (!fs::exists(kVocabDir / "strings.txt"))                                                      \
            GTEST_SKIP() << "\n*** SHARED TEST DATA MISSING: " << kVocabDir                              \
                         << "/strings.txt not found; the tokenizer vector tests did NOT run ***\n";      \
    } while (0)

std::vector<std::string> read_lines(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open " + p.string());
    std::vector<std::string> lines;
    std::string line;
    while (std::getline(in, line)) lines.push_back(line);
    return lines;
}

// strings.txt: the two characters '\' 'n' stand for a newline.
std::string unescape(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 1 < s.size() && s[i + 1] == 'n') {
            out += '\n';
            ++i;
        } else {
            out += s[i];
        }
    }
    return out;
}

std::vector<TokenId> parse_ids(const std::string& line) {
    std::vector<TokenId> ids;
    std::istringstream in(line);
    long long v;
    while (in >> v) ids.push_back(static_cast<TokenId>(v));
    return ids;
}

std::string show(const std::string& s) {
    std::string out;
    for (unsigned char c : s) {
        if (c == '\n') out += "\\n";
        else if (c == '\t') out += "\\t";
        else if (c == '\r') out += "\\r";
        else if (c < 0x20) out += fmt::format("\\x{:02x}", c);
        else out += static_cast<char>(c);
    }
    return out;
}

std::vector<std::string> strings() {
    std::vector<std::string> out;
    for (const std::string& l : read_lines(kVocabDir / "strings.txt")) out.push_back(unescape(l));
    return out;
}

// Opened once per vocab (the big ones take a moment to load).
const Tokenizer& tokenizer_for(const std::string& name) {
    static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
    auto& t = cache[name];
    if (!t) {
        auto file = kiln::gguf::File::open((kVocabDir / (name + ".gguf")).string());
        t = std::make_unique<Tokenizer>(*file);
    }
    return *t;
}

std::vector<std::string> vocab_names() {
    std::vector<std::string> names;
    std::error_code ec;
    if (fs::is_directory(kVocabDir, ec))
        for (const auto& e : fs::directory_iterator(kVocabDir, ec))
            if (e.path().extension() == ".gguf") names.push_back(e.path().stem().string());
    std::sort(names.begin(), names.end());
    if (names.empty()) names.push_back("shared-vocab-missing");
    return names;
}

class VocabTest : public ::testing::TestWithParam<std::string> {
protected:
    void SetUp() override {
        SKIP_WITHOUT_SHARED();
        if (!fs::exists(kVocabDir / (GetParam() + ".out")))
            FAIL() << "no expected ids " << (kVocabDir / (GetParam() + ".out")) << " for " << GetParam() << ".gguf";
        lines_ = strings();
        expected_.clear();
        for (const std::string& l : read_lines(kVocabDir / (GetParam() + ".out"))) expected_.push_back(parse_ids(l));
        ASSERT_EQ(expected_.size(), lines_.size()) << GetParam() << ".out and strings.txt differ in line count";
        tok_ = &tokenizer_for(GetParam());
    }
    std::vector<std::string> lines_;
    std::vector<std::vector<TokenId>> expected_;
    const Tokenizer* tok_ = nullptr;
};

TEST_P(VocabTest, EncodeMatchesLlamaCpp) {
    size_t pass = 0;
    for (size_t i = 0; i < lines_.size(); ++i) {
        const std::vector<TokenId> got = tok_->encode(lines_[i], /*add_special=*/false, /*parse_special=*/false);
        if (got == expected_[i]) {
            ++pass;
            continue;
        }
        ADD_FAILURE() << GetParam() << " line " << (i + 1) << ": \"" << show(lines_[i]) << "\"\n  expected: ["
                      << fmt::format("{}", fmt::join(expected_[i], " ")) << "]\n  actual:   ["
                      << fmt::format("{}", fmt::join(got, " ")) << "]";
    }
    std::printf("[ %-11s ] encode: %zu/%zu lines match llama.cpp\n", GetParam().c_str(), pass, lines_.size());
}

TEST_P(VocabTest, DecodeIsLossless) {
    // Every format here is lossless on these strings: byte-level BPE maps bytes 1:1, SPM falls back
    // to bytes, and the SPM space prefix is removed again on decode.
    for (size_t i = 0; i < lines_.size(); ++i)
        EXPECT_EQ(show(tok_->decode(expected_[i])), show(lines_[i])) << GetParam() << " line " << (i + 1);
}

TEST_P(VocabTest, StreamingEqualsDecode) {
    kiln::Detokenizer stream(*tok_);
    std::vector<TokenId> all;
    std::string streamed_all;
    for (size_t i = 0; i < lines_.size(); ++i) {
        kiln::Detokenizer one(*tok_);
        std::string streamed;
        for (TokenId id : expected_[i]) {
            const std::string part = one.push(id);
            // only complete characters come out
            EXPECT_EQ(kiln::utf8_complete_prefix(part), part.size()) << GetParam() << " line " << (i + 1);
            streamed += part;
        }
        streamed += one.flush();
        EXPECT_EQ(show(streamed), show(tok_->decode(expected_[i]))) << GetParam() << " line " << (i + 1);
        for (TokenId id : expected_[i]) streamed_all += stream.push(id);
        all.insert(all.end(), expected_[i].begin(), expected_[i].end());
    }
    streamed_all += stream.flush();
    EXPECT_EQ(streamed_all, tok_->decode(all));
}

TEST_P(VocabTest, EncodeSpeed) {
    std::string text;
    for (const std::string& l : lines_) text += l + "\n";
    const size_t per_copy = tok_->encode(text, false, false).size();
    std::string big;
    const size_t copies = 100000 / std::max<size_t>(per_copy, 1) + 1;
    for (size_t i = 0; i < copies; ++i) big += text;
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<TokenId> ids = tok_->encode(big, false, false);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("[ %-11s ] encoded %zu bytes -> %zu tokens in %.3f s (%.0f tokens/s)\n", GetParam().c_str(),
                big.size(), ids.size(), s, ids.size() / s);
    EXPECT_GE(ids.size(), 100000u);
    EXPECT_EQ(tok_->decode(ids), big);
}

INSTANTIATE_TEST_SUITE_P(SharedVocab, VocabTest, ::testing::ValuesIn(vocab_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                             std::string n = info.param;
                             for (char& c : n)
                                 if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                             return n;
                         });

// ---- special tokens ----------------------------------------------------------------------------

TEST(Tokenizer, ParseSpecialQwen3) {
    SKIP_WITHOUT_SHARED();
    const Tokenizer& t = tokenizer_for("qwen3");
    const TokenId im_start = t.find_token("<|im_start|>");
    const TokenId im_end = t.find_token("<|im_end|>");
    ASSERT_NE(im_start, kiln::kNoToken);
    ASSERT_TRUE(t.is_control(im_start));
    const std::string text = "<|im_start|>user\nhello<|im_end|>\n";

    const auto with = t.encode(text, false, true);
    ASSERT_GE(with.size(), 4u);
    EXPECT_EQ(with.front(), im_start);
    EXPECT_EQ(std::count(with.begin(), with.end(), im_start), 1);
    EXPECT_EQ(std::count(with.begin(), with.end(), im_end), 1);
    EXPECT_EQ(t.decode(with), text);

    const auto without = t.encode(text, false, false);
    EXPECT_EQ(std::count(without.begin(), without.end(), im_start), 0);
    EXPECT_EQ(std::count(without.begin(), without.end(), im_end), 0);
    EXPECT_GT(without.size(), with.size());
    EXPECT_EQ(t.decode(without), text);  // the text of the markers is tokenized as ordinary text

    // rendering of control tokens
    EXPECT_EQ(t.token_to_piece(im_start, true), "<|im_start|>");
    EXPECT_EQ(t.token_to_piece(im_start, false), "");
    kiln::DecodeOptions plain;
    plain.unparse_special = false;
    EXPECT_EQ(t.decode(with, plain), "user\nhello\n");
    EXPECT_TRUE(t.is_eog(im_end));
    EXPECT_FALSE(t.is_eog(im_start));
    EXPECT_FALSE(t.add_bos());
    EXPECT_EQ(t.encode("hi", true, false), t.encode("hi", false, false));  // add_bos_token = false
}

TEST(Tokenizer, SpecialTokensLongestFirst) {
    SKIP_WITHOUT_SHARED();
    // gemma3: "\n", "\n\n", "\n\n\n" are user-defined tokens, matched longest first even without
    // parse_special; "<start_of_turn>" is a control token, matched only with parse_special.
    const Tokenizer& t = tokenizer_for("gemma3");
    const auto ids = t.encode("a\n\n\nb", false, false);
    EXPECT_NE(std::find(ids.begin(), ids.end(), t.find_token("\n\n\n")), ids.end());
    const TokenId sot = t.find_token("<start_of_turn>");
    ASSERT_NE(sot, kiln::kNoToken);
    const auto with = t.encode("<start_of_turn>user\n", false, true);
    EXPECT_EQ(with.front(), sot);
    const auto without = t.encode("<start_of_turn>user\n", false, false);
    EXPECT_EQ(std::count(without.begin(), without.end(), sot), 0);
}

TEST(Tokenizer, AddSpecial) {
    SKIP_WITHOUT_SHARED();
    const Tokenizer& l2 = tokenizer_for("llama2-spm");
    EXPECT_TRUE(l2.add_bos());
    const auto ids = l2.encode("Hello world", true, false);
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(ids.front(), l2.bos());
    EXPECT_EQ(std::vector<TokenId>(ids.begin() + 1, ids.end()), l2.encode("Hello world", false, false));
    kiln::DecodeOptions opts;
    opts.remove_special = true;
    EXPECT_EQ(l2.decode(ids, opts), "Hello world");
    EXPECT_EQ(l2.encode("", true, false), std::vector<TokenId>{l2.bos()});
    EXPECT_TRUE(l2.encode("", false, false).empty());

    const Tokenizer& l3 = tokenizer_for("llama3");  // llama-bpe: BOS by default
    EXPECT_TRUE(l3.add_bos());
    EXPECT_EQ(l3.encode("Hi", true, false).front(), l3.bos());
    EXPECT_EQ(l3.bos(), 128000);
}

TEST(Tokenizer, SpmByteFallbackStreams) {
    SKIP_WITHOUT_SHARED();
    const Tokenizer& t = tokenizer_for("llama2-spm");
    // A character llama2's 32K vocab does not have becomes byte tokens <0x..>
    const std::string s = "🦙";
    const auto ids = t.encode(s, false, false);
    ASSERT_GE(ids.size(), 4u);
    size_t bytes = 0;
    for (TokenId id : ids) bytes += t.is_byte(id);
    EXPECT_EQ(bytes, 4u);
    kiln::Detokenizer d(t);
    std::string out;
    for (size_t i = 0; i < ids.size(); ++i) {
        const std::string part = d.push(ids[i]);
        if (i + 1 < ids.size() && t.is_byte(ids[i + 1])) {
            EXPECT_EQ(part, "") << "partial UTF-8 must be held";
        }
        out += part;
    }
    EXPECT_EQ(d.pending(), 0u);
    EXPECT_EQ(out + d.flush(), s);
}

// ---- models in /work/shared/models ---------------------------------------------------------------

TEST(Tokenizer, LoadsEveryModelVocab) {
    const fs::path dir = fs::path(KILN_SHARED_DIR) / "models";
    if (!fs::is_directory(dir)) GTEST_SKIP() << "\n*** SHARED TEST DATA MISSING: " << dir << " ***\n";
    size_t n = 0;
    for (const auto& e : fs::directory_iterator(dir)) {
        if (e.path().extension() != ".gguf") continue;
        SCOPED_TRACE(e.path().string());
        auto f = kiln::gguf::File::open(e.path().string());
        Tokenizer t(*f);
        const std::string s = "Hello world, the quick brown fox";
        EXPECT_EQ(t.decode(t.encode(s, false, false)), s);
        ++n;
    }
    EXPECT_GT(n, 0u);
}

// ---- errors ------------------------------------------------------------------------------------

std::unique_ptr<kiln::gguf::File> tiny_vocab(const std::string& model, const std::string& pre,
                                             std::vector<uint8_t>& storage) {
    kiln::gguf::Writer w;
    w.set_string("general.architecture", "llama");
    w.set_string("tokenizer.ggml.model", model);
    if (!pre.empty()) w.set_string("tokenizer.ggml.pre", pre);
    w.set_strings("tokenizer.ggml.tokens", {"a", "b", "ab"});
    w.set_strings("tokenizer.ggml.merges", {"a b"});
    storage = w.to_bytes();
    return kiln::gguf::File::from_memory(storage.data(), storage.size(), "tiny.gguf");
}

std::string error_of(const std::string& model, const std::string& pre) {
    std::vector<uint8_t> storage;
    auto f = tiny_vocab(model, pre, storage);
    try {
        Tokenizer t(*f);
    } catch (const kiln::Error& e) {
        return e.what();
    }
    return "";
}

TEST(Tokenizer, ErrorsNameTheProblem) {
    const std::string unsupported = error_of("t5", "");
    EXPECT_NE(unsupported.find("'t5'"), std::string::npos) << unsupported;
    EXPECT_NE(unsupported.find("'llama'"), std::string::npos) << unsupported;
    EXPECT_NE(unsupported.find("'gpt2'"), std::string::npos) << unsupported;

    const std::string unknown_pre = error_of("gpt2", "no-such-pre");
    EXPECT_NE(unknown_pre.find("'no-such-pre'"), std::string::npos) << unknown_pre;
    EXPECT_NE(unknown_pre.find("qwen2"), std::string::npos) << unknown_pre;

    EXPECT_EQ(error_of("gpt2", ""), "");  // missing pre: "default"
    std::vector<uint8_t> storage;
    auto f = tiny_vocab("gpt2", "", storage);
    Tokenizer t(*f);
    EXPECT_EQ(t.pre(), "default");
    EXPECT_EQ(t.encode("ab", false, false), std::vector<TokenId>{2});
    EXPECT_THROW(t.decode(std::vector<TokenId>{3}), kiln::Error);
    EXPECT_THROW(t.token_to_piece(-1), kiln::Error);
}

TEST(Tokenizer, InvalidUtf8DoesNotThrow) {
    SKIP_WITHOUT_SHARED();
    const std::string bad = "ok \xff\xfe \xe2\x82 end \xc3";
    for (const char* name : {"qwen3", "llama2-spm"}) {
        const Tokenizer& t = tokenizer_for(name);
        const auto ids = t.encode(bad, false, false);
        EXPECT_FALSE(ids.empty()) << name;
        kiln::Detokenizer d(t);
        std::string out;
        for (TokenId id : ids) out += d.push(id);
        out += d.flush();
        EXPECT_EQ(out, t.decode(ids)) << name;
    }
    // (Neither is lossless on invalid UTF-8: BPE reads bad bytes as U+FFFD, and SPM, like llama.cpp,
    // takes a character's length from its lead byte alone, so a bad byte swallows the following ones.)
}

TEST(Tokenizer, Utf8CompletePrefix) {
    EXPECT_EQ(kiln::utf8_complete_prefix(""), 0u);
    EXPECT_EQ(kiln::utf8_complete_prefix("abc"), 3u);
    EXPECT_EQ(kiln::utf8_complete_prefix("a\xE2"), 1u);
    EXPECT_EQ(kiln::utf8_complete_prefix("a\xE2\x80"), 1u);
    EXPECT_EQ(kiln::utf8_complete_prefix("a\xE2\x80\x9C"), 4u);
    EXPECT_EQ(kiln::utf8_complete_prefix("\xF0\x9F\xA6"), 0u);
    EXPECT_EQ(kiln::utf8_complete_prefix("\xF0\x9F\xA6\x99"), 4u);
    EXPECT_EQ(kiln::utf8_complete_prefix("a\x80"), 2u);  // stray continuation: pass through
    EXPECT_EQ(kiln::utf8_complete_prefix("a\xFF"), 2u);
}

}  // namespace
