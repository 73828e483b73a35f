// The one generation step of kiln: what a sequence does between two forward passes, whoever drives
// it. kiln::Generator (kiln/generator.h) drives one sequence on its Context; kiln::ServingEngine
// (kiln/serving.h) drives one per slot and batches their single-token decodes. Both:
//
//   Sequence seq(tokenizer, prompt, options, ctx.n_vocab(), ctx.n_ctx(), ctx.n_past(), sink, result, thinking_closer, json_vocab);
//   for (;;) {
//       const Sequence::Next nx = seq.step(ctx.logits(), ctx.n_past());
//       if (!nx.tokens.empty()) ctx.decode(nx.tokens);   // the driver's own way (batched or not)
//       if (nx.last) break;
//   }
//   seq.finish();
//
// step() does the sampling (or the JSON plan's forced text and masked sampling), max tokens,
// end-of-generation tokens, stop strings (held back until they are certain), the thinking budget
// (the family's end of thinking inserted), log-probabilities and cancellation, and hands the
// released text to the sink: the caller's text callback, or the reply parser and its events.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/chat.h"
#include "kiln/generator.h"
#include "kiln/sampler.h"
#include "kiln/tokenizer.h"
#include "runtime/json_output.h"
#include "runtime/stop_matcher.h"

namespace kiln {

// Where released text goes: straight to the caller (on_text), or through the output parser into
// events (on_event). The result collects everything; the callbacks see it until one returns false
// or the sequence is cancelled, and are not called again.
struct OutputSink {
    const std::function<bool(std::string_view)>* on_text = nullptr;
    ReplyParser* parser = nullptr;  // set: events to on_event, collected into result->reply
    const std::function<bool(const ReplyEvent&)>* on_event = nullptr;
    GenerateResult* result = nullptr;
    std::vector<ReplyEvent> events;  // reused: one buffer for the whole reply
    bool in_thinking = false;        // the last event was reasoning (for the thinking budget)
    bool stopped = false;            // a callback returned false, or the sequence was cancelled

    bool deliver(std::string_view text);  // false once stopped
    bool finish();                        // the parser's held text
private:
    bool emit();
};

class Sequence {
public:
    // n_vocab: the logits' row size. prompt: the tokens the context holds (the sampler's
    // penalties and the detokenizer see them first); n_past: how many that is. thinking_closer: the text that ends reasoning (chat with a
    // thinking budget), else empty. json_vocab: needed when options.json_schema is set (the
    // schema is planned here: kiln::Error when it is not a JSON object).
    Sequence(const Tokenizer& tok, std::span<const int32_t> prompt, const GenerateOptions& options, int32_t n_vocab,
             int64_t n_ctx, int64_t n_past, OutputSink& sink, GenerateResult& result, std::string thinking_closer,
             const JsonVocab* json_vocab);

    struct Next {
        std::span<const int32_t> tokens;  // to decode next (valid until the next step)
        bool last = false;                // decode them (if any), then finish(): the sequence is done
    };
    // logits: those of the last token decoded; n_past: the tokens the context holds.
    Next step(std::span<const float> logits, int64_t n_past);
    // Releases what is held (unless a stop string ended the output) and finishes the parser.
    void finish();

    uint64_t seed() const { return sampler_.seed(); }
    // A second cancel flag (a serving engine's shutdown) besides GenerateOptions::cancel.
    void set_stop_flag(const std::atomic<bool>* flag) { stop_flag_ = flag; }
    // Tests of front ends: these tokens are the output instead of sampled ones (the last repeats).
    void set_script(const std::vector<int32_t>* script) { script_ = script; }

private:
    bool cancelled() const;
    void release(const std::string& text, bool& hit);
    Next json_step(std::span<const float> logits);
    Next done() { return Next{{}, true}; }

    const Tokenizer& tok_;
    const GenerateOptions& o_;
    const int64_t n_ctx_;
    int64_t limit_;
    OutputSink& sink_;
    GenerateResult& r_;
    std::string closer_text_;
    Sampler sampler_;
    Detokenizer detok_;
    StopMatcher stops_;
    std::unique_ptr<JsonSteps> json_;
    const std::atomic<bool>* stop_flag_ = nullptr;
    const std::vector<int32_t>* script_ = nullptr;
    int64_t thinking_tokens_ = 0;
    bool budget_spent_ = false;
    bool check_budget_ = false;  // a sampled token was handed out to decode: count it, then check the budget
    std::vector<int32_t> out_;   // the tokens handed out by the last step
    std::string text_;
};

}  // namespace kiln
