// kiln logits: the full logits of every position of a token sequence, as JSON. This is what the
// reference comparisons and other engines' outputs are checked against.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cli/args.h"
#include "cli/command.h"
#include "cli/model_load.h"
#include "kiln/kiln.h"

namespace kiln::cli {
namespace {

std::vector<int32_t> parse_tokens(const std::string& s) {
    std::vector<int32_t> out;
    size_t i = 0;
    while (i < s.size()) {
        size_t j = s.find(',', i);
        if (j == std::string::npos) j = s.size();
        std::string item = s.substr(i, j - i);
        while (!item.empty() && item.front() == ' ') item.erase(item.begin());
        while (!item.empty() && item.back() == ' ') item.pop_back();
        char* end = nullptr;
        const long v = std::strtol(item.c_str(), &end, 10);
        if (item.empty() || *end || v < 0 || v > INT32_MAX)
            throw Error(fmt::format("--tokens: '{}' is not a token id (expected e.g. --tokens 1,2,3)", item));
        out.push_back(static_cast<int32_t>(v));
        i = j + 1;
    }
    if (out.empty()) throw Error("--tokens: no token ids given (expected e.g. --tokens 1,2,3)");
    return out;
}

int run_logits(const std::vector<std::string>& argv) {
    std::string model_path, tokens_arg;
    int threads = 0;
    int64_t n_ctx = 0;
    ContextOptions co;
    co.kv_up_front = true;  // one sequence: its whole KV cache held from the start, as `kiln fit` counts it
    Args args("logits", "-m MODEL --tokens 1,2,3 [--backend cpu|vulkan] [--device N] [-t THREADS] [-c CTX]");
    args.option({"-m", "--model"}, &model_path, "MODEL", "GGUF model file");
    args.option({"--tokens"}, &tokens_arg, "IDS", "comma-separated token ids");
    args.backend_options(&co);
    args.option({"-t", "--threads"}, &threads, "N", "threads (default: all cores)");
    args.option({"-c", "--ctx-size"}, &n_ctx, "N", "context size (default: the number of tokens)");
    if (!args.parse(argv)) return 0;
    if (model_path.empty()) throw Error("kiln logits: -m MODEL is required");
    if (tokens_arg.empty()) throw Error("kiln logits: --tokens is required");
    if (co.backend != "cpu" && co.backend != "vulkan" && co.backend != "auto")
        throw Error(fmt::format("kiln logits: unknown backend '{}' (available: cpu, vulkan, auto)", co.backend));

    const std::vector<int32_t> tokens = parse_tokens(tokens_arg);
    LoadOptions lo;
    lo.n_threads = threads;
    co.n_ctx = n_ctx > 0 ? n_ctx : static_cast<int64_t>(tokens.size());
    co.n_threads = threads;
    const Model model = load_checked("logits", model_path, lo, co);
    Context ctx(model, co);
    ctx.decode(tokens, /*all_logits=*/true);

    std::string out;
    out.reserve(static_cast<size_t>(ctx.n_vocab()) * tokens.size() * 16 + 64);
    out += "{\"tokens\":[";
    for (size_t i = 0; i < tokens.size(); ++i) out += fmt::format("{}{}", i ? "," : "", tokens[i]);
    out += "],\"logits\":[";
    for (size_t i = 0; i < tokens.size(); ++i) {
        out += i ? ",[" : "[";
        const auto row = ctx.logits(static_cast<int64_t>(i));
        for (size_t j = 0; j < row.size(); ++j) {
            if (j) out += ',';
            // JSON has no NaN/Inf: a non-finite logit is written as null.
            out += std::isfinite(row[j]) ? fmt::format("{:.9g}", row[j]) : std::string("null");
        }
        out += ']';
    }
    out += "]}\n";
    std::fwrite(out.data(), 1, out.size(), stdout);
    return 0;
}

}  // namespace

KILN_COMMAND("logits", "print the logits of every position of a token sequence as JSON", run_logits);

}  // namespace kiln::cli
