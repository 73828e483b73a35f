// Shared inputs of the commands: reading a text file (or stdin as "-"), and choosing the chat
// template (--chat-template FILE, --chat-template-name NAME, the model's own, or ChatML).
#pragma once

#include <string>

#include "kiln/chat.h"

namespace kiln::cli {

// The whole content of `path` ("-": standard input). A directory, a missing or unreadable file is
// an error naming the flag and the path.
std::string read_text_file(const std::string& path, const std::string& flag);

// --chat-template FILE, else --chat-template-name NAME, else the model's tokenizer.chat_template,
// else ChatML with a warning on stderr (as llama.cpp does). Errors (unreadable file, unknown name, a
// template that does not parse) name `command` and the flag.
ChatFormat choose_chat_template(const Model& model, const std::string& file, const std::string& name, const std::string& command);

}  // namespace kiln::cli
