// The one per-sequence generation step (runtime/sequence.h).
#include "runtime/sequence.h"

#include <algorithm>
#include <limits>

#include "kiln/error.h"

namespace kiln {

// ---- OutputSink -------------------------------------------------------------------------------

bool OutputSink::deliver(std::string_view text) {
    if (text.empty()) return !stopped;
    if (!parser) {
        result->text.append(text);
        if (!stopped && on_text && *on_text && !(*on_text)(text)) stopped = true;
        return !stopped;
    }
    events.clear();
    parser->feed(text, events);
    return emit();
}

bool OutputSink::finish() {
    if (!parser) return !stopped;
    events.clear();
    parser->finish(events);
    return emit();
}

bool OutputSink::emit() {
    for (const ReplyEvent& e : events) {
        if (e.kind == ReplyEvent::Kind::Reasoning) in_thinking = true;
        else if (e.kind == ReplyEvent::Kind::Text || e.kind == ReplyEvent::Kind::ToolCallStart) in_thinking = false;
        result->reply.apply(e);
        if (!stopped && on_event && *on_event && !(*on_event)(e)) stopped = true;
    }
    return !stopped;
}

// ---- Sequence ---------------------------------------------------------------------------------

Sequence::Sequence(const Tokenizer& tok, std::span<const int32_t> prompt, const GenerateOptions& options, int32_t n_vocab,
                   int64_t n_ctx, int64_t n_past, OutputSink& sink, GenerateResult& result, std::string thinking_closer,
                   const JsonVocab* json_vocab)
    : tok_(tok),
      o_(options),
      n_ctx_(n_ctx),
      limit_(options.max_tokens < 0 ? std::numeric_limits<int64_t>::max() : options.max_tokens),
      sink_(sink),
      r_(result),
      closer_text_(std::move(thinking_closer)),
      sampler_(options.sampler, n_vocab),
      detok_(tok),
      stops_(options.stop) {
    if (!options.json_schema.empty()) {
        if (!json_vocab) throw Error("generate: a JSON schema needs the vocabulary's JSON tables");
        json_ = std::make_unique<JsonSteps>(plan_json(options.json_schema), *json_vocab, tok);
        // Forced text is decoded whole: it must fit in what the context has left.
        limit_ = std::min(limit_, n_ctx - n_past);
    }
    for (int32_t t : prompt) sampler_.accept(t);
    // The detokenizer sees the prompt first (its output discarded), so the first generated piece
    // keeps its leading space and a partial UTF-8 character carries over.
    for (int32_t t : prompt) (void)detok_.push(t);
    r_.stop = StopReason::MaxTokens;
}

bool Sequence::cancelled() const {
    return sink_.stopped || (o_.cancel && o_.cancel->load(std::memory_order_relaxed)) ||
           (stop_flag_ && stop_flag_->load(std::memory_order_relaxed));
}

void Sequence::release(const std::string& text, bool& hit) { sink_.deliver(stops_.push(text, hit, r_.stop_string)); }

Sequence::Next Sequence::step(std::span<const float> logits, int64_t n_past) {
    if (json_) return json_step(logits);
    if (check_budget_) {
        check_budget_ = false;
        if (sink_.in_thinking) ++thinking_tokens_;
        if (!closer_text_.empty() && o_.thinking_budget >= 0 && !budget_spent_ && sink_.in_thinking &&
            thinking_tokens_ >= o_.thinking_budget) {
            // The reasoning budget is spent: the family's end of thinking goes into the context and
            // the output, and the answer follows.
            budget_spent_ = true;
            out_ = tok_.encode(closer_text_, /*add_special=*/false, /*parse_special=*/true);
            const auto n = static_cast<int64_t>(out_.size());
            if (n > 0 && r_.n_generated + n < limit_ && n_past + n < n_ctx_) {
                std::string text;
                for (int32_t t : out_) {
                    sampler_.accept(t);
                    text += detok_.push(t);
                }
                r_.n_generated += n;
                bool hit = false;
                release(text, hit);
                if (hit) r_.stop = StopReason::StopString;
                return Next{out_, hit};
            }
        }
    }
    if (cancelled()) {
        r_.stop = StopReason::Cancelled;
        return done();
    }
    if (r_.n_generated >= limit_) return done();
    const int32_t next = script_ && !script_->empty()
                             ? (*script_)[std::min(static_cast<size_t>(r_.n_generated), script_->size() - 1)]
                             : sampler_.sample(logits);
    sampler_.accept(next);
    ++r_.n_generated;
    if (o_.n_logprobs >= 0 && !tok_.is_eog(next)) {
        TokenLogprobs info{next, 0.0f, {}};
        info.logprob = token_logprobs(logits, next, static_cast<size_t>(o_.n_logprobs), info.top);
        if (o_.on_logprobs) o_.on_logprobs(info);
        r_.logprobs.push_back(std::move(info));
    }
    if (!o_.ignore_eos && tok_.is_eog(next)) {
        r_.stop = StopReason::EndOfGeneration;
        return done();
    }
    bool hit = false;
    release(detok_.push(next), hit);
    out_.assign(1, next);
    if (hit) {
        // The sampled token goes into the context all the same (when there is room), so what the
        // context holds continues the text a next turn repeats.
        r_.stop = StopReason::StopString;
        return n_past < n_ctx_ ? Next{out_, true} : done();
    }
    if (r_.n_generated >= limit_) return done();
    if (n_past >= n_ctx_) {
        r_.stop = StopReason::ContextFull;
        return done();
    }
    check_budget_ = true;
    return Next{out_, false};
}

// The JSON plan: forced text decoded as is, values sampled with the tokens that would break the
// JSON masked. Stops at max_tokens (what fit is released) or when the plan is complete.
Sequence::Next Sequence::json_step(std::span<const float> logits) {
    if (cancelled()) {
        r_.stop = StopReason::Cancelled;
        return done();
    }
    if (!json_->next(logits, sampler_, out_, text_)) {
        r_.stop = StopReason::EndOfGeneration;
        return done();
    }
    const size_t n = std::min<size_t>(out_.size(), static_cast<size_t>(std::max<int64_t>(0, limit_ - r_.n_generated)));
    for (size_t i = 0; i < n; ++i) sampler_.accept(out_[i]);
    r_.n_generated += static_cast<int64_t>(n);
    bool ok = true;
    if (n == out_.size()) ok = sink_.deliver(text_);
    else if (n > 0) ok = sink_.deliver(tok_.decode(std::span<const int32_t>(out_.data(), n)));
    const bool cut = n < out_.size();
    out_.resize(n);
    if (!ok) r_.stop = StopReason::Cancelled;
    return Next{out_, cut || !ok};
}

void Sequence::finish() {
    if (r_.stop == StopReason::Cancelled) sink_.stopped = true;  // no callback after a cancel
    // What is held goes out (into the result after a cancel), unless a stop string ended the output.
    if (!json_ && r_.stop != StopReason::StopString) {
        bool hit = false;
        std::string rest = stops_.push(detok_.flush(), hit, r_.stop_string);
        if (hit && r_.stop != StopReason::Cancelled) r_.stop = StopReason::StopString;
        if (!hit) rest += stops_.flush();
        sink_.deliver(rest);
    }
    sink_.finish();
    if (sink_.stopped) r_.stop = StopReason::Cancelled;
}

}  // namespace kiln
