// Chat output parsers: a small state machine per family over a buffer of unconsumed raw text. In
// each state a list of markers is searched; text before the earliest one is emitted, and a suffix
// that could still grow into a marker is held until the next delta (or finish()).
#include "chat/chat_parser.h"

#include <algorithm>
#include <array>
#include <cctype>

#include <map>

#include <nlohmann/json.hpp>

namespace kiln::chat {

using ojson = nlohmann::ordered_json;

namespace {

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";
constexpr std::string_view kToolCallOpen = "<tool_call>";
constexpr std::string_view kToolCallClose = "</tool_call>";
constexpr std::string_view kArgKey = "<arg_key>";
constexpr std::string_view kArgKeyEnd = "</arg_key>";
constexpr std::string_view kArgValue = "<arg_value>";
constexpr std::string_view kArgValueEnd = "</arg_value>";
constexpr std::string_view kFunctionOpen = "<function=";
constexpr std::string_view kFunctionClose = "</function>";
constexpr std::string_view kParamOpen = "<parameter=";
constexpr std::string_view kParamClose = "</parameter>";
constexpr std::string_view kDsCallsBegin = "<｜tool▁calls▁begin｜>";
constexpr std::string_view kDsCallsEnd = "<｜tool▁calls▁end｜>";
constexpr std::string_view kDsCallBegin = "<｜tool▁call▁begin｜>";
constexpr std::string_view kDsCallEnd = "<｜tool▁call▁end｜>";
constexpr std::string_view kDsSep = "<｜tool▁sep｜>";
constexpr std::string_view kHChannel = "<|channel|>";
constexpr std::string_view kHMessage = "<|message|>";
constexpr std::string_view kHStart = "<|start|>";
constexpr std::string_view kHEnd = "<|end|>";
constexpr std::string_view kHCall = "<|call|>";
constexpr std::string_view kHReturn = "<|return|>";

bool is_ws(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

std::string_view trim(std::string_view s) {
    while (!s.empty() && is_ws(s.front())) s.remove_prefix(1);
    while (!s.empty() && is_ws(s.back())) s.remove_suffix(1);
    return s;
}

struct Found {
    size_t pos = std::string::npos;
    std::string_view marker;
};

Found find_first(std::string_view buf, std::initializer_list<std::string_view> markers) {
    Found f;
    for (auto m : markers) {
        const size_t p = buf.find(m);
        if (p != std::string::npos && p < f.pos) f = {p, m};
    }
    return f;
}

// Length of the longest suffix of buf that is a proper prefix of one of the markers.
size_t held_suffix(std::string_view buf, std::initializer_list<std::string_view> markers) {
    size_t best = 0;
    for (auto m : markers) {
        const size_t max = std::min(buf.size(), m.size() - 1);
        for (size_t n = max; n > best; --n)
            if (buf.substr(buf.size() - n) == m.substr(0, n)) {
                best = n;
                break;
            }
    }
    return best;
}

std::optional<ojson> parse_json(std::string_view s) {
    ojson j = ojson::parse(s.begin(), s.end(), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return std::nullopt;
    return j;
}

// Arguments given as an object, or as a string holding JSON; "{}" when absent.
std::optional<std::string> args_text(const ojson* a) {
    if (!a || a->is_null()) return std::string("{}");
    if (a->is_string()) {
        auto j = parse_json(a->get<std::string>());
        if (!j) return std::nullopt;
        return j->dump();
    }
    return a->dump();
}

struct RawCall {
    std::string name, args;
};

// Hermes / Qwen: {"name": ..., "arguments": {...}}
std::optional<std::vector<RawCall>> parse_hermes(std::string_view body) {
    auto j = parse_json(trim(body));
    if (!j || !j->is_object()) return std::nullopt;
    auto n = j->find("name");
    if (n == j->end() || !n->is_string() || n->get<std::string>().empty()) return std::nullopt;
    const ojson* a = nullptr;
    if (auto it = j->find("arguments"); it != j->end()) a = &*it;
    else if (auto it2 = j->find("parameters"); it2 != j->end()) a = &*it2;
    auto args = args_text(a);
    if (!args) return std::nullopt;
    return std::vector<RawCall>{{n->get<std::string>(), *args}};
}

// The JSON schema types of each tool's parameters: tool name -> parameter -> type ("" when unknown).
using ParamTypes = std::map<std::string, std::map<std::string, std::string>>;

ParamTypes param_types(const std::string& tools_json) {
    ParamTypes out;
    if (tools_json.empty()) return out;
    auto j = parse_json(tools_json);
    if (!j || !j->is_array()) return out;
    for (const auto& t : *j) {
        if (!t.is_object()) continue;
        const ojson* fn = t.contains("function") && t["function"].is_object() ? &t["function"] : &t;
        if (!fn->contains("name") || !(*fn)["name"].is_string()) continue;
        const ojson* schema = nullptr;
        for (const char* k : {"parameters", "input_schema"})
            if (fn->contains(k) && (*fn)[k].is_object()) schema = &(*fn)[k];
        auto& params = out[(*fn)["name"].get<std::string>()];
        if (!schema || !schema->contains("properties") || !(*schema)["properties"].is_object()) continue;
        for (const auto& [name, prop] : (*schema)["properties"].items()) {
            std::string type;
            if (prop.is_object() && prop.contains("type")) {
                const ojson& ty = prop["type"];
                if (ty.is_string()) type = ty.get<std::string>();
                else if (ty.is_array())  // ["integer", "null"]: the first that is not null
                    for (const auto& x : ty)
                        if (x.is_string() && x.get<std::string>() != "null") {
                            type = x.get<std::string>();
                            break;
                        }
            }
            params[name] = type;
        }
    }
    return out;
}

// A parameter's text as the schema types it; text that does not fit its type stays a string.
ojson typed_value(std::string_view text, const std::string& type) {
    if (type == "string") return ojson(std::string(text));
    const std::string_view t = trim(text);
    if (type == "integer" || type == "number") {
        auto j = parse_json(t);
        if (j && j->is_number() && (type == "number" || j->is_number_integer())) return *j;
        return ojson(std::string(text));
    }
    if (type == "boolean") {
        if (t == "true" || t == "True") return ojson(true);
        if (t == "false" || t == "False") return ojson(false);
        return ojson(std::string(text));
    }
    if (type == "object" || type == "array") {
        auto j = parse_json(t);
        if (j && ((type == "object" && j->is_object()) || (type == "array" && j->is_array()))) return *j;
        return ojson(std::string(text));
    }
    if (type == "null" && t == "null") return ojson(nullptr);
    auto j = parse_json(t);  // no schema for it: JSON when it parses
    return j ? *j : ojson(std::string(text));
}

// GLM: name<arg_key>k</arg_key><arg_value>v</arg_value>...; values typed by the tool's JSON schema
// (GLM's templates write a string argument as its bare text, anything else as JSON: a string whose
// text happens to parse as JSON - a file's JSON content, a quoted word - stays a string), values of
// parameters without a schema JSON when they parse, else strings.
std::optional<std::vector<RawCall>> parse_glm(std::string_view body, const ParamTypes& types) {
    size_t p = body.find(kArgKey);
    const std::string_view name = trim(body.substr(0, p));
    if (name.empty() || name.find('<') != std::string_view::npos || name.find('\n') != std::string_view::npos)
        return std::nullopt;
    const auto tool = types.find(std::string(name));
    ojson args = ojson::object();
    std::string_view rest = p == std::string_view::npos ? std::string_view{} : body.substr(p);
    while (true) {
        rest = trim(rest);
        if (rest.empty()) break;
        if (!rest.starts_with(kArgKey)) return std::nullopt;
        rest.remove_prefix(kArgKey.size());
        const size_t ke = rest.find(kArgKeyEnd);
        if (ke == std::string_view::npos) return std::nullopt;
        const std::string key(trim(rest.substr(0, ke)));
        rest = trim(rest.substr(ke + kArgKeyEnd.size()));
        if (!rest.starts_with(kArgValue)) return std::nullopt;
        rest.remove_prefix(kArgValue.size());
        const size_t ve = rest.find(kArgValueEnd);
        if (ve == std::string_view::npos) return std::nullopt;
        const std::string_view value = rest.substr(0, ve);
        rest.remove_prefix(ve + kArgValueEnd.size());
        if (key.empty()) return std::nullopt;
        std::string type;
        if (tool != types.end())
            if (auto it = tool->second.find(key); it != tool->second.end()) type = it->second;
        args[key] = typed_value(value, type);
    }
    return std::vector<RawCall>{{std::string(name), args.dump()}};
}

// Qwen3-Coder: <function=NAME>\n<parameter=KEY>\nVALUE\n</parameter>...</function>, one or more
// functions in one <tool_call>. One newline after the opening and before the closing parameter tag
// belongs to the format, not the value.
std::optional<std::vector<RawCall>> parse_qwen_xml(std::string_view body, const ParamTypes& types) {
    std::vector<RawCall> calls;
    std::string_view rest = body;
    while (true) {
        rest = trim(rest);
        if (rest.empty()) break;
        if (!rest.starts_with(kFunctionOpen)) return std::nullopt;
        rest.remove_prefix(kFunctionOpen.size());
        const size_t gt = rest.find('>');
        if (gt == std::string_view::npos) return std::nullopt;
        const std::string name(trim(rest.substr(0, gt)));
        if (name.empty() || name.find_first_of("<\n") != std::string::npos) return std::nullopt;
        rest.remove_prefix(gt + 1);
        const size_t end = rest.find(kFunctionClose);
        if (end == std::string_view::npos) return std::nullopt;
        std::string_view params = rest.substr(0, end);
        rest.remove_prefix(end + kFunctionClose.size());
        const auto tool = types.find(name);
        ojson args = ojson::object();
        while (true) {
            params = trim(params);
            if (params.empty()) break;
            if (!params.starts_with(kParamOpen)) return std::nullopt;
            params.remove_prefix(kParamOpen.size());
            const size_t pg = params.find('>');
            if (pg == std::string_view::npos) return std::nullopt;
            const std::string key(trim(params.substr(0, pg)));
            params.remove_prefix(pg + 1);
            const size_t pe = params.find(kParamClose);
            if (key.empty() || pe == std::string_view::npos) return std::nullopt;
            std::string_view value = params.substr(0, pe);
            params.remove_prefix(pe + kParamClose.size());
            if (value.starts_with('\n')) value.remove_prefix(1);
            if (value.ends_with('\n')) value.remove_suffix(1);
            std::string type;
            if (tool != types.end())
                if (auto it = tool->second.find(key); it != tool->second.end()) type = it->second;
            args[key] = typed_value(value, type);
        }
        calls.push_back({name, args.dump()});
    }
    if (calls.empty()) return std::nullopt;
    return calls;
}

// DeepSeek: the text between <｜tool▁calls▁begin｜> and <｜tool▁calls▁end｜>: one or more
// <｜tool▁call▁begin｜>TYPE<｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜>
// (V3.1: <｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>).
std::optional<std::vector<RawCall>> parse_deepseek(std::string_view body) {
    std::vector<RawCall> calls;
    std::string_view rest = body;
    while (true) {
        rest = trim(rest);
        if (rest.empty()) break;
        if (!rest.starts_with(kDsCallBegin)) return std::nullopt;
        rest.remove_prefix(kDsCallBegin.size());
        const size_t e = rest.find(kDsCallEnd);
        if (e == std::string_view::npos) return std::nullopt;
        const std::string_view call = rest.substr(0, e);
        rest.remove_prefix(e + kDsCallEnd.size());
        const size_t s = call.find(kDsSep);
        if (s == std::string_view::npos) return std::nullopt;
        const std::string_view before = trim(call.substr(0, s));
        std::string_view after = call.substr(s + kDsSep.size());
        std::string name;
        std::string_view args;
        const size_t fence = after.find("```");
        if (fence != std::string_view::npos) {
            name = std::string(trim(after.substr(0, fence)));
            std::string_view code = after.substr(fence + 3);
            const size_t nl = code.find('\n');  // skip the fence's language tag ("json")
            if (nl == std::string_view::npos) return std::nullopt;
            code.remove_prefix(nl + 1);
            const size_t close = code.rfind("```");
            if (close == std::string_view::npos || !trim(code.substr(close + 3)).empty()) return std::nullopt;
            args = code.substr(0, close);
        } else {
            name = std::string(before);
            args = after;
        }
        if (name.empty() || name.find('<') != std::string::npos) return std::nullopt;
        auto j = parse_json(trim(args));
        if (!j) return std::nullopt;
        calls.push_back({name, j->dump()});
    }
    if (calls.empty()) return std::nullopt;
    return calls;
}

}  // namespace

const char* family_name(ParserFamily f) {
    switch (f) {
        case ParserFamily::Generic: return "generic";
        case ParserFamily::Hermes: return "hermes";
        case ParserFamily::Glm: return "glm";
        case ParserFamily::DeepSeek: return "deepseek";
        case ParserFamily::Harmony: return "harmony";
        case ParserFamily::QwenXml: return "qwen3-coder";
    }
    return "?";
}

std::optional<ParserFamily> family_from_name(std::string_view name) {
    std::string n(name);
    for (char& c : n) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (n == "generic" || n == "none" || n == "llama3" || n == "gemma3") return ParserFamily::Generic;
    if (n == "hermes" || n == "qwen" || n == "qwen2.5" || n == "qwen3") return ParserFamily::Hermes;
    if (n == "glm" || n == "glm4" || n == "glm-4.5" || n == "glm-4.6" || n == "glm-4.7") return ParserFamily::Glm;
    if (n == "deepseek" || n == "deepseek-v3" || n == "deepseek-r1") return ParserFamily::DeepSeek;
    if (n == "harmony" || n == "gpt-oss") return ParserFamily::Harmony;
    if (n == "qwen3-coder" || n == "qwen-xml" || n == "qwen3coder") return ParserFamily::QwenXml;
    return std::nullopt;
}

ParserFamily detect_family(std::string_view tmpl, std::string_view arch) {
    if (tmpl.find("tool▁calls▁begin") != std::string_view::npos) return ParserFamily::DeepSeek;
    if (tmpl.find("<|channel|>") != std::string_view::npos) return ParserFamily::Harmony;
    if (tmpl.find("<arg_key>") != std::string_view::npos) return ParserFamily::Glm;
    if (tmpl.find("<function=") != std::string_view::npos) return ParserFamily::QwenXml;
    if (tmpl.find("<tool_call>") != std::string_view::npos) return ParserFamily::Hermes;
    if (arch.starts_with("qwen")) return ParserFamily::Hermes;
    if (arch.starts_with("glm4")) return ParserFamily::Glm;
    if (arch.starts_with("deepseek")) return ParserFamily::DeepSeek;
    if (arch.starts_with("gpt-oss") || arch == "gptoss") return ParserFamily::Harmony;
    return ParserFamily::Generic;
}

std::string tool_call_opener(ParserFamily family, std::string_view name) {
    const std::string n(name);
    switch (family) {
        case ParserFamily::Generic: return {};
        case ParserFamily::Hermes:
            return std::string(kToolCallOpen) + "\n{\"name\": \"" + (n.empty() ? "" : n + "\", \"arguments\": ");
        case ParserFamily::Glm: return std::string(kToolCallOpen) + (n.empty() ? "" : n + "\n");
        case ParserFamily::QwenXml:
            return std::string(kToolCallOpen) + "\n" + (n.empty() ? "" : std::string(kFunctionOpen) + n + ">\n");
        case ParserFamily::DeepSeek:
            return std::string(kDsCallsBegin) + std::string(kDsCallBegin) + "function" + std::string(kDsSep) +
                   (n.empty() ? "" : n + "\n```json\n");
        case ParserFamily::Harmony:
            return std::string(kHChannel) + "commentary to=functions." + (n.empty() ? "" : n + " <|constrain|>json" + std::string(kHMessage));
    }
    return {};
}

std::string thinking_closer(ParserFamily family) {
    if (family == ParserFamily::Harmony)
        return std::string(kHEnd) + std::string(kHStart) + "assistant" + std::string(kHChannel) + "final" + std::string(kHMessage);
    return std::string(kThinkClose) + "\n\n";
}

bool prompt_opens_thinking(std::string_view prompt) {
    const size_t open = prompt.rfind(kThinkOpen);
    if (open == std::string_view::npos) return false;
    const size_t close = prompt.rfind(kThinkClose);
    return close == std::string_view::npos || close < open;
}

const char* kind_name(ChatEvent::Kind k) {
    switch (k) {
        case ChatEvent::Kind::Text: return "text";
        case ChatEvent::Kind::Thinking: return "thinking";
        case ChatEvent::Kind::ToolCallStart: return "tool_call_start";
        case ChatEvent::Kind::ToolCallArgs: return "tool_call_args";
        case ChatEvent::Kind::ToolCallEnd: return "tool_call_end";
        case ChatEvent::Kind::Warning: return "warning";
    }
    return "?";
}

ChatParser::ChatParser(ParserOptions options) : opt_(std::move(options)) {
    if (opt_.family == ParserFamily::Harmony) state_ = St::HarmonyHeader;
    else if (opt_.starts_in_thinking) state_ = St::Thinking;
    if (opt_.family == ParserFamily::QwenXml || opt_.family == ParserFamily::Glm) types_ = param_types(opt_.tools_json);
}

std::vector<ChatEvent> ChatParser::feed(std::string_view delta) {
    std::vector<ChatEvent> out;
    if (finished_) return out;
    buf_.append(delta);
    run(out, false);
    return out;
}

std::vector<ChatEvent> ChatParser::finish() {
    std::vector<ChatEvent> out;
    if (finished_) return out;
    run(out, true);
    finished_ = true;
    return out;
}

// Emits seg as `kind`, dropping leading whitespace after a boundary and, unless final, holding
// trailing whitespace (it is dropped when a boundary follows). `consumed` gets how much of seg
// was used up.
void ChatParser::emit_text(std::vector<ChatEvent>& out, ChatEvent::Kind kind, std::string_view seg, bool final,
                           size_t& consumed) {
    size_t b = 0;
    if (strip_leading_)
        while (b < seg.size() && is_ws(seg[b])) ++b;
    size_t e = seg.size();
    while (e > b && is_ws(seg[e - 1])) --e;
    if (e > b) {
        if (!out.empty() && out.back().kind == kind && (kind == ChatEvent::Kind::Text || kind == ChatEvent::Kind::Thinking))
            out.back().text.append(seg.substr(b, e - b));
        else
            out.push_back({kind, std::string(seg.substr(b, e - b)), -1, {}, {}});
        strip_leading_ = false;
    }
    consumed = final ? seg.size() : (e > b ? e : b);
}

void ChatParser::emit_call(std::vector<ChatEvent>& out, const std::string& name, const std::string& args) {
    const int i = n_calls_++;
    out.push_back({ChatEvent::Kind::ToolCallStart, {}, i, opt_.tool_call_id_prefix + std::to_string(i), name});
    out.push_back({ChatEvent::Kind::ToolCallArgs, args, i, {}, {}});
    out.push_back({ChatEvent::Kind::ToolCallEnd, {}, i, {}, {}});
}

void ChatParser::run(std::vector<ChatEvent>& out, bool at_end) {
    using K = ChatEvent::Kind;
    const ParserFamily fam = opt_.family;
    auto malformed = [&](std::string what, std::string raw) {
        out.push_back({K::Warning, std::move(what), -1, {}, {}});
        if (!raw.empty()) {
            if (!out.empty() && out.back().kind == K::Text) out.back().text += raw;
            else out.push_back({K::Text, std::move(raw), -1, {}, {}});
            strip_leading_ = false;
        }
    };
    while (true) {
        switch (state_) {
            case St::Content:
            case St::Thinking: {
                const bool thinking = state_ == St::Thinking;
                const K kind = thinking ? K::Thinking : K::Text;
                std::string_view tool_open;
                if (!thinking) {
                    if (fam == ParserFamily::Hermes || fam == ParserFamily::Glm || fam == ParserFamily::QwenXml)
                        tool_open = kToolCallOpen;
                    else if (fam == ParserFamily::DeepSeek) tool_open = kDsCallsBegin;
                }
                const std::string_view m1 = thinking ? kThinkClose : kThinkOpen;
                const Found f = tool_open.empty() ? find_first(buf_, {m1}) : find_first(buf_, {m1, tool_open});
                size_t used = 0;
                if (f.pos == std::string::npos) {
                    const size_t hold =
                        at_end ? 0 : (tool_open.empty() ? held_suffix(buf_, {m1}) : held_suffix(buf_, {m1, tool_open}));
                    emit_text(out, kind, std::string_view(buf_).substr(0, buf_.size() - hold), at_end, used);
                    buf_.erase(0, used);
                    return;
                }
                emit_text(out, kind, std::string_view(buf_).substr(0, f.pos), true, used);
                const std::string marker(f.marker);
                // Whitespace between text and a tool call goes back into the text if the call is malformed.
                size_t ws = f.pos;
                if (!strip_leading_)
                    while (ws > 0 && is_ws(buf_[ws - 1])) --ws;
                open_marker_ = buf_.substr(ws, f.pos - ws) + marker;
                buf_.erase(0, f.pos + marker.size());
                strip_leading_ = true;
                if (marker == kThinkOpen) state_ = St::Thinking;
                else if (marker == kThinkClose) state_ = St::Content;
                else state_ = St::ToolBody;
                continue;
            }
            case St::ToolBody: {
                const std::string_view close = fam == ParserFamily::DeepSeek ? kDsCallsEnd : kToolCallClose;
                const size_t p = buf_.find(close);
                if (p == std::string::npos) {
                    if (!at_end) return;
                    // The output ended without the closing marker (DeepSeek's own template omits
                    // <｜tool▁calls▁end｜> after a single call): a self-delimited body (complete JSON,
                    // complete DeepSeek calls) is accepted.
                    std::optional<std::vector<RawCall>> calls;
                    if (fam == ParserFamily::Hermes) calls = parse_hermes(buf_);
                    else if (fam == ParserFamily::DeepSeek) calls = parse_deepseek(buf_);
                    if (calls) {
                        for (const auto& c : *calls) emit_call(out, c.name, c.args);
                        buf_.clear();
                        state_ = St::Content;
                        return;
                    }
                    malformed("unterminated tool call: " + std::string(trim(open_marker_)) + " without " + std::string(close),
                              open_marker_ + buf_);
                    buf_.clear();
                    state_ = St::Content;
                    return;
                }
                const std::string_view body = std::string_view(buf_).substr(0, p);
                std::optional<std::vector<RawCall>> calls;
                if (fam == ParserFamily::Hermes) calls = parse_hermes(body);
                else if (fam == ParserFamily::Glm) calls = parse_glm(body, types_);
                else if (fam == ParserFamily::QwenXml) calls = parse_qwen_xml(body, types_);
                else calls = parse_deepseek(body);
                if (calls) {
                    for (const auto& c : *calls) emit_call(out, c.name, c.args);
                } else {
                    malformed(std::string("malformed ") + family_name(fam) + " tool call",
                              open_marker_ + std::string(body) + std::string(close));
                }
                buf_.erase(0, p + close.size());
                strip_leading_ = true;
                state_ = St::Content;
                continue;
            }
            case St::HarmonyHeader: {
                if (buf_.empty()) return;
                if (buf_[0] != '<' || (buf_.size() > 1 && buf_[1] != '|') || (at_end && buf_.size() == 1)) {
                    // Plain text without a channel header: the final answer.
                    channel_ = "final";
                    recipient_.clear();
                    state_ = St::HarmonyMessage;
                    continue;
                }
                const size_t p = buf_.find(kHMessage);
                if (p == std::string::npos) {
                    if (!at_end) return;
                    // A header cut off by the end of the output (e.g. a trailing <|start|>assistant): dropped,
                    // with a warning when it began a message.
                    if (buf_.find(kHChannel) != std::string::npos) malformed("harmony header without <|message|>", buf_);
                    buf_.clear();
                    return;
                }
                const std::string_view header = std::string_view(buf_).substr(0, p);
                channel_.clear();
                recipient_.clear();
                if (size_t c = header.find(kHChannel); c != std::string_view::npos) {
                    size_t i = c + kHChannel.size();
                    while (i < header.size() && (std::isalnum(static_cast<unsigned char>(header[i])) || header[i] == '_'))
                        channel_ += header[i++];
                }
                if (size_t t = header.find("to="); t != std::string_view::npos) {
                    size_t i = t + 3;
                    while (i < header.size() && !is_ws(header[i]) && header[i] != '<') recipient_ += header[i++];
                }
                buf_.erase(0, p + kHMessage.size());
                strip_leading_ = true;
                state_ = St::HarmonyMessage;
                continue;
            }
            case St::HarmonyMessage: {
                const Found f = find_first(buf_, {kHEnd, kHCall, kHReturn, kHStart, kHChannel});
                const bool keeps_marker = f.marker == kHStart || f.marker == kHChannel;
                if (!recipient_.empty()) {  // a tool call: its JSON arguments up to <|call|>
                    if (f.pos == std::string::npos && !at_end) return;
                    const size_t end = f.pos == std::string::npos ? buf_.size() : f.pos;
                    const std::string_view args = trim(std::string_view(buf_).substr(0, end));
                    auto j = parse_json(args);
                    const std::string name =
                        recipient_.starts_with("functions.") ? recipient_.substr(10) : recipient_;
                    if (j && !name.empty()) emit_call(out, name, j->dump());
                    else malformed("malformed harmony tool call to " + recipient_, std::string(args));
                    buf_.erase(0, f.pos == std::string::npos ? buf_.size() : f.pos + (keeps_marker ? 0 : f.marker.size()));
                    strip_leading_ = true;
                    state_ = St::HarmonyHeader;
                    if (f.pos == std::string::npos) return;
                    continue;
                }
                const K kind = channel_ == "analysis" ? K::Thinking : K::Text;
                size_t used = 0;
                if (f.pos == std::string::npos) {
                    const size_t hold = at_end ? 0 : held_suffix(buf_, {kHEnd, kHCall, kHReturn, kHStart, kHChannel});
                    emit_text(out, kind, std::string_view(buf_).substr(0, buf_.size() - hold), at_end, used);
                    buf_.erase(0, used);
                    return;
                }
                emit_text(out, kind, std::string_view(buf_).substr(0, f.pos), true, used);
                buf_.erase(0, f.pos + (keeps_marker ? 0 : f.marker.size()));
                strip_leading_ = true;
                state_ = St::HarmonyHeader;
                continue;
            }
        }
    }
}

void ParsedMessage::apply(const ChatEvent& e) {
    using K = ChatEvent::Kind;
    switch (e.kind) {
        case K::Text: content += e.text; break;
        case K::Thinking: reasoning += e.text; break;
        case K::ToolCallStart: tool_calls.push_back({e.id, e.name, {}}); break;
        case K::ToolCallArgs:
            if (!tool_calls.empty()) tool_calls.back().arguments += e.text;
            break;
        case K::ToolCallEnd: break;
        case K::Warning: warnings.push_back(e.text); break;
    }
}

ParsedMessage parse_output(std::string_view output, const ParserOptions& options) {
    ChatParser p(options);
    ParsedMessage m;
    m.apply(p.feed(output));
    m.apply(p.finish());
    return m;
}

}  // namespace kiln::chat
