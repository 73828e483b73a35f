// kiln serve -m MODEL: the Anthropic Messages API and the OpenAI Chat Completions API over HTTP.
#include <dirent.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <httplib.h>

#include "cli/args.h"
#include "cli/model_load.h"
#include "kiln/memory.h"
#include "cli/command.h"
#include "cli/text_input.h"
#include "cli/server/http_server.h"
#include "cli/server/server.h"

namespace kiln::cli {
namespace {

using namespace kiln::serve;
using json = nlohmann::ordered_json;  // answers keep their fields in the documented order
using Clock = std::chrono::steady_clock;

constexpr size_t kMaxBody = 32u << 20;  // 32 MiB
constexpr int kSpareConnections = 128;    // connection threads beyond the slots and the queue

std::string random_id(const char* prefix) {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    static const char* digits = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    std::string s = prefix;
    for (int i = 0; i < 24; ++i) s += digits[rng() % 62];
    return s;
}

bool const_time_equal(const std::string& a, const std::string& b) {
    // Length leaks, content does not.
    unsigned char diff = a.size() == b.size() ? 0 : 1;
    const size_t n = std::max(a.size(), b.size());
    for (size_t i = 0; i < n; ++i) {
        const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
        const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
        diff |= static_cast<unsigned char>(x ^ y);
    }
    return diff == 0;
}

// A short fingerprint of a key for logs (FNV-1a, 32 bits): tells keys apart, never reveals one.
std::string key_fingerprint(const std::string& key) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : key) h = (h ^ c) * 1099511628211ull;
    return fmt::format("{:08x}", static_cast<uint32_t>(h ^ (h >> 32)));
}

// The connection's socket, which cpp-httplib 0.11 does not hand to a handler: the descriptor whose
// peer and local addresses are the request's. -1 if none is found.
int connection_fd(const httplib::Request& req) {
    DIR* dir = ::opendir("/proc/self/fd");
    if (!dir) return -1;
    int found = -1;
    auto addr_port = [](const sockaddr_storage& a, std::string& ip, int& port) {
        char host[NI_MAXHOST], serv[NI_MAXSERV];
        if (::getnameinfo(reinterpret_cast<const sockaddr*>(&a), sizeof a, host, sizeof host, serv, sizeof serv,
                          NI_NUMERICHOST | NI_NUMERICSERV) != 0)
            return false;
        ip = host;
        port = std::atoi(serv);
        return true;
    };
    while (dirent* e = ::readdir(dir)) {
        const int fd = std::atoi(e->d_name);
        struct stat st{};
        if (e->d_name[0] < '0' || e->d_name[0] > '9' || ::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
        sockaddr_storage peer{}, local{};
        socklen_t pl = sizeof peer, ll = sizeof local;
        if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0 || ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) != 0)
            continue;
        std::string pip, lip;
        int pport = 0, lport = 0;
        if (addr_port(peer, pip, pport) && addr_port(local, lip, lport) && pport == req.remote_port && pip == req.remote_addr &&
            lport == req.local_port) {
            found = fd;
            break;
        }
    }
    ::closedir(dir);
    return found;
}

// Whether the client at the other end of fd hung up (what is still unread stays unread).
bool peer_gone(int fd) {
    pollfd p{fd, static_cast<short>(POLLIN | POLLRDHUP), 0};
    if (::poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
    char c;
    return (p.revents & POLLIN) && ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

// For a non-streaming request: false once its client has gone (checked at most every 100 ms), so
// the generation stops as a dropped stream's does.
class ClientWatch {
public:
    explicit ClientWatch(const httplib::Request& req) : fd_(connection_fd(req)) {}
    bool operator()() {
        if (!alive_ || fd_ < 0) return alive_;
        const auto now = Clock::now();
        if (now - last_ < std::chrono::milliseconds(100)) return true;
        last_ = now;
        alive_ = !peer_gone(fd_);
        return alive_;
    }

private:
    int fd_;
    bool alive_ = true;
    Clock::time_point last_{};
};

// A token's text for logprobs: the piece (special tokens as written) and its bytes.
json token_entry(const Tokenizer& tok, int32_t id, float logprob) {
    const std::string piece = tok.token_to_piece(id, /*special=*/true);
    json bytes = json::array();
    for (unsigned char c : piece) bytes.push_back(c);
    return json{{"token", piece}, {"logprob", logprob}, {"bytes", bytes}};
}

// OpenAI chat completions' choices[0].logprobs (of a whole answer, or a stream chunk's tokens).
json chat_logprobs(const Tokenizer& tok, const std::vector<TokenLogprobs>& lps) {
    json content = json::array();
    for (const auto& t : lps) {
        json e = token_entry(tok, t.token, t.logprob);
        json top = json::array();
        for (const auto& a : t.top) top.push_back(token_entry(tok, a.id, a.logprob));
        e["top_logprobs"] = top;
        content.push_back(e);
    }
    return json{{"content", content}, {"refusal", nullptr}};
}

// OpenAI (legacy) completions' choices[0].logprobs; offset: the text before these tokens.
json completion_logprobs(const Tokenizer& tok, const std::vector<TokenLogprobs>& all, size_t offset = 0) {
    json tokens = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
    for (const auto& t : all) {
        const std::string piece = tok.token_to_piece(t.token, true);
        tokens.push_back(piece);
        lps.push_back(t.logprob);
        json top = json::object();
        for (const auto& a : t.top) top[tok.token_to_piece(a.id, true)] = a.logprob;
        tops.push_back(top);
        offsets.push_back(offset);
        offset += piece.size();
    }
    return json{{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

ApiError shutting_down() { return ApiError(503, "overloaded_error", "kiln serve is shutting down"); }

bool is_openai_path(const std::string& path) { return path.rfind("/v1/chat/", 0) == 0 || path.rfind("/v1/completions", 0) == 0; }

std::string openai_error_type(const ApiError& e) {
    switch (e.status) {
        case 401: return "authentication_error";
        case 404: return "not_found_error";
        case 413: return "request_too_large";
        case 503:
        case 529: return "overloaded_error";
        case 500: return "server_error";
        default: return "invalid_request_error";
    }
}

void send_error(httplib::Response& res, const ApiError& e, bool openai) {
    // Overloaded: Anthropic's own 529 on its route; OpenAI clients know 503 (and retry on it).
    res.status = openai && e.status == 529 ? 503 : e.status;
    if (e.status == 529 || e.status == 503) res.set_header("Retry-After", "1");
    json body;
    if (openai) body = json{{"error", {{"message", e.what()}, {"type", openai_error_type(e)}, {"param", nullptr}, {"code", nullptr}}}};
    else body = json{{"type", "error"}, {"error", {{"type", e.type}, {"message", e.what()}}}};
    res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

json anthropic_usage(const GenResult& g) {
    return json{{"input_tokens", g.n_prompt - g.n_cached},
                {"output_tokens", g.n_gen},
                {"cache_read_input_tokens", g.n_cached},
                {"cache_creation_input_tokens", 0}};
}

std::string anthropic_stop(const GenResult& g) {
    if (g.any_tool_call) return "tool_use";
    if (g.stop_reason == "end") return "end_turn";
    return g.stop_reason;  // max_tokens, stop_sequence
}

std::string openai_finish(const GenResult& g) {
    if (g.any_tool_call) return "tool_calls";
    if (g.stop_reason == "max_tokens") return "length";
    return "stop";
}

json openai_usage(const GenResult& g) {
    return json{{"prompt_tokens", g.n_prompt},
                {"completion_tokens", g.n_gen},
                {"total_tokens", g.n_prompt + g.n_gen},
                {"prompt_tokens_details", {{"cached_tokens", g.n_cached}}}};
}

// Collects events into Anthropic content blocks (the non-streaming answer).
struct Collector {
    json blocks = json::array();
    std::string last_kind;
    void add(const ReplyEvent& e) {
        switch (e.kind) {
            case ReplyEvent::Kind::Text:
                if (last_kind != "text") blocks.push_back(json{{"type", "text"}, {"text", ""}});
                blocks.back()["text"] = blocks.back()["text"].get<std::string>() + e.text;
                last_kind = "text";
                break;
            case ReplyEvent::Kind::Reasoning:
                if (last_kind != "thinking") blocks.push_back(json{{"type", "thinking"}, {"thinking", ""}, {"signature", "kiln"}});
                blocks.back()["thinking"] = blocks.back()["thinking"].get<std::string>() + e.text;
                last_kind = "thinking";
                break;
            case ReplyEvent::Kind::ToolCallStart:
                blocks.push_back(json{{"type", "tool_use"}, {"id", e.id}, {"name", e.name}, {"input", ""}});
                last_kind = "tool_use";
                break;
            case ReplyEvent::Kind::ToolCallArgs:
                if (last_kind == "tool_use") blocks.back()["input"] = blocks.back()["input"].get<std::string>() + e.text;
                break;
            case ReplyEvent::Kind::ToolCallEnd:
                if (last_kind == "tool_use") {
                    json in = json::parse(blocks.back()["input"].get<std::string>(), nullptr, false);
                    blocks.back()["input"] = in.is_object() ? in : json::object();
                }
                last_kind = "";
                break;
            case ReplyEvent::Kind::Warning: break;  // logged by Server::generate
        }
    }
};

class Server {
public:
    Server(ServingEngine& engine, ChatFormat format, std::string api_key, std::string model_name)
        : e_(engine), format_(std::move(format)), api_key_(std::move(api_key)), model_name_(std::move(model_name)) {}

    // The HTTP layer's limits (HttpServer: total deadlines for a request's headers and body, then
    // 408) are set where svr is made; here the routes, and the threads for connections.
    void install(HttpServer& svr, int max_queue) {
        http_ = &svr;
        svr.set_payload_max_length(kMaxBody);
        // Each open connection holds a thread while it is open (cpp-httplib): enough threads that
        // many idle or slow clients (each cut off by the deadlines) leave room for /health and
        // real requests.
        const int threads = e_.n_parallel() + max_queue + kSpareConnections;
        svr.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };

        svr.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
            ++e_.metrics().requests;
            // A POST with neither Content-Length nor chunked encoding has no body (RFC 9112 6.3);
            // cpp-httplib would read one until the client closes. Answer now.
            if (req.method == "POST" && !req.has_header("Content-Length") &&
                req.get_header_value("Transfer-Encoding").find("chunked") == std::string::npos) {
                send_error(res, bad_request("the request has no body (no Content-Length): send the JSON with a Content-Length"),
                           is_openai_path(req.path));
                return httplib::Server::HandlerResponse::Handled;
            }
            if (api_key_.empty() || req.path == "/health" || (req.method == "HEAD" && req.path == "/"))
                return httplib::Server::HandlerResponse::Unhandled;
            std::string key = req.get_header_value("x-api-key");
            const char* from = "x-api-key";
            if (key.empty()) {
                const std::string auth = req.get_header_value("Authorization");
                if (auth.rfind("Bearer ", 0) == 0) key = auth.substr(7);
                from = "Authorization: Bearer";
            }
            if (const_time_equal(key, api_key_)) return httplib::Server::HandlerResponse::Unhandled;
            log_rejected(key, from, req);
            send_error(res, ApiError(401, "authentication_error", key.empty() ? "missing API key (x-api-key or Authorization: Bearer)" : "invalid API key"),
                       is_openai_path(req.path));
            return httplib::Server::HandlerResponse::Handled;
        });
        svr.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
            if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
            const bool oa = is_openai_path(req.path);
            if (res.status == 404) send_error(res, ApiError(404, "not_found_error", fmt::format("no route for {} {}", req.method, req.path)), oa);
            else if (res.status == 413 && req.get_header_value("Content-Type").find("x-www-form-urlencoded") != std::string::npos)
                // cpp-httplib caps form bodies at 8 KiB (curl -d sends this type): say what to do.
                send_error(res, ApiError(413, "request_too_large", "form-encoded bodies are limited to 8 KiB: send the JSON with Content-Type: application/json"), oa);
            else if (res.status == 413) send_error(res, ApiError(413, "request_too_large", fmt::format("request body over the {} byte limit", kMaxBody)), oa);
            else if (res.status == 400) send_error(res, bad_request("malformed HTTP request"), oa);
            else send_error(res, ApiError(res.status, res.status >= 500 ? "api_error" : "invalid_request_error", fmt::format("HTTP {}", res.status)), oa);
            return httplib::Server::HandlerResponse::Handled;
        }));
        svr.set_exception_handler([](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
            std::string msg = "internal error";
            try {
                std::rethrow_exception(ep);
            } catch (const std::exception& ex) {
                msg = ex.what();
            } catch (...) {
            }
            send_error(res, ApiError(500, "api_error", msg), is_openai_path(req.path));
        });

        svr.Get("/", [](const httplib::Request&, httplib::Response& res) { res.set_content("kiln serve: ok\n", "text/plain"); });
        svr.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
            res.set_content(json{{"status", "ok"}, {"model", model_name_}, {"n_ctx", e_.n_ctx()}, {"backend", e_.backend_name()}}.dump(),
                            "application/json");
        });
        svr.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
            json m{{"id", model_name_}, {"object", "model"}, {"type", "model"}, {"created", 0}, {"owned_by", "kiln"}, {"display_name", model_name_}};
            res.set_content(json{{"object", "list"}, {"data", json::array({m})}, {"has_more", false}}.dump(), "application/json");
        });
        svr.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
            const std::string id = req.matches[1];
            if (id != model_name_) {
                send_error(res, ApiError(404, "not_found_error", fmt::format("model '{}' not found (this server has '{}')", id, model_name_)), true);
                return;
            }
            res.set_content(json{{"id", model_name_}, {"object", "model"}, {"type", "model"}, {"created", 0}, {"owned_by", "kiln"},
                                 {"display_name", model_name_}}
                                .dump(),
                            "application/json");
        });
        // llama-server's /tokenize and /detokenize.
        svr.Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) {
            guarded(req, res, true, [&] {
                const json body = parse_body(req.body);
                if (!body.is_object()) throw bad_request("expected a JSON object with \"content\"");
                const auto it = body.find("content");
                if (it == body.end() || !it->is_string()) throw bad_request("content: expected a string");
                auto flag = [&](const char* k, bool dflt) {
                    const auto f = body.find(k);
                    if (f == body.end()) return dflt;
                    if (!f->is_boolean()) throw bad_request(fmt::format("{}: expected true or false", k));
                    return f->get<bool>();
                };
                const bool add_special = flag("add_special", false), parse_special = flag("parse_special", true),
                           with_pieces = flag("with_pieces", false);
                const auto ids = e_.tokenizer().encode(it->get<std::string>(), add_special, parse_special);
                json tokens = json::array();
                for (int32_t id : ids) {
                    if (!with_pieces) {
                        tokens.push_back(id);
                        continue;
                    }
                    // The piece as text when it is whole UTF-8, else its bytes (as llama-server).
                    const std::string piece = e_.tokenizer().token_to_piece(id, true);
                    bool valid = true;
                    try {
                        (void)json(piece).dump();
                    } catch (const json::type_error&) {
                        valid = false;
                    }
                    json bytes = json::array();
                    for (unsigned char ch : piece) bytes.push_back(ch);
                    tokens.push_back(json{{"id", id}, {"piece", valid ? json(piece) : bytes}});
                }
                res.set_content(json{{"tokens", tokens}}.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
            });
        });
        svr.Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) {
            guarded(req, res, true, [&] {
                const json body = parse_body(req.body);
                const auto it = body.is_object() ? body.find("tokens") : body.end();
                if (it == body.end() || !it->is_array()) throw bad_request("tokens: expected an array of token ids");
                std::vector<int32_t> ids;
                const int64_t n_vocab = e_.tokenizer().n_vocab();
                for (const auto& t : *it) {
                    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= n_vocab)
                        throw bad_request(fmt::format("tokens: {} is not a token id (0..{})", t.dump(), n_vocab - 1));
                    ids.push_back(static_cast<int32_t>(t.get<int64_t>()));
                }
                res.set_content(json{{"content", e_.tokenizer().decode(ids)}}.dump(-1, ' ', false, json::error_handler_t::replace),
                                "application/json");
            });
        });
        svr.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) { res.set_content(metrics_text(), "text/plain; version=0.0.4"); });
        svr.Post("/v1/messages", [this](const httplib::Request& req, httplib::Response& res) { guarded(req, res, false, [&] { messages(req, res); }); });
        svr.Post("/v1/messages/count_tokens", [this](const httplib::Request& req, httplib::Response& res) {
            guarded(req, res, false, [&] {
                const ChatRequest r = from_anthropic(parse_body(req.body));
                const std::string prompt = render_prompt(format_, r);
                const auto toks = e_.tokenizer().encode(prompt, true, true);
                res.set_content(json{{"input_tokens", toks.size()}}.dump(), "application/json");
            });
        });
        svr.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) { guarded(req, res, true, [&] { completions(req, res); }); });
        svr.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) { guarded(req, res, true, [&] { chat_completions(req, res); }); });
    }

private:
    template <class F>
    void guarded(const httplib::Request& req, httplib::Response& res, bool openai, F&& f) {
        try {
            f();
        } catch (const ApiError& e) {
            ++e_.metrics().errors;
            fmt::print(stderr, "kiln serve: {} {} -> {} {}\n", req.method, req.path, e.status, e.what());
            send_error(res, e, openai);
        } catch (const std::exception& e) {
            ++e_.metrics().errors;
            fmt::print(stderr, "kiln serve: {} {} -> 500 {}\n", req.method, req.path, e.what());
            send_error(res, ApiError(500, "api_error", e.what()), openai);
        }
    }

    // Claude Code retries a 401 for minutes: say once per distinct key, clearly, why it is refused.
    // The key itself is never logged, only a fingerprint to tell keys apart and compare.
    void log_rejected(const std::string& key, const char* from, const httplib::Request& req) {
        std::lock_guard lk(log_mu_);
        if (rejected_.size() >= 1000 || !rejected_.insert(key).second) return;
        if (key.empty())
            fmt::print(stderr,
                       "kiln serve: 401 for {} {} from {}: no API key was sent (the server requires x-api-key or Authorization: "
                       "Bearer; key fingerprint {}). Requests without a key are not logged again.\n",
                       req.method, req.path, req.remote_addr, key_fingerprint(api_key_));
        else
            fmt::print(stderr,
                       "kiln serve: 401 for {} {} from {}: the API key sent in {} (fingerprint {}, {} characters) does not match "
                       "--api-key (fingerprint {}). Further requests with this key are not logged.\n",
                       req.method, req.path, req.remote_addr, from, key_fingerprint(key), key.size(), key_fingerprint(api_key_));
    }

    // Prepares the request up to the token ids: the errors a client should get before any stream.
    // Tool call ids are id_prefix + a random part + their index. The chat format adds its end of
    // turn to the stops and its end of thinking for a budget (ServingEngine::chat).
    GenParams prepare(ChatRequest& r, const char* id_prefix) {
        std::string prompt = render_prompt(format_, r);
        // tool_choice any / a named tool: the prompt ends inside the family's opened tool call (a
        // family without a tool-call format cannot be forced: the tools are offered, no more).
        if (!r.force_tool.empty() && r.prefill.empty() && r.gen.json_schema.empty()) {
            r.gen.reply.output_prefix = format_.tool_call_opener(r.force_tool == "*" ? "" : r.force_tool);
            prompt += r.gen.reply.output_prefix;
        }
        // Parsers that type tool arguments by the tools' schemas: Qwen3-Coder's XML calls, GLM's arg_value pairs.
        const std::string family = format_.parser_name();
        if ((family == "qwen3-coder" || family == "glm") && r.tools.is_array()) r.gen.reply.tools_json = r.tools.dump();
        r.gen.reply.tool_call_id_prefix = random_id(id_prefix) + "_";
        r.gen.prompt.tokens = tokenize_prompt(prompt);
        r.gen.prompt.text = std::move(prompt);
        return r.gen;
    }

    // Tokenizes a prompt; ApiError 400 when it is empty or "prompt is too long: N tokens > M maximum".
    std::vector<int32_t> tokenize_prompt(const std::string& text) const {
        std::vector<int32_t> t = e_.tokenizer().encode(text, /*add_special=*/true, /*parse_special=*/true);
        if (t.empty()) throw bad_request("the prompt is empty");
        if (static_cast<int64_t>(t.size()) >= e_.n_ctx())
            throw bad_request(fmt::format("prompt is too long: {} tokens > {} maximum", t.size(), e_.n_ctx() - 1));
        return t;
    }

    // A place in the queue: ApiError 529 when the queue is full (503 once stopping).
    std::shared_ptr<ServingEngine::Admission> admit() {
        try {
            return std::make_shared<ServingEngine::Admission>(e_);
        } catch (const Error&) {
            if (e_.stopping()) throw shutting_down();
            throw ApiError(529, "overloaded_error", "the server is overloaded: every slot is busy and the queue is full");
        }
    }

    // A chat request through the engine: on_start(n_cached) once it has its slot, keepalive()
    // about every second while it waits and between prompt batches (false: cancel), emit() each
    // event of the reply (false: cancel). The parser's warnings go to the log.
    GenResult generate(const GenParams& gen, const std::function<void(int64_t)>& on_start, const std::function<bool()>& keepalive,
                       const std::function<bool(const ReplyEvent&)>& emit) {
        const std::function<bool(const ReplyEvent&)> on_event = [&](const ReplyEvent& e) {
            if (e.kind != ReplyEvent::Kind::Warning) return emit(e);
            fmt::print(stderr, "kiln serve: model output: {}\n", e.text);
            return true;
        };
        GenerateResult g = e_.chat(format_, gen.prompt, gen, on_event, ServeCallbacks{on_start, keepalive});
        return to_result(std::move(g), e_.stopping());
    }
    // A completion (no template, plain text).
    GenResult complete(const GenParams& gen, const std::function<bool()>& keepalive, const std::function<bool(std::string_view)>& emit) {
        GenerateResult g = e_.generate(gen.prompt.tokens, gen, emit, ServeCallbacks{{}, keepalive});
        return to_result(std::move(g), e_.stopping());
    }

    void log_done(const char* api, const GenResult& g) {
        fmt::print(stderr, "kiln serve: {}: {} prompt tokens ({} cached), {} generated, stop {}, prefill {:.1f} t/s, decode {:.1f} t/s\n", api,
                   g.n_prompt, g.n_cached, g.n_gen, g.stop_reason,
                   g.prefill_ms > 0 ? 1000.0 * static_cast<double>(g.n_prompt - g.n_cached) / g.prefill_ms : 0.0,
                   g.decode_ms > 0 ? 1000.0 * static_cast<double>(g.n_gen) / g.decode_ms : 0.0);
    }

    void messages(const httplib::Request& req, httplib::Response& res) {
        const json body = parse_body(req.body);
        if (body.is_object() && !body.contains("max_tokens")) throw bad_request("max_tokens: Field required");
        ChatRequest r = from_anthropic(body);
        auto adm = admit();
        auto gen = std::make_shared<GenParams>(prepare(r, "toolu_"));
        const std::string id = random_id("msg_");
        const std::string model = r.model.empty() ? model_name_ : r.model;
        if (!r.stream) {
            Collector col;
            ClientWatch alive(req);
            const GenResult g = generate(*gen, [](int64_t) {}, std::ref(alive), [&](const ReplyEvent& ev) {
                col.add(ev);
                return alive();
            });
            log_done("messages", g);
            if (g.stop_reason == "shutdown") throw shutting_down();
            if (col.blocks.empty()) col.blocks.push_back(json{{"type", "text"}, {"text", ""}});
            json out{{"id", id},
                     {"type", "message"},
                     {"role", "assistant"},
                     {"model", model},
                     {"content", col.blocks},
                     {"stop_reason", anthropic_stop(g)},
                     {"stop_sequence", g.stop_reason == "stop_sequence" ? json(g.stop_sequence) : json(nullptr)},
                     {"usage", anthropic_usage(g)}};
            res.set_content(out.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
            return;
        }
        res.set_header("Cache-Control", "no-cache");
        res.set_chunked_content_provider("text/event-stream", [this, adm, gen, id, model](size_t, httplib::DataSink& sink) {
            stream_messages(sink, *gen, id, model);
            sink.done();
            return true;
        });
    }

    static bool sse(httplib::DataSink& sink, const char* event, const json& data) {
        const std::string s = fmt::format("event: {}\ndata: {}\n\n", event, data.dump(-1, ' ', false, json::error_handler_t::replace));
        return sink.write(s.data(), s.size());
    }

    void stream_messages(httplib::DataSink& sink, const GenParams& gen, const std::string& id, const std::string& model) {
        bool alive = true;
        auto last_write = Clock::now();
        auto send = [&](const char* ev, const json& d) {
            if (!alive) return false;
            alive = sse(sink, ev, d);
            last_write = Clock::now();
            return alive;
        };
        bool started = false;  // message_start sent
        int index = -1;
        std::string open;  // kind of the open block ("" none)
        auto close_block = [&] {
            if (open.empty()) return;
            if (open == "thinking") send("content_block_delta", json{{"type", "content_block_delta"}, {"index", index}, {"delta", {{"type", "signature_delta"}, {"signature", "kiln"}}}});
            send("content_block_stop", json{{"type", "content_block_stop"}, {"index", index}});
            open.clear();
        };
        auto open_block = [&](const std::string& kind, const json& block) {
            close_block();
            ++index;
            open = kind;
            send("content_block_start", json{{"type", "content_block_start"}, {"index", index}, {"content_block", block}});
        };
        GenResult g;
        try {
            g = generate(
                gen,
                [&](int64_t cached) {
                    started = true;
                    send("message_start",
                         json{{"type", "message_start"},
                              {"message",
                               {{"id", id},
                                {"type", "message"},
                                {"role", "assistant"},
                                {"model", model},
                                {"content", json::array()},
                                {"stop_reason", nullptr},
                                {"stop_sequence", nullptr},
                                {"usage",
                                 {{"input_tokens", static_cast<int64_t>(gen.prompt.tokens.size()) - cached},
                                  {"output_tokens", 0},
                                  {"cache_read_input_tokens", cached},
                                  {"cache_creation_input_tokens", 0}}}}}});
                },
                [&] {
                    if (alive && std::chrono::duration<double>(Clock::now() - last_write).count() >= 5.0) {
                        // Waiting for a slot, before message_start: an SSE comment (every parser skips
                        // it), since the event stream must open with message_start.
                        if (!started) {
                            alive = sink.write(": ping\n\n", 8);
                            last_write = Clock::now();
                        } else {
                            send("ping", json{{"type", "ping"}});
                        }
                    }
                    return alive;
                },
                [&](const ReplyEvent& ev) {
                    switch (ev.kind) {
                        case ReplyEvent::Kind::Text:
                            if (open != "text") open_block("text", json{{"type", "text"}, {"text", ""}});
                            send("content_block_delta", json{{"type", "content_block_delta"}, {"index", index}, {"delta", {{"type", "text_delta"}, {"text", ev.text}}}});
                            break;
                        case ReplyEvent::Kind::Reasoning:
                            if (open != "thinking") open_block("thinking", json{{"type", "thinking"}, {"thinking", ""}});
                            send("content_block_delta", json{{"type", "content_block_delta"}, {"index", index}, {"delta", {{"type", "thinking_delta"}, {"thinking", ev.text}}}});
                            break;
                        case ReplyEvent::Kind::ToolCallStart:
                            open_block("tool_use", json{{"type", "tool_use"}, {"id", ev.id}, {"name", ev.name}, {"input", json::object()}});
                            break;
                        case ReplyEvent::Kind::ToolCallArgs:
                            if (open == "tool_use")
                                send("content_block_delta", json{{"type", "content_block_delta"}, {"index", index}, {"delta", {{"type", "input_json_delta"}, {"partial_json", ev.text}}}});
                            break;
                        case ReplyEvent::Kind::ToolCallEnd: close_block(); break;
                        case ReplyEvent::Kind::Warning: break;  // logged by generate()
                    }
                    return alive;
                });
        } catch (const std::exception& ex) {
            fmt::print(stderr, "kiln serve: messages stream failed: {}\n", ex.what());
            send("error", json{{"type", "error"}, {"error", {{"type", "api_error"}, {"message", ex.what()}}}});
            return;
        }
        log_done("messages", g);
        if (g.stop_reason == "shutdown" && alive) {
            // The server is stopping: the open block is closed and the stream ends with an error
            // event (an SDK raises it as a retryable overloaded error), never silently cut.
            close_block();
            send("error", json{{"type", "error"}, {"error", {{"type", "overloaded_error"}, {"message", "kiln serve is shutting down"}}}});
            return;
        }
        if (g.stop_reason == "cancelled" || !alive) return;
        if (index < 0) open_block("text", json{{"type", "text"}, {"text", ""}});
        close_block();
        send("message_delta", json{{"type", "message_delta"},
                                   {"delta", {{"stop_reason", anthropic_stop(g)}, {"stop_sequence", g.stop_reason == "stop_sequence" ? json(g.stop_sequence) : json(nullptr)}}},
                                   {"usage", anthropic_usage(g)}});
        send("message_stop", json{{"type", "message_stop"}});
    }

    void chat_completions(const httplib::Request& req, httplib::Response& res) {
        ChatRequest r = from_openai(parse_body(req.body));
        auto adm = admit();
        auto gen = std::make_shared<GenParams>(prepare(r, "call_"));
        const std::string id = random_id("chatcmpl-");
        const std::string model = r.model.empty() ? model_name_ : r.model;
        const int64_t created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
        if (!r.stream) {
            std::string text, reasoning;
            json calls = json::array();
            ClientWatch alive(req);
            const GenResult g = generate(*gen, [](int64_t) {}, std::ref(alive), [&](const ReplyEvent& ev) {
                if (ev.kind == ReplyEvent::Kind::Text) text += ev.text;
                else if (ev.kind == ReplyEvent::Kind::Reasoning) reasoning += ev.text;
                else if (ev.kind == ReplyEvent::Kind::ToolCallStart) calls.push_back(json{{"id", ev.id}, {"type", "function"}, {"function", {{"name", ev.name}, {"arguments", ""}}}});
                else if (ev.kind == ReplyEvent::Kind::ToolCallArgs && !calls.empty())
                    calls.back()["function"]["arguments"] = calls.back()["function"]["arguments"].get<std::string>() + ev.text;
                return alive();
            });
            log_done("chat.completions", g);
            if (g.stop_reason == "shutdown") throw shutting_down();
            json msg{{"role", "assistant"}, {"content", text}};
            if (!reasoning.empty()) msg["reasoning_content"] = reasoning;
            if (!calls.empty()) msg["tool_calls"] = calls;
            json out{{"id", id},
                     {"object", "chat.completion"},
                     {"created", created},
                     {"model", model},
                     {"choices", json::array({json{{"index", 0},
                                                   {"message", msg},
                                                   {"logprobs", gen->n_logprobs >= 0 ? chat_logprobs(e_.tokenizer(), g.logprobs) : json(nullptr)},
                                                   {"finish_reason", openai_finish(g)}}})},
                     {"usage", openai_usage(g)}};
            res.set_content(out.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
            return;
        }
        const bool include_usage = r.include_usage;
        res.set_header("Cache-Control", "no-cache");
        res.set_chunked_content_provider("text/event-stream", [this, adm, gen, id, model, created, include_usage](size_t, httplib::DataSink& sink) {
            bool alive = true;
            // logprobs: the tokens generated since the last chunk ride on the next one.
            std::vector<TokenLogprobs> pending;
            if (gen->n_logprobs >= 0) gen->on_logprobs = [&](const TokenLogprobs& t) { pending.push_back(t); };
            auto chunk = [&](const json& delta, const json& finish) {
                if (!alive) return false;
                json choice{{"index", 0}, {"delta", delta}};
                if (gen->n_logprobs >= 0) {
                    choice["logprobs"] = chat_logprobs(e_.tokenizer(), pending);
                    pending.clear();
                }
                choice["finish_reason"] = finish;
                json c{{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", model},
                       {"choices", json::array({choice})}};
                const std::string s = "data: " + c.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
                alive = sink.write(s.data(), s.size());
                return alive;
            };
            int tool_index = -1;
            GenResult g;
            try {
                g = generate(
                    *gen, [&](int64_t) { chunk(json{{"role", "assistant"}, {"content", ""}}, nullptr); },
                    [&] {
                        if (alive) alive = sink.write(": ping\n\n", 8);
                        return alive;
                    },
                    [&](const ReplyEvent& ev) {
                        if (ev.kind == ReplyEvent::Kind::Text) chunk(json{{"content", ev.text}}, nullptr);
                        else if (ev.kind == ReplyEvent::Kind::Reasoning) chunk(json{{"reasoning_content", ev.text}}, nullptr);
                        else if (ev.kind == ReplyEvent::Kind::ToolCallStart)
                            chunk(json{{"tool_calls", json::array({json{{"index", ++tool_index}, {"id", ev.id}, {"type", "function"}, {"function", {{"name", ev.name}, {"arguments", ""}}}}})}}, nullptr);
                        else if (ev.kind == ReplyEvent::Kind::ToolCallArgs)
                            chunk(json{{"tool_calls", json::array({json{{"index", tool_index}, {"function", {{"arguments", ev.text}}}}})}}, nullptr);
                        return alive;
                    });
            } catch (const std::exception& ex) {
                fmt::print(stderr, "kiln serve: chat.completions stream failed: {}\n", ex.what());
                const std::string s = "data: " + json{{"error", {{"message", ex.what()}, {"type", "server_error"}}}}.dump() + "\n\n";
                sink.write(s.data(), s.size());
                sink.done();
                return true;
            }
            log_done("chat.completions", g);
            if (alive && g.stop_reason == "shutdown") {
                const std::string s = "data: " + json{{"error", {{"message", "kiln serve is shutting down"}, {"type", "overloaded_error"}}}}.dump() + "\n\ndata: [DONE]\n\n";
                sink.write(s.data(), s.size());
            } else if (alive && g.stop_reason != "cancelled") {
                chunk(json::object(), openai_finish(g));
                if (include_usage && alive) {
                    json u{{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", model}, {"choices", json::array()}, {"usage", openai_usage(g)}};
                    const std::string s = "data: " + u.dump() + "\n\n";
                    alive = sink.write(s.data(), s.size());
                }
                if (alive) sink.write("data: [DONE]\n\n", 14);
            }
            sink.done();
            return true;
        });
    }

    // OpenAI legacy completions: a raw prompt, no chat template, plain text out.
    void completions(const httplib::Request& req, httplib::Response& res) {
        const json body = parse_body(req.body);
        ChatRequest r;
        {
            // Reuse the chat request's field checks for the sampling fields, with a dummy message.
            json b = body;
            b["messages"] = json::array({json{{"role", "user"}, {"content", ""}}});
            b.erase("logprobs");  // an integer here (a flag on chat completions)
            r = from_openai(b);
            if (const auto lp = body.find("logprobs"); lp != body.end() && !lp->is_null()) {
                if (!lp->is_number_integer() || lp->get<int64_t>() < 0 || lp->get<int64_t>() > 20)
                    throw bad_request("logprobs: expected an integer 0..20 (the alternatives per token)");
                r.gen.n_logprobs = static_cast<int>(lp->get<int64_t>());
            }
        }
        auto it = body.find("prompt");
        if (it == body.end() || !(it->is_string() || (it->is_array() && it->size() == 1 && (*it)[0].is_string())))
            throw bad_request("prompt: expected a string (one prompt per request)");
        const std::string prompt = it->is_string() ? it->get<std::string>() : (*it)[0].get<std::string>();
        if (body.contains("max_tokens") == false) r.gen.max_tokens = 16;  // OpenAI's default
        auto adm = admit();
        auto gen = std::make_shared<GenParams>(r.gen);
        gen->prompt.tokens = tokenize_prompt(prompt);
        const std::string id = random_id("cmpl-");
        const std::string model = r.model.empty() ? model_name_ : r.model;
        const int64_t created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
        auto choice = [](const std::string& text, const json& finish, json logprobs = nullptr) {
            return json::array({json{{"text", text}, {"index", 0}, {"logprobs", std::move(logprobs)}, {"finish_reason", finish}}});
        };
        if (!r.stream) {
            std::string text;
            ClientWatch alive(req);
            const GenResult g = complete(*gen, std::ref(alive), [&](std::string_view piece) {
                text += piece;
                return alive();
            });
            log_done("completions", g);
            if (g.stop_reason == "shutdown") throw shutting_down();
            json out{{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
                     {"choices", choice(text, openai_finish(g), gen->n_logprobs >= 0 ? completion_logprobs(e_.tokenizer(), g.logprobs) : json(nullptr))},
                     {"usage", openai_usage(g)}};
            res.set_content(out.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
            return;
        }
        const bool include_usage = r.include_usage;
        res.set_chunked_content_provider("text/event-stream", [this, adm, gen, id, model, created, include_usage, choice](size_t, httplib::DataSink& sink) {
            bool alive = true;
            auto write = [&](const json& j) {
                if (!alive) return false;
                const std::string s = "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
                alive = sink.write(s.data(), s.size());
                return alive;
            };
            auto base = [&] { return json{{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model}}; };
            std::vector<TokenLogprobs> pending;
            size_t offset = 0;
            if (gen->n_logprobs >= 0) gen->on_logprobs = [&](const TokenLogprobs& t) { pending.push_back(t); };
            auto chunk_logprobs = [&]() -> json {
                if (gen->n_logprobs < 0) return nullptr;
                json lp = completion_logprobs(e_.tokenizer(), pending, offset);
                for (const auto& t : pending) offset += e_.tokenizer().token_to_piece(t.token, true).size();
                pending.clear();
                return lp;
            };
            try {
                const GenResult g = complete(
                    *gen, [&] { return alive = alive && sink.write(": ping\n\n", 8); },
                    [&](std::string_view piece) {
                        json c = base();
                        c["choices"] = choice(std::string(piece), nullptr, chunk_logprobs());
                        return write(c);
                    });
                log_done("completions", g);
                if (alive && g.stop_reason == "shutdown") {
                    write(json{{"error", {{"message", "kiln serve is shutting down"}, {"type", "overloaded_error"}}}});
                    if (alive) sink.write("data: [DONE]\n\n", 14);
                } else if (alive && g.stop_reason != "cancelled") {
                    json c = base();
                    c["choices"] = choice("", openai_finish(g));
                    write(c);
                    if (include_usage) {
                        json u = base();
                        u["choices"] = json::array();
                        u["usage"] = openai_usage(g);
                        write(u);
                    }
                    if (alive) sink.write("data: [DONE]\n\n", 14);
                }
            } catch (const std::exception& ex) {
                write(json{{"error", {{"message", ex.what()}, {"type", "server_error"}}}});
            }
            sink.done();
            return true;
        });
    }

    std::string metrics_text() {
        ServingMetrics& m = e_.metrics();
        auto rate = [](uint64_t n, uint64_t us) { return us ? 1e6 * static_cast<double>(n) / static_cast<double>(us) : 0.0; };
        std::string s;
        s += "# HELP kiln_requests_total HTTP requests received.\n# TYPE kiln_requests_total counter\n";
        s += fmt::format("kiln_requests_total {}\n", m.requests.load());
        s += "# HELP kiln_request_errors_total Requests answered with an error.\n# TYPE kiln_request_errors_total counter\n";
        s += fmt::format("kiln_request_errors_total {}\n", m.errors.load());
        s += "# HELP kiln_prompt_tokens_total Prompt tokens of generation requests.\n# TYPE kiln_prompt_tokens_total counter\n";
        s += fmt::format("kiln_prompt_tokens_total {}\n", m.prompt_tokens.load());
        s += "# HELP kiln_prompt_tokens_cached_total Prompt tokens reused (kept in the slot or restored from the prefix cache).\n# TYPE kiln_prompt_tokens_cached_total counter\n";
        s += fmt::format("kiln_prompt_tokens_cached_total {}\n", m.cached_tokens.load());
        s += "# HELP kiln_cache_hits_total Requests that reused a cached prefix.\n# TYPE kiln_cache_hits_total counter\n";
        s += fmt::format("kiln_cache_hits_total {}\n", m.cache_hits.load());
        s += "# HELP kiln_generated_tokens_total Tokens generated.\n# TYPE kiln_generated_tokens_total counter\n";
        s += fmt::format("kiln_generated_tokens_total {}\n", m.gen_tokens.load());
        s += "# HELP kiln_prefill_tokens_per_second Average prompt processing speed.\n# TYPE kiln_prefill_tokens_per_second gauge\n";
        s += fmt::format("kiln_prefill_tokens_per_second {:.3f}\n", rate(m.prefill_n.load(), m.prefill_us.load()));
        s += "# HELP kiln_decode_tokens_per_second Average generation speed.\n# TYPE kiln_decode_tokens_per_second gauge\n";
        s += fmt::format("kiln_decode_tokens_per_second {:.3f}\n", rate(m.gen_tokens.load(), m.decode_us.load()));
        s += "# HELP kiln_decode_batches_total Decode forward passes run (one per step when the generating requests are batched).\n"
             "# TYPE kiln_decode_batches_total counter\n";
        s += fmt::format("kiln_decode_batches_total {}\n", m.batch_steps.load());
        s += "# HELP kiln_decode_batch_tokens_total Tokens those passes carried (/ passes = mean batch size).\n"
             "# TYPE kiln_decode_batch_tokens_total counter\n";
        s += fmt::format("kiln_decode_batch_tokens_total {}\n", m.batch_tokens.load());
        s += "# HELP kiln_decode_batch_max Most tokens one decode pass carried so far.\n# TYPE kiln_decode_batch_max gauge\n";
        s += fmt::format("kiln_decode_batch_max {}\n", m.batch_max.load());
        s += "# HELP kiln_cancelled_total Generations cancelled by a client that went away.\n# TYPE kiln_cancelled_total counter\n";
        s += fmt::format("kiln_cancelled_total {}\n", m.cancelled.load());
        const int64_t active = m.active.load(), queued = m.queued.load();
        s += "# HELP kiln_queue_depth Requests waiting for a slot.\n# TYPE kiln_queue_depth gauge\n";
        s += fmt::format("kiln_queue_depth {}\n", std::max<int64_t>(0, queued - active));
        s += "# HELP kiln_slots_busy Slots generating.\n# TYPE kiln_slots_busy gauge\n";
        s += fmt::format("kiln_slots_busy {}\n", active);
        s += fmt::format("# HELP kiln_slots Slots (parallel sequences).\n# TYPE kiln_slots gauge\nkiln_slots {}\n", e_.n_parallel());
        s += "# HELP kiln_kv_bytes KV cache memory the slots hold (paged: what their tokens use; a shared page counts in each slot), "
             "and the capacity of one full slot.\n# TYPE kiln_kv_bytes gauge\n";
        s += fmt::format("kiln_kv_bytes{{holder=\"slots\"}} {}\nkiln_kv_bytes{{holder=\"slot_capacity\"}} {}\n", e_.kv_bytes_held(),
                         e_.kv_bytes_per_context());
        const PrefixCacheStats c = e_.prefix_cache().stats();
        s += "# HELP kiln_cache_blocks KV blocks of the prefix cache, by tier (disk: the directory's files, any server's).\n"
             "# TYPE kiln_cache_blocks gauge\n";
        s += fmt::format("kiln_cache_blocks{{tier=\"memory\"}} {}\nkiln_cache_blocks{{tier=\"disk\"}} {}\n", c.mem_blocks, c.disk_blocks);
        s += "# HELP kiln_cache_bytes Bytes of those blocks, by tier.\n# TYPE kiln_cache_bytes gauge\n";
        s += fmt::format("kiln_cache_bytes{{tier=\"memory\"}} {}\nkiln_cache_bytes{{tier=\"disk\"}} {}\n", c.mem_bytes, c.disk_bytes);
        s += "# HELP kiln_cache_block_hits_total Blocks restored into a slot, by the tier they came from.\n"
             "# TYPE kiln_cache_block_hits_total counter\n";
        s += fmt::format("kiln_cache_block_hits_total{{tier=\"memory\"}} {}\nkiln_cache_block_hits_total{{tier=\"disk\"}} {}\n", c.mem_hits,
                         c.disk_hits);
        s += "# HELP kiln_cache_hit_tokens_total Prompt tokens restored from the prefix cache, by tier.\n"
             "# TYPE kiln_cache_hit_tokens_total counter\n";
        s += fmt::format("kiln_cache_hit_tokens_total{{tier=\"memory\"}} {}\nkiln_cache_hit_tokens_total{{tier=\"disk\"}} {}\n",
                         c.mem_hit_tokens, c.disk_hit_tokens);
        s += "# HELP kiln_cache_disk_read_bytes_total Bytes of block files read.\n# TYPE kiln_cache_disk_read_bytes_total counter\n";
        s += fmt::format("kiln_cache_disk_read_bytes_total {}\n", c.disk_read_bytes);
        s += "# HELP kiln_cache_disk_written_bytes_total Bytes of block files written.\n# TYPE kiln_cache_disk_written_bytes_total counter\n";
        s += fmt::format("kiln_cache_disk_written_bytes_total {}\n", c.disk_written_bytes);
        s += "# HELP kiln_cache_disk_rejected_total Block files ignored (corrupt, truncated, another model's).\n"
             "# TYPE kiln_cache_disk_rejected_total counter\n";
        s += fmt::format("kiln_cache_disk_rejected_total {}\n", c.disk_rejected);
        s += "# HELP kiln_cache_evictions_total Blocks dropped from memory (written to disk first when there is a directory).\n"
             "# TYPE kiln_cache_evictions_total counter\n";
        s += fmt::format("kiln_cache_evictions_total {}\n", c.evictions);
        if (http_) {
            const HttpCounters& h = http_->counters();
            s += "# HELP kiln_http_connections Client connections open now.\n# TYPE kiln_http_connections gauge\n";
            s += fmt::format("kiln_http_connections {}\n", h.open.load());
            s += "# HELP kiln_http_connections_total Client connections accepted.\n# TYPE kiln_http_connections_total counter\n";
            s += fmt::format("kiln_http_connections_total {}\n", h.accepted.load());
            s += "# HELP kiln_http_request_timeouts_total Requests answered 408: headers or body not complete within --timeout.\n"
                 "# TYPE kiln_http_request_timeouts_total counter\n";
            s += fmt::format("kiln_http_request_timeouts_total {}\n", h.timed_out.load());
            s += "# HELP kiln_http_incomplete_requests_total Requests answered 400: the client ended the connection inside the headers.\n"
                 "# TYPE kiln_http_incomplete_requests_total counter\n";
            s += fmt::format("kiln_http_incomplete_requests_total {}\n", h.incomplete.load());
        }
        return s;
    }

    ServingEngine& e_;
    const ChatFormat format_;  // the model's template, or --chat-template / --chat-template-name
    HttpServer* http_ = nullptr;
    std::string api_key_, model_name_;
    std::mutex log_mu_;
    std::set<std::string> rejected_;
};

// Why host:port cannot be bound, from a bind of our own (cpp-httplib only says that it failed).
std::string bind_failure(const std::string& host, int port) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    if (int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0)
        return fmt::format("--host '{}' is not an address or a known host name ({})", host, ::gai_strerror(rc));
    std::string why = "unknown reason";
    for (addrinfo* a = res; a; a = a->ai_next) {
        const int fd = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd < 0) continue;
        int yes = 1;
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
        const int rc = ::bind(fd, a->ai_addr, a->ai_addrlen);
        const int err = errno;
        ::close(fd);
        if (rc == 0) continue;
        why = std::strerror(err);
        if (err == EADDRINUSE) why += " (another server is on that port: pick another with --port, or --port 0 for any free one)";
        else if (err == EADDRNOTAVAIL) why += fmt::format(" ({} is not an address of this machine)", host);
        else if (err == EACCES) why += " (ports below 1024 need privileges)";
        break;
    }
    ::freeaddrinfo(res);
    return why;
}

// SIGINT / SIGTERM, taken by a thread of their own (sigwait): the first stops accepting, cancels
// every generation (each client gets a clean end: an error event, or a 503), waits at most
// kStopGrace for the answers in flight to be written, then exits; a second signal exits at once.
// Threads started later inherit the blocked mask, so no other thread is interrupted. Threads that
// libraries start before main (OpenBLAS's pool) do not: there a handler passes the signal on to the
// stop thread (pthread_kill is async-signal-safe), which takes it with sigwait.
std::atomic<bool> g_stop_thread_set{false};
pthread_t g_stop_thread;
void forward_to_stop_thread(int sig) {
    if (g_stop_thread_set.load()) ::pthread_kill(g_stop_thread, sig);
}
constexpr auto kStopGrace = std::chrono::milliseconds(1500);
sigset_t stop_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    return set;
}
const char* signal_name(int sig) { return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "signal"; }

[[noreturn]] void exit_now(int code) {
    std::fflush(nullptr);
    std::_Exit(code);
}

struct StopTarget {
    std::atomic<httplib::Server*> svr{nullptr};
    std::atomic<ServingEngine*> engine{nullptr};
};

void stop_thread(StopTarget* t) {
    const sigset_t set = stop_signals();
    int sig = 0;
    if (::sigwait(&set, &sig) != 0) return;
    ServingEngine* engine = t->engine.load();
    httplib::Server* svr = t->svr.load();
    if (!engine || !svr) {  // still loading: nothing to keep
        fmt::print(stderr, "kiln serve: {}: exiting\n", signal_name(sig));
        exit_now(130);
    }
    const int64_t busy = engine->metrics().queued.load();
    fmt::print(stderr, "kiln serve: {}: stopping - no new connections, cancelling {} request(s) (again to exit at once)\n",
               signal_name(sig), busy);
    engine->stop();
    svr->stop();
    const auto deadline = std::chrono::steady_clock::now() + kStopGrace;
    do {  // a second signal already pending is taken first
        const timespec tick{0, 20 * 1000 * 1000};
        siginfo_t info;
        if (const int again = ::sigtimedwait(&set, &info, &tick); again > 0) {
            fmt::print(stderr, "kiln serve: {} again: exiting now\n", signal_name(again));
            exit_now(130);
        }
    } while (std::chrono::steady_clock::now() < deadline && engine->metrics().queued.load() > 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the last answer's final bytes
    const int64_t left = engine->metrics().queued.load();
    if (left > 0) fmt::print(stderr, "kiln serve: {} request(s) still running after {} ms: dropped\n", left, kStopGrace.count());
    if (engine->prefix_cache().disk_enabled()) {
        const size_t n = engine->flush_cache();
        fmt::print(stderr, "kiln serve: prefix cache: {} block(s) written to {}\n", n, engine->prefix_cache().options().dir);
    }
    fmt::print(stderr, "kiln serve: stopped\n");
    // Idle keep-alive connections and slow clients would hold cpp-httplib's join for up to the
    // timeouts: nothing is left that must be kept (the log is written), so exit here.
    exit_now(0);
}

// What serve's plan decides: the context of each slot (-c, or (0) the largest that fits in memory
// up to the trained context) and the prefix cache's host memory (--cache-mem, or by default up to
// 4096 MiB, at most half of what the plan leaves free on the CPU), both said on stderr. Refuses a
// plan that does not fit (kiln/memory.h) before anything is allocated.
struct ServePlan {
    int64_t n_ctx = 0;
    size_t cache_bytes = 0;
};

ServePlan plan_serve(const Model& model, int64_t n_ctx, int parallel, int threads, int64_t cache_mib, const std::string& backend,
                     int device, KvType kv_k, KvType kv_v) {
    constexpr size_t kDefaultCache = size_t{4096} << 20;
    ContextOptions co;
    co.backend = backend;
    co.device = device;
    co.kv_type_k = kv_k;
    co.kv_type_v = kv_v;
    co.n_threads = threads;
    co.n_batch = 1024;  // the serving engine's prompt batch (kiln/serving.h)
    // The cache's blocks are host memory: on the CPU they count in the plan; on Vulkan the plan is
    // the device's.
    const bool on_cpu = backend == "cpu";
    const size_t cache = cache_mib >= 0 && on_cpu ? static_cast<size_t>(cache_mib) << 20 : 0;
    const int64_t trained = model.info().n_ctx_train > 0 ? model.info().n_ctx_train : 4096;
    co.n_ctx = n_ctx > 0 ? n_ctx : trained;
    MemoryPlan plan = plan_memory(model, plan_options(co, parallel, cache));
    if (n_ctx == 0) {
        int64_t pick = plan.largest_ctx(trained);
        if (pick >= 1024 && pick < trained) pick = pick / 256 * 256;
        if (pick > 0 && pick != co.n_ctx) {
            co.n_ctx = pick;
            plan = plan_memory(model, plan_options(co, parallel, cache));
        }
        if (plan.fits)
            fmt::print(stderr, "kiln serve: context {} tokens per slot ({}; needs {} of {} available; -c sets it)\n", co.n_ctx,
                       co.n_ctx == trained ? "the model's trained context" : fmt::format("the largest that fits, trained {}", trained),
                       format_bytes(plan.total_bytes), format_bytes(plan.available_bytes));
    }
    for (const std::string& w : plan.warnings) fmt::print(stderr, "kiln serve: warning: {}\n", w);
    if (!plan.fits) throw Error(fmt::format("kiln serve: {} {}", model.info().path, plan.refusal()));
    ServePlan out{co.n_ctx, cache_mib >= 0 ? static_cast<size_t>(cache_mib) << 20 : kDefaultCache};
    if (cache_mib < 0 && on_cpu) {
        const size_t left = plan.available_bytes > plan.total_bytes ? plan.available_bytes - plan.total_bytes : 0;
        out.cache_bytes = std::min(kDefaultCache, left / 2) / (size_t{1} << 20) << 20;
        if (out.cache_bytes < kDefaultCache)
            fmt::print(stderr, "kiln serve: prefix cache: {} of host memory (half of what the plan leaves free; --cache-mem sets it)\n",
                       format_bytes(out.cache_bytes));
    }
    return out;
}

// KILN_SERVE_SCRIPTED_OUTPUT, for tests of the output path (parsers, SSE): every generation replays
// this text's tokens, then end of text. Models with random weights never produce a tool call on
// their own. Several outputs separated by the ASCII record separator (\x1e) are used in turn, one
// per generation (then from the first again): a tool call, then the answer after its result.
std::vector<std::string> scripted_outputs() {
    std::vector<std::string> out;
    const char* s = std::getenv("KILN_SERVE_SCRIPTED_OUTPUT");
    if (!s || !*s) return out;
    const std::string all = s;
    for (size_t pos = 0;;) {
        const size_t end = all.find('\x1e', pos);
        out.push_back(all.substr(pos, end == std::string::npos ? std::string::npos : end - pos));
        if (end == std::string::npos) break;
        pos = end + 1;
    }
    fmt::print(stderr, "kiln serve: KILN_SERVE_SCRIPTED_OUTPUT is set: answers replay it ({} output(s))\n", out.size());
    return out;
}

// --cache-dir: as given, "" for none, or the default: $XDG_CACHE_HOME/kiln, else ~/.cache/kiln.
std::string default_cache_dir(const std::string& given) {
    if (given == "none") return "";
    if (!given.empty()) return given;
    if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return (std::filesystem::path(x) / "kiln").string();
    if (const char* h = std::getenv("HOME"); h && *h) return (std::filesystem::path(h) / ".cache" / "kiln").string();
    fmt::print(stderr, "kiln serve: neither XDG_CACHE_HOME nor HOME is set: the prefix cache has no disk tier (--cache-dir DIR)\n");
    return "";
}

int run_serve(const std::vector<std::string>& argv) {
    std::string model_path, host = "127.0.0.1", api_key, alias, backend = "cpu", template_path, template_name;
    int device = -1;
    KvType kv_k = KvType::F16, kv_v = KvType::F16;
    int64_t n_ctx = 0;
    int port = 8080, parallel = 1, threads = 0, max_queue = 16, timeout_s = 30;
    int64_t cache_mib = -1;  // -1: the default (ServePlan)
    double cache_disk_gib = 20;
    std::string cache_dir;
    Args args("serve", "-m MODEL [options]");
    args.option({"-m", "--model"}, &model_path, "FILE", "GGUF model to serve");
    args.option({"-c", "--ctx-size"}, &n_ctx, "N",
                "context size per slot in tokens (default 0: the largest that fits in memory, up to the model's trained context)", 0,
                int64_t{1} << 24, "0 (automatic) to 16777216");
    args.option({"--host"}, &host, "ADDR", "address to bind (default 127.0.0.1)");
    args.option({"--port"}, &port, "N", "port (default 8080; 0: any free port, printed once bound)", 0, 65535);
    args.option({"-np", "--parallel"}, &parallel, "N", "slots: requests generated at the same time (default 1)", 1, 64);
    args.option({"--queue"}, &max_queue, "N", "requests that may wait for a slot before 529 (503 on the OpenAI routes; default 16)", 0,
                4096);
    args.option({"-to", "--timeout"}, &timeout_s, "N",
                "seconds a request's headers, and then its body, may take to arrive in all (then 408 and the connection is closed), "
                "and that a client may take none of the answer before it is dropped (default 30)", 1,
                86400);
    args.threads_option(&threads);
    args.option({"--chat-template"}, &template_path, "FILE", "Jinja chat template to use instead of the model's");
    args.option({"--chat-template-name"}, &template_name, "NAME",
                "a built-in chat template instead of the model's: chatml, llama3 or gemma (without either, a model with no "
                "template gets ChatML)");
    args.option({"--cache-mem"}, &cache_mib, "MIB",
                "host memory for the prefix cache: KV blocks of 256 tokens shared by every request, least recently used "
                "written to --cache-dir and dropped first (default 4096, at most half of the memory the plan leaves free; 0: "
                "straight to disk)",
                0, int64_t{1} << 30, "0 to 1073741824");
    args.option({"--cache-dir"}, &cache_dir, "DIR",
                "keep prefix-cache blocks on disk here, across restarts (default $XDG_CACHE_HOME/kiln, else ~/.cache/kiln; "
                "none: memory only)");
    args.option({"--cache-disk"}, &cache_disk_gib, "GIB", "disk space the block files may take in --cache-dir, oldest deleted first (default 20)");
    args.option({"--api-key"}, &api_key, "KEY", "require this key (x-api-key or Authorization: Bearer)");
    args.option({"--backend"}, &backend, "NAME", "cpu (default), vulkan or auto (Vulkan on a GPU, else the CPU)");
    args.option({"--device"}, &device, "N", "Vulkan device index (see kiln devices)");
    args.kv_type_options(&kv_k, &kv_v);
    LoadOptions lo;
    args.rope_options(&lo);
    args.option({"--alias"}, &alias, "NAME", "model name reported by /v1/models (default: the file's)");
    if (!args.parse(argv)) return 0;
    if (model_path.empty()) throw Error("kiln serve: no model given (-m MODEL.gguf)");

    std::signal(SIGPIPE, SIG_IGN);
    // Signals go to the stop thread only (blocked here, before any other thread starts).
    static StopTarget stop_target;
    const sigset_t stop_set = stop_signals();
    ::pthread_sigmask(SIG_BLOCK, &stop_set, nullptr);
    {
        std::thread t(stop_thread, &stop_target);
        g_stop_thread = t.native_handle();
        g_stop_thread_set.store(true);
        t.detach();
        struct sigaction sa{};
        sa.sa_handler = forward_to_stop_thread;
        sigemptyset(&sa.sa_mask);
        ::sigaction(SIGINT, &sa, nullptr);
        ::sigaction(SIGTERM, &sa, nullptr);
    }
    lo.n_threads = threads;
    lo.touch_weights = false;
    Model model = Model::load(model_path, lo);
    const ServePlan sp = plan_serve(model, n_ctx, parallel, threads, cache_mib, backend, device, kv_k, kv_v);
    n_ctx = sp.n_ctx;
    model.touch_weights();
    if (alias.empty()) alias = model.info().name.empty() ? std::filesystem::path(model_path).stem().string() : model.info().name;
    if (!(cache_disk_gib >= 0)) throw Error(fmt::format("kiln serve: --cache-disk must be >= 0 GiB, got {}", cache_disk_gib));
    PrefixCacheOptions cache;
    cache.mem_bytes = sp.cache_bytes;
    cache.disk_bytes = static_cast<uint64_t>(cache_disk_gib * static_cast<double>(uint64_t{1} << 30));
    cache.dir = default_cache_dir(cache_dir);
    if (backend != "cpu" && backend != "vulkan" && backend != "auto")
        throw Error(fmt::format("kiln serve: unknown backend '{}' (available: cpu, vulkan, auto)", backend));
    ChatFormat format = choose_chat_template(model, template_path, template_name, "serve");
    const std::string parser_family = format.parser_name();
    ServingOptions so;
    so.context.n_ctx = n_ctx;
    so.context.n_threads = threads;
    so.context.backend = backend;
    so.context.device = device;
    so.context.kv_type_k = kv_k;
    so.context.kv_type_v = kv_v;
    so.n_parallel = parallel;
    so.max_queue = max_queue;
    so.cache = cache;
    so.scripted_outputs = scripted_outputs();
    ServingEngine engine(model, so);
    Server server(engine, std::move(format), api_key, alias);
    HttpLimits limits;
    limits.header_timeout_ms = limits.body_timeout_ms = limits.write_timeout_ms = timeout_s * 1000;
    HttpServer svr(limits, [](httplib::Response& res, int status, const std::string& message, const std::string& path) {
        send_error(res, ApiError(status, "invalid_request_error", message), is_openai_path(path));
    });
    server.install(svr, max_queue);
    // cpp-httplib's defaults: SO_REUSEPORT (a second server on the same port would silently share
    // it) and a listen backlog of 5 (a burst of clients gets connections reset). Instead:
    // SO_REUSEADDR only, and a deep backlog once bound.
    int listen_fd = -1;
    svr.set_socket_options([&listen_fd](socket_t sock) {
        int yes = 1;
        ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
        listen_fd = sock;
    });
    const int bound = port == 0 ? svr.bind_to_any_port(host) : (svr.bind_to_port(host, port) ? port : -1);
    if (bound <= 0) throw Error(fmt::format("kiln serve: cannot listen on {}:{}: {}", host, port, bind_failure(host, port)));
    port = bound;
    if (int acc = 0; listen_fd >= 0) {
        socklen_t len = sizeof acc;
        if (::getsockopt(listen_fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) == 0 && acc) ::listen(listen_fd, SOMAXCONN);
    }
    fmt::print(stderr, "kiln serve: {} on http://{}:{} ({} slot(s) of {} tokens, KV {}, backend {}{})\n", alias, host, port,
               engine.n_parallel(), engine.n_ctx(),
               kv_k == kv_v ? std::string(kv_type_name(kv_k)) : fmt::format("K {} V {}", kv_type_name(kv_k), kv_type_name(kv_v)),
               engine.backend_name(),
               api_key.empty() ? "" : fmt::format(", API key required: fingerprint {}", key_fingerprint(api_key)));
    fmt::print(stderr, "kiln serve: tool calls: {} (the parser family of the chat template)\n", parser_family);
    fmt::print(stderr, "kiln serve: prefix cache: {} MiB of memory{}\n", sp.cache_bytes >> 20,
               engine.prefix_cache().disk_enabled()
                   ? fmt::format(", {:g} GiB on disk in {} ({} block files there)", cache_disk_gib, cache.dir,
                                 engine.prefix_cache().stats().disk_blocks)
                   : std::string(", no disk tier"));
    stop_target.engine = &engine;
    stop_target.svr = &svr;
    svr.listen_after_bind();
    // Stopped by a signal: the stop thread ends the process (after its grace for the answers in
    // flight). Otherwise listening itself failed.
    while (engine.stopping()) std::this_thread::sleep_for(std::chrono::seconds(1));
    stop_target.svr = nullptr;
    throw Error("kiln serve: the listening socket failed");
}

}  // namespace

KILN_COMMAND("serve", "HTTP server (Anthropic Messages and OpenAI Chat Completions): kiln serve -m MODEL [--port P]", run_serve);

}  // namespace kiln::cli
