#include "chat/builtin_templates.h"

namespace kiln::chat {

const std::vector<BuiltinTemplate>& builtin_templates() {
    static const std::vector<BuiltinTemplate> all = {
        {"chatml", "<|im_end|>",
         "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"},
        {"llama3", "<|eot_id|>",
         "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + "
         "'<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"},
        {"gemma", "<end_of_turn>",
         "{{ bos_token }}{% set ns = namespace(sys='') %}{% for m in messages %}{% if m['role'] == 'system' %}"
         "{% set ns.sys = m['content'] + '\\n\\n' %}{% else %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + "
         "'\\n' + ns.sys + m['content'] + '<end_of_turn>\\n' }}{% set ns.sys = '' %}{% endif %}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"},
    };
    return all;
}

const BuiltinTemplate* find_builtin_template(std::string_view name) {
    for (const BuiltinTemplate& b : builtin_templates())
        if (name == b.name) return &b;
    return nullptr;
}

std::string builtin_template_list() {
    std::string names;
    for (const BuiltinTemplate& b : builtin_templates()) names += (names.empty() ? "" : ", ") + std::string(b.name);
    return names;
}

}  // namespace kiln::chat
