// The Vulkan graph backend: runs a kiln op graph (engine/graph/graph.h) on a kiln::vk::Backend.
//
// Weights are uploaded once (the first graph that names them; the context compiles its decode
// shape at creation, so that is context creation) and shared by every executable; each compiled
// batch shape owns one device workspace laid out by graph::plan_buffers; the KV cache (f16) lives
// on the device. run() uploads the inputs, records the whole forward pass and reads the outputs
// back in ONE submit. Graphs with an op, shape or type the shaders cannot run are refused at
// compile() with a kiln::Error naming it: nothing ever falls back to the CPU.
#pragma once

#include <functional>
#include <memory>

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
};

// nullptr only when !options.require and no device was chosen; throws kiln::Error when Vulkan was
// required and is missing.
std::unique_ptr<Backend> make_vulkan_backend(const VulkanOptions& options);

// The device counters (submits, dispatches, buffers created) of a backend made by
// make_vulkan_backend; nullptr for any other backend.
const vk::ContextStats* vulkan_stats(const Backend& b);

// Throws kiln::Error naming the first node the Vulkan executor cannot run (nothing is allocated).
void vulkan_check_graph(const graph::Graph& g, KvType type_k, KvType type_v);

}  // namespace kiln::backend
