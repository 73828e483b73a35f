// kiln::ChatFormat, ReplyParser and Reply (kiln/chat.h) on engine/chat's templates and parsers.
#include <algorithm>
#include <optional>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "chat/builtin_templates.h"
#include "chat/chat_parser.h"
#include "chat/chat_template.h"
#include "kiln/chat.h"
#include "kiln/error.h"
#include "kiln/tokenizer.h"
#include "model/model_impl.h"

namespace kiln {

using ojson = nlohmann::ordered_json;

struct ChatFormat::Impl {
    std::optional<Model> model;  // its tokenizer tokenizes prompts (none: from_file, or a source with no model)
    std::string arch;            // general.architecture, for the parser family
    ChatTemplate tmpl;
    chat::ParserFamily family = chat::ParserFamily::Generic;
    std::string origin, end_turn;
};

namespace {

ReplyEvent to_public(const chat::ChatEvent& e) {
    using K = chat::ChatEvent::Kind;
    ReplyEvent::Kind k = ReplyEvent::Kind::Text;
    switch (e.kind) {
        case K::Text: k = ReplyEvent::Kind::Text; break;
        case K::Thinking: k = ReplyEvent::Kind::Reasoning; break;
        case K::ToolCallStart: k = ReplyEvent::Kind::ToolCallStart; break;
        case K::ToolCallArgs: k = ReplyEvent::Kind::ToolCallArgs; break;
        case K::ToolCallEnd: k = ReplyEvent::Kind::ToolCallEnd; break;
        case K::Warning: k = ReplyEvent::Kind::Warning; break;
    }
    return ReplyEvent{k, e.text, e.index, e.id, e.name};
}

// A JSON text that should be an object (tool arguments, schemas); kept as a string when it does
// not parse, as chat templates print either.
ojson json_or_string(const std::string& text) {
    ojson j = ojson::parse(text, nullptr, false);
    return j.is_discarded() ? ojson(text) : j;
}

}  // namespace

// ---- Reply ------------------------------------------------------------------------------------

void Reply::apply(const ReplyEvent& e) {
    switch (e.kind) {
        case ReplyEvent::Kind::Text: content += e.text; break;
        case ReplyEvent::Kind::Reasoning: reasoning += e.text; break;
        case ReplyEvent::Kind::ToolCallStart: tool_calls.push_back(ToolCall{e.id, e.name, {}}); break;
        case ReplyEvent::Kind::ToolCallArgs:
            if (!tool_calls.empty()) tool_calls.back().arguments += e.text;
            break;
        case ReplyEvent::Kind::ToolCallEnd: break;
        case ReplyEvent::Kind::Warning: warnings.push_back(e.text); break;
    }
}

Message Reply::message() const {
    Message m;
    m.role = "assistant";
    m.content = content;
    m.tool_calls = tool_calls;
    return m;
}

// ---- ReplyParser ------------------------------------------------------------------------------

struct ReplyParser::Impl {
    std::optional<chat::ChatParser> parser;  // none: plain text
};

ReplyParser::ReplyParser(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ReplyParser ReplyParser::plain() { return ReplyParser(std::make_unique<Impl>()); }
ReplyParser::~ReplyParser() = default;
ReplyParser::ReplyParser(ReplyParser&&) noexcept = default;
ReplyParser& ReplyParser::operator=(ReplyParser&&) noexcept = default;

void ReplyParser::feed(std::string_view piece, std::vector<ReplyEvent>& out) {
    if (!impl_->parser) {
        if (!piece.empty()) out.push_back(ReplyEvent{ReplyEvent::Kind::Text, std::string(piece), -1, {}, {}});
        return;
    }
    for (const chat::ChatEvent& e : impl_->parser->feed(piece)) out.push_back(to_public(e));
}

void ReplyParser::finish(std::vector<ReplyEvent>& out) {
    if (!impl_->parser) return;
    for (const chat::ChatEvent& e : impl_->parser->finish()) out.push_back(to_public(e));
}

// ---- ChatFormat -------------------------------------------------------------------------------

ChatFormat::ChatFormat(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {
    impl_->family = chat::detect_family(impl_->tmpl.source(), impl_->arch);
}
ChatFormat::~ChatFormat() = default;
ChatFormat::ChatFormat(const ChatFormat& o) : impl_(std::make_unique<Impl>(*o.impl_)) {}
ChatFormat& ChatFormat::operator=(const ChatFormat& o) {
    if (this != &o) impl_ = std::make_unique<Impl>(*o.impl_);
    return *this;
}
ChatFormat::ChatFormat(ChatFormat&&) noexcept = default;
ChatFormat& ChatFormat::operator=(ChatFormat&&) noexcept = default;

ChatFormat ChatFormat::from_model(const Model& model) {
    const gguf::File& f = *model.impl()->file;
    const gguf::Value* own = f.find("tokenizer.chat_template");
    if (!own || !own->is_string()) {
        ChatFormat c = builtin(model, "chatml");
        c.impl_->origin = "chatml (fallback)";
        return c;
    }
    try {
        return ChatFormat(std::make_unique<Impl>(Impl{model, model.info().arch, ChatTemplate::from_gguf(f), {}, "the model's", ""}));
    } catch (const Error& e) {
        throw Error(fmt::format("{}: the model's chat template: {}", f.path(), e.what()));
    }
}

ChatFormat ChatFormat::from_source(const Model& model, std::string source) {
    return ChatFormat(std::make_unique<Impl>(
        Impl{model, model.info().arch, ChatTemplate::with_gguf_tokens(std::move(source), *model.impl()->file), {}, "given", ""}));
}

ChatFormat ChatFormat::from_source(std::string source, std::string bos_token, std::string eos_token) {
    return ChatFormat(std::make_unique<Impl>(
        Impl{std::nullopt, "", ChatTemplate(std::move(source), std::move(bos_token), std::move(eos_token)), {}, "given", ""}));
}

ChatFormat ChatFormat::from_file(const std::string& gguf_path, const std::optional<std::string>& bos_token,
                                 const std::optional<std::string>& eos_token) {
    const auto f = gguf::File::open(gguf_path);
    ChatTemplate t = ChatTemplate::from_gguf(*f);
    if (bos_token || eos_token)
        t = ChatTemplate(f->get_string("tokenizer.chat_template"), bos_token.value_or(t.bos_token()), eos_token.value_or(t.eos_token()));
    return ChatFormat(std::make_unique<Impl>(Impl{std::nullopt, f->architecture(), std::move(t), {}, "the model's", ""}));
}

const std::string& ChatFormat::bos_token() const { return impl_->tmpl.bos_token(); }
const std::string& ChatFormat::eos_token() const { return impl_->tmpl.eos_token(); }

ChatFormat ChatFormat::builtin(const Model& model, std::string_view name) {
    const chat::BuiltinTemplate* b = chat::find_builtin_template(name);
    if (!b) throw Error(fmt::format("unknown built-in chat template '{}' (built in: {})", name, chat::builtin_template_list()));
    ChatFormat c = from_source(model, b->source);
    c.impl_->origin = b->name;
    c.impl_->end_turn = b->end_turn;
    return c;
}

std::vector<std::string> ChatFormat::builtin_names() {
    std::vector<std::string> v;
    for (const chat::BuiltinTemplate& b : chat::builtin_templates()) v.push_back(b.name);
    return v;
}

std::string ChatFormat::render(std::span<const Message> messages, std::span<const Tool> tools, const RenderOptions& options) const {
    ojson msgs = ojson::array();
    for (const Message& m : messages) {
        ojson j = {{"role", m.role}, {"content", m.content}};
        if (!m.reasoning.empty()) j["reasoning_content"] = m.reasoning;
        if (!m.tool_calls.empty()) {
            ojson calls = ojson::array();
            for (const ToolCall& c : m.tool_calls)
                calls.push_back({{"id", c.id},
                                 {"type", "function"},
                                 {"function", {{"name", c.name}, {"arguments", json_or_string(c.arguments)}}}});
            j["tool_calls"] = calls;
        }
        if (!m.tool_call_id.empty()) j["tool_call_id"] = m.tool_call_id;
        if (!m.name.empty()) j["name"] = m.name;
        msgs.push_back(std::move(j));
    }
    ojson vars = {{"messages", std::move(msgs)}, {"add_generation_prompt", options.add_generation_prompt}};
    if (!tools.empty()) {
        ojson ts = ojson::array();
        for (const Tool& t : tools) {
            ojson params = ojson::parse(t.parameters, nullptr, false);
            if (params.is_discarded() || !params.is_object())
                throw Error(fmt::format("tool '{}': its parameters are not a JSON object (a JSON schema)", t.name));
            ts.push_back({{"type", "function"},
                          {"function", {{"name", t.name}, {"description", t.description}, {"parameters", std::move(params)}}}});
        }
        vars["tools"] = std::move(ts);
    }
    if (options.enable_thinking) vars["enable_thinking"] = *options.enable_thinking;
    if (!options.extra_json.empty()) {
        ojson extra = ojson::parse(options.extra_json, nullptr, false);
        if (extra.is_discarded() || !extra.is_object())
            throw Error("RenderOptions::extra_json: not a JSON object: " + options.extra_json);
        for (auto& [k, v] : extra.items()) vars[k] = v;
    }
    return impl_->tmpl.render(vars);
}

std::string ChatFormat::render_json(std::string_view context_json) const {
    ojson vars = ojson::parse(context_json, nullptr, false);
    if (vars.is_discarded() || !vars.is_object()) throw Error("chat template context: not a JSON object");
    return impl_->tmpl.render(vars);
}

std::vector<int32_t> ChatFormat::tokenize(std::string_view rendered) const {
    if (!impl_->model) throw Error("this chat format has no model to tokenize with (made from a file or a source alone)");
    const Tokenizer& tok = impl_->model->tokenizer();
    std::vector<int32_t> tokens = tok.encode(rendered, /*add_special=*/false, /*parse_special=*/true);
    if (tok.add_bos() && tok.bos() != kNoToken && (tokens.empty() || tokens[0] != tok.bos())) tokens.insert(tokens.begin(), tok.bos());
    return tokens;
}

ChatPrompt ChatFormat::prompt(std::span<const Message> messages, std::span<const Tool> tools, const RenderOptions& options) const {
    ChatPrompt p;
    p.text = render(messages, tools, options);
    p.tokens = tokenize(p.text);
    return p;
}

std::string ChatFormat::parser_name() const { return chat::family_name(impl_->family); }

void ChatFormat::set_parser(std::string_view name) {
    const auto f = chat::family_from_name(name);
    if (!f) throw Error(fmt::format("unknown output parser '{}' (generic, hermes, glm, deepseek, harmony, qwen3-coder)", name));
    impl_->family = *f;
}

ReplyParser ChatFormat::parser(std::string_view prompt, std::string_view tools_json) const {
    ReplyOptions o;
    o.tools_json = std::string(tools_json);
    return parser(prompt, o);
}

ReplyParser ChatFormat::parser(std::string_view prompt, const ReplyOptions& options) const {
    chat::ParserOptions o;
    o.family = impl_->family;
    const std::string& prefix = options.output_prefix;
    // Whether the output starts in thinking is the prompt's say before the output prefix.
    o.starts_in_thinking = chat::prompt_opens_thinking(prompt.substr(0, prompt.size() - std::min(prompt.size(), prefix.size())));
    o.tools_json = options.tools_json;
    o.tool_call_id_prefix = options.tool_call_id_prefix;
    auto impl = std::make_unique<ReplyParser::Impl>();
    impl->parser.emplace(o);
    // An opened tool call: nothing is complete yet, so no event comes out of it.
    if (!prefix.empty()) (void)impl->parser->feed(prefix);
    return ReplyParser(std::move(impl));
}

std::string ChatFormat::tool_call_opener(std::string_view tool_name) const { return chat::tool_call_opener(impl_->family, tool_name); }

std::string ChatFormat::thinking_closer() const { return chat::thinking_closer(impl_->family); }
const std::string& ChatFormat::source() const { return impl_->tmpl.source(); }
const std::string& ChatFormat::origin() const { return impl_->origin; }
const std::string& ChatFormat::end_turn() const { return impl_->end_turn; }

}  // namespace kiln
