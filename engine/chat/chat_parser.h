// Chat output parsers: split a model's raw generated text into visible text, thinking (reasoning)
// and tool calls, per model family, incrementally. Feed the detokenized text delta by delta (any
// split, even inside a UTF-8 character or a marker); the parser emits events as soon as they are
// certain and holds back any suffix that could still be the start of a marker, so text that turns
// out to belong to a tool call is never emitted as text. finish() flushes what is held.
//
// Malformed tool output (a call that does not parse, or one cut off by the end of the output)
// becomes plain text, preceded by a Warning event; parsing never throws.
//
//   chat::ParserOptions po;
//   po.family = chat::detect_family(tmpl.source(), model.info().arch);  // or family_from_name(flag)
//   po.starts_in_thinking = chat::prompt_opens_thinking(prompt);
//   chat::ChatParser parser(po);
//   for each generated token: for (auto& ev : parser.feed(detok.push(tok))) send(ev);
//   at the end:               for (auto& ev : parser.feed(detok.flush())) ...; parser.finish() too.
//
// Text and thinking stream as they are generated (whitespace at the start and end of each block is
// trimmed). A tool call is emitted when it is complete and valid: ToolCallStart, one ToolCallArgs
// holding the whole arguments object as compact JSON, ToolCallEnd. ParsedMessage collects events
// into the final message (content, reasoning, tool calls), e.g. for the conversation history.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::chat {

enum class ParserFamily {
    Generic,   // <think>...</think> only; no tool calls (Llama 3, Gemma 3, ...)
    Hermes,    // Qwen2.5 / Qwen3 / Hermes: <tool_call>{"name": ..., "arguments": {...}}</tool_call>
    Glm,       // GLM-4.5 / 4.6 / 4.7: <tool_call>name<arg_key>k</arg_key><arg_value>v</arg_value></tool_call>
    DeepSeek,  // DeepSeek V2 / V3 / R1: <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>name ...
    Harmony,   // gpt-oss: <|channel|>analysis|commentary|final<|message|>...<|end|> / <|call|>
    QwenXml,   // Qwen3-Coder: <tool_call><function=NAME><parameter=ARG>value</parameter></function></tool_call>
};

const char* family_name(ParserFamily f);  // "generic", "hermes", "glm", "deepseek", "harmony", "qwen3-coder"
// Parses a family name (those above, plus aliases "qwen", "qwen3", "glm4", "gpt-oss", "qwen-xml");
// nullopt if unknown.
std::optional<ParserFamily> family_from_name(std::string_view name);
// Chooses the family from the chat template text (its tool-call markers), falling back to the GGUF
// architecture name (general.architecture) when the template says nothing.
ParserFamily detect_family(std::string_view template_source, std::string_view arch = {});
// True when a rendered prompt leaves a <think> block open (the template opened it for the model),
// so the output starts inside thinking: pass it as ParserOptions::starts_in_thinking.
bool prompt_opens_thinking(std::string_view rendered_prompt);
// The text that starts a tool call in the family's format, up to and including the tool's name and
// whatever precedes its arguments when `tool_name` is given (empty name: only the opening marker,
// the model picks the tool). Appended to a prompt it forces a tool call (tool_choice any / a named
// tool); fed to the parser first, the generated rest completes the call. Empty for Generic, which
// has no tool-call format.
std::string tool_call_opener(ParserFamily family, std::string_view tool_name);
// The text that ends a reasoning block and starts the answer, to cut thinking off at a budget.
std::string thinking_closer(ParserFamily family);

struct ParserOptions {
    ParserFamily family = ParserFamily::Generic;
    bool starts_in_thinking = false;      // the output begins inside a <think> block
    std::string tool_call_id_prefix = "call_";  // ids are prefix + index (0, 1, ...)
    // The request's tools as JSON text (an array of OpenAI {"type":"function","function":{"name",
    // "parameters"}} or Anthropic {"name","input_schema"} objects). QwenXml and Glm type each
    // parameter's text by the tool's JSON schema (string, integer / number, boolean, object / array,
    // null); parameters without a schema are JSON when they parse, else strings.
    std::string tools_json;
};

struct ChatEvent {
    enum class Kind {
        Text,           // text: a delta of the visible answer
        Thinking,       // text: a delta of the reasoning
        ToolCallStart,  // index, id, name
        ToolCallArgs,   // index, text: a delta of the arguments' JSON text
        ToolCallEnd,    // index
        Warning,        // text: what was malformed (its raw text follows as Text events)
    };
    Kind kind = Kind::Text;
    std::string text;
    int index = -1;  // tool call number in this output (0, 1, ...)
    std::string id, name;

    bool operator==(const ChatEvent&) const = default;
};

const char* kind_name(ChatEvent::Kind k);

class ChatParser {
public:
    explicit ChatParser(ParserOptions options = {});

    // Feeds the next piece of raw output; returns the events it completes (possibly none).
    std::vector<ChatEvent> feed(std::string_view delta);
    // The output ended: flushes held text, reports an unterminated tool call as a warning + text.
    std::vector<ChatEvent> finish();

    const ParserOptions& options() const { return opt_; }

private:
    enum class St { Content, Thinking, ToolBody, HarmonyHeader, HarmonyMessage };
    void run(std::vector<ChatEvent>& out, bool at_end);
    void emit_text(std::vector<ChatEvent>& out, ChatEvent::Kind kind, std::string_view seg, bool final, size_t& consumed);
    void emit_call(std::vector<ChatEvent>& out, const std::string& name, const std::string& args);
    ParserOptions opt_;
    St state_ = St::Content;
    std::string buf_;          // raw text not consumed yet
    std::string open_marker_;  // the marker that opened the current tool call (for malformed output)
    std::string channel_, recipient_;  // harmony: the current message's channel and recipient
    bool strip_leading_ = true;  // drop whitespace at the start of the next text / thinking segment
    int n_calls_ = 0;
    bool finished_ = false;
    // QwenXml, Glm: tool name -> parameter -> JSON schema type, from ParserOptions::tools_json.
    std::map<std::string, std::map<std::string, std::string>> types_;
};

// A whole parsed message, built from events.
struct ToolCall {
    std::string id, name;
    std::string arguments;  // JSON text
    bool operator==(const ToolCall&) const = default;
};
struct ParsedMessage {
    std::string content, reasoning;
    std::vector<ToolCall> tool_calls;
    std::vector<std::string> warnings;
    bool operator==(const ParsedMessage&) const = default;

    void apply(const ChatEvent& e);
    void apply(const std::vector<ChatEvent>& events) {
        for (const auto& e : events) apply(e);
    }
};

// Parses a whole output at once (feed + finish).
ParsedMessage parse_output(std::string_view output, const ParserOptions& options);

}  // namespace kiln::chat
