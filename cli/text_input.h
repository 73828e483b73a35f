// Shared inputs of the commands: reading a text file (or stdin as "-"), and choosing the chat
// template (--chat-template FILE, --chat-template-name NAME, the model's own, or ChatML).
#pragma once

#include <string>
#include <vector>

#include "chat/chat_template.h"

namespace kiln::cli {

// The whole content of `path` ("-": standard input). A directory, a missing or unreadable file is
// an error naming the flag and the path.
std::string read_text_file(const std::string& path, const std::string& flag);

// Built-in chat templates (--chat-template-name): their names, and each one's end-of-turn text
// (a stop string, for vocabularies that do not have it as a special token).
const std::vector<std::string>& builtin_template_names();

struct ChosenTemplate {
    ChatTemplate tmpl;
    std::string name;      // "the model's", "file FILE", or a built-in's name
    std::string end_turn;  // for a built-in: its end-of-turn text; empty otherwise
};

// --chat-template FILE, else --chat-template-name NAME, else the model's tokenizer.chat_template,
// else ChatML with a warning on stderr (as llama.cpp does). bos/eos texts come from the model.
// Errors (unreadable file, unknown name, a template that does not parse) name `command` and the flag.
ChosenTemplate choose_chat_template(const std::string& model_path, const std::string& file, const std::string& name,
                                    const std::string& command);

}  // namespace kiln::cli
