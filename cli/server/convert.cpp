// kiln serve: Anthropic Messages / OpenAI Chat Completions bodies to chat-template messages.
#include <fmt/format.h>

#include "cli/server/server.h"

namespace kiln::serve {

namespace {

constexpr int kMaxDepth = 256;

std::string type_name(const json& j) { return j.type_name(); }

// Field access with clear 400s for wrong types.
const json* field(const json& obj, const char* key) {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return nullptr;
    return &*it;
}
std::string get_string(const json& obj, const char* key, const std::string& where) {
    const json* v = field(obj, key);
    if (!v) return {};
    if (!v->is_string()) throw bad_request(fmt::format("{}.{}: expected a string, got {}", where, key, type_name(*v)));
    return v->get<std::string>();
}
double get_number(const json& obj, const char* key, double def, const std::string& where) {
    const json* v = field(obj, key);
    if (!v) return def;
    if (!v->is_number()) throw bad_request(fmt::format("{}.{}: expected a number, got {}", where, key, type_name(*v)));
    return v->get<double>();
}
int64_t get_int(const json& obj, const char* key, int64_t def, const std::string& where) {
    const json* v = field(obj, key);
    if (!v) return def;
    if (!v->is_number()) throw bad_request(fmt::format("{}.{}: expected an integer, got {}", where, key, type_name(*v)));
    const double d = v->get<double>();
    if (d < -1e15 || d > 1e15) throw bad_request(fmt::format("{}.{}: out of range", where, key));
    return static_cast<int64_t>(d);
}
bool get_bool(const json& obj, const char* key, bool def, const std::string& where) {
    const json* v = field(obj, key);
    if (!v) return def;
    if (!v->is_boolean()) throw bad_request(fmt::format("{}.{}: expected a boolean, got {}", where, key, type_name(*v)));
    return v->get<bool>();
}

[[noreturn]] void reject_image(const std::string& what) {
    throw bad_request(fmt::format("{} content is not supported: this server runs a text-only model", what));
}

void sampling_from(const json& body, GenParams& g, const std::string& where) {
    g.sampler.temperature = static_cast<float>(get_number(body, "temperature", g.sampler.temperature, where));
    g.sampler.top_p = static_cast<float>(get_number(body, "top_p", g.sampler.top_p, where));
    g.sampler.top_k = static_cast<int>(get_int(body, "top_k", g.sampler.top_k, where));
    if (g.sampler.temperature < 0 || g.sampler.temperature > 100) throw bad_request(where + ".temperature: out of range");
    if (!(g.sampler.top_p >= 0 && g.sampler.top_p <= 1)) throw bad_request(where + ".top_p: must be in [0, 1]");
}

void stops_from(const json* v, GenParams& g, const char* name) {
    if (!v) return;
    if (v->is_string()) {
        g.stop.push_back(v->get<std::string>());
        return;
    }
    if (!v->is_array()) throw bad_request(fmt::format("{}: expected a string or an array of strings", name));
    for (const auto& s : *v) {
        if (!s.is_string()) throw bad_request(fmt::format("{}: expected an array of strings", name));
        g.stop.push_back(s.get<std::string>());
    }
}

// Text of an Anthropic tool_result content (string or blocks).
std::string tool_result_text(const json& c) {
    if (c.is_null()) return {};
    if (c.is_string()) return c.get<std::string>();
    if (!c.is_array()) throw bad_request("tool_result.content: expected a string or an array of blocks");
    std::string out;
    for (const auto& b : c) {
        if (!b.is_object()) throw bad_request("tool_result.content: expected content blocks");
        const std::string t = get_string(b, "type", "tool_result.content[]");
        std::string piece;
        if (t == "text") piece = get_string(b, "text", "tool_result.content[]");
        else if (t == "image" || t == "document") reject_image(t);
        else if (t == "tool_reference") piece = "Tool loaded: " + get_string(b, "tool_name", "tool_reference");
        else if (t == "search_result") piece = b.dump();
        else continue;
        if (!out.empty()) out += "\n";
        out += piece;
    }
    return out;
}

// The answer must be JSON matching `schema`: generation follows its plan (no thinking, no tool
// calls) and the model is told the schema at the end of the system prompt.
void json_output(ChatRequest& r, const json& schema) {
    if (!schema.is_object()) throw bad_request("the JSON schema must be an object");
    r.gen.json_schema = schema.dump();
    r.enable_thinking = false;
    r.prefill.clear();
    const std::string note = "Answer with only a JSON value that matches this JSON schema:\n" + schema.dump();
    if (!r.messages.empty() && r.messages[0]["role"] == "system")
        r.messages[0]["content"] = r.messages[0]["content"].get<std::string>() + "\n\n" + note;
    else
        r.messages.insert(r.messages.begin(), ojson{{"role", "system"}, {"content", note}});
}

}  // namespace

json parse_body(const std::string& body) {
    // Depth check outside strings, so deep nesting is a 400 and never a deep recursion later.
    int depth = 0;
    bool in_str = false, esc = false;
    for (char c : body) {
        if (in_str) {
            if (esc) esc = false;
            else if (c == '\\') esc = true;
            else if (c == '"') in_str = false;
            continue;
        }
        if (c == '"') in_str = true;
        else if (c == '{' || c == '[') {
            if (++depth > kMaxDepth) throw bad_request(fmt::format("invalid JSON: nested deeper than {} levels", kMaxDepth));
        } else if (c == '}' || c == ']') --depth;
    }
    json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
        // Parse again to get the parser's message.
        try {
            json again = json::parse(body);
            (void)again;
        } catch (const json::exception& e) {
            std::string what = e.what();
            if (what.size() > 300) what = what.substr(0, 300) + "...";
            throw bad_request(fmt::format("invalid JSON body: {}", what));
        }
        throw bad_request("invalid JSON body");
    }
    if (!j.is_object()) throw bad_request("the request body must be a JSON object");
    return j;
}

// A forced tool call (tool_choice any / a named tool) needs tools, the named one among them, and
// goes straight to the call: no thinking first (as Anthropic's API has it).
static void check_forced_tool(ChatRequest& r) {
    if (r.force_tool.empty()) return;
    if (r.tools.is_null()) throw bad_request("tool_choice: it asks for a tool call but the request has no tools");
    if (r.force_tool != "*") {
        bool found = false;
        for (const auto& t : r.tools) found = found || t["function"].value("name", "") == r.force_tool;
        if (!found) throw bad_request(fmt::format("tool_choice: no tool named '{}' in tools", r.force_tool));
    }
    r.enable_thinking = false;
    r.gen.thinking_budget = -1;
}

ChatRequest from_anthropic(const json& body) {
    ChatRequest r;
    r.model = get_string(body, "model", "body");
    r.stream = get_bool(body, "stream", false, "body");
    r.gen.max_tokens = get_int(body, "max_tokens", -1, "body");
    if (field(body, "max_tokens") && r.gen.max_tokens < 1) throw bad_request("max_tokens: must be at least 1");
    r.gen.sampler.temperature = 1.0f;  // Anthropic's defaults: temperature 1, no top-k / top-p
    r.gen.sampler.top_k = 0;
    r.gen.sampler.top_p = 1.0f;
    r.gen.sampler.min_p = 0.0f;
    sampling_from(body, r.gen, "body");
    stops_from(field(body, "stop_sequences"), r.gen, "stop_sequences");

    // system: string or text blocks; a first block with the billing header is dropped.
    std::string system;
    if (const json* s = field(body, "system")) {
        if (s->is_string()) system = s->get<std::string>();
        else if (s->is_array()) {
            bool first = true;
            for (const auto& b : *s) {
                if (!b.is_object()) throw bad_request("system: expected text blocks");
                const std::string t = get_string(b, "type", "system[]");
                if (t != "text") {
                    if (t == "image" || t == "document") reject_image(t);
                    continue;
                }
                const std::string text = get_string(b, "text", "system[]");
                const bool billing = first && text.rfind("x-anthropic-billing-header:", 0) == 0;
                first = false;
                if (billing) continue;
                if (!system.empty()) system += "\n";
                system += text;
            }
        } else
            throw bad_request("system: expected a string or an array of text blocks");
    }
    if (!system.empty()) r.messages.push_back(ojson{{"role", "system"}, {"content", system}});

    // thinking
    if (const json* th = field(body, "thinking")) {
        if (!th->is_object()) throw bad_request("thinking: expected an object");
        const std::string t = get_string(*th, "type", "thinking");
        r.enable_thinking = t == "enabled" || t == "adaptive";
        if (t == "enabled") {
            const int64_t budget = get_int(*th, "budget_tokens", -1, "thinking");
            if (budget == 0 || budget < -1) throw bad_request("thinking.budget_tokens: must be at least 1");
            r.gen.thinking_budget = budget;
        }
    }

    // tools and tool_choice: auto, none, any (some tool must be called), tool (that one)
    bool tools_off = false;
    if (const json* tc = field(body, "tool_choice")) {
        if (!tc->is_object()) throw bad_request("tool_choice: expected an object such as {\"type\": \"auto\"}");
        const std::string type = get_string(*tc, "type", "tool_choice");
        if (type == "none") tools_off = true;
        else if (type == "any") r.force_tool = "*";
        else if (type == "tool") {
            r.force_tool = get_string(*tc, "name", "tool_choice");
            if (r.force_tool.empty()) throw bad_request("tool_choice: type \"tool\" needs the tool's name");
        } else if (type != "auto")
            throw bad_request(fmt::format("tool_choice.type: '{}' is not one of auto, any, tool, none", type));
    }
    if (const json* tools = field(body, "tools"); tools && !tools_off) {
        if (!tools->is_array()) throw bad_request("tools: expected an array");
        ojson out = ojson::array();
        for (const auto& t : *tools) {
            if (!t.is_object()) throw bad_request("tools: expected tool objects");
            const std::string name = get_string(t, "name", "tools[]");
            if (name.empty()) throw bad_request("tools[]: a tool needs a name");
            ojson fn{{"name", name}};
            const std::string desc = get_string(t, "description", "tools[]");
            if (!desc.empty()) fn["description"] = desc;
            if (const json* schema = field(t, "input_schema")) fn["parameters"] = ojson::parse(schema->dump());
            else fn["parameters"] = ojson{{"type", "object"}, {"properties", ojson::object()}};
            out.push_back(ojson{{"type", "function"}, {"function", fn}});
        }
        if (!out.empty()) r.tools = out;
    }
    check_forced_tool(r);

    // messages
    const json* msgs = field(body, "messages");
    if (!msgs || !msgs->is_array()) throw bad_request("messages: expected an array");
    if (msgs->empty()) throw bad_request("messages: at least one message is required");
    for (size_t i = 0; i < msgs->size(); ++i) {
        const json& m = (*msgs)[i];
        const std::string where = fmt::format("messages[{}]", i);
        if (!m.is_object()) throw bad_request(where + ": expected an object");
        const std::string role = get_string(m, "role", where);
        if (role != "user" && role != "assistant" && role != "system")
            throw bad_request(fmt::format("{}.role: unknown role '{}'", where, role));
        const json* c = field(m, "content");
        if (!c) throw bad_request(where + ".content: missing");
        if (c->is_string()) {
            r.messages.push_back(ojson{{"role", role}, {"content", c->get<std::string>()}});
            continue;
        }
        if (!c->is_array()) throw bad_request(where + ".content: expected a string or an array of blocks");
        std::string text, thinking;
        ojson tool_calls = ojson::array();
        ojson tool_msgs = ojson::array();
        for (const auto& b : *c) {
            if (!b.is_object()) throw bad_request(where + ".content: expected content blocks");
            const std::string t = get_string(b, "type", where + ".content[]");
            if (t == "text") {
                text += get_string(b, "text", where + ".content[]");
            } else if (t == "image" || t == "document") {
                reject_image(t);
            } else if (t == "tool_use" || t == "server_tool_use") {
                const json* in = field(b, "input");
                tool_calls.push_back(ojson{{"id", get_string(b, "id", "tool_use")},
                                           {"type", "function"},
                                           {"function", ojson{{"name", get_string(b, "name", "tool_use")},
                                                              {"arguments", in ? ojson::parse(in->dump()) : ojson::object()}}}});
            } else if (t == "tool_result") {
                std::string content = tool_result_text(b.contains("content") ? b["content"] : json());
                if (get_bool(b, "is_error", false, "tool_result")) content = "Error: " + content;
                tool_msgs.push_back(ojson{{"role", "tool"},
                                          {"tool_call_id", get_string(b, "tool_use_id", "tool_result")},
                                          {"content", content}});
            } else if (t == "thinking") {
                thinking += get_string(b, "thinking", "thinking");
            } else if (t == "tool_reference") {
                if (!text.empty()) text += "\n";
                text += "Tool loaded: " + get_string(b, "tool_name", "tool_reference");
            }
            // redacted_thinking, container_upload, unknown blocks: nothing for the prompt
        }
        for (auto& tm : tool_msgs) r.messages.push_back(std::move(tm));
        if (role == "assistant") {
            if (text.empty() && thinking.empty() && tool_calls.empty()) continue;
            ojson am{{"role", "assistant"}, {"content", text}};
            if (!thinking.empty()) am["reasoning_content"] = thinking;
            if (!tool_calls.empty()) am["tool_calls"] = tool_calls;
            r.messages.push_back(std::move(am));
        } else if (!text.empty() || tool_msgs.empty()) {
            r.messages.push_back(ojson{{"role", role}, {"content", text}});
        }
    }
    // Assistant prefill: a final assistant message (text only) is continued.
    if (!r.messages.empty() && r.messages.back()["role"] == "assistant" && !r.messages.back().contains("tool_calls")) {
        r.prefill = r.messages.back()["content"].get<std::string>();
        r.messages.erase(r.messages.size() - 1);
    }
    // Structured output: output_config.format (and the older output_format).
    const json* format = nullptr;
    if (const json* oc = field(body, "output_config"); oc && oc->is_object()) format = field(*oc, "format");
    if (!format) format = field(body, "output_format");
    if (format && !format->is_null()) {
        if (!format->is_object()) throw bad_request("output_config.format: expected an object");
        const std::string t = get_string(*format, "type", "output_config.format");
        if (t != "json_schema") throw bad_request(fmt::format("output_config.format.type: only json_schema is supported, got '{}'", t));
        const json* schema = field(*format, "schema");
        if (!schema || !schema->is_object()) throw bad_request("output_config.format.schema: expected a JSON schema object");
        json_output(r, *schema);
    }
    return r;
}

ChatRequest from_openai(const json& body) {
    ChatRequest r;
    r.model = get_string(body, "model", "body");
    r.stream = get_bool(body, "stream", false, "body");
    if (const json* so = field(body, "stream_options"); so && so->is_object())
        r.include_usage = get_bool(*so, "include_usage", false, "stream_options");
    // logprobs: true (+ top_logprobs 0..20) on chat completions.
    if (const json* lp = field(body, "logprobs"); lp && !lp->is_null()) {
        if (!lp->is_boolean()) throw bad_request("logprobs: expected true or false");
        const int64_t top = get_int(body, "top_logprobs", 0, "body");
        if (top < 0 || top > 20) throw bad_request("top_logprobs: must be 0..20");
        if (lp->get<bool>()) r.gen.n_logprobs = static_cast<int>(top);
    } else if (field(body, "top_logprobs")) {
        throw bad_request("top_logprobs: needs logprobs: true");
    }
    const int64_t n = get_int(body, "n", 1, "body");
    if (n != 1) throw bad_request("n: only n = 1 is supported");
    r.gen.max_tokens = get_int(body, "max_completion_tokens", get_int(body, "max_tokens", -1, "body"), "body");
    if (r.gen.max_tokens == 0 || r.gen.max_tokens < -1) throw bad_request("max_tokens: must be at least 1");
    sampling_from(body, r.gen, "body");
    if (const json* seed = field(body, "seed")) {
        if (!seed->is_number_integer()) throw bad_request("seed: expected an integer");
        r.gen.sampler.seed = static_cast<uint64_t>(seed->get<int64_t>()) & 0x7FFFFFFFFFFFFFFFull;
    }
    stops_from(field(body, "stop"), r.gen, "stop");
    if (const json* re = field(body, "reasoning_effort"); re && re->is_string())
        r.enable_thinking = re->get<std::string>() != "none";
    if (const json* kw = field(body, "chat_template_kwargs"); kw && kw->is_object())
        r.enable_thinking = get_bool(*kw, "enable_thinking", r.enable_thinking, "chat_template_kwargs");

    // tool_choice: "none", "auto", "required", or {"type": "function", "function": {"name": ...}}
    bool tools_off = false;
    if (const json* tc = field(body, "tool_choice")) {
        if (tc->is_string()) {
            const std::string v = tc->get<std::string>();
            if (v == "none") tools_off = true;
            else if (v == "required") r.force_tool = "*";
            else if (v != "auto") throw bad_request(fmt::format("tool_choice: '{}' is not one of none, auto, required", v));
        } else if (tc->is_object()) {
            const json* fn = field(*tc, "function");
            if (!fn || !fn->is_object()) throw bad_request("tool_choice: expected {\"type\": \"function\", \"function\": {\"name\": ...}}");
            r.force_tool = get_string(*fn, "name", "tool_choice.function");
            if (r.force_tool.empty()) throw bad_request("tool_choice.function: the tool's name is missing");
        } else {
            throw bad_request("tool_choice: expected a string or an object");
        }
    }
    if (const json* tools = field(body, "tools"); tools && !tools_off) {
        if (!tools->is_array()) throw bad_request("tools: expected an array");
        for (const auto& t : *tools)
            if (!t.is_object() || !t.contains("function") || !t["function"].is_object())
                throw bad_request("tools: expected {\"type\":\"function\",\"function\":{...}} objects");
        if (!tools->empty()) r.tools = ojson::parse(tools->dump());
    }
    if (tools_off) r.force_tool.clear();
    check_forced_tool(r);

    const json* msgs = field(body, "messages");
    if (!msgs || !msgs->is_array()) throw bad_request("messages: expected an array");
    if (msgs->empty()) throw bad_request("messages: at least one message is required");
    for (size_t i = 0; i < msgs->size(); ++i) {
        const json& m = (*msgs)[i];
        const std::string where = fmt::format("messages[{}]", i);
        if (!m.is_object()) throw bad_request(where + ": expected an object");
        std::string role = get_string(m, "role", where);
        if (role == "developer") role = "system";
        if (role != "user" && role != "assistant" && role != "system" && role != "tool")
            throw bad_request(fmt::format("{}.role: unknown role '{}'", where, role));
        ojson om{{"role", role}};
        const json* c = field(m, "content");
        std::string text;
        if (c && c->is_string()) text = c->get<std::string>();
        else if (c && c->is_array()) {
            for (const auto& part : *c) {
                if (!part.is_object()) throw bad_request(where + ".content: expected content parts");
                const std::string t = get_string(part, "type", where + ".content[]");
                if (t == "text") text += get_string(part, "text", where + ".content[]");
                else if (t == "image_url" || t == "input_audio" || t == "file") reject_image(t);
            }
        } else if (c)
            throw bad_request(where + ".content: expected a string or an array of parts");
        om["content"] = text;
        if (role == "tool") om["tool_call_id"] = get_string(m, "tool_call_id", where);
        if (role == "assistant") {
            const std::string rc = get_string(m, "reasoning_content", where);
            if (!rc.empty()) om["reasoning_content"] = rc;
            if (const json* tcs = field(m, "tool_calls")) {
                if (!tcs->is_array()) throw bad_request(where + ".tool_calls: expected an array");
                ojson calls = ojson::array();
                for (const auto& tc : *tcs) {
                    if (!tc.is_object() || !tc.contains("function") || !tc["function"].is_object())
                        throw bad_request(where + ".tool_calls: expected {\"function\":{...}} objects");
                    const json& fn = tc["function"];
                    ojson args = ojson::object();
                    if (const json* a = field(fn, "arguments")) {
                        if (a->is_string()) {
                            args = ojson::parse(a->get<std::string>(), nullptr, false);
                            if (args.is_discarded()) args = a->get<std::string>();
                        } else
                            args = ojson::parse(a->dump());
                    }
                    calls.push_back(ojson{{"id", get_string(tc, "id", "tool_call")},
                                          {"type", "function"},
                                          {"function", ojson{{"name", get_string(fn, "name", "tool_call.function")},
                                                             {"arguments", args}}}});
                }
                if (!calls.empty()) om["tool_calls"] = calls;
            }
        }
        r.messages.push_back(std::move(om));
    }
    if (!r.messages.empty() && r.messages.back()["role"] == "assistant" && !r.messages.back().contains("tool_calls")) {
        r.prefill = r.messages.back()["content"].get<std::string>();
        r.messages.erase(r.messages.size() - 1);
    }
    if (const json* rf = field(body, "response_format"); rf && !rf->is_null()) {
        if (!rf->is_object()) throw bad_request("response_format: expected an object");
        const std::string t = get_string(*rf, "type", "response_format");
        if (t == "json_schema") {
            const json* js = field(*rf, "json_schema");
            const json* schema = js && js->is_object() ? field(*js, "schema") : nullptr;
            if (!schema || !schema->is_object()) throw bad_request("response_format.json_schema.schema: expected a JSON schema object");
            json_output(r, *schema);
        } else if (t == "json_object") {
            json_output(r, json{{"type", "object"}});
        } else if (t != "text") {
            throw bad_request(fmt::format("response_format.type: expected text, json_schema or json_object, got '{}'", t));
        }
    }
    return r;
}

std::string render_prompt(const ChatFormat& t, const ChatRequest& r) {
    auto ctx_for = [&](const ojson& messages) {
        ojson c{{"messages", messages}, {"add_generation_prompt", true}, {"enable_thinking", r.enable_thinking}};
        if (!r.tools.is_null()) c["tools"] = r.tools;
        return c.dump();
    };
    try {
        return t.render_json(ctx_for(r.messages)) + r.prefill;
    } catch (const Error& first) {
        // Templates that refuse system messages past the first: merge them into the system prompt.
        ojson merged = ojson::array();
        std::string extra;
        bool changed = false;
        for (size_t i = 0; i < r.messages.size(); ++i) {
            const ojson& m = r.messages[i];
            if (i > 0 && m["role"] == "system") {
                extra += "\n\n" + m["content"].get<std::string>();
                changed = true;
            } else
                merged.push_back(m);
        }
        if (!changed) throw bad_request(fmt::format("the chat template refused this conversation: {}", first.what()));
        if (!merged.empty() && merged[0]["role"] == "system")
            merged[0]["content"] = merged[0]["content"].get<std::string>() + extra;
        else
            merged.insert(merged.begin(), ojson{{"role", "system"}, {"content", extra.substr(2)}});
        try {
            return t.render_json(ctx_for(merged)) + r.prefill;
        } catch (const Error& e) {
            throw bad_request(fmt::format("the chat template refused this conversation: {}", e.what()));
        }
    }
}

GenResult to_result(GenerateResult&& g, bool stopping) {
    GenResult out;
    switch (g.stop) {
        case StopReason::EndOfGeneration: out.stop_reason = "end"; break;
        case StopReason::MaxTokens:
        case StopReason::ContextFull: out.stop_reason = "max_tokens"; break;
        case StopReason::StopString: out.stop_reason = "stop_sequence"; break;
        case StopReason::Cancelled: out.stop_reason = stopping ? "shutdown" : "cancelled"; break;
    }
    out.stop_sequence = std::move(g.stop_string);
    out.n_prompt = g.n_prompt;
    out.n_cached = g.n_reused;
    out.n_gen = g.n_generated;
    out.prefill_ms = g.prompt_ms;
    out.decode_ms = g.generate_ms;
    out.any_tool_call = !g.reply.tool_calls.empty();
    out.logprobs = std::move(g.logprobs);
    return out;
}

}  // namespace kiln::serve
