// kiln::Generator (kiln/generator.h): the generation loop of kiln run and kiln chat.
#include "kiln/generator.h"

#include <algorithm>
#include <chrono>
#include <limits>

#include <fmt/format.h>

#include "kiln/error.h"
#include "kiln/tokenizer.h"
#include "runtime/json_output.h"
#include "runtime/sequence.h"

namespace kiln {

namespace {
using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }
}  // namespace

const char* stop_reason_name(StopReason r) {
    switch (r) {
        case StopReason::EndOfGeneration: return "end";
        case StopReason::MaxTokens: return "max_tokens";
        case StopReason::ContextFull: return "context_full";
        case StopReason::StopString: return "stop_string";
        case StopReason::Cancelled: return "cancelled";
    }
    return "?";
}

// What one call runs with: where its output goes, and the thinking closer for chat().
struct Generator::State {
    OutputSink sink;
    GenerateResult* result = nullptr;
    std::string thinking_closer;
};

Generator::Generator(Context& ctx) : ctx_(ctx) {}

void Generator::reset() {
    cached_.clear();
    ctx_.clear();
}

GenerateResult Generator::generate(std::span<const int32_t> prompt, const GenerateOptions& options,
                                   const std::function<bool(std::string_view)>& on_text) {
    GenerateResult r;
    State st;
    st.sink.on_text = &on_text;
    st.sink.result = &r;
    st.result = &r;
    run(prompt, options, st);
    return r;
}

GenerateResult Generator::chat(const ChatFormat& format, const ChatPrompt& prompt, const GenerateOptions& options,
                               const std::function<bool(const ReplyEvent&)>& on_event) {
    GenerateResult r;
    // JSON output is read as plain text (a JSON string may hold what looks like a tool call).
    ReplyParser parser = options.json_schema.empty() ? format.parser(prompt.text, options.reply) : ReplyParser::plain();
    State st;
    st.sink.parser = &parser;
    st.sink.on_event = &on_event;
    st.sink.result = &r;
    st.result = &r;
    GenerateOptions opts = options;
    const std::string& end_turn = format.end_turn();
    if (!end_turn.empty() && std::find(opts.stop.begin(), opts.stop.end(), end_turn) == opts.stop.end()) opts.stop.push_back(end_turn);
    if (opts.thinking_budget >= 0) st.thinking_closer = format.thinking_closer();
    run(prompt.tokens, opts, st);
    // A built-in template's end-of-turn text ends the turn like an end-of-generation token.
    if (r.stop == StopReason::StopString && !end_turn.empty() && r.stop_string == end_turn) {
        r.stop = StopReason::EndOfGeneration;
        r.stop_string.clear();
    }
    return r;
}

void Generator::run(std::span<const int32_t> prompt, const GenerateOptions& o, State& st) {
    GenerateResult& r = *st.result;
    const Tokenizer& tok = ctx_.model().tokenizer();
    const int64_t n_ctx = ctx_.n_ctx();
    r.n_prompt = static_cast<int64_t>(prompt.size());
    if (prompt.empty()) throw Error("generate: the prompt is empty");
    if (r.n_prompt >= n_ctx)
        throw Error(fmt::format("generate: the prompt is {} tokens and the context holds {}: the answer needs at least one more",
                                prompt.size(), n_ctx));
    // A bad schema is refused before any work.
    if (!o.json_schema.empty()) {
        (void)plan_json(o.json_schema);
        if (!json_vocab_) json_vocab_ = std::make_shared<const JsonVocab>(JsonVocab::build(tok));
    }
    auto cancelled = [&] { return o.cancel && o.cancel->load(std::memory_order_relaxed); };

    // Prefix reuse: keep what the context holds of this prompt, always re-decoding at least the
    // last prompt token (its logits start the generation).
    size_t keep = 0;
    const size_t n_common = std::min({cached_.size(), prompt.size(), static_cast<size_t>(ctx_.n_past())});
    while (keep < n_common && cached_[keep] == prompt[keep]) ++keep;
    if (keep == prompt.size()) --keep;
    keep = static_cast<size_t>(ctx_.truncate(static_cast<int64_t>(keep)));  // 0 when a sliding window lost it
    cached_.resize(keep);
    r.n_reused = static_cast<int64_t>(keep);

    const auto t_prompt = Clock::now();
    const size_t chunk = static_cast<size_t>(std::max<int64_t>(1, o.prompt_chunk));
    for (size_t i = keep; i < prompt.size(); i += chunk) {
        const size_t n = std::min(chunk, prompt.size() - i);
        try {
            ctx_.decode(prompt.subspan(i, n));
        } catch (...) {
            reset();
            throw;
        }
        cached_.insert(cached_.end(), prompt.begin() + static_cast<std::ptrdiff_t>(i),
                       prompt.begin() + static_cast<std::ptrdiff_t>(i + n));
        if (o.on_prompt) o.on_prompt(static_cast<int64_t>(i + n - keep), static_cast<int64_t>(prompt.size() - keep));
        if (cancelled()) {
            r.stop = StopReason::Cancelled;
            r.prompt_ms = ms_since(t_prompt);
            return;
        }
    }
    r.prompt_ms = ms_since(t_prompt);

    // The generation: the per-sequence step (runtime/sequence.h) on this context alone.
    const auto t_gen = Clock::now();
    Sequence seq(tok, prompt, o, static_cast<int32_t>(ctx_.n_vocab()), n_ctx, ctx_.n_past(), st.sink, r, st.thinking_closer,
                 json_vocab_.get());
    r.seed = seq.seed();
    for (;;) {
        const Sequence::Next nx = seq.step(ctx_.logits(), ctx_.n_past());
        if (!nx.tokens.empty()) {
            try {
                ctx_.decode(nx.tokens);
            } catch (...) {
                reset();
                throw;
            }
            cached_.insert(cached_.end(), nx.tokens.begin(), nx.tokens.end());
        }
        if (nx.last) break;
    }
    seq.finish();
    r.generate_ms = ms_since(t_gen);
}

}  // namespace kiln
