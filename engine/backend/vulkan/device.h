// Vulkan devices: the process-wide instance and the description of each physical device. The
// list and the selection rules are public: kiln/devices.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/vulkan/loader.h"
#include "kiln/devices.h"

namespace kiln::vk {

// The device list and its rules are public (kiln/devices.h); the backend names them as vk:: too.
using kiln::device_type_name;
using kiln::DeviceInfo;
using kiln::DeviceType;
using kiln::list_devices;
using kiln::MemoryHeap;
using kiln::select_device;

// The process-wide VkInstance (created on first use, destroyed at exit when nothing holds it).
class Instance {
public:
    // validation: enable VK_LAYER_KHRONOS_validation and report its messages, when the layer is
    // installed (silently without otherwise). Only the first call's choice counts; the environment
    // variable KILN_VK_VALIDATION=1 turns it on too.
    static std::shared_ptr<Instance> get(bool validation = false);
    ~Instance();
    Instance(const Instance&) = delete;
    Instance& operator=(const Instance&) = delete;

    VkInstance handle() const { return instance_; }
    const std::vector<VkPhysicalDevice>& physical_devices() const { return physical_; }
    bool validation() const { return validation_; }
    // Validation errors and warnings seen so far (empty without validation).
    uint64_t validation_messages() const;
    std::string last_validation_message() const;

private:
    Instance() = default;
    VkInstance instance_ = VK_NULL_HANDLE;
    VkDebugUtilsMessengerEXT messenger_ = VK_NULL_HANDLE;
    std::vector<VkPhysicalDevice> physical_;
    bool validation_ = false;
};

// Fills a DeviceInfo (index included) for one physical device.
DeviceInfo describe(VkPhysicalDevice pd, uint32_t index);

}  // namespace kiln::vk
