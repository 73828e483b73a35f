#include "cli/text_input.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <utility>

#include <fmt/format.h>

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

ChatFormat choose_chat_template(const Model& model, const std::string& file, const std::string& name, const std::string& command) {
    if (!file.empty() && !name.empty())
        throw Error(fmt::format("kiln {}: give --chat-template FILE or --chat-template-name NAME, not both", command));
    std::string names;
    for (const std::string& n : ChatFormat::builtin_names()) names += (names.empty() ? "" : ", ") + n;
    if (!file.empty()) {
        const std::string source = read_text_file(file, "--chat-template");
        try {
            return ChatFormat::from_source(model, source);
        } catch (const Error& e) {
            throw Error(fmt::format("kiln {}: --chat-template {}: {}", command, file, e.what()));
        }
    }
    if (!name.empty()) {
        const std::vector<std::string> all = ChatFormat::builtin_names();
        if (std::find(all.begin(), all.end(), name) == all.end())
            throw Error(fmt::format("kiln {}: unknown --chat-template-name '{}' (built in: {})", command, name, names));
        return ChatFormat::builtin(model, name);
    }
    ChatFormat f = [&] {
        try {
            return ChatFormat::from_model(model);
        } catch (const Error& e) {
            throw Error(fmt::format("kiln {}: {} (give another with --chat-template FILE or --chat-template-name NAME)", command,
                                    e.what()));
        }
    }();
    if (f.origin() == "chatml (fallback)")
        fmt::print(stderr,
                   "kiln {}: warning: {} has no chat template; using ChatML (choose with --chat-template FILE or "
                   "--chat-template-name NAME: {})\n",
                   command, model.info().path, names);
    return f;
}

}  // namespace kiln::cli
