// The Vulkan loader (libvulkan.so.1) opened at run time, so that kiln runs - on the CPU - where
// no Vulkan is installed, and says why when Vulkan is asked for. Only the entry points kiln uses
// are loaded; device-level ones go through the loader's trampolines, so they work with any
// VkDevice.
#pragma once

#define VK_NO_PROTOTYPES
#include <vulkan/vulkan.h>

namespace kiln::vk {

#define KILN_VK_GLOBAL_FUNCTIONS(X)        \
    X(vkCreateInstance)                    \
    X(vkEnumerateInstanceExtensionProperties) \
    X(vkEnumerateInstanceLayerProperties)  \
    X(vkEnumerateInstanceVersion)

#define KILN_VK_INSTANCE_FUNCTIONS(X)              \
    X(vkDestroyInstance)                           \
    X(vkEnumeratePhysicalDevices)                  \
    X(vkGetPhysicalDeviceProperties)               \
    X(vkGetPhysicalDeviceProperties2)              \
    X(vkGetPhysicalDeviceFeatures2)                \
    X(vkGetPhysicalDeviceMemoryProperties)         \
    X(vkGetPhysicalDeviceMemoryProperties2)        \
    X(vkGetPhysicalDeviceQueueFamilyProperties)    \
    X(vkEnumerateDeviceExtensionProperties)        \
    X(vkCreateDevice)                              \
    X(vkDestroyDevice)                             \
    X(vkGetDeviceQueue)                            \
    X(vkCreateBuffer)                              \
    X(vkDestroyBuffer)                             \
    X(vkGetBufferMemoryRequirements)               \
    X(vkAllocateMemory)                            \
    X(vkFreeMemory)                                \
    X(vkBindBufferMemory)                          \
    X(vkMapMemory)                                 \
    X(vkUnmapMemory)                               \
    X(vkFlushMappedMemoryRanges)                   \
    X(vkInvalidateMappedMemoryRanges)              \
    X(vkCreateShaderModule)                        \
    X(vkDestroyShaderModule)                       \
    X(vkCreatePipelineCache)                       \
    X(vkDestroyPipelineCache)                      \
    X(vkCreateDescriptorSetLayout)                 \
    X(vkDestroyDescriptorSetLayout)                \
    X(vkCreatePipelineLayout)                      \
    X(vkDestroyPipelineLayout)                     \
    X(vkCreateComputePipelines)                    \
    X(vkDestroyPipeline)                           \
    X(vkCreateDescriptorPool)                      \
    X(vkDestroyDescriptorPool)                     \
    X(vkResetDescriptorPool)                       \
    X(vkAllocateDescriptorSets)                    \
    X(vkUpdateDescriptorSets)                      \
    X(vkCreateCommandPool)                         \
    X(vkDestroyCommandPool)                        \
    X(vkResetCommandPool)                          \
    X(vkAllocateCommandBuffers)                    \
    X(vkBeginCommandBuffer)                        \
    X(vkEndCommandBuffer)                          \
    X(vkCmdBindPipeline)                           \
    X(vkCmdBindDescriptorSets)                     \
    X(vkCmdPushConstants)                          \
    X(vkCmdDispatch)                               \
    X(vkCmdPipelineBarrier)                        \
    X(vkCmdCopyBuffer)                             \
    X(vkCmdFillBuffer)                             \
    X(vkCreateFence)                               \
    X(vkDestroyFence)                              \
    X(vkResetFences)                               \
    X(vkWaitForFences)                             \
    X(vkQueueSubmit)                               \
    X(vkDeviceWaitIdle)

// Present only when VK_EXT_debug_utils is enabled (validation in tests).
#define KILN_VK_OPTIONAL_INSTANCE_FUNCTIONS(X) \
    X(vkCreateDebugUtilsMessengerEXT)          \
    X(vkDestroyDebugUtilsMessengerEXT)

struct Api {
#define KILN_VK_DECLARE(name) PFN_##name name = nullptr;
    PFN_vkGetInstanceProcAddr vkGetInstanceProcAddr = nullptr;
    KILN_VK_GLOBAL_FUNCTIONS(KILN_VK_DECLARE)
    KILN_VK_INSTANCE_FUNCTIONS(KILN_VK_DECLARE)
    KILN_VK_OPTIONAL_INSTANCE_FUNCTIONS(KILN_VK_DECLARE)
#undef KILN_VK_DECLARE
};

// The process-wide table. load_loader() fills the global functions (throws kiln::Error naming the
// library and the package to install when the loader is missing); load_instance_functions() the
// rest, once an instance exists.
Api& api();
void load_loader();
void load_instance_functions(VkInstance instance);

// A zeroed Vulkan structure with its sType set.
template <typename T>
T make(VkStructureType type) {
    T s{};
    s.sType = type;
    return s;
}

// "VK_ERROR_OUT_OF_DEVICE_MEMORY" and the like.
const char* result_name(VkResult r);
// Throws kiln::Error("Vulkan: <what> failed: <result name>") unless r is VK_SUCCESS.
void check(VkResult r, const char* what);

}  // namespace kiln::vk
