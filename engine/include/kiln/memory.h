// kiln public API: the memory plan of a model and its contexts, computed before anything large is
// allocated (`kiln fit`, and the check every command and every Context makes).
//
//   kiln::Model model = kiln::Model::load("model.gguf", {.touch_weights = false});
//   kiln::MemoryPlan plan = kiln::plan_memory(model, {.n_ctx = 32768, .kv_type_k = kiln::KvType::Q8_0,
//                                                     .kv_type_v = kiln::KvType::Q8_0});
//   if (!plan.fits) std::puts(plan.refusal().c_str());
//
// What is counted (bytes, where the model will live):
// - process: this process as it is now (code and libraries, the tokenizer, the heap), measured from
//   /proc/self, without the pages of the model file;
// - weights: the mapped GGUF file (every page is read by a forward pass) on the CPU; on Vulkan the
//   weights copied to the device;
// - kv: the KV cache of every context, by layer kind (full layers hold n_ctx tokens, sliding-window
//   layers a ring of window + batch - 1, MLA layers one latent row per token), when full: on the CPU
//   the full layers' pages are taken as the tokens arrive (and shared with the prefix cache), so
//   this is the most the contexts hold;
// - scratch: the activations and per-thread buffers of a prompt batch and of decode;
// - cache: the prefix-cache budget (--cache-mem) of a server.
// Available: on the CPU, MemAvailable of /proc/meminfo plus this process's own anonymous memory,
// capped by the cgroup's memory.max and by RLIMIT_AS (ulimit -v); on Vulkan, the device-local
// heap's budget (VK_EXT_memory_budget, else its size).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kiln/types.h"

namespace kiln {

class Model;

struct MemoryPlanOptions {
    int64_t n_ctx = 0;  // tokens per context (0: the model's trained context, at most 4096)
    KvType kv_type_k = KvType::F16, kv_type_v = KvType::F16;
    std::string backend = "cpu";  // "cpu", "vulkan" or "auto" (as ContextOptions)
    int device = -1;              // Vulkan device index; -1: the best one
    int n_parallel = 1;           // contexts (a server's slots)
    size_t cache_bytes = 0;       // prefix-cache budget on top of the contexts (kiln serve --cache-mem)
    int64_t n_batch = 512;        // tokens per prompt pass
    int n_threads = 0;            // 0: the model's default
};

struct MemoryPlan {
    struct KvKind {
        std::string kind;     // "full", "sliding", "mla"
        int n_layers = 0;
        int64_t tokens = 0;   // rows per layer (n_ctx, or a sliding layer's ring)
        size_t bytes_per_token = 0;  // one row of one layer
        size_t bytes = 0;     // all layers of the kind, all contexts
    };
    struct MaxCtx {
        KvType type = KvType::F16;  // K and V both of this type
        int64_t n_ctx = 0;          // the largest context that fits (0: none)
    };

    std::string where;         // "CPU (RAM)" or "Vulkan device NAME"
    std::string backend;       // "cpu" or "vulkan" (what "auto" chose)
    int64_t n_ctx = 0, n_ctx_train = 0;
    int n_parallel = 1;
    KvType kv_type_k = KvType::F16, kv_type_v = KvType::F16;

    size_t process_bytes = 0;  // CPU only (0 on Vulkan, where this process's memory is not on the device)
    size_t weights_bytes = 0;
    size_t kv_bytes = 0;
    std::vector<KvKind> kv;
    size_t scratch_bytes = 0;
    size_t cache_bytes = 0;
    size_t total_bytes = 0;
    size_t available_bytes = 0;
    std::string available_source;  // what limited available_bytes, e.g. "MemAvailable", "cgroup memory.max"
    size_t max_buffer_bytes = 0;   // Vulkan: the largest buffer the device binds (a layer's KV rows live in one); 0 on the CPU
    bool fits = false;
    std::vector<MaxCtx> max_ctx;    // f16, q8_0, q4_0: the largest -c that fits with that KV type
    std::vector<std::string> warnings;  // e.g. a context beyond the trained one without RoPE scaling

    // One line for a plan that does not fit: what it needs, what is free, the largest -c that fits
    // and the KV type that would make the asked -c fit. Empty when it fits.
    std::string refusal() const;
    // The largest context that fits with this plan's KV types (capped at `cap` when cap > 0). This
    // and max_ctx keep 1 MiB of what is available back: a context one run suggests fits the next,
    // whose own memory may differ by a few pages.
    int64_t largest_ctx(int64_t cap = 0) const { return cap > 0 && largest_ > cap ? cap : largest_; }

    int64_t largest_ = 0;  // internal: the largest n_ctx that fits with kv_type_k / kv_type_v
};

// The plan of n_parallel contexts of `model` with these options. Creates nothing on the device and
// allocates nothing large. Throws kiln::Error for options that make no sense (a bad backend name, a
// KV type the heads cannot use).
MemoryPlan plan_memory(const Model& model, const MemoryPlanOptions& options);

// "1.23 GiB", "456.0 MiB", "12.0 KiB".
std::string format_bytes(size_t bytes);

// The most memory this process has had resident since it started (Linux: VmHWM of
// /proc/self/status, which starts afresh at exec, unlike getrusage's ru_maxrss, which keeps the
// forking parent's); 0 where the system does not say.
size_t peak_resident_bytes();

}  // namespace kiln
