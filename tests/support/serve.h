// kiln serve from tests: a free port, a server process on a shared model, a strict SSE parser and
// the Anthropic event grammar, a recording proxy (what real clients send, captured at test time and
// never committed), and npm packages installed under the build folder for client tests.
#pragma once

#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/run.h"
#include "support/shared.h"

namespace kiln::test {

using json = nlohmann::json;

inline int free_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    const int port = ntohs(a.sin_port);
    ::close(fd);
    return port;
}


struct SseEvent {
    std::string event;
    json data;
};

// Strict SSE parse: every event has an `event:` line and one `data:` line of JSON (comment lines,
// the keep-alive sent while a request waits for a slot, are skipped as the SSE spec says).
inline std::vector<SseEvent> parse_sse(const std::string& body) {
    std::vector<SseEvent> out;
    size_t pos = 0;
    while (pos < body.size()) {
        size_t end = body.find("\n\n", pos);
        EXPECT_NE(end, std::string::npos) << "unterminated SSE event";
        if (end == std::string::npos) break;
        const std::string ev = body.substr(pos, end - pos);
        pos = end + 2;
        if (ev.rfind(":", 0) == 0 && ev.find('\n') == std::string::npos) continue;  // an SSE comment (keep-alive)
        const size_t nl = ev.find('\n');
        EXPECT_NE(nl, std::string::npos) << ev;
        if (nl == std::string::npos) continue;
        EXPECT_EQ(ev.rfind("event: ", 0), 0u) << ev;
        EXPECT_EQ(ev.compare(nl + 1, 6, "data: "), 0) << ev;
        SseEvent e{ev.substr(7, nl - 7), json::parse(ev.substr(nl + 7), nullptr, false)};
        EXPECT_FALSE(e.data.is_discarded()) << ev;
        EXPECT_EQ(e.data.value("type", ""), e.event) << ev;
        out.push_back(std::move(e));
    }
    return out;
}

// Checks the Anthropic event grammar; returns message_delta's data.
inline json check_anthropic_stream(const std::vector<SseEvent>& evs) {
    EXPECT_GE(evs.size(), 4u);
    if (evs.size() < 4) return {};
    EXPECT_EQ(evs.front().event, "message_start");
    EXPECT_EQ(evs.back().event, "message_stop");
    json delta;
    int open = -1, next_index = 0;
    bool seen_delta = false;
    for (size_t i = 1; i + 1 < evs.size(); ++i) {
        const auto& e = evs[i];
        if (e.event == "ping") continue;
        EXPECT_FALSE(seen_delta) << "event after message_delta: " << e.event;
        if (e.event == "content_block_start") {
            EXPECT_EQ(open, -1);
            EXPECT_EQ(e.data["index"].get<int>(), next_index);
            open = next_index++;
        } else if (e.event == "content_block_delta") {
            EXPECT_EQ(e.data["index"].get<int>(), open);
        } else if (e.event == "content_block_stop") {
            EXPECT_EQ(e.data["index"].get<int>(), open);
            open = -1;
        } else if (e.event == "message_delta") {
            EXPECT_EQ(open, -1);
            seen_delta = true;
            delta = e.data;
        } else {
            ADD_FAILURE() << "unexpected event " << e.event;
        }
    }
    EXPECT_TRUE(seen_delta);
    EXPECT_GE(next_index, 1);
    return delta;
}

// Strict parse of an OpenAI stream: `data: {json}` events (": ping" comments allowed), ending with
// `data: [DONE]`. Returns the JSON chunks.
inline std::vector<json> parse_openai_sse(const std::string& body) {
    std::vector<json> out;
    size_t pos = 0;
    bool done = false;
    while (pos < body.size()) {
        const size_t end = body.find("\n\n", pos);
        EXPECT_NE(end, std::string::npos) << "unterminated SSE event";
        if (end == std::string::npos) break;
        const std::string ev = body.substr(pos, end - pos);
        pos = end + 2;
        if (ev.rfind(":", 0) == 0) continue;  // comment (keep-alive)
        EXPECT_FALSE(done) << "event after [DONE]: " << ev;
        EXPECT_EQ(ev.rfind("data: ", 0), 0u) << ev;
        if (ev == "data: [DONE]") {
            done = true;
            continue;
        }
        json j = json::parse(ev.substr(6), nullptr, false);
        EXPECT_TRUE(j.is_object()) << ev;
        EXPECT_FALSE(j.contains("error")) << ev;
        out.push_back(std::move(j));
    }
    EXPECT_TRUE(done) << "no data: [DONE]";
    return out;
}

// `kiln serve -m MODEL ARGS...` on a free port, its output in a log file; stop() (or the
// destructor) ends it.
struct ServeProcess {
    pid_t pid = -1;
    int port = 0;
    std::string log_path;

    // Waits up to 60 s for /health. `script`: KILN_SERVE_SCRIPTED_OUTPUT (null: sample).
    bool start(const std::string& model, const std::vector<std::string>& args, const char* script, const std::string& tag) {
        port = free_port();
        log_path = temp_path(tag + "-" + std::to_string(::getpid()) + ".log").string();
        std::vector<std::string> argv = {kiln_binary(), "serve", "-m", model, "--port", std::to_string(port)};
        argv.insert(argv.end(), args.begin(), args.end());
        use_fresh_cache_home(tag);  // before fork: the counter is this process's
        pid = ::fork();
        if (pid == 0) {
            if (script) ::setenv("KILN_SERVE_SCRIPTED_OUTPUT", script, 1);
            if (FILE* f = std::fopen(log_path.c_str(), "w")) {
                ::dup2(fileno(f), 2);
                ::dup2(fileno(f), 1);
            }
            std::vector<char*> cargs;
            for (auto& a : argv) cargs.push_back(a.data());
            cargs.push_back(nullptr);
            ::execv(argv[0].c_str(), cargs.data());
            ::_exit(127);
        }
        httplib::Client c("127.0.0.1", port);
        for (int i = 0; i < 600; ++i) {
            if (auto r = c.Get("/health"); r && r->status == 200) return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        std::ifstream log(log_path);
        std::fprintf(stderr, "kiln serve did not come up; its log:\n%s\n", std::string(std::istreambuf_iterator<char>(log), {}).c_str());
        return false;
    }
    void stop() {
        if (pid <= 0) return;
        ::kill(pid, SIGTERM);
        int status = 0;
        for (int i = 0; i < 50 && ::waitpid(pid, &status, WNOHANG) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        if (::waitpid(pid, &status, WNOHANG) == 0) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
        }
        pid = -1;
    }
    ~ServeProcess() { stop(); }
};

// A recording proxy in front of a server: every request is kept (method, target, headers, body,
// the answer's status) and forwarded; the answer is sent back whole once the server finished it.
class Recorder {
public:
    struct Captured {
        std::string method, target, body;
        httplib::Headers headers;
        int status = 0;
    };

    explicit Recorder(int target_port) : target_(target_port) {
        auto forward = [this](const httplib::Request& req, httplib::Response& res) {
            httplib::Client c("127.0.0.1", target_);
            c.set_read_timeout(900);
            c.set_write_timeout(900);
            httplib::Request out;
            out.method = req.method;
            out.path = req.target.empty() ? req.path : req.target;
            for (const auto& [k, v] : req.headers) {
                static const char* drop[] = {"host", "content-length", "accept-encoding", "connection", "remote_addr",
                                             "remote_port", "local_addr", "local_port", "transfer-encoding"};
                std::string lk = k;
                for (auto& ch : lk) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
                if (std::find(std::begin(drop), std::end(drop), lk) == std::end(drop)) out.headers.emplace(k, v);
            }
            out.body = req.body;
            auto r = c.send(out);
            Captured cap{req.method, out.path, req.body, out.headers, r ? r->status : 502};
            {
                std::lock_guard lk(mu_);
                captured_.push_back(std::move(cap));
            }
            if (!r) {
                res.status = 502;
                return;
            }
            res.status = r->status;
            for (const auto& [k, v] : r->headers)
                if (k == "Cache-Control" || k == "request-id") res.set_header(k, v);
            res.set_content(r->body, r->get_header_value("Content-Type"));
        };
        svr_.Get(".*", forward);
        svr_.Post(".*", forward);
        svr_.Put(".*", forward);
        svr_.Delete(".*", forward);
        svr_.Options(".*", forward);
        svr_.set_payload_max_length(64u << 20);
        svr_.set_read_timeout(900);
        svr_.set_write_timeout(900);
        port_ = svr_.bind_to_any_port("127.0.0.1");
        thread_ = std::thread([this] { svr_.listen_after_bind(); });
        // Bound already: connections made before the loop runs wait in the listen backlog.
    }
    ~Recorder() {
        svr_.stop();
        if (thread_.joinable()) thread_.join();
    }
    int port() const { return port_; }
    std::vector<Captured> captured() {
        std::lock_guard lk(mu_);
        return captured_;
    }

private:
    int target_;
    int port_ = 0;
    httplib::Server svr_;
    std::thread thread_;
    std::mutex mu_;
    std::vector<Captured> captured_;
};

// npm packages (name, exact version) installed into <build>/client-tests/<folder>, kept across
// runs. Returns the folder, or "" with `why` saying what is missing (npm, node, the registry).
inline std::string npm_install(const std::string& folder, const std::vector<std::pair<std::string, std::string>>& pkgs, std::string& why) {
    namespace fs = std::filesystem;
    const fs::path dir = fs::path(KILN_BINARY_DIR) / "client-tests" / folder;
    auto installed = [&] {
        for (const auto& [name, version] : pkgs) {
            std::ifstream f(dir / "node_modules" / name / "package.json");
            const json j = json::parse(f, nullptr, false);
            if (!j.is_object() || j.value("version", "") != version) return false;
        }
        return true;
    };
    if (run_shell("command -v node").code != 0) {
        why = "node is not installed";
        return {};
    }
    if (installed()) return dir.string();
    if (run_shell("command -v npm").code != 0) {
        why = "npm is not installed";
        return {};
    }
    fs::create_directories(dir);
    if (!fs::exists(dir / "package.json")) std::ofstream(dir / "package.json") << "{\"private\": true}\n";
    std::string cmd = "cd " + shell_quote(dir.string()) + " && timeout 600 npm install --no-audit --no-fund --loglevel=error";
    for (const auto& [name, version] : pkgs) cmd += " " + shell_quote(name + "@" + version);
    const RunResult r = run_shell(cmd);
    if (r.code != 0 || !installed()) {
        why = "npm install failed (is the registry reachable?): " + (r.out.size() > 2000 ? r.out.substr(r.out.size() - 2000) : r.out);
        return {};
    }
    return dir.string();
}

}  // namespace kiln::test

#define KILN_SKIP_LOUDLY(why)                                                        \
    do {                                                                             \
        const std::string kiln_skip_why_ = (why);                                    \
        std::fprintf(stderr, "\n*** SKIPPED: %s ***\n\n", kiln_skip_why_.c_str()); \
        GTEST_SKIP() << kiln_skip_why_;                                              \
    } while (0)
