// Chat templates: every case of the shared expected.json (real model templates rendered by Python's
// jinja2 the way transformers does), byte for byte; ChatTemplate from a GGUF file; `kiln template`.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/chat_parser.h"
#include "chat/chat_template.h"
#include "gguf/gguf.h"
#include "gguf/writer.h"
#include "support/run.h"
#include "support/text_diff.h"

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
using kiln::ChatTemplate;

namespace {

fs::path templates_dir() { return kiln::test::shared_dir() / "templates"; }
// Templates kept in the repository (tests/data/templates: Qwen3-Coder's), with their own
// conversations and expected renders; they run without ../shared.
fs::path repo_templates_dir() { return fs::path(__FILE__).parent_path() / "data" / "templates"; }

std::string read_file(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

kiln::jinja::Options fixed_clock() {
    kiln::jinja::Options o;
    o.now = [] {
        std::tm tm{};
        tm.tm_year = 2026 - 1900;
        tm.tm_mday = 26;
        tm.tm_hour = 12;
        tm.tm_wday = 1;
        tm.tm_yday = 25;
        return tm;
    };
    return o;
}

ChatTemplate load_template(const std::string& name, const fs::path& dir = templates_dir()) {
    const json tokens = json::parse(read_file(dir / (name.substr(0, name.size() - 6) + ".tokens.json")));
    return ChatTemplate(read_file(dir / name), tokens["bos_token"].get<std::string>(),
                        tokens["eos_token"].get<std::string>(), fixed_clock());
}

struct ExpectedCase {
    std::string tmpl, conversation;
    json expected;
    fs::path dir;  // where the template, conversations.json and expected.json are
};

std::vector<ExpectedCase> load_expected() {
    std::vector<ExpectedCase> cases;
    for (const fs::path& dir : {templates_dir(), repo_templates_dir()}) {
        std::ifstream in(dir / "expected.json");
        if (!in) continue;
        for (const auto& c : json::parse(in)) cases.push_back({c["template"], c["conversation"], c, dir});
    }
    return cases;
}

std::string case_name(const ::testing::TestParamInfo<ExpectedCase>& info) {
    std::string n = info.param.tmpl.substr(0, info.param.tmpl.rfind('.')) + "_" + info.param.conversation;
    for (char& c : n)
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
    return n;
}

class TemplateExpected : public ::testing::TestWithParam<ExpectedCase> {};

TEST_P(TemplateExpected, RendersLikeTransformers) {
    const ExpectedCase& c = GetParam();
    const json conversations = json::parse(read_file(c.dir / "conversations.json"));
    ASSERT_TRUE(conversations.contains(c.conversation));
    const ChatTemplate t = load_template(c.tmpl, c.dir);
    const json& ctx = conversations[c.conversation];
    if (c.expected.contains("output")) {
        std::string out;
        try {
            out = t.render(ctx);
        } catch (const kiln::Error& e) {
            FAIL() << "unexpected error: " << e.what();
        }
        EXPECT_TRUE(kiln::test::same_text(c.expected["output"].get<std::string>(), out));
        return;
    }
    // "TemplateError: <message>": the template's own raise_exception.
    const std::string expected = c.expected["error"].get<std::string>();
    try {
        const std::string out = t.render(ctx);
        FAIL() << "expected the error '" << expected << "', got output: " << kiln::test::escape_text(out);
    } catch (const kiln::jinja::TemplateError& e) {
        EXPECT_EQ(e.kind() + ": " + e.message(), expected) << e.what();
        const std::string what = e.what();
        EXPECT_EQ(what.substr(what.size() - expected.size()), expected);
        EXPECT_GT(e.line(), 1);
    }
}

INSTANTIATE_TEST_SUITE_P(Template, TemplateExpected, ::testing::ValuesIn(load_expected()), case_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(TemplateExpected);

TEST(TemplateShared, EveryTemplateAndConversationIsCovered) {
    KILN_REQUIRE_SHARED("templates");
    const auto cases = load_expected();
    const json conversations = json::parse(read_file(templates_dir() / "conversations.json"));
    size_t templates = 0;
    for (const auto& entry : fs::directory_iterator(templates_dir()))
        if (entry.path().extension() == ".jinja") ++templates;
    EXPECT_EQ(templates, 5u);
    EXPECT_EQ(std::count_if(cases.begin(), cases.end(), [](const ExpectedCase& c) { return c.dir == templates_dir(); }),
              static_cast<std::ptrdiff_t>(templates * conversations.size()));
}

// Qwen3-Coder's template (tests/data/templates) x its conversations with tools: all rendered.
TEST(TemplateRepo, EveryTemplateAndConversationIsCovered) {
    const auto cases = load_expected();
    const json conversations = json::parse(read_file(repo_templates_dir() / "conversations.json"));
    size_t templates = 0;
    for (const auto& entry : fs::directory_iterator(repo_templates_dir()))
        if (entry.path().extension() == ".jinja") ++templates;
    EXPECT_EQ(templates, 1u);
    EXPECT_EQ(std::count_if(cases.begin(), cases.end(), [](const ExpectedCase& c) { return c.dir == repo_templates_dir(); }),
              static_cast<std::ptrdiff_t>(templates * conversations.size()));
}

// ---- ChatTemplate API ----------------------------------------------------------------------------

TEST(TemplateApi, SeesBosEosAndTransformersDefaults) {
    const ChatTemplate t("{{ bos_token }}|{{ eos_token }}|{{ tools is none }}|{{ documents is none }}|"
                         "{{ add_generation_prompt }}|{{ messages | length }}",
                         "<s>", "</s>");
    EXPECT_EQ(t.render(json{{"messages", json::array()}}), "<s>|</s>|True|True|False|0");
    EXPECT_EQ(t.render(json{{"messages", json::array({1})}, {"add_generation_prompt", true}, {"bos_token", "B"}}),
              "B|</s>|True|True|True|1");
    EXPECT_EQ(t.bos_token(), "<s>");
    EXPECT_EQ(t.eos_token(), "</s>");
    EXPECT_THROW(t.render(json::array()), kiln::Error);
}

TEST(TemplateApi, SyntaxErrorsSurfaceAtConstruction) {
    try {
        ChatTemplate t("{% for m in messages %}\n{{ m.content ", "", "");
        FAIL() << "no error";
    } catch (const kiln::jinja::TemplateError& e) {
        EXPECT_EQ(e.line(), 2);
    }
}

kiln::gguf::Writer vocab_writer() {
    kiln::gguf::Writer w;
    w.set_string("general.architecture", "llama");
    w.set_strings("tokenizer.ggml.tokens", {"<unk>", "<|begin|>", "<|end|>", "a"});
    w.set_u32("tokenizer.ggml.bos_token_id", 1);
    w.set_u32("tokenizer.ggml.eos_token_id", 2);
    return w;
}

TEST(TemplateApi, FromGguf) {
    auto w = vocab_writer();
    w.set_string("tokenizer.chat_template", "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}");
    const auto bytes = w.to_bytes();
    auto f = kiln::gguf::File::from_memory(bytes.data(), bytes.size(), "mem.gguf");
    const ChatTemplate t = ChatTemplate::from_gguf(*f);
    EXPECT_EQ(t.render(json{{"messages", json::array({{{"content", "hi"}}})}}), "<|begin|>hi<|end|>");

    auto no_template = vocab_writer().to_bytes();
    auto g = kiln::gguf::File::from_memory(no_template.data(), no_template.size(), "mem.gguf");
    EXPECT_THROW(ChatTemplate::from_gguf(*g), kiln::Error);
}

TEST(TemplateApi, FromSharedVocabFiles) {
    KILN_REQUIRE_SHARED("vocab");
    KILN_REQUIRE_SHARED("templates");
    // The vocab files carry the real templates, identical to the shared .jinja files.
    const json conversations = json::parse(read_file(templates_dir() / "conversations.json"));
    const auto cases = load_expected();
    int checked = 0;
    for (const char* name : {"qwen3", "llama3", "gemma3", "deepseek-v3"}) {
        SCOPED_TRACE(name);
        auto f = kiln::gguf::File::open((kiln::test::shared_dir() / "vocab" / (std::string(name) + ".gguf")).string());
        const ChatTemplate t = ChatTemplate::from_gguf(*f, fixed_clock());
        const json tokens = json::parse(read_file(templates_dir() / (std::string(name) + ".tokens.json")));
        EXPECT_EQ(t.bos_token(), tokens["bos_token"].get<std::string>());
        EXPECT_EQ(t.eos_token(), tokens["eos_token"].get<std::string>());
        for (const auto& c : cases) {
            if (c.tmpl != std::string(name) + ".jinja" || !c.expected.contains("output")) continue;
            EXPECT_TRUE(kiln::test::same_text(c.expected["output"].get<std::string>(), t.render(conversations[c.conversation])))
                << c.conversation;
            ++checked;
        }
    }
    EXPECT_GE(checked, 20);
}

// ---- kiln template -------------------------------------------------------------------------------

std::string write_temp(const std::string& name, const std::string& content) {
    const auto p = kiln::test::temp_path(name);
    std::ofstream(p, std::ios::binary) << content;
    return p.string();
}

TEST(TemplateCli, RendersASharedTemplateByteForByte) {
    KILN_REQUIRE_SHARED("templates");
    const json conversations = json::parse(read_file(templates_dir() / "conversations.json"));
    for (const auto& c : load_expected()) {
        if (c.tmpl != "glm-4.6.jinja" || c.conversation != "tools") continue;
        const json tokens = json::parse(read_file(templates_dir() / "glm-4.6.tokens.json"));
        const std::string ctx = write_temp("cli-ctx.json", conversations["tools"].dump());
        const auto r = kiln::test::run_kiln({"template", "--chat-template", (templates_dir() / "glm-4.6.jinja").string(), "--bos",
                                             tokens["bos_token"].get<std::string>(), "--eos", tokens["eos_token"].get<std::string>(),
                                             "--context", ctx},
                                            "template");
        ASSERT_EQ(r.code, 0) << r.err;
        EXPECT_TRUE(kiln::test::same_text(c.expected["output"].get<std::string>(), r.out));
        EXPECT_TRUE(r.err.empty()) << r.err;
        return;
    }
    FAIL() << "glm-4.6.jinja x tools not in expected.json";
}

TEST(TemplateCli, ReadsTheTemplateFromAModel) {
    auto w = vocab_writer();
    w.set_string("tokenizer.chat_template", "{{ bos_token }}[{{ messages[0].content }}]{{ eos_token }}");
    const auto model = kiln::test::temp_path("cli-template-" + std::to_string(::getpid()) + ".gguf");
    w.write(model.string());
    const std::string ctx = write_temp("cli-ctx2.json", R"({"messages": [{"role": "user", "content": "é \"q\""}]})");
    const auto r = kiln::test::run_kiln({"template", "-m", model.string(), "--context", ctx}, "template");
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(r.out, "<|begin|>[é \"q\"]<|end|>");
}

TEST(TemplateCli, ErrorsExitOneWithThePosition) {
    const std::string tmpl = write_temp("cli-bad.jinja", "ok\n{% for m in messages %}{{ raise_exception('no ' ~ m) }}{% endfor %}");
    const std::string ctx = write_temp("cli-ctx3.json", R"({"messages": ["x"]})");
    auto r = kiln::test::run_kiln({"template", "--chat-template", tmpl, "--context", ctx}, "template");
    EXPECT_EQ(r.code, 1);
    EXPECT_TRUE(r.out.empty());
    EXPECT_NE(r.err.find("line 2, column"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("TemplateError: no x"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("cli-bad.jinja"), std::string::npos) << r.err;

    const std::string syntax = write_temp("cli-syntax.jinja", "{% if x %}");
    r = kiln::test::run_kiln({"template", "--chat-template", syntax, "--context", ctx}, "template");
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.err.find("TemplateSyntaxError"), std::string::npos) << r.err;

    r = kiln::test::run_kiln({"template", "--chat-template", tmpl}, "template");
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.err.find("--context"), std::string::npos) << r.err;

    r = kiln::test::run_kiln({"template", "--context", ctx}, "template");
    EXPECT_EQ(r.code, 1);

    const std::string bad_json = write_temp("cli-ctx4.json", "{not json");
    r = kiln::test::run_kiln({"template", "--chat-template", tmpl, "--context", bad_json}, "template");
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.err.find("cli-ctx4.json"), std::string::npos) << r.err;

    auto w = vocab_writer();
    const auto model = kiln::test::temp_path("cli-no-template-" + std::to_string(::getpid()) + ".gguf");
    w.write(model.string());
    r = kiln::test::run_kiln({"template", "-m", model.string(), "--context", ctx}, "template");
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.err.find("chat_template"), std::string::npos) << r.err;
}

}  // namespace

// What Qwen3-Coder's own template writes for an assistant's tool calls, read back by the
// qwen3-coder output parser with the tools' schemas: the same calls, the arguments with their JSON
// types (the template writes a boolean as Python's "False", an object as JSON).
TEST(TemplateRepo, Qwen3CoderToolCallsRoundTripThroughTheParser) {
    const json conversations = json::parse(read_file(repo_templates_dir() / "conversations.json"));
    const json& conv = conversations["tool_call_and_result"];
    const std::string out = load_template("qwen3-coder.jinja", repo_templates_dir()).render(conv);
    kiln::chat::ParserOptions o;
    o.family = kiln::chat::detect_family(read_file(repo_templates_dir() / "qwen3-coder.jinja"), "qwen3moe");
    ASSERT_EQ(o.family, kiln::chat::ParserFamily::QwenXml);
    o.tools_json = conv["tools"].dump();
    size_t pos = 0, turns = 0;
    for (const json& m : conv["messages"]) {
        if (m["role"] != "assistant" || !m.contains("tool_calls")) continue;
        // The assistant turn as the model would have written it: after the header, up to <|im_end|>.
        pos = out.find("<|im_start|>assistant\n", pos);
        ASSERT_NE(pos, std::string::npos);
        pos += std::string("<|im_start|>assistant\n").size();
        const std::string turn = out.substr(pos, out.find("<|im_end|>", pos) - pos);
        const kiln::chat::ParsedMessage parsed = kiln::chat::parse_output(turn, o);
        ASSERT_EQ(parsed.tool_calls.size(), m["tool_calls"].size()) << turn;
        for (size_t i = 0; i < parsed.tool_calls.size(); ++i) {
            const json& want = m["tool_calls"][i]["function"];
            EXPECT_EQ(parsed.tool_calls[i].name, want["name"].get<std::string>());
            EXPECT_EQ(json::parse(parsed.tool_calls[i].arguments), want["arguments"]) << turn;
        }
        EXPECT_EQ(parsed.content, m["content"].get<std::string>());
        EXPECT_TRUE(parsed.warnings.empty());
        ++turns;
    }
    EXPECT_EQ(turns, 2u);
}
