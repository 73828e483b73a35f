// kiln public API: serving many requests at once. A ServingEngine holds n_parallel slots (one
// Context each) on one Model, a queue of requests waiting for a slot, and a PrefixCache the slots
// share; each request runs the same per-sequence step as kiln::Generator (sampling, stop strings,
// max tokens, thinking budget, JSON-schema output, parser events, cancellation), and the
// single-token decode steps of the requests generating at the same time run as one batch
// (continuous batching: a request joins or leaves between two steps). kiln serve is this engine
// behind HTTP.
//
//   kiln::ServingOptions so;
//   so.context.n_ctx = 8192;
//   so.n_parallel = 4;
//   kiln::ServingEngine engine(model, so);
//   kiln::ChatFormat format = kiln::ChatFormat::from_model(model);
//   // from any number of threads at once:
//   kiln::GenerateResult r = engine.chat(format, format.prompt(messages), options,
//                                        [](const kiln::ReplyEvent& e) { ...; return true; });
//
// generate() and chat() are safe to call from many threads: each waits for a free slot (the one
// holding the longest prefix of its prompt, else the least recently used), restores the longest
// cached prefix of the prompt (kiln/prefix_cache.h), decodes the rest, and generates. Every full
// block of cache.block_tokens tokens a slot decodes is saved in the prefix cache.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/chat.h"
#include "kiln/context.h"
#include "kiln/generator.h"
#include "kiln/model.h"
#include "kiln/prefix_cache.h"

namespace kiln {

struct ServingOptions {
    // Each slot's context (n_ctx, n_threads, backend, device, KV types). n_batch is set to the
    // engine's prompt batch (1024 tokens). On Vulkan the contexts share one backend (one copy of
    // the weights on the device; each slot adds its KV cache), their decode steps are batched, and
    // a request decodes its prompt in its own thread between the batched steps. "auto" chooses for
    // the first slot and the others follow it.
    ContextOptions context{};
    int n_parallel = 1;  // slots: requests generated at the same time
    int max_queue = 16;  // requests that may wait for a slot (Admission)
    PrefixCacheOptions cache{};
    // Tests of front ends (parsers, streaming): the outputs are these texts (special-token texts
    // as their tokens), then an end-of-generation token, instead of sampled tokens; one per
    // request in turn, then from the first again.
    std::vector<std::string> scripted_outputs{};
};

// Counters for a front end's metrics (all atomic: read them from any thread).
struct ServingMetrics {
    // Front-end counters the engine leaves to its user (kiln serve: HTTP requests and errors).
    std::atomic<uint64_t> requests{0}, errors{0};
    // Generation requests: prompt tokens, of which reused (kept in a slot or restored from the
    // prefix cache), generated tokens, the time spent, requests that reused a prefix, cancelled.
    std::atomic<uint64_t> prompt_tokens{0}, cached_tokens{0}, gen_tokens{0};
    std::atomic<uint64_t> prefill_us{0}, decode_us{0}, prefill_n{0}, cache_hits{0}, cancelled{0};
    std::atomic<int64_t> queued{0}, active{0};  // places held (Admission), slots generating
    // Continuous batching: decode forward passes run, tokens they carried, the most one carried.
    std::atomic<uint64_t> batch_steps{0}, batch_tokens{0}, batch_max{0};
};

// Per request, besides GenerateOptions.
struct ServeCallbacks {
    // Once the request has its slot, before its prompt is decoded: how many prompt tokens are
    // reused (kept in the slot or restored from the prefix cache).
    std::function<void(int64_t n_reused)> on_start{};
    // About every second while waiting for a slot and between prompt batches: false cancels.
    std::function<bool()> keepalive{};
};

class ServingEngine {
public:
    // Creates the slots' contexts and the prefix cache; throws kiln::Error when a context cannot
    // be made (memory, backend).
    ServingEngine(Model model, const ServingOptions& options);
    ~ServingEngine();
    ServingEngine(const ServingEngine&) = delete;
    ServingEngine& operator=(const ServingEngine&) = delete;

    // Continues `prompt` (token ids): like Generator::generate. Stop reason Cancelled also when
    // the engine stops (stopping() then says so) or keepalive returned false; the prompt is
    // refused with kiln::Error when it is empty or leaves no room for one more token. max_tokens
    // is clamped to the room the context has left (stop reason MaxTokens when that ends it).
    // The prompt goes in batches of 1024 tokens (ServeCallbacks::keepalive between them), so
    // GenerateOptions::prompt_chunk and on_prompt are not used.
    GenerateResult generate(std::span<const int32_t> prompt, const GenerateOptions& options,
                            const std::function<bool(std::string_view)>& on_text = {}, const ServeCallbacks& callbacks = {});
    // Answers a rendered conversation: like Generator::chat (the format's parser with
    // options.reply, its end of turn, its thinking closer).
    GenerateResult chat(const ChatFormat& format, const ChatPrompt& prompt, const GenerateOptions& options,
                        const std::function<bool(const ReplyEvent&)>& on_event = {}, const ServeCallbacks& callbacks = {});

    // A place in the queue (n_parallel + max_queue places), held for a request's whole life:
    // throws kiln::Error when every place is taken, or once stop() was called (stopping() tells
    // which). metrics().queued counts the places held. generate() and chat() do not need one: it
    // is how a front end refuses work early (kiln serve: 529 / 503) instead of queueing it.
    class Admission {
    public:
        explicit Admission(ServingEngine& engine);
        ~Admission();
        Admission(const Admission&) = delete;
        Admission& operator=(const Admission&) = delete;

    private:
        ServingEngine& e_;
    };
    // Cancels every request (they end within a token, stop reason Cancelled) and refuses new ones;
    // for a server's shutdown. Safe from any thread.
    void stop();
    bool stopping() const;

    const Model& model() const;
    const Tokenizer& tokenizer() const;
    int64_t n_ctx() const;  // of each slot
    int n_parallel() const;
    const char* backend_name() const;
    size_t kv_bytes_per_context() const;  // a slot's KV cache when full (n_ctx tokens)
    // The KV memory the slots hold now, summed (Context::kv_bytes_held: with paged KV, what their
    // tokens use; a page two slots share, e.g. a cached prefix, counts in each). Updated by each
    // request after every prompt batch and when it ends, so safe to read from any thread.
    size_t kv_bytes_held() const;
    PrefixCache& prefix_cache();
    size_t flush_cache();  // writes the prefix cache's blocks to its directory; returns the files written
    ServingMetrics& metrics();

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace kiln
