// `kiln chat` end to end with piped stdin: Qwen3's real tokenizer and template (random weights),
// one reply per turn, the KV cache of the earlier turns reused, /reset, and a clean exit at EOF.
#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <sstream>

#include "support/run.h"
#include "support/shared.h"

namespace {

using kiln::test::run_kiln_with_input;

std::vector<std::smatch> turns(const std::string& err) {
    static const std::regex re(R"(turn (\d+): (\d+) prompt tokens \((\d+) reused)");
    std::vector<std::smatch> out;
    for (auto it = std::sregex_iterator(err.begin(), err.end(), re); it != std::sregex_iterator(); ++it) out.push_back(*it);
    return out;
}

}  // namespace

TEST(CliChat, PipedTurnsReuseTheCacheAndExitAtEof) {
    KILN_REQUIRE_SHARED("models");
    const std::string model = (kiln::test::shared_dir() / "models" / "qwen3-vocab-tiny.f16.gguf").string();
    const auto r = run_kiln_with_input({"chat", "-m", model, "-c", "512", "-t", "2", "--temp", "1", "--top-k", "0", "--top-p",
                                   "1", "--min-p", "0", "-s", "7", "-n", "6", "--system", "You are terse."},
                                  "Hello!\nHow are you?\n\n/reset\nAgain.\n");
    ASSERT_EQ(r.code, 0) << r.err;
    const auto t = turns(r.err);
    ASSERT_EQ(t.size(), 3u) << r.err;
    EXPECT_EQ(std::stoi(t[0][3].str()), 0);
    // Turn 2 re-renders the whole conversation; the first turn's tokens are still in the cache.
    EXPECT_GE(std::stoi(t[1][3].str()), std::stoi(t[0][2].str())) << r.err;
    EXPECT_GT(std::stoi(t[1][2].str()), std::stoi(t[0][2].str()));
    EXPECT_NE(r.err.find("conversation reset"), std::string::npos);
    EXPECT_EQ(std::stoi(t[2][3].str()), 0) << "after /reset nothing is reused";
    // Random weights, sampled: every turn prints a non-empty reply line.
    std::istringstream lines(r.out);
    int n_lines = 0;
    for (std::string l; std::getline(lines, l);) n_lines += !l.empty();
    EXPECT_GE(n_lines, 3) << r.out;  // (a sampled reply may hold newlines)
}

TEST(CliChat, ExitCommandAndBadParser) {
    KILN_REQUIRE_SHARED("models");
    const std::string model = (kiln::test::shared_dir() / "models" / "qwen3-vocab-tiny.f16.gguf").string();
    auto r = run_kiln_with_input({"chat", "-m", model, "-c", "256", "-t", "2", "--temp", "0", "-n", "3"}, "Hi\n/exit\nnever\n");
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(turns(r.err).size(), 1u) << r.err;
    r = run_kiln_with_input({"chat", "-m", model, "--parser", "nope"}, "");
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.err.find("--parser"), std::string::npos) << r.err;
}

TEST(CliChat, TemplateThatOpensThinkingShowsThinking) {
    KILN_REQUIRE_SHARED("models");
    const std::string model = (kiln::test::shared_dir() / "models" / "qwen3-vocab-tiny.f16.gguf").string();
    const auto tmpl = kiln::test::temp_path("chat-think.jinja");
    std::ofstream(tmpl) << "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                           "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}";
    const auto r = run_kiln_with_input({"chat", "-m", model, "--chat-template", tmpl.string(), "--parser", "qwen3", "-c", "256",
                                   "-t", "2", "--temp", "1", "--top-k", "0", "--top-p", "1", "--min-p", "0", "-s", "11",
                                   "-n", "5"},
                                  "Think first.\n");
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(turns(r.err).size(), 1u) << r.err;
    EXPECT_TRUE(r.out.starts_with("[thinking] ")) << r.out;
    EXPECT_NE(r.err.find("parser hermes"), std::string::npos) << r.err;
}
