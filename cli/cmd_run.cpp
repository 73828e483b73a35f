// kiln run -m MODEL -p PROMPT: load, then kiln::Generator streams the generated text; print stats.
#include <chrono>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include <fmt/format.h>
#include "cli/args.h"
#include "cli/text_input.h"
#include "cli/command.h"
#include "cli/model_load.h"
#include "cli/progress.h"
#include "kiln/kiln.h"
#include "kiln/memory.h"

namespace kiln::cli {
namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

void print_rate(const char* what, double ms, int64_t n, const char* unit) {
    fmt::print(stderr, "{:<17}= {:10.2f} ms / {:5} {:<6} ({:8.2f} ms per token, {:8.2f} tokens per second)\n", what, ms, n,
               unit, n ? ms / static_cast<double>(n) : 0.0, ms > 0 ? 1000.0 * static_cast<double>(n) / ms : 0.0);
}

int run_run(const std::vector<std::string>& argv) {
    std::string model_path, prompt, prompt_file, system_prompt, template_path, template_name;
    int64_t n_predict = 128, n_ctx = 0, n_batch = 512;
    int n_threads = 0;
    bool no_display_prompt = false, quiet = false, ignore_eos = false;
    SamplerParams sp;
    int64_t seed = -1;
    ContextOptions co;
    co.kv_up_front = true;  // one sequence: its whole KV cache held from the start, as `kiln fit` counts it
    Args args("run", "-m MODEL -p PROMPT [options]");
    args.option({"-m", "--model"}, &model_path, "FILE", "GGUF model to run");
    args.option({"-p", "--prompt"}, &prompt, "TEXT", "prompt text (- reads it from standard input)");
    args.option({"-f", "--file"}, &prompt_file, "FILE", "read the prompt from FILE (- for standard input)");
    args.option({"-sys", "--system-prompt", "--system"}, &system_prompt, "TEXT",
                "system message: the prompt becomes a user message in the model's chat template (see kiln chat)");
    args.option({"--chat-template"}, &template_path, "FILE", "with -sys: a Jinja chat template instead of the model's");
    args.option({"--chat-template-name"}, &template_name, "NAME", "with -sys: a built-in chat template (chatml, llama3, gemma)");
    args.option({"-n", "--n-predict"}, &n_predict, "N", "tokens to generate (default 128, -1: until end of text or the context is full)",
                -1, std::numeric_limits<int64_t>::max(), "-1 (until end of text or the context is full) or more");
    args.ctx_size_option(&n_ctx);
    args.option({"-b", "--batch-size"}, &n_batch, "N", "prompt tokens per forward pass (default 512)", 1, 1 << 20);
    args.threads_option(&n_threads);
    args.backend_options(&co);
    LoadOptions lo;
    args.rope_options(&lo);
    args.sampler_options(&sp, &seed);
    args.flag({"--ignore-eos"}, &ignore_eos, "keep generating past end-of-text tokens");
    args.flag({"--no-display-prompt"}, &no_display_prompt, "do not echo the prompt");
    args.flag({"-q", "--quiet"}, &quiet, "no progress bars or statistics");
    if (!args.parse(argv)) return 0;
    if (model_path.empty()) throw Error("kiln run: no model given (-m MODEL.gguf)");
    if (!prompt_file.empty() && !prompt.empty()) throw Error("kiln run: give the prompt with -p or -f, not both");
    if (!prompt_file.empty()) prompt = read_text_file(prompt_file, "-f");
    else if (prompt == "-") prompt = read_text_file("-", "-p");
    if (prompt.empty()) throw Error("kiln run: no prompt given (-p TEXT, -f FILE, or -p - for standard input)");
    const bool templated = !system_prompt.empty();
    if (!templated && (!template_path.empty() || !template_name.empty()))
        throw Error("kiln run: --chat-template / --chat-template-name apply with -sys (a system message)");
    if (seed >= 0) sp.seed = static_cast<uint64_t>(seed);

    const auto t_load = Clock::now();
    lo.n_threads = n_threads;
    Progress load_bar("loading", !quiet);
    lo.progress = [&](float f) {
        load_bar.update(f);
        return true;
    };
    co.n_ctx = n_ctx;
    co.n_threads = n_threads;
    co.n_batch = n_batch;
    Model model = load_checked("run", model_path, lo, co);
    load_bar.done();
    Progress upload_bar("uploading", !quiet && co.backend != "cpu");
    co.progress = [&](float f) { upload_bar.update(f); };
    Context ctx(model, co);
    upload_bar.done();
    const double load_ms = ms_since(t_load);

    std::vector<int32_t> tokens;
    GenerateOptions go;
    if (templated) {
        const ChatFormat format = choose_chat_template(model, template_path, template_name, "run");
        if (!format.end_turn().empty()) go.stop.push_back(format.end_turn());  // a built-in template's end of turn
        const std::vector<Message> messages = {{.role = "system", .content = system_prompt}, {.role = "user", .content = prompt}};
        tokens = format.prompt(messages).tokens;
    } else {
        tokens = model.tokenizer().encode(prompt, /*add_special=*/true, /*parse_special=*/true);
    }
    if (tokens.empty()) throw Error("kiln run: the prompt is empty (give one with -p)");
    if (static_cast<int64_t>(tokens.size()) >= ctx.n_ctx())
        throw Error(fmt::format("kiln run: the prompt is {} tokens and the context holds {}: the answer needs at least one more "
                                "(raise -c to {} or more, or shorten the prompt)",
                                tokens.size(), ctx.n_ctx(), tokens.size() + 1));
    if (!quiet)
        fmt::print(stderr, "kiln run: {} ({}), {} prompt tokens, context {}, backend {}\n",
                   model.info().name.empty() ? model_path : model.info().name, model.info().arch, tokens.size(), ctx.n_ctx(),
                   ctx.backend_name());
    if (!quiet) fmt::print(stderr, "kiln run: {}\n", ctx.kv_summary());

    if (!no_display_prompt) {
        fmt::print("{}", prompt);
        std::fflush(stdout);
    }

    go.sampler = sp;
    go.max_tokens = n_predict;  // -1: until end of text or the context is full
    go.ignore_eos = ignore_eos;
    go.prompt_chunk = n_batch;  // in n_batch chunks, so a long prompt shows progress
    Progress bar("prompt", !quiet && tokens.size() > static_cast<size_t>(n_batch));
    go.on_prompt = [&](int64_t done, int64_t total) {
        bar.update(static_cast<double>(done) / static_cast<double>(total));
        if (done == total) bar.done();
    };
    Generator gen(ctx);
    const GenerateResult r = gen.generate(tokens, go, [](std::string_view piece) {
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
        return true;
    });
    fmt::print("\n");
    std::fflush(stdout);
    const char* stop_reason = r.stop == StopReason::EndOfGeneration ? "end of text"
                              : r.stop == StopReason::StopString   ? "end of turn"
                              : r.stop == StopReason::ContextFull  ? "context full"
                                                                   : "length";

    if (!quiet) {
        fmt::print(stderr, "\n");
        fmt::print(stderr, "{:<17}= {:10.2f} ms\n", "load time", load_ms);
        print_rate("prompt eval time", r.prompt_ms, static_cast<int64_t>(tokens.size()), "tokens");
        print_rate("eval time", r.generate_ms, r.n_generated, "runs");
        fmt::print(stderr, "{:<17}= {:10.2f} ms / {:5} tokens (stopped: {}, seed {})\n", "total time",
                   load_ms + r.prompt_ms + r.generate_ms, static_cast<int64_t>(tokens.size()) + r.n_generated, stop_reason, r.seed);
        // On the CPU backend, what `kiln fit` plans for the same flags.
        if (const size_t peak = peak_resident_bytes())
            fmt::print(stderr, "{:<17}= {:10.2f} MiB resident in RAM at most\n", "peak memory",
                       static_cast<double>(peak) / (1 << 20));
    }
    return 0;
}

}  // namespace

KILN_COMMAND("run", "generate text from a prompt: kiln run -m MODEL -p PROMPT [-n N]", run_run);

}  // namespace kiln::cli
