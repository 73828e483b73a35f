// The Vulkan graph backend: runs a kiln op graph (engine/graph/graph.h) on a kiln::vk::Backend.
//
// Weights are uploaded once (the first graph that names them; the context compiles its decode
// shape at creation, so that is the first context's creation) and shared by every executable;
// all executables share one device workspace (grown to the largest graph compiled, see
// VulkanGraphBackend::reserve), so another executable costs its views and output buffers only;
// each KV cache (f16, q8_0 or q4_0) lives on the device. run() uploads the inputs, records the whole forward
// pass and reads the outputs back in ONE submit. The full layers' KV rows live in pages of a pool
// shared by the caches of the backend (see VkKvPool in graph_executor.cpp), read and written
// through each cache's page table: a cache holds the device memory its tokens use. A batch of several sequences (RunArgs::seq_kv)
// runs its matmuls and element-wise ops once over the batch and each StoreKV / Attention once per
// token on that token's cache, in the same submit. Graphs with an op, shape or type the shaders
// cannot run are refused at compile() with a kiln::Error naming it: nothing ever falls back to
// the CPU.
//
// Not thread-safe: one thread at a time drives a backend and everything made from it (its
// executables and caches). kiln::Context shares one backend between the contexts of a model on
// one device and serializes them with a lock (engine/runtime/shared_backend.h).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>

#include "backend/backend.h"

namespace kiln::vk {
class Backend;
struct ContextStats;
}

namespace kiln::backend {

struct VulkanOptions {
    int device = -1;        // --device N; -1: the best device (lavapipe included: Vulkan was asked for)
    bool require = true;    // false ("auto"): return nullptr when there is no real GPU
    bool validation = false;
    // Called while weights upload: (bytes done, bytes total).
    std::function<void(uint64_t, uint64_t)> progress;
    // Tests: the rows of a batch of several sequences always go through the aligned scratch (the
    // path taken where a row's offset misses the device's storage-buffer alignment).
    bool seq_row_copies = false;
};

// The index of the device make_vulkan_backend would open (nullopt: none, when !require), without
// opening it; throws as make_vulkan_backend does.
std::optional<uint32_t> vulkan_select_device(const VulkanOptions& options);

// nullptr only when !options.require and no device was chosen; throws kiln::Error when Vulkan was
// required and is missing.
std::unique_ptr<Backend> make_vulkan_backend(const VulkanOptions& options);

// The device counters (submits, dispatches, buffers created) of a backend made by
// make_vulkan_backend; nullptr for any other backend.
const vk::ContextStats* vulkan_stats(const Backend& b);
// How many specializations of shader `shader` the backend built (0 for any other backend): which
// kernel variants ran.
size_t vulkan_pipeline_variants(const Backend& b, std::string_view shader);
// Bytes of weights uploaded to the device, and device-local memory in use on the backend's device
// (weights, workspace, KV caches); 0 for any other backend.
uint64_t vulkan_weight_bytes(const Backend& b);
uint64_t vulkan_device_bytes(const Backend& b);
// Device bytes of the backend's KV page pools (their pages, held or free; not the rings) and the
// pages of them held by caches (a page held by several counts once); 0 for any other backend.
uint64_t vulkan_kv_pool_bytes(const Backend& b);
uint64_t vulkan_kv_pool_held_bytes(const Backend& b);
// Replaces the weight-upload progress callback (nullptr: none); does nothing on other backends. A
// shared backend reports to the context being created, not to the one that made it.
void vulkan_set_progress(Backend& b, std::function<void(uint64_t, uint64_t)> progress);

// The most device memory a Vulkan KV cache of `layout` holds: its sliding-window rings, and the
// pages of its full layers with every page taken (n_ctx rounded up to whole pages of
// min(page_tokens, n_ctx rounded up to a power of two) positions); not its page table (4 bytes a
// page). vulkan_kv_layer_bytes: layer il's part of it.
size_t vulkan_kv_bytes(const KvLayout& layout);
size_t vulkan_kv_layer_bytes(const KvLayout& layout, size_t il);

// Throws kiln::Error naming the first node the Vulkan executor cannot run (nothing is allocated).
void vulkan_check_graph(const graph::Graph& g, KvType type_k, KvType type_v);

}  // namespace kiln::backend
