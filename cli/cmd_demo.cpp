// kiln demo: writes a small model with kiln's own GGUF writer and runs it end to end.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cli/args.h"
#include "cli/command.h"
#include "kiln/error.h"
#include "kiln/model.h"

namespace kiln::cli {
namespace {

int run_demo(const std::vector<std::string>& argv) {
    std::string out = (std::filesystem::temp_directory_path() / "kiln-demo.gguf").string();
    std::string type = "q8_0", prompt = "Once upon a time";
    int64_t n_predict = 48, seed = 7;
    Args args("demo", "[-o FILE] [--type TYPE] [-p PROMPT] [-n N] [-s SEED]");
    args.option({"-o", "--output"}, &out, "FILE", "where to write the demo model (default: $TMPDIR/kiln-demo.gguf)");
    args.option({"--type"}, &type, "TYPE", "weight type of the matrices (default q8_0)");
    args.option({"-p", "--prompt"}, &prompt, "TEXT", "prompt (default \"Once upon a time\")");
    args.option({"-n", "--n-predict"}, &n_predict, "N", "tokens to generate (default 48)");
    args.option({"-s", "--seed"}, &seed, "N", "sampling seed (default 7)");
    if (!args.parse(argv)) return 0;
    // stdout and stderr interleave: each line goes out as written, so `kiln demo 2>&1 | less` keeps
    // the order they were printed in.
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    fmt::print(stderr, "kiln demo: writing a small llama model ({}) with kiln's GGUF writer to {}\n", type, out);
    try {
        write_demo_model(out, type);
    } catch (const Error& e) {
        throw Error(fmt::format("kiln demo: --type {}: {}", type, e.what()));
    }
    auto command = [](const char* name) {
        for (const Command& c : commands())
            if (std::string(c.name) == name) return c;
        throw Error(fmt::format("kiln demo: command '{}' is missing from this build", name));
    };
    fmt::print(stderr, "\n$ kiln info {}\n", out);
    if (const int rc = command("info").run({out}); rc != 0) return rc;
    const std::vector<std::string> run_args = {"-m", out, "-p", prompt, "-n", std::to_string(n_predict), "--seed",
                                               std::to_string(seed)};
    fmt::print(stderr, "\n$ kiln run -m {} -p \"{}\" -n {} --seed {}\n", out, prompt, n_predict, seed);
    return command("run").run(run_args);
}

}  // namespace

KILN_COMMAND("demo", "write a small model with kiln's own writer and run it end to end", run_demo);

}  // namespace kiln::cli
