// kiln::Generator (kiln/generator.h): the generation loop of kiln run and kiln chat.
#include "kiln/generator.h"

#include <algorithm>
#include <chrono>
#include <limits>

#include <fmt/format.h>

#include "kiln/error.h"
#include "kiln/tokenizer.h"
#include "runtime/stop_matcher.h"

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

// Where released text goes: straight to the caller (generate), or through the output parser
// into events (chat). deliver() returns false when the caller cancels.
struct Generator::Sink {
    const std::function<bool(std::string_view)>* on_text = nullptr;
    ReplyParser* parser = nullptr;
    const std::function<bool(const ReplyEvent&)>* on_event = nullptr;
    GenerateResult* result = nullptr;
    std::vector<ReplyEvent> events;  // reused: one buffer for the whole reply
    bool in_thinking = false;        // the last event was reasoning (for the thinking budget)
    bool stopped = false;            // a callback returned false: it is not called again

    // The result collects everything; the callbacks see it until one returns false.
    bool deliver(std::string_view text) {
        if (text.empty()) return !stopped;
        if (!parser) {
            result->text.append(text);
            if (!stopped && *on_text && !(*on_text)(text)) stopped = true;
            return !stopped;
        }
        events.clear();
        parser->feed(text, events);
        return emit();
    }
    bool finish() {
        if (!parser) return !stopped;
        events.clear();
        parser->finish(events);
        return emit();
    }
    bool emit() {
        for (const ReplyEvent& e : events) {
            if (e.kind == ReplyEvent::Kind::Reasoning) in_thinking = true;
            else if (e.kind == ReplyEvent::Kind::Text || e.kind == ReplyEvent::Kind::ToolCallStart) in_thinking = false;
            result->reply.apply(e);
            if (!stopped && *on_event && !(*on_event)(e)) stopped = true;
        }
        return !stopped;
    }
};

Generator::Generator(Context& ctx) : ctx_(ctx) {}

void Generator::reset() {
    cached_.clear();
    ctx_.clear();
}

GenerateResult Generator::generate(std::span<const int32_t> prompt, const GenerateOptions& options,
                                   const std::function<bool(std::string_view)>& on_text) {
    GenerateResult r;
    Sink sink;
    sink.on_text = &on_text;
    sink.result = &r;
    run(prompt, options, sink, r, {});
    return r;
}

GenerateResult Generator::chat(const ChatFormat& format, const ChatPrompt& prompt, const GenerateOptions& options,
                               const std::function<bool(const ReplyEvent&)>& on_event) {
    GenerateResult r;
    ReplyParser parser = format.parser(prompt.text);
    Sink sink;
    sink.parser = &parser;
    sink.on_event = &on_event;
    sink.result = &r;
    GenerateOptions opts = options;
    const std::string& end_turn = format.end_turn();
    if (!end_turn.empty()) opts.stop.push_back(end_turn);
    std::string closer;
    if (opts.thinking_budget >= 0) closer = format.thinking_closer();
    run(prompt.tokens, opts, sink, r, closer);
    // A built-in template's end-of-turn text ends the turn like an end-of-generation token.
    if (r.stop == StopReason::StopString && !end_turn.empty() && r.stop_string == end_turn) {
        r.stop = StopReason::EndOfGeneration;
        r.stop_string.clear();
    }
    return r;
}

void Generator::run(std::span<const int32_t> prompt, const GenerateOptions& o, Sink& sink, GenerateResult& r,
                    const std::string& thinking_closer) {
    const Tokenizer& tok = ctx_.model().tokenizer();
    const int64_t n_ctx = ctx_.n_ctx();
    r.n_prompt = static_cast<int64_t>(prompt.size());
    if (prompt.empty()) throw Error("generate: the prompt is empty");
    if (r.n_prompt >= n_ctx)
        throw Error(fmt::format("generate: the prompt is {} tokens and the context holds {}: the answer needs at least one more",
                                prompt.size(), n_ctx));
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

    Sampler sampler(o.sampler, static_cast<int32_t>(ctx_.n_vocab()));
    r.seed = sampler.seed();
    for (int32_t t : prompt) sampler.accept(t);
    // The detokenizer sees the prompt first (its output discarded), so the first generated piece
    // keeps its leading space and a partial UTF-8 character carries over.
    Detokenizer detok(tok);
    for (int32_t t : prompt) (void)detok.push(t);
    StopMatcher stops(o.stop);
    const int64_t limit = o.max_tokens < 0 ? std::numeric_limits<int64_t>::max() : o.max_tokens;
    int64_t thinking_tokens = 0;
    bool budget_spent = false;
    auto release = [&](const std::string& text, bool& hit) { sink.deliver(stops.push(text, hit, r.stop_string)); };

    const auto t_gen = Clock::now();
    r.stop = StopReason::MaxTokens;
    while (true) {
        if (sink.stopped || cancelled()) {
            r.stop = StopReason::Cancelled;
            break;
        }
        if (r.n_generated >= limit) break;
        const int32_t next = sampler.sample(ctx_.logits());
        sampler.accept(next);
        ++r.n_generated;
        if (!o.ignore_eos && tok.is_eog(next)) {
            r.stop = StopReason::EndOfGeneration;
            break;
        }
        bool hit = false;
        release(detok.push(next), hit);
        if (hit) {
            r.stop = StopReason::StopString;
            break;
        }
        if (r.n_generated >= limit) break;
        if (ctx_.n_past() >= n_ctx) {
            r.stop = StopReason::ContextFull;
            break;
        }
        ctx_.decode(std::span<const int32_t>(&next, 1));
        cached_.push_back(next);
        if (sink.in_thinking) ++thinking_tokens;
        if (!thinking_closer.empty() && !budget_spent && sink.in_thinking && thinking_tokens >= o.thinking_budget) {
            // The reasoning budget is spent: the family's end of thinking goes into the context and
            // the output, and the answer follows.
            budget_spent = true;
            const std::vector<int32_t> closer = tok.encode(thinking_closer, /*add_special=*/false, /*parse_special=*/true);
            const auto n = static_cast<int64_t>(closer.size());
            if (n > 0 && r.n_generated + n < limit && ctx_.n_past() + n < n_ctx) {
                ctx_.decode(closer);
                cached_.insert(cached_.end(), closer.begin(), closer.end());
                std::string text;
                for (int32_t t : closer) {
                    sampler.accept(t);
                    text += detok.push(t);
                }
                r.n_generated += n;
                release(text, hit);
                if (hit) {
                    r.stop = StopReason::StopString;
                    break;
                }
            }
        }
    }
    // What is held goes out (after a cancel too: the reply so far is kept), unless a stop string
    // ended the output.
    if (r.stop != StopReason::StopString) {
        bool hit = false;
        std::string rest = stops.push(detok.flush(), hit, r.stop_string);
        if (hit && r.stop != StopReason::Cancelled) r.stop = StopReason::StopString;
        if (!hit) rest += stops.flush();
        sink.deliver(rest);
    }
    sink.finish();
    if (sink.stopped) r.stop = StopReason::Cancelled;
    r.generate_ms = ms_since(t_gen);
}

}  // namespace kiln
