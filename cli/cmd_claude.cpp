// kiln claude -m MODEL [-c CTX] [serve options] [-- claude arguments]: runs the installed Claude Code
// CLI against a local `kiln serve`. Starts the server (or reuses one already answering /health on the
// port), runs `claude` with the environment that keeps the prefix cache warm and the context honest,
// returns claude's exit code and stops the server it started.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "cli/args.h"
#include "cli/command.h"
#include "kiln/error.h"
#include "kiln/model.h"

namespace kiln::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Claude Code's system prompt and tools alone are ~15-25K tokens: a smaller context cannot hold
// its first request. Default to this much (or the model's trained context, if smaller).
constexpr int64_t kDefaultClaudeCtx = 32768;

std::string find_on_path(const std::string& name) {
    const char* path = std::getenv("PATH");
    if (!path) return {};
    std::stringstream ss(path);
    std::string dir;
    while (std::getline(ss, dir, ':')) {
        const fs::path p = (dir.empty() ? fs::current_path() : fs::path(dir)) / name;
        struct stat st{};
        if (::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(p.c_str(), X_OK) == 0) return p.string();
    }
    return {};
}

std::string random_token() {
    std::random_device rd;
    std::mt19937_64 rng{(static_cast<uint64_t>(rd()) << 32) ^ rd()};
    static const char* digits = "0123456789abcdef";
    std::string s = "kiln-";
    for (int i = 0; i < 32; ++i) s += digits[rng() % 16];
    return s;
}

struct Health {
    bool up = false;
    std::string model;
    int64_t n_ctx = 0;
};

Health probe(const std::string& host, int port) {
    httplib::Client c(host, port);
    c.set_connection_timeout(1);
    c.set_read_timeout(5);
    Health h;
    auto r = c.Get("/health");
    if (!r || r->status != 200) return h;
    h.up = true;
    const json j = json::parse(r->body, nullptr, false);
    if (j.is_object()) {
        h.model = j.value("model", "");
        h.n_ctx = j.value("n_ctx", int64_t{0});
    }
    return h;
}

std::string tail_of(const std::string& path, size_t max_bytes) {
    std::ifstream f(path);
    std::string s((std::istreambuf_iterator<char>(f)), {});
    return s.size() > max_bytes ? s.substr(s.size() - max_bytes) : s;
}

volatile sig_atomic_t g_forward_pid = 0;
void forward_signal(int sig) {
    if (g_forward_pid > 0) ::kill(g_forward_pid, sig);
}

int run_claude(const std::vector<std::string>& argv_all) {
    // Everything after "--" goes to claude unchanged.
    std::vector<std::string> argv, claude_args;
    if (auto it = std::find(argv_all.begin(), argv_all.end(), "--"); it != argv_all.end()) {
        argv.assign(argv_all.begin(), it);
        claude_args.assign(it + 1, argv_all.end());
    } else {
        argv = argv_all;
    }

    std::string model_path, host = "127.0.0.1", api_key, alias, log_path, backend;
    int64_t n_ctx = 0;
    int port = 8080, parallel = 1, threads = 0, device = -1;
    KvType kv_k = KvType::F16, kv_v = KvType::F16;
    int64_t cache_mib = -1;
    std::string cache_dir;
    Args args("claude", "-m MODEL [-c CTX] [--port P] [options] [-- claude arguments]");
    args.option({"-m", "--model"}, &model_path, "FILE", "GGUF model to serve (not needed when a server already runs on the port)");
    args.option({"-c", "--ctx-size"}, &n_ctx, "N", fmt::format("context size in tokens (default: {} or the model's, if smaller)", kDefaultClaudeCtx));
    args.option({"--host"}, &host, "ADDR", "address of the server (default 127.0.0.1)");
    args.option({"--port"}, &port, "N", "port (default 8080); a server already answering there is reused");
    args.option({"-np", "--parallel"}, &parallel, "N", "server slots (default 1)");
    args.option({"--cache-mem"}, &cache_mib, "MIB", "host memory for the prefix cache (kiln serve --cache-mem)");
    args.option({"--cache-dir"}, &cache_dir, "DIR", "prefix-cache directory kept across restarts, or none (kiln serve --cache-dir)");
    args.option({"-t", "--threads"}, &threads, "N", "CPU threads (default: all cores)");
    args.option({"--api-key"}, &api_key, "KEY", "API key of the server (default: a random one for a server started here)");
    args.option({"--alias"}, &alias, "NAME", "model name given to Claude Code (default: the file's)");
    args.option({"--backend"}, &backend, "NAME", "server backend: cpu (default), vulkan or auto (kiln serve --backend)");
    args.option({"--device"}, &device, "N", "Vulkan device index (kiln serve --device)");
    args.kv_type_options(&kv_k, &kv_v);
    args.option({"--log"}, &log_path, "FILE", "server log (default: $TMPDIR/kiln-claude-PORT.log)");
    if (!args.parse(argv)) return 0;
    if (port <= 0 || port > 65535) throw Error("kiln claude: --port must be 1..65535");

    const std::string claude = find_on_path("claude");
    if (claude.empty()) {
        fmt::print(stderr,
                   "kiln claude: the Claude Code CLI (`claude`) is not on PATH.\n"
                   "Install it with:\n\n"
                   "    npm install -g @anthropic-ai/claude-code\n\n"
                   "(Node.js 18 or newer), then run this command again.\n");
        return 1;
    }

    const std::string connect_host = (host == "0.0.0.0" || host == "::") ? "127.0.0.1" : host;
    Health h = probe(connect_host, port);
    pid_t server = -1;
    if (h.up) {
        fmt::print(stderr, "kiln claude: reusing the server already running on {}:{} ({})\n", connect_host, port,
                   h.model.empty() ? "model unknown" : h.model);
        if (!model_path.empty()) fmt::print(stderr, "kiln claude: (-m {} is ignored: the running server's model is used)\n", model_path);
    } else {
        if (model_path.empty()) throw Error("kiln claude: no model given (-m MODEL.gguf) and no server answers on the port");
        if (n_ctx <= 0) {
            const int64_t train = Model::read_info(model_path).n_ctx_train;
            n_ctx = train > 0 ? std::min(train, kDefaultClaudeCtx) : kDefaultClaudeCtx;
        }
        if (api_key.empty()) api_key = random_token();
        if (log_path.empty()) log_path = (fs::temp_directory_path() / fmt::format("kiln-claude-{}.log", port)).string();
        std::vector<std::string> sargs = {"kiln", "serve", "-m", model_path, "-c", std::to_string(n_ctx), "--host", host,
                                          "--port", std::to_string(port), "--parallel", std::to_string(parallel), "--api-key", api_key};
        if (cache_mib >= 0) sargs.insert(sargs.end(), {"--cache-mem", std::to_string(cache_mib)});
        if (!cache_dir.empty()) sargs.insert(sargs.end(), {"--cache-dir", cache_dir});
        if (threads > 0) sargs.insert(sargs.end(), {"-t", std::to_string(threads)});
        if (!alias.empty()) sargs.insert(sargs.end(), {"--alias", alias});
        if (!backend.empty()) sargs.insert(sargs.end(), {"--backend", backend});
        if (device >= 0) sargs.insert(sargs.end(), {"--device", std::to_string(device)});
        if (kv_k != KvType::F16) sargs.insert(sargs.end(), {"-ctk", kv_type_name(kv_k)});
        if (kv_v != KvType::F16) sargs.insert(sargs.end(), {"-ctv", kv_type_name(kv_v)});
        const int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (log_fd < 0) throw Error(fmt::format("kiln claude: cannot write the server log {}: {}", log_path, std::strerror(errno)));
        server = ::fork();
        if (server < 0) throw Error(fmt::format("kiln claude: fork failed: {}", std::strerror(errno)));
        if (server == 0) {
            ::setpgid(0, 0);  // a Ctrl-C in claude's terminal must not stop the server under it
            ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // nor outlive a kiln claude that was killed
            ::dup2(log_fd, 1);
            ::dup2(log_fd, 2);
            const int devnull = ::open("/dev/null", O_RDONLY);
            if (devnull >= 0) ::dup2(devnull, 0);
            std::vector<char*> cargs;
            for (auto& a : sargs) cargs.push_back(a.data());
            cargs.push_back(nullptr);
            ::execv("/proc/self/exe", cargs.data());
            ::_exit(127);
        }
        ::close(log_fd);
        fmt::print(stderr, "kiln claude: starting kiln serve on {}:{} with {} ({} tokens of context); log: {}\n", connect_host, port,
                   model_path, n_ctx, log_path);
        auto stop_server = [&] {
            ::kill(server, SIGTERM);
            int st = 0;
            ::waitpid(server, &st, 0);
        };
        for (int i = 0;; ++i) {
            int st = 0;
            if (::waitpid(server, &st, WNOHANG) == server)
                throw Error(fmt::format("kiln claude: the server exited before it was ready; the end of its log ({}):\n{}", log_path,
                                        tail_of(log_path, 4000)));
            h = probe(connect_host, port);
            if (h.up) break;
            if (i >= 3000) {  // 5 minutes
                stop_server();
                throw Error(fmt::format("kiln claude: the server did not answer /health within 5 minutes; log: {}", log_path));
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
    }
    if (alias.empty()) alias = h.model.empty() ? "local" : h.model;
    if (h.n_ctx > 0) n_ctx = h.n_ctx;
    if (api_key.empty()) api_key = "kiln";  // a reused server without a key accepts any
    if (server < 0) {
        httplib::Client c(connect_host, port);
        c.set_connection_timeout(2);
        c.set_bearer_token_auth(api_key);
        if (auto r = c.Get("/v1/models"); r && r->status == 401)
            throw Error(fmt::format("kiln claude: the server on {}:{} refuses the API key{}: pass the server's key with --api-key",
                                    connect_host, port, api_key == "kiln" ? " (none was given)" : ""));
    }

    std::vector<std::pair<std::string, std::string>> env = {
        {"ANTHROPIC_BASE_URL", fmt::format("http://{}:{}", connect_host.find(':') != std::string::npos ? "[" + connect_host + "]" : connect_host, port)},
        {"ANTHROPIC_AUTH_TOKEN", api_key},
        // The model name for every role, so no request names a model the server does not have.
        {"ANTHROPIC_MODEL", alias},
        {"ANTHROPIC_SMALL_FAST_MODEL", alias},
        {"ANTHROPIC_DEFAULT_HAIKU_MODEL", alias},
        {"ANTHROPIC_DEFAULT_SONNET_MODEL", alias},
        {"ANTHROPIC_DEFAULT_OPUS_MODEL", alias},
        // A billing header that changes on every request would sit at the top of the prompt.
        {"CLAUDE_CODE_ATTRIBUTION_HEADER", "0"},
        // A per-turn "tokens left" message lands early in the prompt and breaks the cached prefix.
        {"CLAUDE_CODE_TOTAL_TOKENS_REMINDER", "off"},
        // The real window, so Claude Code compacts its history before the server refuses it.
        {"CLAUDE_CODE_AUTO_COMPACT_WINDOW", std::to_string(n_ctx > 0 ? n_ctx : kDefaultClaudeCtx)},
        {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"},
    };

    pid_t child = ::fork();
    if (child < 0) throw Error(fmt::format("kiln claude: fork failed: {}", std::strerror(errno)));
    if (child == 0) {
        // A user's real key must not be sent to the local server (x-api-key wins over the token).
        ::unsetenv("ANTHROPIC_API_KEY");
        for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
        std::vector<std::string> cv = {claude};
        cv.insert(cv.end(), claude_args.begin(), claude_args.end());
        std::vector<char*> cargs;
        for (auto& a : cv) cargs.push_back(a.data());
        cargs.push_back(nullptr);
        ::execv(claude.c_str(), cargs.data());
        fmt::print(stderr, "kiln claude: cannot run {}: {}\n", claude, std::strerror(errno));
        ::_exit(127);
    }
    // Like system(): the terminal's Ctrl-C is claude's to handle; termination is passed on to it.
    g_forward_pid = child;
    struct sigaction ign{}, fwd{}, old_int{}, old_quit{}, old_term{}, old_hup{};
    ign.sa_handler = SIG_IGN;
    fwd.sa_handler = forward_signal;
    ::sigaction(SIGINT, &ign, &old_int);
    ::sigaction(SIGQUIT, &ign, &old_quit);
    ::sigaction(SIGTERM, &fwd, &old_term);
    ::sigaction(SIGHUP, &fwd, &old_hup);
    int status = 0;
    while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    ::sigaction(SIGINT, &old_int, nullptr);
    ::sigaction(SIGQUIT, &old_quit, nullptr);
    ::sigaction(SIGTERM, &old_term, nullptr);
    ::sigaction(SIGHUP, &old_hup, nullptr);
    g_forward_pid = 0;
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 1;

    if (server > 0) {
        ::kill(server, SIGTERM);
        int st = 0;
        bool gone = false;
        for (int i = 0; i < 100 && !gone; ++i) {
            gone = ::waitpid(server, &st, WNOHANG) == server;
            if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        if (!gone) {
            ::kill(server, SIGKILL);
            ::waitpid(server, &st, 0);
        }
        fmt::print(stderr, "kiln claude: stopped the server (log: {})\n", log_path);
    }
    return code;
}

}  // namespace

KILN_COMMAND("claude", "run Claude Code on a local model: kiln claude -m MODEL [-c CTX] [-- claude args]", run_claude);

}  // namespace kiln::cli
