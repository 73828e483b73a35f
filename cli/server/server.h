// kiln serve: an HTTP server for the Anthropic Messages API and the OpenAI Chat Completions API,
// on the public C++ API only. Layout:
//   engine.cpp  - slots (one Context each), the request queue, prefix reuse, the generation loop
//   convert.cpp - request bodies (Anthropic / OpenAI) to the chat template's messages and back
//   cmd_serve.cpp - routes, SSE, authentication, errors, metrics
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/chat_parser.h"
#include "chat/chat_template.h"
#include "kiln/kiln.h"

namespace kiln::serve {

// Request bodies keep their keys in the order sent (a JSON schema's properties are generated in
// that order).
using json = nlohmann::ordered_json;
using ojson = nlohmann::ordered_json;

// An error for the client: HTTP status plus the Anthropic error type (the OpenAI writer maps it).
struct ApiError : std::runtime_error {
    int status;
    std::string type;  // invalid_request_error, authentication_error, not_found_error, ...
    ApiError(int s, std::string t, const std::string& msg) : std::runtime_error(msg), status(s), type(std::move(t)) {}
};
inline ApiError bad_request(const std::string& msg) { return ApiError(400, "invalid_request_error", msg); }

// What generation produces, after the output parser: text, thinking, tool calls. Until a
// tool-call/reasoning parser is plugged in (engine/chat/ on the parsers branch), the plain-text
// parser emits only Text.
struct Event {
    enum Kind { Text, Thinking, ToolStart, ToolArgs, ToolEnd } kind = Text;
    std::string text;      // Text / Thinking / ToolArgs: the delta
    std::string id, name;  // ToolStart
};
using EmitFn = std::function<bool(const Event&)>;  // false: the client is gone, stop

// Turns generated text deltas into events. The plain one passes text through.
class OutputParser {
public:
    virtual ~OutputParser() = default;
    virtual void push(const std::string& delta, std::vector<Event>& out) = 0;
    virtual void finish(std::vector<Event>& out) = 0;
};
std::unique_ptr<OutputParser> make_plain_parser();
// The model family's parser (engine/chat/chat_parser.h): thinking and tool calls become events.
// `prompt` is the rendered prompt (an open <think> there means the output starts in thinking);
// tool call ids are id_prefix + their index.
// output_prefix: text the output is taken to begin with (fed to the parser first).
std::unique_ptr<OutputParser> make_chat_parser(chat::ParserFamily family, const std::string& prompt, const std::string& id_prefix,
                                               const std::string& output_prefix = {}, const std::string& tools_json = {});

// Output forced to parse as JSON matching a schema (json_output.cpp): the schema becomes pieces,
// text it fixes (Forced) and values sampled under a mask (String: the characters of a JSON
// string, then its closing quote; Number: digits; Choice: one of the texts, e.g. an enum).
struct JsonPiece {
    enum Kind { Forced, String, Number, Choice } kind = Forced;
    std::string text;                  // Forced
    std::vector<std::string> choices;  // Choice
    int64_t max_chars = -1;            // String: the schema's maxLength (characters), -1: none
};
// Objects: every property in the schema's order, then required names the properties do not list;
// arrays: minItems items (at least 1, at most maxItems); strings: at most maxLength characters.
// Throws ApiError 400 when the schema is not an object.
std::vector<JsonPiece> plan_json(const json& schema);

// Which tokens may be sampled inside JSON values (built once per tokenizer).
struct JsonVocab {
    std::vector<uint8_t> string_safe;  // whole UTF-8, nothing to escape: may appear in a string
    std::vector<uint8_t> n_chars;      // UTF-8 characters of each token's text (at most 255)
    std::array<int32_t, 10> digit{};   // the token of each digit (-1 if none)
    int32_t quote = -1;                // the token of '"'
    static JsonVocab build(const Tokenizer& tok);
};

// A generated token's logprob and the most likely alternatives (OpenAI logprobs).
struct TokenLogprobs {
    int32_t token;
    float logprob;
    std::vector<TokenLogprob> top;
};

struct GenParams {
    std::vector<int32_t> prompt;
    int64_t max_tokens = -1;  // -1: until the context is full; clamped to what the context has left
    SamplerParams sampler;
    std::vector<std::string> stop;  // stop sequences (not included in the output)
    std::vector<JsonPiece> json_plan;  // not empty: the output is JSON following this plan
    int64_t thinking_budget = -1;      // >= 0: reasoning is cut off after this many tokens ...
    std::string thinking_closer;       // ... by generating this text (the family's end of thinking)
    int n_logprobs = -1;               // >= 0: record each generated token's logprob and this many alternatives
    std::function<void(const TokenLogprobs&)> on_logprobs;  // with n_logprobs: each token's, as generated (streams)
    std::string output_prefix;         // already at the end of the prompt (a forced tool call's opener):
                                       // the output parser reads it first, as if generated
    std::string tools_json;            // the request's tools (OpenAI shape), for parsers that type
                                       // arguments by their schema (Qwen3-Coder's XML calls, GLM's arg_value pairs)
};

struct GenResult {
    // "end" (end of generation token), "max_tokens" (limit or context full), "stop_sequence",
    // "cancelled" (client gone), "shutdown" (Engine::stop(): the server is stopping)
    std::string stop_reason = "end";
    std::string stop_sequence;
    int64_t n_prompt = 0, n_cached = 0, n_gen = 0;
    double prefill_ms = 0, decode_ms = 0;
    bool any_tool_call = false;
    std::vector<TokenLogprobs> logprobs;  // GenParams::n_logprobs >= 0: one per generated token (end of generation excluded)
};

struct Metrics {
    std::atomic<uint64_t> requests{0}, errors{0}, prompt_tokens{0}, cached_tokens{0}, gen_tokens{0};
    std::atomic<uint64_t> prefill_us{0}, decode_us{0}, prefill_n{0}, cache_hits{0}, cancelled{0};
    std::atomic<int64_t> queued{0}, active{0};
    // Continuous batching: decode forward passes run, tokens they carried, the most one carried.
    std::atomic<uint64_t> batch_steps{0}, batch_tokens{0}, batch_max{0};
};

// The slots and the queue. generate() is safe to call from many threads: it waits for a free slot.
class Engine {
public:
    // cache: the prefix cache (kiln/prefix_cache.h) shared by the slots: every full block of
    // 256 tokens a slot decodes is kept there (host memory within cache.mem_bytes, least recently
    // used written to cache.dir and dropped), and a request restores the longest cached prefix
    // of its prompt into its slot (copying the rows) before decoding the rest. A slot still
    // holding the request's prefix keeps it without a copy.
    // backend / device: as ContextOptions (cpu, vulkan, auto). On Vulkan the contexts share one
    // backend (one copy of the weights on the device; each slot adds its KV cache there), their
    // decode steps are batched, and they take turns on the device: each request decodes its
    // prompt in its own thread, under the backend's lock, between the batched steps (see
    // engine/runtime/shared_backend.h).
    // kv_type_k / kv_type_v: the KV cache types of every context (-ctk / -ctv).
    Engine(Model model, int64_t n_ctx, int n_parallel, int max_queue, int n_threads, PrefixCacheOptions cache = {},
           const std::string& backend = "cpu", int device = -1, KvType kv_type_k = KvType::F16,
           KvType kv_type_v = KvType::F16);
    const char* backend_name() const;
    ~Engine();

    const Model& model() const { return model_; }
    const Tokenizer& tokenizer() const { return model_.tokenizer(); }
    // The model's template, unless set_chat_template() gave another (end_turn: a stop string every
    // chat request gets, for a template whose end of turn is no special token of the vocabulary).
    void set_chat_template(ChatTemplate t, std::string end_turn);
    const ChatTemplate& chat_template() const;  // ApiError 400 when there is none
    const std::string& end_turn() const { return end_turn_; }
    bool has_chat_template() const { return tmpl_ != nullptr; }
    chat::ParserFamily parser_family() const { return family_; }  // from the template, once
    int64_t n_ctx() const { return n_ctx_; }
    int n_parallel() const { return n_parallel_; }
    size_t kv_bytes_per_context() const { return kv_bytes_; }
    PrefixCache& prefix_cache() { return *cache_; }
    // Writes the prefix cache's blocks to its directory (at shutdown); returns the files written.
    size_t flush_cache();
    Metrics& metrics() { return metrics_; }

    // Tokenizes a rendered prompt; throws ApiError 400 "prompt is too long: N tokens > M maximum".
    std::vector<int32_t> tokenize_prompt(const std::string& text) const;

    // Cancels every generation (they end with stop_reason "shutdown" within a token) and refuses
    // new ones (503); for the server's shutdown. Safe from any thread.
    void stop();
    bool stopping() const { return stopping_.load(); }

    // A place in the queue: throws ApiError 529 when the queue is full (503 once stopping). Hold
    // it for the request; metrics().queued counts the places held.
    class Admission {
    public:
        explicit Admission(Engine& e);
        ~Admission();
        Admission(const Admission&) = delete;
        Admission& operator=(const Admission&) = delete;

    private:
        Engine& e_;
    };

    // Waits for a slot, reuses the longest cached prefix, decodes the rest of the prompt and
    // generates. on_start(n_cached) runs once the slot is taken (before the prompt is decoded);
    // keepalive() runs about every second while waiting and between prompt batches (false:
    // cancel); emit gets each event (false: cancel).
    GenResult generate(const GenParams& p, OutputParser& parser, const std::function<void(int64_t)>& on_start,
                       const std::function<bool()>& keepalive, const EmitFn& emit);

private:
    struct Slot;
    struct StepRequest;
    // Continuous batching: a generating request hands its next token to step(); whichever waiting
    // request finds no batch running gathers every token handed in (waiting a moment for the
    // other generating requests) and runs them as one kiln::decode_batch.
    void step(Context& ctx, int32_t token);
    Slot* acquire(const std::vector<int32_t>& prompt, const std::function<bool()>& keepalive);
    void release(Slot* s);
    void save_blocks(Slot& s);  // the slot's new full blocks into the prefix cache (errors reported, not thrown)

    Model model_;
    std::unique_ptr<ChatTemplate> tmpl_;
    std::string end_turn_;
    chat::ParserFamily family_ = chat::ParserFamily::Generic;
    int64_t n_ctx_;
    int max_queue_;
    int n_parallel_ = 1;
    size_t kv_bytes_ = 0;
    ContextOptions ctx_options_;
    std::vector<std::unique_ptr<Slot>> slots_;  // n_parallel_ (busy and tokens under mu_)
    std::unique_ptr<PrefixCache> cache_;
    std::mutex mu_;
    std::condition_variable cv_;
    uint64_t clock_ = 0;
    Metrics metrics_;
    std::mutex step_mu_;
    std::condition_variable step_cv_;
    std::vector<StepRequest*> step_queue_, step_batch_;  // reserved for n_parallel: no allocation per step
    std::vector<Context*> step_ctxs_;
    std::vector<int32_t> step_toks_;
    bool step_running_ = false;
    int generating_ = 0;  // requests in their decode loop (under step_mu_)
    void generate_json(const GenParams& p, Slot& slot, Sampler& sampler, int64_t limit, GenResult& r,
                       const std::function<bool(const std::string&)>& deliver);
    const JsonVocab& json_vocab();
    std::once_flag json_vocab_once_;
    std::unique_ptr<JsonVocab> json_vocab_;
    // KILN_SERVE_SCRIPTED_OUTPUT: tests replay these outputs (in turn) instead of sampling.
    std::vector<std::vector<int32_t>> scripts_;
    std::atomic<size_t> script_turn_{0};
    std::atomic<bool> stopping_{false};
};

// ---- request conversion (convert.cpp) -----------------------------------------------------------

struct ChatRequest {
    ojson messages = ojson::array();
    ojson tools;  // null or an array of OpenAI-style function tools
    bool enable_thinking = false;
    std::string prefill;  // text of a final assistant message to continue
    GenParams gen;
    bool stream = false;
    bool include_usage = false;  // OpenAI stream_options.include_usage
    std::string model;
    std::string force_tool;    // tool_choice: "" auto, "*" any tool, else that tool's name
};

// Parses a body, rejecting deep nesting before the parser sees it.
json parse_body(const std::string& body);

ChatRequest from_anthropic(const json& body);
ChatRequest from_openai(const json& body);

// Renders the prompt text (with the generation prompt, and the prefill appended).
std::string render_prompt(const ChatTemplate& t, const ChatRequest& r);

}  // namespace kiln::serve
