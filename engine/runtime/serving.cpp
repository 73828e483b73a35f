// kiln::ServingEngine (kiln/serving.h): slots, the queue, prefix reuse, continuous batching; each
// request runs the per-sequence step of runtime/sequence.h.
#include "kiln/serving.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <mutex>

#include <fmt/format.h>

#include "kiln/error.h"
#include "kiln/tokenizer.h"
#include "runtime/json_output.h"
#include "runtime/sequence.h"

namespace kiln {

namespace {
using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// Prompt tokens per forward pass. Measured with kiln bench on the CPU (2 threads, tiled prompt
// attention): TinyLlama-1.1B Q4_K_M pp1024 146 / 278 / 307 t/s at batches of 256 / 512 / 1024,
// an 18K-token prompt on qwen3-vocab-tiny 32.8K / 33.9K / 34.8K t/s. Larger batches grow the
// activations (batch x FFN width floats) for a few percent more.
constexpr int64_t kPrefillBatch = 1024;
}  // namespace

struct ServingEngine::Impl {
    struct Slot {
        int id = 0;
        std::unique_ptr<Context> ctx;
        std::vector<int32_t> tokens;  // what the context holds
        bool busy = false;
        uint64_t last_used = 0;
        // The context's KV memory (Context::kv_bytes_held), taken by the slot's request after
        // each prompt batch and at its end: metrics read it from other threads.
        std::atomic<size_t> kv_held{0};
    };
    struct StepRequest {
        Context* ctx;
        int32_t token;
        bool done = false;
        std::exception_ptr error;
    };

    Impl(Model m, const ServingOptions& o);
    GenerateResult run(std::span<const int32_t> prompt, const GenerateOptions& o, OutputSink& sink,
                       const std::string& thinking_closer, const ServeCallbacks& cb);
    // Continuous batching: a generating request hands its next token to step(); whichever waiting
    // request finds no batch running gathers every token handed in (waiting a moment for the
    // other generating requests) and runs them as one kiln::decode_batch.
    void step(Context& ctx, int32_t token);
    Slot* acquire(std::span<const int32_t> prompt, const std::function<bool()>& keepalive);
    void release(Slot* s);
    void save_blocks(Slot& s);  // the slot's new full blocks into the prefix cache (errors reported, not thrown)
    const JsonVocab& json_vocab();

    Model model;
    int64_t n_ctx = 0;
    int max_queue;
    int n_parallel;
    size_t kv_bytes = 0;
    ContextOptions ctx_options;
    std::vector<std::unique_ptr<Slot>> slots;  // n_parallel (busy and tokens under mu)
    std::unique_ptr<PrefixCache> cache;
    std::mutex mu;
    std::condition_variable cv;
    uint64_t clock = 0;
    ServingMetrics metrics;
    std::mutex step_mu;
    std::condition_variable step_cv;
    std::vector<StepRequest*> step_queue, step_batch;  // reserved for n_parallel: no allocation per step
    std::vector<Context*> step_ctxs;
    std::vector<int32_t> step_toks;
    bool step_running = false;
    int generating = 0;  // requests in their decode loop (under step_mu)
    std::once_flag json_vocab_once;
    std::unique_ptr<JsonVocab> json_vocab_;
    std::vector<std::vector<int32_t>> scripts;  // ServingOptions::scripted_outputs, tokenized
    std::atomic<size_t> script_turn{0};
    std::atomic<bool> stopping{false};
};

ServingEngine::Impl::Impl(Model m, const ServingOptions& o)
    : model(std::move(m)), max_queue(std::max(0, o.max_queue)), n_parallel(std::max(1, o.n_parallel)), ctx_options(o.context) {
    ctx_options.n_batch = kPrefillBatch;
    for (int i = 0; i < n_parallel; ++i) {
        auto s = std::make_unique<Slot>();
        s->id = i;
        s->ctx = std::make_unique<Context>(model, ctx_options);
        // "auto" chose for the first context; the others follow it (a context that does not fit
        // on the GPU is then refused, not quietly put on the CPU where it cannot join the batches).
        if (i == 0) ctx_options.backend = s->ctx->backend_name();
        slots.push_back(std::move(s));
    }
    kv_bytes = slots[0]->ctx->kv_bytes();
    cache = std::make_unique<PrefixCache>(model, o.cache);
    n_ctx = slots[0]->ctx->n_ctx();
    step_queue.reserve(static_cast<size_t>(n_parallel));
    step_batch.reserve(static_cast<size_t>(n_parallel));
    step_ctxs.reserve(static_cast<size_t>(n_parallel));
    step_toks.reserve(static_cast<size_t>(n_parallel));
    for (const std::string& text : o.scripted_outputs) {
        std::vector<int32_t> t = model.tokenizer().encode(text, /*add_special=*/false, /*parse_special=*/true);
        t.push_back(model.tokenizer().eos());
        scripts.push_back(std::move(t));
    }
}

void ServingEngine::Impl::save_blocks(Slot& s) {
    try {
        cache->save(*s.ctx, s.tokens);
    } catch (const std::exception& ex) {
        fmt::print(stderr, "kiln: prefix cache: saving blocks failed: {}\n", ex.what());
    }
}

const JsonVocab& ServingEngine::Impl::json_vocab() {
    std::call_once(json_vocab_once, [this] { json_vocab_ = std::make_unique<JsonVocab>(JsonVocab::build(model.tokenizer())); });
    return *json_vocab_;
}

void ServingEngine::Impl::step(Context& ctx, int32_t token) {
    if (n_parallel == 1) {
        ctx.decode(std::span<const int32_t>(&token, 1));
        return;
    }
    StepRequest me{&ctx, token, false, nullptr};
    std::unique_lock lk(step_mu);
    step_queue.push_back(&me);
    step_cv.notify_all();
    while (!me.done) {
        if (step_running) {
            step_cv.wait(lk);
            continue;
        }
        // Lead this step: give the other generating requests a moment to hand in their tokens
        // (they sample right after the last step, so they come within microseconds).
        step_running = true;
        step_cv.wait_for(lk, std::chrono::milliseconds(5), [&] { return static_cast<int>(step_queue.size()) >= generating; });
        step_batch.clear();
        std::swap(step_batch, step_queue);
        lk.unlock();
        step_ctxs.clear();
        step_toks.clear();
        for (StepRequest* r : step_batch) {
            step_ctxs.push_back(r->ctx);
            step_toks.push_back(r->token);
        }
        const uint64_t n = step_batch.size();
        uint64_t passes = n;  // forward passes run: 1 when the tokens went through one batch
        try {
            passes = decode_batch(step_ctxs, step_toks);
        } catch (...) {
            // One request's problem stays its own: decode each alone.
            for (StepRequest* r : step_batch) {
                try {
                    r->ctx->decode(std::span<const int32_t>(&r->token, 1));
                } catch (...) {
                    r->error = std::current_exception();
                }
            }
        }
        // What ran, not what was handed in: n tokens in one pass, or n passes of one token.
        metrics.batch_steps += passes;
        metrics.batch_tokens += n;
        const uint64_t size = passes == 1 ? n : 1;
        for (uint64_t m = metrics.batch_max.load(); size > m && !metrics.batch_max.compare_exchange_weak(m, size);) {
        }
        lk.lock();
        for (StepRequest* r : step_batch) r->done = true;
        step_running = false;
        step_cv.notify_all();
    }
    if (me.error) std::rethrow_exception(me.error);
}

ServingEngine::Impl::Slot* ServingEngine::Impl::acquire(std::span<const int32_t> prompt, const std::function<bool()>& keepalive) {
    std::unique_lock lk(mu);
    for (;;) {
        // The free slot with the longest common prefix (ties: the least recently used). What it
        // loses is in the prefix cache already (every full block it decoded was saved).
        Slot* best = nullptr;
        size_t best_lcp = 0;
        for (auto& s : slots) {
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
            best->last_used = ++clock;
            ++metrics.active;
            return best;
        }
        if (stopping) return nullptr;
        cv.wait_for(lk, std::chrono::seconds(1));
        if (stopping) return nullptr;
        lk.unlock();
        const bool alive = !keepalive || keepalive();
        lk.lock();
        if (!alive) return nullptr;
    }
}

void ServingEngine::Impl::release(Slot* s) {
    s->kv_held = s->ctx->kv_bytes_held();
    {
        std::lock_guard lk(mu);
        s->busy = false;
        --metrics.active;
    }
    cv.notify_one();
}

GenerateResult ServingEngine::Impl::run(std::span<const int32_t> prompt, const GenerateOptions& o, OutputSink& sink,
                                        const std::string& thinking_closer, const ServeCallbacks& cb) {
    GenerateResult& r = *sink.result;
    r.n_prompt = static_cast<int64_t>(prompt.size());
    if (prompt.empty()) throw Error("generate: the prompt is empty");
    if (r.n_prompt >= n_ctx)
        throw Error(fmt::format("generate: the prompt is {} tokens and the context holds {}: the answer needs at least one more",
                                prompt.size(), n_ctx));
    if (!o.json_schema.empty()) (void)plan_json(o.json_schema);  // a bad schema is refused before any work
    auto cancel = [&] {
        r.stop = StopReason::Cancelled;
        ++metrics.cancelled;
        return r;
    };
    Slot* slot = acquire(prompt, cb.keepalive);
    if (!slot) return cancel();
    struct Release {
        Impl* e;
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
        const size_t n = std::min(slot->tokens.size(), prompt.size());
        while (keep < n && slot->tokens[keep] == prompt[keep]) ++keep;
        if (keep == prompt.size()) --keep;
        keep = std::min<size_t>(keep, static_cast<size_t>(ctx.n_past()));
    }
    // A sliding-window ring may have overwritten what the prefix needs: truncate() then keeps 0.
    keep = static_cast<size_t>(ctx.truncate(static_cast<int64_t>(keep)));
    slot->tokens.resize(keep);
    // The prefix cache may hold more of the prompt (the last token is always decoded).
    try {
        keep = static_cast<size_t>(cache->restore(ctx, prompt, static_cast<int64_t>(prompt.size()) - 1));
    } catch (const std::exception& ex) {
        fmt::print(stderr, "kiln: prefix cache: restore failed ({}); computing the prompt\n", ex.what());
        ctx.clear();
        keep = 0;
    }
    slot->tokens.assign(prompt.begin(), prompt.begin() + static_cast<std::ptrdiff_t>(keep));
    r.n_reused = static_cast<int64_t>(keep);
    metrics.prompt_tokens += prompt.size();
    metrics.cached_tokens += keep;
    if (keep > 0) ++metrics.cache_hits;
    if (cb.on_start) cb.on_start(r.n_reused);

    auto last_tick = Clock::now();
    constexpr size_t kBatch = static_cast<size_t>(kPrefillBatch);
    // Chunks end at multiples of kBatch (a multiple of the cache's blocks): each chunk's full
    // blocks are saved while the sliding-window rings still hold their windows.
    for (size_t i = keep, n = 0; i < prompt.size(); i += n) {
        n = std::min(kBatch - i % kBatch, prompt.size() - i);
        try {
            ctx.decode(prompt.subspan(i, n));
        } catch (...) {
            ctx.clear();
            slot->tokens.clear();
            throw;
        }
        slot->tokens.insert(slot->tokens.end(), prompt.begin() + static_cast<std::ptrdiff_t>(i),
                            prompt.begin() + static_cast<std::ptrdiff_t>(i + n));
        save_blocks(*slot);
        slot->kv_held = ctx.kv_bytes_held();
        if (stopping || (o.cancel && o.cancel->load())) {
            r.stop = StopReason::Cancelled;  // not counted: the engine stops, or the caller chose to
            return r;
        }
        if (std::chrono::duration<double>(Clock::now() - last_tick).count() >= 1.0) {
            last_tick = Clock::now();
            if (cb.keepalive && !cb.keepalive()) return cancel();
        }
    }
    r.prompt_ms = ms_since(t_prefill);
    metrics.prefill_us += static_cast<uint64_t>(r.prompt_ms * 1000);
    metrics.prefill_n += prompt.size() - keep;

    // The generation: the per-sequence step (runtime/sequence.h), its single tokens decoded in
    // the batched steps. max_tokens is clamped to the room left (the answer stops at max_tokens).
    GenerateOptions opts = o;
    const int64_t room = n_ctx - ctx.n_past();
    opts.max_tokens = o.max_tokens < 0 ? room : std::min(o.max_tokens, room);
    const auto t_gen = Clock::now();
    Sequence seq(model.tokenizer(), prompt, opts, static_cast<int32_t>(ctx.n_vocab()), n_ctx, ctx.n_past(), sink, r,
                 thinking_closer, opts.json_schema.empty() ? nullptr : &json_vocab());
    r.seed = seq.seed();
    seq.set_stop_flag(&stopping);
    if (!scripts.empty()) seq.set_script(&scripts[script_turn++ % scripts.size()]);
    {
        // Counted while in the decode loop: a batch leader waits for this many tokens at most.
        // JSON output decodes its forced text whole, outside the batches.
        struct Generating {
            Impl* e;
            bool on;
            Generating(Impl* en, bool counted) : e(en), on(counted) {
                if (!on) return;
                std::lock_guard lk(e->step_mu);
                ++e->generating;
            }
            ~Generating() {
                if (!on) return;
                {
                    std::lock_guard lk(e->step_mu);
                    --e->generating;
                }
                e->step_cv.notify_all();
            }
        } generating{this, opts.json_schema.empty()};
        for (;;) {
            const Sequence::Next nx = seq.step(ctx.logits(), ctx.n_past());
            if (nx.tokens.size() == 1 && generating.on) step(ctx, nx.tokens[0]);
            else if (!nx.tokens.empty()) ctx.decode(nx.tokens);
            slot->tokens.insert(slot->tokens.end(), nx.tokens.begin(), nx.tokens.end());
            if (nx.last) break;
        }
    }
    seq.finish();
    if (r.stop == StopReason::Cancelled) ++metrics.cancelled;
    r.generate_ms = ms_since(t_gen);
    save_blocks(*slot);  // the blocks the answer completed (the next turn's prompt repeats it)
    metrics.gen_tokens += static_cast<uint64_t>(r.n_generated);
    metrics.decode_us += static_cast<uint64_t>(r.generate_ms * 1000);
    return r;
}

// ---- ServingEngine ----------------------------------------------------------------------------

ServingEngine::ServingEngine(Model model, const ServingOptions& options) : impl_(std::make_unique<Impl>(std::move(model), options)) {}
ServingEngine::~ServingEngine() = default;

GenerateResult ServingEngine::generate(std::span<const int32_t> prompt, const GenerateOptions& options,
                                       const std::function<bool(std::string_view)>& on_text, const ServeCallbacks& callbacks) {
    GenerateResult r;
    OutputSink sink;
    sink.on_text = &on_text;
    sink.result = &r;
    return impl_->run(prompt, options, sink, {}, callbacks);
}

GenerateResult ServingEngine::chat(const ChatFormat& format, const ChatPrompt& prompt, const GenerateOptions& options,
                                   const std::function<bool(const ReplyEvent&)>& on_event, const ServeCallbacks& callbacks) {
    GenerateResult r;
    // JSON output is read as plain text (a JSON string may hold what looks like a tool call).
    ReplyParser parser = options.json_schema.empty() ? format.parser(prompt.text, options.reply) : ReplyParser::plain();
    OutputSink sink;
    sink.parser = &parser;
    sink.on_event = &on_event;
    sink.result = &r;
    GenerateOptions opts = options;
    const std::string& end_turn = format.end_turn();
    if (!end_turn.empty() && std::find(opts.stop.begin(), opts.stop.end(), end_turn) == opts.stop.end()) opts.stop.push_back(end_turn);
    const std::string closer = opts.thinking_budget >= 0 ? format.thinking_closer() : std::string();
    impl_->run(prompt.tokens, opts, sink, closer, callbacks);
    // A built-in template's end-of-turn text ends the turn like an end-of-generation token.
    if (r.stop == StopReason::StopString && !end_turn.empty() && r.stop_string == end_turn) {
        r.stop = StopReason::EndOfGeneration;
        r.stop_string.clear();
    }
    return r;
}

ServingEngine::Admission::Admission(ServingEngine& e) : e_(e) {
    Impl& im = *e_.impl_;
    if (im.stopping) throw Error("the serving engine is stopping");
    const int64_t n = ++im.metrics.queued;
    if (n > static_cast<int64_t>(im.n_parallel) + im.max_queue) {
        --im.metrics.queued;
        throw Error(fmt::format("every slot is busy and the queue is full ({} slots, {} places in the queue)", im.n_parallel,
                                im.max_queue));
    }
}
ServingEngine::Admission::~Admission() { --e_.impl_->metrics.queued; }

void ServingEngine::stop() {
    impl_->stopping = true;
    {
        std::lock_guard lk(impl_->mu);  // a waiter checks stopping under mu, so none misses the wake-up
    }
    impl_->cv.notify_all();
}

bool ServingEngine::stopping() const { return impl_->stopping.load(); }
const Model& ServingEngine::model() const { return impl_->model; }
const Tokenizer& ServingEngine::tokenizer() const { return impl_->model.tokenizer(); }
int64_t ServingEngine::n_ctx() const { return impl_->n_ctx; }
int ServingEngine::n_parallel() const { return impl_->n_parallel; }
const char* ServingEngine::backend_name() const { return impl_->slots[0]->ctx->backend_name(); }
size_t ServingEngine::kv_bytes_per_context() const { return impl_->kv_bytes; }
size_t ServingEngine::kv_bytes_held() const {
    size_t n = 0;
    for (const auto& s : impl_->slots) n += s->kv_held.load();
    return n;
}
PrefixCache& ServingEngine::prefix_cache() { return *impl_->cache; }
size_t ServingEngine::flush_cache() { return impl_->cache->flush(); }
ServingMetrics& ServingEngine::metrics() { return impl_->metrics; }

}  // namespace kiln
