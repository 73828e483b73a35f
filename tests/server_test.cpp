// kiln serve end to end: starts the built binary on a free loopback port with the tiny Qwen3-vocab
// model and talks to it with httplib (Anthropic Messages, OpenAI Chat Completions, errors, metrics).
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/run.h"
#include "support/serve.h"
#include "support/shared.h"
#include "support/vulkan.h"

namespace {

using json = nlohmann::json;
using kiln::test::kiln_binary;
using kiln::test::shared_dir;
using kiln::test::free_port;
using kiln::test::parse_sse;
using kiln::test::check_anthropic_stream;

constexpr const char* kModel = "models/qwen3-vocab-tiny.f16.gguf";
constexpr const char* kKey = "test-key-123";

// One server for the whole suite; killed when the suite ends.
class ServerTest : public ::testing::Test {
protected:
    static inline pid_t pid_ = -1;
    static inline int port_ = 0;
    static inline std::string log_path_;

    static void SetUpTestSuite() { start(nullptr); }
    static void start(const char* script, const std::vector<std::string>& extra = {}) {
        if (!std::filesystem::exists(shared_dir() / kModel)) return;
        port_ = free_port();
        log_path_ = kiln::test::temp_path("serve-" + std::to_string(::getpid()) + ".log").string();
        const std::string model = (shared_dir() / kModel).string();
        const std::string bin = kiln_binary();
        const std::string port = std::to_string(port_);
        kiln::test::use_fresh_cache_home("serve-suite");
        pid_ = ::fork();
        if (pid_ == 0) {
            if (script) ::setenv("KILN_SERVE_SCRIPTED_OUTPUT", script, 1);
            FILE* f = std::fopen(log_path_.c_str(), "w");
            if (f) {
                ::dup2(fileno(f), 2);
                ::dup2(fileno(f), 1);
            }
            std::vector<std::string> args = {bin, "serve", "-m", model, "-c", "1024", "--port", port, "--parallel", "2",
                                             "--api-key", kKey, "-t", "2"};
            args.insert(args.end(), extra.begin(), extra.end());
            std::vector<char*> argv;
            for (auto& a : args) argv.push_back(a.data());
            argv.push_back(nullptr);
            ::execv(bin.c_str(), argv.data());
            ::_exit(127);
        }
        httplib::Client c("127.0.0.1", port_);
        for (int i = 0; i < 1200; ++i) {  // up to 120 s (Vulkan in a Debug + ASan build on lavapipe is slow to start)
            if (auto r = c.Get("/health"); r && r->status == 200) return;
            int status = 0;
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {  // it exited: no point waiting
                pid_ = -1;
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        std::ifstream log(log_path_);
        std::fprintf(stderr, "kiln serve did not come up; its log:\n%s\n", std::string(std::istreambuf_iterator<char>(log), {}).c_str());
    }
    static void TearDownTestSuite() {
        if (pid_ > 0) {
            ::kill(pid_, SIGTERM);
            int status = 0;
            for (int i = 0; i < 50 && ::waitpid(pid_, &status, WNOHANG) == 0; ++i)
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
            if (::waitpid(pid_, &status, WNOHANG) == 0) {
                ::kill(pid_, SIGKILL);
                ::waitpid(pid_, &status, 0);
            }
            pid_ = -1;
        }
    }
    void SetUp() override {
        KILN_REQUIRE_SHARED("models");
        if (!std::filesystem::exists(shared_dir() / kModel)) GTEST_SKIP() << kModel << " is absent";
        ASSERT_GT(pid_, 0);
    }

    httplib::Client client(const std::string& key = kKey) {
        httplib::Client c("127.0.0.1", port_);
        c.set_read_timeout(120);
        if (!key.empty()) c.set_default_headers({{"x-api-key", key}, {"anthropic-version", "2023-06-01"}});
        return c;
    }
    httplib::Result post(const std::string& path, const json& body, const std::string& key = kKey) {
        return client(key).Post(path, body.dump(), "application/json");
    }
    // Continuous batching: two requests generating at the same time share decode steps
    // (kiln::decode_batch) and still get exactly what each gets alone (greedy sampling).
    void concurrent_generations_are_batched(int max_tokens) {
        // Raw completions: the random-weight model's chat answers are mostly tokens that print nothing.
        auto request = [&](int i) {
            return json{{"model", "local"},
                        {"max_tokens", max_tokens},
                        {"temperature", 0},
                        {"prompt", i == 0 ? "Tell me about kilns" : "Write a long poem about the sea and ships"}};
        };
        auto text_of = [&](const httplib::Result& r) {
            EXPECT_TRUE(r);
            if (!r) return std::string();
            EXPECT_EQ(r->status, 200) << r->body;
            const json j = json::parse(r->body);
            EXPECT_EQ(j["usage"]["completion_tokens"], max_tokens) << r->body;
            return j["choices"][0].value("text", "");
        };
        const std::string alone0 = text_of(post("/v1/completions", request(0)));
        const std::string alone1 = text_of(post("/v1/completions", request(1)));
        EXPECT_NE(alone0, alone1);
        ASSERT_FALSE(alone0.empty());
        auto metric = [&](const std::string& name) {
            auto met = client().Get("/metrics");
            EXPECT_TRUE(met);
            const std::string key = "\n" + name + " ";
            const size_t at = met ? met->body.find(key) : std::string::npos;
            return at == std::string::npos ? int64_t{-1} : std::stoll(met->body.substr(at + key.size()));
        };
        // Both requests generate max_tokens from a short prompt: their decode loops overlap unless
        // the machine stalls one thread for the whole of the other's run (a loaded machine can, for a few
        // tries in a row: the prompts are cached after the first, so each answer is quick), so 12 tries.
        // A step that carried two tokens shows as more batch tokens than batch steps.
        bool batched = false;
        for (int attempt = 0; attempt < 12 && !batched; ++attempt) {
            const int64_t steps0 = metric("kiln_decode_batches_total"), toks0 = metric("kiln_decode_batch_tokens_total");
            std::string got[2];
            std::thread a([&] { got[0] = text_of(post("/v1/completions", request(0))); });
            std::thread b([&] { got[1] = text_of(post("/v1/completions", request(1))); });
            a.join();
            b.join();
            EXPECT_EQ(got[0], alone0);
            EXPECT_EQ(got[1], alone1);
            const int64_t steps = metric("kiln_decode_batches_total") - steps0;
            const int64_t toks = metric("kiln_decode_batch_tokens_total") - toks0;
            EXPECT_GE(steps, max_tokens - 1);  // each generation decodes all but its first token, shared steps or not
            batched = toks > steps;
        }
        EXPECT_TRUE(batched) << "no decode step carried both requests";
        EXPECT_EQ(metric("kiln_decode_batch_max"), 2);
    }
};

json simple_request(bool stream, int max_tokens = 8) {
    return json{{"model", "local"},
                {"max_tokens", max_tokens},
                {"stream", stream},
                {"temperature", 0},
                {"messages", json::array({json{{"role", "user"}, {"content", "Say hello"}}})}};
}

void expect_anthropic_error(const httplib::Result& r, int status, const std::string& type) {
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, status) << r->body;
    const json j = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r->body;
    EXPECT_EQ(j.value("type", ""), "error") << r->body;
    EXPECT_EQ(j["error"].value("type", ""), type) << r->body;
    EXPECT_FALSE(j["error"].value("message", "").empty());
}


// A server whose every answer is a scripted Qwen3 output with thinking and a tool call: the parser
// events become thinking / text / tool_use blocks (Anthropic) and reasoning_content / tool_calls
// (OpenAI).
class ServerToolTest : public ServerTest {
protected:
    static void SetUpTestSuite() {
        start("<think>\nLet me look.\n</think>\n\nI will list them.\n<tool_call>\n{\"name\": \"Bash\", \"arguments\": {\"command\": \"ls -la\"}}\n</tool_call>");
    }
};

TEST_F(ServerToolTest, ThinkingTextAndToolUse) {
    json body = simple_request(true, 200);
    body["thinking"] = {{"type", "enabled"}, {"budget_tokens", 1000}};
    body["tools"] = json::array({json{{"name", "Bash"}, {"input_schema", {{"type", "object"}, {"properties", {{"command", {{"type", "string"}}}}}}}}});
    auto r = post("/v1/messages", body);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    const auto evs = parse_sse(r->body);
    const json delta = check_anthropic_stream(evs);
    EXPECT_EQ(delta["delta"]["stop_reason"], "tool_use");
    std::vector<std::string> kinds;
    std::string partial;
    bool signature = false;
    for (const auto& e : evs) {
        if (e.event == "content_block_start") kinds.push_back(e.data["content_block"]["type"]);
        if (e.event == "content_block_delta" && e.data["delta"]["type"] == "input_json_delta") partial += e.data["delta"]["partial_json"].get<std::string>();
        if (e.event == "content_block_delta" && e.data["delta"]["type"] == "signature_delta") signature = true;
    }
    EXPECT_EQ(kinds, (std::vector<std::string>{"thinking", "text", "tool_use"}));
    EXPECT_TRUE(signature);
    EXPECT_EQ(json::parse(partial), (json{{"command", "ls -la"}}));

    body["stream"] = false;
    auto n = post("/v1/messages", body);
    ASSERT_TRUE(n);
    ASSERT_EQ(n->status, 200) << n->body;
    const json j = json::parse(n->body);
    EXPECT_EQ(j["stop_reason"], "tool_use");
    ASSERT_EQ(j["content"].size(), 3u);
    EXPECT_EQ(j["content"][0]["thinking"], "Let me look.");
    EXPECT_EQ(j["content"][1]["text"], "I will list them.");
    EXPECT_EQ(j["content"][2]["name"], "Bash");
    EXPECT_EQ(j["content"][2]["input"]["command"], "ls -la");

    json oa{{"model", "x"}, {"max_tokens", 200}, {"messages", json::array({json{{"role", "user"}, {"content", "ls"}}})},
            {"tools", json::array({json{{"type", "function"}, {"function", {{"name", "Bash"}, {"parameters", {{"type", "object"}}}}}}})}};
    auto o = post("/v1/chat/completions", oa);
    ASSERT_TRUE(o);
    ASSERT_EQ(o->status, 200) << o->body;
    const json oj = json::parse(o->body);
    EXPECT_EQ(oj["choices"][0]["finish_reason"], "tool_calls");
    EXPECT_EQ(oj["choices"][0]["message"]["reasoning_content"], "Let me look.");
    EXPECT_EQ(oj["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "Bash");
    EXPECT_EQ(json::parse(oj["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"].get<std::string>())["command"], "ls -la");
}

// tool_choice forcing a tool: the prompt ends inside Qwen3's opened <tool_call>, so the scripted
// "model" output is only what follows the opener; the parser still sees a whole call.
json weather_tools() {
    return json::array({json{{"name", "get_weather"},
                             {"input_schema", {{"type", "object"}, {"properties", {{"city", {{"type", "string"}}}}}}}},
                        json{{"name", "get_time"}, {"input_schema", {{"type", "object"}}}}});
}
json openai_weather_tools() {
    json out = json::array();
    for (const auto& t : weather_tools())
        out.push_back({{"type", "function"}, {"function", {{"name", t["name"]}, {"parameters", t["input_schema"]}}}});
    return out;
}

class ServerNamedToolTest : public ServerTest {
protected:
    static void SetUpTestSuite() { start("{\"city\": \"Paris\"}}\n</tool_call>"); }
};

TEST_F(ServerNamedToolTest, ToolChoiceToolForcesThatCall) {
    json body = simple_request(false, 100);
    body["tools"] = weather_tools();
    body["tool_choice"] = {{"type", "tool"}, {"name", "get_weather"}};
    body["thinking"] = {{"type", "enabled"}, {"budget_tokens", 2000}};  // dropped: a forced call comes first
    auto r = post("/v1/messages", body);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    const json j = json::parse(r->body);
    EXPECT_EQ(j["stop_reason"], "tool_use") << r->body;
    ASSERT_EQ(j["content"].size(), 1u) << r->body;
    EXPECT_EQ(j["content"][0]["type"], "tool_use");
    EXPECT_EQ(j["content"][0]["name"], "get_weather");
    EXPECT_EQ(j["content"][0]["input"], (json{{"city", "Paris"}}));

    json oa{{"model", "x"}, {"max_tokens", 100}, {"messages", json::array({json{{"role", "user"}, {"content", "weather?"}}})},
            {"tools", openai_weather_tools()}, {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}}};
    auto o = post("/v1/chat/completions", oa);
    ASSERT_TRUE(o);
    ASSERT_EQ(o->status, 200) << o->body;
    const json oj = json::parse(o->body);
    EXPECT_EQ(oj["choices"][0]["finish_reason"], "tool_calls") << o->body;
    EXPECT_EQ(oj["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather");
    EXPECT_EQ(json::parse(oj["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"].get<std::string>()),
              (json{{"city", "Paris"}}));
}

TEST_F(ServerNamedToolTest, ToolChoiceErrors) {
    json body = simple_request(false, 10);
    body["tool_choice"] = {{"type", "any"}};
    expect_anthropic_error(post("/v1/messages", body), 400, "invalid_request_error");  // no tools
    body["tools"] = weather_tools();
    body["tool_choice"] = {{"type", "tool"}, {"name", "get_stock_price"}};
    auto r = post("/v1/messages", body);
    expect_anthropic_error(r, 400, "invalid_request_error");
    EXPECT_NE(r->body.find("get_stock_price"), std::string::npos) << r->body;
    body["tool_choice"] = {{"type", "sometimes"}};
    expect_anthropic_error(post("/v1/messages", body), 400, "invalid_request_error");
    body["tool_choice"] = "any";
    expect_anthropic_error(post("/v1/messages", body), 400, "invalid_request_error");
    json oa{{"model", "x"}, {"messages", json::array({json{{"role", "user"}, {"content", "hi"}}})}, {"tools", openai_weather_tools()},
            {"tool_choice", "always"}};
    auto o = post("/v1/chat/completions", oa);
    ASSERT_TRUE(o);
    EXPECT_EQ(o->status, 400) << o->body;
}

class ServerAnyToolTest : public ServerTest {
protected:
    static void SetUpTestSuite() { start("get_time\", \"arguments\": {\"zone\": \"UTC\"}}\n</tool_call>"); }
};

TEST_F(ServerAnyToolTest, ToolChoiceAnyAndRequiredForceSomeCall) {
    json body = simple_request(true, 100);
    body["tools"] = weather_tools();
    body["tool_choice"] = {{"type", "any"}};
    auto r = post("/v1/messages", body);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    const auto evs = parse_sse(r->body);
    const json delta = check_anthropic_stream(evs);
    EXPECT_EQ(delta["delta"]["stop_reason"], "tool_use");
    std::string name, partial;
    for (const auto& e : evs) {
        if (e.event == "content_block_start" && e.data["content_block"]["type"] == "tool_use") name = e.data["content_block"]["name"];
        if (e.event == "content_block_delta" && e.data["delta"]["type"] == "input_json_delta") partial += e.data["delta"]["partial_json"].get<std::string>();
    }
    EXPECT_EQ(name, "get_time");
    EXPECT_EQ(json::parse(partial), (json{{"zone", "UTC"}}));

    json oa{{"model", "x"}, {"max_tokens", 100}, {"messages", json::array({json{{"role", "user"}, {"content", "time?"}}})},
            {"tools", openai_weather_tools()}, {"tool_choice", "required"}};
    auto o = post("/v1/chat/completions", oa);
    ASSERT_TRUE(o);
    ASSERT_EQ(o->status, 200) << o->body;
    EXPECT_EQ(json::parse(o->body)["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_time") << o->body;
}

// thinking.budget_tokens: reasoning that runs on is cut off by generating </think>; the rest of the
// output is the answer.
class ServerThinkingBudgetTest : public ServerTest {
protected:
    static void SetUpTestSuite() {
        start("<think>\none two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
              "seventeen eighteen nineteen twenty twentyone twentytwo twentythree twentyfour twentyfive");
    }
};

TEST_F(ServerThinkingBudgetTest, BudgetEndsTheReasoning) {
    json body = simple_request(false, 200);
    body["thinking"] = {{"type", "enabled"}, {"budget_tokens", 6}};
    auto r = post("/v1/messages", body);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    const json j = json::parse(r->body);
    ASSERT_EQ(j["content"].size(), 2u) << r->body;
    EXPECT_EQ(j["content"][0]["type"], "thinking");
    EXPECT_EQ(j["content"][1]["type"], "text");
    const std::string thought = j["content"][0]["thinking"], answer = j["content"][1]["text"];
    EXPECT_EQ(thought.rfind("one two", 0), 0u) << thought;
    EXPECT_EQ(thought.find("twenty"), std::string::npos) << thought;  // cut off early
    EXPECT_NE(answer.find("twentyfive"), std::string::npos) << answer;
    EXPECT_EQ(answer.find("</think>"), std::string::npos) << answer;

    // Without a budget the whole output is reasoning.
    body["thinking"] = {{"type", "enabled"}, {"budget_tokens", 1000}};
    auto all = post("/v1/messages", body);
    ASSERT_TRUE(all);
    const json ja = json::parse(all->body);
    ASSERT_GE(ja["content"].size(), 1u) << all->body;
    EXPECT_EQ(ja["content"][0]["type"], "thinking");
    EXPECT_NE(ja["content"][0]["thinking"].get<std::string>().find("twentyfive"), std::string::npos) << all->body;
    expect_anthropic_error(post("/v1/messages", json{{"model", "x"}, {"max_tokens", 5}, {"thinking", {{"type", "enabled"}, {"budget_tokens", 0}}},
                                                      {"messages", json::array({json{{"role", "user"}, {"content", "hi"}}})}}),
                           400, "invalid_request_error");
}

// kiln serve --backend vulkan (lavapipe in CI): the slots run on Vulkan and answer as on the CPU.
class ServerVulkanTest : public ServerTest {
protected:
    static void SetUpTestSuite() {
        if (kiln::test::no_vulkan().empty()) start(nullptr, {"--backend", "vulkan"});
    }
    void SetUp() override {
        KILN_REQUIRE_VULKAN();
        ServerTest::SetUp();
    }
};

TEST_F(ServerVulkanTest, AnswersOnVulkanWithCachedPrefixes) {
    auto h = client().Get("/health");
    ASSERT_TRUE(h);
    EXPECT_EQ(json::parse(h->body)["backend"], "vulkan") << h->body;
    json body{{"model", "local"}, {"max_tokens", 6}, {"temperature", 0}, {"prompt", "Tell me about kilns"}};
    auto r = post("/v1/completions", body);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    const json j = json::parse(r->body);
    EXPECT_EQ(j["usage"]["completion_tokens"], 6);
    EXPECT_FALSE(j["choices"][0]["text"].get<std::string>().empty());
    auto again = post("/v1/completions", body);  // the same prompt: served from the slot's cache
    ASSERT_TRUE(again);
    const json ja = json::parse(again->body);
    EXPECT_EQ(ja["choices"][0]["text"], j["choices"][0]["text"]);
    EXPECT_GT(ja["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(), 0) << again->body;
    auto m = client().Get("/metrics");
    ASSERT_TRUE(m);
    // The slot kept the prompt itself: nothing came from the prefix cache's blocks.
    EXPECT_NE(m->body.find("\nkiln_cache_block_hits_total{tier=\"memory\"} 0\n"), std::string::npos) << m->body;
}

// The two slots' decode steps run as one forward pass on the shared Vulkan backend, with the
// outputs of each request alone (/metrics counts passes, so a batch of 2 is a real one). 8 tokens:
// this model's 151669-row output matrix takes lavapipe about half a second per pass.
TEST_F(ServerVulkanTest, ConcurrentGenerationsAreBatchedAndUnchanged) { concurrent_generations_are_batched(8); }

// -ctk / -ctv q8_0: every slot (and the prefix cache's blocks) holds q8_0 rows; prefix reuse and batched
// decode steps work on it as on f16, and the start-up line names the type.
class ServerQ8KvTest : public ServerTest {
protected:
    static void SetUpTestSuite() { start(nullptr, {"-ctk", "q8_0", "-ctv", "q8_0"}); }
};

TEST_F(ServerQ8KvTest, ServesFromQuantizedCaches) {
    std::ifstream in(log_path_);
    const std::string log((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_NE(log.find("KV q8_0, backend cpu"), std::string::npos) << log;
    json body{{"model", "local"}, {"max_tokens", 6}, {"temperature", 0}, {"prompt", "Tell me about kilns and glazes"}};
    auto r = post("/v1/completions", body);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    const json j = json::parse(r->body);
    EXPECT_EQ(j["usage"]["completion_tokens"], 6);
    auto again = post("/v1/completions", body);
    ASSERT_TRUE(again);
    const json ja = json::parse(again->body);
    EXPECT_EQ(ja["choices"][0]["text"], j["choices"][0]["text"]);
    EXPECT_GT(ja["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(), 0) << again->body;
}

TEST_F(ServerQ8KvTest, ConcurrentGenerationsAreBatchedAndUnchanged) { concurrent_generations_are_batched(16); }

TEST_F(ServerTest, HealthRootModelsAndMetrics) {
    auto c = client("");
    auto h = c.Get("/health");
    ASSERT_TRUE(h);
    EXPECT_EQ(h->status, 200);
    auto head = c.Head("/");
    ASSERT_TRUE(head);
    EXPECT_EQ(head->status, 200);
    auto m = client().Get("/v1/models");
    ASSERT_TRUE(m);
    EXPECT_EQ(m->status, 200);
    EXPECT_EQ(json::parse(m->body)["data"].size(), 1u);
    auto met = client().Get("/metrics");
    ASSERT_TRUE(met);
    EXPECT_EQ(met->status, 200);
    EXPECT_NE(met->body.find("kiln_requests_total"), std::string::npos);
    EXPECT_NE(met->body.find("kiln_queue_depth"), std::string::npos);
    EXPECT_NE(met->body.find("kiln_decode_tokens_per_second"), std::string::npos);
}

TEST_F(ServerTest, MessagesNonStreaming) {
    auto r = post("/v1/messages", simple_request(false));
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    const json j = json::parse(r->body);
    EXPECT_EQ(j["type"], "message");
    EXPECT_EQ(j["role"], "assistant");
    ASSERT_TRUE(j["content"].is_array());
    ASSERT_GE(j["content"].size(), 1u);
    EXPECT_EQ(j["content"][0]["type"], "text");
    const std::string stop = j["stop_reason"];
    EXPECT_TRUE(stop == "end_turn" || stop == "max_tokens") << stop;
    EXPECT_GT(j["usage"]["input_tokens"].get<int>() + j["usage"]["cache_read_input_tokens"].get<int>(), 5);
    EXPECT_LE(j["usage"]["output_tokens"].get<int>(), 8);
    EXPECT_TRUE(j["usage"].contains("cache_creation_input_tokens"));
}

TEST_F(ServerTest, MessagesStreaming) {
    auto r = client().Post("/v1/messages?beta=true", simple_request(true, 6).dump(), "application/json");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    const auto evs = parse_sse(r->body);
    const json delta = check_anthropic_stream(evs);
    ASSERT_TRUE(delta.is_object());
    EXPECT_TRUE(delta["delta"]["stop_reason"] == "end_turn" || delta["delta"]["stop_reason"] == "max_tokens");
    EXPECT_LE(delta["usage"]["output_tokens"].get<int>(), 6);
    EXPECT_EQ(evs[0].data["message"]["role"], "assistant");
}

TEST_F(ServerTest, ClaudeCodeShapedRequestAndPrefixCache) {
    json tools = json::array();
    for (const char* name : {"Bash", "Read", "Edit"})
        tools.push_back(json{{"name", name},
                             {"description", std::string("The ") + name + " tool."},
                             {"input_schema", {{"$schema", "https://json-schema.org/draft/2020-12/schema"},
                                               {"type", "object"},
                                               {"properties", {{"command", {{"type", "string"}}}}},
                                               {"required", {"command"}},
                                               {"additionalProperties", false}}}});
    tools.back()["defer_loading"] = true;
    auto make = [&](const std::string& billing) {
        return json{
            {"model", "local-model"},
            {"max_tokens", 32000},
            {"stream", true},
            {"temperature", 0},
            {"thinking", {{"type", "adaptive"}}},
            {"context_management", {{"edits", json::array({json{{"type", "clear_thinking_20251015"}, {"keep", "all"}}})}}},
            {"output_config", {{"effort", "high"}}},
            {"metadata", {{"user_id", "someone"}}},
            {"system", json::array({json{{"type", "text"}, {"text", "x-anthropic-billing-header: cc_version=2.1.197." + billing + "; cc_entrypoint=sdk-cli;"}},
                                    json{{"type", "text"}, {"text", "You are Claude Code."}, {"cache_control", {{"type", "ephemeral"}}}},
                                    json{{"type", "text"}, {"text", "Be brief."}, {"cache_control", {{"type", "ephemeral"}}}}})},
            {"tools", tools},
            {"messages",
             json::array({json{{"role", "user"}, {"content", json::array({json{{"type", "text"}, {"text", "List the files in this directory"}}})}},
                          json{{"role", "system"}, {"content", "A reminder in the middle."}},
                          json{{"role", "assistant"},
                               {"content", json::array({json{{"type", "thinking"}, {"thinking", "hmm"}, {"signature", "x"}},
                                                        json{{"type", "tool_use"}, {"id", "toolu_01"}, {"name", "Bash"}, {"input", {{"command", "ls"}}}}})}},
                          json{{"role", "user"},
                               {"content", json::array({json{{"type", "tool_result"}, {"tool_use_id", "toolu_01"}, {"content", "a.txt"}, {"is_error", true},
                                                             {"cache_control", {{"type", "ephemeral"}}}}})}}})}};
    };
    json first = make("abc");
    first["max_tokens"] = 4;
    // The real client sends 32000: accepted and clamped (checked non-streaming below with a stop).
    json big = make("abc");
    big["stream"] = false;
    big["stop_sequences"] = json::array({"x"});
    {
        json b = big;
        b["max_tokens"] = 32000;
        b["messages"].push_back(json{{"role", "assistant"}, {"content", "Sure"}});  // prefill, continued
        // Keep it short: the context is 1024, the server clamps max_tokens.
        auto r = post("/v1/messages?beta=true", b);
        ASSERT_TRUE(r);
        ASSERT_EQ(r->status, 200) << r->body;
    }
    auto r1 = client().Post("/v1/messages?beta=true", first.dump(), "application/json");
    ASSERT_TRUE(r1);
    ASSERT_EQ(r1->status, 200) << r1->body;
    check_anthropic_stream(parse_sse(r1->body));

    // Same prefix (billing header changed) plus one more turn: the prefix comes from the cache.
    json second = make("xyz");
    second["max_tokens"] = 4;
    second["stream"] = false;
    second["messages"].push_back(json{{"role", "assistant"}, {"content", "Done."}});
    second["messages"].push_back(json{{"role", "user"}, {"content", "Thanks, now again"}});
    auto r2 = post("/v1/messages", second);
    ASSERT_TRUE(r2);
    ASSERT_EQ(r2->status, 200) << r2->body;
    const json j2 = json::parse(r2->body);
    EXPECT_GT(j2["usage"]["cache_read_input_tokens"].get<int>(), 20) << r2->body;

    // count_tokens agrees with input + cache_read.
    json ct = second;
    ct.erase("stream");
    auto rc = post("/v1/messages/count_tokens", ct);
    ASSERT_TRUE(rc);
    ASSERT_EQ(rc->status, 200) << rc->body;
    EXPECT_EQ(json::parse(rc->body)["input_tokens"].get<int>(),
              j2["usage"]["input_tokens"].get<int>() + j2["usage"]["cache_read_input_tokens"].get<int>());
}

TEST_F(ServerTest, AnthropicErrors) {
    auto c = client();
    expect_anthropic_error(c.Post("/v1/messages", "{not json", "application/json"), 400, "invalid_request_error");
    expect_anthropic_error(c.Post("/v1/messages", "[1,2]", "application/json"), 400, "invalid_request_error");
    expect_anthropic_error(c.Post("/v1/messages", R"({"messages":"nope","max_tokens":5})", "application/json"), 400, "invalid_request_error");
    expect_anthropic_error(c.Post("/v1/messages", R"({"messages":[{"role":"user","content":5}],"max_tokens":5})", "application/json"), 400,
                           "invalid_request_error");
    expect_anthropic_error(c.Post("/v1/messages", std::string(100000, '[') + std::string(100000, ']'), "application/json"), 400,
                           "invalid_request_error");
    expect_anthropic_error(c.Get("/v1/nothing-here"), 404, "not_found_error");
    expect_anthropic_error(post("/v1/messages", simple_request(false), "wrong-key"), 401, "authentication_error");
    expect_anthropic_error(post("/v1/messages", simple_request(false), ""), 401, "authentication_error");

    // Wrong types anywhere: 400s, never a crash.
    for (const char* bad : {R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":"abc"})",
                            R"({"messages":[{"role":"user","content":"hi"}],"system":5})",
                            R"({"messages":[{"role":"user","content":"hi"}],"tools":"x"})",
                            R"({"messages":[{"role":"user","content":"hi"}],"tools":[{"name":"a","input_schema":3}],"max_tokens":1})",
                            R"({"messages":[{"role":"user","content":[{"type":"tool_result","content":7}]}]})",
                            R"({"messages":[{"role":"robot","content":"hi"}]})",
                            R"({"messages":[{"role":"user","content":"hi"}],"thinking":"yes"})",
                            R"({"messages":[{"role":"user","content":"hi"}],"temperature":-3})",
                            R"({"messages":[]})", R"({})", "null", "", "{\"a\":\"\xff\xfe\"}",
                            "{\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\"}]}"}) {
        auto r = c.Post("/v1/messages", bad, "application/json");
        ASSERT_TRUE(r) << bad;
        EXPECT_TRUE(r->status == 400 || r->status == 200) << bad << " -> " << r->status << " " << r->body;
        if (r->status != 200) expect_anthropic_error(r, 400, "invalid_request_error");
    }

    json img = simple_request(false);
    img["messages"][0]["content"] = json::array({json{{"type", "image"}, {"source", {{"type", "base64"}, {"media_type", "image/png"}, {"data", "AAAA"}}}}});
    expect_anthropic_error(post("/v1/messages", img), 400, "invalid_request_error");

    // A prompt over the context (1024 tokens): the exact wording Claude Code compacts on.
    json longp = simple_request(false);
    std::string text;
    for (int i = 0; i < 1500; ++i) text += "word" + std::to_string(i) + " ";
    longp["messages"][0]["content"] = text;
    auto r = post("/v1/messages", longp);
    expect_anthropic_error(r, 400, "invalid_request_error");
    ASSERT_TRUE(r);
    const std::string msg = json::parse(r->body)["error"]["message"];
    EXPECT_EQ(msg.rfind("prompt is too long: ", 0), 0u) << msg;
    EXPECT_NE(msg.find(" tokens > 1023 maximum"), std::string::npos) << msg;

    // Bodies over 32 MB: 413.
    auto big = c.Post("/v1/messages", std::string(33u << 20, ' '), "application/json");
    if (big) expect_anthropic_error(big, 413, "request_too_large");

    // 10 MB of JSON garbage, then the server still answers.
    auto junk = c.Post("/v1/messages", "{\"a\":\"" + std::string(10u << 20, 'x'), "application/json");
    ASSERT_TRUE(junk);
    EXPECT_EQ(junk->status, 400);
    auto ok = post("/v1/messages", simple_request(false, 2));
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok->status, 200);
}

TEST_F(ServerTest, BearerAuthAndClientDisconnect) {
    httplib::Client c("127.0.0.1", port_);
    c.set_default_headers({{"Authorization", std::string("Bearer ") + kKey}});
    auto r = c.Post("/v1/messages", simple_request(false, 2).dump(), "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << r->body;

    // A client that drops a stream after the first bytes: the server keeps serving.
    {
        const std::string body = simple_request(true, 200).dump();
        const std::string req = "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: " + std::string(kKey) +
                                "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
        int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(static_cast<uint16_t>(port_));
        ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
        ASSERT_EQ(::send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
        char buf[256];
        timeval tv{10, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        EXPECT_GT(::recv(fd, buf, sizeof buf, 0), 0);
        ::close(fd);  // mid-stream
    }
    auto after = post("/v1/messages", simple_request(false, 2));
    ASSERT_TRUE(after);
    EXPECT_EQ(after->status, 200);
}

TEST_F(ServerTest, ConcurrentRequestsShareTwoSlots) {
    std::vector<std::thread> th;
    std::vector<int> status(5, 0);
    for (int i = 0; i < 5; ++i)
        th.emplace_back([&, i] {
            json b = simple_request(i % 2 == 0, 20);
            b["messages"][0]["content"] = "Request number " + std::to_string(i);
            auto r = post("/v1/messages", b);
            status[static_cast<size_t>(i)] = r ? r->status : -1;
        });
    for (auto& t : th) t.join();
    for (int s : status) EXPECT_EQ(s, 200);
    auto met = client().Get("/metrics");
    ASSERT_TRUE(met);
    EXPECT_NE(met->body.find("kiln_slots 2"), std::string::npos) << met->body;
    // Both slots hold the pages of their last request's tokens: more than nothing, less than full.
    const auto gauge = [&](const std::string& name) {
        const size_t at = met->body.find("\n" + name + " ");
        return at == std::string::npos ? -1.0 : std::stod(met->body.substr(at + name.size() + 2));
    };
    const double held = gauge("kiln_kv_bytes{holder=\"slots\"}"), full = gauge("kiln_kv_bytes{holder=\"slot_capacity\"}");
    EXPECT_GT(held, 0) << met->body;
    EXPECT_LT(held, 2 * full) << met->body;
}

TEST_F(ServerTest, ConcurrentGenerationsAreBatchedAndUnchanged) { concurrent_generations_are_batched(48); }

TEST_F(ServerTest, OpenAIChatCompletions) {
    json body{{"model", "local"},
              {"max_tokens", 5},
              {"temperature", 0},
              {"seed", 42},
              {"messages", json::array({json{{"role", "system"}, {"content", "Be brief."}}, json{{"role", "user"}, {"content", "Hi"}}})}};
    auto r = post("/v1/chat/completions", body);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    const json j = json::parse(r->body);
    EXPECT_EQ(j["object"], "chat.completion");
    EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
    EXPECT_TRUE(j["choices"][0]["finish_reason"] == "stop" || j["choices"][0]["finish_reason"] == "length");
    EXPECT_GT(j["usage"]["prompt_tokens"].get<int>(), 3);

    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
    auto s = post("/v1/chat/completions", body);
    ASSERT_TRUE(s);
    ASSERT_EQ(s->status, 200) << s->body;
    std::vector<json> chunks;
    bool done = false;
    size_t pos = 0;
    while (pos < s->body.size()) {
        const size_t end = s->body.find("\n\n", pos);
        ASSERT_NE(end, std::string::npos);
        const std::string ev = s->body.substr(pos, end - pos);
        pos = end + 2;
        if (ev[0] == ':') continue;
        ASSERT_EQ(ev.rfind("data: ", 0), 0u) << ev;
        EXPECT_FALSE(done) << "data after [DONE]";
        if (ev == "data: [DONE]") {
            done = true;
            continue;
        }
        chunks.push_back(json::parse(ev.substr(6)));
    }
    EXPECT_TRUE(done);
    ASSERT_GE(chunks.size(), 3u);
    EXPECT_EQ(chunks.front()["choices"][0]["delta"]["role"], "assistant");
    EXPECT_TRUE(chunks.back()["choices"].empty());
    EXPECT_GT(chunks.back()["usage"]["prompt_tokens"].get<int>(), 3);
    EXPECT_FALSE(chunks[chunks.size() - 2]["choices"][0]["finish_reason"].is_null());

    // OpenAI error shapes.
    json bad = body;
    bad["n"] = 2;
    auto e = post("/v1/chat/completions", bad);
    ASSERT_TRUE(e);
    EXPECT_EQ(e->status, 400);
    const json ej = json::parse(e->body);
    EXPECT_TRUE(ej["error"]["message"].is_string());
    EXPECT_EQ(ej["error"]["type"], "invalid_request_error");
    auto cp = post("/v1/completions", json{{"prompt", "Once upon"}, {"max_tokens", 3}});
    ASSERT_TRUE(cp);
    ASSERT_EQ(cp->status, 200) << cp->body;
    EXPECT_EQ(json::parse(cp->body)["object"], "text_completion");
    EXPECT_EQ(json::parse(cp->body)["usage"]["completion_tokens"], 3);

    auto e2 = client().Post("/v1/chat/completions", "{", "application/json");
    ASSERT_TRUE(e2);
    EXPECT_EQ(e2->status, 400);
    EXPECT_TRUE(json::parse(e2->body)["error"]["message"].is_string());
}


// output_config.format (Anthropic) and response_format (OpenAI): the answer parses as JSON that
// matches the schema, even from a model with random weights.
json title_schema() {
    return json{{"type", "object"},
                {"properties", {{"title", {{"type", "string"}}}}},
                {"required", {"title"}},
                {"additionalProperties", false}};
}

void expect_title_json(const std::string& text) {
    const json j = json::parse(text, nullptr, false);
    ASSERT_TRUE(j.is_object()) << text;
    ASSERT_EQ(j.size(), 1u) << text;
    ASSERT_TRUE(j["title"].is_string()) << text;
    EXPECT_FALSE(j["title"].get<std::string>().empty()) << text;
}

TEST_F(ServerTest, StructuredJsonOutput) {
    json b = simple_request(false, 300);
    b["output_config"] = {{"effort", "low"}, {"format", {{"type", "json_schema"}, {"schema", title_schema()}}}};
    for (int i = 0; i < 2; ++i) {
        b["temperature"] = i == 0 ? 0.0 : 1.0;
        auto r = post("/v1/messages", b);
        ASSERT_TRUE(r);
        ASSERT_EQ(r->status, 200) << r->body;
        const json j = json::parse(r->body);
        EXPECT_EQ(j["stop_reason"], "end_turn") << r->body;
        ASSERT_EQ(j["content"].size(), 1u) << r->body;
        expect_title_json(j["content"][0]["text"]);
    }
    // Streaming: the text deltas join into the JSON.
    b["stream"] = true;
    auto s = post("/v1/messages", b);
    ASSERT_TRUE(s);
    ASSERT_EQ(s->status, 200) << s->body;
    const auto evs = parse_sse(s->body);
    check_anthropic_stream(evs);
    std::string text;
    for (const auto& e : evs)
        if (e.event == "content_block_delta") text += e.data["delta"].value("text", "");
    expect_title_json(text);

    // More types: integer, boolean, enum, array, nested object.
    json schema{{"type", "object"},
                {"properties",
                 {{"n", {{"type", "integer"}}},
                  {"ok", {{"type", "boolean"}}},
                  {"kind", {{"enum", {"alpha", "beta"}}}},
                  {"tags", {{"type", "array"}, {"items", {{"type", "string"}}}}},
                  {"inner", {{"type", "object"}, {"properties", {{"x", {{"type", "number"}}}}}}}}}};
    json b2 = simple_request(false, 400);
    b2["output_format"] = {{"type", "json_schema"}, {"schema", schema}};  // the older field name
    auto r2 = post("/v1/messages", b2);
    ASSERT_TRUE(r2);
    ASSERT_EQ(r2->status, 200) << r2->body;
    const json j2 = json::parse(json::parse(r2->body)["content"][0]["text"].get<std::string>(), nullptr, false);
    ASSERT_TRUE(j2.is_object()) << r2->body;
    EXPECT_TRUE(j2["n"].is_number_integer()) << j2;
    EXPECT_TRUE(j2["ok"].is_boolean()) << j2;
    EXPECT_TRUE(j2["kind"] == "alpha" || j2["kind"] == "beta") << j2;
    EXPECT_TRUE(j2["tags"].is_array() && j2["tags"].size() == 1 && j2["tags"][0].is_string()) << j2;
    EXPECT_TRUE(j2["inner"]["x"].is_number()) << j2;

    // OpenAI response_format.
    json oa{{"model", "x"}, {"max_tokens", 300}, {"messages", json::array({json{{"role", "user"}, {"content", "title?"}}})},
            {"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "t"}, {"strict", true}, {"schema", title_schema()}}}}}};
    auto o = post("/v1/chat/completions", oa);
    ASSERT_TRUE(o);
    ASSERT_EQ(o->status, 200) << o->body;
    expect_title_json(json::parse(o->body)["choices"][0]["message"]["content"]);

    // A format that is not a schema: 400.
    json bad = simple_request(false);
    bad["output_config"] = {{"format", {{"type", "json_schema"}, {"schema", "nope"}}}};
    expect_anthropic_error(post("/v1/messages", bad), 400, "invalid_request_error");
}

// The scripted model output (thinking + tool call) is not what a JSON answer follows.
TEST_F(ServerToolTest, JsonOutputIgnoresScriptAndToolParser) {
    json b = simple_request(false, 300);
    b["tools"] = json::array({json{{"name", "Bash"}, {"input_schema", {{"type", "object"}}}}});
    b["output_config"] = {{"format", {{"type", "json_schema"}, {"schema", title_schema()}}}};
    auto r = post("/v1/messages", b);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    const json j = json::parse(r->body);
    EXPECT_EQ(j["stop_reason"], "end_turn");
    ASSERT_EQ(j["content"].size(), 1u) << r->body;
    EXPECT_EQ(j["content"][0]["type"], "text");
    expect_title_json(j["content"][0]["text"]);
}

// 32 streaming clients at once on 2 slots and a queue of 16: each is answered (200, or 529 when
// the queue is full); half drop their connection after the first bytes. Afterwards no slot is
// busy, nothing is queued, and the server still answers.
TEST_F(ServerTest, ThirtyTwoConcurrentStreamsSomeDropping) {
    std::vector<std::thread> th;
    std::vector<int> status(32, 0);
    for (int i = 0; i < 32; ++i)
        th.emplace_back([&, i] {
            json b = simple_request(true, 24);
            b["messages"][0]["content"] = "Stream number " + std::to_string(i);
            const std::string body = b.dump();
            if (i % 2 == 0) {
                auto r = post("/v1/messages", b);
                status[static_cast<size_t>(i)] = r ? r->status : -100 - static_cast<int>(r.error());  // -100 - httplib::Error
                if (r && r->status == 200) check_anthropic_stream(parse_sse(r->body));
                return;
            }
            const std::string req = "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: " + std::string(kKey) +
                                    "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
            const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
            sockaddr_in a{};
            a.sin_family = AF_INET;
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            a.sin_port = htons(static_cast<uint16_t>(port_));
            if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                ::send(fd, req.data(), req.size(), 0) == static_cast<ssize_t>(req.size())) {
                char buf[64];
                timeval tv{60, 0};
                ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
                const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
                status[static_cast<size_t>(i)] = n > 12 && std::string(buf, 12) == "HTTP/1.1 200" ? 200 : n > 12 && std::string(buf, 12) == "HTTP/1.1 529" ? 529 : -2;
            }
            ::close(fd);  // gone mid-stream (or before its turn)
        });
    for (auto& t : th) t.join();
    int ok = 0;
    for (int i = 0; i < 32; ++i) {
        EXPECT_TRUE(status[static_cast<size_t>(i)] == 200 || status[static_cast<size_t>(i)] == 529) << i << ": " << status[static_cast<size_t>(i)];
        ok += status[static_cast<size_t>(i)] == 200;
    }
    EXPECT_GE(ok, 18);  // 2 slots + 16 queued at least
    // The dropped streams free their slots: nothing busy, nothing queued, soon.
    std::string metrics;
    for (int i = 0; i < 100; ++i) {
        auto m = client().Get("/metrics");
        ASSERT_TRUE(m);
        metrics = m->body;
        if (metrics.find("kiln_slots_busy 0\n") != std::string::npos && metrics.find("kiln_queue_depth 0\n") != std::string::npos) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_NE(metrics.find("kiln_slots_busy 0\n"), std::string::npos) << metrics;
    EXPECT_NE(metrics.find("kiln_queue_depth 0\n"), std::string::npos) << metrics;
    auto after = post("/v1/messages", simple_request(false, 2));
    ASSERT_TRUE(after);
    EXPECT_EQ(after->status, 200);
}

// ---- rejected keys and `kiln claude` -------------------------------------------------------------

std::string read_file(const std::string& path) {
    std::ifstream f(path);
    return std::string(std::istreambuf_iterator<char>(f), {});
}

size_t count_lines_with(const std::string& text, const std::vector<std::string>& needles) {
    size_t n = 0, pos = 0;
    while (pos < text.size()) {
        size_t end = text.find('\n', pos);
        if (end == std::string::npos) end = text.size();
        const std::string line = text.substr(pos, end - pos);
        bool all = true;
        for (const auto& s : needles) all = all && line.find(s) != std::string::npos;
        n += all;
        pos = end + 1;
    }
    return n;
}

TEST_F(ServerTest, RejectedKeyLoggedOncePerKeyWithFingerprint) {
    const std::string key = "rejected-key-0123456789-abcdefg";  // 31 characters
    for (int i = 0; i < 3; ++i) expect_anthropic_error(post("/v1/messages", simple_request(false), key), 401, "authentication_error");
    httplib::Client c("127.0.0.1", port_);
    c.set_default_headers({{"Authorization", "Bearer another-rejected-key"}});  // 20 characters
    for (int i = 0; i < 2; ++i) {
        auto r = c.Post("/v1/chat/completions", "{}", "application/json");
        ASSERT_TRUE(r);
        EXPECT_EQ(r->status, 401);
    }
    const std::string log = read_file(log_path_);
    EXPECT_EQ(log.find(key), std::string::npos) << "the key itself must never be logged";
    EXPECT_EQ(log.find("another-rejected-key"), std::string::npos);
    EXPECT_EQ(count_lines_with(log, {"401 for POST /v1/messages", "x-api-key", "31 characters", "does not match", "fingerprint"}), 1u) << log;
    EXPECT_EQ(count_lines_with(log, {"401 for POST /v1/chat/completions", "Authorization: Bearer", "20 characters", "does not match"}), 1u) << log;
}

// A stand-in `claude` on PATH: prints its environment and arguments, asks the server through the
// environment it was given, exits 7.
std::filesystem::path fake_claude_dir() {
    const auto dir = kiln::test::temp_path("fake-claude-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    std::ofstream f(dir / "claude");
    f << "#!/bin/sh\n"
         "env | grep -E '^(ANTHROPIC|CLAUDE)_' | sort\n"
         "echo \"ARGS: $*\"\n"
         "curl -s -H \"Authorization: Bearer $ANTHROPIC_AUTH_TOKEN\" -H 'content-type: application/json' \"$ANTHROPIC_BASE_URL/v1/messages\" "
         "-d \"{\\\"model\\\":\\\"$ANTHROPIC_MODEL\\\",\\\"max_tokens\\\":3,\\\"messages\\\":[{\\\"role\\\":\\\"user\\\",\\\"content\\\":\\\"hi\\\"}]}\"\n"
         "echo\n"
         "exit 7\n";
    f.close();
    std::filesystem::permissions(dir / "claude", std::filesystem::perms::owner_all);
    return dir;
}

// Runs `kiln claude ARGS` with PATH=path_prefix:$PATH (or PATH=path_prefix when replace).
kiln::test::RunResult run_kiln_claude(const std::string& path, bool replace, const std::vector<std::string>& args) {
    using kiln::test::shell_quote;
    const std::string err = kiln::test::temp_path("claude-" + std::to_string(::getpid()) + ".err").string();
    std::string cmd = "PATH=" + shell_quote(path) + (replace ? "" : ":\"$PATH\"") + " ANTHROPIC_API_KEY=users-real-key " + shell_quote(kiln_binary()) + " claude";
    for (const auto& a : args) {
        cmd += ' ';
        cmd += shell_quote(a);
    }
    cmd += " 2>" + shell_quote(err) + " </dev/null";
    kiln::test::RunResult r;
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) return r;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
    const int status = ::pclose(p);
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.err = read_file(err);
    return r;
}

bool have_curl() { return std::system("command -v curl >/dev/null 2>&1") == 0; }

TEST_F(ServerTest, KilnClaudeReusesRunningServer) {
    if (!have_curl()) GTEST_SKIP() << "*** SKIPPED: curl is not installed (the fake claude uses it) ***";
    const auto dir = fake_claude_dir();
    auto r = run_kiln_claude(dir.string(), false, {"--port", std::to_string(port_), "--api-key", kKey, "--", "-p", "hello there"});
    EXPECT_EQ(r.code, 7) << r.err;
    EXPECT_NE(r.err.find("reusing the server"), std::string::npos) << r.err;
    EXPECT_NE(r.out.find("ANTHROPIC_BASE_URL=http://127.0.0.1:" + std::to_string(port_) + "\n"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(std::string("ANTHROPIC_AUTH_TOKEN=") + kKey + "\n"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("ANTHROPIC_API_KEY"), std::string::npos) << "the user's key must not reach the local server";
    EXPECT_NE(r.out.find("CLAUDE_CODE_AUTO_COMPACT_WINDOW=1024\n"), std::string::npos) << r.out;  // the running server's context
    EXPECT_NE(r.out.find("ARGS: -p hello there"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("\"type\":\"message\""), std::string::npos) << r.out;
    // The server it did not start is still there.
    auto h = client().Get("/health");
    ASSERT_TRUE(h);
    EXPECT_EQ(h->status, 200);

    // Without the running server's key: a clear error, claude is not started.
    auto nokey = run_kiln_claude(dir.string(), false, {"--port", std::to_string(port_)});
    EXPECT_EQ(nokey.code, 1);
    EXPECT_NE(nokey.err.find("--api-key"), std::string::npos) << nokey.err;
    EXPECT_EQ(nokey.out.find("ARGS:"), std::string::npos) << nokey.out;
}

TEST(ServerClaudeCommand, StartsServerRunsClaudeStopsServer) {
    KILN_REQUIRE_SHARED("models");
    if (!std::filesystem::exists(shared_dir() / kModel)) GTEST_SKIP() << kModel << " is absent";
    if (!have_curl()) GTEST_SKIP() << "*** SKIPPED: curl is not installed (the fake claude uses it) ***";
    const auto dir = fake_claude_dir();
    const int port = free_port();
    const std::string log = kiln::test::temp_path("kiln-claude-" + std::to_string(::getpid()) + ".log").string();
    auto r = run_kiln_claude(dir.string(), false,
                             {"-m", (shared_dir() / kModel).string(), "-c", "512", "--port", std::to_string(port), "-t", "1", "--log", log, "--",
                              "-p", "x y"});
    EXPECT_EQ(r.code, 7) << r.err;  // claude's exit code
    EXPECT_NE(r.err.find("starting kiln serve"), std::string::npos) << r.err;
    for (const std::string& line : {"ANTHROPIC_BASE_URL=http://127.0.0.1:" + std::to_string(port), std::string("ANTHROPIC_MODEL=qwen3"),
                                   std::string("ANTHROPIC_SMALL_FAST_MODEL=qwen3"), std::string("CLAUDE_CODE_ATTRIBUTION_HEADER=0"),
                                   std::string("CLAUDE_CODE_TOTAL_TOKENS_REMINDER=off"), std::string("CLAUDE_CODE_AUTO_COMPACT_WINDOW=512"),
                                   std::string("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1"), std::string("ANTHROPIC_AUTH_TOKEN=kiln-")})
        EXPECT_NE(r.out.find(line), std::string::npos) << line << "\n" << r.out;
    EXPECT_EQ(r.out.find("ANTHROPIC_API_KEY"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("ARGS: -p x y"), std::string::npos) << r.out;
    // The server answered the request made with the token it was given.
    EXPECT_NE(r.out.find("\"type\":\"message\""), std::string::npos) << r.out;
    const std::string slog = read_file(log);
    EXPECT_NE(slog.find("API key required"), std::string::npos) << slog;
    // The server's default prefix cache, its directory under XDG_CACHE_HOME (the test's, see support/run.h).
    EXPECT_NE(slog.find("prefix cache: 4096 MiB of memory, 20 GiB on disk in /"), std::string::npos) << slog;
    EXPECT_NE(slog.find("kiln serve: stopped"), std::string::npos) << slog;
    // And it is gone.
    httplib::Client c("127.0.0.1", port);
    c.set_connection_timeout(1);
    EXPECT_FALSE(c.Get("/health"));
}

TEST(ServerClaudeCommand, PassesTheBackendToTheServer) {
    KILN_REQUIRE_SHARED("models");
    KILN_REQUIRE_VULKAN();
    if (!std::filesystem::exists(shared_dir() / kModel)) GTEST_SKIP() << kModel << " is absent";
    if (!have_curl()) GTEST_SKIP() << "*** SKIPPED: curl is not installed (the fake claude uses it) ***";
    const int port = free_port();
    const std::string log = kiln::test::temp_path("kiln-claude-vk-" + std::to_string(::getpid()) + ".log").string();
    auto r = run_kiln_claude(fake_claude_dir().string(), false,
                             {"-m", (shared_dir() / kModel).string(), "-c", "256", "--port", std::to_string(port), "-t", "1", "--log", log,
                              "--backend", "vulkan", "-ctk", "q8_0", "--", "-p", "x"});
    EXPECT_EQ(r.code, 7) << r.err;
    const std::string slog = read_file(log);
    EXPECT_NE(slog.find("KV K q8_0 V f16, backend vulkan"), std::string::npos) << slog;
}

TEST(ServerClaudeCommand, WithoutClaudeSaysHowToInstall) {
    auto r = run_kiln_claude("/nonexistent-dir", true, {"-m", "whatever.gguf"});
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.err.find("npm install -g @anthropic-ai/claude-code"), std::string::npos) << r.err;
}


}  // namespace
