#include "backend/vulkan/loader.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <string>

#include "kiln/error.h"

namespace kiln::vk {

Api& api() {
    static Api a;
    return a;
}

void load_loader() {
    static std::once_flag once;
    static std::string failure;
    std::call_once(once, [] {
        // Never closed: drivers keep threads and atexit handlers that outlive any owner we could pick.
        // KILN_VULKAN_LOADER names another library (tests use it to play "no loader").
        const char* name = std::getenv("KILN_VULKAN_LOADER");
        void* lib = ::dlopen(name ? name : "libvulkan.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!lib && !name) lib = ::dlopen("libvulkan.so", RTLD_NOW | RTLD_LOCAL);
        if (!lib) {
            const char* why = ::dlerror();
            failure = std::string("no Vulkan loader: ") + (name ? name : "libvulkan.so.1") + " could not be opened (" + (why ? why : "unknown") +
                      "). Install the loader and a driver (Debian: apt-get install libvulkan1 mesa-vulkan-drivers), "
                      "or run on the CPU backend";
            return;
        }
        Api& a = api();
        a.vkGetInstanceProcAddr = reinterpret_cast<PFN_vkGetInstanceProcAddr>(::dlsym(lib, "vkGetInstanceProcAddr"));
        if (!a.vkGetInstanceProcAddr) {
            failure = "no Vulkan loader: libvulkan.so.1 has no vkGetInstanceProcAddr";
            return;
        }
#define KILN_VK_LOAD_GLOBAL(name) a.name = reinterpret_cast<PFN_##name>(a.vkGetInstanceProcAddr(nullptr, #name));
        KILN_VK_GLOBAL_FUNCTIONS(KILN_VK_LOAD_GLOBAL)
#undef KILN_VK_LOAD_GLOBAL
        if (!a.vkCreateInstance || !a.vkEnumerateInstanceExtensionProperties || !a.vkEnumerateInstanceLayerProperties)
            failure = "no Vulkan loader: libvulkan.so.1 lacks vkCreateInstance";
    });
    if (!failure.empty()) throw Error(failure);
}

void load_instance_functions(VkInstance instance) {
    Api& a = api();
#define KILN_VK_LOAD(name)                                                                  \
    a.name = reinterpret_cast<PFN_##name>(a.vkGetInstanceProcAddr(instance, #name));        \
    if (!a.name) throw Error("Vulkan: the loader has no " #name " (Vulkan 1.2 is required)");
    KILN_VK_INSTANCE_FUNCTIONS(KILN_VK_LOAD)
#undef KILN_VK_LOAD
#define KILN_VK_LOAD_OPTIONAL(name) a.name = reinterpret_cast<PFN_##name>(a.vkGetInstanceProcAddr(instance, #name));
    KILN_VK_OPTIONAL_INSTANCE_FUNCTIONS(KILN_VK_LOAD_OPTIONAL)
#undef KILN_VK_LOAD_OPTIONAL
}

const char* result_name(VkResult r) {
    switch (r) {
#define KILN_VK_RESULT(x) case x: return #x;
        KILN_VK_RESULT(VK_SUCCESS)
        KILN_VK_RESULT(VK_NOT_READY)
        KILN_VK_RESULT(VK_TIMEOUT)
        KILN_VK_RESULT(VK_INCOMPLETE)
        KILN_VK_RESULT(VK_ERROR_OUT_OF_HOST_MEMORY)
        KILN_VK_RESULT(VK_ERROR_OUT_OF_DEVICE_MEMORY)
        KILN_VK_RESULT(VK_ERROR_INITIALIZATION_FAILED)
        KILN_VK_RESULT(VK_ERROR_DEVICE_LOST)
        KILN_VK_RESULT(VK_ERROR_MEMORY_MAP_FAILED)
        KILN_VK_RESULT(VK_ERROR_LAYER_NOT_PRESENT)
        KILN_VK_RESULT(VK_ERROR_EXTENSION_NOT_PRESENT)
        KILN_VK_RESULT(VK_ERROR_FEATURE_NOT_PRESENT)
        KILN_VK_RESULT(VK_ERROR_INCOMPATIBLE_DRIVER)
        KILN_VK_RESULT(VK_ERROR_TOO_MANY_OBJECTS)
        KILN_VK_RESULT(VK_ERROR_FORMAT_NOT_SUPPORTED)
        KILN_VK_RESULT(VK_ERROR_FRAGMENTED_POOL)
        KILN_VK_RESULT(VK_ERROR_UNKNOWN)
        KILN_VK_RESULT(VK_ERROR_OUT_OF_POOL_MEMORY)
        KILN_VK_RESULT(VK_ERROR_INVALID_EXTERNAL_HANDLE)
        KILN_VK_RESULT(VK_ERROR_FRAGMENTATION)
        KILN_VK_RESULT(VK_ERROR_INVALID_OPAQUE_CAPTURE_ADDRESS)
        KILN_VK_RESULT(VK_PIPELINE_COMPILE_REQUIRED)
#undef KILN_VK_RESULT
        default: return "VkResult (unknown)";
    }
}

void check(VkResult r, const char* what) {
    if (r == VK_SUCCESS) return;
    std::string msg = std::string("Vulkan: ") + what + " failed: " + result_name(r) + " (" + std::to_string(r) + ")";
    if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY) msg += "; the device has no memory left for it";
    if (r == VK_ERROR_DEVICE_LOST) msg += "; the GPU driver reset the device (a hang or a crash in a shader)";
    throw Error(msg);
}

}  // namespace kiln::vk
