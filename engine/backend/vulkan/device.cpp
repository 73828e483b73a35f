#include "backend/vulkan/device.h"

#include <dlfcn.h>
#include <link.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include <fmt/format.h>

#include "kiln/error.h"

namespace kiln {

const char* device_type_name(DeviceType t) {
    switch (t) {
        case DeviceType::DiscreteGpu: return "discrete GPU";
        case DeviceType::IntegratedGpu: return "integrated GPU";
        case DeviceType::VirtualGpu: return "virtual GPU";
        case DeviceType::Cpu: return "CPU";
        default: return "other";
    }
}

uint64_t DeviceInfo::device_local_bytes() const {
    uint64_t n = 0;
    for (const auto& h : heaps)
        if (h.device_local) n += h.size;
    return n;
}

std::string DeviceInfo::api_version_string() const {
    return fmt::format("{}.{}.{}", VK_API_VERSION_MAJOR(api_version), VK_API_VERSION_MINOR(api_version),
                       VK_API_VERSION_PATCH(api_version));
}

}  // namespace kiln

namespace kiln::vk {

// ---- instance ------------------------------------------------------------------------------

namespace {

std::mutex g_messages_mutex;
std::atomic<uint64_t> g_messages{0};
std::string g_last_message;

VKAPI_ATTR VkBool32 VKAPI_CALL on_validation_message(VkDebugUtilsMessageSeverityFlagBitsEXT severity,
                                                     VkDebugUtilsMessageTypeFlagsEXT,
                                                     const VkDebugUtilsMessengerCallbackDataEXT* data, void*) {
    if (severity & (VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT)) {
        ++g_messages;
        std::lock_guard<std::mutex> lock(g_messages_mutex);
        g_last_message = data && data->pMessage ? data->pMessage : "(no message)";
        std::fprintf(stderr, "kiln: Vulkan validation: %s\n", g_last_message.c_str());
    }
    return VK_FALSE;
}

bool has_layer(const char* name) {
    uint32_t n = 0;
    if (api().vkEnumerateInstanceLayerProperties(&n, nullptr) != VK_SUCCESS) return false;
    std::vector<VkLayerProperties> layers(n);
    if (api().vkEnumerateInstanceLayerProperties(&n, layers.data()) != VK_SUCCESS) return false;
    for (const auto& l : layers)
        if (std::strcmp(l.layerName, name) == 0) return true;
    return false;
}

bool has_instance_extension(const char* name, const char* layer = nullptr) {
    uint32_t n = 0;
    if (api().vkEnumerateInstanceExtensionProperties(layer, &n, nullptr) != VK_SUCCESS) return false;
    std::vector<VkExtensionProperties> ext(n);
    if (api().vkEnumerateInstanceExtensionProperties(layer, &n, ext.data()) != VK_SUCCESS) return false;
    for (const auto& e : ext)
        if (std::strcmp(e.extensionName, name) == 0) return true;
    return false;
}

}  // namespace

// Sanitizer builds: the loader unloads the drivers (ICDs) and layers when the instance goes, so
// LeakSanitizer could not name the driver that leaked and a suppression for the driver alone
// (tests/lsan.supp) could not match. Every library loaded so far is pinned instead (RTLD_NODELETE).
#if defined(__SANITIZE_ADDRESS__)
#define KILN_PIN_DRIVERS 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KILN_PIN_DRIVERS 1
#endif
#endif

namespace {
void pin_loaded_libraries() {
#ifdef KILN_PIN_DRIVERS
    ::dl_iterate_phdr(
        [](struct dl_phdr_info* info, size_t, void*) {
            if (info->dlpi_name && info->dlpi_name[0]) ::dlopen(info->dlpi_name, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE);
            return 0;
        },
        nullptr);
#endif
}
}  // namespace

std::shared_ptr<Instance> Instance::get(bool validation) {
    static std::mutex m;
    static std::weak_ptr<Instance> current;
    std::lock_guard<std::mutex> lock(m);
    if (auto inst = current.lock()) return inst;

    load_loader();
    Api& a = api();
    uint32_t loader_version = VK_API_VERSION_1_0;
    if (a.vkEnumerateInstanceVersion) a.vkEnumerateInstanceVersion(&loader_version);
    if (loader_version < VK_API_VERSION_1_2)
        throw Error(fmt::format("Vulkan: the loader supports Vulkan {}.{} only; kiln needs 1.2 (update libvulkan1)",
                                VK_API_VERSION_MAJOR(loader_version), VK_API_VERSION_MINOR(loader_version)));

    if (const char* env = std::getenv("KILN_VK_VALIDATION"); env && std::strcmp(env, "0") != 0) validation = true;
    const char* kLayer = "VK_LAYER_KHRONOS_validation";
    const bool use_validation = validation && has_layer(kLayer) && has_instance_extension(VK_EXT_DEBUG_UTILS_EXTENSION_NAME);

    auto app = make<VkApplicationInfo>(VK_STRUCTURE_TYPE_APPLICATION_INFO);
    app.pApplicationName = "kiln";
    app.pEngineName = "kiln";
    app.apiVersion = std::min<uint32_t>(loader_version, VK_API_VERSION_1_3);

    std::vector<const char*> layers, extensions;
    // With validation, synchronization validation too: a missing barrier is an error in tests.
    const VkValidationFeatureEnableEXT sync = VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT;
    auto features = make<VkValidationFeaturesEXT>(VK_STRUCTURE_TYPE_VALIDATION_FEATURES_EXT);
    features.enabledValidationFeatureCount = 1;
    features.pEnabledValidationFeatures = &sync;
    const bool sync_validation = use_validation && has_instance_extension(VK_EXT_VALIDATION_FEATURES_EXTENSION_NAME, kLayer);
    if (use_validation) {
        layers.push_back(kLayer);
        extensions.push_back(VK_EXT_DEBUG_UTILS_EXTENSION_NAME);
        if (sync_validation) extensions.push_back(VK_EXT_VALIDATION_FEATURES_EXTENSION_NAME);
    }
    auto ci = make<VkInstanceCreateInfo>(VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO);
    if (sync_validation) ci.pNext = &features;
    ci.pApplicationInfo = &app;
    ci.enabledLayerCount = static_cast<uint32_t>(layers.size());
    ci.ppEnabledLayerNames = layers.data();
    ci.enabledExtensionCount = static_cast<uint32_t>(extensions.size());
    ci.ppEnabledExtensionNames = extensions.data();

    std::shared_ptr<Instance> inst(new Instance());
    const VkResult r = a.vkCreateInstance(&ci, nullptr, &inst->instance_);
    if (r == VK_ERROR_INCOMPATIBLE_DRIVER)
        throw Error("no Vulkan driver: the loader found no installable client driver (ICD). Install one "
                    "(Debian: apt-get install mesa-vulkan-drivers, or your GPU vendor's driver)");
    check(r, "vkCreateInstance");
    load_instance_functions(inst->instance_);
    inst->validation_ = use_validation;

    if (use_validation && a.vkCreateDebugUtilsMessengerEXT) {
        auto mi = make<VkDebugUtilsMessengerCreateInfoEXT>(VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT);
        mi.messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT;
        mi.messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                         VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT;
        mi.pfnUserCallback = on_validation_message;
        check(a.vkCreateDebugUtilsMessengerEXT(inst->instance_, &mi, nullptr, &inst->messenger_),
              "vkCreateDebugUtilsMessengerEXT");
    }

    uint32_t n = 0;
    check(a.vkEnumeratePhysicalDevices(inst->instance_, &n, nullptr), "vkEnumeratePhysicalDevices");
    inst->physical_.resize(n);
    if (n) check(a.vkEnumeratePhysicalDevices(inst->instance_, &n, inst->physical_.data()), "vkEnumeratePhysicalDevices");
    inst->physical_.resize(n);
    pin_loaded_libraries();
    current = inst;
    return inst;
}

Instance::~Instance() {
    Api& a = api();
    if (messenger_ && a.vkDestroyDebugUtilsMessengerEXT) a.vkDestroyDebugUtilsMessengerEXT(instance_, messenger_, nullptr);
    if (instance_) a.vkDestroyInstance(instance_, nullptr);
}

uint64_t Instance::validation_messages() const { return g_messages.load(); }

std::string Instance::last_validation_message() const {
    std::lock_guard<std::mutex> lock(g_messages_mutex);
    return g_last_message;
}

// ---- devices -------------------------------------------------------------------------------

namespace {

std::vector<std::string> device_extensions(VkPhysicalDevice pd) {
    uint32_t n = 0;
    std::vector<std::string> out;
    if (api().vkEnumerateDeviceExtensionProperties(pd, nullptr, &n, nullptr) != VK_SUCCESS) return out;
    std::vector<VkExtensionProperties> ext(n);
    if (api().vkEnumerateDeviceExtensionProperties(pd, nullptr, &n, ext.data()) != VK_SUCCESS) return out;
    for (const auto& e : ext) out.emplace_back(e.extensionName);
    return out;
}

bool contains(const std::vector<std::string>& v, const char* s) { return std::find(v.begin(), v.end(), s) != v.end(); }

DeviceType to_type(VkPhysicalDeviceType t) {
    switch (t) {
        case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return DeviceType::DiscreteGpu;
        case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return DeviceType::IntegratedGpu;
        case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return DeviceType::VirtualGpu;
        case VK_PHYSICAL_DEVICE_TYPE_CPU: return DeviceType::Cpu;
        default: return DeviceType::Other;
    }
}

}  // namespace

DeviceInfo describe(VkPhysicalDevice pd, uint32_t index) {
    Api& a = api();
    DeviceInfo d;
    d.index = index;
    VkPhysicalDeviceProperties base{};
    a.vkGetPhysicalDeviceProperties(pd, &base);
    d.api_version = base.apiVersion;
    const bool v12 = base.apiVersion >= VK_API_VERSION_1_2, v13 = base.apiVersion >= VK_API_VERSION_1_3;
    const auto ext = device_extensions(pd);

    // Properties: chain only what the device's version or extensions define.
    auto props = make<VkPhysicalDeviceProperties2>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2);
    auto driver = make<VkPhysicalDeviceDriverProperties>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES);
    auto subgroup = make<VkPhysicalDeviceSubgroupProperties>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES);
    auto sizes = make<VkPhysicalDeviceSubgroupSizeControlProperties>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_SIZE_CONTROL_PROPERTIES);
    auto dotp = make<VkPhysicalDeviceShaderIntegerDotProductProperties>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_PROPERTIES);
    void** next = &props.pNext;
    auto chain = [&next](auto& s) {
        *next = &s;
        next = &s.pNext;
    };
    chain(subgroup);
    const bool has_driver = v12 || contains(ext, VK_KHR_DRIVER_PROPERTIES_EXTENSION_NAME);
    const bool has_sizes = v13 || contains(ext, VK_EXT_SUBGROUP_SIZE_CONTROL_EXTENSION_NAME);
    const bool has_dot = v13 || contains(ext, VK_KHR_SHADER_INTEGER_DOT_PRODUCT_EXTENSION_NAME);
    if (has_driver) chain(driver);
    if (has_sizes) chain(sizes);
    if (has_dot) chain(dotp);
    a.vkGetPhysicalDeviceProperties2(pd, &props);

    d.name = base.deviceName;
    d.type = to_type(base.deviceType);
    d.vendor_id = base.vendorID;
    d.device_id = base.deviceID;
    if (has_driver) {
        d.driver_name = driver.driverName;
        d.driver_info = driver.driverInfo;
    }
    d.subgroup_size = subgroup.subgroupSize;
    d.subgroup_min = has_sizes ? sizes.minSubgroupSize : subgroup.subgroupSize;
    d.subgroup_max = has_sizes ? sizes.maxSubgroupSize : subgroup.subgroupSize;
    const bool compute_subgroups = subgroup.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT;
    d.subgroup_arithmetic = compute_subgroups && (subgroup.supportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT);
    d.subgroup_shuffle = compute_subgroups && (subgroup.supportedOperations & VK_SUBGROUP_FEATURE_SHUFFLE_BIT);
    d.integer_dot_accelerated = has_dot && dotp.integerDotProduct4x8BitPackedSignedAccelerated;

    const auto& lim = base.limits;
    d.max_storage_buffer_range = lim.maxStorageBufferRange;
    d.max_workgroup_invocations = lim.maxComputeWorkGroupInvocations;
    d.max_shared_memory = lim.maxComputeSharedMemorySize;
    d.max_push_constants = lim.maxPushConstantsSize;
    for (int i = 0; i < 3; ++i) d.max_workgroup_count[i] = lim.maxComputeWorkGroupCount[i];
    d.min_storage_buffer_offset_alignment = lim.minStorageBufferOffsetAlignment;
    d.max_allocation_size = 1ull << 30;  // Vulkan's guaranteed minimum, unless maintenance3 says more
    {
        auto p2 = make<VkPhysicalDeviceProperties2>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2);
        auto m3 = make<VkPhysicalDeviceMaintenance3Properties>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES);
        p2.pNext = &m3;
        a.vkGetPhysicalDeviceProperties2(pd, &p2);
        if (m3.maxMemoryAllocationSize) d.max_allocation_size = m3.maxMemoryAllocationSize;
    }

    // Features.
    auto feats = make<VkPhysicalDeviceFeatures2>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2);
    auto s16 = make<VkPhysicalDevice16BitStorageFeatures>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES);
    auto s8 = make<VkPhysicalDevice8BitStorageFeatures>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_8BIT_STORAGE_FEATURES);
    auto f16i8 = make<VkPhysicalDeviceShaderFloat16Int8Features>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES);
    auto dotf = make<VkPhysicalDeviceShaderIntegerDotProductFeatures>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_FEATURES);
    next = &feats.pNext;
    chain(s16);
    const bool has_s8 = v12 || contains(ext, VK_KHR_8BIT_STORAGE_EXTENSION_NAME);
    const bool has_f16i8 = v12 || contains(ext, VK_KHR_SHADER_FLOAT16_INT8_EXTENSION_NAME);
    if (has_s8) chain(s8);
    if (has_f16i8) chain(f16i8);
    if (has_dot) chain(dotf);
    a.vkGetPhysicalDeviceFeatures2(pd, &feats);
    d.fp16_storage = s16.storageBuffer16BitAccess;
    d.int8_storage = has_s8 && s8.storageBuffer8BitAccess;
    d.fp16_arithmetic = has_f16i8 && f16i8.shaderFloat16;
    d.int8_arithmetic = has_f16i8 && f16i8.shaderInt8;
    d.integer_dot_product = has_dot && dotf.shaderIntegerDotProduct;
    // Newer than the headers kiln may build against: reported by extension name.
    d.bf16 = contains(ext, "VK_KHR_shader_bfloat16");
    d.cooperative_matrix = contains(ext, "VK_KHR_cooperative_matrix");
    d.cooperative_matrix_nv = contains(ext, "VK_NV_cooperative_matrix");

    // Memory heaps (with the budget extension's estimate when there is one).
    d.memory_budget = contains(ext, VK_EXT_MEMORY_BUDGET_EXTENSION_NAME);
    auto mem = make<VkPhysicalDeviceMemoryProperties2>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_PROPERTIES_2);
    auto budget = make<VkPhysicalDeviceMemoryBudgetPropertiesEXT>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT);
    if (d.memory_budget) mem.pNext = &budget;
    a.vkGetPhysicalDeviceMemoryProperties2(pd, &mem);
    for (uint32_t i = 0; i < mem.memoryProperties.memoryHeapCount; ++i) {
        const auto& h = mem.memoryProperties.memoryHeaps[i];
        MemoryHeap mh;
        mh.size = h.size;
        mh.device_local = h.flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT;
        mh.budget = d.memory_budget && budget.heapBudget[i] ? std::min<uint64_t>(budget.heapBudget[i], h.size) : h.size;
        d.heaps.push_back(mh);
    }

    // Usable: Vulkan 1.2 and a compute queue.
    uint32_t nq = 0;
    a.vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, nullptr);
    std::vector<VkQueueFamilyProperties> q(nq);
    a.vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, q.data());
    const bool compute = std::any_of(q.begin(), q.end(), [](const auto& f) { return f.queueFlags & VK_QUEUE_COMPUTE_BIT; });
    if (!v12) d.unusable_reason = "needs Vulkan 1.2, the driver offers " + d.api_version_string();
    else if (!compute) d.unusable_reason = "has no compute queue";
    d.usable = d.unusable_reason.empty();
    return d;
}

}  // namespace kiln::vk

namespace kiln {

std::vector<DeviceInfo> list_devices() {
    auto inst = vk::Instance::get();
    std::vector<DeviceInfo> out;
    for (uint32_t i = 0; i < inst->physical_devices().size(); ++i) out.push_back(vk::describe(inst->physical_devices()[i], i));
    return out;
}

namespace {

int rank(DeviceType t) {
    switch (t) {
        case DeviceType::DiscreteGpu: return 0;
        case DeviceType::IntegratedGpu: return 1;
        case DeviceType::VirtualGpu: return 2;
        case DeviceType::Cpu: return 3;
        default: return 4;
    }
}

std::string describe_list(const std::vector<DeviceInfo>& devices) {
    if (devices.empty()) return "no Vulkan device is present";
    std::string s = "Vulkan devices:";
    for (const auto& d : devices)
        s += fmt::format(" [{}] {} ({}{})", d.index, d.name, device_type_name(d.type),
                         d.usable ? "" : ", unusable: " + d.unusable_reason);
    return s;
}

}  // namespace

std::optional<uint32_t> select_device(const std::vector<DeviceInfo>& devices, int requested, bool vulkan_required) {
    if (requested >= 0) {
        if (static_cast<size_t>(requested) >= devices.size())
            throw Error(fmt::format("--device {}: no such Vulkan device ({})", requested, describe_list(devices)));
        const auto& d = devices[static_cast<size_t>(requested)];
        if (!d.usable) throw Error(fmt::format("--device {}: {} {}", requested, d.name, d.unusable_reason));
        return d.index;
    }
    const DeviceInfo* best = nullptr;
    for (const auto& d : devices) {
        if (!d.usable) continue;
        if (!vulkan_required && d.type != DeviceType::DiscreteGpu && d.type != DeviceType::IntegratedGpu) continue;
        if (!best || rank(d.type) < rank(best->type)) best = &d;
    }
    if (best) return best->index;
    if (vulkan_required)
        throw Error(fmt::format("Vulkan was requested but no usable device exists ({})", describe_list(devices)));
    return std::nullopt;
}

}  // namespace kiln
