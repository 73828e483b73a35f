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
#include <fstream>
#include <iostream>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "chat/chat_parser.h"
#include "chat/chat_template.h"
#include "cli/args.h"
#include "cli/text_input.h"
#include "cli/command.h"
#include "cli/model_load.h"
#include "cli/progress.h"
#include "cli/stop_matcher.h"
#include "gguf/gguf.h"
#include "kiln/kiln.h"

namespace kiln::cli {
namespace {

using Clock = std::chrono::steady_clock;
using ojson = nlohmann::ordered_json;

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
    void show(const std::vector<chat::ChatEvent>& events) {
        using K = chat::ChatEvent::Kind;
        for (const auto& e : events) {
            switch (e.kind) {
                case K::Thinking:
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

    // The template: --chat-template FILE, --chat-template-name NAME, the model's own, or ChatML.
    std::optional<ChatTemplate> tmpl;
    std::vector<std::string> end_turn;  // a built-in template's end of turn: a stop string
    {
        ChosenTemplate chosen = choose_chat_template(model_path, template_path, template_name, "chat");
        tmpl.emplace(std::move(chosen.tmpl));
        if (!chosen.end_turn.empty()) end_turn.push_back(chosen.end_turn);
    }

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
    const Tokenizer& tok = model.tokenizer();

    chat::ParserFamily family = chat::detect_family(tmpl->source(), model.info().arch);
    if (!parser_name.empty()) {
        auto f = chat::family_from_name(parser_name);
        if (!f) throw Error(fmt::format("kiln chat: unknown --parser '{}' (generic, hermes, glm, deepseek, harmony)", parser_name));
        family = *f;
    }
    const bool tty_in = ::isatty(STDIN_FILENO) != 0, tty_out = ::isatty(STDOUT_FILENO) != 0;
    if (!quiet)
        fmt::print(stderr, "kiln chat: {} ({}), context {}, parser {}; /help lists the commands, /exit quits\n",
                   model.info().name.empty() ? model_path : model.info().name, model.info().arch, ctx.n_ctx(),
                   chat::family_name(family));

    {
        struct sigaction sa{};
        sa.sa_handler = on_sigint;
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        ::sigaction(SIGINT, &sa, nullptr);
    }
    ojson messages = ojson::array();
    auto reset = [&] {
        messages = ojson::array();
        if (!system_prompt.empty()) messages.push_back({{"role", "system"}, {"content", system_prompt}});
    };
    reset();
    std::vector<int32_t> cached;  // the tokens the context holds
    Display display(tty_out);
    int turn = 0;

    std::string line;
    while (true) {
        if (tty_in) out("> ");
        if (!std::getline(std::cin, line)) break;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line == "/exit" || line == "/quit") break;
        if (line == "/reset") {
            reset();
            cached.clear();
            ctx.clear();
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

        messages.push_back({{"role", "user"}, {"content", line}});
        std::string prompt;
        std::vector<int32_t> tokens;
        size_t dropped = 0;
        bool ok = false;
        while (true) {
            ojson vars = {{"messages", messages}, {"add_generation_prompt", true}};
            if (no_think) vars["enable_thinking"] = false;
            try {
                prompt = tmpl->render(vars);
            } catch (const jinja::TemplateError& e) {
                fmt::print(stderr, "kiln chat: the chat template failed: {}\n", e.what());
                break;
            }
            tokens = tok.encode(prompt, /*add_special=*/false, /*parse_special=*/true);
            if (tok.add_bos() && tok.bos() != kNoToken && (tokens.empty() || tokens[0] != tok.bos()))
                tokens.insert(tokens.begin(), tok.bos());
            if (tokens.empty()) {
                fmt::print(stderr, "kiln chat: the chat template rendered an empty prompt\n");
                break;
            }
            if (static_cast<int64_t>(tokens.size()) + 1 < ctx.n_ctx()) {
                ok = true;
                break;
            }
            // Too long for the context: drop the oldest turn (a user message and what answered it),
            // never the system message nor the new message.
            const size_t first = !messages.empty() && messages[0]["role"] == "system" ? 1 : 0;
            if (messages.size() <= first + 1) {
                fmt::print(stderr,
                           "kiln chat: this message is {} tokens with the system message, the context holds {} (one more is "
                           "needed for the answer): shorten it or raise -c\n",
                           tokens.size(), ctx.n_ctx());
                break;
            }
            size_t n = 1;
            while (first + n < messages.size() - 1 && messages[first + n]["role"] != "user") ++n;
            for (size_t i = 0; i < n; ++i) messages.erase(first);
            dropped += n;
        }
        if (!ok) {
            messages.erase(messages.size() - 1);
            continue;
        }
        if (dropped > 0)
            fmt::print(stderr, "kiln chat: the conversation outgrew the context ({} tokens): dropped the {} oldest message(s){}\n",
                       ctx.n_ctx(), dropped, messages[0]["role"] == "system" ? ", kept the system message" : "");

        // Keep the common prefix, decode the rest (at least one token, for the logits).
        size_t keep = 0;
        while (keep < cached.size() && keep < tokens.size() && cached[keep] == tokens[keep]) ++keep;
        if (keep == tokens.size()) --keep;
        keep = static_cast<size_t>(ctx.truncate(static_cast<int64_t>(keep)));  // 0 when a sliding window lost it
        cached.assign(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(keep));
        const auto t_prompt = Clock::now();
        ctx.decode(std::span<const int32_t>(tokens.data() + keep, tokens.size() - keep));
        cached = tokens;
        const double prompt_ms = std::chrono::duration<double, std::milli>(Clock::now() - t_prompt).count();

        chat::ParserOptions po;
        po.family = family;
        po.starts_in_thinking = chat::prompt_opens_thinking(prompt);
        chat::ChatParser parser(po);
        chat::ParsedMessage reply;
        SamplerParams turn_sp = sp;
        if (seed >= 0) turn_sp.seed = static_cast<uint64_t>(seed + turn);
        Sampler sampler(turn_sp, static_cast<int32_t>(ctx.n_vocab()));
        for (int32_t t : tokens) sampler.accept(t);
        Detokenizer detok(tok);
        for (int32_t t : tokens) (void)detok.push(t);  // so the first piece keeps its leading space

        auto handle = [&](const std::vector<chat::ChatEvent>& ev) {
            reply.apply(ev);
            display.show(ev);
        };
        const auto t_gen = Clock::now();
        int64_t generated = 0;
        std::string stop = "end of turn";
        StopMatcher stops(end_turn);
        std::string stop_text;
        g_interrupted = false;
        g_generating = true;
        while (true) {
            if (g_interrupted.load()) {
                stop = "interrupted";
                break;
            }
            if (n_predict >= 0 && generated >= n_predict) {
                stop = "length";
                break;
            }
            if (ctx.n_past() >= ctx.n_ctx()) {
                stop = "context full";
                break;
            }
            const int32_t next = sampler.sample(ctx.logits());
            sampler.accept(next);
            ++generated;
            if (tok.is_eog(next)) break;
            bool hit = false;
            handle(parser.feed(stops.push(detok.push(next), hit, stop_text)));
            if (hit) break;
            ctx.decode(std::span<const int32_t>(&next, 1));
            cached.push_back(next);
        }
        g_generating = false;
        {
            bool hit = false;
            std::string rest = stops.push(detok.flush(), hit, stop_text);
            if (!hit) rest += stops.flush();
            handle(parser.feed(rest));
        }
        handle(parser.finish());
        display.done();
        const double gen_ms = std::chrono::duration<double, std::milli>(Clock::now() - t_gen).count();

        ojson msg = {{"role", "assistant"}, {"content", reply.content}};
        if (!reply.tool_calls.empty()) {
            ojson calls = ojson::array();
            for (const auto& c : reply.tool_calls) {
                ojson a = ojson::parse(c.arguments, nullptr, false);
                calls.push_back({{"id", c.id},
                                 {"type", "function"},
                                 {"function", {{"name", c.name}, {"arguments", a.is_discarded() ? ojson(c.arguments) : a}}}});
            }
            msg["tool_calls"] = calls;
        }
        messages.push_back(msg);
        ++turn;
        if (!quiet)
            fmt::print(stderr, "kiln chat: turn {}: {} prompt tokens ({} reused, {:.1f} ms), {} generated ({:.1f} t/s, stopped: {})\n",
                       turn, tokens.size(), keep, prompt_ms, generated,
                       gen_ms > 0 ? 1000.0 * static_cast<double>(generated) / gen_ms : 0.0, stop);
    }
    if (tty_in) out("\n");
    return 0;
}

}  // namespace

KILN_COMMAND("chat", "interactive chat with the model's template: kiln chat -m MODEL [--system TEXT]", run_chat);

}  // namespace kiln::cli
