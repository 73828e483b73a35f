// kiln demo: writes a small model with kiln's own GGUF writer and runs it end to end.
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cli/args.h"
#include "cli/command.h"
#include "kiln/error.h"
#include "model/synthetic.h"

namespace kiln::cli {
namespace {

int run_demo(const std::vector<std::string>& argv) {
    std::string out = (std::filesystem::temp_directory_path() / "kiln-demo.gguf").string();
    std::string type = "q8_0";
    Args args("demo", "[-o FILE] [--type TYPE]");
    args.option({"-o", "--output"}, &out, "FILE", "where to write the demo model (default: $TMPDIR/kiln-demo.gguf)");
    args.option({"--type"}, &type, "TYPE", "weight type of the matrices (default q8_0)");
    if (!args.parse(argv)) return 0;
    SyntheticLlama opts;
    const auto t = type_from_name(type);
    if (!t || !traits(*t).can_quantize)
        throw Error(fmt::format("kiln demo: --type {}: not a type kiln can write", type));
    opts.type = *t;
    fmt::print(stderr, "kiln demo: writing a {}-layer llama model ({}) to {}\n", opts.n_layer, type, out);
    write_synthetic_llama(out, opts);
    const Command* info = nullptr;
    for (const Command& c : commands())
        if (std::string(c.name) == "info") info = &c;
    return info->run({out});
}

}  // namespace

KILN_COMMAND("demo", "write a small model with kiln's own writer and run it end to end", run_demo);

}  // namespace kiln::cli
