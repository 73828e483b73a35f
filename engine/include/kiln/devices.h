// kiln public API: the Vulkan devices kiln sees, what each offers, and which one it runs on
// (what `kiln devices` prints). ContextOptions::device takes DeviceInfo::index.
//
// Selection (select_device):
//   a device asked for    device N of list_devices(), whatever its kind (an error if absent or unusable);
//   default               the first discrete GPU, else the first integrated GPU, else none (CPU);
//   Vulkan required       (e.g. ContextOptions::backend "vulkan") the best device present:
//                         discrete > integrated > virtual > CPU (lavapipe) > other.
// A device is usable when it has Vulkan 1.2 and a compute queue.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kiln {

enum class DeviceType { Other, IntegratedGpu, DiscreteGpu, VirtualGpu, Cpu };
const char* device_type_name(DeviceType t);  // "discrete GPU", "integrated GPU", "CPU", ...

struct MemoryHeap {
    uint64_t size = 0;
    uint64_t budget = 0;  // VK_EXT_memory_budget's estimate when present, else size
    bool device_local = false;
};

struct DeviceInfo {
    uint32_t index = 0;  // position in list_devices(), what --device takes
    std::string name;
    DeviceType type = DeviceType::Other;
    uint32_t vendor_id = 0, device_id = 0;
    uint32_t api_version = 0;  // VK_MAKE_API_VERSION
    std::string driver_name, driver_info;
    std::vector<MemoryHeap> heaps;
    bool memory_budget = false;  // heaps[].budget comes from VK_EXT_memory_budget

    // Subgroups (waves / warps).
    uint32_t subgroup_size = 0, subgroup_min = 0, subgroup_max = 0;
    bool subgroup_arithmetic = false, subgroup_shuffle = false;

    // Storage (buffers of 16/8-bit values) and arithmetic support.
    bool fp16_storage = false, fp16_arithmetic = false;
    bool int8_storage = false, int8_arithmetic = false;
    bool bf16 = false;                 // VK_KHR_shader_bfloat16
    bool integer_dot_product = false;  // shaderIntegerDotProduct (Vulkan 1.3 / VK_KHR_shader_integer_dot_product)
    bool integer_dot_accelerated = false;  // 4x8-bit packed signed dot product runs in hardware
    bool cooperative_matrix = false;   // VK_KHR_cooperative_matrix
    bool cooperative_matrix_nv = false;  // VK_NV_cooperative_matrix

    // Limits the backend plans with.
    uint64_t max_storage_buffer_range = 0, max_allocation_size = 0;
    uint32_t max_workgroup_invocations = 0, max_shared_memory = 0, max_push_constants = 0;
    uint32_t max_workgroup_count[3] = {0, 0, 0};
    uint64_t min_storage_buffer_offset_alignment = 0;

    bool usable = false;
    std::string unusable_reason;  // when !usable

    uint64_t device_local_bytes() const;  // sum of device-local heaps
    std::string api_version_string() const;
};

// Lists every physical device. Throws kiln::Error when there is no Vulkan loader or the instance
// cannot be created (no driver); returns an empty list when Vulkan works but has no device.
std::vector<DeviceInfo> list_devices();

// Applies the rules above. requested >= 0 is --device N. Returns nullopt for "use the CPU" (only
// when nothing was required). Throws kiln::Error with the list of devices when a request cannot
// be met.
std::optional<uint32_t> select_device(const std::vector<DeviceInfo>& devices, int requested, bool vulkan_required);

}  // namespace kiln
