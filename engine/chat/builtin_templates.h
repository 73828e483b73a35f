// Chat templates built into kiln, for models that ship none or a broken one (--chat-template-name):
// written for kiln from each family's documented prompt format.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kiln::chat {

struct BuiltinTemplate {
    const char* name;
    const char* end_turn;  // the end of a turn: a stop string, for vocabularies without it as a special token
    const char* source;
};

// The built-in templates: chatml, llama3, gemma.
const std::vector<BuiltinTemplate>& builtin_templates();
// The one named `name`; nullptr when there is none.
const BuiltinTemplate* find_builtin_template(std::string_view name);
// "chatml, llama3, gemma"
std::string builtin_template_list();

}  // namespace kiln::chat
