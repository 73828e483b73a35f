// kiln public API: conversations. A ChatFormat is how a model wants a conversation written (its
// Jinja chat template, or a given or built-in one) and how its replies are read back (the output
// parser of its family: visible text, reasoning, tool calls).
//
//   kiln::ChatFormat format = kiln::ChatFormat::from_model(model);
//   std::vector<kiln::Message> messages = {{.role = "user", .content = "Hello"}};
//   kiln::ChatPrompt prompt = format.prompt(messages);          // rendered text and its tokens
//   kiln::Generator gen(ctx);
//   kiln::GenerateResult r = gen.chat(format, prompt, {}, [](const kiln::ReplyEvent& e) {
//       if (e.kind == kiln::ReplyEvent::Kind::Text) std::cout << e.text;
//       return true;  // false stops the reply
//   });
//   messages.push_back(r.reply.message());                     // the assistant's turn
//
// Rendering follows Python's jinja2 as Hugging Face transformers' apply_chat_template runs it.
// Every failure is a kiln::Error with a message for the user (a template error names its line and
// column).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/model.h"

namespace kiln {

// A tool call of an assistant message.
struct ToolCall {
    std::string id{};       // e.g. "call_0"
    std::string name{};       // the tool's name
    std::string arguments{};  // a JSON object, as text
    bool operator==(const ToolCall&) const = default;
};

// One message of a conversation.
struct Message {
    std::string role{};     // "system", "user", "assistant" or "tool"
    std::string content{};
    std::string reasoning{};             // assistant: its thinking (the template sees reasoning_content)
    std::vector<ToolCall> tool_calls{};  // assistant: the calls it made
    std::string tool_call_id{};          // tool: the call this message answers
    std::string name{};                  // tool: the tool's name (optional)
};

// A tool the model may call (the template shows it in OpenAI's function shape).
struct Tool {
    std::string name{};
    std::string description{};
    std::string parameters = R"({"type":"object","properties":{}})";  // a JSON schema, as text
};

struct RenderOptions {
    bool add_generation_prompt = true;      // end with the opening of the assistant's turn
    std::optional<bool> enable_thinking{};  // unset: the template's default
    // More template variables: a JSON object as text, e.g. {"reasoning_effort": "low"}. Its keys
    // override everything above.
    std::string extra_json{};
};

// A rendered conversation: the text and its tokens (BOS first when the vocabulary wants one).
struct ChatPrompt {
    std::string text{};
    std::vector<int32_t> tokens{};
};

// What the output parser makes of a reply, as it streams.
struct ReplyEvent {
    enum class Kind {
        Text,           // text: a piece of the visible answer
        Reasoning,      // text: a piece of the thinking
        ToolCallStart,  // index, id, name
        ToolCallArgs,   // index, text: the arguments' JSON (a complete call is reported at once)
        ToolCallEnd,    // index
        Warning,        // text: what was malformed (its raw text follows as Text)
    };
    Kind kind = Kind::Text;
    std::string text{};
    int index = -1;  // tool call number in this reply (0, 1, ...)
    std::string id{}, name{};
};

// A whole reply, collected from its events.
struct Reply {
    std::string content{}, reasoning{};
    std::vector<ToolCall> tool_calls{};
    std::vector<std::string> warnings{};
    void apply(const ReplyEvent& e);
    Message message() const;  // as the assistant's message of the conversation
};

// Reads a model's output as it streams: feed() the text pieces in order (any split), then
// finish(). Events come as soon as they are certain; text that may still open a tool call or a
// thinking block is held back until it is known.
class ReplyParser {
public:
    // A parser that reads every piece as visible text (no reasoning, no tool calls): for output
    // that is not a chat reply (a completion, JSON forced by a schema).
    static ReplyParser plain();
    ~ReplyParser();
    ReplyParser(ReplyParser&&) noexcept;
    ReplyParser& operator=(ReplyParser&&) noexcept;

    // Appends the events the piece completes to `out` (which is not cleared).
    void feed(std::string_view piece, std::vector<ReplyEvent>& out);
    void finish(std::vector<ReplyEvent>& out);

private:
    friend class ChatFormat;
    struct Impl;
    explicit ReplyParser(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// How a reply is read (ChatFormat::parser, and Generator::chat through GenerateOptions::reply).
struct ReplyOptions {
    // The tools (OpenAI shape), for families that type the arguments by their schema (Qwen3-Coder, GLM).
    std::string tools_json{};
    std::string tool_call_id_prefix = "call_";  // tool call ids are this prefix + their index
    // Text the reply is taken to begin with: it ends the prompt already (e.g. tool_call_opener()
    // appended to force a tool call), and the parser reads it first, as if generated.
    std::string output_prefix{};
};

class ChatFormat {
public:
    // The model's own template (GGUF tokenizer.chat_template). A model without one gets ChatML
    // (origin() then says "chatml (fallback)"; front ends should warn). Throws kiln::Error when the
    // model's template does not parse.
    static ChatFormat from_model(const Model& model);
    // A template given as Jinja text, with the model's bos / eos token texts.
    static ChatFormat from_source(const Model& model, std::string source);
    // A built-in template by name (builtin_names()); throws kiln::Error listing them for another name.
    static ChatFormat builtin(const Model& model, std::string_view name);
    // Without loading a model (render and parse only; prompt() and tokenize() then throw): the
    // template and bos / eos texts of a GGUF file, even a vocab-only one (bos_token / eos_token
    // given: those texts instead; throws kiln::Error when the file has no chat template), or a
    // template with the bos / eos texts given.
    static ChatFormat from_file(const std::string& gguf_path, const std::optional<std::string>& bos_token = {},
                                const std::optional<std::string>& eos_token = {});
    static ChatFormat from_source(std::string source, std::string bos_token, std::string eos_token);
    static std::vector<std::string> builtin_names();  // chatml, llama3, gemma

    ChatFormat(const ChatFormat&);
    ChatFormat& operator=(const ChatFormat&);
    ChatFormat(ChatFormat&&) noexcept;
    ChatFormat& operator=(ChatFormat&&) noexcept;
    ~ChatFormat();

    // The conversation as the template writes it. Throws kiln::Error (the template's line and
    // column) when rendering fails, e.g. on the template's own raise_exception().
    std::string render(std::span<const Message> messages, std::span<const Tool> tools = {},
                       const RenderOptions& options = {}) const;
    // The template with any variables: a JSON object as text (messages, tools,
    // add_generation_prompt, ...); bos_token / eos_token are preset.
    std::string render_json(std::string_view context_json) const;
    // Rendered and tokenized (special-token texts become their tokens; BOS added when the
    // vocabulary wants it and the template did not write it).
    ChatPrompt prompt(std::span<const Message> messages, std::span<const Tool> tools = {},
                      const RenderOptions& options = {}) const;
    std::vector<int32_t> tokenize(std::string_view rendered) const;

    // The output parser family: "generic" (thinking only), "hermes" (Qwen), "glm", "deepseek",
    // "harmony" (gpt-oss), "qwen3-coder". Chosen from the template and the architecture;
    // set_parser() overrides it (throws kiln::Error naming the families for an unknown name).
    std::string parser_name() const;
    void set_parser(std::string_view name);
    // A parser for the reply to `prompt` (a prompt that leaves a thinking block open makes the
    // reply start in reasoning). tools_json: the tools (OpenAI shape) for families that type the
    // arguments by their schema; tool call ids are "call_0", "call_1", ...
    ReplyParser parser(std::string_view prompt, std::string_view tools_json = {}) const;
    // The same with the ReplyOptions (prompt includes options.output_prefix at its end).
    ReplyParser parser(std::string_view prompt, const ReplyOptions& options) const;
    // The text that opens a tool call in the family's format, up to the arguments of `tool_name`
    // (empty: only the opening marker, the model picks the tool). Appended to a prompt (and given
    // as ReplyOptions::output_prefix) it forces a tool call. Empty for a family without tool calls.
    std::string tool_call_opener(std::string_view tool_name = {}) const;
    // The text that ends reasoning and starts the answer (to cut thinking at a budget).
    std::string thinking_closer() const;

    const std::string& source() const;    // the template text
    const std::string& bos_token() const;  // the texts the template sees as bos_token / eos_token
    const std::string& eos_token() const;
    const std::string& origin() const;    // "the model's", "given", a built-in's name, "chatml (fallback)"
    const std::string& end_turn() const;  // a built-in's end-of-turn text (a stop string), else ""

    struct Impl;  // engine-internal

private:
    explicit ChatFormat(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace kiln
