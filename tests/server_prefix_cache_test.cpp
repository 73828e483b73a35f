// kiln serve's prefix cache (blocks shared by the slots, kept on disk across restarts), over real
// sockets: an agent's short side requests interleaved with its main conversation do not evict the
// main prefix; blocks beyond --cache-mem go least recently used first; a restarted server with the
// same --cache-dir reads the prefix back from disk instead of computing it.
#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include <nlohmann/json.hpp>

#include "support/serve.h"
#include "support/shared.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using kiln::test::ServeProcess;
using kiln::test::shared_dir;

constexpr const char* kModel = "models/qwen3-vocab-tiny.f16.gguf";

#define REQUIRE_MODEL()                                                                      \
    do {                                                                                     \
        KILN_REQUIRE_SHARED("models");                                                       \
        if (!fs::exists(shared_dir() / kModel)) GTEST_SKIP() << "SKIPPED: " << kModel << " is absent"; \
    } while (0)

// A system prompt of about n_rules * 15 tokens (this tokenizer), different per `who`.
std::string system_prompt(const std::string& who, int n_rules) {
    std::string s = "You are " + who + ".";
    for (int i = 0; i < n_rules; ++i) s += " Rule " + std::to_string(i) + " of " + who + ": answer carefully and briefly.";
    return s;
}

struct Usage {
    int64_t prompt = 0, cached = 0;
    double seconds = 0;
};

// An OpenAI chat request (opencode's route); its usage and wall time.
Usage chat(int port, const json& messages, int max_tokens = 2) {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(300);
    const json body{{"model", "local"}, {"max_tokens", max_tokens}, {"temperature", 0}, {"messages", messages}};
    const auto t0 = std::chrono::steady_clock::now();
    auto r = c.Post("/v1/chat/completions", body.dump(), "application/json");
    Usage u;
    u.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!r || r->status != 200) {
        ADD_FAILURE() << (r ? r->body : std::string("no answer"));
        return u;
    }
    const json j = json::parse(r->body);
    u.prompt = j["usage"]["prompt_tokens"].get<int64_t>();
    u.cached = j["usage"]["prompt_tokens_details"]["cached_tokens"].get<int64_t>();
    return u;
}

std::string metrics(int port) {
    httplib::Client c("127.0.0.1", port);
    auto r = c.Get("/metrics");
    return r ? r->body : std::string();
}

// The value of one metric line ("name{labels} value"), -1 when absent.
double metric(const std::string& text, const std::string& name) {
    const size_t at = text.find("\n" + name + " ");
    if (at == std::string::npos) return -1;
    return std::stod(text.substr(at + name.size() + 2));
}

// opencode with default flags, three sessions: each sends a short title request (its own system
// prompt) and then its main request (a long system prompt, then the conversation). One slot: the
// title request takes it; the main prefix must come back from the prefix cache every time.
TEST(ServerPrefixCache, SideRequestsDoNotEvictTheMainPrefix) {
    REQUIRE_MODEL();
    ServeProcess server;
    ASSERT_TRUE(server.start((shared_dir() / kModel).string(), {"-c", "12000", "-t", "2"}, nullptr, "serve-interleave"));
    const std::string main_sys = system_prompt("a coding agent", 490), title_sys = system_prompt("a title writer", 36);
    json main = json::array({json{{"role", "system"}, {"content", main_sys}}});
    int64_t main_prefix = 0;  // tokens the previous main request shares with the next one
    for (int session = 0; session < 3; ++session) {
        const std::string question = "Session " + std::to_string(session) + ": fix the failing test in parser.cpp";
        const Usage title = chat(server.port, json::array({json{{"role", "system"}, {"content", title_sys}},
                                                           json{{"role", "user"}, {"content", question}}}));
        EXPECT_GT(title.prompt, 500);
        json turn = main;
        turn.push_back(json{{"role", "user"}, {"content", question}});
        const Usage u = chat(server.port, turn);
        EXPECT_GT(u.prompt, 7000);
        std::fprintf(stderr, "session %d: title %lld tokens (%lld cached), main %lld tokens, %lld cached (%.1f%% of the %lld shared)\n",
                     session, static_cast<long long>(title.prompt), static_cast<long long>(title.cached),
                     static_cast<long long>(u.prompt), static_cast<long long>(u.cached),
                     main_prefix ? 100.0 * static_cast<double>(u.cached) / static_cast<double>(main_prefix) : 0.0,
                     static_cast<long long>(main_prefix));
        if (session == 0) EXPECT_LT(u.cached, 256);  // the chat template's opening, kept in the slot
        else EXPECT_GE(static_cast<double>(u.cached), 0.95 * static_cast<double>(main_prefix)) << "session " << session;
        // The shared part: the system prompt and the chat template's opening (the question differs).
        main_prefix = u.prompt - 40;
    }
    const std::string m = metrics(server.port);
    EXPECT_GT(metric(m, "kiln_cache_hit_tokens_total{tier=\"memory\"}"), 0) << m;
    EXPECT_GT(metric(m, "kiln_cache_blocks{tier=\"memory\"}"), 20) << m;
}

// --cache-mem bounds the blocks kept in memory; the least recently used go first (with
// --cache-dir none they are gone).
TEST(ServerPrefixCache, MemoryBudgetEvictsLeastRecentlyUsed) {
    REQUIRE_MODEL();
    ServeProcess server;
    ASSERT_TRUE(server.start((shared_dir() / kModel).string(), {"-c", "4096", "-t", "2", "--cache-mem", "1", "--cache-dir", "none"},
                             nullptr, "serve-lru"));
    auto ask = [&](int who) {
        return chat(server.port, json::array({json{{"role", "system"}, {"content", system_prompt("persona " + std::to_string(who), 80)}},
                                              json{{"role", "user"}, {"content", "hello"}}}));
    };
    const Usage a = ask(1);
    ASSERT_GT(a.prompt, 600);
    std::string m = metrics(server.port);
    const double blocks = metric(m, "kiln_cache_blocks{tier=\"memory\"}"), bytes = metric(m, "kiln_cache_bytes{tier=\"memory\"}");
    ASSERT_GE(blocks, 2) << m;
    EXPECT_EQ(metric(m, "kiln_cache_blocks{tier=\"disk\"}"), 0) << m;
    const int per_prompt = static_cast<int>(blocks);
    const int capacity = static_cast<int>((1 << 20) / (bytes / blocks));  // blocks that fit in 1 MiB
    ask(2);
    ask(3);
    // Persona 1 came back from the blocks although two others took the slot since.
    EXPECT_GE(ask(1).cached, static_cast<int64_t>(per_prompt) * 256);
    // Enough other prompts to fill the budget twice over: persona 1 is gone, the latest are kept.
    const int others = 2 * capacity / per_prompt + 2;
    for (int p = 10; p < 10 + others; ++p) ask(p);
    EXPECT_LT(ask(1).cached, 256);
    EXPECT_GE(ask(10 + others - 1).cached, static_cast<int64_t>(per_prompt) * 256);
    m = metrics(server.port);
    EXPECT_LE(metric(m, "kiln_cache_bytes{tier=\"memory\"}"), 1 << 20) << m;
    EXPECT_GT(metric(m, "kiln_cache_evictions_total"), 0) << m;
}

// Stopped with SIGTERM, the server writes its blocks to --cache-dir; started again with the same
// directory, its first request reads the prefix from disk: cached tokens reported, the prefill
// much faster than the cold one.
TEST(ServerPrefixCache, RestartReadsThePrefixFromDisk) {
    REQUIRE_MODEL();
    const fs::path dir = kiln::test::temp_path("serve-restart-cache-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    const std::vector<std::string> args = {"-c", "24000", "-t", "2", "--cache-dir", dir.string()};
    const json messages = json::array({json{{"role", "system"}, {"content", system_prompt("a coding agent", 1250)}},
                                       json{{"role", "user"}, {"content", "What changed?"}}});
    Usage cold;
    {
        ServeProcess server;
        ASSERT_TRUE(server.start((shared_dir() / kModel).string(), args, nullptr, "serve-restart-1"));
        cold = chat(server.port, messages, 1);
        EXPECT_GT(cold.prompt, 18000);
        EXPECT_EQ(cold.cached, 0);
        server.stop();  // SIGTERM
        std::ifstream in(server.log_path);
        const std::string log((std::istreambuf_iterator<char>(in)), {});
        EXPECT_TRUE(std::regex_search(log, std::regex("prefix cache: [1-9][0-9]* block\\(s\\) written to"))) << log;
    }
    ServeProcess server;
    ASSERT_TRUE(server.start((shared_dir() / kModel).string(), args, nullptr, "serve-restart-2"));
    const Usage warm = chat(server.port, messages, 1);
    std::fprintf(stderr, "restart: cold %lld tokens in %.3f s; after the restart %lld cached, %.3f s\n", static_cast<long long>(cold.prompt),
                 cold.seconds, static_cast<long long>(warm.cached), warm.seconds);
    EXPECT_EQ(warm.prompt, cold.prompt);
    EXPECT_GE(warm.cached, (cold.prompt - 1) / 256 * 256);
    EXPECT_LT(warm.seconds, 0.5 * cold.seconds);
    const std::string m = metrics(server.port);
    EXPECT_GE(metric(m, "kiln_cache_hit_tokens_total{tier=\"disk\"}"), static_cast<double>(warm.cached)) << m;
    EXPECT_GT(metric(m, "kiln_cache_disk_read_bytes_total"), 0) << m;
    EXPECT_EQ(metric(m, "kiln_cache_disk_rejected_total"), 0) << m;
    server.stop();
    fs::remove_all(dir);
}

}  // namespace
