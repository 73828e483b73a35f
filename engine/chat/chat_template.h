// Chat templates: renders a conversation into the model's prompt text with the Jinja2 template the
// model ships (GGUF `tokenizer.chat_template`), the way Hugging Face transformers'
// apply_chat_template does.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "chat/jinja.h"

namespace kiln {

namespace gguf {
class File;
}

// Cheap to copy (the parsed template is shared); render() is safe to call from several threads.
class ChatTemplate {
public:
    // Parses `source`; throws jinja::TemplateError on a syntax error.
    ChatTemplate(std::string source, std::string bos_token, std::string eos_token, jinja::Options options = {});

    // The template, bos and eos texts of a GGUF file (`tokenizer.chat_template`, and the token texts
    // of `tokenizer.ggml.bos_token_id` / `eos_token_id`, "" when absent). Throws kiln::Error when the
    // file has no chat template.
    static ChatTemplate from_gguf(const gguf::File& file, jinja::Options options = {});
    // `source` with the bos and eos texts of a GGUF file (a template given instead of the file's).
    static ChatTemplate with_gguf_tokens(std::string source, const gguf::File& file, jinja::Options options = {});

    // Renders `context` (a JSON object: messages, tools, add_generation_prompt, enable_thinking, any
    // other template variable). As in transformers, the template also sees bos_token and eos_token,
    // and tools / documents default to none and add_generation_prompt to false; keys of `context`
    // override all of these. Throws jinja::TemplateError (with the template line and column) on a
    // render failure, including the template's own raise_exception().
    std::string render(const nlohmann::ordered_json& context) const;

    const std::string& source() const { return template_.source(); }
    const std::string& bos_token() const { return bos_; }
    const std::string& eos_token() const { return eos_; }

private:
    jinja::Template template_;
    std::string bos_, eos_;
};

}  // namespace kiln
