// Subcommand registry: each cli/cmd_*.cpp registers itself with KILN_COMMAND, so adding a command
// touches no shared file.
#pragma once

#include <string>
#include <vector>

namespace kiln::cli {

struct Command {
    const char* name;
    const char* summary;  // one line for `kiln --help`
    int (*run)(const std::vector<std::string>& args);  // args exclude "kiln" and the command name
};

bool register_command(const Command& c);
const std::vector<Command>& commands();

}  // namespace kiln::cli

#define KILN_COMMAND(NAME, SUMMARY, FN) \
    static const bool kiln_command_registered_##FN = ::kiln::cli::register_command({NAME, SUMMARY, FN})
