// kiln fit -m MODEL [-c N] [-ctk T] [-ctv T] [--backend B] [--parallel N] [--cache-mem MIB] [--json]:
// what the model and its contexts need where they will live, against what is available, and the
// largest context that fits for each KV type. Reads the file's metadata only (no weights).
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/args.h"
#include "cli/command.h"
#include "cli/model_load.h"
#include "kiln/kiln.h"
#include "kiln/memory.h"

namespace kiln::cli {
namespace {

nlohmann::ordered_json to_json(const MemoryPlan& p, const ModelInfo& info) {
    nlohmann::ordered_json j;
    j["model"] = info.path;
    j["arch"] = info.arch;
    j["where"] = p.where;
    j["backend"] = p.backend;
    j["n_ctx"] = p.n_ctx;
    j["n_ctx_train"] = p.n_ctx_train;
    j["n_parallel"] = p.n_parallel;
    j["kv_type_k"] = kv_type_name(p.kv_type_k);
    j["kv_type_v"] = kv_type_name(p.kv_type_v);
    j["weights_bytes"] = p.weights_bytes;
    j["kv_bytes"] = p.kv_bytes;
    nlohmann::ordered_json kinds = nlohmann::ordered_json::array();
    for (const MemoryPlan::KvKind& k : p.kv)
        kinds.push_back({{"kind", k.kind}, {"layers", k.n_layers}, {"tokens", k.tokens}, {"bytes_per_token", k.bytes_per_token},
                         {"bytes", k.bytes}});
    j["kv"] = kinds;
    j["scratch_bytes"] = p.scratch_bytes;
    j["cache_bytes"] = p.cache_bytes;
    j["process_bytes"] = p.process_bytes;
    j["total_bytes"] = p.total_bytes;
    j["available_bytes"] = p.available_bytes;
    j["available_source"] = p.available_source;
    j["fits"] = p.fits;
    nlohmann::ordered_json mc;
    for (const MemoryPlan::MaxCtx& m : p.max_ctx) mc[kv_type_name(m.type)] = m.n_ctx;
    j["max_ctx"] = mc;
    j["warnings"] = p.warnings;
    return j;
}

void print_table(const MemoryPlan& p, const ModelInfo& info) {
    const std::string kv_type = p.kv_type_k == p.kv_type_v
                                    ? std::string(kv_type_name(p.kv_type_k))
                                    : fmt::format("K {} V {}", kv_type_name(p.kv_type_k), kv_type_name(p.kv_type_v));
    const double n = static_cast<double>(info.n_params);
    const std::string params = n >= 1e9 ? fmt::format("{:.2f}B", n / 1e9) : n >= 1e6 ? fmt::format("{:.1f}M", n / 1e6) : fmt::format("{:.0f}K", n / 1e3);
    fmt::print("{} ({}, {} parameters) on {}: -c {}{}, KV {}\n\n", info.name.empty() ? info.path : info.name, info.arch, params, p.where,
               p.n_ctx,
               p.n_parallel > 1 ? fmt::format(" x {} slots", p.n_parallel) : "", kv_type);
    auto row = [](const std::string& what, size_t bytes, const std::string& detail = {}) {
        std::string line = fmt::format("  {:<26} {:>12}  {}", what, format_bytes(bytes), detail);
        while (!line.empty() && line.back() == ' ') line.pop_back();
        fmt::print("{}\n", line);
    };
    row(p.backend == "cpu" ? "weights (mapped file)" : "weights (on the device)", p.weights_bytes);
    for (const MemoryPlan::KvKind& k : p.kv) {
        const std::string name = k.kind == "full" ? "KV, full layers" : k.kind == "sliding" ? "KV, sliding-window layers" : "KV, MLA latent";
        std::string detail = fmt::format("{} layers x {} tokens x {} B", k.n_layers, k.tokens, k.bytes_per_token);
        if (p.n_parallel > 1) detail += fmt::format(" x {} slots", p.n_parallel);
        row(name, k.bytes, detail);
    }
    row("compute scratch", p.scratch_bytes, "activations of a prompt batch, per-thread buffers");
    if (p.cache_bytes) row("prefix cache", p.cache_bytes, "--cache-mem");
    if (p.backend == "cpu") row("this process", p.process_bytes, "code, libraries, tokenizer, heap (measured)");
    row("total", p.total_bytes);
    row("available", p.available_bytes, p.available_source);
    fmt::print("\n  fits: {}\n", p.fits ? "yes" : "NO");
    std::string largest;
    for (const MemoryPlan::MaxCtx& m : p.max_ctx)
        largest += fmt::format("{}{} {}", largest.empty() ? "" : ", ", kv_type_name(m.type), m.n_ctx > 0 ? std::to_string(m.n_ctx) : "none");
    fmt::print("  largest context that fits: {}{}\n", largest,
               p.n_ctx_train > 0 ? fmt::format(" (trained: {})", p.n_ctx_train) : "");
    for (const std::string& w : p.warnings) fmt::print("  warning: {}\n", w);
    if (!p.fits) fmt::print("  {}\n", p.refusal());
}

int run_fit(const std::vector<std::string>& argv) {
    std::string model_path;
    int64_t n_ctx = 0, n_batch = 512, cache_mib = 0;
    int threads = 0, parallel = 1;
    bool json_out = false;
    ContextOptions co;
    LoadOptions lo;
    Args args("fit", "-m MODEL [-c N] [-ctk T] [-ctv T] [--backend B] [--parallel N] [--cache-mem MIB] [--json]");
    args.option({"-m", "--model"}, &model_path, "FILE", "GGUF model to plan for (only its metadata is read)");
    args.option({"-c", "--ctx-size"}, &n_ctx, "N", "context size in tokens (default 0: the model's trained context)", 0,
                int64_t{1} << 24, "0 (the trained context) to 16777216");
    args.backend_options(&co);
    args.option({"-np", "--parallel"}, &parallel, "N", "contexts (kiln serve's slots; default 1)", 1, 64);
    args.option({"--cache-mem"}, &cache_mib, "MIB", "prefix-cache memory of kiln serve (default 0)", 0, int64_t{1} << 30);
    args.option({"-b", "--batch-size"}, &n_batch, "N", "prompt tokens per forward pass (default 512)", 1, 1 << 20);
    args.threads_option(&threads);
    args.rope_options(&lo);
    args.flag({"--json"}, &json_out, "print one JSON object instead of the table");
    if (!args.parse(argv)) return 0;
    if (model_path.empty()) throw Error("kiln fit: no model given (-m MODEL.gguf)");

    lo.n_threads = threads;
    lo.touch_weights = false;
    const Model model = Model::load(model_path, lo);
    co.n_ctx = n_ctx > 0 ? n_ctx : model.info().n_ctx_train;  // 0 (unknown): the library's default
    co.n_batch = n_batch;
    co.n_threads = threads;
    const MemoryPlan plan = plan_memory(model, plan_options(co, parallel, static_cast<size_t>(cache_mib) << 20));
    if (json_out) fmt::print("{}\n", to_json(plan, model.info()).dump(2));
    else print_table(plan, model.info());
    return plan.fits ? 0 : 2;
}

}  // namespace

KILN_COMMAND("fit", "memory plan: what a model and -c need, what is available, the largest context that fits: kiln fit -m MODEL [-c N]",
             run_fit);

}  // namespace kiln::cli
