// `kiln chat` end to end with piped stdin: Qwen3's real tokenizer and template (random weights),
// one reply per turn, the KV cache of the earlier turns reused, /reset, and a clean exit at EOF.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <regex>
#include <chrono>
#include <sstream>
#include <thread>

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

TEST(CliChat, HelpAndUnknownCommandsAreNotSentToTheModel) {
    KILN_REQUIRE_SHARED("models");
    const std::string model = (kiln::test::shared_dir() / "models" / "qwen3-vocab-tiny.f16.gguf").string();
    auto r = run_kiln_with_input({"chat", "-m", model, "-c", "256", "-t", "2", "--temp", "0", "-n", "3"},
                                 "/help\n/frobnicate\n/usr/bin is a folder\n");
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.err.find("/reset   start over"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("unknown command /frobnicate (/help lists them)"), std::string::npos) << r.err;
    EXPECT_EQ(turns(r.err).size(), 1u) << r.err;  // only "/usr/bin is a folder" reached the model
}

TEST(CliChat, FullContextDropsTheOldestTurnsKeepingTheSystemMessage) {
    KILN_REQUIRE_SHARED("models");
    const std::string model = (kiln::test::shared_dir() / "models" / "qwen3-vocab-tiny.f16.gguf").string();
    std::string input;
    for (int i = 0; i < 6; ++i) input += "Message number " + std::to_string(i) + ": tell me about kilns, glazes and firing clay.\n";
    auto r = run_kiln_with_input({"chat", "-m", model, "-c", "160", "-t", "2", "--temp", "0", "-n", "12", "--system", "You are terse."},
                                 input);
    ASSERT_EQ(r.code, 0) << r.err;
    const auto t = turns(r.err);
    EXPECT_EQ(t.size(), 6u) << r.err;  // every message was answered
    EXPECT_NE(r.err.find("outgrew the context (160 tokens): dropped the"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("kept the system message"), std::string::npos) << r.err;
    for (const auto& m : t) EXPECT_LT(std::stoi(m[2].str()), 160) << r.err;
}

// Ctrl-C during a reply stops it; the conversation goes on with that reply in its history.
TEST(CliChat, CtrlCStopsTheReplyAndKeepsTheHistory) {
    KILN_REQUIRE_SHARED("models");
    const std::string model = (kiln::test::shared_dir() / "models" / "qwen3-vocab-tiny.f16.gguf").string();
    const auto err_path = kiln::test::temp_path("chat-ctrlc-" + std::to_string(::getpid()) + ".err");
    int in[2], outp[2];
    ASSERT_EQ(::pipe(in), 0);
    ASSERT_EQ(::pipe(outp), 0);
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::dup2(in[0], 0);
        ::dup2(outp[1], 1);
        if (FILE* f = std::fopen(err_path.c_str(), "w")) ::dup2(fileno(f), 2);
        ::close(in[1]);
        ::close(outp[0]);
        const std::string bin = kiln::test::kiln_binary();
        ::execl(bin.c_str(), bin.c_str(), "chat", "-m", model.c_str(), "-c", "4096", "-t", "2", "--temp", "1", "--top-k", "0", "--top-p", "1",
                "--min-p", "0", "-s", "3", "-n", "2000", static_cast<char*>(nullptr));
        ::_exit(127);
    }
    ::close(in[0]);
    ::close(outp[1]);
    const std::string first = "Tell me a very long story.\n";
    ASSERT_EQ(::write(in[1], first.data(), first.size()), static_cast<ssize_t>(first.size()));
    // Wait for the reply to be under way (some output), then interrupt it.
    char buf[4096];
    size_t got = 0;
    for (int i = 0; i < 200 && got < 64; ++i) {
        pollfd p{outp[0], POLLIN, 0};
        if (::poll(&p, 1, 100) > 0) {
            const ssize_t n = ::read(outp[0], buf, sizeof buf);
            if (n <= 0) break;
            got += static_cast<size_t>(n);
        }
    }
    ASSERT_GE(got, 64u) << "no reply";
    ::kill(pid, SIGINT);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const std::string second = "Short answer please.\n/exit\n";
    ASSERT_EQ(::write(in[1], second.data(), second.size()), static_cast<ssize_t>(second.size()));
    ::close(in[1]);
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60)) {  // drain until it exits (bounded)
        pollfd p{outp[0], POLLIN, 0};
        if (::poll(&p, 1, 100) > 0 && ::read(outp[0], buf, sizeof buf) <= 0) break;
    }
    ::close(outp[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    std::ifstream e(err_path);
    const std::string err((std::istreambuf_iterator<char>(e)), {});
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << err;
    const auto t = turns(err);
    ASSERT_EQ(t.size(), 2u) << err;
    EXPECT_NE(err.find("stopped: interrupted"), std::string::npos) << err;
    // The second turn's prompt holds the first exchange (the interrupted reply too); the first prompt is reused.
    EXPECT_GT(std::stoi(t[1][2].str()), std::stoi(t[0][2].str()) + 10) << err;
    EXPECT_GE(std::stoi(t[1][3].str()), std::stoi(t[0][2].str())) << err;
}
