// kiln chat -m MODEL: an interactive conversation on stdin with the model's chat template. Each
// turn renders the whole conversation, keeps the KV cache of the prefix the context already holds
// and decodes only the new suffix; the reply streams through the model family's output parser
// (thinking shown dimmed or prefixed, tool calls shown as such). /reset starts over, /exit or end
// of input quits, /help lists the commands. Ctrl-C stops a reply (what it said so far is kept);
// at the prompt it quits. When the conversation outgrows the context, the oldest turns are
// dropped (the system message is kept), with a notice.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cctype>

#include <chrono>
#include <cstdio>
#include <iostream>
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

namespace kiln::cli {
namespace {


// Ctrl-C: stops the reply being generated; at the prompt, quits.
std::atomic<bool> g_generating{false}, g_interrupted{false};
extern "C" void on_sigint(int) {
    if (g_generating.load()) {
        g_interrupted.store(true);
        return;
    }
    const char nl = '\n';
    (void)!::write(STDOUT_FILENO, &nl, 1);
    ::_exit(130);
}

constexpr const char* kHelp =
    "commands:\n"
    "  /help    this list\n"
    "  /reset   start over (the system message is kept)\n"
    "  /exit    quit (also /quit, end of input, or Ctrl-C at the prompt)\n"
    "Ctrl-C while the model answers stops the answer; what it said so far stays in the conversation.\n"
    "When the conversation outgrows the context, the oldest turns are dropped.\n";

// A line that is a command: "/" and a word of letters ("/usr/bin is ..." is a message).
bool is_command(const std::string& line) {
    if (line.size() < 2 || line[0] != '/') return false;
    for (size_t i = 1; i < line.size(); ++i)
        if (!std::isalpha(static_cast<unsigned char>(line[i]))) return false;
    return true;
}

void out(std::string_view s) {
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
}

// Shows parser events: thinking dimmed on a terminal (prefixed "[thinking] " otherwise), text as
// is, tool calls as one line each.
class Display {
public:
    explicit Display(bool tty) : tty_(tty) {}
    void show(const ReplyEvent& e) {
        using K = ReplyEvent::Kind;
        switch (e.kind) {
            case K::Reasoning:
                if (!in_thinking_) {
                    end_line();
                    out(tty_ ? "\033[2m" : "[thinking] ");
                    in_thinking_ = true;
                }
                write(e.text);
                break;
            case K::Text:
                leave_thinking();
                write(e.text);
                break;
            case K::ToolCallStart:
                leave_thinking();
                end_line();
                write(fmt::format("[tool call {} {}] ", e.id, e.name));
                break;
            case K::ToolCallArgs: write(e.text); break;
            case K::ToolCallEnd: end_line(); break;
            case K::Warning: fmt::print(stderr, "\nkiln chat: warning: {}\n", e.text); break;
        }
    }
    void done() {
        leave_thinking();
        end_line();
    }

private:
    void write(std::string_view s) {
        if (s.empty()) return;
        out(s);
        at_line_start_ = s.back() == '\n';
    }
    void end_line() {
        if (!at_line_start_) write("\n");
    }
    void leave_thinking() {
        if (!in_thinking_) return;
        if (tty_) out("\033[0m");
        end_line();
        in_thinking_ = false;
    }
    bool tty_;
    bool in_thinking_ = false, at_line_start_ = true;
};

int run_chat(const std::vector<std::string>& argv) {
    std::string model_path, system_prompt, template_path, template_name, parser_name;
    int64_t n_ctx = 0, n_batch = 512, n_predict = -1, seed = -1;
    int n_threads = 0;
    bool quiet = false, no_think = false;
    SamplerParams sp;
    ContextOptions co;
    co.kv_up_front = true;  // one sequence: its whole KV cache held from the start, as `kiln fit` counts it
    Args args("chat", "-m MODEL [options]  (then type messages; /reset, /exit)");
    args.option({"-m", "--model"}, &model_path, "FILE", "GGUF model to chat with");
    args.ctx_size_option(&n_ctx);
    args.option({"-b", "--batch-size"}, &n_batch, "N", "prompt tokens per forward pass (default 512)", 1, 1 << 20);
    args.threads_option(&n_threads);
    args.option({"-n", "--n-predict"}, &n_predict, "N", "most tokens per reply (default -1: until end of turn or context)", -1,
                std::numeric_limits<int64_t>::max(), "-1 (until end of turn or the context is full) or more");
    args.backend_options(&co);
    LoadOptions lo;
    args.rope_options(&lo);
    args.sampler_options(&sp, &seed);
    args.option({"-sys", "--system", "--system-prompt"}, &system_prompt, "TEXT", "system message");
    args.option({"--chat-template"}, &template_path, "FILE", "Jinja chat template to use instead of the model's");
    args.option({"--chat-template-name"}, &template_name, "NAME",
                "a built-in chat template instead of the model's: chatml, llama3 or gemma (without either, a model with no "
                "template gets ChatML)");
    args.option({"--parser"}, &parser_name, "NAME",
                "output parser: generic, hermes (Qwen), glm, deepseek, harmony (gpt-oss), qwen3-coder; default: from the model");
    args.flag({"--no-think"}, &no_think, "ask the template not to think (enable_thinking = false)");
    args.flag({"-q", "--quiet"}, &quiet, "no progress bars or statistics");
    if (!args.parse(argv)) return 0;
    if (model_path.empty()) throw Error("kiln chat: no model given (-m MODEL.gguf)");
    if (seed >= 0) sp.seed = static_cast<uint64_t>(seed);

    lo.n_threads = n_threads;
    Progress load_bar("loading", !quiet);
    lo.progress = [&](float fr) {
        load_bar.update(fr);
        return true;
    };
    co.n_ctx = n_ctx;
    co.n_threads = n_threads;
    co.n_batch = n_batch;
    Model model = load_checked("chat", model_path, lo, co);
    load_bar.done();
    Context ctx(model, co);
    // The template: --chat-template FILE, --chat-template-name NAME, the model's own, or ChatML.
    ChatFormat format = choose_chat_template(model, template_path, template_name, "chat");
    if (!parser_name.empty()) {
        try {
            format.set_parser(parser_name);
        } catch (const Error& e) {
            throw Error(fmt::format("kiln chat: --parser: {}", e.what()));
        }
    }
    const bool tty_in = ::isatty(STDIN_FILENO) != 0, tty_out = ::isatty(STDOUT_FILENO) != 0;
    if (!quiet)
        fmt::print(stderr, "kiln chat: {} ({}), context {}, parser {}; /help lists the commands, /exit quits\n",
                   model.info().name.empty() ? model_path : model.info().name, model.info().arch, ctx.n_ctx(),
                   format.parser_name());

    {
        struct sigaction sa{};
        sa.sa_handler = on_sigint;
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        ::sigaction(SIGINT, &sa, nullptr);
    }
    std::vector<Message> messages;
    auto reset = [&] {
        messages.clear();
        if (!system_prompt.empty()) messages.push_back({.role = "system", .content = system_prompt});
    };
    reset();
    Generator gen(ctx);
    Display display(tty_out);
    int turn = 0;
    RenderOptions ro;
    if (no_think) ro.enable_thinking = false;

    std::string line;
    while (true) {
        if (tty_in) out("> ");
        if (!std::getline(std::cin, line)) break;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line == "/exit" || line == "/quit") break;
        if (line == "/reset") {
            reset();
            gen.reset();
            if (!quiet) fmt::print(stderr, "kiln chat: conversation reset\n");
            continue;
        }
        if (line == "/help") {
            fmt::print(stderr, "{}", kHelp);
            continue;
        }
        if (is_command(line)) {  // never sent to the model
            fmt::print(stderr, "kiln chat: unknown command {} (/help lists them)\n", line);
            continue;
        }
        if (line.find_first_not_of(" \t") == std::string::npos) continue;

        messages.push_back({.role = "user", .content = line});
        ChatPrompt prompt;
        size_t dropped = 0;
        bool ok = false;
        while (true) {
            try {
                prompt = format.prompt(messages, {}, ro);
            } catch (const Error& e) {
                fmt::print(stderr, "kiln chat: the chat template failed: {}\n", e.what());
                break;
            }
            if (prompt.tokens.empty()) {
                fmt::print(stderr, "kiln chat: the chat template rendered an empty prompt\n");
                break;
            }
            if (static_cast<int64_t>(prompt.tokens.size()) + 1 < ctx.n_ctx()) {
                ok = true;
                break;
            }
            // Too long for the context: drop the oldest turn (a user message and what answered it),
            // never the system message nor the new message.
            const size_t first = !messages.empty() && messages[0].role == "system" ? 1 : 0;
            if (messages.size() <= first + 1) {
                fmt::print(stderr,
                           "kiln chat: this message is {} tokens with the system message, the context holds {} (one more is "
                           "needed for the answer): shorten it or raise -c\n",
                           prompt.tokens.size(), ctx.n_ctx());
                break;
            }
            size_t n = 1;
            while (first + n < messages.size() - 1 && messages[first + n].role != "user") ++n;
            messages.erase(messages.begin() + static_cast<std::ptrdiff_t>(first),
                           messages.begin() + static_cast<std::ptrdiff_t>(first + n));
            dropped += n;
        }
        if (!ok) {
            messages.pop_back();
            continue;
        }
        if (dropped > 0)
            fmt::print(stderr, "kiln chat: the conversation outgrew the context ({} tokens): dropped the {} oldest message(s){}\n",
                       ctx.n_ctx(), dropped, messages[0].role == "system" ? ", kept the system message" : "");

        // The Generator keeps the prefix the context holds and decodes the rest.
        GenerateOptions go;
        go.sampler = sp;
        if (seed >= 0) go.sampler.seed = static_cast<uint64_t>(seed + turn);
        go.max_tokens = n_predict;
        go.cancel = &g_interrupted;
        g_interrupted = false;
        g_generating = true;
        const GenerateResult r = gen.chat(format, prompt, go, [&](const ReplyEvent& e) {
            display.show(e);
            return true;
        });
        g_generating = false;
        display.done();
        messages.push_back(r.reply.message());
        ++turn;
        const char* stop = r.stop == StopReason::Cancelled     ? "interrupted"
                           : r.stop == StopReason::MaxTokens   ? "length"
                           : r.stop == StopReason::ContextFull ? "context full"
                                                               : "end of turn";
        if (!quiet)
            fmt::print(stderr, "kiln chat: turn {}: {} prompt tokens ({} reused, {:.1f} ms), {} generated ({:.1f} t/s, stopped: {})\n",
                       turn, prompt.tokens.size(), r.n_reused, r.prompt_ms, r.n_generated,
                       r.generate_ms > 0 ? 1000.0 * static_cast<double>(r.n_generated) / r.generate_ms : 0.0, stop);
    }
    if (tty_in) out("\n");
    return 0;
}

}  // namespace

KILN_COMMAND("chat", "interactive chat with the model's template: kiln chat -m MODEL [--system TEXT]", run_chat);

}  // namespace kiln::cli
