// kiln serve: an HTTP server for the Anthropic Messages API and the OpenAI Chat Completions API,
// on the public C++ API only: kiln::ServingEngine (kiln/serving.h) holds the slots, the queue, the
// prefix cache and the generation. Layout:
//   convert.cpp - request bodies (Anthropic / OpenAI) to the chat template's messages and back
//   cmd_serve.cpp - routes, SSE, authentication, errors, metrics
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

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

// A request ready to generate: the GenerateOptions (convert.cpp fills them from the body) and the
// prompt (chat requests: the rendered text too, which the reply parser reads).
struct GenParams : GenerateOptions {
    ChatPrompt prompt;
};

// What a generation ended with, in the APIs' words.
struct GenResult {
    // "end" (end of generation token or the template's end of turn), "max_tokens" (limit or
    // context full), "stop_sequence", "cancelled" (client gone), "shutdown" (the server is stopping)
    std::string stop_reason = "end";
    std::string stop_sequence;
    int64_t n_prompt = 0, n_cached = 0, n_gen = 0;
    double prefill_ms = 0, decode_ms = 0;
    bool any_tool_call = false;
    std::vector<TokenLogprobs> logprobs;  // GenParams::n_logprobs >= 0: one per generated token (end of generation excluded)
};
GenResult to_result(GenerateResult&& g, bool stopping);

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
std::string render_prompt(const ChatFormat& format, const ChatRequest& r);

}  // namespace kiln::serve
