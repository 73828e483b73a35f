#include "cli/text_input.h"

#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <utility>

#include <fmt/format.h>

#include "gguf/gguf.h"
#include "kiln/error.h"

namespace kiln::cli {

std::string read_text_file(const std::string& path, const std::string& flag) {
    if (path == "-") return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) throw Error(fmt::format("{} {}: is a directory, not a file", flag, path));
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(fmt::format("{} {}: cannot open the file ({})", flag, path, std::filesystem::exists(path, ec) ? "not readable" : "no such file"));
    std::ostringstream ss;
    ss << in.rdbuf();
    if (in.bad()) throw Error(fmt::format("{} {}: error while reading", flag, path));
    return ss.str();
}

namespace {

struct Builtin {
    const char* name;
    const char* end_turn;
    const char* source;
};

// Written for kiln from each family's documented prompt format.
const Builtin kBuiltins[] = {
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

const Builtin* find_builtin(const std::string& name) {
    for (const Builtin& b : kBuiltins)
        if (name == b.name) return &b;
    return nullptr;
}

}  // namespace

const std::vector<std::string>& builtin_template_names() {
    static const std::vector<std::string> names = [] {
        std::vector<std::string> v;
        for (const Builtin& b : kBuiltins) v.push_back(b.name);
        return v;
    }();
    return names;
}

ChosenTemplate choose_chat_template(const std::string& model_path, const std::string& file, const std::string& name,
                                    const std::string& command) {
    auto f = gguf::File::open(model_path);
    const gguf::Value* own = f->find("tokenizer.chat_template");
    const bool has_own = own && own->is_string();
    auto make = [&](const std::string& src, const std::string& origin) {
        try {
            return ChatTemplate::with_gguf_tokens(src, *f);
        } catch (const std::exception& e) {
            throw Error(fmt::format("kiln {}: {}: {}", command, origin, e.what()));
        }
    };
    if (!file.empty() && !name.empty())
        throw Error(fmt::format("kiln {}: give --chat-template FILE or --chat-template-name NAME, not both", command));
    if (!file.empty()) return {make(read_text_file(file, "--chat-template"), "--chat-template " + file), "file " + file, ""};
    std::string names;
    for (const Builtin& b : kBuiltins) names += (names.empty() ? "" : ", ") + std::string(b.name);
    if (!name.empty()) {
        const Builtin* b = find_builtin(name);
        if (!b) throw Error(fmt::format("kiln {}: unknown --chat-template-name '{}' (built in: {})", command, name, names));
        return {make(b->source, name), name, b->end_turn};
    }
    if (has_own) {
        try {
            return {ChatTemplate::from_gguf(*f), "the model's", ""};
        } catch (const std::exception& e) {
            throw Error(fmt::format("kiln {}: the model's chat template: {} (give another with --chat-template FILE or "
                                    "--chat-template-name NAME)",
                                    command, e.what()));
        }
    }
    const Builtin* chatml = find_builtin("chatml");
    fmt::print(stderr,
               "kiln {}: warning: {} has no chat template; using ChatML (choose with --chat-template FILE or "
               "--chat-template-name NAME: {})\n",
               command, model_path, names);
    return {make(chatml->source, "chatml"), "chatml (fallback)", chatml->end_turn};
}

}  // namespace kiln::cli
