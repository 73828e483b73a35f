// The CLI's flags under real use: numbers outside their range, llama.cpp flags that mean something
// else here, the prompt from a file or stdin, -sys, kiln info -m, and models without a chat template
// (a ChatML fallback with a warning, or a built-in template by name) in run, chat and serve.
#include <gtest/gtest.h>
#include <unistd.h>
#include <httplib.h>

#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "gguf/writer.h"
#include "model/synthetic.h"
#include "support/run.h"
#include "support/serve.h"
#include "support/shared.h"

using kiln::test::run_kiln;
using kiln::test::run_kiln_with_input;

namespace {

std::string story_model() {
    static const std::string path = [] {
        kiln::SyntheticLlama s;
        s.story = true;
        s.type = kiln::TensorType::F32;
        // One file per process: ctest runs these tests side by side, and rewriting a file another
        // test's kiln has mapped is a bus error there.
        const std::string p = kiln::test::temp_path("flags-story-" + std::to_string(::getpid()) + ".gguf").string();
        kiln::write_synthetic_llama(p, s);
        return p;
    }();
    return path;
}

std::string shared_model(const char* name) { return (kiln::test::shared_dir() / "models" / name).string(); }

}  // namespace

TEST(CliFlags, NumbersOutsideTheirRangeNameTheFlagAndTheRange) {
    const std::string m = story_model();
    struct Case {
        std::vector<std::string> args;
        const char* flag;
        const char* allowed;
    };
    const std::vector<Case> cases = {
        {{"run", "-n", "-5"}, "-n", "-1 (until end of text or the context is full) or more"},
        {{"run", "-c", "-1"}, "-c", "0 (the model's) to 16777216"},
        {{"run", "-t", "0"}, "-t", "1 to 1024"},
        {{"run", "-t", "-3"}, "-t", "1 to 1024"},
        {{"run", "--temp", "nan"}, "--temp", "0 to 100"},
        {{"run", "--top-p", "2"}, "--top-p", "0 to 1"},
        {{"run", "--min-p", "5"}, "--min-p", "0 to 1"},
        {{"run", "--top-k", "-1"}, "--top-k", "0 (off) or more"},
        {{"chat", "--top-p", "-0.5"}, "--top-p", "0 to 1"},
        {{"chat", "-t", "0"}, "-t", "1 to 1024"},
        {{"serve", "--queue", "-1"}, "--queue", "0 to 4096"},
        {{"serve", "-t", "0"}, "-t", "1 to 1024"},
        {{"serve", "-to", "0"}, "-to", "1 to 86400"},
    };
    for (const Case& c : cases) {
        std::vector<std::string> args = c.args;
        args.insert(args.begin() + 1, {"-m", m, "-p", "once"});
        if (args[0] != "run") args.erase(args.begin() + 3, args.begin() + 5);  // -p is run's only
        const auto r = run_kiln(args, "flags");
        SCOPED_TRACE(testing::PrintToString(c.args));
        EXPECT_EQ(r.code, 1);
        EXPECT_NE(r.err.find(std::string("kiln ") + c.args[0] + ": " + c.flag + ": "), std::string::npos) << r.err;
        EXPECT_NE(r.err.find(std::string("(allowed: ") + c.allowed + ")"), std::string::npos) << r.err;
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    }
    // -n -1: until the end of text or a full context (documented), accepted.
    const auto ok = run_kiln({"run", "-m", m, "-p", "once upon a", "-n", "-1", "-c", "24", "-q", "--temp", "0"});
    EXPECT_EQ(ok.code, 0) << ok.err;
}

TEST(CliFlags, LlamaCppFlagsGetAHint) {
    const std::string m = story_model();
    const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
        {{"-ngl", "99"}, "use --backend vulkan"}, {{"-fa"}, "flash attention is always on"},
        {{"--jinja"}, "always run as Jinja"},    {{"--mlock"}, "memory-mapped"},
        {{"--no-mmap"}, "always memory-maps"},    {{"-tb", "4"}, "use -t"},
    };
    for (const auto& [flag, hint] : cases) {
        std::vector<std::string> args = {"run", "-m", m, "-p", "once"};
        args.insert(args.end(), flag.begin(), flag.end());
        const auto r = run_kiln(args, "flags");
        EXPECT_EQ(r.code, 1) << flag[0];
        EXPECT_NE(r.err.find("kiln run: " + flag[0] + ": "), std::string::npos) << r.err;
        EXPECT_NE(r.err.find(hint), std::string::npos) << r.err;
        EXPECT_EQ(r.err.find("unknown option"), std::string::npos) << r.err;
    }
}

TEST(CliFlags, PromptFromFileOrStdin) {
    const std::string m = story_model();
    const auto file = kiln::test::temp_path("flags-prompt.txt");
    std::ofstream(file) << "once upon a";
    const auto plain = run_kiln({"run", "-m", m, "-p", "once upon a", "-n", "8", "--temp", "0", "-q"});
    ASSERT_EQ(plain.code, 0) << plain.err;
    const auto from_file = run_kiln({"run", "-m", m, "-f", file.string(), "-n", "8", "--temp", "0", "-q"});
    ASSERT_EQ(from_file.code, 0) << from_file.err;
    EXPECT_EQ(from_file.out, plain.out);
    const auto from_stdin = run_kiln_with_input({"run", "-m", m, "-p", "-", "-n", "8", "--temp", "0", "-q"}, "once upon a");
    ASSERT_EQ(from_stdin.code, 0) << from_stdin.err;
    EXPECT_EQ(from_stdin.out, plain.out);
    const auto f_stdin = run_kiln_with_input({"run", "-m", m, "-f", "-", "-n", "8", "--temp", "0", "-q"}, "once upon a");
    EXPECT_EQ(f_stdin.out, plain.out);

    const auto dir = run_kiln({"run", "-m", m, "-f", kiln::test::temp_path("").string()});
    EXPECT_EQ(dir.code, 1);
    EXPECT_NE(dir.err.find("is a directory, not a file"), std::string::npos) << dir.err;
    const auto both = run_kiln({"run", "-m", m, "-f", file.string(), "-p", "x"});
    EXPECT_EQ(both.code, 1);
    EXPECT_NE(both.err.find("not both"), std::string::npos) << both.err;
    const auto tok_dir = run_kiln({"tokenize", "-m", m, "-f", kiln::test::temp_path("").string()});
    EXPECT_EQ(tok_dir.code, 1);
    EXPECT_NE(tok_dir.err.find("is a directory, not a file"), std::string::npos) << tok_dir.err;
}

TEST(CliFlags, SystemPromptGoesThroughTheChatTemplate) {
    const std::string m = story_model();  // no chat template: ChatML, with a warning
    const auto plain = run_kiln({"run", "-m", m, "-p", "once", "-n", "1", "--temp", "0"});
    const auto sys = run_kiln({"run", "-m", m, "-sys", "be brief", "-p", "once", "-n", "1", "--temp", "0"});
    ASSERT_EQ(plain.code, 0) << plain.err;
    ASSERT_EQ(sys.code, 0) << sys.err;
    EXPECT_NE(sys.err.find("has no chat template; using ChatML"), std::string::npos) << sys.err;
    auto prompt_tokens = [](const std::string& err) {
        const auto p = err.find(" prompt tokens");
        const auto b = err.rfind(' ', p - 1);
        return std::stoi(err.substr(b + 1, p - b - 1));
    };
    // "once" alone vs. the ChatML frame around "be brief" and "once" (spelled out by the byte vocabulary).
    EXPECT_GT(prompt_tokens(sys.err), prompt_tokens(plain.err) + 20) << sys.err;
    const auto named = run_kiln({"run", "-m", m, "-sys", "x", "-p", "once", "-n", "1", "--chat-template-name", "llama3"});
    EXPECT_EQ(named.code, 0) << named.err;
    EXPECT_EQ(named.err.find("using ChatML"), std::string::npos) << named.err;
    const auto bad = run_kiln({"run", "-m", m, "-sys", "x", "-p", "once", "--chat-template-name", "nope"});
    EXPECT_EQ(bad.code, 1);
    EXPECT_NE(bad.err.find("unknown --chat-template-name 'nope' (built in: chatml, llama3, gemma)"), std::string::npos) << bad.err;
}

TEST(CliFlags, ContextTooSmallSaysOneMoreTokenIsNeeded) {
    const std::string m = story_model();
    const auto r = run_kiln({"run", "-m", m, "-p", "once upon a time there was a kiln", "-c", "8"});
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.err.find("the answer needs at least one more"), std::string::npos) << r.err;
}

TEST(CliFlags, InfoTakesDashM) {
    const std::string m = story_model();
    const auto a = run_kiln({"info", "-m", m});
    const auto b = run_kiln({"info", m});
    ASSERT_EQ(a.code, 0) << a.err;
    EXPECT_EQ(a.out, b.out);
    EXPECT_NE(a.out.find("llama"), std::string::npos);
}

// llama-tiny and gpt-oss-tiny have no chat template: chat and serve fall back to ChatML (with a
// warning) or take a built-in by name; /v1/completions needs none.
TEST(CliFlags, ModelsWithoutAChatTemplateChatAndServe) {
    KILN_REQUIRE_SHARED("models");
    for (const char* name : {"llama-tiny.f32.gguf", "gpt-oss-tiny.f32.gguf"}) {
        SCOPED_TRACE(name);
        const std::string m = shared_model(name);
        auto r = run_kiln_with_input({"chat", "-m", m, "-c", "256", "-t", "2", "-n", "3", "--temp", "0"}, "Hello\n");
        EXPECT_EQ(r.code, 0) << r.err;
        EXPECT_NE(r.err.find("has no chat template; using ChatML"), std::string::npos) << r.err;
        EXPECT_NE(r.err.find("turn 1:"), std::string::npos) << r.err;
        r = run_kiln_with_input({"chat", "-m", m, "-c", "256", "-t", "2", "-n", "3", "--chat-template-name", "gemma"}, "Hello\n");
        EXPECT_EQ(r.code, 0) << r.err;
        EXPECT_EQ(r.err.find("using ChatML"), std::string::npos) << r.err;
    }
    kiln::test::ServeProcess s;
    ASSERT_TRUE(s.start(shared_model("llama-tiny.f32.gguf"), {"-c", "256", "-t", "2"}, nullptr, "flags-notemplate"));
    httplib::Client c("127.0.0.1", s.port);
    using json = nlohmann::json;
    auto chat = c.Post("/v1/chat/completions",
                       json{{"max_tokens", 3}, {"messages", json::array({json{{"role", "user"}, {"content", "hi"}}})}}.dump(), "application/json");
    ASSERT_TRUE(chat);
    EXPECT_EQ(chat->status, 200) << chat->body;
    auto msg = c.Post("/v1/messages", json{{"max_tokens", 3}, {"messages", json::array({json{{"role", "user"}, {"content", "hi"}}})}}.dump(),
                      "application/json");
    ASSERT_TRUE(msg);
    EXPECT_EQ(msg->status, 200) << msg->body;
    auto comp = c.Post("/v1/completions", json{{"max_tokens", 3}, {"prompt", "once"}}.dump(), "application/json");
    ASSERT_TRUE(comp);
    EXPECT_EQ(comp->status, 200) << comp->body;
    s.stop();
    std::ifstream log(s.log_path);
    const std::string text((std::istreambuf_iterator<char>(log)), {});
    EXPECT_NE(text.find("has no chat template; using ChatML"), std::string::npos) << text;

    // The fallback's end of turn is no special token of this vocabulary: its text ends the answer.
    kiln::test::ServeProcess scripted;
    ASSERT_TRUE(scripted.start(shared_model("llama-tiny.f32.gguf"), {"-c", "256", "-t", "2"}, "once upon<|im_end|>more text",
                               "flags-endturn"));
    httplib::Client c2("127.0.0.1", scripted.port);
    auto end = c2.Post("/v1/messages", json{{"max_tokens", 40}, {"messages", json::array({json{{"role", "user"}, {"content", "hi"}}})}}.dump(),
                       "application/json");
    ASSERT_TRUE(end);
    ASSERT_EQ(end->status, 200) << end->body;
    const json j = json::parse(end->body);
    EXPECT_EQ(j["content"][0]["text"], "once upon") << end->body;
    EXPECT_EQ(j["stop_reason"], "end_turn") << end->body;
}

TEST(CliFlags, InfoShowsANulInAStringEscaped) {
    kiln::gguf::Writer w;
    w.set_string("general.architecture", "llama");
    w.set_string("general.name", std::string("tiny\0hidden\x01", 12));
    w.add_tensor("t", kiln::TensorType::F32, {4}, std::vector<uint8_t>(16));
    const auto path = kiln::test::temp_path("flags-nul-" + std::to_string(::getpid()) + ".gguf");
    w.write(path.string());
    const auto r = run_kiln({"info", path.string()});
    EXPECT_NE(r.out.find("tiny\\0hidden\\x01"), std::string::npos) << r.out << r.err;
    EXPECT_EQ(r.out.find(std::string(1, '\0')), std::string::npos);
}

TEST(CliFlags, DemoOutputKeepsItsOrderInOnePipe) {
    const auto r = kiln::test::run_shell(kiln::test::shell_quote(kiln::test::kiln_binary()) + " demo -n 4 -o " +
                                         kiln::test::shell_quote(kiln::test::temp_path("flags-demo-" + std::to_string(::getpid()) + ".gguf").string()));
    ASSERT_EQ(r.code, 0) << r.out;
    const auto info_cmd = r.out.find("$ kiln info"), arch = r.out.find("architecture    llama"), run_cmd = r.out.find("$ kiln run"),
               story = r.out.find("Once upon a time");
    ASSERT_NE(info_cmd, std::string::npos) << r.out;
    ASSERT_NE(arch, std::string::npos) << r.out;
    ASSERT_NE(run_cmd, std::string::npos) << r.out;
    ASSERT_NE(story, std::string::npos) << r.out;
    EXPECT_LT(info_cmd, arch) << r.out;
    EXPECT_LT(arch, run_cmd) << r.out;
    EXPECT_LT(run_cmd, story) << r.out;
}
