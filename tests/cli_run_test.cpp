// `kiln run` and `kiln demo` end to end: the story model's text must follow its word chain (so the
// whole forward pass, tokenizer, sampler and detokenizer work together), and bad input exits 1
// with one clear line.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <tuple>
#include <set>
#include <sstream>

#include "gguf/writer.h"
#include "model/synthetic.h"
#include "support/run.h"

using kiln::test::run_kiln;

namespace {

std::string story_model(const std::string& name, kiln::TensorType type) {
    kiln::SyntheticLlama s;
    s.story = true;
    s.type = type;
    // One file per process (ctest runs tests side by side: rewriting a file another test's kiln has
    // mapped is a bus error there).
    const std::string path = kiln::test::temp_path(std::to_string(::getpid()) + "-" + name).string();
    kiln::write_synthetic_llama(path, s);
    return path;
}

// The chain written by write_synthetic_llama(story = true), "." separating sentences.
const std::map<std::string, std::set<std::string>> kNext = {
    {"once", {"upon"}},         {"upon", {"a"}},           {"a", {"time", "kiln", "pot"}},
    {"time", {"there"}},        {"there", {"was"}},        {"was", {"a", "hot", "cool"}},
    {"kiln", {"was"}},          {"pot", {"was"}},          {"hot", {"and", "."}},
    {"cool", {"and", "."}},     {"and", {"the"}},          {"the", {"clay", "fire", "glaze", "kiln", "pot"}},
    {"clay", {"was"}},          {"fire", {"was"}},         {"glaze", {"was"}},
    {".", {"the", "once"}},
};

std::vector<std::string> words(const std::string& text) {
    std::string spaced;
    for (char c : text) spaced += c == '.' ? std::string(" . ") : std::string(1, c);
    std::istringstream in(spaced);
    std::vector<std::string> out;
    for (std::string w; in >> w;) out.push_back(w);
    return out;
}

void expect_story(const std::string& generated, size_t min_words) {
    const auto w = words(generated);
    ASSERT_GE(w.size(), min_words) << generated;
    for (size_t i = 0; i + 1 < w.size(); ++i) {
        const auto it = kNext.find(w[i]);
        ASSERT_NE(it, kNext.end()) << "'" << w[i] << "' is not a story word in: " << generated;
        EXPECT_TRUE(it->second.count(w[i + 1])) << "'" << w[i] << "' -> '" << w[i + 1] << "' in: " << generated;
    }
}

}  // namespace

TEST(CliRun, StoryModelFollowsItsChain) {
    for (auto type : {kiln::TensorType::F32, kiln::TensorType::Q8_0, kiln::TensorType::Q4_0}) {
        SCOPED_TRACE(kiln::type_name(type));
        const std::string model = story_model(std::string("story-") + kiln::type_name(type) + ".gguf", type);
        for (const char* seed : {"1", "2", "3"}) {
            auto r = run_kiln({"run", "-m", model, "-p", "Once upon a", "-n", "30", "--seed", seed, "--no-display-prompt"});
            ASSERT_EQ(r.code, 0) << r.err;
            expect_story("a " + r.out, 20);
            EXPECT_NE(r.err.find("prompt eval time"), std::string::npos) << r.err;
            EXPECT_NE(r.err.find("eval time"), std::string::npos);
            EXPECT_NE(r.err.find("load time"), std::string::npos);
        }
        // Greedy from the prompt's last word, and the prompt echoed first.
        auto g = run_kiln({"run", "-m", model, "-p", "the kiln", "-n", "8", "--temp", "0", "-q"});
        ASSERT_EQ(g.code, 0) << g.err;
        ASSERT_EQ(g.out.rfind("the kiln was", 0), 0u) << g.out;
        expect_story(g.out, 9);
        EXPECT_TRUE(g.err.empty()) << g.err;  // -q: no progress, no statistics
    }
}

// -ctk / -ctv (llama.cpp's names): quantized caches still tell the story, the KV line names the
// types and the smaller size, and an unknown type is one clear error.
TEST(CliRun, QuantizedKvCacheTypes) {
    const std::string model = story_model("story-kv.gguf", kiln::TensorType::F32);
    auto f16 = run_kiln({"run", "-m", model, "-p", "the kiln", "-n", "12", "--temp", "0", "-c", "256"});
    ASSERT_EQ(f16.code, 0) << f16.err;
    EXPECT_NE(f16.err.find("KV cache f16"), std::string::npos) << f16.err;
    for (auto [k, v, line] : {std::tuple{"q8_0", "q8_0", "KV cache q8_0"}, std::tuple{"q8_0", "q4_0", "KV cache K q8_0 V q4_0"},
                              std::tuple{"f32", "q4_0", "KV cache K f32 V q4_0"}}) {
        auto r = run_kiln({"run", "-m", model, "-p", "the kiln", "-n", "12", "--temp", "0", "-c", "256", "-ctk", k, "-ctv", v});
        ASSERT_EQ(r.code, 0) << r.err;
        EXPECT_NE(r.err.find(line), std::string::npos) << r.err;
        expect_story(r.out, 13);
    }
    auto bad = run_kiln({"run", "-m", model, "-p", "x", "--cache-type-v", "q5_1"});
    EXPECT_EQ(bad.code, 1);
    EXPECT_NE(bad.err.find("-ctv: unknown KV cache type 'q5_1' (f16, f32, q8_0 or q4_0)"), std::string::npos) << bad.err;
}

TEST(CliRun, SameSeedSameText) {
    const std::string model = story_model("story-seed.gguf", kiln::TensorType::Q8_0);
    auto a = run_kiln({"run", "-m", model, "-p", "Once upon a time", "-n", "40", "--seed", "11", "-q"});
    auto b = run_kiln({"run", "-m", model, "-p", "Once upon a time", "-n", "40", "--seed", "11", "-q"});
    ASSERT_EQ(a.code, 0) << a.err;
    EXPECT_EQ(a.out, b.out);
}

TEST(CliRun, DemoRunsEndToEnd) {
    const std::string out = kiln::test::temp_path("demo-test-" + std::to_string(::getpid()) + ".gguf").string();
    auto r = run_kiln({"demo", "-o", out, "-n", "24"});
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find("architecture    llama"), std::string::npos) << r.out;
    const auto pos = r.out.find("Once upon a time");
    ASSERT_NE(pos, std::string::npos) << r.out;
    expect_story("time" + r.out.substr(pos + 16), 18);
}

TEST(CliRun, ErrorsAreOneClearLine) {
    auto missing = run_kiln({"run", "-m", "/nonexistent/m.gguf", "-p", "hi"});
    EXPECT_EQ(missing.code, 1);
    EXPECT_NE(missing.err.find("/nonexistent/m.gguf"), std::string::npos) << missing.err;

    const auto text = kiln::test::temp_path("run-not-gguf-" + std::to_string(::getpid()) + ".gguf");
    std::ofstream(text) << "this is not a model";
    auto notgguf = run_kiln({"run", "-m", text.string(), "-p", "hi"});
    EXPECT_EQ(notgguf.code, 1);
    EXPECT_NE(notgguf.err.find("not a GGUF file"), std::string::npos) << notgguf.err;

    kiln::gguf::Writer w;
    w.set_string("general.architecture", "mamba9");
    w.add_tensor("t", kiln::TensorType::F32, {4}, std::vector<uint8_t>(16));
    const auto arch = kiln::test::temp_path("run-unknown-arch-" + std::to_string(::getpid()) + ".gguf");
    w.write(arch.string());
    auto unk = run_kiln({"run", "-m", arch.string(), "-p", "hi"});
    EXPECT_EQ(unk.code, 1);
    EXPECT_NE(unk.err.find("mamba9"), std::string::npos) << unk.err;
    EXPECT_NE(unk.err.find("llama"), std::string::npos) << unk.err;  // lists the supported ones
    EXPECT_NE(unk.err.find("qwen2"), std::string::npos) << unk.err;

    const std::string model = story_model("story-ctx.gguf", kiln::TensorType::F32);
    std::string long_prompt;
    for (int i = 0; i < 40; ++i) long_prompt += "once upon a time ";
    auto ctx = run_kiln({"run", "-m", model, "-p", long_prompt, "-c", "32"});
    EXPECT_EQ(ctx.code, 1);
    EXPECT_NE(ctx.err.find("162 tokens"), std::string::npos) << ctx.err;
    EXPECT_NE(ctx.err.find("32"), std::string::npos) << ctx.err;
    EXPECT_EQ(std::count(ctx.err.begin(), ctx.err.end(), '\n'), 1) << ctx.err;

    auto noprompt = run_kiln({"run", "-m", model});
    EXPECT_EQ(noprompt.code, 1);
    auto nomodel = run_kiln({"run", "-p", "x"});
    EXPECT_EQ(nomodel.code, 1);
    EXPECT_NE(nomodel.err.find("-m"), std::string::npos);
}
