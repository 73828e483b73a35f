// kiln template (-m MODEL | --chat-template FILE [--bos S --eos S]) --context CTX.json: renders a chat
// template and prints exactly the prompt text (no newline added).
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/args.h"
#include "cli/text_input.h"
#include "cli/command.h"
#include "kiln/chat.h"
#include "kiln/error.h"

namespace kiln::cli {
namespace {

int run_template(const std::vector<std::string>& argv) {
    const std::string unset = "\x01";  // tells "not given" from an empty --bos/--eos
    std::string model, template_path, context_path, bos = unset, eos = unset;
    Args args("template", "(-m MODEL | --chat-template FILE [--bos TEXT --eos TEXT]) --context CTX.json");
    args.option({"-m", "--model"}, &model, "MODEL", "GGUF file: its tokenizer.chat_template and bos/eos token texts");
    args.option({"--chat-template"}, &template_path, "FILE", "a Jinja2 chat template file");
    args.option({"--bos"}, &bos, "TEXT", "bos_token text (default: the model's, else empty)");
    args.option({"--eos"}, &eos, "TEXT", "eos_token text (default: the model's, else empty)");
    args.option({"--context"}, &context_path, "FILE",
                "JSON object of template variables: messages, tools, add_generation_prompt, enable_thinking... (- = stdin)");
    if (!args.parse(argv)) return 0;
    if (model.empty() == template_path.empty())
        throw Error("kiln template: give either -m MODEL or --chat-template FILE (see kiln template --help)");
    if (context_path.empty()) throw Error("kiln template: --context CTX.json is required (see kiln template --help)");

    nlohmann::ordered_json context;
    try {
        context = nlohmann::ordered_json::parse(read_text_file(context_path, "--context"));
    } catch (const nlohmann::json::exception& e) {
        throw Error(fmt::format("{}: invalid JSON: {}", context_path, e.what()));
    }
    if (!context.is_object()) throw Error(fmt::format("{}: the context must be a JSON object", context_path));

    const std::string origin = model.empty() ? template_path : model + " (tokenizer.chat_template)";
    try {
        std::optional<ChatFormat> format;
        if (!model.empty()) {
            format.emplace(ChatFormat::from_file(model, bos != unset ? std::optional(bos) : std::nullopt,
                                                 eos != unset ? std::optional(eos) : std::nullopt));
        } else {
            format.emplace(ChatFormat::from_source(read_text_file(template_path, "--chat-template"), bos != unset ? bos : "",
                                                   eos != unset ? eos : ""));
        }
        const std::string prompt = format->render_json(context.dump());
        std::fwrite(prompt.data(), 1, prompt.size(), stdout);
        std::fflush(stdout);
    } catch (const Error& e) {
        throw Error(fmt::format("{}: {}", origin, e.what()));
    }
    return 0;
}

}  // namespace

KILN_COMMAND("template", "render a chat template (from a GGUF file or a .jinja file) with a JSON context", run_template);

}  // namespace kiln::cli
