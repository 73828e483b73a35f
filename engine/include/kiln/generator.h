// kiln public API: generation. A Generator runs kiln's generation loop (kiln run and kiln chat use
// it; kiln::ServingEngine of kiln/serving.h runs the same per-sequence step for many sequences at
// once) on a Context: it keeps the longest prefix the context already holds of the new prompt,
// decodes the rest, then samples token by token, streaming text (or, for a conversation, the
// output parser's events) to a callback, until the end of generation, a stop string, max_tokens,
// a full context or cancellation. With GenerateOptions::json_schema the output is JSON that
// matches the schema.
//
//   kiln::Generator gen(ctx);
//   kiln::GenerateOptions opt;
//   opt.max_tokens = 64;
//   opt.stop = {"\n\n"};
//   gen.generate(model.tokenizer().encode("Once upon a time", true, true), opt,
//                [](std::string_view piece) { std::cout << piece << std::flush; return true; });
//
// A Generator is used by one thread at a time (like its Context); cancel may be set from any
// thread or a signal handler.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/chat.h"
#include "kiln/context.h"
#include "kiln/sampler.h"

namespace kiln {

// A generated token's log-probability and the most likely alternatives (GenerateOptions::n_logprobs).
struct TokenLogprobs {
    int32_t token = 0;
    float logprob = 0;
    std::vector<TokenLogprob> top{};  // best first
};

struct GenerateOptions {
    SamplerParams sampler{};
    int64_t max_tokens = -1;         // tokens to generate at most; -1: until the end or a full context
    std::vector<std::string> stop{}; // stop strings: the output ends before the first one found
    bool ignore_eos = false;         // keep going past end-of-generation tokens
    // chat(): reasoning tokens allowed before the family's end of thinking is inserted and the
    // answer follows; -1: no limit.
    int64_t thinking_budget = -1;
    // Set to true (any thread, a signal handler) to stop within a token: stop reason Cancelled.
    // After a cancel (this, or a callback that returned false) no callback is called again; what
    // was held back (a possible stop string's start, an unfinished tool call) goes into the result.
    const std::atomic<bool>* cancel = nullptr;
    // A JSON schema (as text; not empty: it must be a JSON object, else kiln::Error): the output is
    // JSON that matches it. Text the schema fixes (braces, keys, separators, constants) is forced;
    // values are sampled with every token that would break the JSON masked. Objects get every
    // property in the schema's order (then required names it does not list, as strings); arrays
    // minItems items (at least 1, at most maxItems and 16); strings at most maxLength characters
    // (and 48 tokens); numbers up to 4 digits; enum, const, boolean and null as written; anyOf /
    // oneOf / allOf take their first schema. Stop strings, end-of-generation tokens and the
    // thinking budget do not apply; max_tokens (and the room left in the context) cut it short
    // (stop reason MaxTokens), a complete value ends it (EndOfGeneration). chat() reads such a
    // reply as plain text (ReplyParser::plain()).
    std::string json_schema{};
    // >= 0: each generated token's log-probability and this many alternatives, into
    // GenerateResult::logprobs and on_logprobs (as generated, before its text is released).
    // End-of-generation tokens and JSON output are not recorded.
    int n_logprobs = -1;
    std::function<void(const TokenLogprobs&)> on_logprobs{};
    ReplyOptions reply{};  // chat(): how the reply is parsed (tool call ids, a forced opener, tools)
    int64_t prompt_chunk = 512;  // prompt tokens per decode call (on_prompt is called after each)
    std::function<void(int64_t done, int64_t total)> on_prompt{};  // prompt decode progress
};

enum class StopReason {
    EndOfGeneration,  // an end-of-generation token, or a ChatFormat's end-of-turn text
    MaxTokens,
    ContextFull,
    StopString,       // GenerateResult::stop_string says which
    Cancelled,        // GenerateOptions::cancel, or a callback returned false
};
const char* stop_reason_name(StopReason r);  // "end", "max_tokens", "context_full", "stop_string", "cancelled"

struct GenerateResult {
    StopReason stop = StopReason::EndOfGeneration;
    std::string stop_string{};
    int64_t n_prompt = 0;     // prompt tokens
    int64_t n_reused = 0;     // of which the context held already (not decoded again)
    int64_t n_generated = 0;  // sampled (and inserted, e.g. a thinking closer) tokens
    double prompt_ms = 0, generate_ms = 0;
    uint64_t seed = 0;        // the sampler's seed (the drawn one when SamplerParams::seed is random)
    std::string text{};       // generate(): the text streamed
    Reply reply{};            // chat(): the reply, parsed
    std::vector<TokenLogprobs> logprobs{};  // GenerateOptions::n_logprobs >= 0: one per generated token
};

struct JsonVocab;  // engine-internal: which tokens may appear in JSON values

class Generator {
public:
    explicit Generator(Context& ctx);

    // Continues `prompt` (token ids). on_text gets each piece of text as it is released (complete
    // UTF-8, never a part of a stop string); returning false cancels. Throws kiln::Error when the
    // prompt is empty or leaves no room in the context for one more token.
    GenerateResult generate(std::span<const int32_t> prompt, const GenerateOptions& options,
                            const std::function<bool(std::string_view)>& on_text = {});
    // Answers a rendered conversation: the output goes through format's parser, on_event gets
    // its events (returning false cancels), and format.end_turn() is a stop string that ends the
    // turn (stop reason EndOfGeneration). GenerateResult::reply holds the whole reply.
    GenerateResult chat(const ChatFormat& format, const ChatPrompt& prompt, const GenerateOptions& options,
                        const std::function<bool(const ReplyEvent&)>& on_event = {});

    // The tokens the context holds (the last prompt and what was generated after it).
    const std::vector<int32_t>& cached() const { return cached_; }
    // Forgets them and clears the context.
    void reset();
    Context& context() { return ctx_; }

private:
    struct State;
    void run(std::span<const int32_t> prompt, const GenerateOptions& options, State& state);
    Context& ctx_;
    std::vector<int32_t> cached_;
    std::shared_ptr<const JsonVocab> json_vocab_;  // built on the first JSON-schema request
};

}  // namespace kiln
