// kiln: the command-line front end. Each subcommand lives in its own cli/cmd_*.cpp.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cli/command.h"
#include "kiln/error.h"
#include "kiln/version.h"

namespace kiln::cli {

static std::vector<Command>& registry() {
    static std::vector<Command> r;
    return r;
}
bool register_command(const Command& c) {
    registry().push_back(c);
    return true;
}
const std::vector<Command>& commands() { return registry(); }

static void usage(FILE* out) {
    fmt::print(out, "kiln {}: GGUF inference engine\n\nusage: kiln COMMAND [options]   (kiln COMMAND --help)\n\ncommands:\n",
               KILN_VERSION_STRING);
    for (const Command& c : commands()) fmt::print(out, "  {:<12} {}\n", c.name, c.summary);
}

}  // namespace kiln::cli

int main(int argc, char** argv) {
    using namespace kiln::cli;
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    const std::string name = argv[1];
    if (name == "-h" || name == "--help" || name == "help") {
        usage(stdout);
        return 0;
    }
    if (name == "--version" || name == "version") {
        fmt::print("kiln {}\n", KILN_VERSION_STRING);
        return 0;
    }
    for (const Command& c : commands()) {
        if (name != c.name) continue;
        try {
            return c.run(std::vector<std::string>(argv + 2, argv + argc));
        } catch (const kiln::Error& e) {
            fmt::print(stderr, "error: {}\n", e.what());
            return 1;
        } catch (const std::exception& e) {
            fmt::print(stderr, "error: {}\n", e.what());
            return 1;
        }
    }
    fmt::print(stderr, "error: unknown command '{}'\n\n", name);
    usage(stderr);
    return 1;
}
