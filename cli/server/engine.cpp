// kiln serve: slots, queue, prefix reuse and the generation loop.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string_view>
#include <limits>
#include <mutex>

#include <fmt/format.h>

#include "cli/server/server.h"
#include "cli/stop_matcher.h"
#include "chat/chat_parser.h"
#include "gguf/gguf.h"

namespace kiln::serve {

namespace {
using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

class PlainParser : public OutputParser {
public:
    void push(const std::string& delta, std::vector<Event>& out) override {
        if (!delta.empty()) out.push_back(Event{Event::Text, delta, {}, {}});
    }
    void finish(std::vector<Event>&) override {}
};

}  // namespace

std::unique_ptr<OutputParser> make_plain_parser() { return std::make_unique<PlainParser>(); }

namespace {
class FamilyParser : public OutputParser {
public:
    explicit FamilyParser(const chat::ParserOptions& o) : p_(o) {}
    void push(const std::string& delta, std::vector<Event>& out) override { convert(p_.feed(delta), out); }
    void finish(std::vector<Event>& out) override { convert(p_.finish(), out); }

private:
    static void convert(const std::vector<chat::ChatEvent>& in, std::vector<Event>& out) {
        using K = chat::ChatEvent::Kind;
        for (const auto& e : in) {
            switch (e.kind) {
                case K::Text: out.push_back(Event{Event::Text, e.text, {}, {}}); break;
                case K::Thinking: out.push_back(Event{Event::Thinking, e.text, {}, {}}); break;
                case K::ToolCallStart: out.push_back(Event{Event::ToolStart, {}, e.id, e.name}); break;
                case K::ToolCallArgs: out.push_back(Event{Event::ToolArgs, e.text, {}, {}}); break;
                case K::ToolCallEnd: out.push_back(Event{Event::ToolEnd, {}, {}, {}}); break;
                case K::Warning: fmt::print(stderr, "kiln serve: model output: {}\n", e.text); break;
            }
        }
    }
    chat::ChatParser p_;
};
}  // namespace

std::unique_ptr<OutputParser> make_chat_parser(chat::ParserFamily family, const std::string& prompt, const std::string& id_prefix,
                                               const std::string& output_prefix, const std::string& tools_json) {
    chat::ParserOptions o;
    o.family = family;
    o.tools_json = tools_json;
    o.starts_in_thinking =
        chat::prompt_opens_thinking(std::string_view(prompt).substr(0, prompt.size() - std::min(prompt.size(), output_prefix.size())));
    o.tool_call_id_prefix = id_prefix;
    auto p = std::make_unique<FamilyParser>(o);
    // An opened tool call: nothing is complete yet, so no event comes out of it.
    std::vector<Event> none;
    if (!output_prefix.empty()) p->push(output_prefix, none);
    return p;
}

// Prompt tokens per forward pass. Measured with kiln bench on the CPU (2 threads, tiled prompt
// attention): TinyLlama-1.1B Q4_K_M pp1024 146 / 278 / 307 t/s at batches of 256 / 512 / 1024,
// an 18K-token prompt on qwen3-vocab-tiny 32.8K / 33.9K / 34.8K t/s. Larger batches grow the
// activations (batch x FFN width floats) for a few percent more.
constexpr int64_t kPrefillBatch = 1024;

struct Engine::Slot {
    int id = 0;
    std::unique_ptr<Context> ctx;
    std::vector<int32_t> tokens;  // what the context holds
    bool busy = false;
    uint64_t last_used = 0;
};

Engine::Engine(Model model, int64_t n_ctx, int n_parallel, int max_queue, int n_threads, PrefixCacheOptions cache,
               const std::string& backend, int device, KvType kv_type_k, KvType kv_type_v)
    : model_(std::move(model)), max_queue_(max_queue), n_parallel_(std::max(1, n_parallel)) {
    {
        auto f = gguf::File::open(model_.info().path);
        if (const gguf::Value* t = f->find("tokenizer.chat_template"); t && t->is_string())
            set_chat_template(ChatTemplate::from_gguf(*f), "");
    }
    ctx_options_.n_ctx = n_ctx;
    ctx_options_.n_threads = n_threads;
    ctx_options_.backend = backend;
    ctx_options_.device = device;
    ctx_options_.kv_type_k = kv_type_k;
    ctx_options_.kv_type_v = kv_type_v;
    ctx_options_.n_batch = kPrefillBatch;
    for (int i = 0; i < n_parallel_; ++i) {
        auto s = std::make_unique<Slot>();
        s->id = i;
        s->ctx = std::make_unique<Context>(model_, ctx_options_);
        // "auto" chose for the first context; the others follow it (a context that does not fit
        // on the GPU is then refused, not quietly put on the CPU where it cannot join the batches).
        if (i == 0) ctx_options_.backend = s->ctx->backend_name();
        slots_.push_back(std::move(s));
    }
    // On Vulkan the contexts share one backend: one copy of the weights on the device, batched
    // decode steps; each slot adds its KV cache only.
    kv_bytes_ = slots_[0]->ctx->kv_bytes();
    cache_ = std::make_unique<PrefixCache>(model_, std::move(cache));
    n_ctx_ = slots_[0]->ctx->n_ctx();
    step_queue_.reserve(static_cast<size_t>(n_parallel_));
    step_batch_.reserve(static_cast<size_t>(n_parallel_));
    step_ctxs_.reserve(static_cast<size_t>(n_parallel_));
    step_toks_.reserve(static_cast<size_t>(n_parallel_));
    // For tests of the output path (parsers, SSE): every generation replays this text's tokens,
    // then end of text. Models with random weights never produce a tool call on their own.
    // Several outputs separated by the ASCII record separator (\x1e) are used in turn, one per
    // generation (then from the first again): a tool call, then the answer after its result.
    if (const char* s = std::getenv("KILN_SERVE_SCRIPTED_OUTPUT"); s && *s) {
        const std::string all = s;
        for (size_t pos = 0;;) {
            const size_t end = all.find('\x1e', pos);
            std::vector<int32_t> t = model_.tokenizer().encode(all.substr(pos, end == std::string::npos ? std::string::npos : end - pos),
                                                               /*add_special=*/false, /*parse_special=*/true);
            t.push_back(model_.tokenizer().eos());
            scripts_.push_back(std::move(t));
            if (end == std::string::npos) break;
            pos = end + 1;
        }
        fmt::print(stderr, "kiln serve: KILN_SERVE_SCRIPTED_OUTPUT is set: answers replay it ({} output(s))\n", scripts_.size());
    }
}

Engine::~Engine() = default;

const char* Engine::backend_name() const { return slots_[0]->ctx->backend_name(); }

size_t Engine::flush_cache() { return cache_->flush(); }

void Engine::save_blocks(Slot& s) {
    try {
        cache_->save(*s.ctx, s.tokens);
    } catch (const std::exception& ex) {
        fmt::print(stderr, "kiln serve: prefix cache: saving blocks failed: {}\n", ex.what());
    }
}

std::vector<int32_t> Engine::tokenize_prompt(const std::string& text) const {
    std::vector<int32_t> t = tokenizer().encode(text, /*add_special=*/true, /*parse_special=*/true);
    if (t.empty()) throw bad_request("the prompt is empty");
    if (static_cast<int64_t>(t.size()) >= n_ctx_)
        throw bad_request(fmt::format("prompt is too long: {} tokens > {} maximum", t.size(), n_ctx_ - 1));
    return t;
}

void Engine::stop() {
    stopping_ = true;
    {
        std::lock_guard lk(mu_);  // a waiter checks stopping_ under mu_, so none misses the wake-up
    }
    cv_.notify_all();
}

void Engine::set_chat_template(ChatTemplate t, std::string end_turn) {
    tmpl_ = std::make_unique<ChatTemplate>(std::move(t));
    family_ = chat::detect_family(tmpl_->source(), model_.info().arch);
    end_turn_ = std::move(end_turn);
}

const ChatTemplate& Engine::chat_template() const {
    if (!tmpl_) throw ApiError(400, "invalid_request_error", "the model has no chat template (start kiln serve with --chat-template)");
    return *tmpl_;
}

Engine::Admission::Admission(Engine& e) : e_(e) {
    if (e_.stopping()) throw ApiError(503, "overloaded_error", "kiln serve is shutting down");
    const int64_t n = ++e_.metrics_.queued;
    if (n > static_cast<int64_t>(e_.n_parallel_) + e_.max_queue_) {
        --e_.metrics_.queued;
        throw ApiError(529, "overloaded_error", "the server is overloaded: every slot is busy and the queue is full");
    }
}
Engine::Admission::~Admission() { --e_.metrics_.queued; }

struct Engine::StepRequest {
    Context* ctx;
    int32_t token;
    bool done = false;
    std::exception_ptr error;
};

void Engine::step(Context& ctx, int32_t token) {
    if (n_parallel_ == 1) {
        ctx.decode(std::span<const int32_t>(&token, 1));
        return;
    }
    StepRequest me{&ctx, token, false, nullptr};
    std::unique_lock lk(step_mu_);
    step_queue_.push_back(&me);
    step_cv_.notify_all();
    while (!me.done) {
        if (step_running_) {
            step_cv_.wait(lk);
            continue;
        }
        // Lead this step: give the other generating requests a moment to hand in their tokens
        // (they sample right after the last step, so they come within microseconds).
        step_running_ = true;
        step_cv_.wait_for(lk, std::chrono::milliseconds(5),
                          [&] { return static_cast<int>(step_queue_.size()) >= generating_; });
        step_batch_.clear();
        std::swap(step_batch_, step_queue_);
        lk.unlock();
        step_ctxs_.clear();
        step_toks_.clear();
        for (StepRequest* r : step_batch_) {
            step_ctxs_.push_back(r->ctx);
            step_toks_.push_back(r->token);
        }
        const uint64_t n = step_batch_.size();
        uint64_t passes = n;  // forward passes run: 1 when the tokens went through one batch
        try {
            passes = decode_batch(step_ctxs_, step_toks_);
        } catch (...) {
            // One request's problem stays its own: decode each alone.
            for (StepRequest* r : step_batch_) {
                try {
                    r->ctx->decode(std::span<const int32_t>(&r->token, 1));
                } catch (...) {
                    r->error = std::current_exception();
                }
            }
        }
        // What ran, not what was handed in: n tokens in one pass, or n passes of one token.
        metrics_.batch_steps += passes;
        metrics_.batch_tokens += n;
        const uint64_t size = passes == 1 ? n : 1;
        for (uint64_t m = metrics_.batch_max.load(); size > m && !metrics_.batch_max.compare_exchange_weak(m, size);) {
        }
        lk.lock();
        for (StepRequest* r : step_batch_) r->done = true;
        step_running_ = false;
        step_cv_.notify_all();
    }
    if (me.error) std::rethrow_exception(me.error);
}

Engine::Slot* Engine::acquire(const std::vector<int32_t>& prompt, const std::function<bool()>& keepalive) {
    std::unique_lock lk(mu_);
    for (;;) {
        // The free slot with the longest common prefix (ties: the least recently used). What it
        // loses is in the prefix cache already (every full block it decoded was saved).
        Slot* best = nullptr;
        size_t best_lcp = 0;
        for (auto& s : slots_) {
            if (s->busy) continue;
            size_t l = 0;
            const size_t n = std::min(s->tokens.size(), prompt.size());
            while (l < n && s->tokens[l] == prompt[l]) ++l;
            if (!best || l > best_lcp || (l == best_lcp && s->last_used < best->last_used)) {
                best = s.get();
                best_lcp = l;
            }
        }
        if (best) {
            best->busy = true;
            best->last_used = ++clock_;
            ++metrics_.active;
            return best;
        }
        if (stopping_) return nullptr;
        cv_.wait_for(lk, std::chrono::seconds(1));
        if (stopping_) return nullptr;
        lk.unlock();
        const bool alive = keepalive();
        lk.lock();
        if (!alive) return nullptr;
    }
}

void Engine::release(Slot* s) {
    {
        std::lock_guard lk(mu_);
        s->busy = false;
        --metrics_.active;
    }
    cv_.notify_one();
}

GenResult Engine::generate(const GenParams& p, OutputParser& parser, const std::function<void(int64_t)>& on_start,
                           const std::function<bool()>& keepalive, const EmitFn& emit) {
    GenResult r;
    r.n_prompt = static_cast<int64_t>(p.prompt.size());
    Slot* slot = acquire(p.prompt, keepalive);
    if (!slot) {
        r.stop_reason = stopping_ ? "shutdown" : "cancelled";
        ++metrics_.cancelled;
        return r;
    }
    struct Release {
        Engine* e;
        Slot* s;
        ~Release() { e->release(s); }
    } release_guard{this, slot};
    Context& ctx = *slot->ctx;

    // The prefill is timed from here: restoring cached blocks is part of it.
    const auto t_prefill = Clock::now();
    // Prefix reuse: keep the common prefix, always re-decode at least the last prompt token (its
    // logits start the generation).
    size_t keep = 0;
    {
        const size_t n = std::min(slot->tokens.size(), p.prompt.size());
        while (keep < n && slot->tokens[keep] == p.prompt[keep]) ++keep;
        if (keep == p.prompt.size()) --keep;
        keep = std::min<size_t>(keep, static_cast<size_t>(ctx.n_past()));
    }
    // A sliding-window ring may have overwritten what the prefix needs: truncate() then keeps 0.
    keep = static_cast<size_t>(ctx.truncate(static_cast<int64_t>(keep)));
    slot->tokens.resize(keep);
    // The prefix cache may hold more of the prompt (the last token is always decoded).
    try {
        keep = static_cast<size_t>(cache_->restore(ctx, p.prompt, static_cast<int64_t>(p.prompt.size()) - 1));
    } catch (const std::exception& ex) {
        fmt::print(stderr, "kiln serve: prefix cache: restore failed ({}); computing the prompt\n", ex.what());
        ctx.clear();
        keep = 0;
    }
    slot->tokens.assign(p.prompt.begin(), p.prompt.begin() + static_cast<std::ptrdiff_t>(keep));
    r.n_cached = static_cast<int64_t>(keep);
    metrics_.prompt_tokens += p.prompt.size();
    metrics_.cached_tokens += keep;
    if (keep > 0) ++metrics_.cache_hits;
    on_start(r.n_cached);

    auto last_tick = Clock::now();
    constexpr size_t kBatch = static_cast<size_t>(kPrefillBatch);
    // Chunks end at multiples of kBatch (a multiple of the cache's blocks): each chunk's full
    // blocks are saved while the sliding-window rings still hold their windows.
    for (size_t i = keep, n = 0; i < p.prompt.size(); i += n) {
        n = std::min(kBatch - i % kBatch, p.prompt.size() - i);
        try {
            ctx.decode(std::span<const int32_t>(p.prompt.data() + i, n));
        } catch (...) {
            ctx.clear();
            slot->tokens.clear();
            throw;
        }
        slot->tokens.insert(slot->tokens.end(), p.prompt.begin() + static_cast<std::ptrdiff_t>(i),
                            p.prompt.begin() + static_cast<std::ptrdiff_t>(i + n));
        save_blocks(*slot);
        if (stopping_) {
            r.stop_reason = "shutdown";
            return r;
        }
        if (std::chrono::duration<double>(Clock::now() - last_tick).count() >= 1.0) {
            last_tick = Clock::now();
            if (!keepalive()) {
                r.stop_reason = "cancelled";
                ++metrics_.cancelled;
                return r;
            }
        }
    }
    r.prefill_ms = ms_since(t_prefill);
    metrics_.prefill_us += static_cast<uint64_t>(r.prefill_ms * 1000);
    metrics_.prefill_n += p.prompt.size() - keep;

    const Tokenizer& tok = tokenizer();
    Sampler sampler(p.sampler, static_cast<int32_t>(ctx.n_vocab()));
    for (int32_t t : p.prompt) sampler.accept(t);
    Detokenizer detok(tok);
    for (int32_t t : p.prompt) (void)detok.push(t);
    cli::StopMatcher stops(p.stop);
    std::vector<Event> events;
    bool cancelled = false;
    bool in_thinking = false;  // the last event was reasoning (for the thinking budget)
    auto deliver = [&](const std::string& text) {
        events.clear();
        parser.push(text, events);
        for (const Event& e : events) {
            if (e.kind == Event::ToolEnd) r.any_tool_call = true;
            if (e.kind == Event::Thinking) in_thinking = true;
            else if (e.kind == Event::Text || e.kind == Event::ToolStart) in_thinking = false;
            if (!emit(e)) cancelled = true;
        }
        if (stopping_) cancelled = true;
    };

    const int64_t room = n_ctx_ - ctx.n_past();
    const int64_t limit = p.max_tokens < 0 ? room : std::min(p.max_tokens, room);
    const auto t_gen = Clock::now();
    r.stop_reason = "max_tokens";
    if (!p.json_plan.empty()) {
        generate_json(p, *slot, sampler, limit, r, [&](const std::string& text) {
            deliver(text);
            return !cancelled;
        });
    } else {
        // Counted while in the decode loop: a batch leader waits for this many tokens at most.
        struct Generating {
            Engine* e;
            explicit Generating(Engine* en) : e(en) {
                std::lock_guard lk(e->step_mu_);
                ++e->generating_;
            }
            ~Generating() {
                {
                    std::lock_guard lk(e->step_mu_);
                    --e->generating_;
                }
                e->step_cv_.notify_all();
            }
        } generating{this};
        int64_t thinking_tokens = 0;
        bool budget_spent = false;
        static const std::vector<int32_t> kNoScript;
        const std::vector<int32_t>& script = scripts_.empty() ? kNoScript : scripts_[script_turn_++ % scripts_.size()];
        while (r.n_gen < limit && !cancelled) {
            if (stopping_.load(std::memory_order_relaxed)) {
                cancelled = true;
                break;
            }
            const int32_t next = script.empty() ? sampler.sample(ctx.logits())
                                                : script[std::min(static_cast<size_t>(r.n_gen), script.size() - 1)];
            sampler.accept(next);
            ++r.n_gen;
            if (p.n_logprobs >= 0 && !tok.is_eog(next)) {
                TokenLogprobs info{next, 0.0f, {}};
                info.logprob = token_logprobs(ctx.logits(), next, static_cast<size_t>(p.n_logprobs), info.top);
                if (p.on_logprobs) p.on_logprobs(info);
                r.logprobs.push_back(std::move(info));
            }
            if (tok.is_eog(next)) {
                r.stop_reason = "end";
                break;
            }
            bool hit = false;
            const std::string out = stops.push(detok.push(next), hit, r.stop_sequence);
            if (!out.empty()) deliver(out);
            if (hit) {
                r.stop_reason = "stop_sequence";
                // The sampled token is in the context so the slot's tokens stay in step.
                if (ctx.n_past() < n_ctx_) {
                    step(ctx, next);
                    slot->tokens.push_back(next);
                }
                break;
            }
            if (r.n_gen >= limit || ctx.n_past() >= n_ctx_) break;
            step(ctx, next);
            slot->tokens.push_back(next);
            if (in_thinking) ++thinking_tokens;
            if (p.thinking_budget >= 0 && !budget_spent && in_thinking && thinking_tokens >= p.thinking_budget) {
                // The reasoning budget is spent: the family's end of thinking goes into the context and
                // the output, and the answer follows.
                budget_spent = true;
                const std::vector<int32_t> closer = tok.encode(p.thinking_closer, /*add_special=*/false, /*parse_special=*/true);
                const auto n = static_cast<int64_t>(closer.size());
                if (n > 0 && r.n_gen + n < limit && ctx.n_past() + n < n_ctx_) {
                    ctx.decode(closer);
                    slot->tokens.insert(slot->tokens.end(), closer.begin(), closer.end());
                    std::string text;
                    for (int32_t t : closer) {
                        sampler.accept(t);
                        text += detok.push(t);
                    }
                    r.n_gen += n;
                    bool stop_hit = false;
                    const std::string shown = stops.push(text, stop_hit, r.stop_sequence);
                    if (!shown.empty()) deliver(shown);
                    in_thinking = false;
                    if (stop_hit) {
                        r.stop_reason = "stop_sequence";
                        break;
                    }
                }
            }
        }
        if (r.stop_reason != "stop_sequence" && !cancelled) {
            bool hit = false;
            std::string rest = stops.push(detok.flush(), hit, r.stop_sequence);
            if (hit) r.stop_reason = "stop_sequence";
            else rest += stops.flush();
            if (!rest.empty()) deliver(rest);
        }
    }
    if (!cancelled) {
        events.clear();
        parser.finish(events);
        for (const Event& e : events) {
            if (e.kind == Event::ToolEnd) r.any_tool_call = true;
            if (!emit(e)) cancelled = true;
        }
    }
    if (cancelled) {
        r.stop_reason = stopping_ ? "shutdown" : "cancelled";
        ++metrics_.cancelled;
    }
    // The template's end-of-turn text (added to every chat request's stops) ends the turn.
    if (r.stop_reason == "stop_sequence" && !end_turn_.empty() && r.stop_sequence == end_turn_) {
        r.stop_reason = "end";
        r.stop_sequence.clear();
    }
    r.decode_ms = ms_since(t_gen);
    save_blocks(*slot);  // the blocks the answer completed (the next turn's prompt repeats it)
    metrics_.gen_tokens += static_cast<uint64_t>(r.n_gen);
    metrics_.decode_us += static_cast<uint64_t>(r.decode_ms * 1000);
    return r;
}

const JsonVocab& Engine::json_vocab() {
    std::call_once(json_vocab_once_, [this] { json_vocab_ = std::make_unique<JsonVocab>(JsonVocab::build(tokenizer())); });
    return *json_vocab_;
}

// Generates p.json_plan: forced text is decoded as is, values are sampled with the tokens that
// would break the JSON masked. Leaves r.stop_reason "max_tokens" when the limit cuts it short.
void Engine::generate_json(const GenParams& p, Slot& slot, Sampler& sampler, int64_t limit, GenResult& r,
                           const std::function<bool(const std::string&)>& deliver) {
    constexpr int kMaxStringTokens = 48;
    constexpr int kMaxDigits = 4;
    Context& ctx = *slot.ctx;
    const Tokenizer& tok = tokenizer();
    const JsonVocab& v = json_vocab();
    const auto n_tok = static_cast<int32_t>(v.string_safe.size());
    std::vector<float> masked;
    // Appends tokens to the sequence; false when the limit cut them short (what fit is delivered).
    auto push = [&](const std::vector<int32_t>& toks, const std::string& text) {
        const size_t n = std::min<size_t>(toks.size(), static_cast<size_t>(std::max<int64_t>(0, limit - r.n_gen)));
        if (n > 0) {
            for (size_t i = 0; i < n; ++i) sampler.accept(toks[i]);
            ctx.decode(std::span<const int32_t>(toks.data(), n));
            slot.tokens.insert(slot.tokens.end(), toks.begin(), toks.begin() + static_cast<std::ptrdiff_t>(n));
            r.n_gen += static_cast<int64_t>(n);
        }
        if (n == toks.size()) return deliver(text);
        if (n > 0) deliver(tok.decode(std::span<const int32_t>(toks.data(), n)));
        return false;
    };
    auto sample = [&](const auto& allowed) {
        const auto lg = ctx.logits();
        masked.assign(lg.begin(), lg.end());
        for (size_t i = 0; i < masked.size(); ++i)
            if (!allowed(static_cast<int32_t>(i))) masked[i] = -std::numeric_limits<float>::infinity();
        return sampler.sample(masked);
    };
    for (const JsonPiece& piece : p.json_plan) {
        switch (piece.kind) {
            case JsonPiece::Forced:
                if (!push(tok.encode(piece.text, false, false), piece.text)) return;
                break;
            case JsonPiece::String: {
                auto chars = [&](int32_t id) { return static_cast<int64_t>(v.n_chars[static_cast<size_t>(id)]); };
                int64_t used = 0;
                for (int n = 0;; ++n) {
                    if (v.quote < 0) {  // no '"' token: close the string at once
                        if (!push(tok.encode("\"", false, false), "\"")) return;
                        break;
                    }
                    const int64_t left = piece.max_chars < 0 ? -1 : piece.max_chars - used;
                    const int32_t t = n >= kMaxStringTokens || left == 0 ? v.quote : sample([&](int32_t id) {
                        if (id == v.quote) return n > 0 || piece.max_chars == 0;
                        return id < n_tok && v.string_safe[static_cast<size_t>(id)] && (left < 0 || chars(id) <= left);
                    });
                    if (t != v.quote) used += chars(t);
                    if (!push({t}, t == v.quote ? std::string("\"") : tok.token_to_piece(t, false))) return;
                    if (t == v.quote) break;
                }
                break;
            }
            case JsonPiece::Number: {
                // A first digit 1-9, then more digits (up to kMaxDigits) while the model's own
                // most likely next token is a digit.
                auto is_digit = [&](int32_t id, int from) {
                    for (int d = from; d <= 9; ++d)
                        if (id == v.digit[static_cast<size_t>(d)]) return true;
                    return false;
                };
                bool any = false;
                for (int d = 1; d <= 9; ++d) any = any || v.digit[static_cast<size_t>(d)] >= 0;
                if (!any) {
                    if (!push(tok.encode("0", false, false), "0")) return;
                    break;
                }
                for (int n = 0; n < kMaxDigits; ++n) {
                    if (n > 0) {
                        const auto lg = ctx.logits();
                        const auto top = static_cast<int32_t>(std::max_element(lg.begin(), lg.end()) - lg.begin());
                        if (!is_digit(top, 0)) break;
                    }
                    const int32_t t = sample([&](int32_t id) { return is_digit(id, n == 0 ? 1 : 0); });
                    if (!push({t}, tok.token_to_piece(t, false))) return;
                }
                break;
            }
            case JsonPiece::Choice: {
                std::vector<std::vector<int32_t>> seqs;
                for (const auto& c : piece.choices) seqs.push_back(tok.encode(c, false, false));
                std::vector<size_t> alive(seqs.size());
                for (size_t i = 0; i < alive.size(); ++i) alive[i] = i;
                for (size_t pos = 0;; ++pos) {
                    // One choice left, or one that ends here: force the rest of it.
                    size_t done = seqs.size();
                    for (size_t a : alive)
                        if (seqs[a].size() == pos) done = a;
                    if (alive.size() == 1) done = alive[0];
                    if (done < seqs.size()) {
                        const std::vector<int32_t> rest(seqs[done].begin() + static_cast<std::ptrdiff_t>(pos), seqs[done].end());
                        if (!push(rest, {})) return;
                        if (!deliver(piece.choices[done])) return;
                        break;
                    }
                    const int32_t t = sample([&](int32_t id) {
                        for (size_t a : alive)
                            if (seqs[a][pos] == id) return true;
                        return false;
                    });
                    std::erase_if(alive, [&](size_t a) { return seqs[a][pos] != t; });
                    if (!push({t}, {})) return;
                }
                break;
            }
        }
    }
    r.stop_reason = "end";
}

}  // namespace kiln::serve
