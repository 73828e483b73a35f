// The Vulkan mechanics under kiln::vk::Backend: one logical device and queue, memory (with the
// heap budget checked before anything is allocated), a staging ring for uploads, readback,
// pipelines built from the embedded SPIR-V with specialization constants (one pipeline cache),
// descriptor sets, and one command buffer that records copies and dispatches - with the barriers
// they need and no others - until submit() sends it in ONE vkQueueSubmit and waits on a fence.
//
// Not thread-safe: one Context is driven by one thread.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "backend/vulkan/device.h"

namespace kiln::vk {

class DeviceCore;

enum class MemoryKind {
    Device,    // device-local: tensors
    Upload,    // host-visible, coherent: the staging ring
    Readback,  // host-visible, cached when possible: results coming back
};

// One VkBuffer with its own memory. Owned through shared_ptr: a recording keeps the buffers it
// uses alive until its submit has finished, so dropping a tensor early is safe.
class Buffer {
public:
    ~Buffer();
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;

    VkBuffer handle() const { return buffer_; }
    uint64_t size() const { return size_; }
    uint8_t* mapped() const { return static_cast<uint8_t*>(mapped_); }  // nullptr unless host-visible
    MemoryKind kind() const { return kind_; }
    uint64_t id() const { return id_; }  // unique in the process, never reused (handles may be)

private:
    friend class Context;
    Buffer() = default;
    std::shared_ptr<DeviceCore> core_;
    VkBuffer buffer_ = VK_NULL_HANDLE;
    VkDeviceMemory memory_ = VK_NULL_HANDLE;
    uint64_t size_ = 0;       // usable bytes
    uint64_t allocated_ = 0;  // bytes of memory taken (counted against the heap)
    void* mapped_ = nullptr;
    MemoryKind kind_ = MemoryKind::Device;
    uint32_t heap_ = 0;
    uint64_t id_ = 0;
};

// A buffer range bound to one storage-buffer binding of a dispatch.
struct Binding {
    std::shared_ptr<Buffer> buffer;
    uint64_t offset = 0;
    uint64_t size = 0;
    bool written = false;  // the shader writes it (barriers are placed from this)
};

struct Pipeline {
    VkPipeline pipeline = VK_NULL_HANDLE;
    VkPipelineLayout layout = VK_NULL_HANDLE;
    VkDescriptorSetLayout set_layout = VK_NULL_HANDLE;
    uint32_t n_bindings = 0;
    uint32_t workgroup_size = 0;  // specialization constant 0
};

struct ContextStats {
    uint64_t submits = 0, dispatches = 0, barriers = 0, copies = 0;
    uint64_t pipelines = 0;  // pipelines created
    uint64_t buffers = 0;    // device, staging and readback buffers created
    uint64_t descriptor_sets = 0;  // descriptor sets allocated and written (cached sets are reused)
};

class Context {
public:
    static constexpr uint32_t kPushConstantBytes = 128;  // every device offers at least this

    Context(uint32_t device_index, bool validation);
    ~Context();
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;

    const DeviceInfo& info() const;
    bool validation() const;
    uint64_t validation_messages() const;

    // ---- memory ----
    // Bytes kiln has allocated on each heap, and what a new allocation may still take there.
    uint64_t heap_used(uint32_t heap) const;
    uint64_t heap_available(uint32_t heap) const;
    // The heap that `kind` allocations come from.
    uint32_t heap_of(MemoryKind kind) const;
    // Throws kiln::Error naming `what`, the sizes and the heap when `bytes` more of `kind` would
    // not fit (with one_allocation, also when they would pass the device's maximum allocation size).
    void check_fits(uint64_t bytes, MemoryKind kind, const std::string& what, bool one_allocation = true) const;
    // Checks, then allocates. Never half-allocates: a refused buffer leaves nothing behind.
    std::shared_ptr<Buffer> create_buffer(uint64_t bytes, MemoryKind kind, const std::string& what);

    // ---- pipelines ----
    // The pipeline of shader `name` specialized with `spec` (constant_id i = spec[i]; spec[0] is
    // the workgroup size), with `n_bindings` storage buffers in set 0. Built once, then cached;
    // finding a cached pipeline allocates nothing.
    const Pipeline& pipeline(std::string_view name, std::span<const uint32_t> spec, uint32_t n_bindings);
    const Pipeline& pipeline(std::string_view name, std::initializer_list<uint32_t> spec, uint32_t n_bindings) {
        return pipeline(name, std::span<const uint32_t>(spec.begin(), spec.size()), n_bindings);
    }
    // How many specializations of shader `name` were built (tests: which variant ran).
    size_t pipeline_variants(std::string_view name) const {
        const auto it = pipelines_.find(name);
        return it == pipelines_.end() ? 0 : it->second.size();
    }

    // ---- recording (nothing runs until submit) ----
    void dispatch(const Pipeline& p, std::span<const Binding> bindings, const void* push, uint32_t push_bytes,
                  uint32_t gx, uint32_t gy = 1, uint32_t gz = 1);
    void copy(const std::shared_ptr<Buffer>& src, uint64_t src_offset, const std::shared_ptr<Buffer>& dst,
              uint64_t dst_offset, uint64_t bytes);
    // Sets `bytes` (a multiple of 4) at dst_offset to the 32-bit word `value`.
    void fill(const std::shared_ptr<Buffer>& dst, uint64_t dst_offset, uint64_t bytes, uint32_t value);
    // Copies host data through the staging ring into dst; the copy runs in order with the
    // recorded work. When the ring is full, the recording so far is submitted to free it.
    void upload(const std::shared_ptr<Buffer>& dst, uint64_t dst_offset, const void* data, uint64_t bytes);
    // Records the copy of src into the readback buffer, submits everything recorded (one
    // submit), waits and copies to host memory.
    void download(const std::shared_ptr<Buffer>& src, uint64_t src_offset, void* data, uint64_t bytes);
    // Ends the recording, submits it once and waits on its fence. Nothing recorded: nothing done.
    void submit();
    bool recording() const { return recording_; }

    const ContextStats& stats() const { return stats_; }

private:
    static constexpr size_t kMaxBindings = 8;
    struct Range {
        VkBuffer buffer;
        uint64_t begin, end;
    };
    void begin_if_needed();
    // Places a barrier when this access conflicts with one since the last barrier.
    void track(VkBuffer buffer, uint64_t offset, uint64_t size, bool write);
    void barrier();
    VkDescriptorSet allocate_set(VkDescriptorSetLayout layout);
    VkDescriptorSetLayout set_layout(uint32_t n_bindings);
    VkShaderModule shader_module(std::string_view name);

    std::shared_ptr<DeviceCore> core_;
    VkQueue queue_ = VK_NULL_HANDLE;
    VkCommandPool cmd_pool_ = VK_NULL_HANDLE;
    VkCommandBuffer cmd_ = VK_NULL_HANDLE;
    VkFence fence_ = VK_NULL_HANDLE;
    VkPipelineCache cache_ = VK_NULL_HANDLE;
    std::map<std::string, VkShaderModule, std::less<>> modules_;
    std::map<uint32_t, std::pair<VkDescriptorSetLayout, VkPipelineLayout>> layouts_;
    // Per shader name, its specializations (few): found by name without building a key string.
    std::map<std::string, std::vector<std::pair<std::vector<uint32_t>, std::unique_ptr<Pipeline>>>, std::less<>> pipelines_;
    std::vector<VkDescriptorPool> pools_;
    size_t pool_index_ = 0;
    // Descriptor sets by (layout, bound buffer ids, offsets, ranges): a forward pass binds the
    // same ranges every token, so after the first pass every dispatch finds its set written
    // already. Sets are never rewritten (one may be in use by the pending submit); the cache is
    // dropped and the pools reset between submits when it passes kMaxCachedSets.
    struct SetKey {
        VkDescriptorSetLayout layout = VK_NULL_HANDLE;
        uint32_t n = 0;
        uint64_t id[kMaxBindings] = {}, offset[kMaxBindings] = {}, size[kMaxBindings] = {};
        bool operator==(const SetKey& o) const;
    };
    struct SetKeyHash {
        size_t operator()(const SetKey& k) const;
    };
    static constexpr size_t kMaxCachedSets = 16384;
    std::unordered_map<SetKey, VkDescriptorSet, SetKeyHash> sets_;

    bool recording_ = false;
    std::vector<Range> reads_, writes_;                 // since the last barrier
    std::vector<std::shared_ptr<Buffer>> keep_alive_;  // used by the recording

    static constexpr uint64_t kRingBytes = 64ull << 20;
    static constexpr uint64_t kReadbackBytes = 64ull << 20;
    std::shared_ptr<Buffer> ring_, readback_;
    uint64_t ring_head_ = 0;

    ContextStats stats_;
};

}  // namespace kiln::vk
