// What a kiln::ChatFormat holds (engine-internal): kiln serve's Engine takes the template from here
// until it moves into the library.
#pragma once

#include <optional>
#include <string>

#include "chat/chat_parser.h"
#include "chat/chat_template.h"
#include "kiln/chat.h"
#include "kiln/model.h"

namespace kiln {

struct ChatFormat::Impl {
    std::optional<Model> model;  // its tokenizer tokenizes prompts (none: from_file, or a source with no model)
    std::string arch;            // general.architecture, for the parser family
    ChatTemplate tmpl;
    chat::ParserFamily family = chat::ParserFamily::Generic;
    std::string origin, end_turn;
};

}  // namespace kiln
