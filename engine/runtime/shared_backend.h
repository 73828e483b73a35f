// A backend, the compiled graphs of its model, and the lock that serializes their use.
//
// Vulkan: the contexts of one Model on one device share ONE (Model::Impl::vulkan_backends): one
// VkDevice, one copy of the weights, one pipeline cache, one workspace, one set of compiled batch
// shapes; each context adds only its KV cache. A vk::Context is driven by one thread at a time, so
// every use of the backend - compile, alloc_kv, set_input + run + reading the outputs, destroying a
// KV cache - holds `mu`. Contexts of it decoding in different threads (kiln serve: each request
// decodes its prompt in its own thread while another runs a batched decode step) take turns, one
// forward pass at a time; the device runs one submit at a time anyway.
//
// CPU: every context has its own. The weights are the mapped file, shared by every context
// already, so sharing would save nothing there; a backend of its own gives each context its own
// thread pool and workspace, so contexts in different threads run at the same time (`mu` is then
// never contended). decode_batch runs a CPU batch on the first context's backend (its KV caches
// are host memory any CPU backend of the same thread count can use).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>

#include "backend/backend.h"
#include "graph/graph.h"

namespace kiln::model {
class Architecture;
}

namespace kiln::runtime {

struct SharedBackend {
    struct Compiled {
        std::unique_ptr<backend::Executable> exe;
        graph::TensorId tokens = graph::kNone, positions = graph::kNone, logits = graph::kNone;
        uint64_t last_used = 0;
    };

    SharedBackend(std::unique_ptr<backend::Backend> b, const model::Architecture& arch);
    ~SharedBackend();
    SharedBackend(const SharedBackend&) = delete;
    SharedBackend& operator=(const SharedBackend&) = delete;

    // The graph of n_tokens tokens with the logits of the last n_outputs, compiled on first use
    // (the decode shape (1, 1) is kept; of the others the least recently used beyond a few are
    // dropped). Call with `mu` held; the reference is valid until the next get().
    Compiled& get(int64_t n_tokens, int64_t n_outputs);
    // decode_batch's shape: one token of each of n sequences, every row's logits (kept: one per
    // batch size reached).
    Compiled& get_batch(int64_t n);

    std::unique_ptr<backend::Backend> backend;  // declared first: destroyed after what it compiled
    const model::Architecture& arch;
    const bool on_cpu;
    std::mutex mu;

private:
    Compiled compile(int64_t n_tokens, int64_t n_outputs);
    std::map<std::pair<int64_t, int64_t>, Compiled> compiled_;  // (n_tokens, n_outputs)
    std::map<int64_t, Compiled> batch_;                          // sequences
    uint64_t use_clock_ = 0;
};

}  // namespace kiln::runtime
