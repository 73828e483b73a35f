// kiln public API: an inference context (one sequence, its KV cache and its logits).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>

#include "kiln/model.h"
#include "kiln/types.h"

namespace kiln {

namespace runtime {
class KvCache;  // engine/runtime/kv_cache.h
}
class PrefixCache;  // kiln/prefix_cache.h

struct ContextOptions {
    int64_t n_ctx = 0;      // tokens the KV cache holds (0: the model's trained context, at most 4096)
    int n_threads = 0;      // 0: the model's default (LoadOptions::n_threads, else all cores)
    int64_t n_batch = 512;  // tokens per forward pass when a prompt is decoded
    // KV cache element types (-ctk / -ctv). An MLA model stores only K (its V is part of each K row).
    KvType kv_type_k = KvType::F16, kv_type_v = KvType::F16;
    // "cpu", "vulkan" (an error when there is no Vulkan device; lavapipe counts) or "auto" (Vulkan
    // on a discrete or integrated GPU, else the CPU).
    std::string backend = "cpu";
    int device = -1;  // Vulkan device index (kiln devices); -1: the best one
    // Called with the fraction [0, 1] of the weights copied to the device (Vulkan) while the
    // context is created. Not called when the weights are on the device already: the contexts of
    // one Model on one Vulkan device share one copy of the weights (each adds its KV cache only).
    std::function<void(float)> progress{};
    // On the CPU: compute the memory plan first (kiln/memory.h) and throw kiln::Error with its
    // numbers (what is needed, what is available, the largest n_ctx that fits) instead of taking
    // memory the machine does not have. The plan counts the KV cache when full; its memory is
    // written once when taken (the rings when the context is created, the pages as tokens arrive),
    // so what it holds is really held. false skips the check.
    bool check_memory = true;
    // Tokens per KV page (a power of two). On the CPU a PrefixCache shares its blocks with the
    // context by reference when its block_tokens equals this; otherwise their rows are copied. On
    // Vulkan the pages are device memory of a pool shared by the contexts of the model on that
    // device (a page there holds min(this, n_ctx rounded up to a power of two) positions), shared
    // by reference with a PrefixCache whose block_tokens equals that.
    int64_t kv_page_tokens = 256;
    // Take every KV page when the context is created and keep them whatever the
    // sequence holds (the whole cache really held from the start, as the memory plan counts it:
    // no page to find later; kiln run, chat, logits and bench do this). Sharing a prefix cache's
    // pages then saves computing, not memory. false: pages come and go with the tokens.
    bool kv_up_front = false;
};

// KV cache memory by layer kind. A full layer holds n_ctx tokens; a sliding-window layer a ring
// of its window plus one batch (sliding_slots tokens), whatever n_ctx is.
struct KvStats {
    KvType type_k = KvType::F16, type_v = KvType::F16;
    int64_t n_ctx = 0;
    int n_full_layers = 0, n_sliding_layers = 0;
    int64_t sliding_slots = 0;             // tokens a sliding layer keeps
    size_t full_bytes = 0, sliding_bytes = 0;  // over all layers of the kind
    size_t full_bytes_per_token = 0;       // K + V of one token in one layer of the kind
    size_t sliding_bytes_per_token = 0;
};

// Threads: a Context is used by one thread at a time; different contexts may be used from
// different threads. Contexts of one Model on one Vulkan device share its backend and take turns
// on it (one forward pass at a time, under a lock); CPU contexts run side by side.
class Context {
public:
    explicit Context(const Model& model, const ContextOptions& options = {});
    ~Context();
    Context(Context&&) noexcept;
    Context& operator=(Context&&) noexcept;

    // Appends `tokens` to the sequence and runs the forward pass over them, n_batch tokens per
    // pass. Afterwards logits(i) holds row i of this call's tokens when all_logits is true, else
    // only the last token's row (logits() / logits(-1)). Throws kiln::Error when the tokens do not
    // fit in the context (naming both numbers) or a token id is out of the vocabulary; the
    // context is then unchanged.
    void decode(std::span<const int32_t> tokens, bool all_logits = false);

    // Logits (n_vocab floats) of token i of the last decode() call; -1 is its last token. Valid
    // until the next decode() or clear().
    std::span<const float> logits(int64_t i = -1) const;
    int64_t n_logits() const;  // rows available from the last decode()

    int64_t n_past() const;   // tokens in the context (= position of the next token)
    int64_t n_ctx() const;
    int64_t n_vocab() const;
    // Memory of the KV cache when full: what the memory plan counts for this context. The full
    // layers' rows are paged (ContextOptions::kv_page_tokens): pages are taken as the sequence
    // grows and let go when it shrinks. On the CPU a prefix restored from a PrefixCache whose
    // blocks are pages of this size is shared with the cache and other contexts, not copied; on
    // Vulkan likewise with device pages (whole pages: n_ctx rounded up to one).
    size_t kv_bytes() const;
    // Memory the KV cache holds now: the rings and every page of the tokens it holds, the pages it
    // shares included (on Vulkan, the device pool it takes pages from keeps pages given back for
    // the next context that grows).
    size_t kv_bytes_held() const;
    KvStats kv_stats() const;
    std::string kv_summary() const;  // one line: the KV memory by layer kind
    // Forgets the sequence (the KV cache memory is kept for the next one).
    void clear();
    // Keeps the first n_keep tokens of the sequence and drops the rest (their KV cache positions
    // become free, so the next decode() continues at position n_keep), e.g. to reuse the common
    // prefix of a new prompt. Returns how many tokens were kept: n_keep, or 0 (the context is
    // cleared) when a sliding-window layer's ring has already overwritten what those tokens need;
    // the caller decodes from there. The logits are invalidated. Throws kiln::Error unless
    // 0 <= n_keep <= n_past().
    int64_t truncate(int64_t n_keep);

    const Model& model() const;
    const char* backend_name() const;  // "cpu" or "vulkan" (what "auto" chose)

private:
    friend class PrefixCache;  // copies KV rows in and out
    runtime::KvCache& kv_cache();
    std::mutex& backend_mutex();  // held while the KV memory is used
    void forget_logits();
    friend size_t decode_batch(std::span<Context* const> contexts, std::span<const int32_t> tokens);
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// One decode step for several sequences at once (continuous batching): tokens[i] is appended to
// contexts[i], and all of them run through one forward pass, so each weight is read once for the
// whole batch instead of once per sequence. Afterwards contexts[i].logits() is that token's row,
// as if contexts[i].decode(tokens[i]) had run. The contexts must be distinct, of the same Model,
// and each needs room for one more token. They are batched when they run on one backend: on
// Vulkan, contexts on the same device (they share it); on the CPU, contexts with the same thread
// count (the batch runs on the first context's backend). Others decode their tokens in turn. The
// batch shape is compiled once per size and reused, so a step allocates nothing. Returns the
// forward passes run: 1 when batched, else one per context. Throws kiln::Error naming the problem;
// on an error no context has advanced.
size_t decode_batch(std::span<Context* const> contexts, std::span<const int32_t> tokens);

}  // namespace kiln
